"""What the supervisor tells systemd, judged from shared memory (docs/deploy.md).

- `READY=1` once the control process servos the policy's trajectory (state `running`): by then
  the bundle was verified, the calibration loaded and checked, the robot, MCU and cameras
  connected, and the policy has committed its first trajectory.
- `WATCHDOG=1` every half `WATCHDOG_USEC`, and only while the control loop cycles, runs (no trip
  latched), and the policy process lives, beats and plans. A trip or a hang stops the pings;
  systemd then aborts and restarts the service.
- `STATUS=` once a second: state, loop rates, the trip that stopped the robot.
- `STOPPING=1` from the supervisor's shutdown, once the robot is stopped.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from edgevla.runtime.control import ControlState
from edgevla.runtime.safety_filter import Trip
from edgevla.runtime.sd_notify import Notifier
from edgevla.runtime.shm import ShmBlock

log = logging.getLogger("edgevla.service")

# Stalls that count as a hang. Far above the control process's own deadlines (0.1-0.3 s), which
# trip first when the policy stalls: these catch what those cannot see, a control loop or a
# supervisor view that has stopped moving. A missed ping is not yet a kill: systemd waits for
# the whole WatchdogSec.
CONTROL_STALL_S = 0.5
HEARTBEAT_STALL_S = 0.5
STATUS_EVERY_S = 1.0


@dataclass(frozen=True)
class Health:
    running: bool  # the control process servos the policy's trajectory
    healthy: bool  # ... and everything that keeps it so is alive and moving
    why: str  # when not healthy, in words for the journal


class HealthMonitor:
    """Watches the counters that prove the runtime is alive; ages on the supervisor's clock."""

    def __init__(
        self,
        ctrl: ShmBlock,
        pol: ShmBlock,
        system2_rate_hz: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.ctrl, self.pol = ctrl, pol
        self.clock = clock
        # Three plan periods, and never under a second: a slow plan is not a hang.
        self.plan_stall_s = max(1.0, 3.0 / system2_rate_hz)
        now = clock()
        self._seen: dict[str, tuple[float, float]] = {
            "cycle": (-1.0, now),
            "heartbeat": (-1.0, now),
            "plans": (-1.0, now),
        }

    def _age(self, name: str, value: float, now: float) -> float:
        """Seconds since `value` last changed."""
        last, since = self._seen[name]
        if value != last:
            self._seen[name] = (value, now)
            return 0.0
        return now - since

    def state(self) -> ControlState:
        return ControlState(int(self.ctrl.state[0]))

    def last_trip(self) -> str | None:
        """The label of the latest trip other than a requested stop, if any."""
        count = int(self.ctrl.trip_count[0])
        for k in range(count - 1, max(count - len(self.ctrl.trips), 0) - 1, -1):
            trip = Trip(int(self.ctrl.trips[k % len(self.ctrl.trips), 0]))
            if trip is not Trip.OPERATOR_STOP:
                return trip.label
        return None

    def poll(self, policy_alive: bool) -> Health:
        now = self.clock()
        cycle_age = self._age("cycle", float(self.ctrl.cycle[0]), now)
        beat_age = self._age("heartbeat", float(self.pol.heartbeat_t[0]), now)
        plan_age = self._age("plans", float(self.pol.s2_count[0]), now)
        state = self.state()
        running = state == ControlState.RUNNING
        if not running:
            trip = self.last_trip()
            why = f"control {state.name.lower()}" + (f" after {trip}" if trip else "")
        elif not policy_alive:
            why = "the policy process has ended"
        elif cycle_age > CONTROL_STALL_S:
            why = f"the control loop has not cycled for {cycle_age:.1f} s"
        elif beat_age > HEARTBEAT_STALL_S:
            why = f"no policy heartbeat for {beat_age:.1f} s"
        elif plan_age > self.plan_stall_s:
            why = f"no new plan for {plan_age:.1f} s"
        else:
            why = ""
        return Health(running=running, healthy=not why, why=why)


class ServiceReporter:
    """Says READY, WATCHDOG and STATUS at the right moments; silent outside systemd."""

    def __init__(self, notifier: Notifier, monitor: HealthMonitor, system1_enabled: bool) -> None:
        self.notifier = notifier
        self.monitor = monitor
        self.system1_enabled = system1_enabled
        self.ready = False
        self._next_ping = float("-inf")
        self._pinging = False
        self._last_status = float("-inf")
        self._last_text = ""
        self._counts = self._snapshot(monitor.clock())

    @property
    def enabled(self) -> bool:
        return self.notifier.enabled

    def _snapshot(self, now: float) -> tuple[float, int, int, int]:
        c, p = self.monitor.ctrl, self.monitor.pol
        return now, int(c.cycle[0]), int(p.s2_count[0]), int(p.s1_count[0])

    def _rates(self, now: float) -> str:
        t, cycles, s2, s1 = self._counts
        span = max(now - t, 1e-6)
        new = self._snapshot(now)
        self._counts = new
        control, s2_hz, s1_hz = (
            (b - a) / span for a, b in zip((cycles, s2, s1), new[1:], strict=True)
        )
        s1_text = f"System 1 {s1_hz:.0f} Hz" if self.system1_enabled else "System 1 off"
        return f"control {control:.0f} Hz, System 2 {s2_hz:.1f} Hz, {s1_text}"

    def _status(self, health: Health, now: float) -> str:
        trip = self.monitor.last_trip()
        if health.healthy:
            return f"running: {self._rates(now)}; trips: none"
        if not self.ready:
            state = self.monitor.state().name.lower()
            if trip:
                return f"not started: control {state} after {trip}"
            return f"starting: control {state}, waiting for the policy's first trajectory"
        return f"{health.why}; watchdog pings stopped ({self._rates(now)})"

    def update(self, policy_alive: bool) -> None:
        """Called from the supervisor's loop (every 50 ms)."""
        if not self.notifier.enabled:
            return
        health = self.monitor.poll(policy_alive)
        now = self.monitor.clock()
        if health.running and not self.ready:
            self.ready = True
            self.notifier.send(READY=1, STATUS="running: the policy drives the robot")
            log.info("systemd: READY")
        interval = self.notifier.watchdog_interval_s
        if self.ready and interval is not None:
            if health.healthy and now >= self._next_ping:
                self.notifier.send(WATCHDOG=1)
                # On the schedule, not from now: the 50 ms loop would add up to 50 ms a ping.
                # After a lapse (the first ping, pings resuming) the schedule restarts here.
                lapsed = now - self._next_ping > interval
                self._next_ping = (now if lapsed else self._next_ping) + interval
            if health.healthy != self._pinging:
                self._pinging = health.healthy
                if health.healthy:
                    log.info("systemd watchdog pings running")
                else:
                    log.warning("systemd watchdog pings stopped: %s", health.why)
        if now - self._last_status >= STATUS_EVERY_S:
            text = self._status(health, now)
            self._last_status = now
            if text != self._last_text:
                self.notifier.send(STATUS=text)
                self._last_text = text

    def status(self, text: str) -> None:
        self.notifier.send(STATUS=text)
        self._last_text = text

    def stopping(self, text: str) -> None:
        """STOPPING=1: call once the robot is stopped (or known to stop by itself)."""
        self.notifier.send(STOPPING=1, STATUS=text)
        self.notifier.close()
