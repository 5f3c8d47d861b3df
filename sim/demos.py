"""Demonstrations and value-labelled rollouts on disk: one `.npz` of arrays plus a JSON card.

A directory holds `samples.npz` (the arrays below, uncompressed so loading is one read) and
`dataset.json` (format tag, counts, shapes, how it was generated: task, seeds, expert settings,
library versions). `docs/datasets.md` is the reference. Everything here is numpy: the runtime side
can read a dataset (evaluation, inspection) without torch.

A *demonstration* sample is one moment of an episode: the camera frames and robot state then, the
instruction, and the expert's action chunk from that moment (absolute joint targets and gripper
opening, one row per `step_period_s`). A *value* sample is one System 2 plan of a policy rollout:
the observation, the chunk that was executed, and the episode's outcome as a discounted return.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgevla.runtime.errors import EdgeVlaError

DEMO_FORMAT = "edgevla-demos-v1"
VALUE_FORMAT = "edgevla-value-rollouts-v1"
ARRAYS = "samples.npz"
CARD = "dataset.json"


class DatasetError(EdgeVlaError):
    """A dataset directory is missing, of another format, or inconsistent."""


@dataclass
class DemoSet:
    """Expert demonstrations, one row per recorded moment."""

    images: np.ndarray  # uint8 [N, cameras, S, S, 3], RGB
    state: np.ndarray  # float32 [N, 7]: joint positions (rad), gripper opening (0..1)
    actions: np.ndarray  # float32 [N, H, 7]: the expert's chunk from this moment, absolute
    instruction_index: np.ndarray  # int16 [N] into `instructions`
    episode: np.ndarray  # int32 [N]: the episode's seed
    step: np.ndarray  # int32 [N]: action steps since the episode started
    instructions: list[str]
    step_period_s: float
    meta: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def instruction(self, i: int) -> str:
        return self.instructions[int(self.instruction_index[i])]


@dataclass
class ValueSet:
    """Policy rollouts, one row per System 2 plan, labelled with the episode's outcome."""

    images: np.ndarray  # uint8 [M, cameras, S, S, 3]
    state: np.ndarray  # float32 [M, 7]
    actions: np.ndarray  # float32 [M, H, 7]: the chunk that was executed, absolute
    returns: np.ndarray  # float32 [M]: γ^(seconds to success / horizon) on success, else 0
    instruction_index: np.ndarray  # int16 [M]
    episode: np.ndarray  # int32 [M]
    instructions: list[str]
    meta: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.images.shape[0])


_DEMO_ARRAYS = {
    "images": np.uint8,
    "state": np.float32,
    "actions": np.float32,
    "instruction_index": np.int16,
    "episode": np.int32,
    "step": np.int32,
}
_VALUE_ARRAYS = {
    "images": np.uint8,
    "state": np.float32,
    "actions": np.float32,
    "returns": np.float32,
    "instruction_index": np.int16,
    "episode": np.int32,
}


def _write(path: Path, fmt: str, arrays: dict[str, np.ndarray], card: dict[str, Any]) -> None:
    path.mkdir(parents=True, exist_ok=True)
    tmp = path / (ARRAYS + ".partial")
    with open(tmp, "wb") as f:
        np.savez(f, **arrays)
    tmp.replace(path / ARRAYS)
    shapes = {k: list(v.shape) for k, v in arrays.items()}
    (path / CARD).write_text(json.dumps({"format": fmt, "shapes": shapes, **card}, indent=2) + "\n")


