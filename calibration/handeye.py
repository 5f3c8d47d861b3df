"""Hand-eye solve with the diagnostics that decide whether to trust it (docs/calibration.md).

Eye in hand: the camera rides on the gripper and the board is fixed in the cell; the unknown is
`T_gripper_camera`. Eye to hand: the camera is fixed and the board rides on the gripper; the
unknown is `T_base_camera`. OpenCV's `calibrateHandEye` solves both: given base→gripper instead of
gripper→base it returns camera→base (NOTES.md).

Residuals alone miss a degenerate pose set, so a solution is accepted only when
- the robot's relative rotations turn about axes that span 3-D (a set that only rolls about one
  axis cannot fix the translation along it), named in the refusal;
- several methods agree;
- the board's pose in its fixed frame, recomputed from every view, holds still (target
  consistency);
- leaving out any one view, or resampling them, moves the answer little.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import cv2
import numpy as np

from edgevla.calibration.transforms import (
    angle_deg,
    axis_angle,
    difference,
    inv,
    make_T,
    mean_rotation,
)
from edgevla.runtime.errors import EdgeVlaError

METHODS = {
    "PARK": cv2.CALIB_HAND_EYE_PARK,
    "HORAUD": cv2.CALIB_HAND_EYE_HORAUD,
    "TSAI": cv2.CALIB_HAND_EYE_TSAI,
    "DANIILIDIS": cv2.CALIB_HAND_EYE_DANIILIDIS,
    "SHAH": None,  # robot-world-hand-eye (calibrateRobotWorldHandEye), solved jointly
}
MODES = ("eye_in_hand", "eye_to_hand")


class CalibrationRefused(EdgeVlaError):
    """The data cannot give a trustworthy transform; the message says what is missing."""


@dataclass(frozen=True)
class Thresholds:
    min_poses: int = 10
    min_rotation_deg: float = 15.0  # the largest relative rotation must exceed this
    min_axis_spread: float = 0.25  # smallest / largest singular value of the rotation axes
    # The closed-form methods disagree with each other at the noise level (1-2 mm at 0.2 px).
    max_method_disagreement_mm: float = 3.0
    max_method_disagreement_deg: float = 0.3
    # The board's recomputed position, RMS (NOTES.md: < 1.5 mm in the field). Its rotation is
    # each view's PnP rotation, noisy by ~0.35° at 0.2 px: a coarse check only; the reprojection
    # error of the refined solution is the fine one.
    max_target_spread_mm: float = 1.5
    max_target_spread_deg: float = 1.0
    max_reprojection_px: float = 1.0
    max_loo_mm: float = 2.0
    max_loo_deg: float = 0.2
    bootstrap: int = 20


@dataclass
class Solution:
    mode: str
    name: str  # T_gripper_camera or T_base_camera
    T: np.ndarray
    method: str
    methods: dict[str, np.ndarray] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)
    per_view_mm: list[float] = field(default_factory=list)
    per_view_deg: list[float] = field(default_factory=list)


def _solve_one(mode: str, method: str, T_bg: list[np.ndarray], T_cb: list[np.ndarray]):
    if method == "SHAH":
        # world = the board's fixed frame: base→world and gripper→camera in one.
        if mode == "eye_in_hand":
            R_w2c = [T[:3, :3] for T in T_cb]
            t_w2c = [T[:3, 3] for T in T_cb]
            R_b2g = [inv(T)[:3, :3] for T in T_bg]
            t_b2g = [inv(T)[:3, 3] for T in T_bg]
            _, _, R_g2c, t_g2c = cv2.calibrateRobotWorldHandEye(
                R_w2c, t_w2c, R_b2g, t_b2g, method=cv2.CALIB_ROBOT_WORLD_HAND_EYE_SHAH
            )
            return inv(make_T(R_g2c, t_g2c))  # T_gripper_camera
        # Eye to hand: T_camera_board = T_camera_base · T_base_gripper · T_gripper_board has the
        # same form with the roles of base and gripper swapped: OpenCV's "base→gripper" is our
        # T_base_gripper itself, and its "gripper→camera" our T_camera_base.
        _, _, R_c_b, t_c_b = cv2.calibrateRobotWorldHandEye(
            [T[:3, :3] for T in T_cb],
            [T[:3, 3] for T in T_cb],
            [T[:3, :3] for T in T_bg],
            [T[:3, 3] for T in T_bg],
            method=cv2.CALIB_ROBOT_WORLD_HAND_EYE_SHAH,
        )
        return inv(make_T(R_c_b, t_c_b))  # T_base_camera
    grip = T_bg if mode == "eye_in_hand" else [inv(T) for T in T_bg]
    R, t = cv2.calibrateHandEye(
        [T[:3, :3] for T in grip],
        [T[:3, 3] for T in grip],
        [T[:3, :3] for T in T_cb],
        [T[:3, 3] for T in T_cb],
        method=METHODS[method],
    )
    return make_T(R, t)


def board_in_fixed_frame(mode: str, X: np.ndarray, T_bg: np.ndarray, T_cb: np.ndarray):
    """The board's pose in its fixed frame (base for eye in hand, gripper for eye to hand) as
    one view sees it through the solution X."""
    if mode == "eye_in_hand":
        return T_bg @ X @ T_cb
    return inv(T_bg) @ X @ T_cb


def _spread(mode: str, X: np.ndarray, T_bg, T_cb) -> tuple[float, float, list[float], list[float]]:
    boards = [board_in_fixed_frame(mode, X, a, b) for a, b in zip(T_bg, T_cb, strict=True)]
    mean_t = np.mean([B[:3, 3] for B in boards], axis=0)
    mm = [float(np.linalg.norm(B[:3, 3] - mean_t) * 1e3) for B in boards]
    R_mean = mean_rotation([B[:3, :3] for B in boards])
    deg = [angle_deg(R_mean.T @ B[:3, :3]) for B in boards]
    return _rms(mm), _rms(deg), mm, deg


def _rms(values: list[float]) -> float:
    return float(np.sqrt(np.mean(np.square(values))))


@dataclass(frozen=True)
class Observations:
    """What the views saw, for the refinement: each view's board corners (board frame) and
    where they were detected (pixels), with the camera's intrinsics."""

    object_points: list[np.ndarray]
    image_points: list[np.ndarray]
    K: np.ndarray
    dist: np.ndarray


