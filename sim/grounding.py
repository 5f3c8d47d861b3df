"""Grounding labels for the touch task: which image patches show the named cube, and where it is.

Behaviour cloning alone left the tiny policy blind to the colour word: the word changes one
token of 142 and the expert's actions depend on it only through the target's position, so the
loss gave little reason to look. These labels let training ask the prefix directly where the
named cube is (docs/training.md, "Grounding"). They come from data every demonstration already
has (the frames and the episode seed), so no dataset needs regenerating.

The cube colours are saturated primaries on a tan table, a grey arm and a black gripper; a pixel
belongs to a cube when that cube's dominant channel exceeds both others by a ratio no other
surface in the scene reaches (the table's largest ratio, red over green, is 1.24).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from edgevla.sim.demos import DemoSet
from edgevla.sim.scene import CUBE_COLOURS, cube_layout

CHANNEL_RATIO = 1.4  # dominant channel ≥ 1.4 × each other channel
MIN_CHANNEL = 40  # darker pixels (deep shadow) carry no reliable colour
PATCH_FULL_PIXELS = 4  # a patch with this many target pixels is labelled fully "target"


@dataclass(frozen=True)
class GroundingLabels:
    """Per-sample labels aligned with a DemoSet's rows."""

    patch_target: np.ndarray  # float32 [N, cameras·patches] in [0, 1]
    target_xy: np.ndarray  # float32 [N, 2]: the named cube's table position (world, metres)


def instruction_colour(instruction: str) -> str:
    """The cube colour an instruction names; ValueError when it names none or several."""
    words = set(instruction.lower().replace(",", " ").split())
    named = [colour for colour in CUBE_COLOURS if colour in words]
    if len(named) != 1:
        raise ValueError(f"instruction {instruction!r} names {len(named)} cube colours, not one")
    return named[0]


def colour_mask(images: np.ndarray, colour: str) -> np.ndarray:
    """bool [..., S, S]: pixels of `colour`'s cube in uint8 RGB frames [..., S, S, 3]."""
    channel = int(np.argmax(CUBE_COLOURS[colour][:3]))
    rgb = images.astype(np.int32)
    dominant = rgb[..., channel]
    others = np.delete(rgb, channel, axis=-1)
    # Integer form of dominant ≥ ratio · other, exact for uint8 inputs.
    ratio_ok = (10 * dominant[..., None] >= round(10 * CHANNEL_RATIO) * others).all(-1)
    return ratio_ok & (dominant >= MIN_CHANNEL)


def patch_fraction(mask: np.ndarray, patch: int) -> np.ndarray:
    """float32 [..., (S/patch)²]: target pixels per patch / PATCH_FULL_PIXELS, capped at 1.

    Patches are ordered row-major like the model's `patchify`.
    """
    *lead, s, s2 = mask.shape
    if s != s2 or s % patch:
        raise ValueError(f"frames of {s}x{s2} do not split into {patch}-pixel patches")
    g = s // patch
    counts = mask.reshape(*lead, g, patch, g, patch).sum(axis=(-1, -3))
    return np.minimum(counts.reshape(*lead, g * g) / PATCH_FULL_PIXELS, 1.0).astype(np.float32)


def grounding_labels(demos: DemoSet, patch: int) -> GroundingLabels:
    """Labels for every row of `demos` (touch-task demonstrations)."""
    colours = [instruction_colour(text) for text in demos.instructions]
    n, cams = demos.images.shape[:2]
    patch_target = np.zeros((n, cams * (demos.images.shape[2] // patch) ** 2), np.float32)
    for index, colour in enumerate(colours):
        rows = np.flatnonzero(demos.instruction_index == index)
        for start in range(0, len(rows), 4096):  # bounded memory for the int32 copy
            part = rows[start : start + 4096]
            fraction = patch_fraction(colour_mask(demos.images[part], colour), patch)
            patch_target[part] = fraction.reshape(len(part), -1)
    target_xy = np.zeros((n, 2), np.float32)
    for seed in np.unique(demos.episode):
        rows = np.flatnonzero(demos.episode == seed)
        colour = colours[int(demos.instruction_index[rows[0]])]
        target_xy[rows] = cube_layout(int(seed))[colour][:2]
    return GroundingLabels(patch_target=patch_target, target_xy=target_xy)
