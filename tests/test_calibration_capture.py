"""Calibration on the simulated robot: the ChArUco board and a camera at a hidden true mounting in
the MuJoCo scene, poses planned from a tape-measure guess, the arm driven through the safety
filter, pictures taken after it settles, and the real detector and solvers on the renders."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import edgevla.sim  # noqa: F401  (chooses MuJoCo's headless GL before mujoco is imported)

pytest.importorskip("cv2", reason="OpenCV is not installed (the calib extra)")
pytest.importorskip("mujoco", reason="MuJoCo is not installed (the sim extra)")

from edgevla.calibration.board import BoardSpec
from edgevla.calibration.capture import Capture, CaptureSettings, plan_poses, run_capture
from edgevla.calibration.pipeline import solve_dataset
from edgevla.calibration.plan import Plan, PlanError, PlanSettings, make_plan
from edgevla.calibration.simcell import (
    capture_sim_dataset,
    default_cell,
    make_sim_cell,
    nominal_guess,
)
from edgevla.calibration.transforms import difference, make_T, rotation
from edgevla.runtime.config import LimitsConfig
from edgevla.runtime.devices import RobotState
from edgevla.runtime.kinematics import UR5E, ForwardKinematics, InverseKinematics
from edgevla.sim.scene import HOME_Q

MODES = ["eye_in_hand", "eye_to_hand"]


@pytest.mark.parametrize("mode", MODES)
def test_capture_on_the_simulated_cell_recovers_the_hidden_mounting(
    mode: str, tmp_path: Path
) -> None:
    report, _, cell = capture_sim_dataset(mode, tmp_path, views=15, seed=3)
    assert report.aborted is None
    assert len(report.views) == 15 and report.accepted >= 13, [v.reason for v in report.views]
    solution, _, data = solve_dataset(tmp_path, tmp_path / "calibration.json")
    mm, deg = difference(solution.T, cell.X_true)
    assert mm < 1.0 and deg < 0.1, (mm, deg)
    # The dataset holds what the robot measured at each picture, not what the plan asked for.
    meta = json.loads((tmp_path / "dataset.json").read_text())
    fk = ForwardKinematics(UR5E)
    for view in meta["views"]:
        np.testing.assert_allclose(fk.flange_pose(np.array(view["q"])), view["T_base_gripper"])
    assert data["camera"]["width"] == 1280 and data["camera"]["serial"] == f"SIM-{mode}"


@pytest.mark.parametrize("mode", MODES)
def test_the_plan_is_reachable_diverse_and_inside_the_limits(mode: str) -> None:
    cell = default_cell(mode)
    limits = LimitsConfig()
    plan = make_plan(
        mode, nominal_guess(cell, np.random.default_rng(0)), cell.spec, UR5E, limits,
        np.array(HOME_Q), PlanSettings(views=12),
    )  # fmt: skip
    assert len(plan.views) == 12
    fk = ForwardKinematics(UR5E)
    lo = np.asarray(limits.joint_min_rad) + limits.joint_margin_rad
    hi = np.asarray(limits.joint_max_rad) - limits.joint_margin_rad
    for view in plan.views:
        q = np.asarray(view.q)
        assert np.all(q >= lo) and np.all(q <= hi)
        mm, deg = difference(fk.flange_pose(q), np.asarray(view.T_base_gripper))
        assert mm < 0.1 and deg < 0.01
    tilts = [v.tilt_deg for v in plan.views]
    assert max(tilts) - min(tilts) > 15.0
    assert plan.diversity["axis_spread"] > 0.4 and plan.diversity["largest_rotation_deg"] > 40


def test_a_plan_round_trips_and_a_bad_file_is_named(tmp_path: Path) -> None:
    cell = default_cell("eye_in_hand")
    plan = make_plan(
        "eye_in_hand", nominal_guess(cell, np.random.default_rng(0)), cell.spec, UR5E,
        LimitsConfig(), np.array(HOME_Q), PlanSettings(views=4),
    )  # fmt: skip
    again = Plan.load(plan.write(tmp_path / "plan.json"))
    assert [v.q for v in again.views] == [v.q for v in plan.views]
    assert again.board == plan.board
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(PlanError, match="not a plan file"):
        Plan.load(tmp_path / "bad.json")
    with pytest.raises(PlanError, match="no such plan file"):
        Plan.load(tmp_path / "missing.json")


def test_a_board_out_of_reach_is_refused_with_what_to_do() -> None:
    cell = default_cell("eye_in_hand")
    guess = nominal_guess(cell, np.random.default_rng(0))
    guess["T_base_board"] = make_T(rotation([1, 0, 0], 180.0), [-2.5, 0.0, 0.0])  # 2.5 m away
    with pytest.raises(PlanError, match="closer to the robot"):
        make_plan(
            "eye_in_hand", guess, cell.spec, UR5E, LimitsConfig(), np.array(HOME_Q),
            PlanSettings(views=6),
        )  # fmt: skip


class _Recorder:
    """Passes every call to the simulated robot and keeps the setpoints it was sent."""

    def __init__(self, robot) -> None:
        self.robot = robot
        self.sent: list[np.ndarray] = []

    def servo(self, q: np.ndarray, gripper: float) -> None:
        self.sent.append(np.array(q))
        self.robot.servo(q, gripper)

    def __getattr__(self, name: str):
        return getattr(self.robot, name)


def _session(mode: str, settings: CaptureSettings | None = None):
    settings = settings or CaptureSettings()
    robot, camera, cell, clock = make_sim_cell(mode)
    recorder = _Recorder(robot)
    camera.start()
    session = Capture(
        recorder, camera, camera.intrinsics, UR5E, LimitsConfig(), cell.spec, settings,
        clock=clock, sleep=clock.sleep,
    )  # fmt: skip
    return session, recorder, robot, camera, cell


def _plan(cell, views: int) -> Plan:
    return make_plan(
        cell.mode, nominal_guess(cell, np.random.default_rng(0)), cell.spec, UR5E,
        LimitsConfig(), np.array(HOME_Q), PlanSettings(views=views),
    )  # fmt: skip


def test_capture_moves_only_through_the_filter_at_the_calibration_speed(tmp_path: Path) -> None:
    session, recorder, robot, camera, cell = _session(
        "eye_in_hand", CaptureSettings(speed_rad_s=0.3)
    )
    report = run_capture(
        session, plan_poses(_plan(cell, 3)), tmp_path, mode="eye_in_hand",
        camera_id={}, robot_id={},
    )  # fmt: skip
    camera.stop()
    assert report.aborted is None and len(report.views) == 3
    speeds = np.abs(np.diff(np.asarray(recorder.sent), axis=0)).max(axis=0) / UR5E.period_s
    assert speeds.max() <= 0.3 + 1e-9
    assert speeds.max() > 0.25  # it did move, at the cap
    state = RobotState()
    robot.read_state(state)
    assert np.abs(state.qd).max() < 1e-2  # stopped at the end


def test_a_protective_stop_mid_capture_stops_the_arm_and_keeps_the_views(tmp_path: Path) -> None:
    session, _, robot, camera, cell = _session("eye_in_hand")

    def on_view(k: int, record, diversity) -> None:
        if k == 1:
            robot.inject_protective_stop()

    report = run_capture(
        session, plan_poses(_plan(cell, 5)), tmp_path, mode="eye_in_hand",
        camera_id={}, robot_id={}, on_view=on_view,
    )  # fmt: skip
    camera.stop()
    assert report.aborted is not None and "protective stop" in report.aborted
    assert len(report.views) == 2
    kept = json.loads((tmp_path / "dataset.json").read_text())["views"]
    assert [v["image"] for v in kept] == ["view_000.png", "view_001.png"]
    assert all((tmp_path / v["image"]).is_file() for v in kept)
    state = RobotState()
    robot.read_state(state)
    assert np.abs(state.qd).max() < 1e-2


def test_hand_guided_views_command_nothing(tmp_path: Path) -> None:
    session, recorder, robot, camera, cell = _session("eye_in_hand")
    # Where a technician would have put the arm: the first planned view.
    q = np.asarray(_plan(cell, 3).views[0].q)
    robot.reset(q)
    report = run_capture(
        session, [None, None], tmp_path, mode="eye_in_hand", camera_id={}, robot_id={}
    )
    camera.stop()
    assert recorder.sent == []
    assert report.accepted == 2, [v.reason for v in report.views]


def test_a_view_taken_before_the_arm_settles_is_not_taken(tmp_path: Path) -> None:
    settings = CaptureSettings(settle_speed_rad_s=1e-12, settle_timeout_s=0.2)
    session, _, _, camera, cell = _session("eye_in_hand", settings)
    report = run_capture(
        session, [np.asarray(_plan(cell, 3).views[0].q)], tmp_path, mode="eye_in_hand",
        camera_id={}, robot_id={},
    )  # fmt: skip
    camera.stop()
    assert [v.reason for v in report.views] == ["the arm did not settle"]
    assert not (tmp_path / "view_000.png").exists()


def test_exact_rotation_ik_reaches_a_half_turn_the_small_angle_error_stalls_on() -> None:
    fk = ForwardKinematics(UR5E)
    start = np.array(HOME_Q)
    target = fk.flange_pose(start) @ make_T(rotation([1, 0, 0], 179.0), [0, 0, 0])
    target[:3, 3] = fk.flange_pose(start)[:3, 3]
    plain = InverseKinematics(UR5E)
    _, residual = plain.solve(target[:3, 3], target[:3, :3], start, iterations=200)
    exact = InverseKinematics(UR5E, exact_rotation=True)
    q, exact_residual = exact.solve(target[:3, 3], target[:3, :3], start, iterations=200)
    assert exact_residual < 1e-6
    assert residual == pytest.approx(plain.pose_error(_, target[:3, 3], target[:3, :3]))
    mm, deg = difference(fk.flange_pose(q), target)
    assert mm < 1e-3 and deg < 1e-3


def test_the_flow_from_the_command_line_on_the_simulated_cell(tmp_path: Path, capsys) -> None:
    from edgevla.cli import main

    plan, held_plan = tmp_path / "plan.json", tmp_path / "held.json"
    data, held, cal = tmp_path / "data", tmp_path / "held", tmp_path / "calibration.json"
    assert main(["calib", "plan", "--sim", "--views", "15", "--out", str(plan)]) == 0
    assert main(["calib", "capture", str(plan), "--out", str(data)]) == 0
    assert (
        main(["calib", "solve", str(data), "--out", str(cal), "--plot", str(tmp_path / "r.png")])
        == 0
    )
    assert (
        main(["calib", "plan", "--sim", "--views", "4", "--seed", "9", "--out", str(held_plan)])
        == 0
    )
    assert main(["calib", "capture", str(held_plan), "--out", str(held)]) == 0
    assert main(["calib", "verify", str(cal), str(held), "--previous", str(cal)]) == 0
    assert main(["calib", "show", str(cal), "--plot", str(tmp_path / "show.png")]) == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "15 views planned" in text and "15 of 15 views accepted" in text
    assert "no drift" in text
    assert (tmp_path / "r.png").stat().st_size > 0 and (tmp_path / "show.png").stat().st_size > 0
    # A technician's plan without the board's place is refused, naming the option.
    assert main(["calib", "plan", "--out", str(tmp_path / "x.json")]) == 1
    assert "--board-at" in " ".join(capsys.readouterr().err.split())


def test_a_moved_camera_shows_as_drift(tmp_path: Path, capsys) -> None:
    from edgevla.calibration import calfile
    from edgevla.cli import main

    capture_sim_dataset("eye_in_hand", tmp_path / "data", views=12, seed=1)
    cal = tmp_path / "now.json"
    solve_dataset(tmp_path / "data", cal)
    old = calfile.load(cal).data
    body = {k: v for k, v in old.items() if k != "sha256"}
    T = np.asarray(body["transforms"]["T_gripper_camera"])
    T[:3, 3] += [0.004, 0.0, 0.0]  # the camera sat 4 mm elsewhere last time
    body["transforms"] = {"T_gripper_camera": T.tolist()}
    calfile.write(tmp_path / "old.json", body)
    args = ["calib", "verify", str(cal), str(tmp_path / "data"), "--previous"]
    assert main([*args, str(tmp_path / "old.json")]) == 1
    assert "MOVED" in " ".join(capsys.readouterr().out.split())
    assert BoardSpec(**old["board"]) == BoardSpec()
