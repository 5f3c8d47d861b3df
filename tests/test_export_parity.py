"""Export and the parity gate: PyTorch ↔ ONNX per graph and per plan, fp16, atomic failure."""

from __future__ import annotations

import itertools
import re
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from edgevla.export import bundle_writer
from edgevla.export.bundle_writer import ExportOptions, export_bundle
from edgevla.export.checkpoint import ReferencePolicy
from edgevla.export.onnx_export import ExportError
from edgevla.export.parity import ParityError, failures, parity_inputs, run_parity_gate
from edgevla.export.reference_policy import torch_plan, torch_react
from edgevla.runtime import system1, system2
from edgevla.runtime.backend import CPU, BackendConfig, OnnxRuntimeBackend
from edgevla.runtime.bundle import load_bundle
from edgevla.runtime.errors import BundleHashMismatch
from edgevla.runtime.manifest import ParityReport
from edgevla.runtime.model_config import GRAPH_NAMES
from edgevla.runtime.policy import DualSystemPolicy


def test_manifest_records_passing_fp32_parity(tiny_bundle: Path) -> None:
    parity = load_bundle(tiny_bundle).manifest.parity
    assert parity.passed and parity.precision == "fp32"
    assert parity.thresholds == {
        "graph_cosine": 0.9999,
        "graph_max_abs": 1e-4,
        "action_cosine": 0.9999,
        "action_max_abs": 1e-4,
        "q_max_abs": 1e-4,
        "robot_units_max_abs": 1e-4,
        "choice_margin": 2e-4,
    }
    assert set(parity.plan) == {"candidates", "q", "chunk_robot_units"}
    assert parity.choice.passed and parity.choice.agreement == 1.0
    assert set(parity.graphs) == {"prefix", "expert_step", "expert_cached", "value", "system1"}
    assert set(parity.graphs["prefix"]) == {
        "prefix_k",
        "prefix_v",
        "prefix_mask",
        "value_summary",
        "token_scores",
        "kept_tokens",
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
    assert parity.thresholds == {
        "graph_cosine": 0.999,
        "action_cosine": 0.99,
        "q_max_abs": 5e-3,
        "robot_units_max_abs": 1e-2,
        "choice_margin": 1e-2,
    }
    for group in parity.graphs.values():
        assert all(r.cosine >= 0.999 for r in group.values())
    assert parity.plan["candidates"].cosine >= 0.99
    assert parity.plan["q"].max_abs_err <= 5e-3
    assert parity.plan["chunk_robot_units"].max_abs_err <= 1e-2
    assert parity.react["slice"].cosine >= 0.99
    assert parity.choice.passed
    # The cache crosses between graphs at half precision.
    assert bundle.specs["prefix"].outputs[0].dtype == "float16"


def test_float32_euler_accumulation_matters_at_fp16(
    tiny_bundle_fp16: Path, tiny_policy: ReferencePolicy
) -> None:
    """The runtime integrates in float32 over fp16 graphs; doing it in float16 costs accuracy.

    Same fp16 graphs, same noise: System 2's Euler loop by hand with a float16 state against
    the runtime's float32 one, both measured against the float32 PyTorch plan.
    """
    bundle = load_bundle(tiny_bundle_fp16)
    backend = OnnxRuntimeBackend.from_bundle(bundle, BackendConfig(providers=(CPU,)))
    cfg, s = bundle.model, bundle.manifest.sampling
    steps = 20
    starts = system2.candidate_start_times(s.candidates, s.start_time_min, s.start_time_max)
    rng = np.random.default_rng(3)
    err32, err16 = [], []
    for inputs in parity_inputs(tiny_policy, count=3, seed=1):
        noise = system2.sample_noise(rng, (s.candidates, cfg.chunk_len, cfg.action_dim))
        ref = torch_plan(tiny_policy.model, inputs, noise, starts, steps).candidates
        prefix = system2.encode_prefix(backend, inputs)
        ours = system2.denoise_candidates(backend, prefix, noise, starts, steps)
        x = noise.astype(np.float16)
        dt = (starts / steps).astype(np.float16)
        for k in range(steps):
            feeds = {
                "prefix_k": prefix.k,
                "prefix_v": prefix.v,
                "prefix_mask": prefix.mask,
                "noisy_actions": x.astype(np.float32),
                "time": (starts * (1.0 - k / steps)).astype(np.float32),
            }
            velocity = backend.run("expert_step", feeds)["velocity"].astype(np.float16)
            x = x - dt[:, None, None] * velocity
        err32.append(np.abs(ours - ref).max())
        err16.append(np.abs(x.astype(np.float32) - ref).max())
    # Measured: float32 1.1e-3, float16 5.6e-3 (K = 20); the gap grows with K.
    assert max(err16) > 2 * max(err32)
    assert max(err32) < 2e-3


def parity_inputs_for(policy: DualSystemPolicy):
    from edgevla.runtime.policy import Observation

    cfg = policy.bundle.model
    return Observation(
        images=np.zeros((cfg.num_cameras, cfg.image_size, cfg.image_size, 3), np.uint8),
        state=np.asarray(policy.bundle.manifest.normalization.state_mean, np.float32),
        instruction="touch the red cube",
    )


def _corrupting_export(target: str, factor: float = 1.05):
    """Wrap the real exporter so that `target` comes out with one weight matrix scaled."""
    real = bundle_writer.export_graph

    def export(model, spec, precision, path, *rest):
        real(model, spec, precision, path, *rest)
        if spec.name != target:
            return
        proto = onnx.load(str(path))
        init = max(proto.graph.initializer, key=lambda t: int(np.prod(t.dims)))
        array = numpy_helper.to_array(init).copy()
        array *= np.asarray(factor, dtype=array.dtype)
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


def test_failing_fp16_gate_names_graph_and_leaves_nothing(
    tiny_policy: ReferencePolicy, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """fp16's looser thresholds still catch a wrong weight (measured: cosine 0.97)."""
    monkeypatch.setattr(bundle_writer, "export_graph", _corrupting_export("expert_step", 1.5))
    with pytest.raises(ParityError) as info:
        export_bundle(
            tiny_policy, tmp_path / "bundle", ExportOptions(precision="fp16", parity_observations=1)
        )
    message = str(info.value)
    assert "at fp16" in message
    assert re.search(r"expert_step\.velocity: cosine 0\.9\d+.*needs cosine ≥ 0\.999", message)
    assert "value." not in message and "system1." not in message
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
    for name in GRAPH_NAMES:
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


class _Rewriting:
    """An InferenceBackend around a real one that rewrites one graph's outputs (a fault)."""

    def __init__(self, inner: OnnxRuntimeBackend, graph: str, rewrite) -> None:
        self.inner, self.graph, self.rewrite = inner, graph, rewrite

    @property
    def providers(self) -> list[str]:
        return self.inner.providers

    def run(self, graph: str, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        out = self.inner.run(graph, feeds)
        return self.rewrite(out) if graph == self.graph else out


@pytest.fixture(scope="module")
def fp16_backend(tiny_bundle_fp16: Path) -> OnnxRuntimeBackend:
    return OnnxRuntimeBackend.from_bundle(
        load_bundle(tiny_bundle_fp16), BackendConfig(providers=(CPU,), warmup_runs=0)
    )


def _gate(policy: ReferencePolicy, backend, bundle: Path) -> ParityReport:
    sampling = load_bundle(bundle).manifest.sampling
    return run_parity_gate(policy, backend, "fp16", sampling, observations=3, seed=0)


def test_fp16_gate_refuses_a_reversed_choice(
    tiny_policy: ReferencePolicy, tiny_bundle_fp16: Path, fp16_backend: OnnxRuntimeBackend
) -> None:
    """In every plan the value graph scores the best candidate just under the second best.

    Q moves by little more than the top-two margin. Whether Q's cosine still passes fp16's 0.99
    depends on the weights' Q spread (0.998 with tiny's earlier 8-pixel patches, 0.62 now), so the
    choice gate must refuse the plan on its own: the robot would run another candidate. The graph
    probe of `value` (the first value call of each observation) is left alone, so only the plan
    can show it.
    """
    calls = itertools.count()

    def demote_best(out: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if next(calls) % 2 == 0:  # the gate's probe of the value graph alone
            return out
        q = out["q"].copy()
        order = np.argsort(q)
        q[order[-1]] = q[order[-2]] - 1e-3
        return {**out, "q": q}

    report = _gate(tiny_policy, _Rewriting(fp16_backend, "value", demote_best), tiny_bundle_fp16)
    assert all(o.passed for g in report.graphs.values() for o in g.values())
    assert report.plan["candidates"].passed
    assert not report.passed and not report.choice.passed
    assert report.choice.decisive >= 1 and report.choice.agreement == 0.0
    lines = "\n".join(failures(report))
    assert "plan.choice" in lines
    assert "plan.q" in lines and "needs max abs ≤ 0.005" in lines
    assert "plan.chunk_robot_units" in lines  # the runtime's own choice, not PyTorch's


def test_fp16_gate_measures_robot_units_in_rad(
    tiny_policy: ReferencePolicy, tiny_bundle_fp16: Path, fp16_backend: OnnxRuntimeBackend
) -> None:
    """A velocity bias of 0.02 moves every joint target by ~0.015 rad: cosine of absolute
    joint targets cannot see it (the home-pose offset dominates), max abs error in rad can."""

    def bias(out: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return {**out, "velocity": out["velocity"] + np.float32(0.02)}

    report = _gate(tiny_policy, _Rewriting(fp16_backend, "expert_step", bias), tiny_bundle_fp16)
    chunk = report.plan["chunk_robot_units"]
    assert chunk.cosine > 0.9999  # would pass even fp32's cosine threshold
    assert chunk.max_abs_err > 1e-2 and not chunk.passed
    assert report.graphs["expert_step"]["velocity"].passed
    assert report.plan["candidates"].passed
    assert [line.split(":")[0] for line in failures(report)] == ["plan.chunk_robot_units"]


def test_gate_names_a_nan_from_the_exported_graphs(
    tiny_policy: ReferencePolicy, tiny_bundle_fp16: Path, fp16_backend: OnnxRuntimeBackend
) -> None:
    """The runtime refuses NaN in a plan; the gate turns that into a ParityError naming it."""

    def poison(out: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        velocity = out["velocity"].copy()
        velocity[0, 0, 0] = np.nan
        return {**out, "velocity": velocity}

    backend = _Rewriting(fp16_backend, "expert_step", poison)
    with pytest.raises(ParityError, match="plan: graph 'expert_step' output 'velocity'"):
        _gate(tiny_policy, backend, tiny_bundle_fp16)
