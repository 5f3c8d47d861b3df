"""System 2 plan and System 1 react through the runtime, and the checks on what goes in."""

from __future__ import annotations

import hashlib
import json
import logging
import subprocess
import sys
from collections import Counter
from collections.abc import Mapping
from pathlib import Path

import msgspec
import numpy as np
import onnxruntime
import pytest

from edgevla.runtime import backend as backend_module
from edgevla.runtime import system1, system2
from edgevla.runtime.backend import (
    CPU,
    CUDA,
    TENSORRT,
    BackendConfig,
    OnnxRuntimeBackend,
    engine_cache_for,
    select_providers,
)
from edgevla.runtime.bundle import load_bundle
from edgevla.runtime.errors import (
    BackendUnavailable,
    ConfigError,
    InferenceInputError,
    NonFiniteOutput,
)
from edgevla.runtime.model_config import GRAPH_NAMES
from edgevla.runtime.policy import DualSystemPolicy, Observation


@pytest.fixture(scope="module")
def policy(tiny_bundle: Path) -> DualSystemPolicy:
    return DualSystemPolicy.from_dir(str(tiny_bundle))


def observation(policy: DualSystemPolicy, seed: int = 0, **changes) -> Observation:
    cfg = policy.bundle.model
    rng = np.random.default_rng(seed)
    fields = {
        "images": rng.integers(
            0, 256, (cfg.num_cameras, cfg.image_size, cfg.image_size, 3), dtype=np.uint8
        ),
        "state": np.asarray(policy.bundle.manifest.normalization.state_mean, np.float32),
        "instruction": "touch the red cube",
    }
    return Observation(**{**fields, **changes})


def test_same_seed_same_plan(tiny_bundle: Path, policy: DualSystemPolicy) -> None:
    other = DualSystemPolicy.from_dir(str(tiny_bundle))
    a = policy.plan(observation(policy), np.random.default_rng(3))
    b = other.plan(observation(policy), np.random.default_rng(3))
    np.testing.assert_array_equal(a.chunk, b.chunk)
    np.testing.assert_array_equal(a.result.q, b.result.q)
    c = policy.plan(observation(policy), np.random.default_rng(4))
    assert not np.allclose(a.result.candidates, c.result.candidates)


def test_plan_picks_the_best_value_and_returns_robot_units(policy: DualSystemPolicy) -> None:
    plan = policy.plan(observation(policy), np.random.default_rng(0))
    r = plan.result
    cfg = policy.bundle.model
    assert r.candidates.shape == (policy.sampling.candidates, cfg.chunk_len, cfg.action_dim)
    assert r.chosen == int(np.argmax(r.q))
    np.testing.assert_allclose(r.q, r.q_critics.min(axis=1))
    np.testing.assert_allclose(plan.chunk, policy.normalizer.unnormalize_actions(r.chunk))
    assert r.token_scores.shape == (cfg.num_visual_tokens,)
    assert set(r.timings_s) == {"prefix_s", "denoise_s", "value_s", "total_s"}


def test_the_instruction_changes_the_plan(policy: DualSystemPolicy) -> None:
    red = policy.plan(observation(policy), np.random.default_rng(0))
    blue = policy.plan(
        observation(policy, instruction="touch the blue cube"), np.random.default_rng(0)
    )
    assert not np.allclose(red.chunk, blue.chunk)


def test_react_refines_the_slice_for_now(policy: DualSystemPolicy) -> None:
    cfg = policy.bundle.model
    plan = policy.plan(observation(policy), np.random.default_rng(0))
    refined = policy.react(plan, 0, observation(policy), np.random.default_rng(1))
    assert refined.shape == (cfg.s1_horizon, cfg.action_dim)
    assert np.all(np.isfinite(refined))
    # Past the end of the chunk System 1 still answers, from the held last action.
    late = policy.react(plan, cfg.chunk_len + 3, observation(policy), np.random.default_rng(1))
    assert late.shape == refined.shape


