"""The safety-MCU link: the Python host against the compiled reference firmware over a real pty.

The firmware is built from `firmware_bridge/firmware/` with the system C compiler (once per
session, plain and with AddressSanitizer + UBSan). Both sides are held to the shared test
vectors, and their parsers are fed the same fuzzed bytes.
"""

from __future__ import annotations

import os
import random
import struct
import subprocess
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

pytest.importorskip("serial", reason="pyserial is not installed (the mcu extra)")

from edgevla.firmware_bridge import vectors
from edgevla.firmware_bridge.build import build
from edgevla.firmware_bridge.hostrun import HostFirmware
from edgevla.firmware_bridge.link import (
    BridgeLink,
    LinkError,
    LinkStats,
    McuRefused,
    PortBusy,
    PortNotFound,
    SequenceTracker,
)
from edgevla.firmware_bridge.protocol import (
    SPECS,
    FrameParser,
    MessageType,
    NackReason,
    Packet,
    Status,
    crc16_mcrf4xx,
    encode,
    pack,
)

T = MessageType


@pytest.fixture(scope="session")
def firmware_bin(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return build(tmp_path_factory.mktemp("firmware"))


@pytest.fixture(scope="session")
def sanitized_bin(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return build(tmp_path_factory.mktemp("firmware-asan"), sanitize=True)


@pytest.fixture
def firmware(firmware_bin):
    with HostFirmware(firmware_bin["edgevla-mcu-host"]) as fw:
        yield fw


@pytest.fixture
def link(firmware: HostFirmware):
    bridge = BridgeLink(firmware.name)
    bridge.open()
    yield bridge
    bridge.close()


def _pump(link: BridgeLink, seconds: float, *, heartbeat: bool = True) -> None:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        if heartbeat:
            link.heartbeat()
        link.poll()
        time.sleep(0.005)


# --------------------------------------------------------------------------- protocol


def test_crc_is_mcrf4xx() -> None:
    assert crc16_mcrf4xx(b"123456789") == 0x6F91  # the catalogue's check value


def test_the_committed_vectors_are_what_the_protocol_writes() -> None:
    """A change of wire format shows up as a diff of vectors/protocol-v1.txt, on purpose."""
    assert vectors.PATH.read_text() == vectors.render(vectors.build())
    kinds = {v.packet.type for v in vectors.load() if v.packet is not None}
    assert kinds == set(SPECS)  # every message type has a vector


def test_the_host_agrees_with_every_vector() -> None:
    for v in vectors.load():
        parser = FrameParser()
        got = parser.feed(v.frame)
        if v.kind == "accept":
            assert got == [v.packet], v.name
            assert encode(v.packet) == v.frame, v.name
        else:
            assert got == [], v.name


def test_the_firmware_agrees_with_every_vector(sanitized_bin) -> None:
    result = subprocess.run(
        [str(sanitized_bin["test_vectors"]), str(vectors.PATH)], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"{len(vectors.load())} vectors, 0 failed" in result.stdout


def test_sequence_numbers_count_lost_duplicated_and_reordered() -> None:
    stats, seq = LinkStats(), SequenceTracker()
    for n in (65534, 65535, 0, 0, 3, 2, 4):  # wraps, one duplicate, 1 and 2 lost, 2 late
        seq.update(n, stats)
    assert (stats.lost, stats.duplicated, stats.reordered) == (2, 1, 1)


def test_pack_refuses_missing_or_extra_fields() -> None:
    with pytest.raises(ValueError, match="takes"):
        pack(T.ENABLE, 0)
    with pytest.raises(ValueError, match="takes"):
        pack(T.ENABLE, 0, on=1, off=0)


# --------------------------------------------------------------------------- fuzzing


@st.composite
def _streams(draw) -> tuple[bytes, list[Packet]]:
    """Valid frames among garbage, truncated frames and bit-flipped frames, each delimited."""
    out, expected = bytearray(), []
    for _ in range(draw(st.integers(0, 12))):
        kind = draw(st.sampled_from(("valid", "garbage", "truncated", "flipped")))
        t = draw(st.sampled_from(sorted(SPECS)))
        size = SPECS[t].layout.size
        packet = Packet(
            t, draw(st.integers(0, 0xFFFF)), draw(st.binary(min_size=size, max_size=size))
        )
        frame = encode(packet)
        if kind == "valid":
            out += frame
            expected.append(packet)
        elif kind == "garbage":
            out += draw(st.binary(max_size=80)) + b"\x00"
        elif kind == "truncated":
            out += frame[: draw(st.integers(1, len(frame) - 2))] + b"\x00"
        else:
            at = draw(st.integers(0, len(frame) - 2))
            bit = 1 << draw(st.integers(0, 7))
            flipped = frame[:at] + bytes([frame[at] ^ bit]) + frame[at + 1 :]
            out += flipped if flipped[at] != 0 else flipped + b"\x00"
    return bytes(out), expected


class CParser:
    """The firmware's parser under sanitizers, in one long-lived process."""

    def __init__(self, binary: Path) -> None:
        self.proc = subprocess.Popen(
            [str(binary)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=False
        )

    def parse(self, data: bytes) -> list[Packet]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(struct.pack("<I", len(data)) + data)
        self.proc.stdin.flush()
        packets = []
        while True:
            line = self.proc.stdout.readline().decode()
            assert line, f"the C parser died (exit {self.proc.poll()})"
            if line.strip() == "end":
                return packets
            t, seq, payload = line.split()
            body = b"" if payload == "-" else bytes.fromhex(payload)
            packets.append(Packet(int(t, 16), int(seq), body))

    def close(self) -> int:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        return self.proc.wait(timeout=10)


@pytest.fixture(scope="module")
def c_parser(sanitized_bin):
    parser = CParser(sanitized_bin["fuzz_parser"])
    yield parser
    assert parser.close() == 0  # a sanitizer finding exits non-zero


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_streams())
def test_both_parsers_take_exactly_the_intact_frames(c_parser, stream) -> None:
    data, expected = stream
    assert FrameParser().feed(data) == expected
    assert c_parser.parse(data) == expected


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=400), st.integers(1, 64))
def test_random_bytes_in_any_chunking_agree_and_never_crash(c_parser, data, chunk) -> None:
    parser = FrameParser()
    got = []
    for i in range(0, len(data), chunk):
        got += parser.feed(data[i : i + chunk])
    assert got == c_parser.parse(data)
    assert got == FrameParser().feed(data)


# --------------------------------------------------------------------------- over a pty


def test_handshake_reports_the_firmware_and_heartbeats_flow(link: BridgeLink) -> None:
    report = link.hello()
    assert report.firmware == (1, 0, 0) and report.protocol_version == 1
    assert report.host_timeout_ms == 100 and report.heartbeat_period_ms == 10
    _pump(link, 1.0)
    s = link.stats
    assert s.heartbeats_rx >= 50, s  # the protocol's 50 Hz floor (the firmware sends 100 Hz)
    assert s.frames_bad == 0 and s.lost == 0 and s.duplicated == 0 and s.reordered == 0, s
    assert link.report.status & Status.HELLO_DONE
    assert not link.report.enable  # nobody asked for it


def test_enable_needs_hello_and_a_reset_after_an_estop(link, firmware) -> None:
    with pytest.raises(McuRefused, match="no HELLO"):
        link.request("ENABLE", T.ENABLE, on=1)
    link.hello()
    link.request("ENABLE", T.ENABLE, on=1)
    assert link.wait_for(lambda r: r.enable, 0.5)
    firmware.press_estop()
    assert link.wait_for(lambda r: r.estop_pressed and not r.enable, 0.5)
    with pytest.raises(McuRefused, match="is pressed") as info:
        link.request("ENABLE", T.ENABLE, on=1)
    assert info.value.reason == NackReason.ESTOP_PRESSED
    firmware.release_estop()
    assert link.wait_for(lambda r: not r.estop_pressed and r.estop_latched, 0.5)
    with pytest.raises(McuRefused, match="not reset"):
        link.request("ENABLE", T.ENABLE, on=1)
    _pump(link, 0.1)
    assert not link.report.enable  # releasing the button alone never re-enables
    link.request("ESTOP_RESET", T.ESTOP_RESET)
    link.request("ENABLE", T.ENABLE, on=1)
    assert link.wait_for(lambda r: r.enable and not r.estop_latched, 0.5)
    assert any(line.startswith("enable 1") for line in firmware.lines)


def test_host_silence_drops_enable_within_the_deadline(link, firmware) -> None:
    """Timed on the MCU's own clock (its heartbeats' uptime), so a slow test process cannot
    make the MCU look late."""
    link.hello()
    link.request("ENABLE", T.ENABLE, on=1)
    arrivals: list[tuple[float, int, int]] = []

    def record(p: Packet, now: float) -> None:
        if p.type == T.HEARTBEAT:
            arrivals.append((now, p.fields()["uptime_ms"], p.fields()["status"]))

    link.on_packet = record
    _pump(link, 0.3)
    assert link.report.enable
    last_sent = time.monotonic()
    link.heartbeat()  # the last sign of life
    assert link.wait_for(lambda r: not r.enable, 1.0)
    # Host time → MCU uptime: the least-delayed heartbeat bounds the offset.
    offset = min(now - up / 1e3 for now, up, _ in arrivals)
    sent_mcu_ms = (last_sent - offset) * 1e3  # no later than the MCU's clock when it arrived
    dropped = next(
        up for _, up, status in arrivals if not status & Status.ENABLE_OUT and up >= sent_mcu_ms
    )
    # Enable drops 100 ms after the last frame; the heartbeat that shows it is due within 10 ms.
    assert dropped - sent_mcu_ms <= 100 + 10 + 2, (dropped, sent_mcu_ms)
    assert link.report.status & Status.HOST_TIMEOUT
    # Coming back does not re-enable: heartbeats alone leave it low until ENABLE is sent.
    _pump(link, 0.2)
    assert not link.report.enable


def test_garbage_and_truncated_frames_resynchronise_without_a_false_message(link, firmware):
    link.hello()
    serial_port = link._serial
    assert serial_port is not None
    sent = []
    rng = random.Random(7)
    for i in range(20):
        junk = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 60)))
        half = encode(pack(T.GRIPPER_COMMAND, 1000 + i, position=500, speed=1000))[:5]
        serial_port.write(junk + b"\x00" + half + b"\x00")
        seq = link.send(T.GRIPPER_COMMAND, position=10 * i, speed=1000)
        sent.append(seq)
    _pump(link, 0.3)
    acked = [s for s in sent if s in link._replies and link._replies[s].type == T.ACK]
    assert acked == sent  # every valid request answered
    assert not any(1000 <= s < 1020 for s in link._replies)  # no half frame taken
    assert link.report.gripper_target == 190
    ok, bad = _firmware_counts(firmware.stop())
    assert bad >= 20 and ok >= 21


