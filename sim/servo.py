"""The simulated controller's joint servo: sparse setpoints in, one actuator target per step out.

Two things a bare MuJoCo position actuator gets wrong, and a real joint controller does not:

- It lags a moving setpoint by (kv/kp)·velocity (~10 mrad at 1 rad/s at gains that are stable
  at 2 ms), and a stiffer servo only saturates the joint torques on its damping term. So the
  setpoint's velocity is fed forward: the actuator target is the reference plus
  (kv/kp)·reference velocity, which makes the damping act on the tracking error.
- A jump in the setpoint (a far target, a stop from speed) drives the joints into their torque
  limits, where the servo has no damping left and rings for half a second. So the reference
  follows the setpoint through a velocity and acceleration limit, as UR's servoj and servoStop
  do: a far target is approached at bounded acceleration, and a stop decelerates at
  `max_accel_rad_s2` and holds where the arm came to rest.

Between setpoints the target is extrapolated along the setpoint velocity for a couple of setpoint
intervals, so steps that fall between setpoints see a moving target rather than a staircase.
When setpoints stop coming the target falls back to the last setpoint, which is what servoj does
when its client stalls.
"""

from __future__ import annotations

import numpy as np

# Setpoints further apart than this are not one motion: their difference is no velocity.
_MAX_SETPOINT_GAP_S = 0.2
_INTERVAL_SMOOTHING = 0.05
_EXTRAPOLATE_INTERVALS = 2.0
_AT_REST_RAD = 1e-9


class ServoInterpolator:
    """Reference trajectory and actuator targets for six joints. Allocates nothing per step."""

    def __init__(
        self,
        lead_s: np.ndarray,
        period_s: float,
        max_speed_rad_s: np.ndarray,
        max_accel_rad_s2: float,
    ) -> None:
        self.period_s = float(period_s)
        self._lead_s = np.asarray(lead_s, dtype=float).copy()
        self._max_speed = np.asarray(max_speed_rad_s, dtype=float).copy()
        self._min_speed = -self._max_speed
        self._max_accel = float(max_accel_rad_s2)
        self._setpoint = np.zeros(6)
        self._setpoint_v = np.zeros(6)
        self._t_setpoint_s = -np.inf
        self._interval_s = self.period_s
        self._extrapolate_until_s = -np.inf
        self._r = np.zeros(6)  # reference position
        self._v = np.zeros(6)  # reference velocity
        self._goal = np.zeros(6)
        self._error = np.zeros(6)
        self._tmp = np.zeros(6)
        self._landing = np.zeros(6)
        self.holding = False  # a stop is in force: no setpoint has arrived since `hold`

    def command(self, q: np.ndarray, t_s: float) -> None:
        """A new setpoint `q` arrived at host time `t_s`."""
        gap = t_s - self._t_setpoint_s
        if 0.0 < gap <= _MAX_SETPOINT_GAP_S:
            self._interval_s += _INTERVAL_SMOOTHING * (gap - self._interval_s)
            # The smoothed interval cancels the caller's scheduling jitter; a gap much longer
            # than usual is a hiccup, and the real gap is then the better divisor.
            divisor = gap if gap > 1.5 * self._interval_s else self._interval_s
            np.subtract(q, self._setpoint, out=self._setpoint_v)
            self._setpoint_v /= divisor
            np.clip(self._setpoint_v, self._min_speed, self._max_speed, out=self._setpoint_v)
            self._extrapolate_until_s = t_s + _EXTRAPOLATE_INTERVALS * self._interval_s
        else:
            self._setpoint_v[:] = 0.0
            self._extrapolate_until_s = -np.inf
        self._setpoint[:] = q
        self._t_setpoint_s = t_s
        self.holding = False

    def hold(self, q: np.ndarray, qd: np.ndarray) -> None:
        """Stop: from the arm's state (q, qd), decelerate at the limit and hold where it stops."""
        self._r[:] = q
        np.clip(qd, self._min_speed, self._max_speed, out=self._v)
        # Stopping point per joint: q + v·|v| / (2a).
        np.abs(self._v, out=self._tmp)
        self._tmp *= self._v
        self._tmp /= 2.0 * self._max_accel
        np.add(self._r, self._tmp, out=self._setpoint)
        self._setpoint_v[:] = 0.0
        self._t_setpoint_s = -np.inf
        self._extrapolate_until_s = -np.inf
        self.holding = True

    def settled(self, t_s: float) -> bool:
        """The reference rests on a static setpoint: the target no longer changes per step."""
        return (
            t_s >= self._extrapolate_until_s
            and not self._v.any()
            and np.array_equal(self._r, self._setpoint)
        )

    def write_settled(self, out: np.ndarray) -> None:
        out[:] = self._setpoint

    def _close_to_rest_at(self, goal: np.ndarray, dt: float) -> bool:
        """Within rounding of the goal and slow enough to stop there in one step."""
        tmp = self._tmp
        np.subtract(goal, self._r, out=tmp)
        if np.abs(tmp, out=tmp).max() >= _AT_REST_RAD:
            return False
        return bool(np.abs(self._v, out=tmp).max() <= self._max_accel * dt)

    def step(self, t_s: float, out: np.ndarray) -> None:
        """Advance the reference by one period, to host time `t_s`, and write the actuator target
        for the physics step that starts then: MuJoCo evaluates actuator forces at a step's start
        state, so the target is the reference at the start of the step, not at its end."""
        dt = self.period_s
        goal, e, tmp, landing = self._goal, self._error, self._tmp, self._landing
        if t_s < self._extrapolate_until_s:
            np.multiply(self._setpoint_v, max(t_s - self._t_setpoint_s, 0.0), out=goal)
            goal += self._setpoint
            goal_v = self._setpoint_v
        else:
            goal[:] = self._setpoint
            goal_v = None
        # Braking law on the error relative to the moving goal (the goal's own motion over this
        # step is fed forward separately): the fastest approach that can still stop on the goal,
        # and no faster than landing on it within this step, so the reference settles instead of
        # circling.
        np.subtract(goal, self._r, out=e)
        if goal_v is not None:
            np.multiply(goal_v, dt, out=tmp)
            e -= tmp
        np.abs(e, out=tmp)
        tmp *= 2.0 * self._max_accel
        np.sqrt(tmp, out=tmp)
        np.abs(e, out=landing)
        landing /= dt
        np.minimum(tmp, landing, out=tmp)
        np.copysign(tmp, e, out=tmp)
        if goal_v is not None:
            tmp += goal_v
        np.clip(tmp, self._min_speed, self._max_speed, out=tmp)
        tmp -= self._v
        np.clip(tmp, -self._max_accel * dt, self._max_accel * dt, out=tmp)
        self._v += tmp
        np.multiply(self._v, dt, out=tmp)
        self._r += tmp
        if goal_v is None and self._close_to_rest_at(goal, dt):
            self._r[:] = goal
            self._v[:] = 0.0
        np.multiply(self._lead_s, self._v, out=out)
        out += self._r
