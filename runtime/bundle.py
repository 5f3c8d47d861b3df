"""Load and verify a bundle: refuse anything whose hashes, schema or shapes don't match."""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import msgspec
from tokenizers import Tokenizer

from edgevla.runtime.errors import (
    BundleFileMissing,
    BundleHashMismatch,
    BundleParityFailed,
    BundleSchemaError,
    BundleShapeMismatch,
    ConfigError,
    InvalidSetting,
)
from edgevla.runtime.manifest import (
    MANIFEST_NAME,
    SCHEMA_VERSION,
    FileEntry,
    Manifest,
    decode_manifest,
    validate_reuse,
    validate_sampling,
)
from edgevla.runtime.model_config import (
    PRECISIONS,
    GraphSpec,
    ModelConfig,
    graph_specs,
)
from edgevla.runtime.parity_thresholds import (
    PLAN_OUTPUTS,
    REACT_OUTPUTS,
    describe_gate,
    looser_than_exporter,
    output_passes,
)
from edgevla.runtime.steering import site_shapes
from edgevla.runtime.tokenizer import vocabulary_problem

_HASH_BLOCK = 1 << 20
ACTION_KIND = "joint_position"
JOINT_UNIT = "rad"
GRIPPER_UNIT = "fraction_open"
# A chunk row every 1 ms (the fastest UR control rate is 500 Hz) to 1 s: outside this, a
# period is a unit mistake (ms for s) rather than a policy choice.
STEP_PERIOD_RANGE_S = (0.001, 1.0)


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while block := fh.read(_HASH_BLOCK):
            digest.update(block)
    return digest.hexdigest()


@dataclass(frozen=True)
class Bundle:
    """A verified bundle on disk: its manifest, model config and graph signatures."""

    path: Path
    manifest: Manifest
    model: ModelConfig
    specs: dict[str, GraphSpec]
    # Of the manifest.json bytes that were verified: names the TensorRT engine cache and lets
    # `verify_files` see a manifest swapped after loading.
    manifest_sha256: str

    @property
    def candidates(self) -> int:
        return self.manifest.sampling.candidates

    @property
    def precision(self) -> str:
        return self.manifest.precision

    def graph_path(self, graph: str) -> Path:
        return self.path / self.manifest.graphs[graph].file

    @property
    def tokenizer_path(self) -> Path:
        return self.path / self.manifest.tokenizer.file


def _field_of(exc: msgspec.ValidationError) -> str | None:
    """The manifest field a msgspec error is about, as a dotted path."""
    text = str(exc)
    at = re.search(r"at `\$\.?([^`]*)`", text)
    named = re.search(r"(?:unknown|required) field `([^`]*)`", text)
    parts = [at.group(1) if at else "", named.group(1) if named else ""]
    return ".".join(p for p in parts if p) or None


def read_manifest(bundle_dir: Path) -> Manifest:
    """Parse manifest.json; the schema version is checked before any other field."""
    return _read_manifest(bundle_dir)[0]


def _read_manifest(bundle_dir: Path) -> tuple[Manifest, str]:
    """The parsed manifest and the sha256 of the very bytes it was parsed from."""
    path = bundle_dir / MANIFEST_NAME
    if not bundle_dir.is_dir():
        raise BundleFileMissing(bundle_dir, None, "bundle directory does not exist")
    if not path.is_file():
        raise BundleFileMissing(path, None, "manifest.json is missing")
    raw = path.read_bytes()
    try:
        loose = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BundleSchemaError(path, None, f"not valid JSON ({exc})") from exc
    if not isinstance(loose, dict):
        raise BundleSchemaError(path, None, "top level must be a JSON object")
    version = loose.get("schema_version")
    if version != SCHEMA_VERSION:
        raise BundleSchemaError(
            path,
            "schema_version",
            f"unknown schema version {version!r}; this runtime reads version {SCHEMA_VERSION}",
        )
    try:
        return decode_manifest(raw), hashlib.sha256(raw).hexdigest()
    except msgspec.ValidationError as exc:
        raise BundleSchemaError(path, _field_of(exc), str(exc)) from exc
    except msgspec.DecodeError as exc:  # e.g. NaN/Infinity, which Python's json lets through
        raise BundleSchemaError(path, None, f"not valid JSON ({exc})") from exc


