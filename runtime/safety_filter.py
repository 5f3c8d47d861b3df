"""The safety filter: every setpoint that can reach the robot passes through `step` or `stop_step`.

Per control cycle, on the requested joint target:
1. NaN/Inf anywhere → trip.
2. A target beyond the hard joint limits → trip (a policy asking for that is broken); targets
   inside the hard limits are clamped into the limits less their margin.
3. Desired velocity (target − last command) / period, capped so that each joint can still brake
   before the target and before its joint limits, then scaled uniformly so the fastest joint
   meets its velocity limit (direction kept, as MoveIt Servo does).
4. libfranka-style rate limiting per joint: jerk clamped, then acceleration clamped to a band
   that narrows near the velocity limit, then integrated to velocity and position.
5. Max step per cycle, the hard joint limits (never binding with sane limits: defence in depth).
6. The TCP workspace box, checked at the predicted stopping point of the new command, so that a
   trip still leaves room to stop inside the box.
7. The gripper: clamped to its range and rate-limited.

`stop_step` brings the command to rest under the same acceleration and jerk limits (a
controlled stop). The filter owns the commanded state (position, velocity, acceleration); all
arithmetic happens in preallocated arrays, so a cycle allocates no arrays.
"""

from __future__ import annotations

from enum import IntEnum

import numpy as np

from edgevla.runtime.config import LimitsConfig
from edgevla.runtime.kinematics import ForwardKinematics

_GAIN_PER_S = 20.0  # position-error feedback near the target: a 50 ms time constant


class Trip(IntEnum):
    """Why the control process stopped the robot. Stable codes: they cross shared memory."""

    NONE = 0
    NAN_SETPOINT = 1
    SETPOINT_OUT_OF_LIMITS = 2
    WORKSPACE = 3
    SETPOINT_STALE = 4
    CAMERA_STALE = 5
    ROBOT_PROTECTIVE_STOP = 6
    ROBOT_SAFETY_STOP = 7
    ROBOT_DISCONNECTED = 8
    MCU_HEARTBEAT = 9
    ESTOP = 10
    POLICY_DEAD = 11
    STARTUP_TIMEOUT = 12
    SUPERVISOR_LOST = 13
    OPERATOR_STOP = 14  # SIGINT/SIGTERM: a requested stop, recorded like a trip
    ROBOT_PROGRAM_STOPPED = 15  # the robot-side control program is not running
    ROBOT_OUTSIDE_LIMITS = 16  # the measured pose is non-finite or outside the joint limits
    FILTER_FAULT = 17  # the filter computed a non-finite command (never with validated limits)
    BAD_TRAJECTORY = 18  # the committed trajectory is malformed (count, times)
    CONTROL_FAULT = 19  # an exception inside the control cycle
    ROBOT_STATE_STALE = 20  # the robot's readings arrive late (delayed or stalled data)

    @property
    def label(self) -> str:
        return self.name.lower().replace("_", "-")


