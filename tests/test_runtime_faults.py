"""The whole runtime on the simulated UR5e, with every fault the runtime must survive.

Each run spawns the real control and policy processes. Whatever goes wrong, the run must end
with the arm commanded to rest, no commanded setpoint outside any limit (audited independently
of the safety filter), and the cause named in the report.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from edgevla.runtime.config import config_from_dict
from edgevla.runtime.faults import Fault
from edgevla.runtime.supervisor import RunOptions, Supervisor

pytestmark = pytest.mark.slow

FAULT_AT_S = 3.0
RUN_S = 5.5


def run_config(bundle: Path):
    """The default config, but a 10 Hz robot-side watchdog instead of 50 Hz.

    Each test here asserts which trip comes first. Under the full suite on two cores the control
    process (not real-time scheduled here) was once descheduled for over 20 ms, and the robot-side
    watchdog, doing its job, stopped the program before the injected fault (seen once in ~20
    runs). That guard has its own tests (test_sim); here it must not race
    the fault under test.
    """
    raw = {"policy": {"bundle": str(bundle)}, "watchdog": {"robot_watchdog_min_hz": 10.0}}
    return config_from_dict(raw, "test")


def assert_safe_end(report: dict, cause: str) -> None:
    causes = [t["cause"] for t in report["trips"] if t["cause"] != "operator-stop"]
    assert causes[:1] == [cause], report["trips"]
    trip = report["trips"][0]
    assert trip["t_s"] >= FAULT_AT_S - 0.5, trip
    assert trip["stopped_after_s"] is not None, "the controlled stop never reached rest"
    assert report["safety"]["limit_violations"] == 0, report["safety"]
    # The policy drove the arm for a second or more before the fault (it is ready after about
    # a second; under the full suite on two cores, later: 983 cycles were seen).
    assert report["safety"]["audited_cycles"] > 500
    assert report["safety"]["defence_clamps"] == 0
    assert report["final"]["state"] in ("tripped", "finished")


@pytest.fixture(scope="module")
def clean_report(trained_bundle: Path) -> dict:
    return Supervisor(run_config(trained_bundle), RunOptions(duration_s=RUN_S, live=False)).run()


def test_a_clean_run_reports_everything(clean_report: dict) -> None:
    r = clean_report
    assert [t["cause"] for t in r["trips"]] == ["operator-stop"]
    assert r["control"]["cycles"] > 1000
    assert {"p50", "p99", "max"} <= set(r["control"]["period_error_us"])
    assert isinstance(r["control"]["missed_cycles"], int)
    assert r["system1"]["count"] > 10 and r["system2"]["count"] > 3
    assert r["system1"]["rate_hz"] > 0 and r["system2"]["rate_hz"] > 0
    assert r["safety"]["limit_violations"] == 0
    # On the simulated cell the supervisor judges the task the instruction names.
    assert r["task"]["instruction"] == "touch the red cube" and r["task"]["target"] == "red"
    assert r["task"]["outcome"] in {"running", "success", "wrong_object"}
    assert r["final"]["robot_stopped"] and r["final"]["state"] == "finished"
    # The policy really drove the arm: commands left the start pose.
    assert r["safety"]["audited_cycles"] > 1000
    assert r["policy_process"]["exit_code"] == 0


@pytest.mark.parametrize(
    ("fault", "cause"),
    [
        (Fault.POLICY_HANG, "setpoint-stale"),
        (Fault.POLICY_CRASH, "policy-dead"),
        (Fault.NAN_PLAN, "nan-setpoint"),
        (Fault.WILD_PLAN, "setpoint-out-of-limits"),
        (Fault.CAMERA_STALL, "camera-stale"),
        (Fault.ROBOT_PSTOP, "robot-protective-stop"),
        (Fault.ROBOT_DISCONNECT, "robot-disconnected"),
        (Fault.ESTOP, "estop"),
        (Fault.MCU_SILENT, "mcu-heartbeat"),
    ],
)
def test_injected_fault_stops_the_robot(trained_bundle: Path, fault: Fault, cause: str) -> None:
    options = RunOptions(duration_s=RUN_S, injections=[(fault, FAULT_AT_S)], live=False)
    report = Supervisor(run_config(trained_bundle), options).run()
    assert report["injections"] == [
        {"fault": fault.label, "t_s": pytest.approx(FAULT_AT_S, abs=0.2)}
    ]
    assert_safe_end(report, cause)
    if fault is not Fault.ROBOT_DISCONNECT:  # no measurement comes back from a lost robot
        assert report["final"]["robot_stopped"], report["final"]


def _start_cli(bundle: Path, tmp_path: Path, *extra: str) -> tuple[subprocess.Popen, int, int]:
    config = tmp_path / "run.toml"
    config.write_text(f'[policy]\nbundle = "{bundle}"\n')
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "edgevla.cli",
            "run",
            "--config",
            str(config),
            "--report",
            str(tmp_path / "report.json"),
            "--quiet",
            *extra,
        ],
        stderr=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stderr is not None
    for line in proc.stderr:
        if line.startswith("edgevla: control pid"):
            words = line.replace(",", "").split()
            return proc, int(words[3]), int(words[6])
    raise AssertionError("no pid line from edgevla run")


@pytest.mark.parametrize("sig", [signal.SIGSTOP, signal.SIGKILL])
def test_outside_signal_to_the_policy_process(
    trained_bundle: Path, tmp_path: Path, sig: int
) -> None:
    """A real SIGSTOP or SIGKILL from outside, through the real command line."""
    proc, _, policy_pid = _start_cli(trained_bundle, tmp_path, "--duration", str(RUN_S))
    time.sleep(FAULT_AT_S)
    os.kill(policy_pid, sig)
    try:
        out, err = proc.communicate(timeout=60)
    finally:
        if sig == signal.SIGSTOP:
            with contextlib.suppress(ProcessLookupError):
                os.kill(policy_pid, signal.SIGCONT)  # in case the supervisor did not reap it
    assert proc.returncode == 3, (out, err)
    report = json.loads((tmp_path / "report.json").read_text())
    assert_safe_end(report, "policy-dead")


def test_sigterm_stops_the_robot_before_exit(trained_bundle: Path, tmp_path: Path) -> None:
    proc, _, _ = _start_cli(trained_bundle, tmp_path)
    time.sleep(FAULT_AT_S)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, (out, err)
    report = json.loads((tmp_path / "report.json").read_text())
    assert [t["cause"] for t in report["trips"]] == ["operator-stop"]
    assert report["final"]["robot_stopped"] and report["final"]["state"] == "finished"
    assert report["safety"]["limit_violations"] == 0


def test_control_process_stops_when_the_supervisor_dies(
    trained_bundle: Path, tmp_path: Path
) -> None:
    """SIGKILL of `edgevla run` itself: the orphaned control process brings the arm to rest
    (trip supervisor-lost) and exits rather than running on unsupervised."""
    proc, control_pid, policy_pid = _start_cli(trained_bundle, tmp_path)
    time.sleep(FAULT_AT_S)
    proc.kill()
    proc.wait(timeout=10)
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        try:
            os.kill(control_pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.1)
    else:
        os.kill(control_pid, signal.SIGKILL)
        raise AssertionError("the control process outlived its supervisor by 15 s")
    # The policy process notices too, and does not linger as an orphan.
    while time.monotonic() < deadline:
        try:
            os.kill(policy_pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.1)
    os.kill(policy_pid, signal.SIGKILL)
    raise AssertionError("the policy process outlived its supervisor by 15 s")


def test_bad_config_fails_at_start_naming_the_key(tmp_path: Path) -> None:
    config = tmp_path / "bad.toml"
    config.write_text("[limits]\nmax_velocity_deg_s = [1, 1, 1, 1, 1, 1]\n")
    done = subprocess.run(
        [sys.executable, "-m", "edgevla.cli", "run", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1
    assert "limits.max_velocity_deg_s" in done.stderr and "max_velocity_rad_s" in done.stderr