def _twist(T: np.ndarray, p: np.ndarray) -> np.ndarray:
    R = cv2.Rodrigues(np.asarray(p[:3], dtype=float))[0]
    return T @ make_T(R, p[3:])


def refine(
    mode: str,
    X0: np.ndarray,
    T_bg: list[np.ndarray],
    T_cb: list[np.ndarray],
    obs: Observations,
    iterations: int = 15,
) -> tuple[np.ndarray, float]:
    """Gauss-Newton on the reprojection error of every corner in every view over the unknown
    and the board's fixed pose together; returns (X, RMS px). The closed-form methods weigh
    each view's PnP pose equally, however noisy its rotation; this weighs what was measured."""
    boards = [board_in_fixed_frame(mode, X0, a, b) for a, b in zip(T_bg, T_cb, strict=True)]
    F0 = make_T(
        mean_rotation([B[:3, :3] for B in boards]), np.mean([B[:3, 3] for B in boards], axis=0)
    )

    def residuals(p: np.ndarray) -> np.ndarray:
        X, F = _twist(X0, p[:6]), _twist(F0, p[6:])
        out = []
        for T, obj, img in zip(T_bg, obs.object_points, obs.image_points, strict=True):
            T_cb = inv(X) @ inv(T) @ F if mode == "eye_in_hand" else inv(X) @ T @ F
            rvec = cv2.Rodrigues(T_cb[:3, :3])[0]
            proj, _ = cv2.projectPoints(obj, rvec, T_cb[:3, 3], obs.K, obs.dist)
            out.append((proj.reshape(-1, 2) - img).reshape(-1))
        return np.concatenate(out)

    p = np.zeros(12)
    r = residuals(p)
    for _ in range(iterations):
        J = np.empty((len(r), 12))
        for k in range(12):
            step = np.zeros(12)
            step[k] = 1e-6
            J[:, k] = (residuals(p + step) - r) / 1e-6
        delta, *_ = np.linalg.lstsq(J, -r, rcond=None)
        p_new = p + delta
        r_new = residuals(p_new)
        if r_new @ r_new >= r @ r:
            break
        p, r = p_new, r_new
        if np.abs(delta).max() < 1e-10:
            break
    return _twist(X0, p[:6]), float(np.sqrt(np.mean(r**2)) * np.sqrt(2))