class SafetyFilter:
    def __init__(self, limits: LimitsConfig, period_s: float, fk: ForwardKinematics) -> None:
        f = np.asarray
        self.dt = period_s
        self.fk = fk
        self.hard_lo = f(limits.joint_min_rad, dtype=float)
        self.hard_hi = f(limits.joint_max_rad, dtype=float)
        self.lo = self.hard_lo + limits.joint_margin_rad
        self.hi = self.hard_hi - limits.joint_margin_rad
        self.vmax = f(limits.max_velocity_rad_s, dtype=float)
        self.amax = f(limits.max_acceleration_rad_s2, dtype=float)
        self.jmax = f(limits.max_jerk_rad_s3, dtype=float)
        self.jerk_over_acc = self.jmax / self.amax
        self._rest_v = 0.25 * self.jmax * period_s**2
        self._rest_a = 0.25 * self.jmax * period_s
        self._acc_sq_over_jerk = self.amax**2 / self.jmax
        self.max_step = limits.max_step_rad
        self.box_lo = f(limits.workspace_min_m, dtype=float)
        self.box_hi = f(limits.workspace_max_m, dtype=float)
        self.gripper_lo, self.gripper_hi = limits.gripper_min, limits.gripper_max
        self.gripper_step = limits.max_gripper_speed_per_s * period_s
        # Commanded state.
        self.q = np.zeros(6)
        self.v = np.zeros(6)
        self.a = np.zeros(6)
        self.gripper = 0.0
        # Counters of how often each limit shaped a command (not violations: the output obeys).
        self.clamped_position = 0
        self.scaled_velocity = 0
        self.defence_clamps = 0  # max step or hard limit bound: should stay 0
        # Scratch.
        self._target = np.zeros(6)
        self._last_target = np.zeros(6)
        self._ff = np.zeros(6)
        self._vd = np.zeros(6)
        self._tmp = np.zeros(6)
        self._tmp2 = np.zeros(6)
        self._acc_lo = np.zeros(6)
        self._acc_hi = np.zeros(6)
        self._q_new = np.zeros(6)
        self._v_new = np.zeros(6)
        self._a_new = np.zeros(6)
        self._q_stop = np.zeros(6)
        self._tcp = np.zeros(3)

    def reset(self, q_now: np.ndarray, gripper_now: float) -> Trip:
        """Start commanding from where the robot is, at rest; refuses a pose it cannot trust.

        A non-finite reading or a pose outside the configured joint limits would make the first
        command a jump (or NaN forever after): the arm must be brought inside by hand first.
        """
        if not (np.isfinite(q_now).all() and np.isfinite(gripper_now)):
            return Trip.ROBOT_OUTSIDE_LIMITS
        if (q_now < self.hard_lo).any() or (q_now > self.hard_hi).any():
            return Trip.ROBOT_OUTSIDE_LIMITS
        self.q[:] = q_now
        self._last_target[:] = q_now
        self.v[:] = 0.0
        self.a[:] = 0.0
        self.gripper = min(max(float(gripper_now), self.gripper_lo), self.gripper_hi)
        return Trip.NONE

    # ------------------------------------------------------------------ per-cycle entry points

    def step(self, target_q: np.ndarray, target_gripper: float) -> Trip:
        """Advance the command one period toward `target_q`. On a trip the command is unchanged."""
        if not (np.isfinite(target_q).all() and np.isfinite(target_gripper)):
            return Trip.NAN_SETPOINT
        if (target_q < self.hard_lo).any() or (target_q > self.hard_hi).any():
            return Trip.SETPOINT_OUT_OF_LIMITS
        target = self._target
        np.clip(target_q, self.lo, self.hi, out=target)
        if not np.array_equal(target, target_q):
            self.clamped_position += 1
        vd = self._vd
        np.subtract(target, self.q, out=vd)
        self._approach(vd)
        self._cap_for_braking(vd)
        self._scale_uniformly(vd)
        self._rate_limit(vd)
        if not np.isfinite(self._q_new).all():
            return Trip.FILTER_FAULT
        trip = self._workspace_check()
        if trip is not Trip.NONE:
            return trip
        self._commit()
        step = min(max(float(target_gripper), self.gripper_lo), self.gripper_hi) - self.gripper
        self.gripper += min(max(step, -self.gripper_step), self.gripper_step)
        return Trip.NONE

    def hold_step(self) -> None:
        """Bring the commanded velocity toward zero (setpoints late, or a controlled stop).

        No workspace check: braking only shortens the path the last checked command predicted.
        """
        self._vd[:] = 0.0
        self._rate_limit(self._vd)
        self._commit()

    def stop_step(self) -> bool:
        """One cycle of a controlled stop. Returns True once the command is at rest."""
        self.hold_step()
        # Nothing is snapped to zero: that would break v = Δq/dt and with it the jerk limit.
        # The residue (below a quarter of one period of maximum jerk) keeps decaying.
        at_rest = (np.abs(self.v) < self._rest_v).all() and (np.abs(self.a) < self._rest_a).all()
        return bool(at_rest)

    # ------------------------------------------------------------------ stages

    def _approach(self, error: np.ndarray) -> None:
        """Error → desired velocity: the target's own velocity plus a bounded correction.

        Feed-forward (the target's change per cycle) lets a smoothly moving target be followed
        without lag. The correction is proportional near the target (gain `_GAIN_PER_S`) and no
        faster than the joint can brake from further away (√(a_max·|e|), planned at half the
        acceleration limit so the jerk ramp fits). A pure √ law has unbounded gain at zero
        error and makes the jerk-limited loop circle the target.
        """
        ff = self._ff
        np.subtract(self._target, self._last_target, out=ff)
        ff /= self.dt
        np.clip(ff, -self.vmax, self.vmax, out=ff)
        self._last_target[:] = self._target
        # The proportional correction Kp·e may not exceed √(a_max·|e|) on any joint; scaling the
        # whole correction by the worst joint's ratio keeps its direction (Kp·√(|e|/a_max)).
        ratio = self._tmp
        np.abs(error, out=ratio)
        ratio /= self.amax
        np.sqrt(ratio, out=ratio)
        worst = float(ratio.max()) * _GAIN_PER_S
        error *= _GAIN_PER_S / worst if worst > 1.0 else _GAIN_PER_S
        error += ff

    def _braking_speed(self, distance: np.ndarray, out: np.ndarray) -> np.ndarray:
        """Largest speed that still stops within `distance`, jerk ramp included.

        Stopping from v takes about v²/2a + v·a/j; solving for v: −a²/j + √((a²/j)² + 2·a·d).
        """
        np.maximum(distance, 0.0, out=out)
        out *= 2.0 * self.amax
        out += self._acc_sq_over_jerk**2
        np.sqrt(out, out=out)
        out -= self._acc_sq_over_jerk
        return out

    def _cap_for_braking(self, vd: np.ndarray) -> None:
        """Speed toward each joint limit no more than can still brake before it."""
        tmp = self._tmp
        np.subtract(self.hi, self.q, out=tmp)
        np.minimum(vd, self._braking_speed(tmp, tmp), out=vd)
        np.subtract(self.q, self.lo, out=tmp)
        self._braking_speed(tmp, tmp)
        np.negative(tmp, out=tmp)
        np.maximum(vd, tmp, out=vd)

    def _scale_uniformly(self, vd: np.ndarray) -> None:
        tmp = self._tmp
        np.abs(vd, out=tmp)
        np.divide(tmp, self.vmax, out=tmp)
        worst = tmp.max()
        if worst > 1.0:
            vd /= worst
            self.scaled_velocity += 1

    def _rate_limit(self, vd: np.ndarray) -> None:
        """libfranka's limitRate into the scratch state (a_new, v_new, q_new); nothing committed."""
        dt, v, a = self.dt, self.v, self.a
        # Aim for the acceleration from which the velocity error can still be closed with the
        # jerk limit (|a| ≤ √(2·j·|Δv|)); aiming at Δv/dt overshoots and rings under a jerk limit.
        jerk = self._tmp
        dv = self._tmp2
        np.subtract(vd, v, out=dv)
        np.abs(dv, out=jerk)
        jerk *= 2.0 * self.jmax
        np.sqrt(jerk, out=jerk)
        dv /= dt
        np.clip(dv, -jerk, jerk, out=dv)
        np.subtract(dv, a, out=jerk)
        jerk /= dt
        np.clip(jerk, -self.jmax, self.jmax, out=jerk)
        a_new = self._a_new
        np.multiply(jerk, dt, out=a_new)
        a_new += a
        # Near ±v_max only as much acceleration as jerk can take back before reaching it.
        np.subtract(self.vmax, v, out=self._acc_hi)
        self._acc_hi *= self.jerk_over_acc
        np.minimum(self._acc_hi, self.amax, out=self._acc_hi)
        np.add(self.vmax, v, out=self._acc_lo)
        self._acc_lo *= -self.jerk_over_acc
        np.maximum(self._acc_lo, -self.amax, out=self._acc_lo)
        np.clip(a_new, self._acc_lo, self._acc_hi, out=a_new)
        np.multiply(a_new, dt, out=self._v_new)
        self._v_new += v
        np.multiply(self._v_new, dt, out=self._q_new)
        self._q_new += self.q
        if self._defend(self._q_new):
            # A defence clamp moved the position: keep v = Δq/dt and a = Δv/dt true.
            np.subtract(self._q_new, self.q, out=self._v_new)
            self._v_new /= dt
            np.subtract(self._v_new, v, out=a_new)
            a_new /= dt

    def _defend(self, q_new: np.ndarray) -> bool:
        """Max step and hard limits; with validated limits neither binds. True if one did."""
        step = self._tmp
        np.subtract(q_new, self.q, out=step)
        largest = np.abs(step).max()
        bound = False
        if largest > self.max_step * (1.0 + 1e-9):
            step *= self.max_step / largest
            np.add(self.q, step, out=q_new)
            bound = True
        if (q_new < self.hard_lo).any() or (q_new > self.hard_hi).any():
            np.clip(q_new, self.hard_lo, self.hard_hi, out=q_new)
            bound = True
        if bound:
            self.defence_clamps += 1
        return bound

    def _workspace_check(self) -> Trip:
        """Trip if the new command, braking at full deceleration, would end outside the box."""
        # Stopping distance from (v, a) under the acceleration and jerk limits, conservatively:
        # speed may still grow by a⁺²/2j while the acceleration ramps to −a_max, during
        # (a⁺ + a_max)/j, then it falls at a_max: d ≤ v_pk·(a⁺ + a_max)/j + v_pk²/2a_max.
        q_stop, speed, push = self._q_stop, self._tmp, self._tmp2
        np.abs(self._v_new, out=speed)
        np.sign(self._v_new, out=q_stop)
        np.multiply(self._a_new, q_stop, out=push)  # acceleration along the motion
        np.maximum(push, 0.0, out=push)
        np.multiply(push, push, out=self._acc_hi)
        self._acc_hi /= 2.0 * self.jmax
        speed += self._acc_hi  # peak speed
        push += self.amax
        push /= self.jmax
        push *= speed  # ramp distance
        np.multiply(speed, speed, out=self._acc_hi)
        self._acc_hi /= 2.0 * self.amax
        push += self._acc_hi  # total distance
        q_stop *= push
        q_stop += self._q_new
        for q in (self._q_new, q_stop):
            tcp = self.fk.tcp_position(q, self._tcp)
            if (tcp < self.box_lo).any() or (tcp > self.box_hi).any():
                return Trip.WORKSPACE
        return Trip.NONE

    def _commit(self) -> None:
        self.a[:] = self._a_new
        self.v[:] = self._v_new
        self.q[:] = self._q_new
