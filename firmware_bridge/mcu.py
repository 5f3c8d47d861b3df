"""`SerialSafetyMcu`: the runtime's `SafetyMcu` protocol over the serial link.

`connect` opens the port and shakes hands; `arm`, called by the control process right before
its first cycle, is the deliberate act that raises the enable output: ENABLE, then a wait for a
heartbeat that shows it high. From then on the control process calls `heartbeat` and
`read_status` every cycle; heartbeats go out at `heartbeat_hz` (the MCU drops enable when
they stop for its host timeout) and `read_status` polls the port without blocking. Nothing here
ever re-enables: after an e-stop or a host timeout the MCU keeps enable low until edgevla is
started again (docs/protocol.md).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from edgevla.firmware_bridge.link import BridgeLink, LinkError
from edgevla.firmware_bridge.protocol import MessageType
from edgevla.runtime.config import McuConfig
from edgevla.runtime.devices import McuStatus

log = logging.getLogger(__name__)


class SerialSafetyMcu:
    """The `SafetyMcu` protocol for an MCU running the edgevla firmware on `port`."""

    def __init__(
        self,
        port: str,
        *,
        baudrate: int = 115200,
        heartbeat_hz: float = 100.0,
        host_timeout_ms: int = 0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.link = BridgeLink(
            port, baudrate=baudrate, host_timeout_ms=host_timeout_ms, clock=clock
        )
        self._period_s = 1.0 / heartbeat_hz
        self._clock = clock
        self._next_heartbeat = 0.0

    def connect(self, timeout_s: float = 2.0) -> None:
        """Open and handshake; raises PortNotFound, PortBusy or HandshakeFailed."""
        self.link.open()
        report = self.link.hello(timeout_s)
        log.info(
            "safety MCU on %s: firmware %s, board %d, protocol %d, host timeout %d ms",
            self.link.port,
            ".".join(map(str, report.firmware or ())),
            report.board,
            report.protocol_version,
            report.host_timeout_ms,
        )

    # --- the SafetyMcu protocol -----------------------------------------------------------------

    def arm(self, timeout_s: float = 0.5) -> None:
        """ENABLE, then wait for a heartbeat that shows the output high; raises McuRefused
        (e-stop pressed or not reset, a fault) or LinkError."""
        self.link.request("ENABLE", MessageType.ENABLE, on=1)
        if not self.link.wait_for(lambda r: r.enable, timeout_s):
            raise LinkError(
                f"the safety MCU on {self.link.port} acknowledged ENABLE but its enable output"
                " did not go high"
            )
        self._next_heartbeat = self._clock()

    def heartbeat(self, t_s: float) -> None:
        now = self._clock()
        if now >= self._next_heartbeat:
            self.link.heartbeat(running=True)
            self._next_heartbeat = max(self._next_heartbeat + self._period_s, now)

    def read_status(self, out: McuStatus) -> None:
        self.link.poll()
        r = self.link.report
        out.t_last_heartbeat_s = r.t_heartbeat_s
        # Latched counts as pressed: released but not reset, the cell is still e-stopped.
        out.estop_pressed = r.estop_pressed or r.estop_latched
        out.enable = r.enable
        out.fault = r.fault_code

    def enable_line(self) -> bool:
        """The enable output as the MCU last reported it (wired to a simulated robot's input)."""
        return self.link.report.enable

    def close(self) -> None:
        if self.link.connected:
            self.link.send(MessageType.ENABLE, on=0)  # best effort: a clean stop says so
        self.link.close()


def connect_serial_mcu(config: McuConfig) -> SerialSafetyMcu:
    """The MCU of `[mcu]` with kind = "serial", connected (the control loop arms it)."""
    mcu = SerialSafetyMcu(
        config.port,
        baudrate=config.baudrate,
        heartbeat_hz=config.heartbeat_hz,
        host_timeout_ms=config.host_timeout_ms,
    )
    mcu.connect()
    return mcu
