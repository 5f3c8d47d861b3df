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

    Rows must be consecutive commands. A non-finite row counts once, under `non_finite`;
    finite differences are taken only within runs of finite rows. `worst` holds, per kind,
    the largest ratio to the limit; for positions (joints, workspace, gripper) 1 + the distance
    past the bound as a fraction of the allowed range, so > 1 exactly when outside.
    """
    q = np.asarray(q, dtype=float).reshape(-1, 6)
    gripper = np.asarray(gripper, dtype=float).reshape(-1)
    result = AuditResult(samples=len(q))
    if len(q) == 0:
        return result
    finite = np.isfinite(q).all(axis=1) & np.isfinite(gripper)
    result.violations["non_finite"] = int((~finite).sum())
    breaks = np.flatnonzero(np.diff(finite.astype(np.int8)) != 0) + 1
    runs = [r for r in np.split(np.arange(len(q)), breaks) if finite[r[0]]]
    lo, hi = np.asarray(limits.joint_min_rad), np.asarray(limits.joint_max_rad)
    qf = q[finite]
    outside = np.maximum(lo - qf, qf - hi)
    _count(
        result,
        "joint_position",
        (outside > _ABS_TOL).any(axis=1),
        1 + (np.maximum(outside, 0) / (hi - lo)).max(axis=1),
    )
    limits_by_order = {
        1: ("velocity", np.asarray(limits.max_velocity_rad_s)),
        2: ("acceleration", np.asarray(limits.max_acceleration_rad_s2)),
        3: ("jerk", np.asarray(limits.max_jerk_rad_s3)),
    }
    for order, (kind, limit) in limits_by_order.items():
        parts = [
            np.abs(np.diff(q[run], n=order, axis=0)) / period_s**order / limit
            for run in runs
            if len(run) > order
        ]
        ratio = np.concatenate(parts) if parts else np.zeros((0, 6))
        _count(result, kind, ratio > 1 + _REL_TOL, ratio)  # counted per joint and sample
    step_parts = [np.abs(np.diff(q[run], axis=0)).max(axis=1) for run in runs if len(run) > 1]
    steps = np.concatenate(step_parts) if step_parts else np.zeros(0)
    _count(
        result, "step", steps > limits.max_step_rad * (1 + _REL_TOL), steps / limits.max_step_rad
    )
    fk = ForwardKinematics(robot)
    tcp = np.array([fk.flange_pose(row)[:3, 3] for row in qf]).reshape(-1, 3)
    box_lo, box_hi = np.asarray(limits.workspace_min_m), np.asarray(limits.workspace_max_m)
    # Distances past a bound as a fraction of that axis's extent: > 1 exactly when outside.
    beyond = (np.maximum(box_lo - tcp, tcp - box_hi) / (box_hi - box_lo)).max(axis=1)
    _count(result, "workspace", beyond > _ABS_TOL, 1 + beyond)
    gf = gripper[finite]
    g_span = limits.gripper_max - limits.gripper_min
    g_beyond = np.maximum(limits.gripper_min - gf, gf - limits.gripper_max) / g_span
    _count(result, "gripper_range", g_beyond > _ABS_TOL, 1 + g_beyond)
    g_parts = [np.abs(np.diff(gripper[run])) for run in runs if len(run) > 1]
    g_speed = (np.concatenate(g_parts) if g_parts else np.zeros(0)) / period_s
    g_speed /= limits.max_gripper_speed_per_s
    _count(result, "gripper_speed", g_speed > 1 + _REL_TOL, g_speed)
    return result