def _check_referenced(bundle_dir: Path, manifest: Manifest) -> None:
    manifest_path = bundle_dir / MANIFEST_NAME
    referenced = {f"graphs.{name}.file": g.file for name, g in manifest.graphs.items()}
    referenced.update(
        {
            f"graphs.{name}.data_file": g.data_file
            for name, g in manifest.graphs.items()
            if g.data_file
        }
    )
    referenced["tokenizer.file"] = manifest.tokenizer.file
    for field, rel in referenced.items():
        if rel not in manifest.files:
            raise BundleSchemaError(manifest_path, field, f"{rel!r} has no entry in 'files'")
    for rel in manifest.files:
        if Path(rel).is_absolute() or ".." in Path(rel).parts:
            raise BundleSchemaError(manifest_path, f"files.{rel}", "paths must stay in the bundle")


def _check_file(bundle_dir: Path, rel: str, entry: FileEntry, note: str = "") -> None:
    file = bundle_dir / rel
    if not file.is_file():
        raise BundleFileMissing(
            file, f"files.{rel}", f"listed in the manifest but not present{note}"
        )
    size = file.stat().st_size
    if size != entry.bytes:
        raise BundleHashMismatch(
            file, f"files.{rel}.bytes", f"is {size} bytes, manifest records {entry.bytes}{note}"
        )
    actual = sha256_file(file)
    if actual != entry.sha256:
        raise BundleHashMismatch(
            file,
            f"files.{rel}.sha256",
            f"sha256 is {actual[:16]}…, manifest records {entry.sha256[:16]}…{note}",
        )


def verify_files(bundle: Bundle, files: Iterable[str] | None = None) -> None:
    """Re-hash manifest.json and `files` (default: all) against what `load_bundle` verified.

    Callers run this after they have read the files (graphs opened, tokenizer parsed), so that a
    bundle replaced on disk between verification and use is refused rather than half-used.
    """
    note = " (changed after the bundle was verified)"
    manifest_path = bundle.path / MANIFEST_NAME
    try:
        digest = sha256_file(manifest_path)
    except FileNotFoundError:
        raise BundleFileMissing(manifest_path, None, f"manifest.json is missing{note}") from None
    if digest != bundle.manifest_sha256:
        raise BundleHashMismatch(
            manifest_path,
            None,
            f"sha256 is {digest[:16]}…, the verified manifest was "
            f"{bundle.manifest_sha256[:16]}…{note}",
        )
    for rel in bundle.manifest.files if files is None else files:
        _check_file(bundle.path, rel, bundle.manifest.files[rel], note)


def _check_unlisted(bundle_dir: Path, manifest: Manifest) -> None:
    """Everything in a bundle is hash-checked: a file the manifest does not list is refused."""
    listed = set(manifest.files) | {MANIFEST_NAME}
    for file in sorted(p for p in bundle_dir.rglob("*") if p.is_file()):
        rel = file.relative_to(bundle_dir).as_posix()
        if rel not in listed:
            raise BundleSchemaError(file, "files", "present in the bundle but not in the manifest")


def _check_sampling(bundle_dir: Path, manifest: Manifest) -> None:
    try:
        validate_sampling(manifest.sampling)
    except InvalidSetting as exc:
        raise BundleSchemaError(bundle_dir / MANIFEST_NAME, exc.field, exc.reason) from None


def _check_signatures(bundle_dir: Path, manifest: Manifest, specs: dict[str, GraphSpec]) -> None:
    manifest_path = bundle_dir / MANIFEST_NAME
    missing = set(specs) - set(manifest.graphs)
    extra = set(manifest.graphs) - set(specs)
    if missing or extra:
        raise BundleSchemaError(
            manifest_path,
            "graphs",
            f"expected graphs {sorted(specs)} (from the model and `optimizations`), missing "
            f"{sorted(missing)}, unknown {sorted(extra)}",
        )
    for name, spec in specs.items():
        entry = manifest.graphs[name]
        for side in ("inputs", "outputs"):
            listed = getattr(entry, side)
            expected = getattr(spec, side)
            if [t.name for t in listed] != [t.name for t in expected]:
                raise BundleShapeMismatch(
                    manifest_path,
                    f"graphs.{name}.{side}",
                    f"names {[t.name for t in listed]} but the model config implies "
                    f"{[t.name for t in expected]}",
                )
            for i, (have, want) in enumerate(zip(listed, expected, strict=True)):
                if tuple(have.shape) != want.shape or have.dtype != want.dtype:
                    raise BundleShapeMismatch(
                        manifest_path,
                        f"graphs.{name}.{side}[{i}] ({have.name})",
                        f"manifest says {have.dtype}{list(have.shape)} but the model config "
                        f"implies {want.dtype}{list(want.shape)}",
                    )


