"""`calib capture`: drive the robot through a plan (or follow a technician's hand-guided poses),
wait until the arm is still, take a picture, judge it, and write a dataset `calib solve` reads.

The robot moves only through the runtime's safety filter (joint limits, velocity, acceleration
and jerk limits, the workspace box), at a calibration speed cap below the runtime's, and with the
robot-side watchdog set so that the arm stops by itself if this process stalls. A trip, a
protective or safeguard stop, or a lost connection ends the capture with the arm stopped and
every view taken so far kept on disk.

A picture is taken only when every joint has been slower than `settle_speed_rad_s` for
`settle_s` (a UR rings for a few hundred milliseconds after a stop; a blurred or shifted board
costs more than the wait), and only from a frame captured after that moment.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import cv2
import msgspec
import numpy as np

from edgevla.calibration.board import BoardSpec, BoardView, observe
from edgevla.calibration.handeye import Thresholds
from edgevla.calibration.pipeline import camera_matrix, intrinsics_dict
from edgevla.calibration.plan import Plan, diversity
from edgevla.runtime.config import LimitsConfig
from edgevla.runtime.devices import Camera, CameraIntrinsics, RobotState, SafetyMode
from edgevla.runtime.errors import EdgeVlaError
from edgevla.runtime.kinematics import ForwardKinematics, RobotModel
from edgevla.runtime.safety_filter import SafetyFilter, Trip

log = logging.getLogger(__name__)


class CaptureAborted(EdgeVlaError):
    """The capture stopped the arm before the plan was done; the message says why."""


@dataclass(frozen=True)
class CaptureSettings:
    speed_rad_s: float = 0.5  # joint speed cap for calibration moves (below the runtime's)
    settle_speed_rad_s: float = 2e-3
    settle_s: float = 0.5
    settle_timeout_s: float = 5.0
    move_timeout_s: float = 30.0
    arrive_tolerance_rad: float = 1e-3
    robot_watchdog_hz: float = 10.0


@dataclass
class ViewRecord:
    image: str
    q: list[float]
    T_base_gripper: list[list[float]]
    accepted: bool
    reason: str
    corners: int
    rms_px: float


class Capture:
    """One capture session on a connected robot and a started camera."""

    def __init__(
        self,
        robot,  # Robot protocol, connected
        camera: Camera,
        intrinsics: CameraIntrinsics,
        model: RobotModel,
        limits: LimitsConfig,
        spec: BoardSpec,
        settings: CaptureSettings = CaptureSettings(),
        *,
        clock: Callable[[], float],
        sleep: Callable[[float], None],
    ) -> None:
        self.robot, self.camera, self.intrinsics = robot, camera, intrinsics
        self.model, self.spec, self.settings = model, spec, settings
        self.clock, self.sleep = clock, sleep
        self.period_s = model.period_s
        capped = tuple(min(v, settings.speed_rad_s) for v in limits.max_velocity_rad_s)
        self.filter = SafetyFilter(
            msgspec.structs.replace(limits, max_velocity_rad_s=capped),
            self.period_s,
            ForwardKinematics(model),
        )
        self.fk = ForwardKinematics(model)
        self.K = camera_matrix(intrinsics.fx, intrinsics.fy, intrinsics.ppx, intrinsics.ppy)
        self.dist = np.asarray(intrinsics.coeffs, dtype=float)
        self.state = RobotState()
        self._anchored = False

    # ------------------------------------------------------------------ robot motion

    def _read(self) -> RobotState:
        self.robot.read_state(self.state)
        s = self.state
        if s.safety_mode != SafetyMode.NORMAL:
            raise CaptureAborted(
                f"the robot reports {SafetyMode(s.safety_mode).name.lower().replace('_', ' ')}"
                ": clear it on the pendant and capture again (views so far are kept)"
            )
        return s

    def _tick(self, t_next: float) -> float:
        now = self.clock()
        if t_next > now:
            self.sleep(t_next - now)
        return t_next + self.period_s

    def _stop(self) -> None:
        """Controlled stop through the filter, then servoStop: the arm ends at rest."""
        t_next = self.clock()
        for _ in range(int(2.0 / self.period_s)):
            at_rest = self.filter.stop_step()
            self.robot.servo(self.filter.q, self.filter.gripper)
            if at_rest:
                break
            t_next = self._tick(t_next)
        self.robot.stop()

    def _anchor(self) -> None:
        if not self._anchored:
            s = self._read()
            if not s.program_running:
                raise CaptureAborted(
                    "the robot's control program is not running: is the robot in remote control?"
                )
            trip = self.filter.reset(s.q, s.gripper)
            if trip != Trip.NONE:
                raise CaptureAborted(
                    f"the robot is outside the configured joint limits ({trip.label}): jog it "
                    "inside by hand first"
                )
            self.robot.set_watchdog(self.settings.robot_watchdog_hz)
            self._anchored = True

    def move_to(self, q_target: np.ndarray) -> None:
        """Servo to `q_target` through the safety filter and stay there."""
        self._anchor()
        target = np.asarray(q_target, dtype=float)
        t_next, deadline = self.clock(), self.clock() + self.settings.move_timeout_s
        try:
            while True:
                trip = self.filter.step(target, self.filter.gripper)
                if trip != Trip.NONE:
                    raise CaptureAborted(f"safety filter tripped on the move ({trip.label})")
                self.robot.servo(self.filter.q, self.filter.gripper)
                self._read()
                if (
                    np.abs(self.filter.q - target).max() < self.settings.arrive_tolerance_rad
                    and np.abs(self.filter.v).max() < self.settings.settle_speed_rad_s
                ):
                    return
                if self.clock() > deadline:
                    raise CaptureAborted(f"move not done in {self.settings.move_timeout_s:g} s")
                t_next = self._tick(t_next)
        except BaseException:
            self._stop()
            raise

    def hold_until_still(self) -> float | None:
        """Keep commanding the reached pose until the measured joints have been still for
        `settle_s`; returns that moment, or None on the timeout."""
        s = self.settings
        t_next = self.clock()
        deadline = t_next + s.settle_timeout_s
        still_since = None
        try:
            while self.clock() < deadline:
                if self._anchored:
                    self.filter.hold_step()
                    self.robot.servo(self.filter.q, self.filter.gripper)
                state = self._read()
                now = self.clock()
                if np.abs(state.qd).max() < s.settle_speed_rad_s:
                    still_since = now if still_since is None else still_since
                    if now - still_since >= s.settle_s:
                        return now
                else:
                    still_since = None
                t_next = self._tick(t_next)
        except BaseException:
            if self._anchored:
                self._stop()
            raise
        return None

    def finish(self) -> None:
        if self._anchored:
            self._stop()

    # ------------------------------------------------------------------ pictures

    def picture_after(self, t_still: float) -> np.ndarray:
        """The first frame captured after `t_still`: an older one may show the arm moving."""
        for _ in range(30):
            frame = self.camera.read(timeout_s=1.0)
            if frame.t_capture_s >= t_still:
                return frame.image
        raise CaptureAborted("the camera delivers only frames older than the robot's stillness")

    def judge(self, image: np.ndarray) -> BoardView:
        return observe(image, self.spec, self.K, self.dist)


@dataclass
class CaptureReport:
    views: list[ViewRecord]
    diversity: dict[str, float]
    aborted: str | None = None

    @property
    def accepted(self) -> int:
        return sum(v.accepted for v in self.views)


ViewCallback = Callable[[int, ViewRecord, dict[str, float]], None]


def _write_dataset(
    out: Path, mode: str, spec: BoardSpec, camera_id: dict, robot_id: dict, intr, records
) -> None:
    meta = {
        "mode": mode,
        "board": asdict(spec),
        "camera": camera_id,
        "robot": robot_id,
        "intrinsics": intrinsics_dict(intr),
        "views": [asdict(r) for r in records],
    }
    (out / "dataset.json").write_text(json.dumps(meta, indent=1) + "\n")


def run_capture(
    session: Capture,
    poses: Iterable[np.ndarray | None],
    out: Path,
    *,
    mode: str,
    camera_id: dict[str, Any],
    robot_id: dict[str, Any],
    on_view: ViewCallback | None = None,
) -> CaptureReport:
    """Visit each pose (None: the technician has placed the arm by hand; nothing is commanded),
    photograph, judge, and keep writing `out/dataset.json` so that an abort loses nothing."""
    out.mkdir(parents=True, exist_ok=True)
    records: list[ViewRecord] = []
    photographed: list[ViewRecord] = []  # the dataset lists only views with an image
    accepted_poses: list[np.ndarray] = []
    report = CaptureReport(records, {})
    try:
        for k, q in enumerate(poses):
            if q is not None:
                session.move_to(q)
            t_still = session.hold_until_still()
            state = session.state
            T_bg = session.fk.flange_pose(state.q)
            name = f"view_{k:03d}.png"
            if t_still is None:
                record = ViewRecord(
                    name, state.q.tolist(), T_bg.tolist(), False, "the arm did not settle", 0, 0.0
                )
                records.append(record)
            else:
                image = session.picture_after(t_still)
                cv2.imwrite(str(out / name), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
                verdict = session.judge(image)
                record = ViewRecord(
                    name,
                    state.q.tolist(),
                    T_bg.tolist(),
                    verdict.accepted,
                    verdict.reason,
                    verdict.corners,
                    float(verdict.rms_px) if np.isfinite(verdict.rms_px) else -1.0,
                )
                records.append(record)
                photographed.append(record)
                if verdict.accepted:
                    accepted_poses.append(T_bg)
            report.diversity = diversity(accepted_poses)
            _write_dataset(
                out, mode, session.spec, camera_id, robot_id, session.intrinsics, photographed
            )
            if on_view is not None:
                on_view(k, record, report.diversity)
    except CaptureAborted as exc:
        report.aborted = str(exc)
        log.error("capture aborted: %s", exc)
    finally:
        session.finish()
    return report


def plan_poses(plan: Plan) -> Iterator[np.ndarray]:
    for view in plan.views:
        yield np.asarray(view.q, dtype=float)


def diversity_verdict(div: dict[str, float], thresholds: Thresholds | None = None) -> str:
    """The diversity meter's words: what the solver will say about these views."""
    thresholds = thresholds or Thresholds()
    rot, spread = div.get("largest_rotation_deg", 0.0), div.get("axis_spread", 0.0)
    rot_ok, spread_ok = rot >= thresholds.min_rotation_deg, spread >= thresholds.min_axis_spread
    words = (
        f"rotation {rot:.0f}° (need {thresholds.min_rotation_deg:g}), "
        f"axis spread {spread:.2f} (need {thresholds.min_axis_spread:g})"
    )
    return words + (" ✓" if rot_ok and spread_ok else "")
