"""A simulated UR5e controller behind the `Robot` protocol, running in real time.

Physics advances lazily: every call (`servo`, `read_state`, `world_state`, the fault injectors)
first steps the world by the whole timesteps of host monotonic time that passed since the last
step. A caller that stalls therefore does not stall the robot: the simulated controller keeps
servoing its last target, exactly the ur_rtde trap a real client has to guard against, and the
robot-side watchdog (`set_watchdog`) stops the arm at the moment it expires, even when that moment
lies inside a long catch-up.

What the simulated controller does, modelled on a UR e-Series running ur_rtde's control script:

- `servo` sets the target and kicks the watchdog. It is ignored (no error) while the program is
  not running: after a watchdog trip, a protective stop, a safeguard stop, `close`, or a
  non-finite setpoint (a script runtime error on a real controller).
- Watchdog expiry is URScript's `rtde_set_watchdog(..., "stop")`: the arm halts where it is and
  the program stops; `reupload_script()` (ur_rtde's `reuploadScript`) starts it again.
- `inject_protective_stop`: halts, stops the program. `unlock_protective_stop` raises
  `UnlockRefused` within `unlock_delay_s` of the stop (UR's dashboard refuses for 5 s); after
  that it clears the stop and restarts the program (unlock + reuploadScript in one call).
- `set_enable_input(False)`: the safety input wired to the MCU's enable line. The robot performs
  a safeguard stop and pauses; when the input comes back it resumes on its own, holding where it
  stopped (UR with automatic safeguard reset) — no unlock needed.
- `inject_disconnect`: calls raise `RobotDisconnected`; the robot carries on without its client:
  it holds the last target, or halts when the watchdog expires if one is set. `reconnect` brings
  the client back and restarts the program holding the current position (ur_rtde's reconnect
  uploads the script again).

A halt starts from the joint positions and velocities of that instant, decelerates at
`max_accel_rad_s2` (15 rad/s² by default: 33 mrad of travel from 1 rad/s) and holds where the arm
came to rest. The gripper keeps its target through halts so that a grasped cube is not dropped.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable

import numpy as np

from edgevla.runtime.devices import RobotDisconnected, RobotState, SafetyMode
from edgevla.runtime.errors import EdgeVlaError
from edgevla.runtime.kinematics import UR5E, RobotModel
from edgevla.sim.scene import HOME_Q
from edgevla.sim.servo import ServoInterpolator
from edgevla.sim.world import SimWorld

# Host times that land within a millionth of a step of a step boundary count as on it, so that a
# deadline of "last kick + 20 ms" is the 10th step, not the 11th, after float rounding.
_STEP_EPSILON = 1e-6


class UnlockRefused(EdgeVlaError):
    """`unlock_protective_stop` came too early: UR's dashboard refuses within 5 s of the stop."""


