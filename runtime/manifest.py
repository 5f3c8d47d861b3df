"""The bundle manifest: what a bundle holds and how it was made (docs/bundle-format.md)."""

from __future__ import annotations

import itertools
import math
from typing import Any

import msgspec

from edgevla.runtime.errors import InvalidSetting

# 2: System 1 sees per-patch frame tokens; parity gates Q and robot units by max abs error and
# gates the choice (`parity.choice`); the action space's kind and units are checked.
# 3: System 1 works on the plan slice as offsets from the current state, normalized per row
# (`normalization.s1_delta_mean/std`); a version-2 System 1 read absolute targets.
# 4: the `expert_cached` graph and `expert_step`'s `residual` output (action-expert caching,
# `sampling.expert_cache_every`); `optimizations` records how the model was pruned.
# 5: the prefix graphs take `keep_mask` and `steer_bias` (activation steering) and return
# `kept_tokens`; `optimizations` gains token pruning, token reuse (the `prefix_reuse` graph) and
# steering directions; `reuse` holds the runtime's token- and action-reuse settings.
# 6: a steering direction names its `site`: the prefix's residual stream (as in 5) or the action
# expert's, added to what the expert's blocks return before its final norm.
# 7: action-expert caching by an explicit schedule (`sampling.expert_full_steps`) and with
# linear extrapolation of the cached output (`sampling.expert_cache_extrapolation`).
SCHEMA_VERSION = 7
MANIFEST_NAME = "manifest.json"
# What a skipped Euler step uses under action-expert caching (runtime/expert_cache.py).
EXTRAPOLATIONS = ("hold", "linear")


class _Strict(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=False):
    """Unknown fields are refused: a field this runtime does not understand may change behaviour."""


class TensorEntry(_Strict):
    name: str
    shape: list[int]
    dtype: str


class GraphEntry(_Strict):
    file: str
    inputs: list[TensorEntry]
    outputs: list[TensorEntry]
    data_file: str | None = None  # weights outside the graph file (graphs past 2 GiB)


class FileEntry(_Strict):
    sha256: str
    bytes: int


class ActionSpace(_Strict):
    """Absolute joint-position targets plus a gripper opening, one row per chunk step."""

    kind: str
    action_names: list[str]
    action_units: list[str]
    state_names: list[str]
    step_period_s: float


class Normalization(_Strict):
    """Affine statistics: normalized = (x - mean) / std, per state and action dimension.

    System 1 has units of its own: row k of its slice is the offset of that row's target from
    the current state, normalized by `s1_delta_mean[k]` / `s1_delta_std[k]` ([s1_horizon][A]),
    so that its re-noise level θ1 is a fraction of a slice's typical motion rather than of the
    whole workspace. None only in checkpoints trained before System 1 had these units; the
    bundle loader and the exporter refuse it.
    """

    state_mean: list[float]
    state_std: list[float]
    action_mean: list[float]
    action_std: list[float]
    s1_delta_mean: list[list[float]] | None = None
    s1_delta_std: list[list[float]] | None = None


class TokenizerEntry(_Strict):
    file: str
    max_tokens: int


class Sampling(_Strict):
    """Defaults for System 2 and System 1 sampling that the graphs were validated with."""

    candidates: int
    denoise_steps: int
    start_time_min: float
    start_time_max: float
    noise_temperature: float
    s1_steps: int
    s1_theta: float
    # Recompute the action expert's blocks on every k-th Euler step and reuse their summed
    # output in between (EfficientVLA's action-head caching); 1 recomputes every step.
    expert_cache_every: int
    # Or the 0-based Euler steps on which the blocks run, 0 first (then expert_cache_every is 1).
    expert_full_steps: list[int] | None = None
    # What a cached step uses: "hold" the last computed output, or "linear", the line through
    # the last two (runtime/expert_cache.py).
    expert_cache_extrapolation: str = "hold"