def test_system1_sees_the_slice_as_offsets_from_the_state(policy: DualSystemPolicy) -> None:
    """System 1's units: converting there and back is exact, and moving the arm and the plan
    together leaves what System 1 sees unchanged (θ1 is a fraction of the slice's motion)."""
    cfg, n = policy.bundle.model, policy.normalizer
    plan = policy.plan(observation(policy), np.random.default_rng(0))
    rows = plan.chunk[: cfg.s1_horizon]
    state = observation(policy).state
    x = n.to_system1(rows, state)
    assert x.shape == rows.shape and x.dtype == np.float32
    np.testing.assert_allclose(n.from_system1(x, state), rows, atol=1e-5)
    shift = np.full(cfg.state_dim, 0.3, np.float32)
    np.testing.assert_allclose(n.to_system1(rows + shift, state + shift), x, atol=1e-3)
    expected = (rows - state - n.s1_delta_mean) / n.s1_delta_std
    np.testing.assert_allclose(x, expected, rtol=1e-5, atol=1e-4)
    with pytest.raises(InferenceInputError, match="NaN"):
        n.to_system1(rows, np.full(cfg.state_dim, np.nan, np.float32))


def test_start_times_and_slices() -> None:
    np.testing.assert_allclose(system2.candidate_start_times(1, 0.9, 1.0), [1.0])
    times = system2.candidate_start_times(5, 0.9, 1.0)
    np.testing.assert_allclose(times, [1.0, 0.975, 0.95, 0.925, 0.9], rtol=1e-6)
    chunk = np.arange(12, dtype=np.float32).reshape(4, 3)
    np.testing.assert_array_equal(system1.plan_slice(chunk, 2, 3), chunk[[2, 3, 3]])
    with pytest.raises(ValueError, match="start_step"):
        system1.plan_slice(chunk, -1, 2)
    # θ1 = 1 re-noises completely; θ1 = 0 keeps the plan.
    noise = np.ones((2, 3), np.float32)
    np.testing.assert_array_equal(system1.renoise(chunk[:2], noise, 0.0), chunk[:2])
    np.testing.assert_array_equal(system1.renoise(chunk[:2], noise, 1.0), noise)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"images": np.zeros((1, 32, 32, 3), np.uint8)}, "images are uint8"),
        ({"images": np.zeros((2, 32, 32, 3), np.float32)}, "expects uint8"),
        ({"state": np.zeros(6, np.float32)}, "state has shape"),
        ({"state": np.array([0, 0, np.nan, 0, 0, 0, 0], np.float32)}, "NaN or Inf"),
        ({"instruction": "touch " * 20}, "at most 12"),
        ({"instruction": None}, "must be a str"),
    ],
)
def test_bad_observations_are_named(policy: DualSystemPolicy, change: dict, message: str) -> None:
    with pytest.raises(InferenceInputError, match=message):
        policy.plan(observation(policy, **change), np.random.default_rng(0))


def test_unknown_words_map_to_unk(policy: DualSystemPolicy) -> None:
    ids, mask = policy.tokenizer.encode("touch the zorblax")
    assert ids[0, 2] == policy.tokenizer.unk_id and mask[0].sum() == 3


def test_backend_refuses_wrong_feeds(policy: DualSystemPolicy) -> None:
    with pytest.raises(InferenceInputError, match="'value': input 'actions' is float32"):
        policy.backend.run(
            "value",
            {
                "value_summary": np.zeros((1, 64), np.float32),
                "actions": np.zeros((2, 8, 7), np.float32),
            },
        )
    with pytest.raises(InferenceInputError, match="'actions' missing"):
        policy.backend.run("value", {"value_summary": np.zeros((1, 64), np.float32)})
    with pytest.raises(InferenceInputError, match="unknown graph 'decoder'"):
        policy.backend.run("decoder", {})


