"""A simulated safety microcontroller behind the `SafetyMcu` protocol, computed on demand.

No threads: every reading is derived from the monotonic clock at the moment it is asked for.
The MCU's enable output (the line wired to the robot's safety input) is high only while the
e-stop is released, no fault is latched, and the host's last heartbeat is younger than
`host_timeout_s`. Whatever dropped enable, only a host heartbeat that arrives after the cause has
cleared raises it again: after host silence that is the fresh heartbeat itself, after an e-stop
release or a cleared fault it is the next heartbeat, so the line never comes back on its own
without a live host.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

from edgevla.runtime.devices import McuStatus

MCU_HEARTBEAT_PERIOD_S = 0.01  # the MCU reports at 100 Hz


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
        self._rearm_after_s = -math.inf  # enable needs a heartbeat that arrived after this
        self._estop = False
        self._fault = 0
        self._silent_status: McuStatus | None = None

    # --- the SafetyMcu protocol -----------------------------------------------------------------

    def heartbeat(self, t_s: float) -> None:
        """Host heartbeat. Freshness is judged by arrival on the MCU's clock, not by `t_s`."""
        self._last_host_heartbeat_s = self._clock()
        self.last_host_t_s = t_s

    def read_status(self, out: McuStatus) -> None:
        """The MCU's latest report. While silent, the report last received before it went quiet."""
        if self._silent_status is not None:
            _copy_status(self._silent_status, out)
            return
        now = self._clock()
        ticks = math.floor((now - self._t_boot_s) / MCU_HEARTBEAT_PERIOD_S)
        out.t_last_heartbeat_s = self._t_boot_s + ticks * MCU_HEARTBEAT_PERIOD_S
        out.estop_pressed = self._estop
        out.enable = self.enable_line()
        out.fault = self._fault

    def close(self) -> None:
        pass

    # --- the wire to the robot ------------------------------------------------------------------

    def enable_line(self) -> bool:
        """The enable output as it is now; it keeps working while the MCU's reports are silent."""
        hb = self._last_host_heartbeat_s
        return (
            not self._estop
            and self._fault == 0
            and hb is not None
            and hb > self._rearm_after_s
            and self._clock() - hb < self.host_timeout_s
        )

    # --- fault injection ------------------------------------------------------------------------

    def press_estop(self) -> None:
        self._estop = True

    def release_estop(self) -> None:
        if self._estop:
            self._estop = False
            self._rearm_after_s = self._clock()

    def inject_fault(self, code: int) -> None:
        self._fault = code

    def clear_fault(self) -> None:
        if self._fault:
            self._fault = 0
            self._rearm_after_s = self._clock()

    def go_silent(self) -> None:
        """The MCU's reports stop reaching the host; the MCU itself and its enable line go on."""
        if self._silent_status is None:
            status = McuStatus()
            self.read_status(status)
            self._silent_status = status

    def resume(self) -> None:
        self._silent_status = None


def _copy_status(src: McuStatus, out: McuStatus) -> None:
    out.t_last_heartbeat_s = src.t_last_heartbeat_s
    out.estop_pressed = src.estop_pressed
    out.enable = src.enable
    out.fault = src.fault
