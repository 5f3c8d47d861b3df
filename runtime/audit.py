"""An independent audit of a commanded trajectory against the configured limits.

Deliberately separate from the safety filter: it re-derives velocity, acceleration and jerk by
finite differences of the recorded commands and checks every sample, so a filter bug shows up
as a violation instead of being checked by the code that made it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from edgevla.runtime.config import LimitsConfig
from edgevla.runtime.kinematics import ForwardKinematics, RobotModel

# Finite differences of float64 positions at a 2 ms period carry rounding of ~1e-8 rad/s³ in
# jerk; anything above these relative tolerances is a real excess.
_REL_TOL = 1e-6
_ABS_TOL = 1e-9


@dataclass
class AuditResult:
    samples: int
    violations: dict[str, int] = field(default_factory=dict)
    worst: dict[str, float] = field(default_factory=dict)  # worst ratio to the limit, per kind

    @property
    def total(self) -> int:
        return sum(self.violations.values())


def _count(result: AuditResult, kind: str, excess: np.ndarray, ratio: np.ndarray) -> None:
    result.violations[kind] = int(np.count_nonzero(excess))
    result.worst[kind] = float(ratio.max()) if ratio.size else 0.0


def audit_commands(
    q: np.ndarray,
    gripper: np.ndarray,
    period_s: float,
    limits: LimitsConfig,
    robot: RobotModel,
) -> AuditResult:
    """Check commanded joint positions [T, 6] and gripper [T], one row per control period.

    Rows must be consecutive commands (a gap restarts the differences: audit each segment).
    """
    q = np.asarray(q, dtype=float)
    gripper = np.asarray(gripper, dtype=float)
    result = AuditResult(samples=len(q))
    if len(q) == 0:
        return result
    finite = np.isfinite(q).all(axis=1) & np.isfinite(gripper)
    result.violations["non_finite"] = int((~finite).sum())
    q, gripper = q[finite], gripper[finite]
    lo, hi = np.asarray(limits.joint_min_rad), np.asarray(limits.joint_max_rad)
    span = hi - lo
    outside = np.maximum(lo - q, q - hi)
    _count(result, "joint_position", outside > _ABS_TOL, 1 + np.maximum(outside, 0) / span)
    checks = (
        ("velocity", 1, np.asarray(limits.max_velocity_rad_s)),
        ("acceleration", 2, np.asarray(limits.max_acceleration_rad_s2)),
        ("jerk", 3, np.asarray(limits.max_jerk_rad_s3)),
    )
    for kind, order, limit in checks:
        deriv = np.diff(q, n=order, axis=0) / period_s**order
        ratio = np.abs(deriv) / limit
        _count(result, kind, ratio > 1 + _REL_TOL, ratio.max(axis=1) if len(ratio) else ratio)
    steps = np.abs(np.diff(q, axis=0)).max(axis=1) if len(q) > 1 else np.zeros(0)
    _count(
        result, "step", steps > limits.max_step_rad * (1 + _REL_TOL), steps / limits.max_step_rad
    )
    fk = ForwardKinematics(robot)
    tcp = np.array([fk.flange_pose(row)[:3, 3] for row in q])
    box_lo, box_hi = np.asarray(limits.workspace_min_m), np.asarray(limits.workspace_max_m)
    beyond = np.maximum(box_lo - tcp, tcp - box_hi).max(axis=1)
    _count(result, "workspace", beyond > _ABS_TOL, np.maximum(beyond, 0))
    g_out = (gripper < limits.gripper_min - _ABS_TOL) | (gripper > limits.gripper_max + _ABS_TOL)
    _count(result, "gripper_range", g_out, g_out.astype(float))
    g_speed = np.abs(np.diff(gripper)) / period_s / limits.max_gripper_speed_per_s
    _count(result, "gripper_speed", g_speed > 1 + _REL_TOL, g_speed)
    return result
