"""Export and the parity gate: PyTorch ↔ ONNX per graph and per plan, fp16, atomic failure."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from edgevla.export import bundle_writer
from edgevla.export.bundle_writer import ExportOptions, export_bundle
from edgevla.export.checkpoint import ReferencePolicy
from edgevla.export.onnx_export import ExportError
from edgevla.export.parity import ParityError, parity_inputs
from edgevla.export.reference_policy import torch_plan, torch_react
from edgevla.runtime import system1, system2
from edgevla.runtime.bundle import load_bundle
from edgevla.runtime.errors import BundleHashMismatch
from edgevla.runtime.policy import DualSystemPolicy


def test_manifest_records_passing_fp32_parity(tiny_bundle: Path) -> None:
    parity = load_bundle(tiny_bundle).manifest.parity
    assert parity.passed and parity.precision == "fp32"
    assert parity.thresholds == {
        "graph_cosine": 0.9999,
        "graph_max_abs": 1e-4,
        "action_cosine": 0.9999,
        "action_max_abs": 1e-4,
    }
    assert set(parity.graphs) == {"prefix", "expert_step", "value", "system1"}
    assert set(parity.graphs["prefix"]) == {
        "prefix_k",
        "prefix_v",
        "prefix_mask",
        "value_summary",
        "token_scores",
    }
    for group in (*parity.graphs.values(), parity.plan, parity.react):
        for result in group.values():
            assert result.cosine >= 0.9999 and result.max_abs_err <= 1e-4


def test_runtime_plan_and_react_match_pytorch(
    tiny_bundle: Path, tiny_policy: ReferencePolicy
) -> None:
    """Independent of the gate's own report: the runtime path against the eager model."""
    policy = DualSystemPolicy.from_dir(str(tiny_bundle))
    cfg, s = policy.bundle.model, policy.sampling
    starts = system2.candidate_start_times(s.candidates, s.start_time_min, s.start_time_max)
    rng = np.random.default_rng(11)
    for inputs in parity_inputs(tiny_policy, count=2, seed=5):
        noise = system2.sample_noise(rng, (s.candidates, cfg.chunk_len, cfg.action_dim))
        ours = system2.plan(policy.backend, inputs, noise, starts, s.denoise_steps)
        ref = torch_plan(tiny_policy.model, inputs, noise, starts, s.denoise_steps)
        np.testing.assert_allclose(ours.candidates, ref.candidates, atol=1e-4)
        np.testing.assert_allclose(ours.q, ref.q, atol=1e-4)
        assert ours.chosen == ref.chosen
        slice_ = system1.plan_slice(ref.candidates[ref.chosen], 2, cfg.s1_horizon)
        s1_noise = system2.sample_noise(rng, slice_.shape)
        got = system1.react(
            policy.backend, inputs.images, inputs.state, slice_, s1_noise, s.s1_theta, s.s1_steps
        )
        want = torch_react(
            tiny_policy.model, inputs.images, inputs.state, slice_, s1_noise, s.s1_theta, s.s1_steps
        )
        np.testing.assert_allclose(got, want, atol=1e-4)


def test_fp16_bundle_passes_its_gate(tiny_bundle_fp16: Path) -> None:
    bundle = load_bundle(tiny_bundle_fp16)
    parity = bundle.manifest.parity
    assert parity.passed and parity.precision == "fp16"
    assert parity.thresholds == {"graph_cosine": 0.999, "action_cosine": 0.99}
    for group in parity.graphs.values():
        assert all(r.cosine >= 0.999 for r in group.values())
    assert parity.plan["candidates"].cosine >= 0.99
    assert parity.react["slice"].cosine >= 0.99
    # The cache crosses between graphs at half precision; Euler accumulation stays float32.
    assert bundle.specs["prefix"].outputs[0].dtype == "float16"
    policy = DualSystemPolicy(bundle)
    obs_inputs = parity_inputs_for(policy)
    result = policy.plan(obs_inputs, np.random.default_rng(0))
    assert result.result.candidates.dtype == np.float32


def parity_inputs_for(policy: DualSystemPolicy):
    from edgevla.runtime.policy import Observation

    cfg = policy.bundle.model
    return Observation(
        images=np.zeros((cfg.num_cameras, cfg.image_size, cfg.image_size, 3), np.uint8),
        state=np.asarray(policy.bundle.manifest.normalization.state_mean, np.float32),
        instruction="touch the red cube",
    )


