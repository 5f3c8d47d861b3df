"""A calibration problem with a known answer: a hidden true mounting, planned robot poses, and
the board rendered through a pinhole camera at each of them (`calib selftest`, the tests).

The board is OpenCV's own drawing of it (`generateImage`), warped by the homography of its pose
(`warpPerspective`, the exact image of a plane through a pinhole), with sensor noise added. The
real detector and solver then run on those images, so what is measured is the pipeline, not a
shortcut around it.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from edgevla.calibration.board import BoardSpec
from edgevla.calibration.transforms import inv, make_T, rotation

PX_PER_M = 8000  # the board's drawing: 0.04 m squares are 320 px


@dataclass(frozen=True)
class Camera:
    width: int = 1280
    height: int = 960
    fx: float = 900.0
    fy: float = 900.0

    @property
    def K(self) -> np.ndarray:
        return np.array(
            [[self.fx, 0, (self.width - 1) / 2], [0, self.fy, (self.height - 1) / 2], [0, 0, 1.0]]
        )


def render(
    spec: BoardSpec, cam: Camera, T_camera_board: np.ndarray, noise: float, rng: np.random.Generator
) -> np.ndarray:
    """The board at `T_camera_board` as an 8-bit grey image, with Gaussian pixel noise."""
    board = spec.build()
    size = (
        int(spec.squares_x * spec.square_m * PX_PER_M),
        int(spec.squares_y * spec.square_m * PX_PER_M),
    )
    drawing = board.generateImage(size, marginSize=0, borderBits=1)
    # Board-drawing pixel (u, v) is the board point (u, v, 0) / PX_PER_M, in metres.
    R, t = T_camera_board[:3, :3], T_camera_board[:3, 3]
    H = cam.K @ np.column_stack([R[:, 0], R[:, 1], t]) @ np.diag([1 / PX_PER_M, 1 / PX_PER_M, 1])
    image = cv2.warpPerspective(
        drawing,
        H,
        (cam.width, cam.height),
        flags=cv2.INTER_AREA,
        borderMode=cv2.BORDER_CONSTANT,
        borderValue=200,
    )
    noisy = image.astype(np.float32) + rng.normal(0.0, noise, image.shape)
    return np.clip(np.rint(noisy), 0, 255).astype(np.uint8)


@dataclass(frozen=True)
class Scene:
    """The hidden truth of one calibration problem."""

    mode: str  # eye_in_hand | eye_to_hand
    X_true: np.ndarray  # T_gripper_camera (eye in hand) or T_base_camera (eye to hand)
    T_fixed: np.ndarray  # T_base_board (eye in hand) or T_gripper_board (eye to hand)
    board_centre: np.ndarray  # in the board's frame (its origin is a corner)

    def T_camera_board(self, T_base_gripper: np.ndarray) -> np.ndarray:
        if self.mode == "eye_in_hand":
            return inv(self.X_true) @ inv(T_base_gripper) @ self.T_fixed
        return inv(self.X_true) @ T_base_gripper @ self.T_fixed

    def T_base_gripper(self, T_camera_board: np.ndarray) -> np.ndarray:
        """The robot pose that shows the board at `T_camera_board`."""
        if self.mode == "eye_in_hand":
            return self.T_fixed @ inv(T_camera_board) @ inv(self.X_true)
        return self.X_true @ T_camera_board @ inv(self.T_fixed)


def default_scene(mode: str, spec: BoardSpec) -> Scene:
    if mode == "eye_in_hand":
        # A wrist camera 6 cm off the flange axis, looking along the tool, slightly rolled; the
        # board flat on the table, face up, 0.55 m in front of the base.
        X = make_T(rotation([0, 0, 1], 8.0) @ rotation([1, 0, 0], -3.0), [0.061, -0.018, 0.034])
        T_fixed = make_T(rotation([1, 0, 0], 180.0), [0.55, -0.10, 0.02])
    elif mode == "eye_to_hand":
        # A scene camera 1.2 m from the base, looking back at the workspace; the board held by
        # the tool, 1 cm in front of the flange.
        X = make_T(rotation([0, 1, 0], -125.0) @ rotation([0, 0, 1], 90.0), [1.05, 0.12, 0.78])
        T_fixed = make_T(rotation([0, 0, 1], 30.0), [-0.02, 0.03, 0.01])
    else:
        raise ValueError(f"mode must be eye_in_hand or eye_to_hand, not {mode!r}")
    return Scene(mode, X, T_fixed, spec.centre)


def plan_poses(
    scene: Scene,
    count: int,
    rng: np.random.Generator,
    *,
    distance_m: float = 0.5,
    tilt_deg: float = 25.0,
    roll_deg: float = 40.0,
    single_axis: bool = False,
) -> list[np.ndarray]:
    """`count` gripper poses that keep the board in view: the board facing the camera at
    `distance_m`, turned about its centre by tilts about two axes and a roll about the optical
    axis, and shifted by a few centimetres. `single_axis` rolls only: the degenerate set (all
    rotations about one axis) a solver must refuse."""
    poses = []
    for _ in range(count):
        if single_axis:
            R_var = rotation([0, 0, 1], rng.uniform(-roll_deg, roll_deg))
        else:
            R_var = (
                rotation([1, 0, 0], rng.uniform(-tilt_deg, tilt_deg))
                @ rotation([0, 1, 0], rng.uniform(-tilt_deg, tilt_deg))
                @ rotation([0, 0, 1], rng.uniform(-roll_deg, roll_deg))
            )
        shift = rng.uniform(-0.03, 0.03, 3)
        T_cb = (
            make_T(np.eye(3), [0, 0, distance_m])
            @ make_T(R_var, shift)
            @ make_T(np.eye(3), -scene.board_centre)
        )
        poses.append(scene.T_base_gripper(T_cb))
    return poses