class SimRobot:
    """The `Robot` protocol over a MuJoCo UR5e that runs on the host's monotonic clock."""

    def __init__(
        self,
        seed: int = 0,
        image_size: int = 96,
        *,
        robot: RobotModel = UR5E,
        world: SimWorld | None = None,
        unlock_delay_s: float = 5.0,
        max_catch_up_s: float = 1.0,
        max_accel_rad_s2: float = 15.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.world = world if world is not None else SimWorld(seed, image_size, robot)
        self.period_s = self.world.timestep_s
        self.unlock_delay_s = unlock_delay_s
        self._clock = clock
        self._max_catch_up_steps = max(1, int(max_catch_up_s / self.period_s))
        # A camera thread may ask for the world state while the control loop servos; reentrant
        # because connect() goes through reconnect().
        self._lock = threading.RLock()
        self._servo = ServoInterpolator(
            self.world.servo_lead_s,
            self.period_s,
            np.asarray(self.world.robot.max_speed_rad_s),
            max_accel_rad_s2,
        )
        self.skipped_s = 0.0  # host time not simulated because a catch-up exceeded the cap
        self.watchdog_trips = 0
        self._connected = True
        self._program_running = True
        self._enable_input = True
        self._protective_stop_t_s: float | None = None
        self._watchdog_timeout_s: float | None = None
        now = clock()
        # The physics state stands for host time origin + steps·period: counting whole steps
        # keeps rounding from drifting the two clocks apart over a long run.
        self._t_origin_s = now
        self._steps = 0
        self._last_kick_s = now
        self._hold(anchor=True)

    # --- the Robot protocol -------------------------------------------------------------------

    def connect(self) -> None:
        """Connected from construction, like `RTDEControlInterface`; reconnects after `close`."""
        with self._lock:
            if not self._connected:
                self.reconnect()

    def read_state(self, out: RobotState) -> None:
        with self._lock:
            now = self._advance()
            if not self._connected:
                raise RobotDisconnected("simulated controller: connection lost")
            out.t_s = now
            out.q[:] = self.world.q
            out.qd[:] = self.world.qd
            out.gripper = self.world.gripper_opening()
            out.safety_mode = self.safety_mode
            out.program_running = self.program_running

    def servo(self, q: np.ndarray, gripper: float) -> None:
        with self._lock:
            now = self._advance()
            if not self._connected:
                raise RobotDisconnected("simulated controller: connection lost")
            if not self._accepts_setpoints():
                return
            if not (np.all(np.isfinite(q)) and math.isfinite(gripper)):
                # A NaN reaching URScript's servoj is a runtime error: the program stops.
                self._program_running = False
                self._hold()
                return
            self._last_kick_s = now
            self._servo.command(q, now)
            self.world.set_gripper_target(gripper)

    def stop(self) -> None:
        """servoStop: brake and hold here; the program keeps running and takes the next servo."""
        with self._lock:
            self._advance()
            if self._connected:
                self._hold()

    def close(self) -> None:
        """Disconnect like ur_rtde's `stopScript` + `disconnect`: the arm halts, program stops."""
        with self._lock:
            self._advance()
            if self._connected:
                self._hold()
                self._program_running = False
            self._connected = False

    # --- ur_rtde extras -------------------------------------------------------------------------

    def set_watchdog(self, min_frequency_hz: float) -> None:
        """Stop arm and program when no servo/kick arrives for 1/min_frequency_hz; 0 disables."""
        with self._lock:
            now = self._advance()
            self._require_connection()
            self._watchdog_timeout_s = 1.0 / min_frequency_hz if min_frequency_hz > 0 else None
            self._last_kick_s = now

    def kick_watchdog(self) -> None:
        with self._lock:
            now = self._advance()
            self._require_connection()
            self._last_kick_s = now

    def reupload_script(self) -> None:
        """Restart a stopped program (after a watchdog trip or a NaN), holding the current pose.

        Does nothing while a protective stop is active: UR will not start a program then.
        """
        with self._lock:
            now = self._advance()
            self._require_connection()
            if self._protective_stop_t_s is None:
                self._restart_program(now)

    def reconnect(self) -> None:
        """The client is back: the program restarts holding the current pose (unless in a
        protective stop), as ur_rtde's reconnect uploads its script again."""
        with self._lock:
            now = self._advance()
            self._connected = True
            if self._protective_stop_t_s is None:
                self._restart_program(now)

    def world_state(self, out: np.ndarray) -> float:
        """Advance to now, copy the scene's qpos into `out`; a camera's `world_state_source`."""
        with self._lock:
            self._advance()
            return self.world.world_state(out)

    def reset(self, q_arm: np.ndarray | tuple[float, ...] = HOME_Q, gripper: float = 1.0) -> None:
        """A new episode: seeded cubes, the arm at rest at `q_arm`. Faults stay as they are."""
        with self._lock:
            self.world.reset(q_arm, gripper)
            self._t_origin_s = self._clock()
            self._steps = 0
            self._last_kick_s = self._t_origin_s
            self._hold(anchor=True)

    # --- fault injection ------------------------------------------------------------------------

    def inject_protective_stop(self) -> None:
        with self._lock:
            now = self._advance()
            if self._protective_stop_t_s is None:
                self._protective_stop_t_s = now
            self._program_running = False
            self._hold()

    def unlock_protective_stop(self) -> None:
        """Clear a protective stop; raises `UnlockRefused` within `unlock_delay_s` of it."""
        with self._lock:
            now = self._advance()
            if self._protective_stop_t_s is None:
                return
            waited = now - self._protective_stop_t_s
            if waited < self.unlock_delay_s:
                raise UnlockRefused(
                    f"cannot unlock protective stop until {self.unlock_delay_s:g} s after it"
                    f" occurred ({waited:.2f} s so far)"
                )
            self._protective_stop_t_s = None
            if self._connected:
                self._restart_program(now)

    def inject_disconnect(self) -> None:
        with self._lock:
            self._advance()
            self._connected = False

    def set_enable_input(self, enabled: bool) -> None:
        """The robot's safety input (the MCU's enable line): low means safeguard stop."""
        with self._lock:
            now = self._advance()
            if enabled == self._enable_input:
                return
            self._enable_input = enabled
            self._hold()
            # The watchdog restarts its count when the paused program resumes.
            self._last_kick_s = now

    # --- observation ----------------------------------------------------------------------------

    @property
    def safety_mode(self) -> SafetyMode:
        if self._protective_stop_t_s is not None:
            return SafetyMode.PROTECTIVE_STOP
        if not self._enable_input:
            return SafetyMode.SAFEGUARD_STOP
        return SafetyMode.NORMAL

    @property
    def program_running(self) -> bool:
        """As RTDE reports it: false when stopped, and while paused by a safeguard stop."""
        return self._accepts_setpoints()

    @property
    def connected(self) -> bool:
        return self._connected

    @property
    def sim_time_s(self) -> float:
        return float(self.world.data.time)

    # --- internals ------------------------------------------------------------------------------

    def _accepts_setpoints(self) -> bool:
        return self._program_running and self._protective_stop_t_s is None and self._enable_input

    def _require_connection(self) -> None:
        if not self._connected:
            raise RobotDisconnected("simulated controller: connection lost")

    def _restart_program(self, now: float) -> None:
        self._program_running = True
        self._last_kick_s = now
        self._hold(anchor=True)

    def _hold(self, *, anchor: bool = False) -> None:
        """Halt from the arm's state at this instant: decelerate, then hold.

        A stop that finds a stop already in force changes nothing, as on a UR: the arm keeps
        braking toward (or holding) the first stop's target. Re-aiming at the measured position
        would release an arm held against a cube, which then springs back by its contact
        deflection — motion a second stop must not cause. `anchor` takes the measured position
        regardless: a new episode, or a restarted program.
        """
        if anchor or not self._servo.holding:
            self._servo.hold(self.world.q, self.world.qd)

    def _watchdog_deadline_step(self) -> float:
        """The step at whose start the watchdog has expired (inf when it cannot expire)."""
        if self._watchdog_timeout_s is None or not self._accepts_setpoints():
            return math.inf
        deadline = self._last_kick_s + self._watchdog_timeout_s
        return math.ceil((deadline - self._t_origin_s) / self.period_s - _STEP_EPSILON)

    def _advance(self) -> float:
        """Step the physics up to the host's present; return that present."""
        now = self._clock()
        due = math.floor((now - self._t_origin_s) / self.period_s + _STEP_EPSILON) - self._steps
        if due <= 0:
            return now
        if due > self._max_catch_up_steps:
            skipped = due - self._max_catch_up_steps
            self._steps += skipped
            self.skipped_s += skipped * self.period_s
            due = self._max_catch_up_steps
        while due > 0:
            deadline = self._watchdog_deadline_step()
            if self._steps >= deadline:
                # Stop as of the expiry, not as of the end of the catch-up.
                self.watchdog_trips += 1
                self._program_running = False
                self._hold()
                deadline = math.inf
            t = self._t_origin_s + self._steps * self.period_s
            if not self._servo.settled(t):
                self._servo.step(t, self.world.arm_ctrl)
                n = 1  # the target changes every step
            else:
                self._servo.write_settled(self.world.arm_ctrl)
                n = due if deadline == math.inf else min(due, int(deadline) - self._steps)
            self.world.step(n)
            self._steps += n
            due -= n
        return now
