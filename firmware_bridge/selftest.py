"""`edgevla bridge selftest`: an MCU on the bench checked step by step (docs/protocol.md).

Handshake, the MCU's heartbeat rate, the e-stop (a released but latched one is reset), ENABLE
and the output going high, then host silence and the time until enable drops.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from edgevla.firmware_bridge.link import BridgeLink, LinkError, McuRefused
from edgevla.firmware_bridge.protocol import MessageType, Status


@dataclass
class Check:
    name: str
    ok: bool
    detail: str


def selftest(link: BridgeLink, host_timeout_ms: int) -> list[Check]:
    """The bench checks, in order; later ones are skipped when an earlier one makes them moot."""
    checks: list[Check] = []
    try:
        r = link.hello(2.0)
    except LinkError as exc:
        return [Check("handshake", False, str(exc))]
    fw = ".".join(map(str, r.firmware or ()))
    checks.append(
        Check(
            "handshake",
            True,
            f"firmware {fw}, board {r.board}, protocol "
            f"{r.protocol_version}, host timeout {r.host_timeout_ms} ms",
        )
    )
    before, bad_before = link.stats.heartbeats_rx, link.stats.frames_bad
    t0 = time.monotonic()
    while time.monotonic() - t0 < 1.0:
        link.heartbeat()
        link.poll()
        time.sleep(0.005)
    rate = (link.stats.heartbeats_rx - before) / (time.monotonic() - t0)
    bad = link.stats.frames_bad - bad_before
    checks.append(
        Check(
            "heartbeats",
            rate >= 50 and bad == 0,
            f"{rate:.0f} Hz from the MCU (>= 50), {bad} bad frames, {link.stats.lost} lost",
        )
    )
    if r.estop_pressed or r.estop_latched:
        checks.append(
            Check(
                "e-stop",
                False,
                "pressed or latched: release it; then `edgevla bridge selftest` resets it",
            )
        )
        if r.estop_pressed:
            return checks
        try:
            link.request("ESTOP_RESET", MessageType.ESTOP_RESET)
        except LinkError as exc:
            checks.append(Check("e-stop reset", False, str(exc)))
            return checks
    else:
        checks.append(Check("e-stop", True, "released"))
    try:
        link.request("ENABLE", MessageType.ENABLE, on=1)
    except McuRefused as exc:
        checks.append(Check("enable", False, str(exc)))
        return checks
    t_enable = time.monotonic()
    up = link.wait_for(lambda rep: rep.enable, 0.5)
    checks.append(
        Check(
            "enable",
            up,
            f"output high after {(time.monotonic() - t_enable) * 1e3:.0f} ms"
            if up
            else "ACKed, but the output never went high",
        )
    )
    if not up:
        return checks
    t_silent = time.monotonic()
    dropped = link.wait_for(lambda rep: bool(rep.status & Status.HOST_TIMEOUT), 1.0)
    waited = (time.monotonic() - t_silent) * 1e3
    limit = host_timeout_ms + 50
    checks.append(
        Check(
            "host silence",
            dropped and waited <= limit,
            f"enable dropped {waited:.0f} ms after the last heartbeat (timeout "
            f"{host_timeout_ms} ms, allowed {limit} ms)"
            if dropped
            else "enable still high after 1 s of host silence: UNSAFE",
        )
    )
    link.send(MessageType.ENABLE, on=0)
    return checks
