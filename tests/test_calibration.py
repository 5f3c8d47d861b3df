"""Hand-eye calibration: a synthetic cell with a hidden true mounting, the real ChArUco detector
and OpenCV's solvers; the calibration file and the runtime's refusal of a bad one."""

from __future__ import annotations

import datetime as dt
import json
import logging
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("cv2", reason="OpenCV is not installed (the calib extra)")

from edgevla.calibration import calfile
from edgevla.calibration.board import BoardError, BoardSpec, observe
from edgevla.calibration.handeye import CalibrationRefused, Observations, solve
from edgevla.calibration.pipeline import solve_dataset, verify, write_synthetic_dataset
from edgevla.calibration.synthetic import Camera, default_scene, plan_poses, render
from edgevla.calibration.transforms import difference

SPEC = BoardSpec()
CAM = Camera()


def _views(mode: str, count: int, seed: int, *, single_axis: bool = False):
    rng = np.random.default_rng(seed)
    scene = default_scene(mode, SPEC)
    poses = plan_poses(scene, count, rng, single_axis=single_axis)
    views = [
        observe(
            render(SPEC, CAM, scene.T_camera_board(P), 2.0, rng),
            SPEC,
            CAM.K,
            np.zeros(5),
            corner_noise_px=0.2,
            rng=rng,
        )
        for P in poses
    ]
    return scene, poses, views


@pytest.mark.parametrize("mode", ["eye_in_hand", "eye_to_hand"])
def test_the_solve_recovers_the_true_mounting(mode: str) -> None:
    """15 rendered views, 0.2 px of corner noise added to what the detector finds."""
    scene, poses, views = _views(mode, 15, seed=0)
    assert all(v.accepted for v in views), [v.reason for v in views]
    assert np.mean([v.rms_px for v in views]) > 0.15  # the noise is really there
    obs = Observations(
        [v.object_points for v in views], [v.image_points for v in views], CAM.K, np.zeros(5)
    )
    solution = solve(mode, poses, [v.T_camera_board for v in views], observations=obs)
    err_mm, err_deg = difference(solution.T, scene.X_true)
    assert err_mm <= 1.0 and err_deg <= 0.1, (err_mm, err_deg, solution.metrics)
    assert solution.name == ("T_gripper_camera" if mode == "eye_in_hand" else "T_base_camera")
    assert set(solution.methods) == {"PARK", "HORAUD", "TSAI", "SHAH"}
    m = solution.metrics
    assert m["reprojection_rms_px"] < 0.5 and m["leave_one_out_mm"] < 1.0


def test_rotations_about_one_axis_are_refused_naming_the_missing_motion() -> None:
    scene, poses, _ = _views("eye_in_hand", 15, seed=1, single_axis=True)
    exact = [scene.T_camera_board(P) for P in poses]  # even perfect data cannot help
    with pytest.raises(CalibrationRefused, match=r"degenerate motion.*one axis.*tilted about two"):
        solve("eye_in_hand", poses, exact)


def test_too_few_views_or_too_little_rotation_are_refused() -> None:
    scene, poses, _ = _views("eye_in_hand", 15, seed=2)
    exact = [scene.T_camera_board(P) for P in poses]
    with pytest.raises(CalibrationRefused, match="6 usable views; need at least 10"):
        solve("eye_in_hand", poses[:6], exact[:6])
    still = [poses[0]] * 12
    with pytest.raises(CalibrationRefused, match="barely turns"):
        solve("eye_in_hand", still, [exact[0]] * 12)


def test_impossible_board_parameters_are_named() -> None:
    with pytest.raises(BoardError, match="smaller than the square size"):
        BoardSpec(marker_m=0.05).build()
    with pytest.raises(BoardError, match="unknown ArUco dictionary 'DICT_9X9'"):
        BoardSpec(dictionary="DICT_9X9").build()
    with pytest.raises(BoardError, match=r"has 50 markers.*needs 60"):
        BoardSpec(squares_x=12, squares_y=10, dictionary="DICT_4X4_50").build()


