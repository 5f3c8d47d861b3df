"""Fitting a camera's frame to the policy's square input: centre crop, then area resize.

The policy was trained on square images of the bundle's `image_size`; a RealSense streams 4:3 or
16:9. A centre crop keeps the optical axis in the middle and the pixels square; the resize
averages whole blocks when the crop is a multiple of the output (480 → 96 is 5×5 blocks), which
is what an area filter does, and samples bilinearly otherwise.
"""

from __future__ import annotations

import numpy as np


def centre_crop(image: np.ndarray) -> np.ndarray:
    """The largest centred square of an [H, W, ...] image (a view)."""
    h, w = image.shape[:2]
    side = min(h, w)
    top, left = (h - side) // 2, (w - side) // 2
    return image[top : top + side, left : left + side]


def fit_square(image: np.ndarray, size: int) -> np.ndarray:
    """[H, W, C] uint8 or [H, W] float → [size, size(, C)] of the same dtype."""
    if size <= 0:
        raise ValueError(f"output size must be > 0, got {size}")
    square = centre_crop(image)
    side = square.shape[0]
    if side == size:
        return np.ascontiguousarray(square)
    if side % size == 0:
        k = side // size
        blocks = square.reshape(size, k, size, k, *square.shape[2:]).astype(np.float32)
        out = blocks.mean(axis=(1, 3))
    else:
        # Pixel centres of the output, in input pixel coordinates.
        pos = (np.arange(size) + 0.5) * side / size - 0.5
        pos = np.clip(pos, 0, side - 1)
        i0 = np.floor(pos).astype(int)
        i1 = np.minimum(i0 + 1, side - 1)
        f = (pos - i0).astype(np.float32)
        sq = square.astype(np.float32)
        rows = sq[i0] * _bcast(1 - f, sq.ndim) + sq[i1] * _bcast(f, sq.ndim)
        fc = f.reshape((1, size) + (1,) * (sq.ndim - 2))
        out = rows[:, i0] * (1 - fc) + rows[:, i1] * fc
    if np.issubdtype(image.dtype, np.integer):
        info = np.iinfo(image.dtype)
        return np.clip(np.rint(out), info.min, info.max).astype(image.dtype)
    return out.astype(image.dtype)


def _bcast(v: np.ndarray, ndim: int) -> np.ndarray:
    return v.reshape((-1,) + (1,) * (ndim - 1))