def _firmware_counts(last_line: str) -> tuple[int, int]:
    words = last_line.replace(",", "").split()
    return int(words[1]), int(words[4])  # "stopped: N frames ok, M bad, ..."


def test_the_link_reconnects_after_the_port_disappears(firmware_bin, tmp_path: Path) -> None:
    by_id = tmp_path / "usb-edgevla-mcu"  # a stable name, as udev gives under /dev/serial/by-id
    first = HostFirmware(firmware_bin["edgevla-mcu-host"], link=by_id).start()
    link = BridgeLink(str(by_id), backoff_s=(0.02, 0.2))
    link.open()
    link.hello()
    _pump(link, 0.1)
    first.stop()  # unplugged: the pty and its name are gone
    _pump(link, 0.3)
    assert not link.connected and link.stats.reconnects == 0
    assert link.report.t_heartbeat_s < time.monotonic() - 0.2  # the control process would trip
    second = HostFirmware(firmware_bin["edgevla-mcu-host"], link=by_id).start()
    try:
        link.report.firmware = None
        assert link.wait_for(lambda r: r.firmware is not None, 3.0), link.last_error
        assert link.connected and link.stats.reconnects == 1
        assert not link.report.enable  # a reconnect never arms the MCU
        before = link.stats.heartbeats_rx
        _pump(link, 0.2)
        assert link.stats.heartbeats_rx > before
    finally:
        link.close()
        second.stop()


