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

_REST_RAD_S = 1e-4  # below this commanded speed (and its acceleration) a stop is complete
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

    def reset(self, q_now: np.ndarray, gripper_now: float) -> None:
        """Start commanding from where the robot is, at rest."""
        self.q[:] = q_now
        self._last_target[:] = q_now
        self.v[:] = 0.0
        self.a[:] = 0.0
        self.gripper = min(max(float(gripper_now), self.gripper_lo), self.gripper_hi)

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
        at_rest = (np.abs(self.v) < _REST_RAD_S).all() and (
            np.abs(self.a) < _REST_RAD_S / self.dt
        ).all()
        if at_rest:
            self.v[:] = 0.0
            self.a[:] = 0.0
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
        ceiling = self._tmp
        np.abs(error, out=ceiling)
        ceiling *= self.amax
        np.sqrt(ceiling, out=ceiling)
        error *= _GAIN_PER_S
        np.clip(error, -ceiling, ceiling, out=error)
        error += ff

    def _cap_for_braking(self, vd: np.ndarray) -> None:
        """|v| toward a limit ≤ sqrt(2·a_max·distance): the joint can still stop before it."""
        tmp = self._tmp
        np.subtract(self.hi, self.q, out=tmp)
        np.maximum(tmp, 0.0, out=tmp)
        tmp *= 2.0 * self.amax
        np.sqrt(tmp, out=tmp)
        np.minimum(vd, tmp, out=vd)
        np.subtract(self.q, self.lo, out=tmp)
        np.maximum(tmp, 0.0, out=tmp)
        tmp *= 2.0 * self.amax
        np.sqrt(tmp, out=tmp)
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
        jerk = self._tmp
        np.subtract(vd, v, out=jerk)
        jerk /= dt
        jerk -= a
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
        if largest > self.max_step:
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
        q_stop = self._q_stop
        np.abs(self._v_new, out=self._tmp)
        np.multiply(self._v_new, self._tmp, out=q_stop)
        q_stop /= 2.0 * self.amax
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
