"""The host end of the safety-MCU link over a serial port (pyserial).

`BridgeLink` never blocks in `poll()`: it reads what has arrived, parses it and updates the
latest report, so the control process can call it from its 500 Hz cycle without a thread (a
reader thread would contend for the GIL with the loop). The blocking helpers (`hello`,
`request`) are for start-up and the command line. A lost port (an unplugged USB cable) is closed
and reopened with backoff from `poll()`, followed by a new HELLO; a reconnect never turns the
enable output back on by itself (docs/protocol.md).
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import serial

from edgevla.firmware_bridge.protocol import (
    NACK_TEXT,
    VERSION,
    FrameParser,
    HostStatus,
    MessageType,
    NackReason,
    Packet,
    Status,
    encode,
    pack,
)
from edgevla.runtime.errors import EdgeVlaError

log = logging.getLogger(__name__)

T = MessageType


class LinkError(EdgeVlaError):
    """The serial link to the safety MCU failed."""


class PortNotFound(LinkError):
    pass


class PortBusy(LinkError):
    pass


class HandshakeFailed(LinkError):
    pass


class McuRefused(LinkError):
    """The MCU answered NACK; `reason` says why."""

    def __init__(self, what: str, reason: int) -> None:
        try:
            text = NACK_TEXT[NackReason(reason)]
        except ValueError:
            text = f"reason {reason}"
        super().__init__(f"the safety MCU refused {what}: {text}")
        self.reason = reason


@dataclass
class McuReport:
    """The latest of everything the MCU has said, stamped on the host's monotonic clock."""

    t_heartbeat_s: float = float("-inf")  # arrival of the last MCU heartbeat
    status: int = 0  # Status bits
    uptime_ms: int = 0
    estop_pressed: bool = False
    estop_latched: bool = False
    gripper_position: int = 0  # per mille open
    gripper_target: int = 0
    gripper_moving: bool = False
    fault_code: int = 0
    fault_detail: int = 0
    firmware: tuple[int, int, int] | None = None
    board: int = -1
    protocol_version: int = 0
    host_timeout_ms: int = 0
    heartbeat_period_ms: int = 0

    @property
    def enable(self) -> bool:
        return bool(self.status & Status.ENABLE_OUT)


@dataclass
class LinkStats:
    frames_rx: int = 0
    frames_bad: int = 0  # CRC, COBS, length, version or unknown type
    frames_tx: int = 0
    tx_failed: int = 0
    lost: int = 0  # MCU sequence numbers never seen
    duplicated: int = 0
    reordered: int = 0
    reconnects: int = 0
    nacks: int = 0
    heartbeats_rx: int = 0
    by_type: dict[str, int] = field(default_factory=dict)


class SequenceTracker:
    """Classifies each received sequence number against the last one (16 bits, wrapping)."""

    def __init__(self) -> None:
        self.last: int | None = None

    def update(self, seq: int, stats: LinkStats) -> None:
        if self.last is None:
            self.last = seq
            return
        d = (seq - self.last) & 0xFFFF
        if d == 0:
            stats.duplicated += 1
        elif d < 0x8000:
            stats.lost += d - 1
            self.last = seq
        else:
            stats.reordered += 1  # older than the newest seen: not used to move `last`