def _check_s1_units(manifest_path: Path, manifest: Manifest, cfg: ModelConfig) -> None:
    """System 1's slice is an offset from the state: both must name the same quantities."""
    norm, space = manifest.normalization, manifest.action_space
    if space.state_names != space.action_names:
        raise BundleSchemaError(
            manifest_path,
            "action_space.state_names",
            f"{space.state_names} must equal action_names {space.action_names}: System 1 "
            "works on each action's offset from the state of the same name",
        )
    want = (cfg.s1_horizon, cfg.action_dim)
    for field in ("s1_delta_mean", "s1_delta_std"):
        value = getattr(norm, field)
        if value is None:
            raise BundleSchemaError(
                manifest_path,
                f"normalization.{field}",
                "is missing (a checkpoint from before System 1 worked on offsets; retrain it "
                "with `edgevla train system1`)",
            )
        shape = (len(value), *{len(row) for row in value})
        if shape != want:
            raise BundleShapeMismatch(
                manifest_path,
                f"normalization.{field}",
                f"is {len(value)} rows of lengths {sorted({len(r) for r in value})}; "
                f"the model needs {want[0]} rows (s1_horizon) of {want[1]} (action_dim)",
            )
        if not all(math.isfinite(x) for row in value for x in row):
            raise BundleSchemaError(manifest_path, f"normalization.{field}", "must be finite")
    assert norm.s1_delta_std is not None
    if any(not (x > 0) for row in norm.s1_delta_std for x in row):
        raise BundleSchemaError(manifest_path, "normalization.s1_delta_std", "must all be > 0")


def _check_optimizations(manifest_path: Path, manifest: Manifest, cfg: ModelConfig) -> None:
    """A pruning record must describe this model and a cut that passed its own gate."""
    pruning = manifest.optimizations.layer_pruning
    if pruning is None:
        return
    field = "optimizations.layer_pruning"
    removed = pruning.removed
    if sorted(set(removed)) != removed or any(not 0 <= i < pruning.source_layers for i in removed):
        raise BundleSchemaError(
            manifest_path,
            f"{field}.removed",
            f"{removed} must be distinct, ascending layer indices below source_layers "
            f"{pruning.source_layers}",
        )
    if pruning.source_layers - len(removed) != cfg.n_layers:
        raise BundleShapeMismatch(
            manifest_path,
            f"{field}.source_layers",
            f"{pruning.source_layers} layers minus {len(removed)} removed is not the model's "
            f"n_layers {cfg.n_layers}",
        )
    if len(pruning.redundancy) != pruning.source_layers:
        raise BundleShapeMismatch(
            manifest_path,
            f"{field}.redundancy",
            f"has {len(pruning.redundancy)} entries for {pruning.source_layers} source layers",
        )
    if removed and not pruning.plan_cosine >= pruning.min_cosine:
        raise BundleSchemaError(
            manifest_path,
            f"{field}.plan_cosine",
            f"{pruning.plan_cosine} is below the gate {pruning.min_cosine} it records",
        )


def _check_token_options(manifest_path: Path, manifest: Manifest, cfg: ModelConfig) -> None:
    """Token pruning and reuse records must fit the model; steering directions its width."""
    o = manifest.optimizations
    for field, record in (("token_pruning", o.token_pruning), ("token_reuse", o.token_reuse)):
        if record is not None and record.visual_tokens != cfg.num_visual_tokens:
            raise BundleShapeMismatch(
                manifest_path,
                f"optimizations.{field}.visual_tokens",
                f"{record.visual_tokens}, the model has {cfg.num_visual_tokens} visual tokens",
            )
    if o.token_pruning is not None and o.token_pruning.scorer != "selector":
        raise BundleSchemaError(
            manifest_path,
            "optimizations.token_pruning.scorer",
            f"{o.token_pruning.scorer!r}; this runtime knows 'selector'",
        )
    names = [d.name for d in o.steering]
    if len(set(names)) != len(names):
        raise BundleSchemaError(manifest_path, "optimizations.steering", f"repeated names {names}")
    wants = site_shapes(cfg)
    for i, direction in enumerate(o.steering):
        if direction.site not in wants:
            raise BundleSchemaError(
                manifest_path,
                f"optimizations.steering[{i}].site ({direction.name})",
                f"{direction.site!r}; this runtime knows {sorted(wants)}",
            )
        want, names = wants[direction.site]
        vectors = direction.vectors
        shape = (len(vectors), *{len(row) for row in vectors})
        if shape != want:
            raise BundleShapeMismatch(
                manifest_path,
                f"optimizations.steering[{i}].vectors ({direction.name})",
                f"is {len(vectors)} rows of lengths {sorted({len(r) for r in vectors})}; a "
                f"{direction.site} direction needs {want[0]} ({names[0]}) of {want[1]} "
                f"({names[1]})",
            )
        if not all(math.isfinite(x) for row in vectors for x in row):
            raise BundleSchemaError(
                manifest_path, f"optimizations.steering[{i}].vectors", "must be finite"
            )
    try:
        validate_reuse(manifest.reuse, cfg.num_visual_tokens)
    except InvalidSetting as exc:
        raise BundleSchemaError(manifest_path, exc.field, exc.reason) from None


