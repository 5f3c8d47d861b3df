"""`URRobot`: the `Robot` protocol over ur_rtde, for UR5 / UR5e (CB3 and e-Series).

What it takes care of, each a lesson of ../shared/NOTES.md:

- Connecting with retries and errors that say what to check (the IP and the network, remote
  control on the pendant, another RTDE client holding the input registers).
- The control period comes from the controller (500 Hz e-Series, 125 Hz CB3, read from the
  dashboard's PolyScope version), not from our config.
- `servoJ` with positional arguments only (keywords raise TypeError in ur_rtde's bindings), the
  configured lookahead and gain, and the period as its time.
- The robot-side watchdog (`setWatchdog`, action "stop"): every servoJ updates the watched
  register, so if this process hangs the arm stops by itself.
- Setpoints go out only while the controller says the program runs, the safety mode is normal
  and the connection is up (ur_rtde's `servoJ` can return True from stale state on a dead
  connection, so `isConnected()` is checked every cycle).
- A protective stop is reported through `read_state` (the control process trips on it) and is
  cleared only by an explicit `recover()`: the dashboard unlock, no sooner than 5 s after the
  stop (UR refuses earlier), then a script re-upload.
- `reconnect()` with backoff; `servoStop` and `stopScript` on every way out (`close`).
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import math
import re
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from edgevla.runtime.devices import RobotDisconnected, RobotState, SafetyMode
from edgevla.runtime.errors import EdgeVlaError

log = logging.getLogger(__name__)

E_SERIES_HZ, CB3_HZ = 500.0, 125.0
RUNTIME_PLAYING = 2


class URConnectError(EdgeVlaError):
    """The controller could not be reached or would not take our control script."""


class URRecoveryError(EdgeVlaError):
    """A protective stop could not be cleared (too early, or the controller refused)."""


@dataclass(frozen=True)
class URConfig:
    host: str
    lookahead_s: float = 0.1  # servoJ lookahead_time, ur_rtde accepts [0.03, 0.2]
    gain: float = 300.0  # servoJ gain, ur_rtde accepts [100, 2000]
    connect_attempts: int = 3
    backoff_s: float = 0.5  # doubled after every failed attempt
    decel_rad_s2: float = 10.0  # servoStop deceleration
    unlock_delay_s: float = 5.0  # UR refuses to unlock a protective stop sooner

    def __post_init__(self) -> None:
        if not 0.03 <= self.lookahead_s <= 0.2:
            raise EdgeVlaError(f"lookahead_s {self.lookahead_s} must be in [0.03, 0.2]")
        if not 100 <= self.gain <= 2000:
            raise EdgeVlaError(f"gain {self.gain} must be in [100, 2000]")
        if self.connect_attempts < 1:
            raise EdgeVlaError("connect_attempts must be >= 1")


def _keep_forever(obj: object) -> None:
    """One reference that is never released: the object is never destroyed."""
    ctypes.pythonapi.Py_IncRef(ctypes.py_object(obj))


def controller_frequency(polyscope_version: str) -> float:
    """500 Hz on e-Series (PolyScope 5+), 125 Hz on CB3 (PolyScope 3), from the version text."""
    match = re.search(r"(\d+)\.(\d+)\.(\d+)", polyscope_version)
    if match is None:
        raise URConnectError(f"cannot read a PolyScope version from {polyscope_version!r}")
    return E_SERIES_HZ if int(match.group(1)) > 3 else CB3_HZ


def _connect_hint(host: str, exc: BaseException) -> str:
    text = str(exc)
    if "remote control" in text.lower():
        return "enable remote control on the teach pendant (Settings → System → Remote Control)"
    if "in_use" in text.lower() or "in use" in text.lower():
        return (
            "another RTDE client holds the input registers (a URCap such as the ROS driver, or a "
            "second edgevla): stop it"
        )
    return (
        f"check that {host} is the robot's address and reachable (ping it), that the robot is "
        "powered on with brakes released, and that nothing else controls it"
    )


class SampleAge:
    """How much older than usual each RTDE sample is when it is read.

    ur_rtde hands over the newest package it has; it does not say when it arrived. The package's
    `timestamp` is the controller's clock at the sample, so host time minus it is the link's
    latency plus a constant offset between the clocks. The smallest value seen is the healthy
    link; the excess over it is the age. The smallest value may creep up by 100 µs per second,
    so that a controller clock slower than the host's (tens of ppm) is not read as growing age,
    while a packet delay of milliseconds shows at once.
    """

    DRIFT_S_PER_S = 1e-4

    def __init__(self) -> None:
        self._best = math.inf
        self._t_last = math.nan

    def update(self, host_s: float, controller_s: float) -> float:
        offset = host_s - controller_s
        if math.isfinite(self._best):
            self._best += self.DRIFT_S_PER_S * max(host_s - self._t_last, 0.0)
        self._best = min(self._best, offset)
        self._t_last = host_s
        return offset - self._best


class URRobot:
    """One UR arm over ur_rtde (import of `rtde_control`/`rtde_receive` happens on connect)."""

    def __init__(
        self,
        config: URConfig,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.config = config
        self.period_s = 1.0 / E_SERIES_HZ
        self._clock, self._sleep = clock, sleep
        self._control = None
        self._receive = None
        self._dashboard = None
        self._gripper = 1.0  # commanded opening; the arm driver has no gripper of its own
        self._protective_stop_t: float | None = None
        self._refused_logged = False
        self._lost = False  # the connection dropped: see reconnect
        self.speed_scaling = 1.0  # the controller's speed scaling, as last read
        self._accepts_setpoints = False  # program running and safety normal, as last read
        self._age = SampleAge()

    # ------------------------------------------------------------------ connection

    def connect(self) -> None:
        """Connect (dashboard, receive, control) with retries; raises URConnectError."""
        if self._lost:
            self.reconnect()  # refuses, naming why
        delay = self.config.backoff_s
        last: BaseException | None = None
        for attempt in range(1, self.config.connect_attempts + 1):
            try:
                self._open()
                log.info(
                    "connected to UR controller %s (%.0f Hz)", self.config.host, 1 / self.period_s
                )
                return
            except (RuntimeError, OSError, URConnectError) as exc:
                last = exc
                self._close_clients()
                log.warning(
                    "UR connect attempt %d/%d to %s failed: %s",
                    attempt,
                    self.config.connect_attempts,
                    self.config.host,
                    exc,
                )
                if attempt < self.config.connect_attempts:
                    self._sleep(delay)
                    delay *= 2
        assert last is not None
        raise URConnectError(
            f"cannot connect to the UR controller at {self.config.host} after "
            f"{self.config.connect_attempts} attempts ({last}); "
            f"{_connect_hint(self.config.host, last)}"
        ) from last

    def _open(self) -> None:
        import dashboard_client
        import rtde_control
        import rtde_receive

        host = self.config.host
        dashboard = dashboard_client.DashboardClient(host)
        dashboard.connect()
        self._dashboard = dashboard
        self.period_s = 1.0 / controller_frequency(dashboard.polyscopeVersion())
        self._receive = rtde_receive.RTDEReceiveInterface(host)
        self._age = SampleAge()
        self._control = rtde_control.RTDEControlInterface(host)
        if not self._control.isProgramRunning():
            raise URConnectError("the control script did not start on the controller")

    def reconnect(self) -> None:
        """Connect again with backoff, after a failed connect or `close()`.

        Not after a lost connection: ur_rtde 1.6.5's control interface then reconnects from its
        own receive thread and never stops (`receiveCallback` never clears `should_reconnect`,
        src/rtde_control_interface.cpp:783-878, and each `reconnect()` starts one more receive
        thread), re-uploading its script over any new client; disconnecting it meanwhile
        crashes the process. The control process trips `robot-disconnected`, brings nothing
        else up, and a restart of the process (systemd's `Restart=on-failure`) reconnects.
        """
        if self._lost:
            raise URConnectError(
                f"the connection to {self.config.host} was lost; ur_rtde 1.6.5 cannot reconnect "
                "in the same process (its control interface keeps reconnecting on its own): "
                "restart edgevla"
            )
        self._close_clients()
        self.connect()

    def _close_clients(self) -> None:
        """Disconnect every client; after a lost connection, leave them all be.

        After a loss ur_rtde's reconnecting thread may be using any of them, and a disconnect
        (or a destructor) that meets it crashes the process: they are kept, never destroyed.
        """
        for client in (self._control, self._receive, self._dashboard):
            if client is None:
                continue
            if self._lost:
                _keep_forever(client)
            elif client.isConnected():
                with contextlib.suppress(RuntimeError):
                    client.disconnect()
        self._control = self._receive = self._dashboard = None

    def _require(self):
        """(control, receive) when both are connected; RobotDisconnected otherwise."""
        control, receive = self._control, self._receive
        if control is None or receive is None:
            raise RobotDisconnected(f"not connected to the UR controller at {self.config.host}")
        if self._lost or not (receive.isConnected() and control.isConnected()):
            if not self._lost:
                log.error("lost the connection to the UR controller at %s", self.config.host)
            self._lost = True  # latched: ur_rtde's reconnecting thread may report it back up
            raise RobotDisconnected(
                f"the UR controller at {self.config.host} dropped the connection"
            )
        return control, receive

    # ------------------------------------------------------------------ the Robot protocol

    def read_state(self, out: RobotState) -> None:
        _control, receive = self._require()
        out.t_s = self._clock()
        out.age_s = self._age.update(out.t_s, float(receive.getTimestamp()))
        out.q[:] = receive.getActualQ()
        out.qd[:] = receive.getActualQd()
        out.gripper = self._gripper
        mode = int(receive.getSafetyMode())
        out.safety_mode = mode
        self._note_speed_scaling(float(receive.getSpeedScaling()))
        out.program_running = bool(receive.getRuntimeState() == RUNTIME_PLAYING)
        # servo() gates on this reading: the control loop reads before it commands, each cycle.
        self._accepts_setpoints = out.program_running and mode == SafetyMode.NORMAL
        if mode == SafetyMode.PROTECTIVE_STOP and self._protective_stop_t is None:
            self._protective_stop_t = out.t_s
            log.error("UR protective stop (safety mode %d)", mode)
        elif mode == SafetyMode.NORMAL:
            self._protective_stop_t = None

    def _note_speed_scaling(self, scaling: float) -> None:
        """The pendant's speed slider scales every servoJ motion: below 100 % the arm lags the
        setpoints the control process streams (their timing no longer holds). Said once per
        change, so the operator can see why tracking degrades."""
        if abs(scaling - self.speed_scaling) > 0.01:
            if scaling < 0.99:
                log.warning(
                    "UR speed scaling at %.0f %%: the arm lags the commanded trajectory",
                    100 * scaling,
                )
            else:
                log.info("UR speed scaling back at %.0f %%", 100 * scaling)
        self.speed_scaling = scaling

    def servo(self, q: np.ndarray, gripper: float) -> None:
        control, _receive = self._require()
        self._gripper = float(gripper)
        if not self._accepts_setpoints:
            # The controller would not execute it; the control process trips on the state.
            if not self._refused_logged:
                log.warning("UR not running or not in normal safety mode: setpoint not sent")
                self._refused_logged = True
            return
        self._refused_logged = False
        c = self.config
        try:
            # Positional only: ur_rtde's servoJ rejects keywords. speed/acceleration are unused.
            control.servoJ([float(x) for x in q], 0.0, 0.0, self.period_s, c.lookahead_s, c.gain)
        except RuntimeError as exc:
            # On a connection that just died, ur_rtde's sendCommand tries to reconnect by
            # itself and raises from there (seen: a half-answered dashboard query).
            self._lost = True
            raise RobotDisconnected(
                f"the UR controller at {self.config.host} dropped the connection ({exc})"
            ) from exc

    def stop(self) -> None:
        control = self._control
        if control is not None and not self._lost and control.isConnected():
            try:
                control.servoStop(self.config.decel_rad_s2)
            except RuntimeError as exc:
                log.warning("servoStop failed: %s", exc)

    def set_watchdog(self, min_frequency_hz: float) -> None:
        control, _ = self._require()
        try:
            accepted = control.setWatchdog(float(min_frequency_hz))
        except RuntimeError as exc:  # as in servo: a connection that died under the call
            self._lost = True
            raise RobotDisconnected(f"setWatchdog failed: {exc}") from exc
        if not accepted:
            raise RobotDisconnected("the UR controller did not accept setWatchdog")

    def close(self) -> None:
        """servoStop, stopScript, disconnect: the arm halts and the program ends."""
        control = self._control
        if control is not None and not self._lost:  # a lost one is left alone: see reconnect
            for step in ("servoStop", "stopScript"):
                try:
                    if control.isConnected():
                        getattr(control, step)()
                except RuntimeError as exc:
                    log.warning("%s on close failed: %s", step, exc)
        self._close_clients()

    # ------------------------------------------------------------------ recovery

    def recover(self) -> None:
        """Operator reset after a protective stop: unlock (not within 5 s of the stop, which
        UR refuses) and re-upload the control script. Raises URRecoveryError."""
        control, receive = self._require()
        if receive.getSafetyMode() == SafetyMode.PROTECTIVE_STOP:
            since = self._protective_stop_t
            waited = None if since is None else self._clock() - since
            delay = self.config.unlock_delay_s
            if waited is not None and waited < delay:
                raise URRecoveryError(
                    f"protective stop {waited:.1f} s ago; UR allows the unlock "
                    f"{delay:g} s after the stop. Check the cause, then reset again"
                )
            assert self._dashboard is not None
            try:
                self._dashboard.unlockProtectiveStop()
            except RuntimeError as exc:
                raise URRecoveryError(f"the controller refused the unlock: {exc}") from exc
        if not control.reuploadScript():
            raise URRecoveryError("the control script could not be re-uploaded")
        deadline = self._clock() + 5.0
        while receive.getRuntimeState() != RUNTIME_PLAYING:
            if self._clock() > deadline:
                raise URRecoveryError("the control script did not start within 5 s")
            self._sleep(0.01)
        self._protective_stop_t = None
        log.info("UR recovered: protective stop unlocked, control script running")
