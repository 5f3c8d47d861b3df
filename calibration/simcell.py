"""The calibration cell in MuJoCo: the tabletop scene plus a ChArUco board and a camera at a hidden
true mounting, so that plan → capture → solve → verify runs here as it does on a robot.

The board is OpenCV's drawing of it, used as the texture of a thin slab whose texture coordinates
pin the drawing's corners to the board's physical corners; the camera is a MuJoCo camera rendered
offscreen. Eye in hand: the camera rides on the flange and the board lies on the table (clear of
the cubes' area). Eye to hand: the camera stands beside the table and the board is held by the
tool, beyond the fingertips.

The robot is `SimRobot` on a `SimClock` that moves only when the capture loop sleeps: the
physics is exactly what real time would give, without waiting for it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

import edgevla.sim  # noqa: F401  (sets MUJOCO_GL before anything imports mujoco)
from edgevla.calibration.board import BoardSpec
from edgevla.calibration.transforms import look_at, make_T, rotation
from edgevla.runtime.devices import CameraIntrinsics, CameraTimeout, Frame
from edgevla.runtime.kinematics import UR5E, RobotModel
from edgevla.sim.clock import SimClock

CALIBRATION_CAMERA = "calibration"
_TEXTURE_PX_PER_M = 5000  # 0.04 m squares are 200 texels: sharper than any view of them
_MARGIN_M = 0.01  # the white border a printed board has around its pattern
_SLAB_M = 0.003


@dataclass(frozen=True)
class CameraModel:
    """A pinhole camera as MuJoCo renders it: square pixels, centred principal point."""

    width: int = 1280
    height: int = 720
    fovy_deg: float = 42.5  # a RealSense D435's colour stream at 1280 x 720

    def intrinsics(self) -> CameraIntrinsics:
        f = (self.height / 2) / math.tan(math.radians(self.fovy_deg) / 2)
        # OpenGL puts pixel centres at +0.5, OpenCV at integers: the centre is (w - 1) / 2.
        return CameraIntrinsics(
            self.width, self.height, f, f, (self.width - 1) / 2, (self.height - 1) / 2
        )


@dataclass(frozen=True)
class SimCell:
    """The hidden truth of one simulated cell."""

    mode: str  # eye_in_hand | eye_to_hand
    X_true: np.ndarray  # T_gripper_camera (eye in hand) or T_base_camera (eye to hand)
    T_fixed: np.ndarray  # T_base_board (eye in hand) or T_gripper_board (eye to hand)
    spec: BoardSpec = field(default_factory=BoardSpec)
    camera: CameraModel = field(default_factory=CameraModel)


def default_cell(mode: str, spec: BoardSpec | None = None) -> SimCell:
    spec = spec or BoardSpec()
    if mode == "eye_in_hand":
        # A wrist camera 6 cm off the tool axis, looking along the tool, slightly rolled and
        # tipped; the board face up on the table, to the side of the cubes' area.
        X = make_T(rotation([0, 0, 1], 8.0) @ rotation([1, 0, 0], -3.0), [0.061, -0.018, 0.034])
        T_fixed = make_T(
            rotation([1, 0, 0], 180.0) @ rotation([0, 0, 1], 4.0), [-0.62, 0.40, _SLAB_M]
        )
    elif mode == "eye_to_hand":
        # A camera on a stand beside the table, 1.1 m from the workspace, looking at it; the
        # board held 11.5 cm beyond the flange (past the fingertips), facing away from the tool.
        eye, target = np.array([-1.05, 0.75, 0.70]), np.array([-0.45, 0.05, 0.30])
        X = look_at(eye, target, roll_deg=3.0)
        R = rotation([1, 0, 0], 180.0) @ rotation([0, 0, 1], 6.0)
        T_fixed = make_T(R, -R @ spec.centre + np.array([0.004, -0.006, 0.115]))
    else:
        raise ValueError(f"mode must be eye_in_hand or eye_to_hand, not {mode!r}")
    return SimCell(mode, X, T_fixed, spec)


def _fmt(values) -> str:
    return " ".join(f"{float(v):.9g}" for v in np.ravel(values))


def _board_mesh(spec: BoardSpec) -> str:
    """A slab whose face at z = 0 is the board's printed face (its normal is the board's -z, as
    OpenCV's board frame has it) and whose texture coordinates put the drawing's corners on the
    pattern's corners, the margin outside them."""
    w, h = spec.squares_x * spec.square_m, spec.squares_y * spec.square_m
    m = _MARGIN_M
    xs, ys = (-m, w + m), (-m, h + m)
    corners = [(xs[0], ys[0]), (xs[1], ys[0]), (xs[1], ys[1]), (xs[0], ys[1])]
    vertices = [(x, y, z) for z in (0.0, _SLAB_M) for x, y in corners]
    texcoords = [((x + m) / (w + 2 * m), (y + m) / (h + 2 * m)) for _ in (0, 1) for x, y in corners]
    faces = [
        (0, 2, 1), (0, 3, 2), (4, 5, 6), (4, 6, 7), (0, 1, 5), (0, 5, 4),
        (1, 2, 6), (1, 6, 5), (2, 3, 7), (2, 7, 6), (3, 0, 4), (3, 4, 7),
    ]  # fmt: skip
    return (
        f'    <texture name="charuco" type="2d" file="charuco.png"/>\n'
        f'    <material name="charuco" texture="charuco" specular="0" shininess="0"/>\n'
        f'    <mesh name="charuco" vertex="{_fmt(vertices)}" texcoord="{_fmt(texcoords)}"'
        f' face="{_fmt(faces)}"/>\n'
    )


