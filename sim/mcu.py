"""A simulated safety microcontroller behind the `SafetyMcu` protocol, computed on demand.

It follows the reference firmware's rules (docs/protocol.md, "The MCU"), so a run on the
simulated cell stops and re-arms as a real cell does. The enable output (the line wired to the
robot's safety input) is high only while the host has asked for it (`arm`), the host's last
heartbeat is younger than `host_timeout_s`, the e-stop is neither pressed nor latched, and no
fault is latched. Host silence, an e-stop press or a fault cancel the request: heartbeats alone
never bring enable back, only a new `arm` (after `reset_estop` once the button is released).
No threads: every reading is derived from the clock at the moment it is asked for.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

from edgevla.runtime.devices import McuStatus
from edgevla.runtime.errors import EdgeVlaError

MCU_HEARTBEAT_PERIOD_S = 0.01  # the MCU reports at 100 Hz


class McuArmRefused(EdgeVlaError):
    """The simulated MCU refused to raise enable (the firmware's NACK)."""


class SimSafetyMcu:
    """The `SafetyMcu` protocol with injectable e-stop, faults and a silent MCU-to-host link."""

    def __init__(
        self, host_timeout_s: float = 0.1, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.host_timeout_s = host_timeout_s
        self._clock = clock
        self._t_boot_s = clock()
        self._last_host_heartbeat_s: float | None = None  # MCU-side arrival time
        self.last_host_t_s: float | None = None  # the host's own stamp on that heartbeat
        self._enable_requested = False
        self.host_timed_out = False
        self._estop_pressed = False
        self._estop_latched = False
        self._fault = 0
        self._silent_status: McuStatus | None = None

    # --- the SafetyMcu protocol -----------------------------------------------------------------

    def arm(self) -> None:
        """The host's ENABLE: refused while the e-stop is pressed or latched or a fault is."""
        self._judge_host()
        if self._estop_pressed or self._estop_latched:
            raise McuArmRefused("the e-stop is pressed or not reset")
        if self._fault:
            raise McuArmRefused(f"fault {self._fault} is latched")
        self._arrived()  # the request is a frame from the host too
        self._enable_requested = True
        self.host_timed_out = False

    def heartbeat(self, t_s: float) -> None:
        """Host heartbeat. Freshness is judged by arrival on the MCU's clock, not by `t_s`."""
        self._judge_host()
        self._arrived()
        self.last_host_t_s = t_s

    def read_status(self, out: McuStatus) -> None:
        """The MCU's latest report. While silent, the report last received before it went quiet."""
        if self._silent_status is not None:
            _copy_status(self._silent_status, out)
            return
        now = self._clock()
        ticks = math.floor((now - self._t_boot_s) / MCU_HEARTBEAT_PERIOD_S)
        out.t_last_heartbeat_s = self._t_boot_s + ticks * MCU_HEARTBEAT_PERIOD_S
        out.estop_pressed = self._estop_pressed or self._estop_latched
        out.enable = self.enable_line()
        out.fault = self._fault

    def close(self) -> None:
        pass

    # --- the wire to the robot ------------------------------------------------------------------

    def enable_line(self) -> bool:
        """The enable output as it is now; it keeps working while the MCU's reports are silent."""
        self._judge_host()
        return (
            self._enable_requested
            and not self._estop_pressed
            and not self._estop_latched
            and self._fault == 0
        )

    # --- the button and faults ------------------------------------------------------------------

    def press_estop(self) -> None:
        self._estop_pressed = True
        self._estop_latched = True
        self._enable_requested = False

    def release_estop(self) -> None:
        """Releasing the button leaves the e-stop latched until `reset_estop`."""
        self._estop_pressed = False

    def reset_estop(self) -> None:
        """The host's ESTOP_RESET; refused while the button is still pressed."""
        if self._estop_pressed:
            raise McuArmRefused("the e-stop is still pressed")
        self._estop_latched = False

    def inject_fault(self, code: int) -> None:
        self._fault = code
        self._enable_requested = False

    def clear_fault(self) -> None:
        """A power cycle, as far as faults go (the firmware latches them until one)."""
        self._fault = 0

    def go_silent(self) -> None:
        """The MCU's reports stop reaching the host; the MCU itself and its enable line go on."""
        if self._silent_status is None:
            status = McuStatus()
            self.read_status(status)
            self._silent_status = status

    def resume(self) -> None:
        self._silent_status = None

    # --- internals ------------------------------------------------------------------------------

    def _arrived(self) -> None:
        self._last_host_heartbeat_s = self._clock()

    def _judge_host(self) -> None:
        """The firmware checks every millisecond; judged lazily here, with the same outcome: a
        host silent for longer than the timeout has cancelled the enable request."""
        hb = self._last_host_heartbeat_s
        silent = hb is None or self._clock() - hb > self.host_timeout_s
        if self._enable_requested and silent:
            self._enable_requested = False
            self.host_timed_out = True


def _copy_status(src: McuStatus, out: McuStatus) -> None:
    out.t_last_heartbeat_s = src.t_last_heartbeat_s
    out.estop_pressed = src.estop_pressed
    out.enable = src.enable
    out.fault = src.fault
