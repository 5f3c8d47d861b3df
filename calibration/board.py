"""The ChArUco target: its specification, and one view of it turned into a board pose or a
rejection that says why (docs/calibration.md).

OpenCV >= 4.7's ChArUco API (`CharucoBoard`, `CharucoDetector.detectBoard`,
`board.matchImagePoints`); poses by `solvePnPGeneric` with IPPE, which returns both solutions of
a planar target so that an ambiguous view (the board seen nearly face-on from far away, where
two tilts explain the corners equally well) can be refused instead of trusted.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from edgevla.runtime.errors import EdgeVlaError


class BoardError(EdgeVlaError):
    """The board's parameters are impossible, or do not match the board in the images."""


@dataclass(frozen=True)
class BoardSpec:
    squares_x: int = 7
    squares_y: int = 5
    square_m: float = 0.04
    marker_m: float = 0.03
    dictionary: str = "DICT_5X5_100"

    def build(self) -> cv2.aruco.CharucoBoard:
        if self.squares_x < 3 or self.squares_y < 3:
            raise BoardError(
                f"a ChArUco board needs at least 3 x 3 squares, not "
                f"{self.squares_x} x {self.squares_y}"
            )
        if not 0 < self.marker_m < self.square_m:
            raise BoardError(
                f"marker size {self.marker_m} m must be positive and smaller than "
                f"the square size {self.square_m} m"
            )
        code = getattr(cv2.aruco, self.dictionary, None)
        if not isinstance(code, int):
            raise BoardError(f"unknown ArUco dictionary {self.dictionary!r} (e.g. DICT_5X5_100)")
        dictionary = cv2.aruco.getPredefinedDictionary(code)
        markers = (self.squares_x * self.squares_y) // 2
        if markers > dictionary.bytesList.shape[0]:
            raise BoardError(
                f"{self.dictionary} has {dictionary.bytesList.shape[0]} markers; "
                f"a {self.squares_x} x {self.squares_y} board needs {markers}"
            )
        return cv2.aruco.CharucoBoard(
            (self.squares_x, self.squares_y), self.square_m, self.marker_m, dictionary
        )

    @property
    def centre(self) -> np.ndarray:
        """The pattern's centre in the board frame (its origin is a corner), metres."""
        return np.array([self.squares_x, self.squares_y, 0.0]) * (self.square_m / 2)

    @property
    def corners(self) -> int:
        return (self.squares_x - 1) * (self.squares_y - 1)


@dataclass(frozen=True)
class ViewThresholds:
    min_corners: int = 8
    max_rms_px: float = 1.0
    min_ambiguity_ratio: float = 1.5  # second IPPE solution's error / the first's
    min_sharpness: float = 20.0  # variance of the Laplacian over the board's area


@dataclass
class BoardView:
    """One image's verdict: a pose of the board in the camera frame, or why not."""

    accepted: bool
    reason: str
    T_camera_board: np.ndarray | None = None
    rms_px: float = float("nan")
    corners: int = 0
    ambiguity_ratio: float = float("nan")
    sharpness: float = float("nan")
    object_points: np.ndarray | None = None  # [n, 3] board frame, metres
    image_points: np.ndarray | None = None  # [n, 2] pixels


def observe(
    image: np.ndarray,
    spec: BoardSpec,
    K: np.ndarray,
    dist: np.ndarray,
    thresholds: ViewThresholds = ViewThresholds(),
    *,
    corner_noise_px: float = 0.0,
    rng: np.random.Generator | None = None,
) -> BoardView:
    """`corner_noise_px` adds Gaussian noise to the detected corners: for synthetic views only,
    to test a solve at a stated detector noise on top of what rendering leaves."""
    board = spec.build()
    gray = image if image.ndim == 2 else cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
    corners, ids, _, marker_ids = cv2.aruco.CharucoDetector(board).detectBoard(gray)
    n = 0 if ids is None else len(ids)
    if n < thresholds.min_corners:
        markers = 0 if marker_ids is None else len(marker_ids)
        hint = (
            " (markers seen but no corners: wrong board size or dictionary?)"
            if markers >= 4 and n == 0
            else ""
        )
        return BoardView(
            False, f"{n} corners found, need {thresholds.min_corners}{hint}", corners=n
        )
    if corner_noise_px > 0:
        rng = rng or np.random.default_rng()
        corners = corners + rng.normal(0.0, corner_noise_px, corners.shape).astype(corners.dtype)
    obj, img = board.matchImagePoints(corners, ids)
    hull = cv2.convexHull(img.reshape(-1, 2).astype(np.float32)).astype(np.int32)
    mask = np.zeros(gray.shape, np.uint8)
    cv2.fillConvexPoly(mask, hull, 1)
    sharpness = float(cv2.Laplacian(gray, cv2.CV_64F)[mask > 0].var())
    if sharpness < thresholds.min_sharpness:
        return BoardView(
            False,
            f"blurred (sharpness {sharpness:.0f} < "
            f"{thresholds.min_sharpness:.0f}): hold still or add light",
            corners=n,
            sharpness=sharpness,
        )
    ok, rvecs, tvecs, errors = cv2.solvePnPGeneric(obj, img, K, dist, flags=cv2.SOLVEPNP_IPPE)
    if not ok or len(rvecs) == 0:
        return BoardView(False, "no pose for these corners", corners=n, sharpness=sharpness)
    errors = np.asarray(errors).reshape(-1)
    rms = float(errors[0])
    ratio = float(errors[1] / max(errors[0], 1e-12)) if len(errors) > 1 else float("inf")
    T = np.eye(4)
    T[:3, :3] = cv2.Rodrigues(rvecs[0])[0]
    T[:3, 3] = np.asarray(tvecs[0]).reshape(3)
    view = BoardView(
        True, "ok", T, rms, n, ratio, sharpness, obj.reshape(-1, 3), img.reshape(-1, 2)
    )
    if rms > thresholds.max_rms_px:
        view.accepted, view.reason = (
            False,
            f"reprojection error {rms:.2f} px > "
            f"{thresholds.max_rms_px:g} px (wrong intrinsics, or a bent board?)",
        )
    elif ratio < thresholds.min_ambiguity_ratio:
        view.accepted, view.reason = (
            False,
            f"planar pose ambiguous (second solution's error "
            f"only {ratio:.2f}x the first): tilt the board more, or come closer",
        )
    return view
