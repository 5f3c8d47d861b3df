"""The UR driver through the real ur_rtde library, against the loopback controller emulator.

ur_rtde talks to fixed ports (30004 RTDE, 29999 dashboard, 30003 script) on 127.0.0.1, so one
emulator serves the whole module. It runs in its own process (ur_rtde holds the GIL while it
waits on a socket); faults are injected through `EmulatorProcess.call`.
"""

from __future__ import annotations

import time

import numpy as np
import pytest

rtde_control = pytest.importorskip("rtde_control", reason="ur_rtde is not installed")
rtde_receive = pytest.importorskip("rtde_receive", reason="ur_rtde is not installed")

from edgevla.robots.ur.driver import (  # noqa: E402
    SampleAge,
    URConfig,
    URConnectError,
    URRecoveryError,
    URRobot,
    controller_frequency,
)
from edgevla.robots.ur.emulator import (  # noqa: E402
    RUNTIME_PLAYING,
    RUNTIME_STOPPED,
    EmulatorConfig,
    EmulatorProcess,
    rotation_vector,
)
from edgevla.runtime.devices import RobotState, SafetyMode  # noqa: E402

UNLOCK_DELAY_S = 0.5


def wait_for(condition, timeout_s: float = 5.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


@pytest.fixture(scope="module")
def emulator():
    with EmulatorProcess(EmulatorConfig(unlock_delay_s=UNLOCK_DELAY_S)) as emu:
        yield emu


@pytest.fixture
def robot(emulator: EmulatorProcess):
    arm = URRobot(URConfig("127.0.0.1", unlock_delay_s=UNLOCK_DELAY_S))
    arm.connect()
    yield arm
    arm.close()
    emulator.call("stall_data", False)
    emulator.call("delay_packets", 0.0)


def test_receive_interface_reads_the_emulated_arm(emulator: EmulatorProcess) -> None:
    receive = rtde_receive.RTDEReceiveInterface("127.0.0.1")
    try:
        q = np.array(receive.getActualQ())
        np.testing.assert_allclose(q, emulator.call("arm_q"), atol=1e-3)
        assert receive.getSafetyMode() == SafetyMode.NORMAL
        assert not receive.isProtectiveStopped() and not receive.isEmergencyStopped()
        t0 = receive.getTimestamp()
        time.sleep(0.1)
        assert receive.getTimestamp() > t0  # the stream runs
        pose = receive.getActualTCPPose()
        assert len(pose) == 6 and 0.1 < np.linalg.norm(pose[:3]) < 1.2
    finally:
        receive.disconnect()


def test_the_driver_connects_and_reads_the_controller_rate(robot: URRobot) -> None:
    assert robot.period_s == pytest.approx(1 / 500)
    state = RobotState()
    robot.read_state(state)
    assert state.program_running and state.safety_mode == SafetyMode.NORMAL
    assert controller_frequency("URSoftware 3.15.7.106331 (Mar 2023)") == 125.0
    assert controller_frequency("URSoftware 5.11.1.108318 (Jan 2022)") == 500.0
    with pytest.raises(URConnectError, match="PolyScope version"):
        controller_frequency("Connected: Universal Robots Dashboard Server")


def test_servo_streaming_moves_the_emulated_arm(robot: URRobot) -> None:
    state = RobotState()
    robot.read_state(state)
    target = state.q.copy()
    target[0] += 0.1
    start = time.monotonic()
    while time.monotonic() - start < 1.0:
        robot.servo(target, 1.0)
        time.sleep(robot.period_s)
    robot.read_state(state)
    assert abs(state.q[0] - target[0]) < 0.01
    robot.stop()


def test_watchdog_stops_the_arm_when_kicks_stop(robot: URRobot, emulator: EmulatorProcess) -> None:
    robot.set_watchdog(50.0)
    state = RobotState()
    robot.read_state(state)
    target = state.q.copy()
    target[0] += 1.0  # base pan: 1 rad takes the servo over 0.3 s
    for _ in range(50):  # start a motion, then go silent mid-way
        robot.servo(target, 1.0)
        time.sleep(robot.period_s)
    wait_for(lambda: not emulator.call("script_running"), 1.0, "the watchdog to stop the program")
    # The driver sees it in the next data package (2 ms).
    wait_for(lambda: (robot.read_state(state), not state.program_running)[1], 0.5, "the stream")
    time.sleep(0.5)  # braking from full speed takes about 0.1 s
    robot.read_state(state)
    halted = state.q.copy()
    time.sleep(0.2)
    robot.read_state(state)
    np.testing.assert_allclose(state.q, halted, atol=1e-3)  # at rest, short of the target
    assert abs(state.q[0] - target[0]) > 0.3
    robot.recover()  # a stopped program is restarted by re-uploading the script
    robot.read_state(state)
    assert state.program_running


def test_protective_stop_is_reported_and_recovered_only_after_the_delay(
    robot: URRobot, emulator: EmulatorProcess
) -> None:
    emulator.call("protective_stop")
    state = RobotState()
    wait_for(
        lambda: (robot.read_state(state), state.safety_mode == SafetyMode.PROTECTIVE_STOP)[1],
        what="the protective stop in the RTDE stream",
    )
    assert not state.program_running
    with pytest.raises(URRecoveryError, match="allows the unlock"):
        robot.recover()
    time.sleep(UNLOCK_DELAY_S)
    robot.recover()
    robot.read_state(state)
    assert state.safety_mode == SafetyMode.NORMAL and state.program_running


def _age_after(robot: URRobot, seconds: float) -> float:
    """Read at 500 Hz for `seconds`; the state's age at the end."""
    state = RobotState()
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        robot.read_state(state)
        time.sleep(0.002)
    return state.age_s


def test_delayed_or_stalled_data_shows_as_the_states_age(
    robot: URRobot, emulator: EmulatorProcess
) -> None:
    """ur_rtde hands over its newest package without saying when it came: delayed packages
    (connection up, data late) and a stall shorter than its 2.5 s deadline are seen only through
    the age the driver derives from the controller's timestamps."""
    assert _age_after(robot, 0.5) < 0.02
    emulator.call("delay_packets", 0.1)
    assert 0.07 < _age_after(robot, 0.6) < 0.5
    emulator.call("delay_packets", 0.0)
    assert _age_after(robot, 0.6) < 0.02
    emulator.call("stall_data", True)
    assert _age_after(robot, 0.4) > 0.3
    emulator.call("stall_data", False)
    assert _age_after(robot, 0.4) < 0.02


def test_the_sample_age_follows_clock_drift_but_not_a_delay() -> None:
    age = SampleAge()
    # The controller's clock runs 50 ppm slow against the host's: over an hour its samples
    # would seem 0.18 s older without the drift allowance.
    ages = [age.update(t, 100.0 + t * (1 - 50e-6)) for t in np.arange(0.0, 3600.0, 0.5)]
    assert max(ages) < 1e-3
    assert age.update(3600.5, 100.0 + 3600.5 * (1 - 50e-6) - 0.05) == pytest.approx(0.05, abs=1e-3)


def test_close_stops_the_script(emulator: EmulatorProcess) -> None:
    arm = URRobot(URConfig("127.0.0.1"))
    arm.connect()
    assert emulator.call("runtime_state") == RUNTIME_PLAYING
    arm.close()
    wait_for(lambda: emulator.call("runtime_state") == RUNTIME_STOPPED, 2.0, "the script to stop")


def test_connecting_to_nothing_names_the_host_and_what_to_check() -> None:
    # The emulator listens on 127.0.0.1 only: nothing answers on this loopback alias.
    config = URConfig("127.0.0.2", connect_attempts=2, backoff_s=0.01)
    sleeps: list[float] = []
    with pytest.raises(URConnectError, match=r"127\.0\.0\.2 after 2 attempts.*check that"):
        URRobot(config, sleep=sleeps.append).connect()
    assert sleeps == [0.01]


def test_servoj_ranges_are_refused_at_config() -> None:
    with pytest.raises(Exception, match="lookahead"):
        URConfig("h", lookahead_s=0.5)
    with pytest.raises(Exception, match="gain"):
        URConfig("h", gain=50)


def test_rotation_vector_of_a_tool_pointing_down() -> None:
    flip = np.diag([1.0, -1.0, -1.0])  # 180° about x
    np.testing.assert_allclose(np.abs(rotation_vector(flip)), [np.pi, 0, 0], atol=1e-9)
    c, s = np.cos(0.3), np.sin(0.3)
    about_z = np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]])
    np.testing.assert_allclose(rotation_vector(about_z), [0, 0, 0.3], atol=1e-9)