def _read(path: Path, fmt: str, dtypes: dict[str, type]) -> tuple[dict[str, np.ndarray], dict]:
    path = Path(path)
    for name in (ARRAYS, CARD):
        if not (path / name).is_file():
            raise DatasetError(f"dataset {path}: {name} is missing")
    try:
        card = json.loads((path / CARD).read_text())
    except json.JSONDecodeError as exc:
        raise DatasetError(f"dataset {path / CARD}: not valid JSON ({exc})") from exc
    if card.get("format") != fmt:
        raise DatasetError(f"dataset {path}: format {card.get('format')!r}, expected {fmt!r}")
    try:
        with np.load(path / ARRAYS, allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in dtypes}
    except (KeyError, ValueError, OSError) as exc:
        raise DatasetError(f"dataset {path / ARRAYS}: unreadable ({exc})") from exc
    rows = {k: v.shape[0] for k, v in arrays.items()}
    if len(set(rows.values())) != 1:
        raise DatasetError(f"dataset {path}: arrays disagree on the number of rows: {rows}")
    for key, dtype in dtypes.items():
        if arrays[key].dtype != dtype:
            raise DatasetError(
                f"dataset {path}: {key} is {arrays[key].dtype}, expected {np.dtype(dtype)}"
            )
    count = len(card.get("instructions", []))
    if count == 0 or int(arrays["instruction_index"].max(initial=0)) >= count:
        raise DatasetError(f"dataset {path}: instruction_index points past the instruction list")
    return arrays, card


def save_demos(demos: DemoSet, path: Path) -> None:
    arrays = {k: np.asarray(getattr(demos, k), dtype=t) for k, t in _DEMO_ARRAYS.items()}
    card = {
        "samples": len(demos),
        "episodes": len(np.unique(demos.episode)),
        "instructions": demos.instructions,
        "step_period_s": demos.step_period_s,
        "meta": demos.meta,
    }
    _write(Path(path), DEMO_FORMAT, arrays, card)


def load_demos(path: Path) -> DemoSet:
    arrays, card = _read(Path(path), DEMO_FORMAT, _DEMO_ARRAYS)
    return DemoSet(
        **arrays,
        instructions=list(card["instructions"]),
        step_period_s=float(card["step_period_s"]),
        meta=card.get("meta", {}),
    )


def save_values(values: ValueSet, path: Path) -> None:
    arrays = {k: np.asarray(getattr(values, k), dtype=t) for k, t in _VALUE_ARRAYS.items()}
    card = {
        "samples": len(values),
        "episodes": len(np.unique(values.episode)),
        "instructions": values.instructions,
        "meta": values.meta,
    }
    _write(Path(path), VALUE_FORMAT, arrays, card)


def load_values(path: Path) -> ValueSet:
    arrays, card = _read(Path(path), VALUE_FORMAT, _VALUE_ARRAYS)
    return ValueSet(**arrays, instructions=list(card["instructions"]), meta=card.get("meta", {}))


def concat_demos(sets: list[DemoSet]) -> DemoSet:
    """One training set from several (demonstrations plus DAgger rows, say): instruction lists
    are merged and every row's index remapped; `meta["parts"]` keeps each set's card."""
    if not sets:
        raise DatasetError("no demonstration sets to combine")
    if len(sets) == 1:
        return sets[0]
    periods = {d.step_period_s for d in sets}
    if len(periods) != 1:
        raise DatasetError(f"demonstration sets disagree on step_period_s: {sorted(periods)}")
    shapes = {(d.images.shape[1:], d.actions.shape[1:], d.state.shape[1:]) for d in sets}
    if len(shapes) != 1:
        raise DatasetError(f"demonstration sets disagree on frame, chunk or state shapes: {shapes}")
    instructions = sorted({text for d in sets for text in d.instructions})
    where = {text: i for i, text in enumerate(instructions)}
    index = [
        np.array([where[t] for t in d.instructions], np.int16)[d.instruction_index] for d in sets
    ]
    tasks = {d.meta.get("task") for d in sets}
    return DemoSet(
        images=np.concatenate([d.images for d in sets]),
        state=np.concatenate([d.state for d in sets]),
        actions=np.concatenate([d.actions for d in sets]),
        instruction_index=np.concatenate(index),
        episode=np.concatenate([d.episode for d in sets]),
        step=np.concatenate([d.step for d in sets]),
        instructions=instructions,
        step_period_s=periods.pop(),
        meta={"task": tasks.pop() if len(tasks) == 1 else None, "parts": [d.meta for d in sets]},
    )
