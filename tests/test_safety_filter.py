"""The safety filter: whatever the policy sends, every command it outputs obeys every limit.

Commanded trajectories are checked twice: by `audit_commands` (an independent finite-difference
audit) and directly here (hard joint limits, max step, gripper range and rate, finiteness). Each
test drives the filter the way the control process does: one call per control period, a cycle
whose `step` trips commands a controlled stop (`stop_step`) in the same cycle.

Numbers quoted in comments were measured on this code with the default limits (UR5e, 500 Hz,
v 1 rad/s, a 4 rad/s², j 200 rad/s³, margin 0.1 rad); bounds keep a margin over them.
"""

from __future__ import annotations

import gc
import math
import os
import struct
import tracemalloc
from dataclasses import dataclass, field

import msgspec
import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from edgevla.runtime.audit import audit_commands
from edgevla.runtime.config import (
    LimitsConfig,
    RobotConfig,
    RuntimeConfig,
    config_from_dict,
    load_config,
    validate,
)
from edgevla.runtime.kinematics import ROBOT_MODELS, UR5E, ForwardKinematics, RobotModel
from edgevla.runtime.safety_filter import SafetyFilter, Trip

DEFAULT = load_config(None)
DT = UR5E.period_s
Q0 = np.array(DEFAULT.robot.initial_q_rad)
FK = ForwardKinematics(UR5E)
P0 = FK.flange_pose(Q0)[:3, 3]  # flange at the initial pose: about (-0.49, -0.13, 0.49) m
HUGE_BOX = {"workspace_min_m": (-10.0, -10.0, -10.0), "workspace_max_m": (10.0, 10.0, 10.0)}
# Default limits with a box the arm cannot leave: isolates the joint-space limits.
FREE = msgspec.structs.replace(DEFAULT.limits, **HUGE_BOX)

