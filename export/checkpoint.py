"""Checkpoints: safetensors weights + config.json + the tokenizer, in one directory.

The action space, normalisation statistics and tokenizer travel with the weights so that a
bundle exported from a checkpoint needs nothing else.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import msgspec
from safetensors.torch import load_file, save_file
from tokenizers import Tokenizer

from edgevla.export.instruction_vocab import build_instruction_tokenizer
from edgevla.export.reference import DualSystemVLA, build_model
from edgevla.runtime.errors import ConfigError, EdgeVlaError
from edgevla.runtime.manifest import ActionSpace, Normalization
from edgevla.runtime.model_config import ModelConfig
from edgevla.runtime.tokenizer import vocabulary_problem

CHECKPOINT_FORMAT = "edgevla-checkpoint-v1"
WEIGHTS = "model.safetensors"
CONFIG = "config.json"
TOKENIZER = "tokenizer.json"


class CheckpointError(EdgeVlaError):
    """A checkpoint directory is incomplete or inconsistent."""


# State and action share one space: measured / commanded joint positions and gripper opening.
_UR5E_AXES = ["shoulder_pan", "shoulder_lift", "elbow", "wrist_1", "wrist_2", "wrist_3", "gripper"]
UR5E_ACTION_SPACE = ActionSpace(
    kind="joint_position",
    action_names=list(_UR5E_AXES),
    action_units=["rad"] * 6 + ["fraction_open"],
    state_names=list(_UR5E_AXES),
    step_period_s=0.05,
)

# Centred on the UR5e's upright "home" pose. Placeholder statistics for untrained weights;
# a trained checkpoint carries statistics of its own demonstrations.
_HOME = [0.0, -math.pi / 2, math.pi / 2, -math.pi / 2, -math.pi / 2, 0.0, 0.5]
_SPREAD = [0.6] * 6 + [0.5]
# System 1 offsets: a slice moves a few centiradians per 0.05 s step.
_S1_SPREAD = [0.05] * 6 + [0.05]


def placeholder_normalization(cfg: ModelConfig) -> Normalization:
    return Normalization(
        state_mean=_HOME,
        state_std=_SPREAD,
        action_mean=_HOME,
        action_std=_SPREAD,
        s1_delta_mean=[[0.0] * len(_HOME) for _ in range(cfg.s1_horizon)],
        s1_delta_std=[list(_S1_SPREAD) for _ in range(cfg.s1_horizon)],
    )


@dataclass
class ReferencePolicy:
    """A reference model with everything needed to export it."""

    model: DualSystemVLA
    action_space: ActionSpace
    normalization: Normalization
    tokenizer: Tokenizer
    origin: dict[str, object]

    @property
    def config(self) -> ModelConfig:
        return self.model.cfg


def init_policy(cfg: ModelConfig, seed: int) -> ReferencePolicy:
    """Untrained, deterministically initialised policy with UR5e action space."""
    tokenizer = build_instruction_tokenizer()
    problem = vocabulary_problem(tokenizer, cfg.vocab_size)
    if problem:
        raise ConfigError(f"instruction tokenizer for config '{cfg.name}': {problem}")
    return ReferencePolicy(
        model=build_model(cfg, seed),
        action_space=UR5E_ACTION_SPACE,
        normalization=placeholder_normalization(cfg),
        tokenizer=tokenizer,
        origin={"source": "init", "config": cfg.name, "seed": seed},
    )


def save_checkpoint(policy: ReferencePolicy, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    state = {k: v.contiguous() for k, v in policy.model.state_dict().items()}
    save_file(state, str(out / WEIGHTS))
    policy.tokenizer.save(str(out / TOKENIZER))
    config = {
        "format": CHECKPOINT_FORMAT,
        "model": policy.config.to_dict(),
        "action_space": msgspec.to_builtins(policy.action_space),
        "normalization": msgspec.to_builtins(policy.normalization),
        "origin": policy.origin,
    }
    (out / CONFIG).write_text(json.dumps(config, indent=2) + "\n")


def load_checkpoint(path: Path) -> ReferencePolicy:
    for name in (WEIGHTS, CONFIG, TOKENIZER):
        if not (path / name).is_file():
            raise CheckpointError(f"checkpoint {path}: {name} is missing")
    try:
        config = json.loads((path / CONFIG).read_text())
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"checkpoint {path / CONFIG}: not valid JSON ({exc})") from exc
    if config.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(
            f"checkpoint {path / CONFIG}: format {config.get('format')!r}, "
            f"expected {CHECKPOINT_FORMAT!r}"
        )
    try:
        cfg = ModelConfig.from_dict(config["model"])
        action_space = msgspec.convert(config["action_space"], ActionSpace)
        normalization = msgspec.convert(config["normalization"], Normalization)
    except (KeyError, ConfigError, msgspec.ValidationError) as exc:
        raise CheckpointError(f"checkpoint {path / CONFIG}: {exc}") from exc
    model = DualSystemVLA(cfg)
    weights = load_file(str(path / WEIGHTS))
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    found = {k: tuple(v.shape) for k, v in weights.items()}
    missing = sorted(expected.keys() - found.keys())
    unexpected = sorted(found.keys() - expected.keys())
    resized = [
        f"{k} {found[k]}≠{expected[k]}"
        for k in expected.keys() & found.keys()
        if found[k] != expected[k]
    ]
    if missing or unexpected or resized:
        raise CheckpointError(
            f"checkpoint {path / WEIGHTS}: weights do not fit config '{cfg.name}': "
            f"{len(missing)} missing {missing[:2]}, {len(unexpected)} unexpected "
            f"{unexpected[:2]}, {len(resized)} with another shape {sorted(resized)[:2]}"
        )
    try:
        tokenizer = Tokenizer.from_file(str(path / TOKENIZER))
    except Exception as exc:  # tokenizers raises a bare Exception
        raise CheckpointError(
            f"checkpoint {path / TOKENIZER}: not a tokenizers file ({exc})"
        ) from exc
    problem = vocabulary_problem(tokenizer, cfg.vocab_size)
    if problem:
        raise CheckpointError(f"checkpoint {path / TOKENIZER}: {problem}")
    model.load_state_dict(weights)
    return ReferencePolicy(
        model=model.eval(),
        action_space=action_space,
        normalization=normalization,
        tokenizer=tokenizer,
        origin={**config.get("origin", {}), "checkpoint": str(path)},
    )
