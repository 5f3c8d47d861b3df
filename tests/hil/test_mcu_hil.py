"""The safety-MCU link against a board running the edgevla firmware. Read docs/hil.md first.

    pytest -m hil tests/hil --mcu-port /dev/serial/by-id/usb-...     (or MCU_PORT=...)

The enable output goes high during these tests: disconnect it from the robot's safety input, or
keep the robot's own e-stop in reach. The e-stop test needs a person at the button and runs only
with MCU_ESTOP=1.
"""

from __future__ import annotations

import os
import time

import pytest

pytestmark = pytest.mark.hil


@pytest.fixture(scope="module")
def port(request: pytest.FixtureRequest) -> str:
    value = request.config.getoption("--mcu-port") or os.environ.get("MCU_PORT")
    if not value:
        pytest.skip("needs a safety MCU: pass --mcu-port PORT or set MCU_PORT (docs/hil.md)")
    pytest.importorskip("serial", reason="pyserial is not installed (the mcu extra)")
    return value


def test_the_bench_selftest_passes(port: str) -> None:
    from edgevla.firmware_bridge.link import BridgeLink
    from edgevla.firmware_bridge.selftest import selftest

    link = BridgeLink(port)
    link.open()
    try:
        checks = selftest(link, host_timeout_ms=100)
    finally:
        link.close()
    for c in checks:
        print(f"{'PASS' if c.ok else 'FAIL'} {c.name}: {c.detail}")
    assert len(checks) >= 5 and all(c.ok for c in checks)


def test_the_estop_button_drops_enable_and_latches(port: str) -> None:
    if os.environ.get("MCU_ESTOP") != "1":
        pytest.skip("needs a person at the e-stop: set MCU_ESTOP=1 (docs/hil.md)")
    from edgevla.firmware_bridge.link import BridgeLink, McuRefused
    from edgevla.firmware_bridge.protocol import MessageType

    link = BridgeLink(port)
    link.open()
    try:
        link.hello(2.0)
        link.request("ENABLE", MessageType.ENABLE, on=1)
        print("\n>>> PRESS the e-stop (waiting up to 30 s)")
        end = time.monotonic() + 30
        while not link.report.estop_pressed and time.monotonic() < end:
            link.heartbeat()
            link.poll()
            time.sleep(0.01)
        assert link.report.estop_pressed and not link.report.enable
        print(">>> RELEASE it (waiting up to 30 s)")
        end = time.monotonic() + 30
        while link.report.estop_pressed and time.monotonic() < end:
            link.heartbeat()
            link.poll()
            time.sleep(0.01)
        assert link.report.estop_latched and not link.report.enable
        with pytest.raises(McuRefused):
            link.request("ENABLE", MessageType.ENABLE, on=1)
        link.request("ESTOP_RESET", MessageType.ESTOP_RESET)
    finally:
        link.close()
