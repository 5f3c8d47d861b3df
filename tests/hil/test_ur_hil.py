"""The UR driver against a real robot or URSim. Read docs/hil.md before running these.

    pytest -m hil tests/hil --ur-host 192.168.1.10      (or UR_HOST=192.168.1.10)

They move the arm: a few degrees on the last wrist joint, inside the envelope below. One test
stops the watchdog kicks on purpose, one triggers a protective stop (cleared again after UR's
5 s). Keep the e-stop in reach.
"""

from __future__ import annotations

import os
import time

import numpy as np
import pytest

pytestmark = pytest.mark.hil

# The motion these tests make: wrist 3 only, at most this far from where the arm starts.
ENVELOPE_RAD = 0.05


@pytest.fixture(scope="module")
def ur_host(request: pytest.FixtureRequest) -> str:
    host = request.config.getoption("--ur-host") or os.environ.get("UR_HOST")
    if not host:
        pytest.skip("needs a UR controller: pass --ur-host IP or set UR_HOST (docs/hil.md)")
    pytest.importorskip("rtde_control", reason="ur_rtde is not installed (pip install ur-rtde)")
    return host


@pytest.fixture
def robot(ur_host: str):
    from edgevla.robots.ur.driver import URConfig, URRobot

    arm = URRobot(URConfig(ur_host))
    arm.connect()
    yield arm
    arm.close()


def _state(robot):
    from edgevla.runtime.devices import RobotState

    state = RobotState()
    robot.read_state(state)
    return state


def test_connects_and_reads_state(robot) -> None:
    from edgevla.runtime.devices import SafetyMode

    state = _state(robot)
    assert robot.period_s in (1 / 500, 1 / 125)
    assert state.program_running and state.safety_mode == SafetyMode.NORMAL
    assert np.all(np.isfinite(state.q)) and np.all(np.abs(state.q) <= 2 * np.pi)


def test_small_servo_motion_inside_the_envelope(robot) -> None:
    start = _state(robot).q.copy()
    target = start.copy()
    target[5] += ENVELOPE_RAD
    t0 = time.monotonic()
    while time.monotonic() - t0 < 2.0:
        robot.servo(target, 1.0)
        time.sleep(robot.period_s)
    moved = _state(robot).q
    assert abs(moved[5] - target[5]) < 0.005
    np.testing.assert_allclose(moved[:5], start[:5], atol=0.002)
    t0 = time.monotonic()
    while time.monotonic() - t0 < 2.0:  # and back
        robot.servo(start, 1.0)
        time.sleep(robot.period_s)
    robot.stop()


def test_robot_side_watchdog_stops_the_arm_when_kicks_stop(robot) -> None:
    robot.set_watchdog(50.0)
    start = _state(robot).q.copy()
    target = start.copy()
    target[5] += ENVELOPE_RAD
    for _ in range(int(0.2 / robot.period_s)):
        robot.servo(target, 1.0)
        time.sleep(robot.period_s)
    time.sleep(0.5)  # silence: the controller's watchdog must stop the program
    state = _state(robot)
    assert not state.program_running
    robot.recover()
    assert _state(robot).program_running


def test_protective_stop_is_detected_and_reported(robot) -> None:
    from edgevla.robots.ur.driver import URRecoveryError
    from edgevla.runtime.devices import SafetyMode

    assert robot._control.triggerProtectiveStop()
    deadline = time.monotonic() + 2.0
    while _state(robot).safety_mode != SafetyMode.PROTECTIVE_STOP:
        assert time.monotonic() < deadline, "the protective stop never showed in the state"
        time.sleep(0.01)
    assert not _state(robot).program_running
    with pytest.raises(URRecoveryError):
        robot.recover()  # within UR's 5 s
    time.sleep(5.2)
    robot.recover()
    assert _state(robot).safety_mode == SafetyMode.NORMAL
