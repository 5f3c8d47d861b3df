"""A bad bundle is refused with a named error naming the file and the manifest field at fault."""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from edgevla.export.bundle_writer import ExportOptions, export_bundle
from edgevla.export.checkpoint import ReferencePolicy
from edgevla.runtime.backend import CPU, BackendConfig, OnnxRuntimeBackend
from edgevla.runtime.bundle import Bundle, load_bundle, sha256_file
from edgevla.runtime.errors import (
    BundleError,
    BundleFileMissing,
    BundleHashMismatch,
    BundleParityFailed,
    BundleSchemaError,
    BundleShapeMismatch,
)
from edgevla.runtime.manifest import MANIFEST_NAME, SCHEMA_VERSION
from edgevla.runtime.model_config import GRAPH_NAMES

BUNDLE_FILES = (
    "expert_cached.onnx",
    "expert_step.onnx",
    "prefix.onnx",
    "system1.onnx",
    "tokenizer.json",
    "value.onnx",
)
CPU_ONLY = BackendConfig(providers=(CPU,), warmup_runs=0)

# ----------------------------------------------------------------------------- helpers


def edit_manifest(bundle: Path, change: Callable[[dict[str, Any]], object]) -> None:
    """Load manifest.json with json, let `change` mutate it in place, write it back."""
    path = bundle / MANIFEST_NAME
    manifest = json.loads(path.read_text())
    change(manifest)
    path.write_text(json.dumps(manifest, indent=2))


def set_at(keys: tuple[str | int, ...], value: Any) -> Callable[[dict[str, Any]], None]:
    """A manifest edit that sets the value at a path of keys/indices."""

    def change(manifest: dict[str, Any]) -> None:
        node: Any = manifest
        for key in keys[:-1]:
            node = node[key]
        node[keys[-1]] = value

    return change


def rehash(bundle: Path, name: str) -> Callable[[dict[str, Any]], None]:
    """A manifest edit that records the current sha256/bytes of `name` (hashes then agree)."""
    file = bundle / name
    entry = {"sha256": sha256_file(file), "bytes": file.stat().st_size}
    return set_at(("files", name), entry)


def flip_middle_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def refused(bundle: Path, error: type[BundleError]) -> BundleError:
    with pytest.raises(error) as info:
        load_bundle(bundle)
    return info.value


def msgspec_spelling(field: str) -> str:
    """msgspec writes a dict key of its error path as `[...]`: graphs.value.x -> graphs[...].x."""
    return re.sub(r"^(graphs|files)\.\w+(\.onnx|\.json)?", r"\1[...]", field)


def assert_names_manifest(
    exc: BundleError, bundle: Path, field: str | None, *, from_msgspec: bool = False
) -> None:
    """`exc` blames manifest.json and `field`; `from_msgspec` also accepts msgspec's spelling."""
    assert exc.path == bundle / MANIFEST_NAME
    assert MANIFEST_NAME in str(exc)
    if from_msgspec and field is not None:
        assert exc.field in {field, msgspec_spelling(field)}
    else:
        assert exc.field == field
    if field is not None:
        assert f"[{exc.field}]" in str(exc)