def test_sampling_must_fit_the_graphs(policy: DualSystemPolicy) -> None:
    """Another N is a configuration mistake (the graphs are built for N), not a bad input."""
    with pytest.raises(ConfigError, match=r"sampling\.candidates: .*take 5 candidates") as info:
        policy.with_sampling(candidates=3)
    assert not isinstance(info.value, InferenceInputError)
    fewer_steps = policy.with_sampling(denoise_steps=2)
    assert fewer_steps.plan(observation(policy), np.random.default_rng(0)).chunk.shape == (8, 7)


@pytest.mark.parametrize(
    ("change", "words"),
    [
        ({"denoise_steps": 0}, "sampling.denoise_steps: 0 must be >= 1"),
        ({"s1_steps": -1}, "sampling.s1_steps: -1 must be >= 1"),
        ({"s1_theta": 1.5}, r"sampling.s1_theta: 1.5 must be in \(0, 1\]"),
        ({"expert_cache_every": 0}, "sampling.expert_cache_every: 0 must be >= 1"),
        ({"start_time_min": 0.0}, r"sampling.start_time_min: 0.0 must be in \(0, max\]"),
        ({"start_time_max": 2.0}, "sampling.start_time_max: 2.0 must be <= 1"),
        ({"noise_temperature": 0.0}, "sampling.noise_temperature: 0.0 must be > 0"),
        ({"noise_temperature": float("nan")}, "sampling.noise_temperature: nan must be a finite"),
        ({"denoise_steps": 2.5}, "sampling.denoise_steps: 2.5 must be an integer"),
        ({"expert_full_steps": [1, 4]}, "sampling.expert_full_steps: .* must start with step 0"),
        ({"expert_full_steps": [0, 4, 4]}, "sampling.expert_full_steps: .* strictly increasing"),
        ({"expert_full_steps": [0, 10]}, r"sampling.expert_full_steps: .* steps are 0 … 9"),
        ({"expert_full_steps": []}, "sampling.expert_full_steps: .* must start with step 0"),
        (
            {"expert_cache_extrapolation": "cubic"},
            "sampling.expert_cache_extrapolation: 'cubic' is not 'hold' or 'linear'",
        ),
    ],
)
def test_sampling_overrides_are_checked_like_the_bundles(
    policy: DualSystemPolicy, change: dict, words: str
) -> None:
    """with_sampling goes through the loader's rules: no plan runs with settings a bundle
    carrying them would be refused for."""
    with pytest.raises(ConfigError, match=words) as info:
        policy.with_sampling(**change)
    assert info.value.field == f"sampling.{next(iter(change))}"
    with pytest.raises(ConfigError, match=words):
        DualSystemPolicy(
            policy.bundle, policy.backend, msgspec.structs.replace(policy.sampling, **change)
        )


def test_provider_selection(tiny_bundle: Path, tmp_path: Path) -> None:
    everything = [TENSORRT, CUDA, CPU]
    bundle = load_bundle(tiny_bundle)
    digest = hashlib.sha256((tiny_bundle / "manifest.json").read_bytes()).hexdigest()[:16]
    # Engines live in a directory named after the bundle's content, under the cache root.
    cache = engine_cache_for(bundle, BackendConfig())
    assert cache == tiny_bundle.resolve().with_name("tiny-fp32.engines") / digest
    assert engine_cache_for(bundle, BackendConfig(engine_cache_dir=tmp_path / "e")) == (
        tmp_path / "e" / digest
    )
    chosen = select_providers(BackendConfig(), "fp16", cache, available=everything)
    assert [name for name, _ in chosen] == [TENSORRT, CUDA, CPU]
    trt = chosen[0][1]
    assert trt["trt_fp16_enable"] is True
    assert trt["trt_engine_cache_path"] == trt["trt_timing_cache_path"] == str(cache)
    assert trt["trt_timing_cache_enable"] is True
    assert (
        select_providers(BackendConfig(), "fp32", cache, everything)[0][1]["trt_fp16_enable"]
        is False
    )
    assert [n for n, _ in select_providers(BackendConfig(), "fp32", cache, [CPU])] == [CPU]
    # Asking by name for what is absent is an error, not a silent fallback.
    with pytest.raises(BackendUnavailable, match="TensorrtExecutionProvider"):
        select_providers(BackendConfig(providers=(TENSORRT,)), "fp32", cache, [CPU])
    backend = OnnxRuntimeBackend.from_bundle(
        load_bundle(tiny_bundle), BackendConfig(intra_op_threads=1, warmup_runs=2)
    )
    assert backend.providers == [CPU]
    assert set(backend.warmup_s) == set(GRAPH_NAMES)


