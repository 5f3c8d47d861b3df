"""UR5 / UR5e forward kinematics from UR's published DH parameters, and the robots' limits.

Used by the safety filter (TCP workspace box, every control cycle) and by the simulator, whose
MJCF model is built from the same table. Real robots carry individually calibrated kinematics;
these nominal values are what UR publishes.
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