def validate_sampling(sampling: Sampling, where: str = "sampling") -> None:
    """Refuse sampling settings the runtime cannot honour; the error names `<where>.<field>`.

    One set of rules for the bundle loader, the policy's own overrides and the exporter.
    """
    s = sampling
    for field in ("candidates", "denoise_steps", "s1_steps", "expert_cache_every"):
        value = getattr(s, field)
        if not isinstance(value, int) or isinstance(value, bool):
            raise InvalidSetting(f"{where}.{field}", f"{value!r} must be an integer")
    for field in ("start_time_min", "start_time_max", "noise_temperature", "s1_theta"):
        value = getattr(s, field)
        if (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or not math.isfinite(value)
        ):
            raise InvalidSetting(f"{where}.{field}", f"{value!r} must be a finite number")
    rules = [
        ("candidates", s.candidates >= 1, "must be >= 1"),
        ("denoise_steps", s.denoise_steps >= 1, "must be >= 1"),
        ("start_time_min", 0.0 < s.start_time_min <= s.start_time_max, "must be in (0, max]"),
        ("start_time_max", s.start_time_max <= 1.0, "must be <= 1"),
        ("noise_temperature", s.noise_temperature > 0.0, "must be > 0"),
        ("s1_steps", s.s1_steps >= 1, "must be >= 1"),
        ("s1_theta", 0.0 < s.s1_theta <= 1.0, "must be in (0, 1]"),
        ("expert_cache_every", s.expert_cache_every >= 1, "must be >= 1"),
    ]
    for field, ok, rule in rules:
        if not ok:
            raise InvalidSetting(f"{where}.{field}", f"{getattr(s, field)!r} {rule}")
    if s.expert_cache_extrapolation not in EXTRAPOLATIONS:
        raise InvalidSetting(
            f"{where}.expert_cache_extrapolation",
            f"{s.expert_cache_extrapolation!r} is not 'hold' or 'linear'",
        )
    steps = s.expert_full_steps
    if steps is not None:
        field = f"{where}.expert_full_steps"
        if not all(isinstance(k, int) and not isinstance(k, bool) for k in steps):
            raise InvalidSetting(field, f"{steps!r} must be integers")
        if not steps or steps[0] != 0:
            raise InvalidSetting(field, f"{steps!r} must start with step 0")
        if any(b <= a for a, b in itertools.pairwise(steps)):
            raise InvalidSetting(field, f"{steps!r} must be strictly increasing")
        if steps[-1] >= s.denoise_steps:
            raise InvalidSetting(
                field, f"{steps!r}: steps are 0 … {s.denoise_steps - 1} (denoise_steps)"
            )
        if s.expert_cache_every != 1:
            raise InvalidSetting(
                field, "an explicit schedule replaces expert_cache_every, which must then be 1"
            )


class LayerPruning(_Strict):
    """Prefix layers removed at export (with the action-expert blocks that read them)."""

    source_layers: int  # the unpruned model's prefix depth
    removed: list[int]  # indices into the unpruned model's layers
    redundancy: list[float]  # per source layer: mean cosine of its input and output
    plan_cosine: float  # worst plan cosine against the unpruned model on the calibration set
    min_cosine: float  # the fidelity gate the export applied
    cuts_tried: dict[str, float]  # layers removed → that cut's plan cosine
    calibration_observations: int


class TokenPruning(_Strict):
    """Visual-token pruning: the prefix graph keeps the `keep_tokens` visual tokens that the
    token selector scores highest on the current frame (top-k inside the graph)."""

    keep_tokens: int
    visual_tokens: int
    scorer: str  # "selector": the instruction-conditioned token-selector head


class TokenReuse(_Strict):
    """Visual-token reuse (VLA-Cache): the `prefix_reuse` graph recomputes `recompute_tokens`
    visual tokens of the previous frame's cache (a static bucket) and reuses the rest."""

    recompute_tokens: int
    visual_tokens: int


class SteeringDirection(_Strict):
    """A named direction in a residual stream; `--steer NAME=ALPHA` adds alpha · vectors.

    site "prefix": vectors [layers][d_model], row l added to the input of prefix layer l.
    site "expert": vectors [chunk_len][expert_width], row h added to action token h's residual
    after the action expert's last block (before its final norm), on every Euler step.
    """

    name: str
    method: str  # how it was found, in words
    vectors: list[list[float]]
    calibration_rows: int
    # The contrast's own measure on the calibration rows (e.g. mean speed of each group).
    contrast: dict[str, float]
    site: str = "prefix"