def test_thread_pool_modes_give_the_same_plan(tiny_bundle: Path, policy: DualSystemPolicy) -> None:
    """Per-session pools run in a fresh interpreter: this one already made the shared pool."""
    bundle = load_bundle(tiny_bundle)
    with pytest.raises(ConfigError, match="per_session' is impossible in this process"):
        OnnxRuntimeBackend.from_bundle(bundle, BackendConfig(thread_pool="per_session"))
    with pytest.raises(ConfigError, match="thread_pool must be"):
        OnnxRuntimeBackend.from_bundle(bundle, BackendConfig(thread_pool="bogus"))
    script = f"""
import numpy as np, sys
from edgevla.runtime.backend import BackendConfig, OnnxRuntimeBackend
from edgevla.runtime.bundle import load_bundle
from edgevla.runtime.policy import DualSystemPolicy, Observation
bundle = load_bundle({str(tiny_bundle)!r})
policy = DualSystemPolicy(
    bundle, OnnxRuntimeBackend.from_bundle(bundle, BackendConfig(thread_pool="per_session"))
)
images = np.frombuffer(sys.stdin.buffer.read(), np.uint8).reshape(2, 32, 32, 3)
state = np.asarray(bundle.manifest.normalization.state_mean)
obs = Observation(images, state, "touch the red cube")
sys.stdout.buffer.write(policy.plan(obs, np.random.default_rng(2)).chunk.tobytes())
"""
    obs = observation(policy)
    done = subprocess.run(
        [sys.executable, "-c", script], input=obs.images.tobytes(), capture_output=True, timeout=120
    )
    assert done.returncode == 0, done.stderr.decode()
    theirs = np.frombuffer(done.stdout, np.float32).reshape(8, 7)
    np.testing.assert_allclose(policy.plan(obs, np.random.default_rng(2)).chunk, theirs, atol=1e-6)


@pytest.mark.filterwarnings("ignore:Specified provider 'TensorrtExecutionProvider':UserWarning")
def test_tensorrt_engines_are_cached_per_bundle_content(
    bundle_copy: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An in-place re-export gets a fresh engine directory instead of the old bundle's engines.

    TensorRT is faked as available: onnxruntime warns and runs the graphs on the CPU, but the
    backend has already chosen (and created) the engine cache directory it hands to TensorRT.
    """
    monkeypatch.setattr(onnxruntime, "get_available_providers", lambda: [TENSORRT, CPU])
    root = bundle_copy.with_name("bundle.engines")
    config = BackendConfig(warmup_runs=0)
    OnnxRuntimeBackend.from_bundle(load_bundle(bundle_copy), config)
    first = [p.name for p in root.iterdir()]
    assert first == [hashlib.sha256((bundle_copy / "manifest.json").read_bytes()).hexdigest()[:16]]
    assert not any(p.name.endswith(".engines") for p in bundle_copy.iterdir())
    # "Re-export" under the same path: other content, same file names.
    (bundle_copy / "manifest.json").write_text(
        json.dumps({**json.loads((bundle_copy / "manifest.json").read_text()), "created_utc": "x"})
    )
    OnnxRuntimeBackend.from_bundle(load_bundle(bundle_copy), config)
    assert len(list(root.iterdir())) == 2


def test_a_second_pool_size_is_a_warning(
    tiny_bundle: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """onnxruntime's shared pool is sized once per process; a later request is not silent."""
    bundle = load_bundle(tiny_bundle)
    OnnxRuntimeBackend.from_bundle(bundle, BackendConfig(warmup_runs=0))  # the pool exists now
    have = backend_module._shared_pool_sizes
    asked = (7, 3)
    assert have != asked
    with caplog.at_level(logging.WARNING, logger="edgevla.runtime.backend"):
        OnnxRuntimeBackend.from_bundle(
            bundle, BackendConfig(intra_op_threads=7, inter_op_threads=3, warmup_runs=0)
        )
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    text = warnings[0].getMessage()
    assert "asked for intra-op 7, inter-op 3" in text
    if have is not None:
        assert f"exist with intra-op {have[0]}, inter-op {have[1]}" in text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="edgevla.runtime.backend"):
        OnnxRuntimeBackend.from_bundle(bundle, BackendConfig(warmup_runs=0))
    assert not [r for r in caplog.records if r.levelno == logging.WARNING] or have is None


