"""Datasets, the solve of a dataset into a calibration file, verification, the synthetic selftest.

A dataset is a folder: `dataset.json` (mode, board, camera identity and intrinsics, and for each
view its image file and the robot's `T_base_gripper`) and the images. `calib capture` writes one
from a robot (`capture.py`, the MuJoCo cell's or a real one); `write_synthetic_dataset` writes one
from the pinhole cell, with the true answer kept apart. Both go through the same `solve_dataset`.
"""

from __future__ import annotations

import datetime as dt
import importlib.metadata
import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from edgevla.calibration import calfile
from edgevla.calibration.board import BoardSpec, BoardView, observe
from edgevla.calibration.handeye import (
    Observations,
    Solution,
    Thresholds,
    board_in_fixed_frame,
    solve,
)
from edgevla.calibration.synthetic import Camera, default_scene, plan_poses, render
from edgevla.calibration.transforms import difference, inv, make_T, mean_rotation
from edgevla.runtime.devices import CameraIntrinsics


def intrinsics_dict(i: CameraIntrinsics) -> dict[str, Any]:
    """The dataset's and the calibration file's `intrinsics`."""
    return {
        "width": i.width,
        "height": i.height,
        "fx": i.fx,
        "fy": i.fy,
        "ppx": i.ppx,
        "ppy": i.ppy,
        "model": i.model,
        "coeffs": list(i.coeffs),
    }


def write_synthetic_dataset(
    out: Path,
    *,
    mode: str,
    views: int,
    noise_grey: float = 2.0,
    seed: int = 0,
    spec: BoardSpec | None = None,
    single_axis: bool = False,
) -> dict[str, Any]:
    """Render `views` views of the synthetic cell into `out`; returns the hidden truth."""
    spec = spec or BoardSpec()
    rng = np.random.default_rng(seed)
    cam = Camera()
    scene = default_scene(mode, spec)
    poses = plan_poses(scene, views, rng, single_axis=single_axis)
    out.mkdir(parents=True, exist_ok=True)
    records = []
    for k, T_bg in enumerate(poses):
        name = f"view_{k:03d}.png"
        cv2.imwrite(str(out / name), render(spec, cam, scene.T_camera_board(T_bg), noise_grey, rng))
        records.append({"image": name, "T_base_gripper": T_bg.tolist()})
    meta = {
        "mode": mode,
        "board": asdict(spec),
        "camera": {
            "name": "sim",
            "serial": f"SIM-{mode}",
            "width": cam.width,
            "height": cam.height,
        },
        "robot": {"model": "ur5e", "serial": "SIM"},
        "intrinsics": intrinsics_dict(
            CameraIntrinsics(cam.width, cam.height, cam.fx, cam.fy, *cam.K[:2, 2])
        ),
        "views": records,
    }
    (out / "dataset.json").write_text(json.dumps(meta, indent=1) + "\n")
    return {
        "X_true": scene.X_true,
        "T_fixed": scene.T_fixed,
        "name": ("T_gripper_camera" if mode == "eye_in_hand" else "T_base_camera"),
    }


def load_dataset(folder: Path) -> tuple[dict[str, Any], list[np.ndarray], list[bytes]]:
    meta_path = folder / "dataset.json"
    if not meta_path.is_file():
        raise calfile.CalibrationError(f"{folder}: no dataset.json (not a calibration dataset)")
    meta = json.loads(meta_path.read_text())
    poses, images = [], []
    for v in meta["views"]:
        T = np.asarray(v["T_base_gripper"], dtype=float)
        if T.shape != (4, 4) or not np.allclose(T[3], [0, 0, 0, 1]):
            raise calfile.CalibrationError(
                f"{folder}: view {v['image']}: T_base_gripper is not a 4x4 rigid transform"
            )
        poses.append(T)
        images.append((folder / v["image"]).read_bytes())
    return meta, poses, images


def camera_matrix(fx: float, fy: float, ppx: float, ppy: float) -> np.ndarray:
    return np.array([[fx, 0, ppx], [0, fy, ppy], [0, 0, 1.0]])