class BridgeLink:
    """One serial port to one safety MCU."""

    def __init__(
        self,
        port: str,
        *,
        baudrate: int = 115200,
        host_timeout_ms: int = 0,  # 0: keep the MCU's default (100 ms)
        backoff_s: tuple[float, float] = (0.05, 2.0),
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.port = port
        self.baudrate = baudrate
        self.host_timeout_ms = host_timeout_ms
        self.backoff_s = backoff_s
        self._clock = clock
        self._serial: serial.Serial | None = None
        self._parser = FrameParser()
        self._seq = 0
        self._rx_seq = SequenceTracker()
        self._replies: dict[int, Packet] = {}  # our seq → ACK or NACK
        self._next_attempt = 0.0
        self._backoff = backoff_s[0]
        self._ever_opened = False
        self.report = McuReport()
        self.stats = LinkStats()
        self.last_error = ""
        self.on_packet: Callable[[Packet, float], None] | None = None

    # ------------------------------------------------------------------ the port

    @property
    def connected(self) -> bool:
        return self._serial is not None

    def open(self) -> None:
        """Open the port exclusively; raises PortNotFound or PortBusy, naming the port."""
        try:
            self._serial = serial.Serial(
                self.port, self.baudrate, timeout=0, write_timeout=0, exclusive=True
            )
        except serial.SerialException as exc:
            text = str(exc)
            if "exclusively lock" in text or "Resource temporarily unavailable" in text:
                raise PortBusy(
                    f"{self.port} is held by another program (another edgevla, a serial monitor"
                    " or ModemManager): close it and try again"
                ) from exc
            if "No such file" in text or "could not open port" in text:
                raise PortNotFound(
                    f"no serial port {self.port}: is the safety MCU plugged in? "
                    "(ls /dev/serial/by-id/; the user needs the dialout group)"
                ) from exc
            raise LinkError(f"{self.port}: {text}") from exc
        if self._ever_opened:
            self.stats.reconnects += 1
            log.warning(
                "safety MCU link: %s open again (reconnect %d)", self.port, self.stats.reconnects
            )
        self._ever_opened = True
        self._parser = FrameParser()
        self._rx_seq = SequenceTracker()
        self._backoff = self.backoff_s[0]

    def close(self) -> None:
        if self._serial is not None:
            with contextlib.suppress(OSError, serial.SerialException):
                self._serial.close()
            self._serial = None

    def _lost(self, why: str) -> None:
        if self._serial is not None:
            log.error("safety MCU link: %s lost (%s); reconnecting", self.port, why)
        self.last_error = why
        self.close()
        self._next_attempt = self._clock() + self._backoff

    def _reconnect(self, now: float) -> None:
        if now < self._next_attempt:
            return
        try:
            self.open()
        except LinkError as exc:
            self.last_error = str(exc)
            self._backoff = min(self._backoff * 2, self.backoff_s[1])
            self._next_attempt = now + self._backoff
            return
        self.send_hello()

    # ------------------------------------------------------------------ sending

    def send(self, packet_type: MessageType, **fields: int) -> int:
        """Send one message; returns its sequence number (-1 if the port is down)."""
        seq = self._seq
        self._seq = (self._seq + 1) & 0xFFFF
        if self._serial is None:
            self.stats.tx_failed += 1
            return -1
        frame = encode(pack(packet_type, seq, **fields))
        try:
            written = self._serial.write(frame)
        except serial.SerialTimeoutException:
            written = 0  # the OS buffer is full: dropped, like the MCU drops its own
        except (OSError, serial.SerialException) as exc:
            self._lost(str(exc))
            self.stats.tx_failed += 1
            return -1
        if written != len(frame):
            self.stats.tx_failed += 1
        else:
            self.stats.frames_tx += 1
        return seq

    def send_hello(self) -> int:
        return self.send(
            T.HELLO, min_version=VERSION, max_version=VERSION, host_timeout_ms=self.host_timeout_ms
        )

    def heartbeat(self, running: bool = True) -> int:
        status = HostStatus.RUNNING if running else HostStatus(0)
        return self.send(T.HEARTBEAT, status=int(status), uptime_ms=int(self._clock() * 1e3))

    # ------------------------------------------------------------------ receiving

    def poll(self) -> list[Packet]:
        """Read and handle whatever has arrived; reconnect when it is time. Never blocks."""
        now = self._clock()
        if self._serial is None:
            self._reconnect(now)
            if self._serial is None:
                return []
        assert self._serial is not None
        try:
            waiting = self._serial.in_waiting
            data = self._serial.read(waiting) if waiting else b""
        except (OSError, serial.SerialException) as exc:
            self._lost(str(exc))
            return []
        if not data:
            return []
        bad_before = self._parser.frames_bad
        packets = self._parser.feed(data)
        self.stats.frames_bad += self._parser.frames_bad - bad_before
        for p in packets:
            self._handle(p, now)
        return packets

    def _handle(self, p: Packet, now: float) -> None:
        self.stats.frames_rx += 1
        self.stats.by_type[p.name] = self.stats.by_type.get(p.name, 0) + 1
        self._rx_seq.update(p.seq, self.stats)
        f = p.fields()
        r = self.report
        if p.type == T.HEARTBEAT:
            r.t_heartbeat_s = now
            r.status = f["status"]
            r.uptime_ms = f["uptime_ms"]
            r.estop_pressed = bool(r.status & Status.ESTOP_PRESSED)
            r.estop_latched = bool(r.status & Status.ESTOP_LATCHED)
            self.stats.heartbeats_rx += 1
        elif p.type == T.ESTOP_STATE:
            r.estop_pressed, r.estop_latched = bool(f["pressed"]), bool(f["latched"])
        elif p.type == T.GRIPPER_STATE:
            r.gripper_position, r.gripper_target = f["position"], f["target"]
            r.gripper_moving = bool(f["moving"])
        elif p.type == T.FAULT:
            r.fault_code, r.fault_detail = f["code"], f["detail"]
            log.error("safety MCU fault %d (detail %d)", r.fault_code, r.fault_detail)
        elif p.type == T.HELLO_REPLY:
            r.firmware = (f["fw_major"], f["fw_minor"], f["fw_patch"])
            r.board, r.protocol_version = f["board"], f["version"]
            r.host_timeout_ms, r.heartbeat_period_ms = (
                f["host_timeout_ms"],
                f["heartbeat_period_ms"],
            )
        elif p.type in (T.ACK, T.NACK):
            self._replies[f["seq"]] = p
            if len(self._replies) > 64:
                self._replies.pop(next(iter(self._replies)))
            if p.type == T.NACK:
                self.stats.nacks += 1
        if self.on_packet is not None:
            self.on_packet(p, now)

    # ------------------------------------------------------------------ blocking helpers

    def _wait(self, done: Callable[[], bool], timeout_s: float) -> bool:
        end = self._clock() + timeout_s
        while True:
            self.poll()
            if done():
                return True
            if self._clock() > end:
                return False
            time.sleep(0.001)

    def hello(self, timeout_s: float = 1.0, retry_s: float = 0.25) -> McuReport:
        """Handshake: HELLO until HELLO_REPLY (version negotiated, firmware known). Resent
        every `retry_s`: a board that resets when its port opens misses the first one."""
        self.report.firmware = None
        end = self._clock() + timeout_s
        seqs: list[int] = []
        while True:
            seqs.append(self.send_hello())
            window = min(retry_s, max(0.0, end - self._clock()))
            self._wait(
                lambda: self.report.firmware is not None or any(q in self._replies for q in seqs),
                window,
            )
            for q in seqs:
                reply = self._replies.get(q)
                if reply is not None and reply.type == T.NACK:
                    raise McuRefused("HELLO", reply.fields()["reason"])
            if self.report.firmware is not None:
                return self.report
            if self._clock() >= end:
                raise HandshakeFailed(
                    f"no HELLO_REPLY from {self.port} within {timeout_s:g} s"
                    f" ({self.stats.frames_rx} valid and {self.stats.frames_bad} bad frames"
                    " seen): is it the safety MCU, running edgevla firmware, at this baud rate?"
                )

    def request(
        self, what: str, packet_type: MessageType, timeout_s: float = 0.5, **fields: int
    ) -> Packet:
        """Send and wait for its ACK; raises McuRefused on NACK, LinkError on silence."""
        seq = self.send(packet_type, **fields)
        if seq < 0 or not self._wait(lambda: seq in self._replies, timeout_s):
            raise LinkError(f"no answer from the safety MCU to {what} within {timeout_s:g} s")
        reply = self._replies.pop(seq)
        if reply.type == T.NACK:
            raise McuRefused(what, reply.fields()["reason"])
        return reply

    def wait_for(self, predicate: Callable[[McuReport], bool], timeout_s: float) -> bool:
        return self._wait(lambda: predicate(self.report), timeout_s)
