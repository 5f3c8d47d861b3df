"""Rigid transforms as 4×4 matrices, named `T_parent_child` everywhere: `T_a_b @ p_b = p_a`."""

from __future__ import annotations

import numpy as np


def make_T(R: np.ndarray, t) -> np.ndarray:
    T = np.eye(4)
    T[:3, :3] = R
    T[:3, 3] = np.asarray(t, dtype=float).reshape(3)
    return T


def inv(T: np.ndarray) -> np.ndarray:
    R, t = T[:3, :3], T[:3, 3]
    return make_T(R.T, -R.T @ t)


def rotation(axis, degrees: float) -> np.ndarray:
    """Rotation by `degrees` about `axis` (Rodrigues)."""
    a = np.asarray(axis, dtype=float)
    a = a / np.linalg.norm(a)
    th = np.radians(degrees)
    k = np.array([[0, -a[2], a[1]], [a[2], 0, -a[0]], [-a[1], a[0], 0]])
    return np.eye(3) + np.sin(th) * k + (1 - np.cos(th)) * k @ k


def angle_deg(R: np.ndarray) -> float:
    """The angle of a rotation matrix, in degrees."""
    c = (np.trace(R) - 1) / 2
    return float(np.degrees(np.arccos(np.clip(c, -1.0, 1.0))))


def axis_angle(R: np.ndarray) -> tuple[np.ndarray, float]:
    """Unit axis and angle (degrees); the axis is arbitrary for a zero rotation."""
    import cv2

    rvec = cv2.Rodrigues(np.asarray(R, dtype=float))[0].reshape(3)
    angle = float(np.linalg.norm(rvec))
    axis = rvec / angle if angle > 1e-12 else np.array([0.0, 0.0, 1.0])
    return axis, float(np.degrees(angle))


def difference(A: np.ndarray, B: np.ndarray) -> tuple[float, float]:
    """(translation mm, rotation degrees) between two transforms."""
    D = inv(A) @ B
    return float(np.linalg.norm(A[:3, 3] - B[:3, 3]) * 1e3), angle_deg(D[:3, :3])


def mean_rotation(rotations: list[np.ndarray]) -> np.ndarray:
    """The chordal L2 mean: the rotation nearest the sum of the matrices."""
    U, _, Vt = np.linalg.svd(np.sum(rotations, axis=0))
    return U @ np.diag([1.0, 1.0, np.linalg.det(U @ Vt)]) @ Vt


def look_at(eye: np.ndarray, target: np.ndarray, roll_deg: float = 0.0) -> np.ndarray:
    """An OpenCV-convention camera pose (z forward, y down) at `eye` looking at `target`."""
    eye = np.asarray(eye, dtype=float)
    z = np.asarray(target, dtype=float) - eye
    z /= np.linalg.norm(z)
    x = np.cross(z, [0.0, 0.0, 1.0])  # image x horizontal: the world's up is image up
    x /= np.linalg.norm(x)
    y = np.cross(z, x)
    return make_T(np.column_stack([x, y, z]) @ rotation([0, 0, 1], roll_deg), eye)
