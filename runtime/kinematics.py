"""UR5 / UR5e forward kinematics from UR's published DH parameters, the robots' limits, and a
damped-least-squares inverse.

Used by the safety filter (TCP workspace box, every control cycle), by the simulator, whose MJCF
model is built from the same table, by the scripted expert and by calibration planning. Real
robots carry individually calibrated kinematics; these nominal values are what UR publishes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

TAU = 2.0 * math.pi


@dataclass(frozen=True)
class RobotModel:
    """Nominal kinematics (standard DH, metres/radians) and limits of one arm type."""

    name: str
    d: tuple[float, ...]
    a: tuple[float, ...]
    alpha: tuple[float, ...]
    joint_min_rad: tuple[float, ...]
    joint_max_rad: tuple[float, ...]
    max_speed_rad_s: tuple[float, ...]
    period_s: float  # the controller's servo period (RTDE frequency)


_ALPHA = (math.pi / 2, 0.0, 0.0, math.pi / 2, -math.pi / 2, 0.0)
# Joint position ±2π, the elbow usually ±π; every joint π rad/s (UR's defaults).
_MIN = (-TAU, -TAU, -math.pi, -TAU, -TAU, -TAU)
_MAX = (TAU, TAU, math.pi, TAU, TAU, TAU)

UR5E = RobotModel(
    name="ur5e",
    d=(0.1625, 0.0, 0.0, 0.1333, 0.0997, 0.0996),
    a=(0.0, -0.425, -0.3922, 0.0, 0.0, 0.0),
    alpha=_ALPHA,
    joint_min_rad=_MIN,
    joint_max_rad=_MAX,
    max_speed_rad_s=(math.pi,) * 6,
    period_s=0.002,  # 500 Hz, e-Series
)
UR5 = RobotModel(
    name="ur5",
    d=(0.089159, 0.0, 0.0, 0.10915, 0.09465, 0.0823),
    a=(0.0, -0.425, -0.39225, 0.0, 0.0, 0.0),
    alpha=_ALPHA,
    joint_min_rad=_MIN,
    joint_max_rad=_MAX,
    max_speed_rad_s=(math.pi,) * 6,
    period_s=0.008,  # 125 Hz, CB3
)
ROBOT_MODELS = {m.name: m for m in (UR5E, UR5)}


class ForwardKinematics:
    """Base-to-flange transforms with preallocated buffers: no arrays allocated per call."""

    def __init__(self, model: RobotModel) -> None:
        self.model = model
        self._d = np.asarray(model.d)
        self._a = np.asarray(model.a)
        self._ca = np.cos(np.asarray(model.alpha))
        self._sa = np.sin(np.asarray(model.alpha))
        self._link = np.eye(4)
        self._buf = (np.eye(4), np.eye(4))
        self._pose = np.eye(4)

    def _dh(self, i: int, theta: float) -> np.ndarray:
        ct, st = math.cos(theta), math.sin(theta)
        ca, sa = self._ca[i], self._sa[i]
        t = self._link
        t[0, 0], t[0, 1], t[0, 2], t[0, 3] = ct, -st * ca, st * sa, self._a[i] * ct
        t[1, 0], t[1, 1], t[1, 2], t[1, 3] = st, ct * ca, -ct * sa, self._a[i] * st
        t[2, 0], t[2, 1], t[2, 2], t[2, 3] = 0.0, sa, ca, self._d[i]
        return t

    def flange_pose(self, q: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """4×4 pose of the tool flange in the base frame (UR's base, z up)."""
        acc, tmp = self._buf
        acc[...] = 0.0
        acc[0, 0] = acc[1, 1] = acc[2, 2] = acc[3, 3] = 1.0
        for i in range(6):
            np.matmul(acc, self._dh(i, float(q[i])), out=tmp)
            acc, tmp = tmp, acc
        if out is None:
            return acc.copy()
        out[...] = acc
        return out

    def tcp_position(self, q: np.ndarray, out: np.ndarray) -> np.ndarray:
        """Flange position [x, y, z] in metres, written into `out`."""
        out[:] = self.flange_pose(q, self._pose)[:3, 3]
        return out


class InverseKinematics:
    """Damped least squares on position and orientation of the flange."""

    def __init__(
        self, model: RobotModel, damping: float = 1e-3, *, exact_rotation: bool = False
    ) -> None:
        """`exact_rotation` steers by the rotation vector (axis · angle) instead of the small-angle
        error: slower per step, but it converges from a start far from the target orientation,
        where the small-angle error can settle on a half-turn."""
        self.fk = ForwardKinematics(model)
        self.exact_rotation = exact_rotation
        self.lo = np.asarray(model.joint_min_rad)
        self.hi = np.asarray(model.joint_max_rad)
        self.damping = damping
        self._pose = np.eye(4)
        self._probe = np.eye(4)

    def _error(self, pose: np.ndarray, position: np.ndarray, rotation: np.ndarray) -> np.ndarray:
        e_pos = position - pose[:3, 3]
        if self.exact_rotation:
            return np.concatenate([e_pos, rotation_vector(rotation @ pose[:3, :3].T)])
        # Small-angle orientation error between the current and the target frame's axes.
        e_rot = 0.5 * sum(np.cross(pose[:3, i], rotation[:3, i]) for i in range(3))
        return np.concatenate([e_pos, e_rot])

    def solve(
        self,
        position: np.ndarray,
        rotation: np.ndarray,
        seed_q: np.ndarray,
        iterations: int = 30,
        tolerance: float = 1e-6,
    ) -> tuple[np.ndarray, float]:
        """Joints placing the flange at (position, rotation), near `seed_q`; and the residual."""
        q = np.asarray(seed_q, dtype=float).copy()
        jac = np.zeros((6, 6))
        eps = 1e-6
        residual = np.inf
        for _ in range(iterations):
            pose = self.fk.flange_pose(q, self._pose)
            err = self._error(pose, position, rotation)
            residual = float(np.linalg.norm(err))
            if residual < tolerance:
                break
            for j in range(6):
                q[j] += eps
                probe = self.fk.flange_pose(q, self._probe)
                q[j] -= eps
                jac[:3, j] = (probe[:3, 3] - pose[:3, 3]) / eps
                jac[3:, j] = (self._error(probe, position, rotation) - err)[3:] / -eps
            lam = self.damping
            dq = jac.T @ np.linalg.solve(jac @ jac.T + lam * np.eye(6), err)
            q += dq
            np.clip(q, self.lo, self.hi, out=q)
        return q, self.pose_error(q, position, rotation)

    def pose_error(self, q: np.ndarray, position: np.ndarray, rotation: np.ndarray) -> float:
        """sqrt(position error² + orientation angle²) at `q` (metres, radians). The iteration's
        small-angle error vanishes at a half-turn too, so a converged solve can still hold the
        flange upside down; this is the honest residual."""
        pose = self.fk.flange_pose(q, self._pose)
        cos = (np.trace(rotation @ pose[:3, :3].T) - 1.0) / 2.0
        angle = math.acos(min(1.0, max(-1.0, cos)))
        return math.hypot(float(np.linalg.norm(position - pose[:3, 3])), angle)


def rotation_vector(R: np.ndarray) -> np.ndarray:
    """axis · angle of rotation matrix R (the log map), angle in [0, π]."""
    cos = min(1.0, max(-1.0, (np.trace(R) - 1.0) / 2.0))
    angle = math.acos(cos)
    w = np.array([R[2, 1] - R[1, 2], R[0, 2] - R[2, 0], R[1, 0] - R[0, 1]])
    if angle < 1e-9:
        return 0.5 * w
    if math.pi - angle > 1e-4:
        return w * (angle / (2.0 * math.sin(angle)))
    # Near a half-turn sin(angle) vanishes: the axis is R + I's largest column.
    B = R + np.eye(3)
    axis = B[:, int(np.argmax(np.diag(B)))]
    return axis / np.linalg.norm(axis) * angle