def board_png(spec: BoardSpec) -> bytes:
    w, h = spec.squares_x * spec.square_m, spec.squares_y * spec.square_m
    size = (
        round((w + 2 * _MARGIN_M) * _TEXTURE_PX_PER_M),
        round((h + 2 * _MARGIN_M) * _TEXTURE_PX_PER_M),
    )
    drawing = spec.build().generateImage(
        size, marginSize=round(_MARGIN_M * _TEXTURE_PX_PER_M), borderBits=1
    )
    ok, png = cv2.imencode(".png", cv2.cvtColor(drawing, cv2.COLOR_GRAY2RGB))
    if not ok:
        raise RuntimeError("OpenCV could not encode the board texture")
    return png.tobytes()


def _body(name: str, T: np.ndarray, inner: str) -> str:
    return (
        f'<body name="{name}" pos="{_fmt(T[:3, 3])}" xyaxes="{_fmt(T[:3, 0])} {_fmt(T[:3, 1])}">'
        f"{inner}</body>\n"
    )


def scene_extras(cell: SimCell):  # -> SceneExtras (sim.scene imports mujoco)
    from edgevla.sim.scene import SceneExtras

    board = (
        '<geom name="charuco" type="mesh" mesh="charuco" material="charuco" contype="0"'
        ' conaffinity="0" mass="0.05"/>'
    )
    cam = cell.camera
    # MuJoCo's camera looks down its -z with y up; OpenCV's down +z with y down.
    R_mj = cell.X_true[:3, :3] @ np.diag([1.0, -1.0, -1.0])
    camera = (
        f'<camera name="{CALIBRATION_CAMERA}" pos="{_fmt(cell.X_true[:3, 3])}"'
        f' xyaxes="{_fmt(R_mj[:, 0])} {_fmt(R_mj[:, 1])}" fovy="{cam.fovy_deg:.9g}"/>\n'
    )
    if cell.mode == "eye_in_hand":
        world, gripper = "    " + _body("charuco_board", cell.T_fixed, board), camera
    else:
        world, gripper = "    " + camera, _body("charuco_board", cell.T_fixed, board)
    return SceneExtras(
        assets=_board_mesh(cell.spec),
        world=world,
        gripper=gripper,
        files={"charuco.png": board_png(cell.spec)},
        buffer=(cam.width, cam.height),
    )