@pytest.fixture(scope="module")
def solved(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("calib")
    truth = write_synthetic_dataset(root / "data", mode="eye_in_hand", views=15, seed=3)
    write_synthetic_dataset(root / "held", mode="eye_in_hand", views=5, seed=1003)
    solution, _, data = solve_dataset(root / "data", root / "cal.json")
    return root, truth, solution, data


def test_a_dataset_solves_into_a_checked_file(solved) -> None:
    root, truth, solution, _ = solved
    err_mm, err_deg = difference(solution.T, truth["X_true"])
    assert err_mm <= 1.0 and err_deg <= 0.1
    cal = calfile.load(root / "cal.json")
    np.testing.assert_allclose(cal.transform("T_gripper_camera"), solution.T)
    assert cal.data["dataset_sha256"] and cal.data["thresholds"]["min_poses"] == 10
    assert cal.camera["serial"] == "SIM-eye_in_hand" and cal.intrinsics.width == CAM.width
    held = verify(cal, root / "held")
    assert held["views"] == 5 and held["max_mm"] < 2.0


def test_a_wrong_board_in_the_dataset_is_named(solved, tmp_path: Path) -> None:
    root, *_ = solved
    data = tmp_path / "data"
    data.mkdir()
    meta = json.loads((root / "data" / "dataset.json").read_text())
    meta["board"]["dictionary"] = "DICT_4X4_100"  # printed with 5x5 markers
    for v in meta["views"]:
        (data / v["image"]).write_bytes((root / "data" / v["image"]).read_bytes())
    (data / "dataset.json").write_text(json.dumps(meta))
    with pytest.raises(calfile.CalibrationError, match=r"no board corners.*DICT_4X4_100"):
        solve_dataset(data, tmp_path / "cal.json")
    assert not (tmp_path / "cal.json").exists()


def test_a_tampered_or_mismatched_file_is_refused(solved, tmp_path: Path, caplog) -> None:
    root, *_ = solved
    good = json.loads((root / "cal.json").read_text())
    tampered = tmp_path / "tampered.json"
    edited = json.loads(json.dumps(good))
    edited["transforms"]["T_gripper_camera"][0][3] += 0.001  # one millimetre
    tampered.write_text(json.dumps(edited))
    with pytest.raises(calfile.CalibrationTampered, match="does not match its sha256"):
        calfile.load(tampered)
    with pytest.raises(calfile.CalibrationMissing, match="no calibration file"):
        calfile.load(tmp_path / "absent.json")
    cal = calfile.load(root / "cal.json")
    with pytest.raises(calfile.CalibrationMismatch, match=r"serial SIM-eye_in_hand.*123"):
        cal.check_camera("123", CAM.width, CAM.height)
    with pytest.raises(calfile.CalibrationMismatch, match=r"1280x960.*640x480"):
        cal.check_camera(None, 640, 480)
    old = {k: v for k, v in good.items() if k not in ("sha256", "schema")}
    old["created_utc"] = (dt.datetime.now(dt.timezone.utc) - dt.timedelta(days=200)).isoformat()
    calfile.write(tmp_path / "old.json", old)
    with caplog.at_level(logging.WARNING):
        calfile.load(tmp_path / "old.json")
    assert "200 days old" in caplog.text


def test_the_runtime_refuses_a_bad_calibration_before_opening_a_camera(
    solved, tmp_path: Path
) -> None:
    pytest.importorskip("pyrealsense2", reason="pyrealsense2 is not installed")
    from edgevla.cameras.realsense.hardware import make_realsense_cameras
    from edgevla.runtime.config import config_from_dict

    root, *_ = solved
    edited = json.loads((root / "cal.json").read_text())
    edited["camera"]["serial"] = "123622270081"
    tampered = tmp_path / "tampered.json"
    tampered.write_text(json.dumps(edited))

    def cameras(calibration: Path, width: int, height: int):
        raw = {
            "cameras": {
                "kind": "realsense",
                "names": ["wrist"],
                "serials": ["123622270081"],
                "width": width,
                "height": height,
                "calibrations": [str(calibration)],
            }
        }
        return make_realsense_cameras(config_from_dict(raw, "t").cameras, 32)

    with pytest.raises(calfile.CalibrationTampered):
        cameras(tampered, CAM.width, CAM.height)
    with pytest.raises(calfile.CalibrationMismatch, match="SIM-eye_in_hand, but 123622270081"):
        cameras(root / "cal.json", CAM.width, CAM.height)
    # A good file for this camera: its intrinsics become the camera's calibrated ones.
    matching = {k: v for k, v in edited.items() if k not in ("sha256", "schema")}
    calfile.write(tmp_path / "ok.json", matching)
    (cam,) = cameras(tmp_path / "ok.json", CAM.width, CAM.height)
    assert cam.settings.calibrated is not None and cam.settings.calibrated.fx == CAM.fx


def test_the_whole_flow_from_the_command_line(tmp_path: Path, capsys) -> None:
    from edgevla.cli import main

    out = tmp_path / "flow"
    assert main(["calib", "selftest", "--mode", "eye_to_hand", "--out", str(out)]) == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "PASS against the hidden truth" in text and "T_base_camera" in text
    for name in ("calibration.json", "residuals.png", "selftest.json"):
        assert (out / name).stat().st_size > 0
    report = json.loads((out / "selftest.json").read_text())
    assert report["passed"] and report["error_mm"] <= 1.0
    assert main(["calib", "show", str(out / "calibration.json")]) == 0
    assert main(["calib", "verify", str(out / "calibration.json"), str(out / "held-out")]) == 0
    bad = tmp_path / "degenerate"
    write_synthetic_dataset(bad, mode="eye_in_hand", views=15, single_axis=True)
    assert main(["calib", "solve", str(bad), "--out", str(tmp_path / "x.json")]) == 1
    assert "degenerate motion" in " ".join(capsys.readouterr().err.split())


def test_intrinsics_refit_agrees_with_true_ones_and_flags_wrong_ones(solved, tmp_path: Path):
    from edgevla.calibration.pipeline import refit_intrinsics

    root, *_ = solved
    good = refit_intrinsics(root / "data")
    assert good["views"] == 15 and good["focal_drift_pct"] < 0.5 and good["centre_drift_px"] < 3
    wrong = tmp_path / "wrong"
    wrong.mkdir()
    meta = json.loads((root / "data" / "dataset.json").read_text())
    meta["intrinsics"]["fx"] *= 1.03  # a factory calibration for another resolution, say
    meta["intrinsics"]["fy"] *= 1.03
    for v in meta["views"]:
        (wrong / v["image"]).write_bytes((root / "data" / v["image"]).read_bytes())
    (wrong / "dataset.json").write_text(json.dumps(meta))
    assert refit_intrinsics(wrong)["focal_drift_pct"] > 2.5


def test_doctor_reads_the_tcp_offset_from_a_controller() -> None:
    """Against the UR controller emulator, through ur_rtde: its TCP is the flange (no offset);
    a pose shifted by a 10 cm tool is caught."""
    pytest.importorskip("rtde_receive", reason="ur_rtde is not installed")
    import cv2

    from edgevla.calibration import doctor
    from edgevla.robots.ur.emulator import EmulatorConfig, EmulatorProcess

    with EmulatorProcess(EmulatorConfig()):
        checks = doctor.check_robot("127.0.0.1", "ur5e")
    assert [c.name for c in checks] == ["robot", "TCP offset"] and all(c.ok for c in checks), checks
    q = np.array([0.1, -1.2, 1.5, -1.9, -1.6, 0.3])
    from edgevla.runtime.kinematics import UR5E, ForwardKinematics

    flange = np.array(ForwardKinematics(UR5E).flange_pose(q))
    tool = flange @ np.array([[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0.1], [0, 0, 0, 1.0]])
    pose = np.concatenate([tool[:3, 3], cv2.Rodrigues(tool[:3, :3])[0].reshape(3)])
    mm, deg = doctor.tcp_offset(q, pose, "ur5e")
    assert mm == pytest.approx(100.0, abs=0.01) and deg < 1e-4
