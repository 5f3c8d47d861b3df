"""Calibration against a real UR and RealSense. Read docs/hil.md ("Calibration") before running.

    pytest -m hil tests/hil/test_calibration_hil.py --ur-host IP --realsense-serial SN
    CALIB_PLAN=plan.json pytest -m hil tests/hil/test_calibration_hil.py --ur-host IP ...

The doctor test only reads. The capture test moves the arm through the plan in CALIB_PLAN, a plan
the technician made for this cell with `edgevla calib plan` (and ran once by hand with
`edgevla calib capture`): it runs only when that variable names one.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.hil


@pytest.fixture(scope="module")
def devices(request: pytest.FixtureRequest) -> tuple[str, str]:
    host = request.config.getoption("--ur-host") or os.environ.get("UR_HOST")
    serial = request.config.getoption("--realsense-serial") or os.environ.get("REALSENSE_SERIAL")
    if not (host and serial):
        pytest.skip(
            "needs a UR controller and a RealSense: pass --ur-host IP and --realsense-serial SN"
            " (or set UR_HOST and REALSENSE_SERIAL; docs/hil.md)"
        )
    pytest.importorskip("rtde_receive", reason="ur_rtde is not installed (the ur extra)")
    pytest.importorskip("pyrealsense2", reason="pyrealsense2 is not installed (realsense extra)")
    pytest.importorskip("cv2", reason="OpenCV is not installed (the calib extra)")
    return host, serial


def test_doctor_passes_on_the_cell(devices: tuple[str, str]) -> None:
    from edgevla.calibration import doctor

    host, serial = devices
    checks = doctor.check_libraries() + doctor.check_camera(serial, 1280, 720)
    checks += doctor.check_robot(host, os.environ.get("UR_MODEL", "ur5e"))
    failed = [f"{c.name}: {c.detail}" for c in checks if not c.ok]
    assert not failed, failed


def test_capture_follows_the_plan_and_leaves_the_arm_at_rest(
    devices: tuple[str, str], tmp_path: Path
) -> None:
    plan_path = os.environ.get("CALIB_PLAN")
    if not plan_path:
        pytest.skip("moves the arm: set CALIB_PLAN to a plan made for this cell (docs/hil.md)")
    from edgevla.calibration.board import BoardSpec
    from edgevla.calibration.capture import Capture, plan_poses, run_capture
    from edgevla.calibration.plan import Plan
    from edgevla.cameras.realsense import RealSenseCamera, RealSenseSettings
    from edgevla.robots.ur.driver import URConfig, URRobot
    from edgevla.runtime.config import load_config
    from edgevla.runtime.devices import RobotState

    host, serial = devices
    config = load_config(os.environ.get("EDGEVLA_CONFIG"))
    plan = Plan.load(Path(plan_path))
    robot = URRobot(URConfig(host))
    robot.connect()
    camera = RealSenseCamera(RealSenseSettings("hil", serial=serial, width=1280, height=720))
    camera.start()
    try:
        session = Capture(
            robot, camera, camera.intrinsics, config.robot_model, config.limits,
            BoardSpec(**plan.board), clock=time.monotonic, sleep=time.sleep,
        )  # fmt: skip
        report = run_capture(
            session, plan_poses(plan), tmp_path, mode=plan.mode,
            camera_id={"name": "hil", "serial": serial}, robot_id={"model": plan.robot_model},
        )  # fmt: skip
        state = RobotState()
        robot.read_state(state)
    finally:
        camera.stop()
        robot.close()
    assert report.aborted is None, report.aborted
    assert len(report.views) == len(plan.views)
    assert all(v.accepted or v.reason for v in report.views)
    assert report.accepted >= 0.8 * len(plan.views), [v.reason for v in report.views]
    assert np.abs(state.qd).max() < 0.01
    assert len(json.loads((tmp_path / "dataset.json").read_text())["views"]) == len(plan.views)