def _corrupting_export(target: str):
    """Wrap the real exporter so that `target` comes out with one weight matrix perturbed."""
    real = bundle_writer.export_graph

    def export(model, spec, precision, path, *rest):
        real(model, spec, precision, path, *rest)
        if spec.name != target:
            return
        proto = onnx.load(str(path))
        init = max(proto.graph.initializer, key=lambda t: int(np.prod(t.dims)))
        array = numpy_helper.to_array(init).copy()
        array *= 1.05
        init.CopyFrom(numpy_helper.from_array(array, init.name))
        onnx.save(proto, str(path))

    return export


def _leftovers(parent: Path) -> list[str]:
    return sorted(p.name for p in parent.iterdir())


def test_failing_gate_names_graph_and_leaves_nothing(
    tiny_policy: ReferencePolicy, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(bundle_writer, "export_graph", _corrupting_export("expert_step"))
    out = tmp_path / "bundle"
    with pytest.raises(ParityError) as info:
        export_bundle(tiny_policy, out, ExportOptions(parity_observations=1))
    message = str(info.value)
    assert "expert_step.velocity" in message and "cosine" in message
    assert "prefix." not in message  # the untouched graphs passed
    assert _leftovers(tmp_path) == []


def test_export_error_midway_leaves_nothing(
    tiny_policy: ReferencePolicy, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = bundle_writer.export_graph

    def export(model, spec, precision, path, *rest):
        if spec.name == "value":
            raise ExportError("exporting graph 'value' failed: injected")
        real(model, spec, precision, path, *rest)

    monkeypatch.setattr(bundle_writer, "export_graph", export)
    with pytest.raises(ExportError, match="'value'"):
        export_bundle(tiny_policy, tmp_path / "bundle", ExportOptions())
    assert _leftovers(tmp_path) == []


def test_overwrite_replaces_and_failure_keeps_the_old_bundle(
    tiny_policy: ReferencePolicy, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "bundle"
    export_bundle(tiny_policy, out, ExportOptions(candidates=2, parity_observations=1))
    before = (out / "manifest.json").read_bytes()
    monkeypatch.setattr(bundle_writer, "export_graph", _corrupting_export("prefix"))
    with pytest.raises(ParityError, match="prefix"):
        export_bundle(
            tiny_policy, out, ExportOptions(candidates=3, parity_observations=1), overwrite=True
        )
    assert (out / "manifest.json").read_bytes() == before
    assert load_bundle(out).candidates == 2
    assert _leftovers(tmp_path) == ["bundle"]


def test_same_seed_same_bundle_graphs(
    tiny_policy: ReferencePolicy, tiny_bundle: Path, tmp_path: Path
) -> None:
    out = tmp_path / "again"
    export_bundle(tiny_policy, out, ExportOptions(parity_observations=1))
    for name in ("prefix", "expert_step", "value", "system1"):
        a = onnx.load(str(out / f"{name}.onnx")).graph.initializer
        b = onnx.load(str(tiny_bundle / f"{name}.onnx")).graph.initializer
        assert [numpy_helper.to_array(t).tobytes() for t in a] == [
            numpy_helper.to_array(t).tobytes() for t in b
        ]


def test_external_weight_files_are_bundled_and_hash_checked(
    tiny_policy: ReferencePolicy, tiny_bundle: Path, tmp_path: Path
) -> None:
    """Graphs past protobuf's 2 GiB keep weights in `<graph>.onnx.data`; forced here at 0 bytes."""
    out = tmp_path / "external"
    export_bundle(tiny_policy, out, ExportOptions(parity_observations=1, external_data_min_bytes=0))
    bundle = load_bundle(out)
    assert bundle.manifest.graphs["prefix"].data_file == "prefix.onnx.data"
    assert "prefix.onnx.data" in bundle.manifest.files
    obs_policy = DualSystemPolicy(bundle)
    embedded = DualSystemPolicy.from_dir(str(tiny_bundle))
    obs = parity_inputs_for(embedded)
    np.testing.assert_array_equal(
        obs_policy.plan(obs, np.random.default_rng(0)).chunk,
        embedded.plan(obs, np.random.default_rng(0)).chunk,
    )
    data = out / "expert_step.onnx.data"
    raw = bytearray(data.read_bytes())
    raw[len(raw) // 2] ^= 0x01
    data.write_bytes(bytes(raw))
    with pytest.raises(BundleHashMismatch, match=r"expert_step\.onnx\.data"):
        load_bundle(out)
