"""The bundle manifest: what a bundle holds and how it was made (docs/bundle-format.md)."""

from __future__ import annotations

from typing import Any

import msgspec

SCHEMA_VERSION = 1
MANIFEST_NAME = "manifest.json"


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
    """Affine statistics: normalized = (x - mean) / std, per state and action dimension."""

    state_mean: list[float]
    state_std: list[float]
    action_mean: list[float]
    action_std: list[float]


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


class OutputParity(_Strict):
    cosine: float
    max_abs_err: float
    passed: bool


class ParityReport(_Strict):
    precision: str
    observations: int
    thresholds: dict[str, float]
    graphs: dict[str, dict[str, OutputParity]]
    plan: dict[str, OutputParity]
    react: dict[str, OutputParity]
    choice_agreement: float
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


def encode_manifest(manifest: Manifest) -> bytes:
    return msgspec.json.format(msgspec.json.encode(manifest), indent=2) + b"\n"


def decode_manifest(raw: bytes) -> Manifest:
    return msgspec.json.decode(raw, type=Manifest)
