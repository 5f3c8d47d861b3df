"""The safety-MCU link, protocol version 1: frames, CRC and messages (docs/protocol.md).

The host's half of what `firmware/evb_protocol.c` is on the MCU; the two are held to each other
by the shared test vectors (`vectors/protocol-v1.txt`) and by feeding both parsers the same
fuzzed bytes. A frame is a packet, COBS-encoded, then a 0x00 delimiter:

    version u8 | type u8 | seq u16 | length u8 | payload | crc u16        (little-endian)

The CRC is CRC-16/MCRF4XX over version..payload, then over the message type's seed byte (as
MAVLink's CRC_EXTRA): two builds that disagree on a message's layout reject each other's frames
instead of misreading them.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from enum import IntEnum, IntFlag

from cobs import cobs

from edgevla.runtime.errors import EdgeVlaError

VERSION = 1
HEADER = struct.Struct("<BBHB")  # version, type, seq, length
MAX_PAYLOAD = 32
MAX_PACKET = HEADER.size + MAX_PAYLOAD + 2
MAX_FRAME_BODY = MAX_PACKET + 1 + MAX_PACKET // 254  # COBS-encoded, without the delimiter


class MessageType(IntEnum):
    HELLO = 0x01
    HELLO_REPLY = 0x02
    HEARTBEAT = 0x10
    ESTOP_STATE = 0x11
    ENABLE = 0x20
    ESTOP_RESET = 0x21
    GRIPPER_COMMAND = 0x30
    GRIPPER_STATE = 0x31
    FAULT = 0x40
    ACK = 0x7E
    NACK = 0x7F


class Status(IntFlag):
    """Status bits of the MCU's heartbeat."""

    ENABLE_OUT = 0x01  # the enable output to the robot's safety input is high
    ESTOP_PRESSED = 0x02
    ESTOP_LATCHED = 0x04  # pressed since the last ESTOP_RESET
    HOST_TIMEOUT = 0x08  # enable was dropped because the host went silent
    ENABLE_REQUESTED = 0x10
    FAULT = 0x20
    HELLO_DONE = 0x40


class HostStatus(IntFlag):
    """Status bits of the host's heartbeat."""

    RUNNING = 0x01  # the control loop is running


class NackReason(IntEnum):
    VERSION = 1
    NO_HELLO = 2
    ESTOP_PRESSED = 3
    ESTOP_LATCHED = 4
    FAULT = 5
    BAD_VALUE = 6
    UNSUPPORTED = 7


NACK_TEXT = {
    NackReason.VERSION: "no protocol version in common",
    NackReason.NO_HELLO: "no HELLO yet",
    NackReason.ESTOP_PRESSED: "the e-stop is pressed",
    NackReason.ESTOP_LATCHED: "the e-stop was pressed and is not reset (release it, then reset)",
    NackReason.FAULT: "the MCU has a latched fault (power-cycle it)",
    NackReason.BAD_VALUE: "a value out of range",
    NackReason.UNSUPPORTED: "not a message the receiver takes",
}


@dataclass(frozen=True)
class MessageSpec:
    type: MessageType
    layout: struct.Struct
    fields: tuple[str, ...]
    seed: int


def _spec(t: MessageType, fmt: str, fields: str, seed: int) -> MessageSpec:
    return MessageSpec(t, struct.Struct("<" + fmt), tuple(fields.split()), seed)


SPECS: dict[int, MessageSpec] = {
    s.type: s
    for s in (
        _spec(MessageType.HELLO, "BBH", "min_version max_version host_timeout_ms", 0x4E),
        _spec(
            MessageType.HELLO_REPLY,
            "BBBBBHB",
            "version fw_major fw_minor fw_patch board host_timeout_ms heartbeat_period_ms",
            0x8B,
        ),
        _spec(MessageType.HEARTBEAT, "BI", "status uptime_ms", 0x33),
        _spec(MessageType.ESTOP_STATE, "BB", "pressed latched", 0xC7),
        _spec(MessageType.ENABLE, "B", "on", 0x61),
        _spec(MessageType.ESTOP_RESET, "", "", 0x9D),
        _spec(MessageType.GRIPPER_COMMAND, "HH", "position speed", 0x17),
        _spec(MessageType.GRIPPER_STATE, "HHB", "position target moving", 0xE2),
        _spec(MessageType.FAULT, "BH", "code detail", 0x58),
        _spec(MessageType.ACK, "BH", "type seq", 0xA4),
        _spec(MessageType.NACK, "BHB", "type seq reason", 0x2F),
    )
}