_DROP_CLIENT = """
import os, sys, time
from edgevla.robots.ur.driver import URConfig, URConnectError, URRobot
from edgevla.runtime.devices import RobotDisconnected, RobotState
arm = URRobot(URConfig("127.0.0.1"))
arm.connect()
state = RobotState()
arm.read_state(state)
print("connected", flush=True)
sys.stdin.readline()  # the parent drops the connection
try:
    for _ in range(500):  # a drop is seen at once, a stall after ur_rtde's 2.5 s deadline
        arm.read_state(state)
        time.sleep(0.01)
    print("not noticed", flush=True)
except RobotDisconnected as exc:
    print("lost:", exc, flush=True)
try:
    arm.servo(state.q, 1.0)
    print("servo sent", flush=True)
except RobotDisconnected:
    print("servo refused", flush=True)
try:
    arm.reconnect()
except URConnectError as exc:
    print("reconnect refused:", exc, flush=True)
arm.stop()
arm.close()
print("closed", flush=True)
os._exit(0)  # no destructors: ur_rtde's reconnecting thread is still running
"""


@pytest.mark.parametrize("fault", ["drop_connections", "stall_data"])
def test_a_lost_connection_is_reported_and_latched(emulator: EmulatorProcess, fault: str) -> None:
    """In a child process: after a loss, ur_rtde 1.6.5's control interface reconnects from its
    own thread in a loop that can crash its process (driver.URRobot.reconnect says why). What
    must hold is what the driver reports before that: the loss, latched. A dropped connection
    and a data stream that stalls (connections open, no packages) end the same way."""
    import subprocess
    import sys

    child = subprocess.Popen(
        [sys.executable, "-c", _DROP_CLIENT],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    assert child.stdout is not None and child.stdin is not None
    assert child.stdout.readline().strip() == "connected"
    emulator.call(fault)
    try:
        out, _ = child.communicate("\n", timeout=30)
    finally:
        emulator.call("clear_faults")
    ours = ("lost:", "not noticed", "servo ", "reconnect refused:", "closed")
    # ur_rtde prints its own reconnect chatter to the same stdout.
    lines = [line for line in out.splitlines() if line.startswith(ours)]
    assert lines[0] == "lost: the UR controller at 127.0.0.1 dropped the connection", lines
    assert lines[1] == "servo refused", lines  # latched: ur_rtde may already be back by itself
    assert lines[2].startswith("reconnect refused:") and "restart edgevla" in lines[2], lines
    assert lines[3] == "closed", lines
    # The recovery is the restart (systemd's, docs/deploy.md): a new process connects to the
    # same controller and drives the arm again.
    arm = URRobot(URConfig("127.0.0.1"))
    arm.connect()
    try:
        state = RobotState()
        arm.read_state(state)
        assert state.program_running and state.safety_mode == SafetyMode.NORMAL
        arm.servo(state.q, 1.0)
    finally:
        arm.close()


def test_an_emergency_stop_is_reported_and_needs_power_on_and_brake_release(
    robot: URRobot, emulator: EmulatorProcess
) -> None:
    import dashboard_client

    emulator.call("emergency_stop", True)
    state = RobotState()
    wait_for(
        lambda: (robot.read_state(state), state.safety_mode == SafetyMode.ROBOT_EMERGENCY_STOP)[1],
        what="the e-stop in the RTDE stream",
    )
    assert not state.program_running
    emulator.call("emergency_stop", False)
    wait_for(lambda: (robot.read_state(state), state.safety_mode != 7)[1], what="the release")
    dashboard = dashboard_client.DashboardClient("127.0.0.1")
    dashboard.connect()
    try:
        assert "POWER_OFF" in dashboard.robotmode()  # released is not running again
        dashboard.powerOn()
        dashboard.brakeRelease()
        assert "RUNNING" in dashboard.robotmode()
    finally:
        dashboard.disconnect()
    time.sleep(UNLOCK_DELAY_S)
    robot.recover()
    robot.read_state(state)
    assert state.safety_mode == SafetyMode.NORMAL and state.program_running


def test_speed_scaling_is_read_and_reported(
    robot: URRobot, emulator: EmulatorProcess, caplog: pytest.LogCaptureFixture
) -> None:
    state = RobotState()
    emulator.call("set_speed_scaling", 0.4)
    with caplog.at_level("WARNING", logger="edgevla.robots.ur.driver"):
        wait_for(lambda: (robot.read_state(state), robot.speed_scaling < 0.5)[1], what="scaling")
    assert robot.speed_scaling == pytest.approx(0.4)
    assert "speed scaling at 40 %" in caplog.text
    emulator.call("set_speed_scaling", 1.0)
    wait_for(lambda: (robot.read_state(state), robot.speed_scaling > 0.99)[1], what="100 %")