def observe_images(
    images: list[bytes], spec: BoardSpec, K: np.ndarray, dist: np.ndarray
) -> list[BoardView]:
    """Every encoded image's verdict, in order."""
    return [
        observe(cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_GRAYSCALE), spec, K, dist)
        for data in images
    ]


def solve_dataset(
    folder: Path, out_file: Path, thresholds: Thresholds | None = None
) -> tuple[Solution, list[BoardView], dict[str, Any]]:
    """Detect the board in every view, solve, and write the calibration file; raises
    CalibrationRefused (nothing is written then)."""
    thresholds = thresholds or Thresholds()
    meta, poses, images = load_dataset(folder)
    spec = BoardSpec(**meta["board"])
    i = meta["intrinsics"]
    K = camera_matrix(i["fx"], i["fy"], i["ppx"], i["ppy"])
    dist = np.asarray(i["coeffs"], dtype=float)
    verdicts = observe_images(images, spec, K, dist)
    used = [(T_bg, v) for T_bg, v in zip(poses, verdicts, strict=True) if v.accepted]
    used_bg = [T_bg for T_bg, _ in used]
    used_cb = [v.T_camera_board for _, v in used]
    if sum(v.corners for v in verdicts) == 0:
        raise calfile.CalibrationError(
            f"{folder}: no board corners in any view: is the board {spec.squares_x}x"
            f"{spec.squares_y} squares of {spec.square_m} m with {spec.dictionary} markers?"
        )
    observations = Observations(
        [v.object_points for _, v in used], [v.image_points for _, v in used], K, dist
    )
    solution = solve(meta["mode"], used_bg, used_cb, thresholds, observations=observations)
    body = {
        "created_utc": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "tool": {
            "edgevla": importlib.metadata.version("edgevla"),
            "opencv": cv2.__version__,
            "numpy": np.__version__,
        },
        "robot": meta["robot"],
        "camera": meta["camera"],
        "mode": meta["mode"],
        "board": meta["board"],
        "intrinsics": meta["intrinsics"],
        "transforms": {solution.name: solution.T.tolist()},
        "method": solution.method,
        "metrics": solution.metrics,
        "thresholds": asdict(thresholds),
        "views": {
            "total": len(verdicts),
            "used": len(used_bg),
            "rejected": {f"{k:03d}": v.reason for k, v in enumerate(verdicts) if not v.accepted},
        },
        "dataset_sha256": calfile.dataset_sha256(poses, images),
    }
    data = calfile.write(out_file, body)
    return solution, verdicts, data


def verify(cal: calfile.Calibration, folder: Path) -> dict[str, float]:
    """Held-out views: the board pose the calibration predicts from the robot pose against the
    one observed. The board's fixed pose is taken from the held-out views' own average (so a
    moved board does not count as error)."""
    meta, poses, images = load_dataset(folder)
    spec = BoardSpec(**meta["board"])
    i = cal.intrinsics
    K = camera_matrix(i.fx, i.fy, i.ppx, i.ppy)
    mode = cal.data["mode"]
    X = cal.transform("T_gripper_camera" if mode == "eye_in_hand" else "T_base_camera")
    verdicts = observe_images(images, spec, K, np.asarray(i.coeffs))
    seen = [(T_bg, v) for T_bg, v in zip(poses, verdicts, strict=True) if v.accepted]
    if len(seen) < 2:
        raise calfile.CalibrationError(f"{folder}: fewer than 2 usable held-out views")
    boards = [board_in_fixed_frame(mode, X, a, v.T_camera_board) for a, v in seen]
    fixed = make_T(
        mean_rotation([B[:3, :3] for B in boards]), np.mean([B[:3, 3] for B in boards], axis=0)
    )
    errors, pixels = [], []
    for T_bg, view in seen:
        predicted = (
            (inv(X) @ inv(T_bg) @ fixed) if mode == "eye_in_hand" else (inv(X) @ T_bg @ fixed)
        )
        errors.append(difference(predicted, view.T_camera_board))
        rvec = cv2.Rodrigues(predicted[:3, :3])[0]
        proj, _ = cv2.projectPoints(
            view.object_points, rvec, predicted[:3, 3], K, np.asarray(i.coeffs)
        )
        pixels.append(np.linalg.norm(proj.reshape(-1, 2) - view.image_points, axis=1))
    e = np.asarray(errors)
    px = np.concatenate(pixels)
    # Positions and reprojection are what verify judges: a single view's rotation is noisy
    # (about 0.35° at 0.2 px of corner noise), so its error is reported, not judged.
    return {
        "views": len(seen),
        "max_mm": float(e[:, 0].max()),
        "rms_mm": float(np.sqrt(np.mean(e[:, 0] ** 2))),
        "max_deg": float(e[:, 1].max()),
        "reprojection_rms_px": float(np.sqrt(np.mean(px**2))),
    }