class FrameError(EdgeVlaError):
    """Bytes between two delimiters that are not a valid packet (why: `reason`)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def crc16_mcrf4xx(data: bytes, crc: int = 0xFFFF) -> int:
    """CRC-16/MCRF4XX: poly 0x1021 reflected (0x8408), init 0xFFFF, no final xor."""
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0x8408 if crc & 1 else crc >> 1
    return crc


@dataclass(frozen=True)
class Packet:
    type: int
    seq: int
    payload: bytes

    @property
    def name(self) -> str:
        return MessageType(self.type).name

    def fields(self) -> dict[str, int]:
        spec = SPECS[self.type]
        return dict(zip(spec.fields, spec.layout.unpack(self.payload), strict=True))


def pack(type_: MessageType | int, seq: int, /, **fields: int) -> Packet:
    """A packet of `type_` from its named fields (all of them, nothing else)."""
    spec = SPECS[int(type_)]
    if set(fields) != set(spec.fields):
        raise ValueError(f"{spec.type.name} takes {spec.fields}, got {tuple(fields)}")
    payload = spec.layout.pack(*(fields[name] for name in spec.fields))
    return Packet(int(type_), seq & 0xFFFF, payload)


def encode(packet: Packet) -> bytes:
    """The packet as a frame on the wire: COBS and the 0x00 delimiter."""
    spec = SPECS.get(packet.type)
    if spec is None or len(packet.payload) != spec.layout.size:
        raise ValueError(f"type 0x{packet.type:02x} with {len(packet.payload)} payload bytes")
    raw = HEADER.pack(VERSION, packet.type, packet.seq, len(packet.payload)) + packet.payload
    crc = crc16_mcrf4xx(bytes([spec.seed]), crc16_mcrf4xx(raw))
    return cobs.encode(raw + struct.pack("<H", crc)) + b"\x00"


def decode_packet(raw: bytes) -> Packet:
    """One un-COBSed packet; raises FrameError."""
    if len(raw) < HEADER.size + 2:
        raise FrameError("short")
    version, type_, seq, length = HEADER.unpack_from(raw)
    if version != VERSION:
        raise FrameError(f"version {version}")
    spec = SPECS.get(type_)
    if spec is None:
        raise FrameError(f"type 0x{type_:02x}")
    if length != spec.layout.size or len(raw) != HEADER.size + length + 2:
        raise FrameError("length")
    body = raw[: HEADER.size + length]
    (crc,) = struct.unpack_from("<H", raw, HEADER.size + length)
    if crc != crc16_mcrf4xx(bytes([spec.seed]), crc16_mcrf4xx(body)):
        raise FrameError("crc")
    return Packet(type_, seq, bytes(raw[HEADER.size : HEADER.size + length]))


def decode_frame(body: bytes) -> Packet:
    """One frame without its delimiter; raises FrameError."""
    if len(body) > MAX_FRAME_BODY:
        raise FrameError("too long")
    try:
        raw = cobs.decode(body)
    except cobs.DecodeError as exc:
        raise FrameError("cobs") from exc
    return decode_packet(raw)


class FrameParser:
    """Bytes in, packets out. Every 0x00 ends a frame, so after garbage (line noise, a reset
    MCU's boot banner, a frame cut in half) the next whole frame is read correctly."""

    def __init__(self) -> None:
        self._buf = bytearray()
        self._overflow = False
        self.frames_ok = 0
        self.frames_bad = 0
        self.last_error = ""

    def feed(self, data: bytes) -> list[Packet]:
        packets = []
        start = 0
        while True:
            end = data.find(b"\x00", start)
            if end < 0:
                self._append(data[start:])
                return packets
            self._append(data[start:end])
            if self._buf or self._overflow:
                try:
                    if self._overflow:
                        raise FrameError("too long")
                    packets.append(decode_frame(bytes(self._buf)))
                    self.frames_ok += 1
                except FrameError as exc:
                    self.frames_bad += 1
                    self.last_error = exc.reason
            self._buf.clear()
            self._overflow = False
            start = end + 1

    def _append(self, chunk: bytes) -> None:
        room = MAX_FRAME_BODY - len(self._buf)
        if len(chunk) > room:
            self._overflow = True
            chunk = chunk[:room]
        self._buf += chunk