def rotation_diversity(T_bg: list[np.ndarray]) -> tuple[float, float, np.ndarray]:
    """(largest relative rotation in degrees, axis spread, dominant axis) of the gripper's
    relative rotations between all pairs of poses, axes in the first pose's gripper frame."""
    axes, largest = [], 0.0
    for i in range(len(T_bg)):
        for j in range(i + 1, len(T_bg)):
            R = T_bg[i][:3, :3].T @ T_bg[j][:3, :3]
            axis, angle = axis_angle(R)
            largest = max(largest, angle)
            if angle > 2.0:
                axes.append(T_bg[i][:3, :3] @ axis * np.sign(axis[np.argmax(np.abs(axis))]))
    if len(axes) < 2:
        return largest, 0.0, np.array([0.0, 0.0, 1.0])
    _, s, Vt = np.linalg.svd(np.asarray(axes))
    return largest, float(s[-1] / s[0]), Vt[0]


def solve(
    mode: str,
    T_base_gripper: list[np.ndarray],
    T_camera_board: list[np.ndarray],
    thresholds: Thresholds = Thresholds(),
    *,
    methods: tuple[str, ...] = ("PARK", "HORAUD", "TSAI", "SHAH"),
    observations: Observations | None = None,
    rng: np.random.Generator | None = None,
) -> Solution:
    """The hand-eye transform with its diagnostics; raises CalibrationRefused."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, not {mode!r}")
    n = len(T_base_gripper)
    if n != len(T_camera_board):
        raise ValueError("one board pose per robot pose")
    th = thresholds
    if n < th.min_poses:
        raise CalibrationRefused(f"{n} usable views; need at least {th.min_poses} (15-25 is usual)")
    largest, spread, dominant = rotation_diversity(T_base_gripper)
    if largest < th.min_rotation_deg:
        raise CalibrationRefused(
            f"the tool barely turns between views (largest relative rotation {largest:.1f}° < "
            f"{th.min_rotation_deg:g}°): tilt it by 20-30° between views"
        )
    if spread < th.min_axis_spread:
        d = np.round(dominant, 2)
        raise CalibrationRefused(
            f"degenerate motion: the tool's rotations are nearly all about one axis ({d[0]:+.2f},"
            f" {d[1]:+.2f}, {d[2]:+.2f} in the base frame; axis spread {spread:.2f} < "
            f"{th.min_axis_spread:g}). Add views tilted about two axes perpendicular to it."
        )
    results = {m: _solve_one(mode, m, T_base_gripper, T_camera_board) for m in methods}
    # TSAI can return the identity on weak data (NOTES.md): never let it be the answer.
    results = {
        m: X
        for m, X in results.items()
        if not (np.allclose(X[:3, :3], np.eye(3)) and np.linalg.norm(X[:3, 3]) < 1e-9)
    }
    if not results:
        raise CalibrationRefused("every method returned the identity: the data carry nothing")
    scored = {m: _spread(mode, X, T_base_gripper, T_camera_board)[:2] for m, X in results.items()}
    best = min(scored, key=lambda m: scored[m][0] + scored[m][1] * 10)
    X_closed = results[best]
    worst_mm = max(difference(X_closed, Y)[0] for Y in results.values())
    worst_deg = max(difference(X_closed, Y)[1] for Y in results.values())

    def estimate(idx: list[int]) -> np.ndarray:
        bg = [T_base_gripper[i] for i in idx]
        cb = [T_camera_board[i] for i in idx]
        Y = _solve_one(mode, best, bg, cb)
        if observations is None:
            return Y
        sub = Observations(
            [observations.object_points[i] for i in idx],
            [observations.image_points[i] for i in idx],
            observations.K,
            observations.dist,
        )
        return refine(mode, Y, bg, cb, sub)[0]

    reprojection = float("nan")
    X = X_closed
    if observations is not None:
        X, reprojection = refine(mode, X_closed, T_base_gripper, T_camera_board, observations)
    t_rms, r_rms, per_mm, per_deg = _spread(mode, X, T_base_gripper, T_camera_board)
    loo_mm, loo_deg = 0.0, 0.0
    for k in range(n):
        dm, dd = difference(X, estimate([i for i in range(n) if i != k]))
        loo_mm, loo_deg = max(loo_mm, dm), max(loo_deg, dd)
    rng = rng or np.random.default_rng(0)
    boot = []
    for _ in range(th.bootstrap):
        pick = [int(i) for i in rng.integers(0, n, n)]
        if len(set(pick)) < 3:
            continue
        try:
            boot.append(difference(X, estimate(pick)))
        except cv2.error:
            continue
    boot_arr = np.asarray(boot) if boot else np.zeros((1, 2))
    metrics = {
        "views": n,
        "largest_rotation_deg": largest,
        "axis_spread": spread,
        "method_disagreement_mm": worst_mm,
        "method_disagreement_deg": worst_deg,
        "target_spread_mm": t_rms,
        "target_spread_deg": r_rms,
        "leave_one_out_mm": loo_mm,
        "leave_one_out_deg": loo_deg,
        "bootstrap_std_mm": float(np.std(boot_arr[:, 0])),
        "bootstrap_std_deg": float(np.std(boot_arr[:, 1])),
        "reprojection_rms_px": reprojection,
    }
    checks = [
        (
            worst_mm <= th.max_method_disagreement_mm
            and worst_deg <= th.max_method_disagreement_deg,
            f"the methods disagree by {worst_mm:.2f} mm / {worst_deg:.3f}° (allowed "
            f"{th.max_method_disagreement_mm:g} mm / {th.max_method_disagreement_deg:g}°)",
        ),
        (
            t_rms <= th.max_target_spread_mm and r_rms <= th.max_target_spread_deg,
            f"the board does not hold still through the solution: spread {t_rms:.2f} mm / "
            f"{r_rms:.3f}° RMS (allowed {th.max_target_spread_mm:g} mm / "
            f"{th.max_target_spread_deg:g}°): robot poses and images out of step, or the board"
            " moved",
        ),
        (
            loo_mm <= th.max_loo_mm and loo_deg <= th.max_loo_deg,
            f"one view moves the answer by {loo_mm:.2f} mm / {loo_deg:.3f}° (allowed "
            f"{th.max_loo_mm:g} mm / {th.max_loo_deg:g}°): a bad view, or too few",
        ),
    ]
    checks.append(
        (
            not reprojection > th.max_reprojection_px,
            f"the refined solution reprojects the corners {reprojection:.2f} px RMS off (allowed "
            f"{th.max_reprojection_px:g} px): wrong intrinsics, a bent board, or poses out of step",
        )
    )
    for ok, why in checks:
        if not ok:
            raise CalibrationRefused(why)
    name = "T_gripper_camera" if mode == "eye_in_hand" else "T_base_camera"
    method = f"{best}+refined" if observations is not None else best
    return Solution(mode, name, X, method, results, metrics, per_mm, per_deg)
