"""The shared test vectors: bytes on the wire ↔ packets, for the host and the firmware alike.

`vectors/protocol-v1.txt` is committed; this module writes it (`python -m
edgevla.firmware_bridge.vectors --write`) and reads it. A change to the protocol that changes a
frame shows up as a diff of that file, and both implementations are tested against it (the
Python host in tests/test_firmware_bridge.py, the C firmware by `firmware/test_vectors.c`).

    accept NAME TYPE SEQ PAYLOAD FRAME    the frame decodes to exactly this packet, and back
    reject NAME FRAME                     no packet may be taken from these bytes
"""

from __future__ import annotations

import argparse
import struct
from dataclasses import dataclass
from pathlib import Path

from cobs import cobs

from edgevla.firmware_bridge.protocol import (
    HEADER,
    SPECS,
    VERSION,
    MessageType,
    Packet,
    crc16_mcrf4xx,
    encode,
    pack,
)

PATH = Path(__file__).resolve().parent / "vectors" / "protocol-v1.txt"

T = MessageType


@dataclass(frozen=True)
class Vector:
    kind: str  # accept | reject
    name: str
    frame: bytes
    packet: Packet | None = None


def _accepted() -> list[tuple[str, Packet]]:
    return [
        ("hello", pack(T.HELLO, 0, min_version=1, max_version=1, host_timeout_ms=100)),
        (
            "hello-default-timeout",
            pack(T.HELLO, 1, min_version=1, max_version=3, host_timeout_ms=0),
        ),
        (
            "hello-reply",
            pack(
                T.HELLO_REPLY,
                0,
                version=1,
                fw_major=1,
                fw_minor=0,
                fw_patch=0,
                board=0,
                host_timeout_ms=100,
                heartbeat_period_ms=10,
            ),
        ),
        ("heartbeat-host", pack(T.HEARTBEAT, 2, status=1, uptime_ms=123456)),
        ("heartbeat-mcu-enabled", pack(T.HEARTBEAT, 513, status=0x51, uptime_ms=0)),
        ("heartbeat-all-zero-payload", pack(T.HEARTBEAT, 0, status=0, uptime_ms=0)),
        ("heartbeat-seq-wraps", pack(T.HEARTBEAT, 0xFFFF, status=0x46, uptime_ms=0xFFFFFFFF)),
        ("estop-pressed", pack(T.ESTOP_STATE, 7, pressed=1, latched=1)),
        ("estop-released-latched", pack(T.ESTOP_STATE, 8, pressed=0, latched=1)),
        ("enable-on", pack(T.ENABLE, 3, on=1)),
        ("enable-off", pack(T.ENABLE, 4, on=0)),
        ("estop-reset", pack(T.ESTOP_RESET, 5)),
        ("gripper-command", pack(T.GRIPPER_COMMAND, 6, position=250, speed=1000)),
        ("gripper-state", pack(T.GRIPPER_STATE, 9, position=999, target=1000, moving=1)),
        ("fault", pack(T.FAULT, 10, code=3, detail=0x1234)),
        ("ack", pack(T.ACK, 11, type=T.ENABLE, seq=3)),
        ("nack-estop-latched", pack(T.NACK, 12, type=T.ENABLE, seq=3, reason=4)),
    ]


def _raw_frame(
    version: int,
    type_: int,
    seq: int,
    payload: bytes,
    seed: int,
    crc_xor: int = 0,
    length: int | None = None,
) -> bytes:
    n = len(payload) if length is None else length
    raw = HEADER.pack(version, type_, seq, n) + payload
    crc = crc16_mcrf4xx(bytes([seed]), crc16_mcrf4xx(raw)) ^ crc_xor
    return cobs.encode(raw + struct.pack("<H", crc)) + b"\x00"


def _rejected() -> list[tuple[str, bytes]]:
    hb = SPECS[T.HEARTBEAT]
    good = encode(pack(T.HEARTBEAT, 1, status=1, uptime_ms=5))
    payload = hb.layout.pack(1, 5)
    return [
        ("crc-one-bit", _raw_frame(VERSION, T.HEARTBEAT, 1, payload, hb.seed, crc_xor=0x0001)),
        ("wrong-seed", _raw_frame(VERSION, T.HEARTBEAT, 1, payload, SPECS[T.ENABLE].seed)),
        ("version-2", _raw_frame(2, T.HEARTBEAT, 1, payload, hb.seed)),
        ("unknown-type", _raw_frame(VERSION, 0x55, 1, payload, hb.seed)),
        ("length-short", _raw_frame(VERSION, T.HEARTBEAT, 1, payload[:4], hb.seed)),
        ("length-field-lies", _raw_frame(VERSION, T.HEARTBEAT, 1, payload, hb.seed, length=4)),
        ("truncated", good[:6] + b"\x00"),
        ("cobs-code-past-end", bytes([0x09, 0x01, 0x02, 0x00])),
        ("overlong", bytes([0xFF] * 60) + b"\x00"),
        ("empty-frames", b"\x00\x00\x00"),
        ("payload-bit-flipped", good[:3] + bytes([good[3] ^ 0x10]) + good[4:]),
    ]


def build() -> list[Vector]:
    out = [Vector("accept", name, encode(p), p) for name, p in _accepted()]
    out += [Vector("reject", name, frame) for name, frame in _rejected()]
    return out


def render(vectors: list[Vector]) -> str:
    lines = [
        "# edgevla safety-MCU link, protocol version 1: shared test vectors (docs/protocol.md).",
        "# Written by `python -m edgevla.firmware_bridge.vectors --write`; checked by both sides.",
        "# accept NAME TYPE SEQ PAYLOAD FRAME  |  reject NAME FRAME   (hex; '-' for no payload)",
    ]
    for v in vectors:
        if v.kind == "accept":
            assert v.packet is not None
            p = v.packet
            payload = p.payload.hex() or "-"
            lines.append(f"accept {v.name} {p.type:02x} {p.seq} {payload} {v.frame.hex()}")
        else:
            lines.append(f"reject {v.name} {v.frame.hex()}")
    return "\n".join(lines) + "\n"


def load(path: Path = PATH) -> list[Vector]:
    vectors = []
    for line in path.read_text().splitlines():
        words = line.split()
        if not words or words[0].startswith("#"):
            continue
        if words[0] == "accept":
            _, name, type_, seq, payload, frame = words
            body = b"" if payload == "-" else bytes.fromhex(payload)
            packet = Packet(int(type_, 16), int(seq), body)
            vectors.append(Vector("accept", name, bytes.fromhex(frame), packet))
        elif words[0] == "reject":
            vectors.append(Vector("reject", words[1], bytes.fromhex(words[2])))
    return vectors


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--write", action="store_true", help=f"write {PATH.name}")
    args = parser.parse_args()
    text = render(build())
    if args.write:
        PATH.write_text(text)
        print(f"wrote {PATH}")
    else:
        print(text, end="")


if __name__ == "__main__":
    main()
