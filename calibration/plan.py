"""`calib plan`: reachable robot poses that show the board from diverse directions.

A hand-eye solve needs the tool to turn about at least two non-parallel axes between views, and
each view needs the board well inside the image at a tilt that makes its pose unambiguous
(NOTES.md). The plan is made from what a technician can measure with a tape: roughly where the
board is (eye in hand) or where the camera is (eye to hand), and the nominal mounting from the
drawing. Errors of a few centimetres and degrees only shift the board in the image.

Eye in hand: the camera moves on a spherical cap above the board, looking at its centre: tilt
from the board's normal, azimuth around it, roll about the optical axis. Eye to hand: the board,
held by the tool, moves through the camera's view at the planned distance, facing the camera
within the tilt range, rolled about its normal. Tilt and azimuth follow low-discrepancy sequences
(evenly spread for any number of views); roll is seeded.

Every pose is solved by inverse kinematics from several seeds and kept only when the solution is
exact, inside the joint limits less their margin and inside the workspace box with clearance,
and when the straight joint-space move to it from the previous view stays inside the box too.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgevla.calibration.board import BoardSpec
from edgevla.calibration.handeye import rotation_diversity
from edgevla.calibration.transforms import inv, make_T, rotation
from edgevla.runtime.config import LimitsConfig
from edgevla.runtime.errors import EdgeVlaError
from edgevla.runtime.kinematics import ForwardKinematics, InverseKinematics, RobotModel

PLAN_VERSION = 1
_GOLDEN = (math.sqrt(5.0) - 1.0) / 2.0
_IK_TOLERANCE = 1e-5
_PATH_SAMPLES = 24
DEFAULT_DISTANCE_M = {"eye_in_hand": 0.45, "eye_to_hand": 0.85}


class PlanError(EdgeVlaError):
    """No usable plan: the board or camera is out of reach, or too few poses are reachable."""


@dataclass(frozen=True)
class PlanSettings:
    views: int = 18
    distance_m: float = 0.0  # camera to board centre; 0: 0.45 m eye in hand, 0.85 eye to hand
    min_tilt_deg: float = 12.0
    max_tilt_deg: float = 35.0
    max_roll_deg: float = 40.0
    clearance_m: float = 0.05  # flange above the workspace floor, and inside its walls
    seed: int = 0

    def __post_init__(self) -> None:
        if self.views < 3:
            raise PlanError(f"plan at least 3 views, not {self.views}")
        if self.distance_m != 0.0 and not 0.15 <= self.distance_m <= 2.0:
            raise PlanError(f"distance {self.distance_m} m: use 0.15-2 m")
        if not 0 <= self.min_tilt_deg < self.max_tilt_deg <= 60:
            raise PlanError("tilt range must satisfy 0 <= min < max <= 60 degrees")


@dataclass
class PlannedView:
    q: list[float]
    T_base_gripper: list[list[float]]
    tilt_deg: float
    azimuth_deg: float
    roll_deg: float


@dataclass
class Plan:
    mode: str
    robot_model: str
    guess: dict[str, list[list[float]]]  # the measured guesses the plan was made from
    settings: dict[str, Any]
    views: list[PlannedView]
    skipped: list[str] = field(default_factory=list)  # candidate poses left out, and why
    diversity: dict[str, float] = field(default_factory=dict)
    board: dict[str, Any] = field(default_factory=dict)  # the BoardSpec the plan was made for
    version: int = PLAN_VERSION

    def write(self, path: Path) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(asdict(self), indent=1) + "\n")
        return path

    @classmethod
    def load(cls, path: Path) -> Plan:
        try:
            data = json.loads(Path(path).read_text())
        except FileNotFoundError:
            raise PlanError(
                f"{path}: no such plan file (make one with `edgevla calib plan`)"
            ) from None
        except json.JSONDecodeError as exc:
            raise PlanError(f"{path}: not a plan file ({exc})") from None
        if data.get("version") != PLAN_VERSION:
            raise PlanError(f"{path}: plan version {data.get('version')}, expected {PLAN_VERSION}")
        views = [PlannedView(**v) for v in data.pop("views")]
        return cls(views=views, **data)


def diversity(poses: list[np.ndarray]) -> dict[str, float]:
    """What the solver will judge (largest relative rotation, axis spread) for these poses."""
    largest, spread, _ = rotation_diversity(poses) if len(poses) >= 2 else (0.0, 0.0, None)
    return {"largest_rotation_deg": round(largest, 2), "axis_spread": round(spread, 3)}


def _frame_from_z(z: np.ndarray, x_hint: np.ndarray) -> np.ndarray:
    z = z / np.linalg.norm(z)
    x = x_hint - z * (x_hint @ z)
    if np.linalg.norm(x) < 1e-6:
        x = np.cross(z, [0.0, 0.0, 1.0]) if abs(z[2]) < 0.9 else np.cross(z, [0.0, 1.0, 0.0])
    x /= np.linalg.norm(x)
    return np.column_stack([x, np.cross(z, x), z])


def _candidates(
    mode: str, guess: dict[str, np.ndarray], board_centre: np.ndarray, s: PlanSettings, n: int
):
    """(T_base_gripper, tilt, azimuth, roll) for `n` candidate views."""
    rng = np.random.default_rng(s.seed)
    distance = s.distance_m or DEFAULT_DISTANCE_M[mode]
    for k in range(n):
        tilt = s.min_tilt_deg + (s.max_tilt_deg - s.min_tilt_deg) * ((k * _GOLDEN + 0.5) % 1.0)
        azimuth = (k * 360.0 * _GOLDEN * _GOLDEN) % 360.0  # the golden angle, 137.5°
        roll = float(rng.uniform(-s.max_roll_deg, s.max_roll_deg))
        t, a = math.radians(tilt), math.radians(azimuth)
        if mode == "eye_in_hand":
            T_bb = guess["T_base_board"]
            centre = (T_bb @ np.r_[board_centre, 1.0])[:3]
            e1, e2, up = T_bb[:3, 0], T_bb[:3, 1], -T_bb[:3, 2]  # the printed face looks up
            eye = centre + distance * (
                math.sin(t) * (math.cos(a) * e1 + math.sin(a) * e2) + math.cos(t) * up
            )
            aim = centre + rng.uniform(-0.02, 0.02, 3) * np.array([1.0, 1.0, 0.0])
            R = _frame_from_z(aim - eye, e1) @ rotation([0, 0, 1], roll)
            T_bc = make_T(R, eye)
            yield T_bc @ inv(guess["T_gripper_camera"]), tilt, azimuth, roll
        else:
            T_bcam = guess["T_base_camera"]
            # Board centre spread over the middle of the view; the board faces the camera.
            u, v = ((k * _GOLDEN * 2) % 1.0) - 0.5, ((k * _GOLDEN + 0.25) % 1.0) - 0.5
            p = np.array([0.35 * distance * u, 0.25 * distance * v, distance])
            tilt_axis = np.array([math.cos(a), math.sin(a), 0.0])
            R = (
                _frame_from_z(p, np.array([1.0, 0.0, 0.0]))
                @ rotation(tilt_axis, tilt)
                @ rotation([0, 0, 1], roll)
            )
            T_cb = make_T(R, p) @ make_T(np.eye(3), -board_centre)
            yield T_bcam @ T_cb @ inv(guess["T_gripper_board"]), tilt, azimuth, roll


def _in_box(p: np.ndarray, lo: np.ndarray, hi: np.ndarray, clearance: float) -> bool:
    return bool(np.all(p >= lo + clearance) and np.all(p <= hi - clearance))


def make_plan(
    mode: str,
    guess: dict[str, np.ndarray],
    spec: BoardSpec,
    model: RobotModel,
    limits: LimitsConfig,
    start_q: np.ndarray,
    settings: PlanSettings = PlanSettings(),
) -> Plan:
    """Plan `settings.views` reachable views, ordered for short moves from `start_q`."""
    needed = {"eye_in_hand": ("T_base_board", "T_gripper_camera")}.get(
        mode, ("T_base_camera", "T_gripper_board")
    )
    missing = [k for k in needed if k not in guess]
    if mode not in ("eye_in_hand", "eye_to_hand") or missing:
        raise PlanError(f"mode {mode!r} needs the guesses {needed}; missing {missing}")
    ik, fk = InverseKinematics(model, exact_rotation=True), ForwardKinematics(model)
    lo = np.asarray(limits.joint_min_rad) + limits.joint_margin_rad
    hi = np.asarray(limits.joint_max_rad) - limits.joint_margin_rad
    box_lo, box_hi = np.asarray(limits.workspace_min_m), np.asarray(limits.workspace_max_m)
    start_q = np.asarray(start_q, dtype=float)
    accepted: list[tuple[np.ndarray, np.ndarray, float, float, float]] = []
    skipped: list[str] = []
    for k, (T_bg, tilt, azimuth, roll) in enumerate(
        _candidates(mode, guess, spec.centre, settings, 4 * settings.views)
    ):
        if len(accepted) == settings.views:
            break
        label = f"candidate {k} (tilt {tilt:.0f}°, azimuth {azimuth:.0f}°, roll {roll:+.0f}°)"
        if not _in_box(T_bg[:3, 3], box_lo, box_hi, settings.clearance_m):
            skipped.append(f"{label}: flange outside the workspace box less clearance")
            continue
        # Seeded from the last views first, so that neighbouring views stay on one IK branch.
        seeds = [*(view[0] for view in accepted[-2:]), start_q]
        q = _exact_solution(ik, T_bg, seeds, lo, hi)
        if q is None:
            skipped.append(f"{label}: out of reach (no exact solution inside the joint limits)")
            continue
        accepted.append((q, T_bg, tilt, azimuth, roll))
    if len(accepted) < settings.views:
        raise PlanError(
            f"only {len(accepted)} of {settings.views} views are reachable inside the limits and "
            f"workspace ({len(skipped)} candidates left out, e.g. {skipped[:1]}): move the board "
            "(or camera) closer to the robot, or lower the distance or tilt"
        )
    views = _order(accepted, start_q)
    previous = start_q
    kept: list[PlannedView] = []
    for q, T_bg, tilt, azimuth, roll in views:
        path = [previous + (q - previous) * f for f in np.linspace(0.0, 1.0, _PATH_SAMPLES)]
        if not all(
            _in_box(fk.flange_pose(p)[:3, 3], box_lo, box_hi, settings.clearance_m / 2)
            for p in path
        ):
            skipped.append(
                f"view at tilt {tilt:.0f}°, azimuth {azimuth:.0f}°: the move to it leaves the "
                "workspace box"
            )
            continue
        kept.append(PlannedView(q.tolist(), T_bg.tolist(), tilt, azimuth, roll))
        previous = q
    return Plan(
        mode=mode,
        robot_model=model.name,
        guess={k: np.asarray(v).tolist() for k, v in guess.items()},
        settings=asdict(settings),
        views=kept,
        skipped=skipped,
        diversity=diversity([np.asarray(v.T_base_gripper) for v in kept]),
        board=asdict(spec),
    )


def _exact_solution(
    ik: InverseKinematics, T_bg: np.ndarray, seeds: list[np.ndarray], lo: np.ndarray, hi: np.ndarray
) -> np.ndarray | None:
    """The first seed's solution that reaches `T_bg` exactly inside [lo, hi], else None."""
    for seed in seeds:
        q, residual = ik.solve(T_bg[:3, 3], T_bg[:3, :3], seed, iterations=200)
        if residual < _IK_TOLERANCE and np.all(q >= lo) and np.all(q <= hi):
            return q
    return None


def _order(views: list, start_q: np.ndarray) -> list:
    """Nearest neighbour in joint space (largest joint move), from the start pose."""
    left, ordered, here = list(views), [], start_q
    while left:
        nearest = min(range(len(left)), key=lambda i: np.abs(left[i][0] - here).max())
        here = left[nearest][0]
        ordered.append(left.pop(nearest))
    return ordered
