"""The dual-system VLA's architecture hyper-parameters and the graph signatures they imply.

This module is the single source of truth for the names, shapes and dtypes of every exported
graph: the exporter builds graphs to these signatures and the runtime refuses a bundle whose
graphs disagree with them. It is torch-free so the robot computer can import it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import msgspec

from edgevla.runtime.errors import ConfigError

GRAPH_NAMES = ("prefix", "expert_step", "expert_cached", "value", "system1")
# Graphs a bundle has only when exported with the option that needs them.
OPTIONAL_GRAPHS = ("prefix_reuse",)
PRECISIONS = ("fp32", "fp16")


@dataclass(frozen=True)
class ModelConfig:
    """Sizes of the reference dual-system VLA (Hume on a pi0-style backbone)."""

    name: str
    # Observation and action space.
    num_cameras: int
    image_size: int  # square frames, pixels
    patch_size: int
    state_dim: int
    action_dim: int
    chunk_len: int  # H: action steps per chunk
    max_instruction_tokens: int
    vocab_size: int
    # Vision encoder (ViT).
    vit_width: int
    vit_depth: int
    vit_heads: int
    vit_mlp_dim: int
    # Prefix decoder (RMSNorm, RoPE, SwiGLU, grouped-query attention).
    d_model: int
    n_layers: int
    n_heads: int
    n_kv_heads: int
    head_dim: int
    ffn_dim: int
    # Flow-matching action expert: one layer per prefix layer, attending to that layer's cache.
    expert_width: int
    expert_ffn_dim: int
    # Value-query head: two critics over the first `value_horizon` steps of a candidate.
    value_horizon: int
    value_hidden: int
    # System 1: light reactive denoiser over a `s1_horizon`-step slice of the plan.
    s1_horizon: int
    s1_width: int
    s1_depth: int
    s1_heads: int
    rope_theta: float = 10_000.0

    def __post_init__(self) -> None:
        positive = {k: v for k, v in asdict(self).items() if isinstance(v, int | float)}
        for key, value in positive.items():
            if value <= 0:
                raise ConfigError(f"model config '{self.name}': {key} must be > 0, got {value}")
        checks = [
            (self.image_size % self.patch_size == 0, "image_size must be a multiple of patch_size"),
            (self.n_heads % self.n_kv_heads == 0, "n_heads must be a multiple of n_kv_heads"),
            (self.vit_width % self.vit_heads == 0, "vit_width must be a multiple of vit_heads"),
            (self.s1_width % self.s1_heads == 0, "s1_width must be a multiple of s1_heads"),
            (self.head_dim % 2 == 0, "head_dim must be even (RoPE rotates pairs)"),
            (self.expert_width % 2 == 0, "expert_width must be even (time embedding)"),
            (self.s1_width % 2 == 0, "s1_width must be even (time embedding)"),
            (self.value_horizon <= self.chunk_len, "value_horizon must be <= chunk_len"),
            (self.s1_horizon <= self.chunk_len, "s1_horizon must be <= chunk_len"),
        ]
        for ok, message in checks:
            if not ok:
                raise ConfigError(f"model config '{self.name}': {message}")

    @property
    def patches_per_camera(self) -> int:
        return (self.image_size // self.patch_size) ** 2

    @property
    def num_visual_tokens(self) -> int:
        return self.num_cameras * self.patches_per_camera

    @property
    def prefix_len(self) -> int:
        """Visual tokens, instruction tokens, one state token and one value-query token."""
        return self.num_visual_tokens + self.max_instruction_tokens + 2

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Any) -> ModelConfig:
        if isinstance(data, dict):
            unknown = sorted(set(data) - set(cls.__dataclass_fields__))
            if unknown:
                raise ConfigError(f"model config has unknown fields {unknown}")
        try:
            return msgspec.convert(data, cls)
        except msgspec.ValidationError as exc:
            # msgspec wraps errors raised by __post_init__; don't repeat their prefix.
            text = str(exc)
            message = text if text.startswith("model config") else f"model config: {text}"
            raise ConfigError(message) from exc


@dataclass(frozen=True)
class TensorSpec:
    name: str
    shape: tuple[int, ...]
    dtype: str  # numpy dtype name: float32, float16, int64, uint8, bool


@dataclass(frozen=True)
class GraphSpec:
    name: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]


def cache_dtype(precision: str) -> str:
    """The prefix KV cache crosses between graphs in the compute precision (fp16: half size)."""
    if precision not in PRECISIONS:
        raise ConfigError(f"precision must be 'fp32' or 'fp16', got {precision!r}")
    return "float16" if precision == "fp16" else "float32"


def graph_specs(
    cfg: ModelConfig,
    candidates: int,
    precision: str,
    keep_tokens: int | None = None,
    recompute_tokens: int | None = None,
) -> dict[str, GraphSpec]:
    """Static-shape signatures of the graphs for `candidates` (N) System 2 candidates.

    `keep_tokens` K (visual-token pruning): the prefix holds K of the visual tokens, so the
    cache is K + T + 2 long. `recompute_tokens` R (visual-token reuse): adds `prefix_reuse`,
    which takes the previous cache and recomputes R visual tokens. The two do not combine.
    """
    if candidates < 1:
        raise ConfigError(f"candidates must be >= 1, got {candidates}")
    v_tokens = cfg.num_visual_tokens
    for name, value in (("keep_tokens", keep_tokens), ("recompute_tokens", recompute_tokens)):
        if value is not None and not 1 <= value <= v_tokens:
            raise ConfigError(f"{name} must be in [1, {v_tokens}] visual tokens, got {value}")
    if keep_tokens is not None and recompute_tokens is not None:
        raise ConfigError("visual-token pruning and visual-token reuse do not combine")
    kv = cache_dtype(precision)
    n, h, a = candidates, cfg.chunk_len, cfg.action_dim
    s, c, t = cfg.image_size, cfg.num_cameras, cfg.max_instruction_tokens
    kept = v_tokens if keep_tokens is None else keep_tokens
    length = kept + t + 2
    cache_shape = (cfg.n_layers, 1, cfg.n_kv_heads, length, cfg.head_dim)
    images = TensorSpec("images", (1, c, s, s, 3), "uint8")
    state = TensorSpec("state", (1, cfg.state_dim), "float32")
    prefix_k = TensorSpec("prefix_k", cache_shape, kv)
    prefix_v = TensorSpec("prefix_v", cache_shape, kv)
    prefix_mask = TensorSpec("prefix_mask", (1, length), "bool")
    value_summary = TensorSpec("value_summary", (1, cfg.d_model), "float32")
    noisy_actions = TensorSpec("noisy_actions", (n, h, a), "float32")
    time = TensorSpec("time", (n,), "float32")
    velocity = TensorSpec("velocity", (n, h, a), "float32")
    # What the expert's blocks added to the action tokens: reused between refreshes.
    residual = TensorSpec("residual", (n, h, cfg.expert_width), "float32")
    prefix_inputs = (
        images,
        TensorSpec("instruction_ids", (1, t), "int64"),
        TensorSpec("instruction_mask", (1, t), "bool"),
        state,
        # Activation steering: FFN neuron scales and a residual-stream bias per prefix layer.
        TensorSpec("keep_mask", (cfg.n_layers, cfg.ffn_dim), "float32"),
        TensorSpec("steer_bias", (cfg.n_layers, cfg.d_model), "float32"),
    )
    prefix_outputs = (
        prefix_k,
        prefix_v,
        prefix_mask,
        value_summary,
        TensorSpec("token_scores", (1, v_tokens), "float32"),
        TensorSpec("kept_tokens", (1, kept), "int64"),
    )
    specs = {
        "prefix": GraphSpec("prefix", inputs=prefix_inputs, outputs=prefix_outputs),
        "expert_step": GraphSpec(
            "expert_step",
            inputs=(prefix_k, prefix_v, prefix_mask, noisy_actions, time),
            outputs=(velocity, residual),
        ),
        "expert_cached": GraphSpec(
            "expert_cached",
            inputs=(noisy_actions, time, residual),
            outputs=(velocity,),
        ),
        "value": GraphSpec(
            "value",
            inputs=(value_summary, TensorSpec("actions", (n, h, a), "float32")),
            outputs=(TensorSpec("q", (n,), "float32"), TensorSpec("q_critics", (n, 2), "float32")),
        ),
        "system1": GraphSpec(
            "system1",
            inputs=(
                images,
                state,
                TensorSpec("noisy_actions", (1, cfg.s1_horizon, a), "float32"),
                TensorSpec("time", (1,), "float32"),
            ),
            outputs=(TensorSpec("velocity", (1, cfg.s1_horizon, a), "float32"),),
        ),
    }
    if recompute_tokens is not None:
        specs["prefix_reuse"] = GraphSpec(
            "prefix_reuse",
            inputs=(
                *prefix_inputs,
                TensorSpec("cache_k", cache_shape, kv),
                TensorSpec("cache_v", cache_shape, kv),
                TensorSpec("recompute_tokens", (1, recompute_tokens), "int64"),
            ),
            outputs=prefix_outputs,
        )
    return specs