@pytest.mark.parametrize(
    ("config", "words"),
    [
        ({"providers": "CPUExecutionProvider"}, "providers must be 'auto' or a tuple"),
        ({"thread_pool": "global"}, "thread_pool must be 'shared' or 'per_session'"),
        ({"intra_op_threads": -1}, "intra_op_threads must be an integer >= 0"),
    ],
)
def test_backend_config_is_checked(config: dict, words: str) -> None:
    with pytest.raises(ConfigError, match=words):
        BackendConfig(**config)
    assert BackendConfig(providers=[CPU]).providers == (CPU,)


class NaNInjecting:
    """A fault-injecting InferenceBackend: the real backend, with NaN written into one entry of
    one graph output (the first axis `row`), as a numerically broken graph would produce."""

    def __init__(self, inner: OnnxRuntimeBackend, graph: str, output: str, row: int) -> None:
        self.inner, self.graph, self.output, self.row = inner, graph, output, row

    @property
    def providers(self) -> list[str]:
        return self.inner.providers

    def run(self, graph: str, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        out = self.inner.run(graph, feeds)
        if graph == self.graph:
            value = out[self.output].copy()
            value.reshape(value.shape[0], -1)[self.row, 0] = np.nan
            out = {**out, self.output: value}
        return out


@pytest.mark.parametrize(
    ("graph", "output", "row", "words"),
    [
        ("value", "q", 3, r"'value' output 'q' is not finite: 1 of 5 values in candidates \[3\]"),
        (
            "expert_step",
            "velocity",
            1,
            r"'expert_step' output 'velocity' .* in candidates \[1\], Euler step 1 of 10",
        ),
    ],
)
def test_a_nan_candidate_never_wins_the_plan(
    policy: DualSystemPolicy, graph: str, output: str, row: int, words: str
) -> None:
    """np.argmax picks the first NaN, so without the check candidate `row` would be chosen."""
    assert np.argmax(np.array([0.1, 0.2, 0.3, np.nan, 0.0])) == 3
    faulty = DualSystemPolicy(policy.bundle, NaNInjecting(policy.backend, graph, output, row))
    with pytest.raises(NonFiniteOutput, match=words) as info:
        faulty.plan(observation(policy), np.random.default_rng(0))
    assert (info.value.graph, info.value.output) == (graph, output)


def test_a_nan_from_system1_is_refused(policy: DualSystemPolicy) -> None:
    plan = policy.plan(observation(policy), np.random.default_rng(0))
    faulty = DualSystemPolicy(policy.bundle, NaNInjecting(policy.backend, "system1", "velocity", 0))
    with pytest.raises(NonFiniteOutput, match=r"'system1' output 'velocity'.*Euler step 1 of 3"):
        faulty.react(plan, 0, observation(policy), np.random.default_rng(1))


class CountingBackend:
    """The real backend, counting calls per graph."""

    def __init__(self, inner: OnnxRuntimeBackend) -> None:
        self.inner, self.calls = inner, Counter()

    @property
    def providers(self) -> list[str]:
        return self.inner.providers

    def run(self, graph: str, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        self.calls[graph] += 1
        return self.inner.run(graph, feeds)


@pytest.mark.parametrize(("every", "full"), [(1, 10), (2, 5), (3, 4), (10, 1), (20, 1)])
def test_expert_caching_runs_the_blocks_on_every_kth_step(
    policy: DualSystemPolicy, every: int, full: int
) -> None:
    counting = CountingBackend(policy.backend)
    cached = DualSystemPolicy(policy.bundle, counting).with_sampling(expert_cache_every=every)
    plan = cached.plan(observation(policy), np.random.default_rng(0))
    assert counting.calls["expert_step"] == full
    assert counting.calls["expert_cached"] == 10 - full
    assert counting.calls["prefix"] == 1 and counting.calls["value"] == 1
    exact = policy.plan(observation(policy), np.random.default_rng(0))
    if every == 1:
        np.testing.assert_array_equal(plan.result.candidates, exact.result.candidates)
    else:  # an approximation: close to the exact plan, not equal to it
        a, b = plan.result.candidates.ravel(), exact.result.candidates.ravel()
        assert not np.array_equal(a, b)
        assert a @ b / (np.linalg.norm(a) * np.linalg.norm(b)) > 0.9


class GraphOrder(CountingBackend):
    """The sequence of graphs a plan runs."""

    def __init__(self, inner: OnnxRuntimeBackend) -> None:
        super().__init__(inner)
        self.order: list[str] = []

    def run(self, graph: str, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        self.order.append(graph)
        return super().run(graph, feeds)


@pytest.mark.parametrize("extrapolation", ["hold", "linear"])
def test_an_expert_schedule_runs_the_blocks_on_its_steps_only(
    policy: DualSystemPolicy, extrapolation: str
) -> None:
    order = GraphOrder(policy.backend)
    scheduled = DualSystemPolicy(policy.bundle, order).with_sampling(
        expert_full_steps=[0, 4, 7, 9], expert_cache_extrapolation=extrapolation
    )
    plan = scheduled.plan(observation(policy), np.random.default_rng(0))
    steps = [g for g in order.order if g.startswith("expert")]
    assert [k for k, g in enumerate(steps) if g == "expert_step"] == [0, 4, 7, 9]
    assert len(steps) == 10
    exact = policy.plan(observation(policy), np.random.default_rng(0))
    a, b = plan.result.candidates.ravel(), exact.result.candidates.ravel()
    assert not np.array_equal(a, b)
    assert a @ b / (np.linalg.norm(a) * np.linalg.norm(b)) > 0.9


def test_linear_extrapolation_changes_only_steps_after_two_computed_ones(
    policy: DualSystemPolicy,
) -> None:
    """Steps 1–3 have a single computed output behind them and hold it either way; steps 5, 6
    and 8 extrapolate, so the two plans differ."""
    hold = policy.with_sampling(expert_full_steps=[0, 4, 7, 9])
    linear = hold.with_sampling(expert_cache_extrapolation="linear")
    a = hold.plan(observation(policy), np.random.default_rng(0)).result.candidates
    b = linear.plan(observation(policy), np.random.default_rng(0)).result.candidates
    assert not np.array_equal(a, b)
    early_hold = hold.with_sampling(denoise_steps=4, expert_full_steps=[0])
    early_linear = early_hold.with_sampling(expert_cache_extrapolation="linear")
    c = early_hold.plan(observation(policy), np.random.default_rng(0)).result.candidates
    d = early_linear.plan(observation(policy), np.random.default_rng(0)).result.candidates
    np.testing.assert_array_equal(c, d)


def test_a_nan_from_the_cached_expert_step_is_refused(policy: DualSystemPolicy) -> None:
    faulty = DualSystemPolicy(
        policy.bundle, NaNInjecting(policy.backend, "expert_cached", "velocity", 1)
    ).with_sampling(expert_cache_every=2)
    words = r"'expert_cached' output 'velocity'.*candidates \[1\], Euler step 2 of"
    with pytest.raises(NonFiniteOutput, match=words):
        faulty.plan(observation(policy), np.random.default_rng(0))