class Optimizations(_Strict):
    """What the graphs were built with beyond the model itself. Runtime knobs that every bundle
    supports (action-expert caching) live in `sampling`; reuse settings live in `reuse`."""

    layer_pruning: LayerPruning | None = None
    token_pruning: TokenPruning | None = None
    token_reuse: TokenReuse | None = None
    steering: list[SteeringDirection] = []


class Reuse(_Strict):
    """Runtime settings of visual-token reuse and action reuse (runtime/reuse.py).

    Token reuse runs only in bundles with the `prefix_reuse` graph; action reuse (FlashVLA)
    skips a System 2 plan, re-anchoring the previous one, when the last two computed plans kept
    nearly the same top-scored visual tokens and agreed on the actions they share.
    """

    token_refresh_every: int = 4  # a full prefix pass at least every k-th plan
    token_relevant: int = 8  # the selector's top tokens are always recomputed
    max_frame_gap_s: float = 0.5  # a longer gap between planned frames drops all reuse state
    action_reuse_max: int = 0  # consecutive plans that may be skipped; 0: off
    action_top_tokens: int = 16  # the kept-token set compared between plans
    action_min_overlap: float = 0.8  # Jaccard overlap of those sets
    action_max_change_rad: float = 0.02  # joint disagreement of the two plans' shared steps


def validate_reuse(reuse: Reuse, visual_tokens: int, where: str = "reuse") -> None:
    r = reuse
    ints = ("token_refresh_every", "token_relevant", "action_reuse_max", "action_top_tokens")
    for field in ints:
        value = getattr(r, field)
        if not isinstance(value, int) or isinstance(value, bool):
            raise InvalidSetting(f"{where}.{field}", f"{value!r} must be an integer")
    for field in ("max_frame_gap_s", "action_min_overlap", "action_max_change_rad"):
        value = getattr(r, field)
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise InvalidSetting(f"{where}.{field}", f"{value!r} must be a number")
        if not math.isfinite(value):
            raise InvalidSetting(f"{where}.{field}", f"{value!r} must be finite")
    rules = [
        ("token_refresh_every", r.token_refresh_every >= 1, "must be >= 1"),
        (
            "token_relevant",
            0 <= r.token_relevant <= visual_tokens,
            f"must be in [0, {visual_tokens}]",
        ),
        ("max_frame_gap_s", r.max_frame_gap_s > 0, "must be > 0"),
        ("action_reuse_max", r.action_reuse_max >= 0, "must be >= 0"),
        (
            "action_top_tokens",
            1 <= r.action_top_tokens <= visual_tokens,
            f"must be in [1, {visual_tokens}]",
        ),
        ("action_min_overlap", 0.0 <= r.action_min_overlap <= 1.0, "must be in [0, 1]"),
        ("action_max_change_rad", r.action_max_change_rad >= 0, "must be >= 0"),
    ]
    for field, ok, rule in rules:
        if not ok:
            raise InvalidSetting(f"{where}.{field}", f"{getattr(r, field)!r} {rule}")


class OutputParity(_Strict):
    cosine: float
    max_abs_err: float
    passed: bool


class ChoiceParity(_Strict):
    """Whether the exported plan chose PyTorch's candidate (see runtime.parity_thresholds)."""

    agreement: float  # fraction of observations where both chose the same candidate
    decisive: int  # observations whose PyTorch top-two Q margin exceeded `choice_margin`
    passed: bool  # on every decisive observation both chose the same candidate


class ParityReport(_Strict):
    precision: str
    observations: int
    thresholds: dict[str, float]
    graphs: dict[str, dict[str, OutputParity]]
    plan: dict[str, OutputParity]
    react: dict[str, OutputParity]
    choice: ChoiceParity
    passed: bool


class Manifest(_Strict):
    schema_version: int
    created_utc: str
    model: dict[str, Any]
    action_space: ActionSpace
    normalization: Normalization
    tokenizer: TokenizerEntry
    sampling: Sampling
    precision: str
    graphs: dict[str, GraphEntry]
    files: dict[str, FileEntry]
    export_options: dict[str, Any]
    library_versions: dict[str, str]
    parity: ParityReport
    optimizations: Optimizations
    reuse: Reuse


def encode_manifest(manifest: Manifest) -> bytes:
    return msgspec.json.format(msgspec.json.encode(manifest), indent=2) + b"\n"


def decode_manifest(raw: bytes) -> Manifest:
    return msgspec.json.decode(raw, type=Manifest)