def bundle_graph_specs(manifest: Manifest, cfg: ModelConfig) -> dict[str, GraphSpec]:
    """The graphs a bundle must have: the model's, shaped by its token options."""
    o = manifest.optimizations
    return graph_specs(
        cfg,
        manifest.sampling.candidates,
        manifest.precision,
        keep_tokens=None if o.token_pruning is None else o.token_pruning.keep_tokens,
        recompute_tokens=None if o.token_reuse is None else o.token_reuse.recompute_tokens,
    )


def _check_spaces(bundle_dir: Path, manifest: Manifest, cfg: ModelConfig) -> None:
    manifest_path = bundle_dir / MANIFEST_NAME
    norm, space = manifest.normalization, manifest.action_space
    lengths = {
        "normalization.state_mean": (len(norm.state_mean), cfg.state_dim),
        "normalization.state_std": (len(norm.state_std), cfg.state_dim),
        "normalization.action_mean": (len(norm.action_mean), cfg.action_dim),
        "normalization.action_std": (len(norm.action_std), cfg.action_dim),
        "action_space.state_names": (len(space.state_names), cfg.state_dim),
        "action_space.action_names": (len(space.action_names), cfg.action_dim),
        "action_space.action_units": (len(space.action_units), cfg.action_dim),
    }
    for field, (have, want) in lengths.items():
        if have != want:
            raise BundleShapeMismatch(
                manifest_path, field, f"has {have} entries, model needs {want}"
            )
    for field in ("state_std", "action_std"):
        if any(not (s > 0) for s in getattr(norm, field)):
            raise BundleSchemaError(manifest_path, f"normalization.{field}", "must all be > 0")
    _check_s1_units(manifest_path, manifest, cfg)
    # The runtime drives joints to absolute targets in rad and the gripper to an opening
    # fraction; a bundle in any other action space would be executed with the wrong meaning.
    if space.kind != ACTION_KIND:
        raise BundleSchemaError(
            manifest_path, "action_space.kind", f"{space.kind!r}; this runtime runs {ACTION_KIND!r}"
        )
    units = [JOINT_UNIT] * (cfg.action_dim - 1) + [GRIPPER_UNIT]
    for i, (have, want) in enumerate(zip(space.action_units, units, strict=True)):
        if have != want:
            raise BundleSchemaError(
                manifest_path,
                f"action_space.action_units[{i}]",
                f"{have!r} ({space.action_names[i]}); this runtime needs {want!r}",
            )
    period = space.step_period_s
    if not STEP_PERIOD_RANGE_S[0] <= period <= STEP_PERIOD_RANGE_S[1]:
        raise BundleSchemaError(
            manifest_path,
            "action_space.step_period_s",
            f"{period!r} must be in [{STEP_PERIOD_RANGE_S[0]}, {STEP_PERIOD_RANGE_S[1]}]",
        )
    if manifest.tokenizer.max_tokens != cfg.max_instruction_tokens:
        raise BundleShapeMismatch(
            manifest_path,
            "tokenizer.max_tokens",
            f"{manifest.tokenizer.max_tokens} but the model takes {cfg.max_instruction_tokens}",
        )


def _check_tokenizer(bundle_dir: Path, manifest: Manifest, cfg: ModelConfig) -> None:
    path = bundle_dir / manifest.tokenizer.file
    try:
        tokenizer = Tokenizer.from_file(str(path))
    except Exception as exc:  # tokenizers raises its own Exception subclass
        raise BundleSchemaError(path, "tokenizer.file", f"not a tokenizers file ({exc})") from None
    problem = vocabulary_problem(tokenizer, cfg.vocab_size)
    if problem:
        raise BundleSchemaError(path, "tokenizer.file", problem)


