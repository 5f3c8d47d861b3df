"""The trajectory audit, tested on hand-made trajectories (never on the filter it audits).

Each violating trajectory is built by integrating a profile whose derivative of interest
peaks just above its limit at exactly one sample (a parabola: 1 + 5e-6 at the peak,
1 - 5e-6 at its neighbours) while every other derivative stays well inside its own limit.
The audit's tolerances are 1e-6 relative and 1e-9 absolute.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import msgspec
import numpy as np
import pytest

from edgevla.runtime.audit import AuditResult, audit_commands
from edgevla.runtime.config import LimitsConfig, load_config, validate
from edgevla.runtime.kinematics import UR5E, ForwardKinematics
from edgevla.runtime.safety_filter import SafetyFilter

DEFAULT = load_config(None)
LIMITS = DEFAULT.limits
DT = UR5E.period_s
Q0 = np.array(DEFAULT.robot.initial_q_rad)
FK = ForwardKinematics(UR5E)
KINDS = (
    "non_finite",
    "joint_position",
    "velocity",
    "acceleration",
    "jerk",
    "step",
    "workspace",
    "gripper_range",
    "gripper_speed",
)
T = 60  # samples per trajectory
M = 30  # the sample where the single violation sits
OVER, UNDER = 1 + 5e-6, 1 - 5e-6  # the peak and its neighbours, relative to a limit


def audit(q: np.ndarray, g: np.ndarray, limits: LimitsConfig = LIMITS) -> AuditResult:
    return audit_commands(q, g, DT, limits, UR5E)


def limits_with(**changes: object) -> LimitsConfig:
    limits = msgspec.structs.replace(LIMITS, **changes)
    validate(msgspec.structs.replace(DEFAULT, limits=limits))
    return limits


def at_rest(n: int = T) -> tuple[np.ndarray, np.ndarray]:
    return np.tile(Q0, (n, 1)), np.full(n, 0.5)


def peak(n: int, top: float, neighbour: float) -> np.ndarray:
    """n samples of a parabola that is `top` at index M and `neighbour` at M ± 1."""
    k = np.arange(n) - M
    return top - (top - neighbour) * k**2


def integrate(derivative: np.ndarray, order: int, joint: int = 0) -> np.ndarray:
    """Positions [T, 6] at rest at Q0 except `joint`, whose `order`-th finite difference
    (divided by DT**order) is `derivative`, starting from rest."""
    x = derivative
    for _ in range(order):
        x = np.concatenate([[0.0], np.cumsum(x * DT)])
    q = np.tile(Q0, (len(x), 1))
    q[:, joint] += x
    return q


# ---------------------------------------------------------------- one violation of each kind


def once_joint_position() -> tuple[np.ndarray, np.ndarray, LimitsConfig]:
    limits = limits_with(joint_max_rad=(0.3, *LIMITS.joint_max_rad[1:]))
    q, g = at_rest()
    q[:, 0] = 0.3 + peak(T, 5e-9, -5e-9)  # 5 nm-rad beyond at M only (tolerance 1e-9)
    return q, g, limits


def once_velocity() -> tuple[np.ndarray, np.ndarray, LimitsConfig]:
    v = LIMITS.max_velocity_rad_s[0]
    return integrate(peak(T - 1, v * OVER, v * UNDER), 1), np.full(T, 0.5), LIMITS


def once_acceleration() -> tuple[np.ndarray, np.ndarray, LimitsConfig]:
    a = LIMITS.max_acceleration_rad_s2[0]
    return integrate(peak(T - 2, a * OVER, a * UNDER), 2), np.full(T, 0.5), LIMITS


def once_jerk() -> tuple[np.ndarray, np.ndarray, LimitsConfig]:
    j = LIMITS.max_jerk_rad_s3[0]
    jerk = 0.9 * j * (-1.0) ** np.arange(T - 3)  # alternating: acceleration stays in [0, 0.36]
    jerk[M] = math.copysign(j * OVER, jerk[M])
    return integrate(jerk, 3), np.full(T, 0.5), LIMITS


def once_step() -> tuple[np.ndarray, np.ndarray, LimitsConfig]:
    # Validated limits tie max_step ≥ v_max·period, so a step violation alone needs limits
    # that validation would refuse: the audit must still count it on its own.
    limits = msgspec.structs.replace(LIMITS, max_step_rad=0.0015)
    v = 0.0015 / DT
    return integrate(peak(T - 1, v * OVER, v * UNDER), 1), np.full(T, 0.5), limits


def once_workspace() -> tuple[np.ndarray, np.ndarray, LimitsConfig]:
    q, g = at_rest()
    q[:, 1] += peak(T, 0.0, -1e-6)  # the shoulder peaks at M (0.5 rad/s²): the flange too
    tcp = np.array([FK.flange_pose(row)[:3, 3] for row in q])
    others = np.delete(tcp, M, axis=0)
    axis = int(np.argmax(np.abs(tcp[M] - others.mean(axis=0))))
    lo, hi = [-5.0] * 3, [5.0] * 3
    if tcp[M, axis] > others[:, axis].max():
        hi[axis] = (tcp[M, axis] + others[:, axis].max()) / 2
    else:
        assert tcp[M, axis] < others[:, axis].min()
        lo[axis] = (tcp[M, axis] + others[:, axis].min()) / 2
    limits = limits_with(workspace_min_m=tuple(lo), workspace_max_m=tuple(hi))
    return q, g, limits


def once_gripper_range() -> tuple[np.ndarray, np.ndarray, LimitsConfig]:
    q, _ = at_rest()
    g = np.full(T, LIMITS.gripper_max)
    g[M] += 1e-6
    return q, g, LIMITS


def once_gripper_speed() -> tuple[np.ndarray, np.ndarray, LimitsConfig]:
    q, g = at_rest()
    g[M:] += LIMITS.max_gripper_speed_per_s * DT * 1.001
    return q, g, LIMITS


def once_non_finite() -> tuple[np.ndarray, np.ndarray, LimitsConfig]:
    q, g = at_rest()
    q[M, 3] = np.nan
    return q, g, LIMITS


def once_non_finite_gripper() -> tuple[np.ndarray, np.ndarray, LimitsConfig]:
    q, g = at_rest()
    g[M] = np.inf
    return q, g, LIMITS


ONCE: dict[str, Callable[[], tuple[np.ndarray, np.ndarray, LimitsConfig]]] = {
    "joint_position": once_joint_position,
    "velocity": once_velocity,
    "acceleration": once_acceleration,
    "jerk": once_jerk,
    "step": once_step,
    "workspace": once_workspace,
    "gripper_range": once_gripper_range,
    "gripper_speed": once_gripper_speed,
    "non_finite": once_non_finite,
}


@pytest.mark.parametrize(
    ("kind", "make"),
    [*ONCE.items(), ("non_finite", once_non_finite_gripper)],
    ids=[*ONCE, "non_finite-gripper"],
)
def test_one_violation_is_counted_under_exactly_its_kind(
    kind: str, make: Callable[[], tuple[np.ndarray, np.ndarray, LimitsConfig]]
) -> None:
    q, g, limits = make()
    result = audit(q, g, limits)
    assert set(result.violations) == set(KINDS)
    expected = {k: int(k == kind) for k in KINDS}
    assert result.violations == expected, f"worst {result.worst}"
    assert result.total == 1
    assert result.samples == T


@pytest.mark.parametrize("kind", [k for k in ONCE if k not in ("non_finite", "workspace")])
def test_just_inside_tolerance_is_not_counted(kind: str) -> None:
    """The same trajectories scaled back to within the tolerance: nothing is counted."""
    q, g, limits = ONCE[kind]()
    if kind == "joint_position":
        q[:, 0] -= 4.5e-9  # 0.5e-9 beyond: inside the 1e-9 absolute tolerance
    elif kind == "gripper_range":
        g[M] = limits.gripper_max + 0.5e-9
    elif kind == "gripper_speed":
        g[M:] = 0.5 + limits.max_gripper_speed_per_s * DT * (1 + 5e-7)
    else:  # scale the motion: every derivative's peak drops to 1 + 5e-7 of its limit
        q[:, 0] = Q0[0] + (q[:, 0] - Q0[0]) * (1 + 5e-7) / OVER
    assert audit(q, g, limits).total == 0


def test_a_compliant_trajectory_has_no_violations() -> None:
    """0.5 Hz, 0.1-0.3 rad on every joint: 0.94 rad/s, 3 rad/s², 9.3 rad/s³ at most."""
    t = np.arange(2000) * DT
    amp = np.array([0.2, 0.15, 0.1, 0.2, 0.25, 0.3])
    q = Q0 + amp * np.sin(2 * np.pi * 0.5 * t)[:, None]
    g = 0.5 + 0.4 * np.sin(2 * np.pi * 0.5 * t)  # 1.26 /s against 2 /s
    result = audit(q, g)
    assert result.total == 0
    assert set(result.violations) == set(KINDS)
    w = 2 * np.pi * 0.5  # worst values are ratios to the limits (1 rad/s, 4, 200, 2 /s)
    assert result.worst["velocity"] == pytest.approx(0.3 * w / 1.0, rel=1e-4)
    assert result.worst["acceleration"] == pytest.approx(0.3 * w**2 / 4.0, rel=1e-3)
    assert result.worst["jerk"] == pytest.approx(0.3 * w**3 / 200.0, rel=1e-2)
    assert result.worst["gripper_speed"] == pytest.approx(0.4 * w / 2.0, rel=1e-4)


# ---------------------------------------------------------------- worst ratios


def test_worst_ratios_are_computed_per_kind() -> None:
    n = 50
    v = np.array([0.5, -0.25, 0.0, 0.0, 0.0, 0.1])  # rad/s, constant
    q = Q0 + np.arange(n)[:, None] * v * DT
    g = 0.2 + np.arange(n) * 1.0 * DT  # 1 /s against 2 /s
    result = audit(q, g)
    assert result.total == 0
    assert result.worst["velocity"] == pytest.approx(0.5, rel=1e-9)
    assert result.worst["step"] == pytest.approx(0.5 * DT / LIMITS.max_step_rad, rel=1e-9)
    assert result.worst["gripper_speed"] == pytest.approx(0.5, rel=1e-9)
    assert result.worst["acceleration"] < 1e-6  # finite-difference rounding only
    assert result.worst["jerk"] < 1e-6


def test_worst_ratios_of_single_violations() -> None:
    for kind in ("velocity", "acceleration", "jerk", "step", "gripper_speed"):
        q, g, limits = ONCE[kind]()
        assert audit(q, g, limits).worst[kind] == pytest.approx(
            OVER if kind != "gripper_speed" else 1.001, rel=1e-7
        ), kind


def test_limits_are_per_joint() -> None:
    """Joint 3 limited to 0.5 rad/s moves at 0.6; joint 0 (1 rad/s) at 0.9: only joint 3
    counts, once per sample, and the worst ratio is 0.6/0.5."""
    limits = limits_with(max_velocity_rad_s=(1.0, 1.0, 1.0, 0.5, 1.0, 1.0))
    n = 40
    v = np.array([0.9, 0.0, 0.0, 0.6, 0.0, 0.0])
    q = Q0 + np.arange(n)[:, None] * v * DT
    result = audit(q, np.full(n, 0.5), limits)
    assert result.violations["velocity"] == n - 1
    assert result.worst["velocity"] == pytest.approx(1.2, rel=1e-9)
    assert result.total == n - 1


def test_short_trajectories() -> None:
    empty = audit(np.zeros((0, 6)), np.zeros(0))
    assert empty.samples == 0 and empty.total == 0
    one = audit(Q0[None, :], np.array([0.5]))
    assert one.samples == 1 and one.total == 0
    assert set(one.violations) == set(KINDS)
    two = audit(np.array([Q0, Q0 + 0.01]), np.array([0.5, 0.5]))  # 5 rad/s, 2.5× max step
    assert two.violations["velocity"] == 6 and two.violations["step"] == 1
    assert two.violations["acceleration"] == 0  # needs three samples


def test_audit_catches_a_filter_with_loosened_limits() -> None:
    """Independence: a filter run with 10× the jerk limit is caught against the real limits."""
    loose = msgspec.structs.replace(LIMITS, max_jerk_rad_s3=(2000.0,) * 6)
    f = SafetyFilter(loose, DT, FK)
    f.reset(Q0, 0.5)
    rows = [f.q.copy()]
    for _ in range(300):
        f.step(Q0 + 0.3, 0.5)
        rows.append(f.q.copy())
    result = audit(np.array(rows), np.full(len(rows), 0.5))
    assert result.violations["jerk"] > 0
    assert result.worst["jerk"] > 2.0
    assert audit_commands(np.array(rows), np.full(len(rows), 0.5), DT, loose, UR5E).total == 0


# ---------------------------------------------------------------- bugs


def test_non_finite_row_in_motion_counts_only_as_non_finite() -> None:
    n = 50
    q = Q0 + np.arange(n)[:, None] * np.array([0.6, 0, 0, 0, 0, 0]) * DT
    q[25, 0] = np.nan
    result = audit(q, np.full(n, 0.5))
    assert result.violations == {k: int(k == "non_finite") for k in KINDS}


def test_all_rows_non_finite_are_counted() -> None:
    result = audit(np.full((5, 6), np.nan), np.full(5, 0.5))
    assert result.violations["non_finite"] == 5


@pytest.mark.parametrize(
    "kind",
    [k for k in ONCE if k != "non_finite"],
)
def test_worst_ratio_exceeds_one_exactly_when_violated(kind: str) -> None:
    """AuditResult.worst is documented as the worst ratio to the limit, per kind."""
    q, g, limits = ONCE[kind]()
    assert audit(q, g, limits).worst[kind] > 1.0
    q, g = at_rest()
    q[:, 0] += np.arange(T) * 0.5 * DT
    assert audit(q, g).worst[kind] <= 1.0


def test_the_report_calls_an_arm_stopped_by_its_travel_not_its_noise() -> None:
    from edgevla.runtime.supervisor import final_joint_speed

    rate, n = 500.0, 26  # the report's final 50 ms
    rng = np.random.default_rng(0)
    t = np.arange(n) / rate
    held = np.full((n, 6), 0.3) + rng.uniform(-5e-6, 5e-6, (n, 6))  # still, within 1e-5 rad
    assert final_joint_speed(t, held) < 1e-3
    creeping = 0.3 + 2e-3 * t[:, None] * np.ones((1, 6))
    assert final_joint_speed(t, creeping) == pytest.approx(2e-3)
    ringing = 0.3 + 1e-4 * np.sin(2 * np.pi * 20.0 * t[:, None]) * np.ones((1, 6))  # full cycle
    assert final_joint_speed(t, ringing) > 1e-3
    assert final_joint_speed(t[:1], held[:1]) == 0.0
    # A loaded host missed every other cycle: the same creep over the same time, half the rows.
    assert final_joint_speed(t[::2], creeping[::2]) == pytest.approx(2e-3)
