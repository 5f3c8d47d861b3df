"""Graph files that pass the manifest checks but that onnxruntime cannot open are refused by name,
and a bundle changed on disk after it was verified is refused once its files have been read."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import onnx
import pytest
from onnx import numpy_helper

from edgevla.export.bundle_writer import ExportOptions, export_bundle
from edgevla.export.checkpoint import ReferencePolicy
from edgevla.runtime.backend import CPU, BackendConfig, OnnxRuntimeBackend
from edgevla.runtime.bundle import load_bundle, sha256_file
from edgevla.runtime.errors import (
    BundleError,
    BundleGraphInvalid,
    BundleHashMismatch,
)
from edgevla.runtime.manifest import MANIFEST_NAME
from edgevla.runtime.policy import DualSystemPolicy

CPU_ONLY = BackendConfig(providers=(CPU,), warmup_runs=0)


def rehash(bundle: Path, name: str) -> None:
    """Record `name`'s current sha256 and size, as someone who rewrites the manifest would."""
    path = bundle / MANIFEST_NAME
    manifest = json.loads(path.read_text())
    file = bundle / name
    manifest["files"][name] = {"sha256": sha256_file(file), "bytes": file.stat().st_size}
    path.write_text(json.dumps(manifest, indent=2))


def scale_a_weight(graph: Path) -> None:
    """Rewrite a graph with one weight changed: still a valid graph of the same signature."""
    proto = onnx.load(str(graph))
    init = max(proto.graph.initializer, key=lambda t: len(t.raw_data))
    init.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(init) * 1.01, init.name))
    onnx.save(proto, str(graph))


# ----------------------------------------------------------------------------- unreadable graphs


def test_corrupt_graph_with_a_rehashed_manifest_is_refused_by_name(bundle_copy: Path) -> None:
    graph = bundle_copy / "value.onnx"
    graph.write_bytes(graph.read_bytes()[: graph.stat().st_size // 2])
    rehash(bundle_copy, "value.onnx")
    bundle = load_bundle(bundle_copy)  # hashes agree: only opening the graph can tell
    with pytest.raises(BundleGraphInvalid) as info:
        OnnxRuntimeBackend.from_bundle(bundle, CPU_ONLY)
    assert isinstance(info.value, BundleError)
    assert info.value.path == graph
    assert str(info.value).startswith(f"bundle refused: {graph}: onnxruntime cannot open it")


@pytest.fixture(scope="module")
def external_bundle(tiny_policy: ReferencePolicy, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Weights in `<graph>.onnx.data` (forced at 0 bytes; real only past 1 GiB)."""
    out = tmp_path_factory.mktemp("bundles") / "external"
    export_bundle(tiny_policy, out, ExportOptions(parity_observations=1, external_data_min_bytes=0))
    return out


def test_external_data_outside_the_bundle_is_refused_by_name(
    external_bundle: Path, tmp_path: Path
) -> None:
    """value.onnx rewritten to read its weights from ../outside.data, and re-hashed: the
    manifest checks pass, onnxruntime refuses the path, and the refusal names the graph."""
    bundle_dir = tmp_path / "bundle"
    shutil.copytree(external_bundle, bundle_dir)
    graph = bundle_dir / "value.onnx"
    shutil.copy(bundle_dir / "value.onnx.data", tmp_path / "outside.data")
    proto = onnx.load(str(graph), load_external_data=False)
    for init in proto.graph.initializer:
        for entry in init.external_data:
            if entry.key == "location":
                entry.value = "../outside.data"
    onnx.save(proto, str(graph))
    rehash(bundle_dir, "value.onnx")
    bundle = load_bundle(bundle_dir)
    with pytest.raises(BundleGraphInvalid) as info:
        OnnxRuntimeBackend.from_bundle(bundle, CPU_ONLY)
    assert info.value.path == graph
    assert "escapes model directory" in str(info.value)


# ----------------------------------------------------------------------------- verify, then swap


def test_graph_replaced_after_verification_is_refused(bundle_copy: Path) -> None:
    """Between load_bundle and the sessions reading the files, a graph is replaced by a valid
    graph of the same signature: the backend re-hashes after opening and refuses it."""
    bundle = load_bundle(bundle_copy)
    scale_a_weight(bundle_copy / "expert_step.onnx")
    with pytest.raises(BundleHashMismatch) as info:
        OnnxRuntimeBackend.from_bundle(bundle, CPU_ONLY)
    assert info.value.path == bundle_copy / "expert_step.onnx"
    assert info.value.field is not None and info.value.field.startswith("files.expert_step.onnx")
    assert "changed after the bundle was verified" in str(info.value)


def test_bundle_directory_swapped_after_verification_is_refused(
    bundle_copy: Path, tiny_bundle_fp16: Path, tmp_path: Path
) -> None:
    """An overwrite-export renames another bundle into place: its own manifest and files are
    consistent, but they are not the ones that were verified."""
    bundle = load_bundle(bundle_copy)
    bundle_copy.rename(tmp_path / "retired")
    shutil.copytree(tiny_bundle_fp16, bundle_copy)
    with pytest.raises(BundleHashMismatch) as info:
        OnnxRuntimeBackend.from_bundle(bundle, CPU_ONLY)
    assert info.value.path == bundle_copy / MANIFEST_NAME


def test_tokenizer_replaced_after_verification_is_refused(bundle_copy: Path) -> None:
    """The policy reads the tokenizer after load_bundle hashed it; a swap in between is refused
    once it has been read, naming tokenizer.json."""
    bundle = load_bundle(bundle_copy)
    backend = OnnxRuntimeBackend.from_bundle(bundle, CPU_ONLY)
    tok = json.loads((bundle_copy / "tokenizer.json").read_text())
    vocab = tok["model"]["vocab"]
    vocab["sideways"] = vocab.pop("left")  # same size, valid, another meaning for an id
    (bundle_copy / "tokenizer.json").write_text(json.dumps(tok))
    with pytest.raises(BundleHashMismatch) as info:
        DualSystemPolicy(bundle, backend)
    assert info.value.path == bundle_copy / "tokenizer.json"
    assert "changed after the bundle was verified" in str(info.value)