# EDGEVLA_FUZZ_EXAMPLES=1000 for a deeper hunt; 30 keeps the suite fast.
FUZZ = settings(
    max_examples=int(os.environ.get("EDGEVLA_FUZZ_EXAMPLES", "30")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


def limits_with(**changes: object) -> LimitsConfig:
    """Default limits with `changes`, validated as a whole runtime config."""
    limits = msgspec.structs.replace(DEFAULT.limits, **changes)
    validate(msgspec.structs.replace(DEFAULT, limits=limits))
    return limits


def make_filter(
    limits: LimitsConfig = FREE,
    q: np.ndarray = Q0,
    gripper: float = 0.5,
    robot: RobotModel = UR5E,
) -> SafetyFilter:
    f = SafetyFilter(limits, robot.period_s, ForwardKinematics(robot))
    f.reset(np.array(q, dtype=float), gripper)
    return f


def snapshot(f: SafetyFilter) -> tuple[bytes, bytes, bytes, bytes]:
    """The commanded state, bit for bit (NaN payloads and -0.0 included)."""
    return f.q.tobytes(), f.v.tobytes(), f.a.tobytes(), struct.pack("<d", f.gripper)


def expected_trip(limits: LimitsConfig, target: np.ndarray, gripper: float) -> Trip:
    if not (np.isfinite(target).all() and math.isfinite(gripper)):
        return Trip.NAN_SETPOINT
    lo, hi = np.asarray(limits.joint_min_rad), np.asarray(limits.joint_max_rad)
    if (target < lo).any() or (target > hi).any():
        return Trip.SETPOINT_OUT_OF_LIMITS
    return Trip.NONE


@dataclass
class Trace:
    """Every command the filter output (one row per cycle, the reset pose first)."""

    q: list[np.ndarray] = field(default_factory=list)
    g: list[float] = field(default_factory=list)
    trips: list[Trip] = field(default_factory=list)
    from_step: list[bool] = field(default_factory=list)  # the row was made by a step() that passed
    at_rest: bool = False  # the last stop_step() reported rest: the stop is latched

    def record(self, f: SafetyFilter, from_step: bool) -> None:
        self.q.append(f.q.copy())
        self.g.append(f.gripper)
        self.from_step.append(from_step)

    @property
    def Q(self) -> np.ndarray:
        return np.array(self.q)

    @property
    def G(self) -> np.ndarray:
        return np.array(self.g)


def start_trace(f: SafetyFilter) -> Trace:
    trace = Trace()
    trace.record(f, from_step=False)
    return trace


def cycle(f: SafetyFilter, trace: Trace, target: np.ndarray, gripper: float) -> Trip:
    """One control cycle: step; on a trip the state must be untouched and a stop is commanded."""
    before = snapshot(f)
    trip = f.step(target, gripper)
    if trip is not Trip.NONE:
        assert snapshot(f) == before, f"{trip.name}: the commanded state changed on a trip"
        trace.trips.append(trip)
        trace.at_rest = f.stop_step()
    trace.record(f, from_step=trip is Trip.NONE)
    return trip


def check_commands(
    trace: Trace,
    limits: LimitsConfig,
    robot: RobotModel = UR5E,
    *,
    ignore: tuple[str, ...] = (),
) -> None:
    """Audit (independent) and direct checks of every recorded command."""
    q, g = trace.Q, trace.G
    result = audit_commands(q, g, robot.period_s, limits, robot)
    bad = {k: n for k, n in result.violations.items() if n and k not in ignore}
    assert not bad, f"audit violations {bad}, worst {result.worst}"
    assert np.isfinite(q).all() and np.isfinite(g).all()
    lo, hi = np.asarray(limits.joint_min_rad), np.asarray(limits.joint_max_rad)
    assert (q >= lo).all() and (q <= hi).all(), "a command beyond the hard joint limits"
    if len(q) > 1:
        step = np.abs(np.diff(q, axis=0)).max()
        assert step <= limits.max_step_rad * (1 + 1e-12), f"step {step} > max_step"
        g_step = np.abs(np.diff(g)).max()
        assert g_step <= limits.max_gripper_speed_per_s * robot.period_s * (1 + 1e-12)
    # The gripper is stepped by addition, so it may land an ulp outside its range (found by
    # hypothesis: gripper_min 2.7e-214, commanded 0.0); the audit's 1e-9 absorbs that too.
    assert (g >= limits.gripper_min - 1e-12).all() and (g <= limits.gripper_max + 1e-12).all()


def stop_to_rest(f: SafetyFilter, trace: Trace, max_cycles: int = 5000) -> int:
    """stop_step until at rest; returns the number of cycles it took."""
    for n in range(1, max_cycles + 1):
        done = f.stop_step()
        trace.record(f, from_step=False)
        if done:
            return n
    raise AssertionError(f"not at rest after {max_cycles} cycles (v={f.v}, a={f.a})")


def run_constant(f: SafetyFilter, trace: Trace, target: np.ndarray, cycles: int) -> None:
    for _ in range(cycles):
        assert cycle(f, trace, target, 0.5) is Trip.NONE


def cruise_cosines(d: np.ndarray, cycles: int = 1500) -> tuple[np.ndarray, SafetyFilter]:
    """Cosine between commanded velocity and displacement `d` while the fastest joint is at
    its velocity limit and every acceleration has settled below a tenth of its limit."""
    f = make_filter()
    target = Q0 + d
    cos = []
    for _ in range(cycles):
        assert f.step(target, 0.5) is Trip.NONE
        cruising = np.abs(f.v).max() >= 0.999 * f.vmax.max()
        settled = (np.abs(f.a) <= 0.1 * f.amax).all()
        if cruising and settled:
            cos.append(f.v @ d / (np.linalg.norm(f.v) * np.linalg.norm(d)))
    return np.array(cos), f


# ---------------------------------------------------------------- adversarial programs

SEGMENT_KINDS = ("walk", "jump", "near_limits", "beyond", "non_finite", "sine", "hold", "stop")
GRIPPER_TARGETS = st.one_of(
    st.floats(-2.0, 3.0),
    st.sampled_from([0.0, 1.0, -1e300, 1e300, math.nan, math.inf, -math.inf]),
)


@dataclass(frozen=True)
class Segment:
    kind: str
    cycles: int
    seed: int
    gripper: float


segments = st.builds(
    Segment,
    kind=st.sampled_from(SEGMENT_KINDS),
    cycles=st.integers(1, 300),
    seed=st.integers(0, 2**32 - 1),
    gripper=GRIPPER_TARGETS,
)
programs = st.lists(segments, min_size=1, max_size=8)


def run_program(
    f: SafetyFilter,
    limits: LimitsConfig,
    program: list[Segment],
    trace: Trace,
    workspace_trips: bool = False,
) -> None:
    """Drive the filter with adversarial targets. Every step's trip is predicted exactly
    (a WORKSPACE trip is allowed where `workspace_trips`); clamping is counted."""
    hard_lo, hard_hi = np.asarray(limits.joint_min_rad), np.asarray(limits.joint_max_rad)
    lo, hi = hard_lo + limits.joint_margin_rad, hard_hi - limits.joint_margin_rad
    edges = [
        hard_lo,
        hard_hi,
        lo,
        hi,
        np.nextafter(hard_lo, 0.0),
        np.nextafter(hard_hi, 0.0),
        lo - 1e-9,
        hi + 1e-9,
        lo + 1e-9,
        hi - 1e-9,
    ]
    beyond = [0.0, 1e-12, 1e-6, 0.1, 10.0, 1e6, 1e300]
    t_now = 0.0
    for seg in program:
        rng = np.random.default_rng(seg.seed)
        base = f.q.copy()
        scale = rng.choice([1e-4, 1e-3, 1e-2, 5e-2])
        jump = rng.uniform(hard_lo, hard_hi)
        amp, freq, phase = rng.uniform(0, 0.6, 6), rng.uniform(0.1, 3.0), rng.uniform(0, 6.3, 6)
        near: np.ndarray | None = None
        for _ in range(seg.cycles):
            t_now += f.dt
            g = seg.gripper
            if seg.kind == "stop":
                trace.at_rest = f.stop_step()
                trace.record(f, from_step=False)
                continue
            if trace.at_rest:
                # As the control process does: a stop that reached rest stays latched (the
                # command held) until a reset restarts from the pose. Going on straight from
                # the rest snap is a separate, xfailed bug (test_rest_snap_keeps_the_jerk_limit).
                for _ in range(3):
                    trace.record(f, from_step=False)
                f.reset(f.q.copy(), f.gripper)
                trace.at_rest = False
            if seg.kind == "hold":
                f.hold_step()
                trace.record(f, from_step=False)
                continue
            if seg.kind == "walk":
                base += rng.normal(0.0, scale, 6)
                np.clip(base, hard_lo, hard_hi, out=base)
                target = base.copy()
            elif seg.kind == "jump":
                target = jump
            elif seg.kind == "near_limits":
                if near is None or rng.random() < 0.1:
                    pick = rng.integers(0, len(edges) + 1, 6)
                    near = np.array(
                        [f.q[j] if p == len(edges) else edges[p][j] for j, p in enumerate(pick)]
                    )
                target = near
            elif seg.kind == "sine":
                target = np.clip(
                    base + amp * np.sin(2 * np.pi * freq * t_now + phase), hard_lo, hard_hi
                )
            else:  # beyond / non_finite: valid targets with bursts of bad ones
                target = np.clip(f.q + rng.normal(0.0, 0.01, 6), hard_lo, hard_hi)
                if rng.random() < 0.7:
                    j = rng.integers(0, 6)
                    if seg.kind == "beyond":
                        amount = rng.choice(beyond)
                        if rng.random() < 0.5:
                            target[j] = np.nextafter(hard_hi[j], np.inf) + amount
                        else:
                            target[j] = np.nextafter(hard_lo[j], -np.inf) - amount
                    else:
                        bad = rng.choice([np.nan, np.inf, -np.inf])
                        if rng.random() < 0.3:
                            g = float(bad)
                        else:
                            target[rng.random(6) < 0.5] = bad
                            target[j] = bad
            expect = expected_trip(limits, target, g)
            clamped = f.clamped_position
            trip = cycle(f, trace, target, g)
            if expect is Trip.NONE and workspace_trips:
                assert trip in (Trip.NONE, Trip.WORKSPACE)
            else:
                assert trip is expect, f"target {target} gripper {g}: {trip!r}, expected {expect!r}"
            if expect is Trip.NONE:
                outside = bool((target < lo).any() or (target > hi).any())
                assert f.clamped_position == clamped + outside
            else:
                assert f.clamped_position == clamped


start_fractions = st.lists(st.floats(0.0, 1.0), min_size=6, max_size=6)


@FUZZ
@given(start=start_fractions, gripper=st.floats(0.0, 1.0), program=programs)
def test_every_command_obeys_every_limit(
    start: list[float], gripper: float, program: list[Segment]
) -> None:
    """The central property, default limits: random walks, jumps, edges, targets beyond the
    hard limits, NaN/Inf bursts, sinusoids, hold and stop, from any pose inside the limits."""
    lo, hi = np.asarray(FREE.joint_min_rad), np.asarray(FREE.joint_max_rad)
    start_q = lo + np.asarray(start) * (hi - lo)  # anywhere inside the hard limits (band too)
    f = make_filter(FREE, start_q, gripper)
    trace = start_trace(f)
    run_program(f, FREE, program, trace)
    stop_to_rest(f, trace)
    check_commands(trace, FREE)
    assert f.defence_clamps == 0


@st.composite
def validated_limits(draw: st.DrawFn) -> tuple[LimitsConfig, RobotModel]:
    """Validated limits of either robot, per joint different. The joint margin covers the
    jerk-limited braking overshoot (v·(a/j + period)) and the jerk limit is at least 60 rad/s³:
    validated limits outside that break the filter (xfailed below), which is not what this
    test is after."""
    robot = ROBOT_MODELS[draw(st.sampled_from(sorted(ROBOT_MODELS)))]
    six = st.lists
    vmax = draw(six(st.floats(0.2, math.pi), min_size=6, max_size=6))
    amax = draw(six(st.floats(0.5, 15.0), min_size=6, max_size=6))
    ratio = draw(six(st.floats(10.0, 400.0), min_size=6, max_size=6))
    # At least 60 rad/s³: below ~50 the rest snap alone breaks the jerk limit (xfailed below).
    jmax = [max(a * r, 60.0) for a, r in zip(amax, ratio, strict=True)]
    overshoot = max(v * (a / j + robot.period_s) for v, a, j in zip(vmax, amax, jmax, strict=True))
    margin = overshoot + 0.005 + draw(st.floats(0.0, 0.2))
    shrink_lo = draw(six(st.floats(0.0, 0.5), min_size=6, max_size=6))
    shrink_hi = draw(six(st.floats(0.0, 0.5), min_size=6, max_size=6))
    g_lo, g_hi = draw(st.floats(0.0, 0.4)), draw(st.floats(0.6, 1.0))
    limits = LimitsConfig(
        joint_min_rad=tuple(m + s for m, s in zip(robot.joint_min_rad, shrink_lo, strict=True)),
        joint_max_rad=tuple(m - s for m, s in zip(robot.joint_max_rad, shrink_hi, strict=True)),
        joint_margin_rad=margin,
        max_velocity_rad_s=tuple(vmax),
        max_acceleration_rad_s2=tuple(amax),
        max_jerk_rad_s3=tuple(jmax),
        # Not exactly v·period: at equality rounding trips the defence clamp (xfailed below).
        max_step_rad=max(vmax) * robot.period_s * draw(st.floats(1.001, 3.0)),
        gripper_min=g_lo,
        gripper_max=g_hi,
        max_gripper_speed_per_s=draw(st.floats(0.1, 10.0)),
        **HUGE_BOX,
    )
    robot_config = RobotConfig(model=robot.name, initial_gripper=(g_lo + g_hi) / 2)
    validate(RuntimeConfig(robot=robot_config, limits=limits))
    return limits, robot


@FUZZ
@given(
    config=validated_limits(),
    start=start_fractions,
    gripper=st.floats(0.0, 1.0),
    program=programs,
)
def test_every_command_obeys_random_validated_limits(
    config: tuple[LimitsConfig, RobotModel],
    start: list[float],
    gripper: float,
    program: list[Segment],
) -> None:
    limits, robot = config
    lo = np.asarray(limits.joint_min_rad) + limits.joint_margin_rad
    hi = np.asarray(limits.joint_max_rad) - limits.joint_margin_rad
    f = make_filter(limits, lo + np.asarray(start) * (hi - lo), gripper, robot)
    trace = start_trace(f)
    run_program(f, limits, program, trace)
    stop_to_rest(f, trace)
    check_commands(trace, limits, robot)
    assert f.defence_clamps == 0


@FUZZ
@given(offset=st.lists(st.floats(-0.4, 0.4), min_size=6, max_size=6), program=programs)
def test_default_box_every_step_command_stays_inside(
    offset: list[float], program: list[Segment]
) -> None:
    """With the default TCP box: WORKSPACE trips leave the state untouched, every command a
    passing step() makes is inside the box, and the joint-space limits hold throughout.
    (The box after a trip's stop is xfailed separately: see the stop-after-trip test.)"""
    limits = DEFAULT.limits
    start_q = Q0 + np.asarray(offset)
    box_lo, box_hi = np.asarray(limits.workspace_min_m), np.asarray(limits.workspace_max_m)
    tcp = FK.flange_pose(start_q)[:3, 3]
    assume((tcp > box_lo + 0.01).all() and (tcp < box_hi - 0.01).all())  # start inside the box
    f = make_filter(limits, start_q)
    trace = start_trace(f)
    run_program(f, limits, program, trace, workspace_trips=True)
    stop_to_rest(f, trace)
    check_commands(trace, limits, ignore=("workspace",))
    for q, made_by_step in zip(trace.q, trace.from_step, strict=True):
        if made_by_step:
            p = FK.flange_pose(q)[:3, 3]
            assert (p >= box_lo).all() and (p <= box_hi).all(), f"step() commanded TCP {p}"
    assert f.defence_clamps == 0


# ---------------------------------------------------------------- trips leave the state alone


def moving_filter(limits: LimitsConfig = FREE) -> SafetyFilter:
    """A filter mid-motion: non-zero velocity and acceleration on every joint."""
    f = make_filter(limits)
    target = Q0 + np.array([0.8, -0.6, 0.5, 0.7, -0.9, 1.0])
    for _ in range(60):
        assert f.step(target, 0.9) is Trip.NONE
    assert (np.abs(f.v) > 0.1).all() and (np.abs(f.a) > 0.1).all()
    return f


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
@pytest.mark.parametrize("where", [0, 2, 5, "all", "gripper"])
def test_non_finite_target_trips_and_leaves_state_bit_for_bit(bad: float, where: object) -> None:
    f = moving_filter()
    target, gripper = Q0 + 0.1, 0.5
    if where == "gripper":
        gripper = bad
    elif where == "all":
        target = np.full(6, bad)
    else:
        target = target.copy()
        target[where] = bad
    before = snapshot(f)
    counters = (f.clamped_position, f.scaled_velocity, f.defence_clamps)
    assert f.step(target, gripper) is Trip.NAN_SETPOINT
    assert snapshot(f) == before
    assert (f.clamped_position, f.scaled_velocity, f.defence_clamps) == counters


def test_non_finite_takes_precedence_over_out_of_limits() -> None:
    f = moving_filter()
    target = Q0.copy()
    target[0], target[1] = 100.0, math.nan
    assert f.step(target, 0.5) is Trip.NAN_SETPOINT


@pytest.mark.parametrize("joint", range(6))
@pytest.mark.parametrize("side", [-1, 1])
@pytest.mark.parametrize("beyond", ["ulp", 1e-9, 0.5, 1e6, 1e300])
def test_target_beyond_hard_limits_trips_and_leaves_state(
    joint: int, side: int, beyond: object
) -> None:
    f = moving_filter()
    limit = (FREE.joint_max_rad if side > 0 else FREE.joint_min_rad)[joint]
    target = Q0.copy()
    first_outside = np.nextafter(limit, side * np.inf)
    target[joint] = first_outside if beyond == "ulp" else limit + side * float(beyond)
    before = snapshot(f)
    assert f.step(target, 0.5) is Trip.SETPOINT_OUT_OF_LIMITS
    assert snapshot(f) == before


@pytest.mark.parametrize("side", [-1, 1])
@pytest.mark.parametrize("into_band", [0.0, 1e-9, 0.05, "at_hard_limit"])
def test_target_in_margin_band_is_clamped_without_trip(side: int, into_band: object) -> None:
    """Joint 2 (the elbow, ±π): a target between the limit less its margin and the hard limit
    is clamped onto the margin limit, counted, and reached exactly."""
    f = make_filter()
    margin_limit = (f.hi if side > 0 else f.lo)[2]
    hard = (f.hard_hi if side > 0 else f.hard_lo)[2]
    target = Q0.copy()
    target[2] = hard if into_band == "at_hard_limit" else margin_limit + side * float(into_band)
    trace = start_trace(f)
    for n in range(1, 4001):  # the far side is 4.6 rad away
        assert cycle(f, trace, target, 0.5) is Trip.NONE
        assert f.clamped_position == (n if target[2] != margin_limit else 0)
    check_commands(trace, FREE)
    assert abs(f.q[2] - margin_limit) < 1e-9
    assert f.defence_clamps == 0


@pytest.mark.parametrize("gripper", [-5.0, -1e-12, 1.0 + 1e-12, 7.0, 1e300, -1e300])
def test_gripper_out_of_range_is_clamped_and_rate_limited(gripper: float) -> None:
    f = make_filter(gripper=0.5)
    trace = start_trace(f)
    for _ in range(400):
        assert cycle(f, trace, Q0, gripper) is Trip.NONE
    check_commands(trace, FREE)
    assert f.gripper == (1.0 if gripper > 0.5 else 0.0)
    g = trace.G
    assert np.abs(np.diff(g))[:100].min() == pytest.approx(FREE.max_gripper_speed_per_s * DT)


# ---------------------------------------------------------------- the workspace box


def small_box(half: float) -> LimitsConfig:
    return limits_with(workspace_min_m=tuple(P0 - half), workspace_max_m=tuple(P0 + half))


def drive_into_box_edge(
    limits: LimitsConfig, d: np.ndarray
) -> tuple[SafetyFilter, Trace, tuple[bytes, bytes, bytes, bytes]]:
    f = make_filter(limits)
    target = np.clip(Q0 + d, f.lo, f.hi)
    trace = start_trace(f)
    for _ in range(3000):
        before = snapshot(f)
        trip = f.step(target, 0.5)
        if trip is not Trip.NONE:
            assert trip is Trip.WORKSPACE
            return f, trace, before
        trace.record(f, from_step=True)
    raise AssertionError("the box edge was never reached")


DRIVES = [
    pytest.param(np.array([1.5, 0, 0, 0, 0, 0]), id="base"),
    pytest.param(np.array([0, 0.8, 0, 0, 0, 0]), id="shoulder"),
    pytest.param(np.array([0, 0, -1.2, 0, 0, 0]), id="elbow"),
    pytest.param(np.array([0.8, -0.6, 0.7, 0, 0, 0]), id="mixed"),
]


@pytest.mark.parametrize("half", [0.05, 0.1, 0.2])
@pytest.mark.parametrize("d", DRIVES)
def test_workspace_trip_is_predictive_and_leaves_state(half: float, d: np.ndarray) -> None:
    limits = small_box(half)
    f, trace, before = drive_into_box_edge(limits, d)
    assert snapshot(f) == before
    check_commands(trace, limits)  # everything commanded before the trip is inside the box
    # Predictive: the trip comes while the last command is still clear of the box faces
    # (measured 25-71 mm at 0.58-1 rad/s), not when the flange reaches a face.
    p = FK.flange_pose(f.q)[:3, 3]
    clearance = min(
        (p - np.asarray(limits.workspace_min_m)).min(), (limits.workspace_max_m - p).min()
    )
    assert clearance > 0.01
    assert np.abs(f.v).max() > 0.4  # it tripped at speed, where prediction matters


@pytest.mark.parametrize("half", [0.05, 0.1, 0.2])
@pytest.mark.parametrize("d", DRIVES)
def test_stop_after_workspace_trip_stays_inside_box(half: float, d: np.ndarray) -> None:
    limits = small_box(half)
    f, trace, _ = drive_into_box_edge(limits, d)
    stop_to_rest(f, trace)  # the control process: trip → controlled stop
    check_commands(trace, limits)


# ---------------------------------------------------------------- stopping and holding

STOP_STATES = [
    pytest.param(np.array([1.5, 0, 0, 0, 0, 0]), 400, id="one-joint-cruise"),
    pytest.param(np.array([1.5, 0, 0, 0, 0, 0]), 60, id="one-joint-accelerating"),
    pytest.param(np.array([1.0, -0.8, 0.6, 0.9, -1.2, 1.5]), 400, id="six-joints-cruise"),
    pytest.param(np.array([1.0, -0.8, 0.6, 0.9, -1.2, 1.5]), 120, id="six-joints-accelerating"),
    pytest.param(np.array([0.3, 0.1, -0.2, 0.0, 0.0, 0.0]), 100, id="short-move"),
]


def at_speed(d: np.ndarray, cycles: int) -> tuple[SafetyFilter, Trace]:
    f = make_filter()
    trace = start_trace(f)
    run_constant(f, trace, Q0 + d, cycles)
    return f, trace


@pytest.mark.parametrize(("d", "cycles"), STOP_STATES)
def test_stop_step_reaches_rest_within_bound_and_obeys_limits(d: np.ndarray, cycles: int) -> None:
    f, trace = at_speed(d, cycles)
    v0, a0 = np.abs(f.v), np.abs(f.a)
    assert v0.max() > 0.4
    # Time-optimal jerk-limited stop, per joint: ramp the acceleration from +a0 to -a (v peaks
    # at v0 + a0²/2j), brake at a, ramp back: ≈ (v0 + a0²/2j)/a + (a0 + a)/j. Measured: 124-184
    # cycles against 81-141 ideal (the ring-down at the end costs ~45: see the xfail below);
    # bound: twice the ideal plus 10 cycles (172-292).
    v_peak = v0 + a0**2 / (2 * f.jmax)
    ideal_s = (v_peak / f.amax + (a0 + f.amax) / f.jmax).max()
    bound = math.ceil(2 * ideal_s / DT) + 10
    n = stop_to_rest(f, trace)
    assert n <= bound, f"stop took {n} cycles, bound {bound}"
    assert not f.v.any() and not f.a.any()
    q_rest = f.q.copy()
    for _ in range(50):  # at rest it stays at rest
        assert f.stop_step()
        trace.record(f, from_step=False)
    assert np.array_equal(f.q, q_rest)
    check_commands(trace, FREE)
    assert f.defence_clamps == 0


@pytest.mark.parametrize(("d", "cycles"), STOP_STATES)
def test_stop_step_never_backs_up(d: np.ndarray, cycles: int) -> None:
    f, _ = at_speed(d, cycles)
    sign = np.sign(f.v)
    trace = start_trace(f)
    stop_to_rest(f, trace)
    travel = trace.Q * sign  # positive in each joint's direction of motion
    backtrack = (np.maximum.accumulate(travel, axis=0) - travel).max()
    assert backtrack < 1e-4, f"the stop backed up by {backtrack:.2e} rad"


@pytest.mark.parametrize(("d", "cycles"), STOP_STATES)
def test_hold_step_decelerates_to_rest(d: np.ndarray, cycles: int) -> None:
    f, trace = at_speed(d, cycles)
    speed0 = np.abs(f.v).max()
    speeds = []
    for _ in range(500):
        f.hold_step()
        trace.record(f, from_step=False)
        speeds.append(np.abs(f.v).max())
    # Never faster than what the jerk ramp that ends an acceleration adds (a²/2j) and a cycle.
    assert max(speeds) <= speed0 + (f.amax**2 / (2 * f.jmax)).max() + f.amax.max() * DT
    assert max(speeds[-100:]) < 1e-9, "hold_step did not come to rest"
    check_commands(trace, FREE)
    assert f.defence_clamps == 0


# ---------------------------------------------------------------- convergence and tracking

CONSTANT_TARGETS = [
    pytest.param(np.array([1e-3, 0, 0, 0, 0, 0]), id="tiny"),
    pytest.param(np.array([0.3, -0.2, 0.1, 0.05, -0.4, 0.6]), id="mixed"),
    pytest.param(np.array([1.5, -1.0, 1.2, -1.5, 1.5, -1.5]), id="large"),
    pytest.param(np.array([0, 0, 10.0, 0, 0, 0]), id="into-band-clamped"),
]


@pytest.mark.parametrize("d", CONSTANT_TARGETS)
def test_constant_target_is_reached_exactly_without_oscillation(d: np.ndarray) -> None:
    """Guards against the jerk-limited limit cycle around a target (a pure √ law circles it).
    Measured: within 1e-9 after 836 cycles (mixed); here 5 s are allowed."""
    f = make_filter()
    target = np.clip(Q0 + d, f.hard_lo, f.hard_hi)
    goal = np.clip(target, f.lo, f.hi)
    trace = start_trace(f)
    run_constant(f, trace, target, 2500)
    assert np.abs(f.q - goal).max() < 1e-9
    last_second = np.abs(np.diff(trace.Q[-500:], axis=0)).max() / DT
    assert last_second < 1e-9 and np.abs(f.v).max() < 1e-9
    check_commands(trace, FREE)
    assert f.defence_clamps == 0


def ramp_then_hold(speed: float, joint: int, end: float, cycles: int = 4000) -> Trace:
    f = make_filter()
    trace = start_trace(f)
    for k in range(cycles):
        target = Q0.copy()
        target[joint] += math.copysign(min(speed * DT * k, abs(end)), end)
        assert cycle(f, trace, target, 0.5) is Trip.NONE
    check_commands(trace, FREE)
    return trace


@pytest.mark.parametrize(
    ("speed", "joint", "end"),
    [(0.2, 1, 0.6), (0.5, 1, 0.6), (1.0, 1, 0.6), (0.5, 2, math.pi / 2 - 0.1)],
    ids=["0.2rad/s", "0.5rad/s", "1rad/s", "into-elbow-margin-limit"],
)
def test_target_that_stops_after_moving_is_reached_without_oscillation(
    speed: float, joint: int, end: float
) -> None:
    trace = ramp_then_hold(speed, joint, end)
    speed_last_second = np.abs(np.diff(trace.Q[-500:], axis=0)).max() / DT
    assert speed_last_second < 1e-6, f"still moving at {speed_last_second:.3f} rad/s"


def test_smooth_sinusoid_is_tracked_closely() -> None:
    """0.5 Hz, amplitudes 0.1-0.3 rad: peak 0.94 rad/s, 3 rad/s², within the limits. Measured
    (after the first 2 s): median error 1.3 mrad, max 1.9 mrad (the command leads the target
    by about one cycle: against the next cycle's target the median is 0.2 mrad)."""
    f = make_filter()
    t = np.arange(5000) * DT
    amp = np.array([0.2, 0.15, 0.1, 0.2, 0.25, 0.3])
    targets = Q0 + amp * np.sin(2 * np.pi * 0.5 * t)[:, None]
    trace = start_trace(f)
    for target in targets:
        assert cycle(f, trace, target, 0.5) is Trip.NONE
    err = np.abs(trace.Q[1:] - targets).max(axis=1)[1000:]
    assert np.median(err) < 2.5e-3
    assert err.max() < 4e-3
    check_commands(trace, FREE)
    assert f.defence_clamps == 0


def test_uniform_velocity_scaling_keeps_direction() -> None:
    """A large move saturates the fastest joint: the others are scaled with it, so the
    commanded velocity stays along the displacement (MoveIt Servo keeps direction). Measured
    min cosine 0.9931 over 296 cruise cycles; per-joint clipping would give 0.961 here."""
    d = np.array([1.0, -0.8, 0.6, 0.9, -1.2, 1.5])
    cos, f = cruise_cosines(d)
    assert len(cos) > 100
    assert cos.min() > 0.99
    assert f.scaled_velocity > 100
    per_joint_clipping = np.sign(d) @ d / (np.linalg.norm(np.sign(d)) * np.linalg.norm(d))
    assert per_joint_clipping < 0.97  # the bound above can tell the two apart


@pytest.mark.parametrize(
    "d",
    [np.array([1.5, 0, 0, 0, 0.5, 0.5]), np.array([1.5, -0.3, 0.3, 0, 0, 0])],
    ids=["base+wrists", "base+shoulder+elbow"],
)
def test_uniform_velocity_scaling_keeps_direction_for_unequal_moves(d: np.ndarray) -> None:
    cos, _ = cruise_cosines(d)
    assert len(cos) > 100
    assert cos.min() > 0.99, f"cruise cosine down to {cos.min():.3f}"


@pytest.mark.parametrize("case", ["held-after-rest-jerk-10", "step-after-rest"])
def test_rest_snap_keeps_the_jerk_limit(case: str) -> None:
    if case == "held-after-rest-jerk-10":
        limits = limits_with(
            max_acceleration_rad_s2=(1.0,) * 6, max_jerk_rad_s3=(10.0,) * 6, **HUGE_BOX
        )
        f = make_filter(limits)
        trace = start_trace(f)
        creep = Q0.copy()
        creep[1] += 1e-4
        for _ in range(3):
            assert cycle(f, trace, creep, 0.5) is Trip.NONE
        stop_to_rest(f, trace)
        for _ in range(3):  # the control process keeps sending the stopped command
            trace.record(f, from_step=False)
        check_commands(trace, limits)
        return
    f = make_filter()
    trace = start_trace(f)
    creep = Q0.copy()
    creep[0] += 1e-7
    assert cycle(f, trace, creep, 0.5) is Trip.NONE  # v 5.2e-5 rad/s, a 0.026 rad/s²
    assert f.stop_step()  # at rest at once: v and a snapped to 0, q not moved accordingly
    trace.record(f, from_step=False)
    far = Q0.copy()
    far[0] += 1.0
    for _ in range(5):
        assert cycle(f, trace, far, 0.5) is Trip.NONE
    check_commands(trace, FREE)


# ---------------------------------------------------------------- defence in depth


@pytest.mark.parametrize(
    "changes",
    [{"joint_margin_rad": 0.0}, {"max_jerk_rad_s3": (20.0,) * 6}],
    ids=["margin-0", "jerk-20"],
)
def test_defence_clamps_never_bind_with_validated_limits(changes: dict[str, object]) -> None:
    limits = limits_with(**changes, **HUGE_BOX)
    f = make_filter(limits)
    trace = start_trace(f)
    for k in range(3000):  # the elbow target ramps at full speed up to its (margin) limit
        target = Q0.copy()
        target[2] = min(Q0[2] + DT * k, f.hi[2])
        assert cycle(f, trace, target, 0.5) is Trip.NONE
    assert f.defence_clamps == 0
    check_commands(trace, limits)


def test_defence_clamps_stay_zero_when_max_step_equals_velocity_times_period() -> None:
    v = 1.0
    limits = limits_with(max_velocity_rad_s=(v,) * 6, max_step_rad=v * DT, **HUGE_BOX)
    f = make_filter(limits)
    trace = start_trace(f)
    run_constant(f, trace, Q0 + np.array([3.0, 0, 0, 0, 0, 0]), 3000)
    check_commands(trace, limits)  # the commands themselves are fine
    assert f.defence_clamps == 0  # measured 673


@pytest.mark.parametrize("key", ["max_jerk_rad_s3", "max_acceleration_rad_s2"])
def test_a_validated_config_never_yields_non_finite_commands(key: str) -> None:
    with np.errstate(invalid="ignore"):
        try:
            config = config_from_dict({"limits": {key: [math.inf] * 6, **HUGE_BOX}})
        except ValueError:
            return  # refusing the config is a fix
        f = make_filter(config.limits)
        trace = start_trace(f)
        for k in range(1000):
            target = Q0.copy()
            target[0] += 0.5 if k < 500 else 0.0
            cycle(f, trace, target, 0.5)
    assert np.isfinite(trace.Q).all(), "the filter commanded NaN"


# ---------------------------------------------------------------- reset


def test_reset_starts_at_rest_at_the_measured_pose() -> None:
    f = moving_filter()
    measured = Q0 + np.array([0.1, -0.2, 0.3, -0.1, 0.2, -0.3])
    given = measured.copy()
    f.reset(given, 0.25)
    given[:] = 99.0  # the filter keeps its own copy
    assert np.array_equal(f.q, measured)
    assert not f.v.any() and not f.a.any()
    assert f.gripper == 0.25
    f.reset(measured, 1.7)
    assert f.gripper == 1.0
    f.reset(measured, -0.3)
    assert f.gripper == 0.0
    # At rest: hold keeps the pose exactly, and a target at the pose does not move it.
    f.hold_step()
    assert np.array_equal(f.q, measured)
    assert f.step(measured, 0.0) is Trip.NONE
    assert np.array_equal(f.q, measured) and not f.v.any()
    # The first move after reset starts from rest: one jerk step of acceleration at most.
    assert f.step(measured + 1.0, 0.0) is Trip.NONE
    assert (np.abs(f.a) <= f.jmax * DT * (1 + 1e-12)).all()


@pytest.mark.parametrize("what", ["gripper", "pose"])
def test_reset_with_non_finite_measurement_never_commands_nan(what: str) -> None:
    f = make_filter()
    q = Q0.copy()
    if what == "pose":
        q[3] = math.nan
    try:
        f.reset(q, math.nan if what == "gripper" else 0.5)
    except ValueError:
        return  # refusing the measurement is a fix
    with np.errstate(invalid="ignore"):
        trips = {f.step(Q0, 0.5) for _ in range(10)}
    assert trips != {Trip.NONE} or (np.isfinite(f.q).all() and math.isfinite(f.gripper))


def test_reset_beyond_configured_limits_never_jumps() -> None:
    limits = limits_with(joint_max_rad=(1.0, *DEFAULT.limits.joint_max_rad[1:]), **HUGE_BOX)
    f = make_filter(limits)
    measured = Q0.copy()
    measured[0] = 1.05  # inside the robot's ±2π, beyond the configured 1.0
    f.reset(measured, 0.5)
    trace = start_trace(f)
    for _ in range(20):
        if f.step(Q0, 0.5) is not Trip.NONE:
            return  # refusing to move is a fix
        trace.record(f, from_step=True)
    steps = np.abs(np.diff(trace.Q, axis=0)).max()
    assert steps <= limits.max_velocity_rad_s[0] * DT * (1 + 1e-9), f"jumped {steps:.3f} rad"


# ---------------------------------------------------------------- no allocation per cycle

# Measured: 32 B of net growth over 2000 steps; a leak of one 6-vector per step grows by
# ~335 kB (the canary below). The first traced window is not used: numpy's small-buffer cache
# refills from traced allocations once tracing starts (~10.7 kB, bounded, not per step).
ALLOC_BOUND_B = 10_000


class _LeakyFilter(SafetyFilter):
    """Canary: keeps one new array per cycle, as a careless history buffer would."""

    def _commit(self) -> None:
        super()._commit()
        self.history = getattr(self, "history", [])
        self.history.append(self.q.copy())


class _RebindingFilter(SafetyFilter):
    """Canary: allocates fresh state arrays each cycle instead of writing in place."""

    def _commit(self) -> None:
        self.a, self.v, self.q = self._a_new.copy(), self._v_new.copy(), self._q_new.copy()


def steady_state_growth(cls: type[SafetyFilter]) -> tuple[int, bool]:
    f = cls(FREE, DT, ForwardKinematics(UR5E))
    f.reset(Q0, 0.5)
    t = np.arange(3600) * DT
    targets = list(Q0 + 0.2 * np.sin(2 * np.pi * 0.5 * t)[:, None])  # preallocated
    for target in targets[:600]:
        f.step(target, 0.5)
        f.hold_step()
    arrays = (f.q, f.v, f.a)
    addresses = [a.ctypes.data for a in arrays]
    gc.collect()
    tracemalloc.start()
    try:
        for target in targets[600:1600]:  # traced warm-up: lets numpy's caches settle
            f.step(target, 0.5)
        before = tracemalloc.get_traced_memory()[0]
        for target in targets[1600:]:
            f.step(target, 0.5)
        growth = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    now = (f.q, f.v, f.a)
    same = all(x is y for x, y in zip(arrays, now, strict=True))
    same = same and addresses == [a.ctypes.data for a in now]
    return growth, same


def test_step_allocates_nothing_that_lasts_in_steady_state() -> None:
    growth, same_arrays = steady_state_growth(SafetyFilter)
    assert growth < ALLOC_BOUND_B, f"{growth} B retained over 2000 steps"
    assert same_arrays, "the commanded state arrays were replaced"


def test_allocation_checks_catch_allocating_variants() -> None:
    leaked, _ = steady_state_growth(_LeakyFilter)
    assert leaked > 10 * ALLOC_BOUND_B
    _, same_arrays = steady_state_growth(_RebindingFilter)
    assert not same_arrays
