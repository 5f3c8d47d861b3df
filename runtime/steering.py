"""Activation steering: what the prefix graphs' `keep_mask` and `steer_bias` inputs carry, and
the bias System 2 adds to the action expert's residual.

Every prefix graph takes, per decoder layer, a scale for each FFN neuron (`keep_mask`, 1 keeps
the neuron) and a bias added to the residual stream entering the layer (`steer_bias`). The
neutral values (ones, zeros) leave the model exactly as exported. A bundle may carry named
directions (`optimizations.steering`); `--steer NAME=ALPHA` adds alpha times a direction.

A direction at site "expert" is added to what the action expert's blocks return (`expert_step`'s
`residual` output) and the velocity is taken through `expert_cached`, which reads exactly that
sum; no graph needs another input. Without such a direction, or at alpha 0, System 2 runs as
it does unsteered, bit for bit.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from edgevla.runtime.errors import InvalidSetting
from edgevla.runtime.manifest import SteeringDirection
from edgevla.runtime.model_config import ModelConfig


@dataclass(frozen=True)
class SteeringInputs:
    keep_mask: np.ndarray  # float32 [layers, ffn_dim]
    steer_bias: np.ndarray  # float32 [layers, d_model]
    # float32 [chunk_len, expert_width] added to the action expert's residual; None: unsteered.
    expert_bias: np.ndarray | None = None


def site_shapes(cfg: ModelConfig) -> dict[str, tuple[tuple[int, int], tuple[str, str]]]:
    """Each steering site's vector shape for `cfg`, and what its two axes are."""
    return {
        "prefix": ((cfg.n_layers, cfg.d_model), ("layers", "d_model")),
        "expert": ((cfg.chunk_len, cfg.expert_width), ("chunk_len", "expert_width")),
    }


def neutral(cfg: ModelConfig) -> SteeringInputs:
    return SteeringInputs(
        keep_mask=np.ones((cfg.n_layers, cfg.ffn_dim), dtype=np.float32),
        steer_bias=np.zeros((cfg.n_layers, cfg.d_model), dtype=np.float32),
    )


def parse_steer(items: Sequence[str]) -> dict[str, float]:
    """`["speed=0.5", …]` → {"speed": 0.5}; a malformed item is refused naming it."""
    alphas: dict[str, float] = {}
    for item in items:
        name, sep, value = item.partition("=")
        try:
            alpha = float(value)
        except ValueError:
            alpha = math.nan
        if not sep or not name or not math.isfinite(alpha):
            raise InvalidSetting("steer", f"{item!r} must be NAME=ALPHA with a finite ALPHA")
        if name in alphas:
            raise InvalidSetting("steer", f"{name!r} is given twice")
        alphas[name] = alpha
    return alphas


def steering_inputs(
    cfg: ModelConfig, directions: Sequence[SteeringDirection], alphas: Mapping[str, float]
) -> SteeringInputs:
    """The graph inputs for `alphas` over the bundle's `directions` (unknown names refused)."""
    by_name = {d.name: d for d in directions}
    unknown = sorted(set(alphas) - set(by_name))
    if unknown:
        have = sorted(by_name) or "none"
        raise InvalidSetting("steer", f"unknown direction(s) {unknown}; this bundle has {have}")
    inputs = neutral(cfg)
    expert = np.zeros(site_shapes(cfg)["expert"][0], dtype=np.float32)
    targets = {"prefix": inputs.steer_bias, "expert": expert}
    for name, alpha in alphas.items():
        direction = by_name[name]
        target = targets.get(direction.site)
        if target is None:
            raise InvalidSetting(f"steer.{name}", f"unknown site {direction.site!r}")
        vectors = np.asarray(direction.vectors, dtype=np.float32)
        if vectors.shape != target.shape:
            raise InvalidSetting(
                f"steer.{name}",
                f"{direction.site} direction is {list(vectors.shape)}, the model needs "
                f"{list(target.shape)}",
            )
        target += np.float32(alpha) * vectors
    if not expert.any():
        return inputs
    return SteeringInputs(inputs.keep_mask, inputs.steer_bias, expert)
