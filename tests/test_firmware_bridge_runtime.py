"""`edgevla run` with mcu.kind = "serial": the control process speaks the protocol to the
compiled reference firmware over a pty. Its e-stop and its silence trip the runtime, and its
enable output (wired to the simulated arm's safety input) drops with them."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

pytest.importorskip("serial", reason="pyserial is not installed (the mcu extra)")

from edgevla.firmware_bridge.build import build
from edgevla.firmware_bridge.hostrun import HostFirmware
from edgevla.runtime.config import config_from_dict
from edgevla.runtime.supervisor import RunOptions, Supervisor

pytestmark = pytest.mark.slow

FAULT_AT_S = 3.0


@pytest.fixture(scope="module")
def firmware_binary(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build(tmp_path_factory.mktemp("fw"))["edgevla-mcu-host"]


@pytest.fixture
def firmware(firmware_binary: Path):
    with HostFirmware(firmware_binary) as fw:
        yield fw


def serial_config(bundle: Path, port: str):
    raw = {
        "policy": {"bundle": str(bundle)},
        "mcu": {"kind": "serial", "port": port},
        "watchdog": {"robot_watchdog_min_hz": 10.0},  # as in test_runtime_faults
    }
    return config_from_dict(raw, "test")


def _run_with(bundle: Path, fw: HostFirmware, action) -> dict:
    timer = threading.Timer(FAULT_AT_S + 1.0, action)  # the run takes about a second to start
    timer.start()
    try:
        options = RunOptions(duration_s=FAULT_AT_S + 3.0, live=False)
        return Supervisor(serial_config(bundle, fw.name), options).run()
    finally:
        timer.cancel()


def _safe_end(report: dict, cause: str) -> None:
    causes = [t["cause"] for t in report["trips"] if t["cause"] != "operator-stop"]
    assert causes[:1] == [cause], report["trips"]
    assert report["trips"][0]["t_s"] >= FAULT_AT_S - 0.5
    assert report["safety"]["limit_violations"] == 0, report["safety"]
    assert report["safety"]["audited_cycles"] > 500  # the policy drove the arm before it
    assert report["final"]["robot_stopped"], report["final"]


def test_the_mcus_estop_trips_the_run(trained_bundle: Path, firmware: HostFirmware) -> None:
    report = _run_with(trained_bundle, firmware, firmware.press_estop)
    _safe_end(report, "estop")
    # The MCU armed at start (enable 1) and dropped enable at the press.
    enables = [line for line in firmware.lines if line.startswith("enable")]
    assert enables[-2].startswith("enable 1") and enables[-1].startswith("enable 0"), enables


def test_a_silent_mcu_trips_the_run(trained_bundle: Path, firmware: HostFirmware) -> None:
    report = _run_with(trained_bundle, firmware, firmware.freeze)
    _safe_end(report, "mcu-heartbeat")


def test_a_missing_mcu_stops_the_run_before_anything_moves(
    trained_bundle: Path, tmp_path: Path
) -> None:
    report = Supervisor(
        serial_config(trained_bundle, str(tmp_path / "ttyACM7")),
        RunOptions(duration_s=3.0, live=False),
    ).run()
    assert report["safety"]["audited_cycles"] == 0
    assert report["control"]["cycles"] == 0
