"""Write a bundle: export graphs, pass the parity gate, record everything, then publish.

All work happens in a temporary sibling directory; only a bundle that passed the gate and
re-loads cleanly is synced to disk and renamed into place, so a failed export leaves nothing
behind (not even the parent directories it created) and a reader never sees a half-written
bundle. Replacing an existing bundle (`overwrite`) takes two renames: between them the path is
briefly absent (a reader gets BundleFileMissing, never a mix); if the second fails, the old
bundle is renamed back. Only a directory holding a manifest.json is ever replaced.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import importlib.metadata
import logging
import os
import platform
import shutil
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import msgspec

from edgevla.export.checkpoint import ReferencePolicy
from edgevla.export.onnx_export import export_graph, external_data_file, model_at_precision
from edgevla.export.parity import ParityError, failures, parity_inputs, run_parity_gate
from edgevla.export.pruning import choose_pruning
from edgevla.runtime.backend import CPU, BackendConfig, OnnxRuntimeBackend
from edgevla.runtime.bundle import load_bundle, sha256_file
from edgevla.runtime.errors import ConfigError, EdgeVlaError, InvalidSetting
from edgevla.runtime.manifest import (
    MANIFEST_NAME,
    SCHEMA_VERSION,
    FileEntry,
    GraphEntry,
    Manifest,
    Optimizations,
    Reuse,
    Sampling,
    SteeringDirection,
    TensorEntry,
    TokenizerEntry,
    TokenPruning,
    TokenReuse,
    encode_manifest,
    validate_reuse,
    validate_sampling,
)
from edgevla.runtime.model_config import PRECISIONS, graph_specs
from edgevla.runtime.system2 import PrefixInputs

log = logging.getLogger(__name__)

TOKENIZER_FILE = "tokenizer.json"
_VERSIONED = (
    "edgevla",
    "torch",
    "onnx",
    "onnxscript",
    "onnxruntime",
    "numpy",
    "tokenizers",
    "safetensors",
    "msgspec",
)


@dataclass(frozen=True)
class ExportOptions:
    precision: str = "fp32"
    candidates: int = 5
    denoise_steps: int = 10
    start_time_min: float = 0.9
    start_time_max: float = 1.0
    noise_temperature: float = 1.0
    s1_steps: int = 3
    # System 1's re-noise level, a fraction of a slice's own motion (System 1 works on offsets
    # from the state, normalized per row). Chosen on 100 validation episodes of the touch policy
    # (N = 5): 84 / 85 / 83 % at θ1 = 0.1 / 0.25 / 0.5, 82 % without System 1 — equal within
    # noise; 0.25 gives System 1 room to correct at no measured cost (docs/benchmarks.md).
    s1_theta: float = 0.25
    expert_cache_every: int = 1  # 1: the action expert's blocks run at every Euler step
    # Or an explicit schedule of the steps that run them, and what cached steps use between.
    expert_full_steps: tuple[int, ...] | None = None
    expert_cache_extrapolation: str = "hold"
    # Layer pruning (export/pruning.py): a count of prefix layers to remove, "auto" for the
    # deepest cut whose plans keep `prune_min_cosine` against the unpruned model, 0 for none.
    prune_layers: int | str = 0
    prune_min_cosine: float = 0.98
    # Visual-token pruning: the prefix keeps the K visual tokens the selector scores highest.
    keep_tokens: int | None = None
    # Visual-token reuse: a `prefix_reuse` graph recomputing R visual tokens of the last cache,
    # with a full prefix pass every `token_refresh_every`-th plan.
    reuse_tokens: int | None = None
    token_refresh_every: int = 4
    # Action reuse: plans that may be skipped in a row when the last two agreed (0: off).
    action_reuse_max: int = 0
    parity_observations: int = 3
    parity_seed: int = 0
    opset: int | None = None
    # Models with more parameter bytes than this keep each graph's weights in `<graph>.onnx.data`.
    external_data_min_bytes: int = 1 << 30

    def validate(self) -> None:
        """Refuse options no bundle can be made with (InvalidSetting naming the option)."""
        if self.precision not in PRECISIONS:
            raise InvalidSetting(
                "ExportOptions.precision", f"{self.precision!r} is not one of {PRECISIONS}"
            )
        validate_sampling(self.sampling(), where="ExportOptions")
        count = self.parity_observations
        if not isinstance(count, int) or isinstance(count, bool) or count < 1:
            raise InvalidSetting("ExportOptions.parity_observations", f"{count!r} must be >= 1")
        prune = self.prune_layers
        if prune != "auto" and (not isinstance(prune, int) or isinstance(prune, bool) or prune < 0):
            raise InvalidSetting("ExportOptions.prune_layers", f"{prune!r}: 'auto' or a count >= 0")
        if not 0.0 < self.prune_min_cosine <= 1.0:
            raise InvalidSetting(
                "ExportOptions.prune_min_cosine", f"{self.prune_min_cosine!r} must be in (0, 1]"
            )
        for field in ("keep_tokens", "reuse_tokens"):
            value = getattr(self, field)
            if value is not None and (
                not isinstance(value, int) or isinstance(value, bool) or value < 1
            ):
                raise InvalidSetting(f"ExportOptions.{field}", f"{value!r} must be >= 1")
        if self.keep_tokens is not None and self.reuse_tokens is not None:
            raise InvalidSetting(
                "ExportOptions.reuse_tokens",
                "token reuse updates a full-length cache; it does not combine with keep_tokens",
            )

    def reuse(self) -> Reuse:
        return Reuse(
            token_refresh_every=self.token_refresh_every, action_reuse_max=self.action_reuse_max
        )

    def sampling(self) -> Sampling:
        return Sampling(
            candidates=self.candidates,
            denoise_steps=self.denoise_steps,
            start_time_min=self.start_time_min,
            start_time_max=self.start_time_max,
            noise_temperature=self.noise_temperature,
            s1_steps=self.s1_steps,
            s1_theta=self.s1_theta,
            expert_cache_every=self.expert_cache_every,
            expert_full_steps=None
            if self.expert_full_steps is None
            else list(self.expert_full_steps),
            expert_cache_extrapolation=self.expert_cache_extrapolation,
        )


def library_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in _VERSIONED:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return versions


def _rename(src: Path, dst: Path) -> None:
    os.rename(src, dst)  # one place for the publishing renames (tests inject failures here)


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _refuse_non_bundle(out: Path) -> None:
    """Overwrite replaces a bundle, never whatever else happens to be at `out`."""
    if out.is_symlink() or not out.is_dir():
        raise EdgeVlaError(f"{out} exists and is not a bundle directory; refusing to replace it")
    if not (out / MANIFEST_NAME).is_file():
        raise EdgeVlaError(
            f"{out} is a directory without {MANIFEST_NAME}, so not a bundle; refusing to replace "
            "it (remove it yourself if it should go)"
        )


def _publish(staging: Path, out: Path, overwrite: bool) -> None:
    # mkdtemp makes the directory owner-only; the robot service may run as another user.
    staging.chmod(0o755)
    files = sorted(p for p in staging.rglob("*") if p.is_file())
    for file in files:
        file.chmod(0o644)
    # Contents reach the disk before the rename that makes them visible: after a power cut the
    # path holds the old bundle or the whole new one, never a renamed directory of empty files.
    for file in files:
        _fsync(file)
    _fsync(staging)
    if not out.exists() and not out.is_symlink():
        _rename(staging, out)
        _fsync(out.parent)
        return
    if not overwrite:
        raise EdgeVlaError(f"{out} already exists; pass --overwrite to replace it")
    _refuse_non_bundle(out)
    retired = staging.with_name(staging.name.replace(".tmp-", ".old-", 1))
    _rename(out, retired)
    try:
        _rename(staging, out)
    except BaseException:
        try:
            _rename(retired, out)  # put the old bundle back rather than leave the path empty
        except OSError:
            log.error("could not restore %s; the previous bundle is at %s", out, retired)
        raise
    _fsync(out.parent)
    shutil.rmtree(retired, ignore_errors=True)


def _missing_ancestors(path: Path) -> list[Path]:
    """The directories above `path` that do not exist yet, deepest first."""
    missing = []
    for parent in path.absolute().parents:
        if parent.exists():
            break
        missing.append(parent)
    return missing


def _remove_empty(directories: list[Path]) -> None:
    """Undo the parent directories this export created (deepest first), if still empty."""
    for directory in directories:
        try:
            directory.rmdir()
        except OSError:
            return  # not empty (someone else wrote there) or already gone: leave it


def export_bundle(
    policy: ReferencePolicy,
    out: Path,
    options: ExportOptions = ExportOptions(),
    overwrite: bool = False,
    on_progress: Callable[[str], None] = lambda _: None,
    calibration: Sequence[PrefixInputs] | None = None,
    steering: Sequence[SteeringDirection] = (),
) -> Manifest:
    """Export `policy` to a verified bundle at `out`; on any failure nothing is left behind.

    `calibration`: observations that layer pruning ranks layers and gates fidelity on (default:
    the parity gate's kind, random frames with real instructions; a trained policy should get
    frames from its own task, `pruning.calibration_inputs`). `steering`: named directions the
    bundle carries (`export.steering`).
    """
    out = Path(out)
    options.validate()
    if policy.normalization.s1_delta_mean is None or policy.normalization.s1_delta_std is None:
        raise InvalidSetting(
            "normalization.s1_delta_mean",
            f"missing in {policy.origin.get('checkpoint', 'this policy')}: its System 1 was "
            "trained on absolute targets (before bundle schema 3); retrain System 1 with "
            "`edgevla train system1 --checkpoint CKPT --demos DIR --out CKPT2`",
        )
    if out.exists() or out.is_symlink():
        if not overwrite:
            raise EdgeVlaError(f"{out} already exists; pass --overwrite to replace it")
        _refuse_non_bundle(out)
    sampling = options.sampling()
    optimizations = Optimizations()
    if options.prune_layers:
        observations = calibration or parity_inputs(policy, 8, options.parity_seed + 101)
        choice = choose_pruning(
            policy,
            options.prune_layers,
            observations,
            sampling,
            options.prune_min_cosine,
            on_progress,
        )
        policy = choice.policy
        optimizations = Optimizations(layer_pruning=choice.record)
    cfg = policy.config
    try:
        specs = graph_specs(
            cfg, options.candidates, options.precision, options.keep_tokens, options.reuse_tokens
        )
        validate_reuse(options.reuse(), cfg.num_visual_tokens, where="ExportOptions")
    except ConfigError as exc:
        raise InvalidSetting("ExportOptions", str(exc)) from None
    v_tokens = cfg.num_visual_tokens
    if options.keep_tokens is not None:
        policy = dataclasses.replace(
            policy, model=policy.model.with_token_pruning(options.keep_tokens)
        )
        optimizations = msgspec.structs.replace(
            optimizations,
            token_pruning=TokenPruning(options.keep_tokens, v_tokens, scorer="selector"),
        )
    if options.reuse_tokens is not None:
        optimizations = msgspec.structs.replace(
            optimizations, token_reuse=TokenReuse(options.reuse_tokens, v_tokens)
        )
    optimizations = msgspec.structs.replace(optimizations, steering=list(steering))
    created = _missing_ancestors(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    try:
        staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    except BaseException:
        _remove_empty(created)
        raise
    try:
        model = model_at_precision(policy.model, options.precision)
        weight_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
        external = weight_bytes > options.external_data_min_bytes
        for name, spec in specs.items():
            on_progress(f"exporting graph {name} ({options.precision})")
            export_graph(
                model, spec, options.precision, staging / f"{name}.onnx", options.opset, external
            )
        policy.tokenizer.save(str(staging / TOKENIZER_FILE))

        on_progress("parity gate")
        backend = OnnxRuntimeBackend(
            {name: staging / f"{name}.onnx" for name in specs},
            specs,
            BackendConfig(providers=(CPU,), warmup_runs=0),
            precision=options.precision,
        )
        report = run_parity_gate(
            policy,
            backend,
            options.precision,
            sampling,
            options.parity_observations,
            options.parity_seed,
            on_progress,
            options.reuse_tokens,
        )
        if not report.passed:
            raise ParityError(
                f"parity gate failed at {options.precision}; no bundle written:\n  "
                + "\n  ".join(failures(report))
            )

        files = {
            p.name: FileEntry(sha256=sha256_file(p), bytes=p.stat().st_size)
            for p in sorted(staging.iterdir())
        }
        manifest = Manifest(
            schema_version=SCHEMA_VERSION,
            created_utc=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            model=cfg.to_dict(),
            action_space=policy.action_space,
            normalization=policy.normalization,
            tokenizer=TokenizerEntry(file=TOKENIZER_FILE, max_tokens=cfg.max_instruction_tokens),
            sampling=sampling,
            precision=options.precision,
            graphs={
                name: GraphEntry(
                    file=f"{name}.onnx",
                    data_file=data.name
                    if (data := external_data_file(staging / f"{name}.onnx")).exists()
                    else None,
                    inputs=[TensorEntry(t.name, list(t.shape), t.dtype) for t in spec.inputs],
                    outputs=[TensorEntry(t.name, list(t.shape), t.dtype) for t in spec.outputs],
                )
                for name, spec in specs.items()
            },
            files=files,
            export_options={**asdict(options), "origin": policy.origin},
            library_versions=library_versions(),
            parity=report,
            optimizations=optimizations,
            reuse=options.reuse(),
        )
        (staging / MANIFEST_NAME).write_bytes(encode_manifest(manifest))
        load_bundle(staging)  # the bundle must pass the same checks the robot will apply
        _publish(staging, out, overwrite)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        _remove_empty(created)
        raise
    log.info("bundle written to %s", out)
    return manifest