@pytest.fixture(scope="module")
def tiny_bundle_n3(tiny_policy: ReferencePolicy, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Same policy as `tiny_bundle`, exported for 3 candidates instead of 5."""
    out = tmp_path_factory.mktemp("bundles") / "tiny-fp32-n3"
    export_bundle(tiny_policy, out, ExportOptions(candidates=3))
    return out


# ----------------------------------------------------------------------------- good bundles


def test_valid_bundle_loads_and_opens(tiny_bundle: Path) -> None:
    bundle = load_bundle(tiny_bundle)
    assert (bundle.candidates, bundle.precision) == (5, "fp32")
    assert set(bundle.specs) == set(GRAPH_NAMES)
    assert set(bundle.manifest.files) == set(BUNDLE_FILES)
    backend = OnnxRuntimeBackend.from_bundle(bundle, CPU_ONLY)
    assert backend.providers[0] == CPU


def test_rewritten_but_unchanged_manifest_still_loads(bundle_copy: Path) -> None:
    """The edit helper itself changes nothing: refusals below come from the edits they make."""
    edit_manifest(bundle_copy, lambda m: None)
    assert isinstance(load_bundle(bundle_copy), Bundle)


def test_fp16_bundle_loads_and_opens(tiny_bundle_fp16: Path) -> None:
    bundle = load_bundle(tiny_bundle_fp16)
    assert bundle.precision == "fp16"
    prefix_k = next(t for t in bundle.specs["expert_step"].inputs if t.name == "prefix_k")
    assert prefix_k.dtype == "float16"
    OnnxRuntimeBackend.from_bundle(bundle, CPU_ONLY)


# ----------------------------------------------------------------------------- files


@pytest.mark.parametrize("name", BUNDLE_FILES)
def test_missing_file_is_refused(bundle_copy: Path, name: str) -> None:
    (bundle_copy / name).unlink()
    exc = refused(bundle_copy, BundleFileMissing)
    assert exc.path == bundle_copy / name
    assert exc.field == f"files.{name}"
    assert name in str(exc)


def test_renamed_graph_is_refused_under_its_manifest_name(bundle_copy: Path) -> None:
    (bundle_copy / "prefix.onnx").rename(bundle_copy / "prefix_old.onnx")
    exc = refused(bundle_copy, BundleFileMissing)
    assert exc.path == bundle_copy / "prefix.onnx"
    assert exc.field == "files.prefix.onnx"
    assert "prefix.onnx" in str(exc)
    assert "prefix_old" not in str(exc)


@pytest.mark.parametrize("name", BUNDLE_FILES)
def test_tampered_file_is_refused(bundle_copy: Path, name: str) -> None:
    flip_middle_byte(bundle_copy / name)
    exc = refused(bundle_copy, BundleHashMismatch)
    assert exc.path == bundle_copy / name
    assert exc.field == f"files.{name}.sha256"
    assert name in str(exc)


def test_file_of_wrong_size_is_refused(bundle_copy: Path) -> None:
    with (bundle_copy / "system1.onnx").open("ab") as fh:
        fh.write(b"\0")
    exc = refused(bundle_copy, BundleHashMismatch)
    assert exc.path == bundle_copy / "system1.onnx"
    assert exc.field is not None
    assert exc.field.startswith("files.system1.onnx.")
    assert "system1.onnx" in str(exc)


def test_recorded_size_that_disagrees_is_refused(bundle_copy: Path) -> None:
    edit_manifest(bundle_copy, set_at(("files", "value.onnx", "bytes"), 1))
    exc = refused(bundle_copy, BundleHashMismatch)
    assert exc.path == bundle_copy / "value.onnx"
    assert exc.field == "files.value.onnx.bytes"


@pytest.mark.parametrize("rel", ["notes.txt", "extra/value.onnx"])
def test_unlisted_file_in_the_bundle_is_refused(bundle_copy: Path, rel: str) -> None:
    (bundle_copy / rel).parent.mkdir(exist_ok=True)
    shutil.copy(bundle_copy / "tokenizer.json", bundle_copy / rel)
    exc = refused(bundle_copy, BundleSchemaError)
    assert exc.path == bundle_copy / rel
    assert exc.field == "files"
    assert rel in str(exc)


def test_missing_bundle_directory_is_refused(tmp_path: Path) -> None:
    exc = refused(tmp_path / "nowhere", BundleFileMissing)
    assert exc.path == tmp_path / "nowhere"
    assert "does not exist" in str(exc)


def test_missing_manifest_is_refused(bundle_copy: Path) -> None:
    (bundle_copy / MANIFEST_NAME).unlink()
    exc = refused(bundle_copy, BundleFileMissing)
    assert_names_manifest(exc, bundle_copy, None)


@pytest.mark.parametrize(
    "content",
    [b"", b"{not json", b"\xff\xfe\x00garbage", b"[1, 2, 3]", b'"a string"'],
    ids=["empty", "syntax", "not-utf8", "array", "string"],
)
def test_manifest_that_is_not_a_json_object_is_refused(bundle_copy: Path, content: bytes) -> None:
    (bundle_copy / MANIFEST_NAME).write_bytes(content)
    exc = refused(bundle_copy, BundleSchemaError)
    assert_names_manifest(exc, bundle_copy, None)


def test_truncated_manifest_is_refused(bundle_copy: Path) -> None:
    path = bundle_copy / MANIFEST_NAME
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) // 2])
    exc = refused(bundle_copy, BundleSchemaError)
    assert "not valid JSON" in str(exc)
    assert_names_manifest(exc, bundle_copy, None)


# ----------------------------------------------------------------------------- schema

_ABSENT = object()


@pytest.mark.parametrize(
    "version",
    [SCHEMA_VERSION + 1, SCHEMA_VERSION - 1, 0, str(SCHEMA_VERSION), None, _ABSENT],
    ids=["next", "previous", "0", "str", "null", "missing"],
)
def test_unknown_schema_version_is_refused(bundle_copy: Path, version: object) -> None:
    def change(m: dict[str, Any]) -> None:
        if version is _ABSENT:
            del m["schema_version"]
        else:
            m["schema_version"] = version

    edit_manifest(bundle_copy, change)
    exc = refused(bundle_copy, BundleSchemaError)
    assert_names_manifest(exc, bundle_copy, "schema_version")
    assert f"this runtime reads version {SCHEMA_VERSION}" in str(exc)


def test_schema_version_is_checked_before_other_fields(bundle_copy: Path) -> None:
    """A future manifest is refused for its version, not for fields this runtime can't read."""

    def future(m: dict[str, Any]) -> None:
        m["schema_version"] = SCHEMA_VERSION + 1
        m["graph_sets"] = m.pop("graphs")

    edit_manifest(bundle_copy, future)
    exc = refused(bundle_copy, BundleSchemaError)
    assert_names_manifest(exc, bundle_copy, "schema_version")


@pytest.mark.parametrize(
    ("keys", "field"),
    [
        (("future_option",), "future_option"),
        (("sampling", "guidance_scale"), "sampling.guidance_scale"),
        (("graphs", "value", "opset"), "graphs.value.opset"),
    ],
)
def test_unknown_manifest_field_is_refused(
    bundle_copy: Path, keys: tuple[str, ...], field: str
) -> None:
    edit_manifest(bundle_copy, set_at(keys, 1))
    exc = refused(bundle_copy, BundleSchemaError)
    assert f"unknown field `{keys[-1]}`" in str(exc)
    assert_names_manifest(exc, bundle_copy, field, from_msgspec=True)


@pytest.mark.parametrize(
    ("keys", "value", "field"),
    [
        (("sampling", "candidates"), "five", "sampling.candidates"),
        (("sampling", "denoise_steps"), 2.5, "sampling.denoise_steps"),
        (("precision",), 16, "precision"),
        (("tokenizer", "max_tokens"), "12", "tokenizer.max_tokens"),
        (("normalization", "state_std"), "0.6", "normalization.state_std"),
        (("graphs", "value", "inputs", 1, "shape"), "5x8x7", "graphs.value.inputs[1].shape"),
        (("files", "value.onnx", "sha256"), None, "files.value.onnx.sha256"),
        (("schema_version",), True, "schema_version"),
    ],
)
def test_field_of_wrong_type_is_refused_by_name(
    bundle_copy: Path, keys: tuple[str | int, ...], value: object, field: str
) -> None:
    edit_manifest(bundle_copy, set_at(keys, value))
    exc = refused(bundle_copy, BundleSchemaError)
    assert_names_manifest(exc, bundle_copy, field, from_msgspec=True)


def test_missing_required_field_is_refused(bundle_copy: Path) -> None:
    edit_manifest(bundle_copy, lambda m: m["sampling"].pop("s1_theta"))
    exc = refused(bundle_copy, BundleSchemaError)
    assert_names_manifest(exc, bundle_copy, "sampling.s1_theta")


@pytest.mark.parametrize(
    ("keys", "value", "field", "words"),
    [
        (("sampling", "candidates"), 0, "sampling.candidates", "must be >= 1"),
        (("sampling", "candidates"), -5, "sampling.candidates", "must be >= 1"),
        (("sampling", "denoise_steps"), 0, "sampling.denoise_steps", "must be >= 1"),
        (("sampling", "s1_steps"), 0, "sampling.s1_steps", "must be >= 1"),
        (("sampling", "start_time_min"), 0.0, "sampling.start_time_min", "must be in (0, max]"),
        (("sampling", "start_time_max"), 1.5, "sampling.start_time_max", "must be <= 1"),
        (("sampling", "s1_theta"), 0.0, "sampling.s1_theta", "must be in (0, 1]"),
        (("sampling", "expert_cache_every"), 0, "sampling.expert_cache_every", "must be >= 1"),
        (("sampling", "noise_temperature"), -1.0, "sampling.noise_temperature", "must be > 0"),
        (("action_space", "step_period_s"), 0.0, "action_space.step_period_s", "[0.001, 1.0]"),
        (("action_space", "step_period_s"), 50.0, "action_space.step_period_s", "[0.001, 1.0]"),
        (("action_space", "step_period_s"), 5e-4, "action_space.step_period_s", "[0.001, 1.0]"),
        (("action_space", "kind"), "joint_velocity", "action_space.kind", "'joint_position'"),
        (("action_space", "action_units", 0), "deg", "action_space.action_units[0]", "'rad'"),
        (
            ("action_space", "action_units", 6),
            "rad",
            "action_space.action_units[6]",
            "'fraction_open'",
        ),
        (("precision",), "fp8", "precision", "'fp8'"),
        (("model", "d_model"), 0, "model", "d_model must be > 0"),
    ],
)
def test_value_out_of_range_is_refused(
    bundle_copy: Path, keys: tuple[str, ...], value: object, field: str, words: str
) -> None:
    edit_manifest(bundle_copy, set_at(keys, value))
    exc = refused(bundle_copy, BundleSchemaError)
    assert_names_manifest(exc, bundle_copy, field)
    assert words in str(exc)


def test_failed_parity_gate_is_refused(bundle_copy: Path) -> None:
    edit_manifest(bundle_copy, set_at(("parity", "passed"), False))
    exc = refused(bundle_copy, BundleParityFailed)
    assert_names_manifest(exc, bundle_copy, "parity.passed")


def _drop(keys: tuple[str, ...]) -> Callable[[dict[str, Any]], None]:
    def change(manifest: dict[str, Any]) -> None:
        node: Any = manifest
        for key in keys[:-1]:
            node = node[key]
        del node[keys[-1]]

    return change


@pytest.mark.parametrize(
    ("change", "field", "words"),
    [
        # An output recorded as failed while the overall verdict says passed.
        (
            set_at(("parity", "graphs", "value", "q", "passed"), False),
            "parity.graphs.value.q.passed",
            "recorded as failed",
        ),
        (
            set_at(("parity", "react", "slice", "passed"), False),
            "parity.react.slice.passed",
            "recorded as failed",
        ),
        # Numbers that fail the recorded thresholds, recorded as passed.
        (
            set_at(("parity", "graphs", "expert_step", "velocity", "cosine"), 0.5),
            "parity.graphs.expert_step.velocity",
            "needs cosine ≥ 0.9999",
        ),
        (
            set_at(("parity", "plan", "chunk_robot_units", "max_abs_err"), 0.2),
            "parity.plan.chunk_robot_units",
            "needs max abs ≤ 0.0001",
        ),
        # A report made at another precision, or on no observations.
        (set_at(("parity", "precision"), "fp16"), "parity.precision", "bundle is 'fp32'"),
        (set_at(("parity", "observations"), 0), "parity.observations", "at least 1"),
        # Thresholds looser than the exporter's, missing or unknown.
        (
            set_at(("parity", "thresholds", "graph_cosine"), 0.9),
            "parity.thresholds",
            "graph_cosine 0.9 is looser than 0.9999",
        ),
        (
            set_at(("parity", "thresholds", "q_max_abs"), 1.0),
            "parity.thresholds",
            "q_max_abs 1 is looser than 0.0001",
        ),
        (
            set_at(("parity", "thresholds", "choice_margin"), 10.0),
            "parity.thresholds",
            "choice_margin 10 is looser than 0.0002",
        ),
        (
            _drop(("parity", "thresholds", "robot_units_max_abs")),
            "parity.thresholds",
            "robot_units_max_abs missing",
        ),
        (
            set_at(("parity", "thresholds", "vibes"), 1.0),
            "parity.thresholds",
            "vibes is not a threshold",
        ),
        # Outputs left out of the report.
        (_drop(("parity", "graphs", "system1")), "parity.graphs", "expected"),
        (_drop(("parity", "plan", "q")), "parity.plan", "expected"),
        (_drop(("parity", "graphs", "prefix", "token_scores")), "parity.graphs.prefix", "expected"),
        # The choice gate.
        (set_at(("parity", "choice", "passed"), False), "parity.choice.passed", "another"),
        (set_at(("parity", "choice", "decisive"), 4), "parity.choice.decisive", "4 of 3"),
        (
            set_at(("parity", "choice", "agreement"), 0.0),
            "parity.choice.agreement",
            "agreed on all 3 decisive",
        ),
    ],
)
def test_self_contradictory_parity_report_is_refused(
    bundle_copy: Path, change: Callable[[dict[str, Any]], None], field: str, words: str
) -> None:
    """`parity.passed` alone is not trusted: the report must agree with itself and be at least
    as strict as the exporter's gate for the bundle's precision."""
    assert load_bundle(bundle_copy).manifest.parity.choice.decisive == 3
    edit_manifest(bundle_copy, change)
    exc = refused(bundle_copy, BundleParityFailed)
    assert_names_manifest(exc, bundle_copy, field)
    assert words in str(exc)


def test_stricter_thresholds_than_the_gate_are_accepted(bundle_copy: Path) -> None:
    edit_manifest(bundle_copy, set_at(("parity", "thresholds", "graph_cosine"), 0.99999))
    assert load_bundle(bundle_copy).manifest.parity.thresholds["graph_cosine"] == 0.99999


def test_missing_graph_entry_is_refused(bundle_copy: Path) -> None:
    edit_manifest(bundle_copy, lambda m: m["graphs"].pop("value"))
    exc = refused(bundle_copy, BundleSchemaError)
    assert_names_manifest(exc, bundle_copy, "graphs")
    assert "missing ['value']" in str(exc)


# ----------------------------------------------------------------------------- declared shapes


@pytest.mark.parametrize(
    ("keys", "value", "field"),
    [
        (
            ("graphs", "expert_step", "inputs", 3, "shape"),
            [5, 8, 6],
            "graphs.expert_step.inputs[3] (noisy_actions)",
        ),
        (
            ("graphs", "expert_step", "inputs", 3, "dtype"),
            "float16",
            "graphs.expert_step.inputs[3] (noisy_actions)",
        ),
        (("graphs", "value", "outputs", 1, "shape"), [5, 3], "graphs.value.outputs[1] (q_critics)"),
        (("graphs", "value", "inputs", 1, "name"), "chunk", "graphs.value.inputs"),
        (("tokenizer", "max_tokens"), 11, "tokenizer.max_tokens"),
    ],
)
def test_declared_signature_mismatch_is_refused(
    bundle_copy: Path, keys: tuple[str | int, ...], value: object, field: str
) -> None:
    edit_manifest(bundle_copy, set_at(keys, value))
    exc = refused(bundle_copy, BundleShapeMismatch)
    assert_names_manifest(exc, bundle_copy, field)


def test_candidates_changed_without_regraphing_is_refused(bundle_copy: Path) -> None:
    """sampling.candidates 5 -> 3 implies N=3 signatures; the declared graphs still say N=5.

    The first N-dependent tensor in signature order (expert_step's noisy_actions) trips the
    declared-signature check in load_bundle, before any graph is opened.
    """
    edit_manifest(bundle_copy, set_at(("sampling", "candidates"), 3))
    exc = refused(bundle_copy, BundleShapeMismatch)
    assert_names_manifest(exc, bundle_copy, "graphs.expert_step.inputs[3] (noisy_actions)")
    assert "float32[5, 8, 7]" in str(exc)
    assert "float32[3, 8, 7]" in str(exc)


def test_precision_changed_without_regraphing_is_refused(bundle_copy: Path) -> None:
    edit_manifest(bundle_copy, set_at(("precision",), "fp16"))
    exc = refused(bundle_copy, BundleShapeMismatch)
    assert_names_manifest(exc, bundle_copy, "graphs.prefix.outputs[0] (prefix_k)")


@pytest.mark.parametrize(
    "field",
    [
        "normalization.state_mean",
        "normalization.state_std",
        "normalization.action_mean",
        "normalization.action_std",
        "action_space.state_names",
        "action_space.action_names",
        "action_space.action_units",
    ],
)
@pytest.mark.parametrize("delta", [-1, 1], ids=["short", "long"])
def test_space_list_of_wrong_length_is_refused(bundle_copy: Path, field: str, delta: int) -> None:
    section, key = field.split(".")

    def change(m: dict[str, Any]) -> None:
        values = m[section][key]
        m[section][key] = values[:-1] if delta < 0 else [*values, values[-1]]

    edit_manifest(bundle_copy, change)
    exc = refused(bundle_copy, BundleShapeMismatch)
    assert_names_manifest(exc, bundle_copy, field)
    assert f"has {7 + delta} entries, model needs 7" in str(exc)


@pytest.mark.parametrize("key", ["state_std", "action_std"])
@pytest.mark.parametrize("value", [0.0, -0.6])
def test_non_positive_std_is_refused(bundle_copy: Path, key: str, value: float) -> None:
    edit_manifest(bundle_copy, set_at(("normalization", key, 3), value))
    exc = refused(bundle_copy, BundleSchemaError)
    assert_names_manifest(exc, bundle_copy, f"normalization.{key}")
    assert "> 0" in str(exc)


@pytest.mark.parametrize("key", ["s1_delta_mean", "s1_delta_std"])
def test_missing_system1_statistics_are_refused_with_the_fix(bundle_copy: Path, key: str) -> None:
    """A schema-2 era System 1 read absolute targets; its offsets statistics are absent."""
    edit_manifest(bundle_copy, set_at(("normalization", key), None))
    exc = refused(bundle_copy, BundleSchemaError)
    assert_names_manifest(exc, bundle_copy, f"normalization.{key}")
    assert "edgevla train system1" in str(exc)


@pytest.mark.parametrize("key", ["s1_delta_mean", "s1_delta_std"])
@pytest.mark.parametrize("where", ["rows", "columns", "ragged"])
def test_system1_statistics_of_wrong_shape_are_refused(
    bundle_copy: Path, key: str, where: str
) -> None:
    def change(m: dict[str, Any]) -> None:
        rows = m["normalization"][key]
        if where == "rows":
            m["normalization"][key] = rows[:-1]
        elif where == "columns":
            m["normalization"][key] = [r[:-1] for r in rows]
        else:
            m["normalization"][key] = [rows[0][:-1], *rows[1:]]

    edit_manifest(bundle_copy, change)
    exc = refused(bundle_copy, BundleShapeMismatch)
    assert_names_manifest(exc, bundle_copy, f"normalization.{key}")
    assert "s1_horizon" in str(exc)


@pytest.mark.parametrize("value", [0.0, -0.01])
def test_non_positive_system1_std_is_refused(bundle_copy: Path, value: float) -> None:
    edit_manifest(bundle_copy, set_at(("normalization", "s1_delta_std", 1, 2), value))
    exc = refused(bundle_copy, BundleSchemaError)
    assert_names_manifest(exc, bundle_copy, "normalization.s1_delta_std")
    assert "> 0" in str(exc)


def test_state_that_names_other_quantities_than_the_actions_is_refused(bundle_copy: Path) -> None:
    """System 1 works on each action's offset from the state of the same name."""

    def change(m: dict[str, Any]) -> None:
        names = m["action_space"]["state_names"]
        names[0], names[1] = names[1], names[0]

    edit_manifest(bundle_copy, change)
    exc = refused(bundle_copy, BundleSchemaError)
    assert_names_manifest(exc, bundle_copy, "action_space.state_names")


# ----------------------------------------------------------------------------- paths


def test_unlisted_graph_file_is_refused(bundle_copy: Path) -> None:
    """A graph whose file has no sha256 entry would be opened unverified."""
    edit_manifest(bundle_copy, set_at(("graphs", "value", "file"), "../x"))
    exc = refused(bundle_copy, BundleSchemaError)
    assert_names_manifest(exc, bundle_copy, "graphs.value.file")
    assert "'../x'" in str(exc)


@pytest.mark.parametrize("where", ["parent", "absolute", "nested"])
def test_graph_path_escaping_the_bundle_is_refused(bundle_copy: Path, where: str) -> None:
    """The escaping file exists and its hash matches: only the path check stands in the way."""
    outside = bundle_copy.parent / "elsewhere" / "value.onnx"
    outside.parent.mkdir()
    shutil.copy(bundle_copy / "value.onnx", outside)
    rel = {
        "parent": "../elsewhere/value.onnx",
        "absolute": str(outside),
        "nested": "sub/../../elsewhere/value.onnx",
    }[where]

    def change(m: dict[str, Any]) -> None:
        m["files"][rel] = m["files"].pop("value.onnx")
        m["graphs"]["value"]["file"] = rel

    edit_manifest(bundle_copy, change)
    exc = refused(bundle_copy, BundleSchemaError)
    assert_names_manifest(exc, bundle_copy, f"files.{rel}")
    assert "stay in the bundle" in str(exc)


def test_listed_file_outside_the_bundle_is_refused(bundle_copy: Path) -> None:
    """An extra `files` entry escaping the bundle is refused even though nothing opens it."""
    entry = {"sha256": "0" * 64, "bytes": 1}
    edit_manifest(bundle_copy, set_at(("files", "../x"), entry))
    exc = refused(bundle_copy, BundleSchemaError)
    assert_names_manifest(exc, bundle_copy, "files.../x")


# ----------------------------------------------------------------------------- real graphs


def test_graph_with_other_signature_but_matching_hash_is_refused_on_open(
    bundle_copy: Path, tiny_bundle_n3: Path
) -> None:
    """value.onnx from an N=3 export, re-hashed: manifest checks pass, the real graph does not."""
    shutil.copy(tiny_bundle_n3 / "value.onnx", bundle_copy / "value.onnx")
    edit_manifest(bundle_copy, rehash(bundle_copy, "value.onnx"))
    bundle = load_bundle(bundle_copy)  # hashes agree and the declared signatures are N=5
    with pytest.raises(BundleShapeMismatch) as info:
        OnnxRuntimeBackend.from_bundle(bundle, CPU_ONLY)
    exc = info.value
    assert exc.path == bundle_copy / "value.onnx"
    assert exc.field == "inputs.actions"
    assert "value.onnx" in str(exc)
    assert "float32[3, 8, 7]" in str(exc)
    assert "float32[5, 8, 7]" in str(exc)


def test_graph_of_another_kind_is_refused_on_open(bundle_copy: Path) -> None:
    """system1.onnx copied over value.onnx and re-hashed: its input names give it away."""
    shutil.copy(bundle_copy / "system1.onnx", bundle_copy / "value.onnx")
    edit_manifest(bundle_copy, rehash(bundle_copy, "value.onnx"))
    with pytest.raises(BundleShapeMismatch) as info:
        OnnxRuntimeBackend.from_bundle(load_bundle(bundle_copy), CPU_ONLY)
    assert info.value.path == bundle_copy / "value.onnx"
    assert info.value.field == "inputs"
    assert "value_summary" in str(info.value)


def test_candidates_and_declared_graphs_changed_together_are_refused_on_open(
    bundle_copy: Path, tiny_bundle_n3: Path
) -> None:
    """A manifest rewritten consistently for N=3 over N=5 graphs passes load_bundle; the
    backend's check of the real graphs catches the first N-dependent one."""
    n3 = json.loads((tiny_bundle_n3 / MANIFEST_NAME).read_text())

    def change(m: dict[str, Any]) -> None:
        m["sampling"]["candidates"] = 3
        m["graphs"] = n3["graphs"]

    edit_manifest(bundle_copy, change)
    bundle = load_bundle(bundle_copy)
    assert bundle.candidates == 3
    with pytest.raises(BundleShapeMismatch) as info:
        OnnxRuntimeBackend.from_bundle(bundle, CPU_ONLY)
    assert info.value.path == bundle_copy / "expert_step.onnx"
    assert info.value.field == "inputs.noisy_actions"
    assert "expert_step.onnx" in str(info.value)


def _tokenizer_json(bundle: Path) -> dict[str, Any]:
    return json.loads((bundle / "tokenizer.json").read_text())


def _write_tokenizer(bundle: Path, tokenizer: dict[str, Any]) -> None:
    (bundle / "tokenizer.json").write_text(json.dumps(tokenizer))
    edit_manifest(bundle, rehash(bundle, "tokenizer.json"))


def test_tokenizer_larger_than_the_model_vocabulary_is_refused(bundle_copy: Path) -> None:
    """Ids past model.vocab_size (128 for tiny) would index past the embedding table."""
    tok = _tokenizer_json(bundle_copy)
    vocab = tok["model"]["vocab"]
    for i in range(200):
        vocab.setdefault(f"word{i}", len(vocab))
    _write_tokenizer(bundle_copy, tok)
    exc = refused(bundle_copy, BundleSchemaError)
    assert exc.path == bundle_copy / "tokenizer.json"
    assert exc.field == "tokenizer.file"
    assert "tokenizer.json" in str(exc) and "embeds only 128" in str(exc)


def test_tokenizer_with_a_high_id_is_refused(bundle_copy: Path) -> None:
    tok = _tokenizer_json(bundle_copy)
    tok["model"]["vocab"]["zebra"] = 128
    _write_tokenizer(bundle_copy, tok)
    exc = refused(bundle_copy, BundleSchemaError)
    assert "highest id 128" in str(exc)


@pytest.mark.parametrize("token", ["[PAD]", "[UNK]"])
def test_tokenizer_without_special_tokens_is_refused(bundle_copy: Path, token: str) -> None:
    tok = _tokenizer_json(bundle_copy)
    vocab = tok["model"]["vocab"]
    vocab[token + "x"] = vocab.pop(token)
    if token == "[UNK]":
        tok["model"]["unk_token"] = "[UNK]x"
    _write_tokenizer(bundle_copy, tok)
    exc = refused(bundle_copy, BundleSchemaError)
    assert exc.path == bundle_copy / "tokenizer.json"
    assert f"lacks the {token} token" in str(exc)


def test_tokenizer_that_is_not_a_tokenizer_is_refused(bundle_copy: Path) -> None:
    _write_tokenizer(bundle_copy, {"hello": "world"})
    exc = refused(bundle_copy, BundleSchemaError)
    assert exc.path == bundle_copy / "tokenizer.json"
    assert "not a tokenizers file" in str(exc)


def test_nan_in_the_manifest_is_refused_as_invalid_json(bundle_copy: Path) -> None:
    """Python's json writes NaN; the manifest reader must refuse it with a named error."""
    edit_manifest(bundle_copy, set_at(("normalization", "state_std", 0), float("nan")))
    exc = refused(bundle_copy, BundleSchemaError)
    assert exc.path == bundle_copy / MANIFEST_NAME
    assert "not valid JSON" in str(exc)