def _check_parity(bundle_dir: Path, manifest: Manifest, specs: dict[str, GraphSpec]) -> None:
    """The recorded report must have passed, agree with itself and be as strict as the gate."""
    path, p = bundle_dir / MANIFEST_NAME, manifest.parity

    def refuse(field: str, reason: str) -> BundleParityFailed:
        return BundleParityFailed(path, f"parity.{field}", reason)

    if not p.passed:
        raise refuse("passed", "the export's parity gate did not pass")
    if p.precision != manifest.precision:
        raise refuse("precision", f"{p.precision!r} but the bundle is {manifest.precision!r}")
    if p.observations < 1:
        raise refuse("observations", f"{p.observations}; the gate needs at least 1")
    problems = looser_than_exporter(manifest.precision, p.thresholds)
    if problems:
        raise refuse("thresholds", "; ".join(problems))
    expected = {f"graphs.{g}": [t.name for t in spec.outputs] for g, spec in specs.items()}
    expected.update({"plan": list(PLAN_OUTPUTS), "react": list(REACT_OUTPUTS)})
    recorded = {f"graphs.{g}": outputs for g, outputs in p.graphs.items()}
    recorded.update({"plan": p.plan, "react": p.react})
    if set(p.graphs) != set(specs):
        raise refuse("graphs", f"reports {sorted(p.graphs)}, expected {sorted(specs)}")
    for where, names in expected.items():
        group = where.removeprefix("graphs.")
        if sorted(recorded[where]) != sorted(names):
            raise refuse(where, f"reports {sorted(recorded[where])}, expected {sorted(names)}")
        for name, o in recorded[where].items():
            if not o.passed:
                raise refuse(f"{where}.{name}.passed", "recorded as failed")
            if not output_passes(p.thresholds, group, name, o.cosine, o.max_abs_err):
                raise refuse(
                    f"{where}.{name}",
                    f"cosine {o.cosine}, max abs err {o.max_abs_err} recorded as passed but the "
                    f"gate needs {describe_gate(p.thresholds, group, name)}",
                )
    c = p.choice
    if not c.passed:
        raise refuse("choice.passed", "the exported plan chose another candidate than PyTorch")
    if not 0 <= c.decisive <= p.observations:
        raise refuse("choice.decisive", f"{c.decisive} of {p.observations} observations")
    if not c.decisive / p.observations <= c.agreement <= 1.0:
        raise refuse(
            "choice.agreement",
            f"{c.agreement} but the choice agreed on all {c.decisive} decisive observations "
            f"of {p.observations}",
        )


def load_bundle(path: Path | str) -> Bundle:
    """Verify a bundle's manifest, files, hashes and declared signatures, and return it.

    Graph files themselves are checked against these signatures when a backend opens them.
    """
    bundle_dir = Path(path)
    manifest, manifest_sha256 = _read_manifest(bundle_dir)
    manifest_path = bundle_dir / MANIFEST_NAME
    if manifest.precision not in PRECISIONS:
        raise BundleSchemaError(
            manifest_path, "precision", f"{manifest.precision!r} is not one of {PRECISIONS}"
        )
    _check_sampling(bundle_dir, manifest)
    try:
        cfg = ModelConfig.from_dict(manifest.model)
    except ConfigError as exc:
        raise BundleSchemaError(manifest_path, "model", str(exc)) from exc
    try:
        specs = bundle_graph_specs(manifest, cfg)
    except ConfigError as exc:
        raise BundleShapeMismatch(manifest_path, "optimizations", str(exc)) from exc
    _check_referenced(bundle_dir, manifest)
    for rel, entry in manifest.files.items():
        _check_file(bundle_dir, rel, entry)
    _check_unlisted(bundle_dir, manifest)
    _check_signatures(bundle_dir, manifest, specs)
    _check_spaces(bundle_dir, manifest, cfg)
    _check_tokenizer(bundle_dir, manifest, cfg)
    _check_parity(bundle_dir, manifest, specs)
    _check_optimizations(manifest_path, manifest, cfg)
    _check_token_options(manifest_path, manifest, cfg)
    return Bundle(
        path=bundle_dir,
        manifest=manifest,
        model=cfg,
        specs=specs,
        manifest_sha256=manifest_sha256,
    )