def plot(cal: calfile.Calibration, solution: Solution | None, path: Path) -> Path:
    """Per-view residuals of the board's recomputed pose (a PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    m = cal.data["metrics"]
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    if solution is not None:
        axes[0].bar(range(len(solution.per_view_mm)), solution.per_view_mm, color="tab:blue")
        axes[1].bar(range(len(solution.per_view_deg)), solution.per_view_deg, color="tab:orange")
    th = cal.data["thresholds"]
    axes[0].axhline(th["max_target_spread_mm"], color="red", ls="--", lw=1, label="limit (RMS)")
    axes[1].axhline(th["max_target_spread_deg"], color="red", ls="--", lw=1, label="limit (RMS)")
    axes[0].set(
        title=f"board position spread, RMS {m['target_spread_mm']:.2f} mm",
        xlabel="view",
        ylabel="mm",
    )
    axes[1].set(
        title=f"board rotation spread, RMS {m['target_spread_deg']:.3f}°",
        xlabel="view",
        ylabel="degrees",
    )
    for ax in axes:
        ax.legend(loc="upper right", fontsize=8)
    name = next(iter(cal.data["transforms"]))
    fig.suptitle(
        f"{name} by {cal.data['method']}: methods agree within "
        f"{m['method_disagreement_mm']:.2f} mm / {m['method_disagreement_deg']:.3f}°, "
        f"leave-one-out {m['leave_one_out_mm']:.2f} mm",
        fontsize=9,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def refit_intrinsics(folder: Path) -> dict[str, Any]:
    """The camera's intrinsics refitted from a dataset's board views, against the ones the
    dataset states (the factory's): RMS, focal and centre drift."""
    meta, _, images = load_dataset(folder)
    spec = BoardSpec(**meta["board"])
    board = spec.build()
    i = meta["intrinsics"]
    K0 = camera_matrix(i["fx"], i["fy"], i["ppx"], i["ppy"])
    dist0 = np.asarray(i["coeffs"], dtype=float)
    obj_points, img_points = [], []
    for data in images:
        gray = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_GRAYSCALE)
        corners, ids, _, _ = cv2.aruco.CharucoDetector(board).detectBoard(gray)
        if ids is not None and len(ids) >= 8:
            obj, img = board.matchImagePoints(corners, ids)
            obj_points.append(obj.astype(np.float32))
            img_points.append(img.astype(np.float32))
    if len(obj_points) < 5:
        raise calfile.CalibrationError(
            f"{folder}: {len(obj_points)} views with the board; a refit needs 5 or more"
        )
    flags = cv2.CALIB_USE_INTRINSIC_GUESS | cv2.CALIB_FIX_K3 | cv2.CALIB_ZERO_TANGENT_DIST
    rms, K, dist, _, _ = cv2.calibrateCamera(
        obj_points, img_points, (i["width"], i["height"]), K0.copy(), dist0.copy(), flags=flags
    )
    return {
        "views": len(obj_points),
        "rms_px": float(rms),
        "fx": float(K[0, 0]),
        "fy": float(K[1, 1]),
        "ppx": float(K[0, 2]),
        "ppy": float(K[1, 2]),
        "focal_drift_pct": float(
            max(abs(K[0, 0] / K0[0, 0] - 1), abs(K[1, 1] / K0[1, 1] - 1)) * 100
        ),
        "centre_drift_px": float(np.hypot(K[0, 2] - K0[0, 2], K[1, 2] - K0[1, 2])),
        "distortion": [float(d) for d in np.asarray(dist).reshape(-1)],
    }