class SimCalibrationCamera:
    """The `Camera` protocol over the cell's hidden camera: each read renders the world as it is
    at the clock's present (the robot's physics is advanced to it first)."""

    def __init__(self, robot, cell: SimCell, clock) -> None:  # SimRobot, SimCell, SimClock
        self.name = "sim-calibration"
        self.serial = f"SIM-{cell.mode}"
        self.robot = robot
        self.cell = cell
        self.intrinsics = cell.camera.intrinsics()
        self._clock = clock
        self._renderer = None
        self._state = np.zeros(robot.world.state_size)
        self._frames = 0

    def start(self) -> None:
        import mujoco

        from edgevla.sim.camera import _require_headless_gl

        if self._renderer is None:
            _require_headless_gl(self.name)
            cam = self.cell.camera
            self._renderer = mujoco.Renderer(self.robot.world.model, cam.height, cam.width)

    def read(self, timeout_s: float) -> Frame:
        if self._renderer is None:
            raise CameraTimeout(f"{self.name}: not started")
        self.robot.world_state(self._state)  # advances the physics to the present
        self._renderer.update_scene(self.robot.world.data, CALIBRATION_CAMERA)
        image = self._renderer.render().copy()
        self._frames += 1
        now = self._clock()
        return Frame(image, self._frames, now, now)

    def stop(self) -> None:
        if self._renderer is not None:
            self._renderer.close()
            self._renderer = None


def make_sim_cell(mode: str, robot_model: RobotModel = UR5E, spec: BoardSpec | None = None):
    """(SimRobot, SimCalibrationCamera, SimCell, SimClock) of a fresh cell at home pose."""
    from edgevla.sim.robot import SimRobot
    from edgevla.sim.world import SimWorld

    cell = default_cell(mode, spec)
    clock = SimClock(1000.0)
    world = SimWorld(0, 96, robot_model, extras=scene_extras(cell))
    robot = SimRobot(world=world, robot=robot_model, clock=clock)
    return robot, SimCalibrationCamera(robot, cell, clock), cell, clock


def nominal_guess(cell: SimCell, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """What a technician would measure with a tape: the truth off by a few centimetres and
    degrees. The plan is made from this, never from the truth."""

    def perturb(T: np.ndarray, mm: float, deg: float) -> np.ndarray:
        axis = rng.normal(size=3)
        return make_T(
            rotation(axis, rng.uniform(-deg, deg)) @ T[:3, :3],
            T[:3, 3] + rng.uniform(-mm, mm, 3) / 1000.0,
        )

    if cell.mode == "eye_in_hand":
        return {
            "T_base_board": perturb(cell.T_fixed, 30.0, 5.0),
            "T_gripper_camera": perturb(cell.X_true, 15.0, 5.0),
        }
    return {
        "T_base_camera": perturb(cell.X_true, 50.0, 4.0),
        "T_gripper_board": perturb(cell.T_fixed, 15.0, 5.0),
    }


def capture_sim_dataset(
    mode: str,
    out: Path,
    *,
    views: int = 15,
    seed: int = 0,
    spec: BoardSpec | None = None,
    on_view=None,
):  # -> (CaptureReport, Plan, SimCell)
    """Plan from a tape-measure guess and capture `views` views of a fresh cell into `out`: what
    `calib plan --sim` and `calib capture --robot sim` do, in one process."""
    from edgevla.calibration.capture import Capture, plan_poses, run_capture
    from edgevla.calibration.plan import PlanSettings, make_plan
    from edgevla.runtime.config import LimitsConfig
    from edgevla.runtime.devices import RobotState

    robot, camera, cell, clock = make_sim_cell(mode, spec=spec)
    state = RobotState()
    robot.read_state(state)
    guess = nominal_guess(cell, np.random.default_rng(seed))
    limits = LimitsConfig()
    plan = make_plan(
        mode, guess, cell.spec, robot.world.robot, limits, state.q, PlanSettings(views, seed=seed)
    )
    camera.start()
    try:
        session = Capture(
            robot, camera, camera.intrinsics, robot.world.robot, limits, cell.spec,
            clock=clock, sleep=clock.sleep,
        )  # fmt: skip
        report = run_capture(
            session, plan_poses(plan), out, mode=mode,
            camera_id={"name": camera.name, "serial": camera.serial,
                       "width": camera.intrinsics.width, "height": camera.intrinsics.height},
            robot_id={"model": robot.world.robot.name, "serial": "SIM"},
            on_view=on_view,
        )  # fmt: skip
    finally:
        camera.stop()
        robot.close()
    return report, plan, cell
