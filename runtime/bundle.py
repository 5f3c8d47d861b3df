"""Load and verify a bundle: refuse anything whose hashes, schema or shapes don't match."""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path

import msgspec

from edgevla.runtime.errors import (
    BundleFileMissing,
    BundleHashMismatch,
    BundleParityFailed,
    BundleSchemaError,
    BundleShapeMismatch,
    ConfigError,
)
from edgevla.runtime.manifest import MANIFEST_NAME, SCHEMA_VERSION, Manifest, decode_manifest
from edgevla.runtime.model_config import (
    GRAPH_NAMES,
    PRECISIONS,
    GraphSpec,
    ModelConfig,
    graph_specs,
)

_HASH_BLOCK = 1 << 20


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
        return decode_manifest(raw)
    except msgspec.ValidationError as exc:
        raise BundleSchemaError(path, _field_of(exc), str(exc)) from exc
    except msgspec.DecodeError as exc:  # e.g. NaN/Infinity, which Python's json lets through
        raise BundleSchemaError(path, None, f"not valid JSON ({exc})") from exc


def _check_files(bundle_dir: Path, manifest: Manifest) -> None:
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
    for rel, entry in manifest.files.items():
        file = bundle_dir / rel
        if Path(rel).is_absolute() or ".." in Path(rel).parts:
            raise BundleSchemaError(manifest_path, f"files.{rel}", "paths must stay in the bundle")
        if not file.is_file():
            raise BundleFileMissing(file, f"files.{rel}", "listed in the manifest but not present")
        size = file.stat().st_size
        if size != entry.bytes:
            raise BundleHashMismatch(
                file, f"files.{rel}.bytes", f"is {size} bytes, manifest records {entry.bytes}"
            )
        actual = sha256_file(file)
        if actual != entry.sha256:
            raise BundleHashMismatch(
                file,
                f"files.{rel}.sha256",
                f"sha256 is {actual[:16]}…, manifest records {entry.sha256[:16]}…",
            )


def _check_unlisted(bundle_dir: Path, manifest: Manifest) -> None:
    """Everything in a bundle is hash-checked: a file the manifest does not list is refused."""
    listed = set(manifest.files) | {MANIFEST_NAME}
    for file in sorted(p for p in bundle_dir.rglob("*") if p.is_file()):
        rel = file.relative_to(bundle_dir).as_posix()
        if rel not in listed:
            raise BundleSchemaError(file, "files", "present in the bundle but not in the manifest")


def _check_sampling(bundle_dir: Path, manifest: Manifest) -> None:
    s, path = manifest.sampling, bundle_dir / MANIFEST_NAME
    rules = [
        ("candidates", s.candidates >= 1, "must be >= 1"),
        ("denoise_steps", s.denoise_steps >= 1, "must be >= 1"),
        ("start_time_min", 0.0 < s.start_time_min <= s.start_time_max, "must be in (0, max]"),
        ("start_time_max", s.start_time_max <= 1.0, "must be <= 1"),
        ("noise_temperature", s.noise_temperature > 0.0, "must be > 0"),
        ("s1_steps", s.s1_steps >= 1, "must be >= 1"),
        ("s1_theta", 0.0 < s.s1_theta <= 1.0, "must be in (0, 1]"),
    ]
    for field, ok, rule in rules:
        if not ok:
            raise BundleSchemaError(path, f"sampling.{field}", f"{getattr(s, field)!r} {rule}")
    if not manifest.action_space.step_period_s > 0:
        raise BundleSchemaError(path, "action_space.step_period_s", "must be > 0")


def _check_signatures(bundle_dir: Path, manifest: Manifest, specs: dict[str, GraphSpec]) -> None:
    manifest_path = bundle_dir / MANIFEST_NAME
    missing = set(GRAPH_NAMES) - set(manifest.graphs)
    extra = set(manifest.graphs) - set(GRAPH_NAMES)
    if missing or extra:
        raise BundleSchemaError(
            manifest_path,
            "graphs",
            f"expected graphs {sorted(GRAPH_NAMES)}, missing {sorted(missing)}, "
            f"unknown {sorted(extra)}",
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
    if manifest.tokenizer.max_tokens != cfg.max_instruction_tokens:
        raise BundleShapeMismatch(
            manifest_path,
            "tokenizer.max_tokens",
            f"{manifest.tokenizer.max_tokens} but the model takes {cfg.max_instruction_tokens}",
        )


def load_bundle(path: Path | str) -> Bundle:
    """Verify a bundle's manifest, files, hashes and declared signatures, and return it.

    Graph files themselves are checked against these signatures when a backend opens them.
    """
    bundle_dir = Path(path)
    manifest = read_manifest(bundle_dir)
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
    specs = graph_specs(cfg, manifest.sampling.candidates, manifest.precision)
    _check_files(bundle_dir, manifest)
    _check_unlisted(bundle_dir, manifest)
    _check_signatures(bundle_dir, manifest, specs)
    _check_spaces(bundle_dir, manifest, cfg)
    if not manifest.parity.passed:
        raise BundleParityFailed(
            manifest_path, "parity.passed", "the export's parity gate did not pass"
        )
    return Bundle(path=bundle_dir, manifest=manifest, model=cfg, specs=specs)