def test_the_port_is_opened_exclusively(link: BridgeLink) -> None:
    other = BridgeLink(link.port)
    with pytest.raises(PortBusy, match="held by another program"):
        other.open()


def test_a_missing_port_is_named(tmp_path: Path) -> None:
    port = str(tmp_path / "ttyACM9")
    with pytest.raises(PortNotFound, match=f"no serial port {port}"):
        BridgeLink(port).open()


def test_silence_from_a_port_that_is_not_an_mcu_fails_the_handshake() -> None:
    master, slave = os.openpty()
    try:
        link = BridgeLink(os.ttyname(slave))
        link.open()
        with pytest.raises(LinkError, match=r"no HELLO_REPLY .* within 0\.3 s"):
            link.hello(0.3)
        link.close()
    finally:
        os.close(master)
        os.close(slave)


# --------------------------------------------------------------------------- command line


def test_selftest_passes_on_the_firmware_and_fails_with_the_estop_pressed(
    firmware: HostFirmware, capsys: pytest.CaptureFixture[str]
) -> None:
    from edgevla.cli import main

    assert main(["bridge", "selftest", firmware.name]) == 0
    out = " ".join(capsys.readouterr().out.split())
    for step in ("handshake", "heartbeats", "e-stop", "enable", "host silence"):
        assert f"PASS {step}" in out, out
    firmware.press_estop()
    time.sleep(0.05)
    assert main(["bridge", "selftest", firmware.name]) == 1
    out = " ".join(capsys.readouterr().out.split())
    assert "FAIL e-stop" in out and "selftest FAILED" in out


def test_monitor_shows_the_mcu(firmware: HostFirmware, capsys) -> None:
    from edgevla.cli import main

    assert main(["bridge", "monitor", firmware.name, "--duration", "0.5"]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "firmware │ 1.0.0, board 0, protocol 1" in out and "enable output │ low" in out
