"""Visual-token pruning, visual-token reuse (VLA-Cache), action reuse (FlashVLA) and activation
steering: each exports, passes its gate, loads and plans; reuse state resets where it must;
steering at alpha 0 is bit-identical to no steering."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch

from edgevla.export.bundle_writer import ExportOptions, export_bundle
from edgevla.export.checkpoint import ReferencePolicy
from edgevla.export.reference_policy import torch_plan
from edgevla.export.steering import (
    chunk_speed,
    pace_direction,
    pace_expert_direction,
    speed_direction,
    trained_on_paces,
)
from edgevla.runtime import system2
from edgevla.runtime.bundle import load_bundle
from edgevla.runtime.errors import (
    BundleSchemaError,
    BundleShapeMismatch,
    InvalidSetting,
)
from edgevla.runtime.expert_cache import ExpertSchedule
from edgevla.runtime.manifest import Reuse
from edgevla.runtime.policy import DualSystemPolicy, Observation
from edgevla.runtime.reuse import (
    PlanMemory,
    choose_recompute,
    patch_pixels,
    reanchor,
    shared_step_change,
)
from edgevla.runtime.steering import neutral, parse_steer, steering_inputs
from edgevla.sim.demos import DemoSet

KEEP, RECOMPUTE = 32, 32


def _demos(rows: int = 30, seed: int = 0) -> DemoSet:
    """Random frames; chunks whose speed grows with the row, so the rows differ in speed."""
    rng = np.random.default_rng(seed)
    state = rng.uniform(-1, 1, (rows, 7)).astype(np.float32)
    speed = np.linspace(0.001, 0.05, rows, dtype=np.float32)
    steps = np.arange(1, 9, dtype=np.float32)[None, :, None]
    actions = state[:, None, :] + speed[:, None, None] * steps
    return DemoSet(
        images=rng.integers(0, 256, (rows, 2, 32, 32, 3), dtype=np.uint8),
        state=state,
        actions=actions.astype(np.float32),
        instruction_index=np.zeros(rows, np.int16),
        episode=np.arange(rows, dtype=np.int32),
        step=np.zeros(rows, np.int32),
        instructions=["touch the red cube"],
        step_period_s=0.05,
    )


@pytest.fixture(scope="module")
def kept_bundle(tiny_policy: ReferencePolicy, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("tokens") / "keep"
    export_bundle(tiny_policy, out, ExportOptions(keep_tokens=KEEP, parity_observations=2))
    return out


@pytest.fixture(scope="module")
def reuse_bundle(tiny_policy: ReferencePolicy, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Token reuse, action reuse allowed, and the `speed` (prefix) and `pace-expert` (action
    expert) steering directions."""
    out = tmp_path_factory.mktemp("tokens") / "reuse"
    options = ExportOptions(reuse_tokens=RECOMPUTE, action_reuse_max=1, parity_observations=3)
    steering = [
        speed_direction(tiny_policy, _demos()),
        pace_expert_direction(tiny_policy, _demos()),
    ]
    export_bundle(tiny_policy, out, options, steering=steering)
    return out


def _obs(seed: int, t_s: float | None, state: np.ndarray | None = None) -> Observation:
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (2, 32, 32, 3), dtype=np.uint8)
    q = np.zeros(7, np.float32) if state is None else state
    return Observation(images, q, "touch the red cube", t_s=t_s)


# ---------------------------------------------------------------- visual-token pruning


def test_token_pruning_keeps_the_selectors_top_k(kept_bundle: Path) -> None:
    bundle = load_bundle(kept_bundle)
    record = bundle.manifest.optimizations.token_pruning
    assert record is not None and (record.keep_tokens, record.visual_tokens) == (KEEP, 128)
    assert bundle.manifest.parity.passed
    assert bundle.specs["prefix"].outputs[0].shape[3] == KEEP + 12 + 2
    policy = DualSystemPolicy(bundle)
    plan = policy.plan(_obs(0, 0.0), np.random.default_rng(0))
    assert plan.result.prefix is not None
    kept = plan.result.prefix.kept_tokens
    top = np.sort(np.argsort(-plan.result.token_scores)[:KEEP])
    np.testing.assert_array_equal(kept, top)
    assert np.isfinite(plan.chunk).all() and plan.chunk.shape == (8, 7)


def test_token_pruning_with_all_tokens_is_the_unpruned_model(tiny_policy) -> None:
    inputs = [torch.from_numpy(a) for a in _prefix_feeds(tiny_policy)]
    full = tiny_policy.model.encode_prefix(*inputs)
    every = tiny_policy.model.with_token_pruning(128).encode_prefix(*inputs)
    for a, b in zip(full[:5], every[:5], strict=True):
        torch.testing.assert_close(a, b)
    assert tiny_policy.model.keep_tokens is None  # the source model is left as it was


@pytest.mark.parametrize("value", [0, -3, True])
def test_bad_token_options_are_refused(value: object) -> None:
    with pytest.raises(InvalidSetting, match="keep_tokens"):
        ExportOptions(keep_tokens=value).validate()  # type: ignore[arg-type]
    with pytest.raises(InvalidSetting, match="reuse_tokens"):
        ExportOptions(reuse_tokens=value).validate()  # type: ignore[arg-type]


def test_pruning_and_reuse_do_not_combine(tiny_policy, tmp_path: Path) -> None:
    with pytest.raises(InvalidSetting, match="does not combine"):
        export_bundle(tiny_policy, tmp_path / "b", ExportOptions(keep_tokens=8, reuse_tokens=8))
    with pytest.raises(InvalidSetting, match=r"keep_tokens must be in \[1, 128\]"):
        export_bundle(tiny_policy, tmp_path / "b", ExportOptions(keep_tokens=500))
    assert not (tmp_path / "b").exists()


def _prefix_feeds(policy: ReferencePolicy) -> list[np.ndarray]:
    from edgevla.export.parity import parity_inputs

    return list(parity_inputs(policy, 1, 7)[0].feeds().values())


@pytest.mark.parametrize(
    ("field", "value", "error"),
    [
        ("visual_tokens", 64, BundleShapeMismatch),
        ("keep_tokens", 16, BundleShapeMismatch),  # the graphs are 32 long
        ("scorer", "attention", BundleSchemaError),
    ],
)
def test_a_token_pruning_record_that_does_not_fit_is_refused(
    kept_bundle: Path, edited_bundle, field: str, value: object, error: type
) -> None:
    copy = edited_bundle(
        kept_bundle, lambda m: m["optimizations"]["token_pruning"].update({field: value})
    )
    with pytest.raises(error):
        load_bundle(copy)


# ---------------------------------------------------------------- visual-token reuse


def test_reuse_graph_recomputing_every_token_is_the_full_prefix(tiny_policy) -> None:
    """With all visual tokens recomputed nothing of the old cache may survive."""
    model = tiny_policy.model
    feeds = [torch.from_numpy(a) for a in _prefix_feeds(tiny_policy)]
    full = model.encode_prefix(*feeds)
    stale_k, stale_v = torch.randn_like(full[0]), torch.randn_like(full[1])
    every = torch.arange(128)[None]
    reused = model.encode_prefix_reuse(*feeds, stale_k, stale_v, every)
    for a, b in zip(full[:5], reused[:5], strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


def test_reuse_graph_keeps_the_cache_rows_it_does_not_recompute(tiny_policy) -> None:
    model = tiny_policy.model
    feeds = [torch.from_numpy(a) for a in _prefix_feeds(tiny_policy)]
    full = model.encode_prefix(*feeds)
    tokens = torch.tensor([[3, 40, 77]])
    k, v, *_ = model.encode_prefix_reuse(*feeds, full[0] * 2, full[1] * 2, tokens)
    untouched = [i for i in range(128) if i not in (3, 40, 77)]
    torch.testing.assert_close(k[:, :, :, untouched], full[0][:, :, :, untouched] * 2)
    torch.testing.assert_close(v[:, :, :, untouched], full[1][:, :, :, untouched] * 2)
    assert not torch.allclose(k[:, :, :, [3, 40, 77]], full[0][:, :, :, [3, 40, 77]] * 2)


def test_token_reuse_bundle_passes_its_gate_and_plans(reuse_bundle: Path) -> None:
    bundle = load_bundle(reuse_bundle)
    assert "prefix_reuse" in bundle.specs and "prefix_reuse" in bundle.manifest.parity.graphs
    assert bundle.manifest.optimizations.token_reuse.recompute_tokens == RECOMPUTE
    policy = DualSystemPolicy(bundle).with_reuse(action_reuse_max=0)
    rng = np.random.default_rng(0)
    kinds = [policy.plan(_obs(i, 0.2 * i), rng).result.reused for i in range(6)]
    # A full pass, reuse until the refresh (every 4th plan), then reuse again.
    assert kinds == ["", "tokens", "tokens", "tokens", "", "tokens"]
    assert policy.memory.counts["full"] == 2 and policy.memory.counts["tokens"] == 4


def _first_two_kinds(policy: DualSystemPolicy, times: list[float | None]) -> list[str]:
    rng = np.random.default_rng(0)
    return [policy.plan(_obs(i, t), rng).result.reused for i, t in enumerate(times)]


def test_token_reuse_resets_per_episode_and_on_camera_gaps(reuse_bundle: Path) -> None:
    policy = DualSystemPolicy(load_bundle(reuse_bundle)).with_reuse(action_reuse_max=0)
    assert _first_two_kinds(policy, [0.0, 0.2]) == ["", "tokens"]
    policy.reset()  # a new episode
    assert _first_two_kinds(policy, [5.0, 5.2]) == ["", "tokens"]
    # A camera gap longer than max_frame_gap_s (0.5 s) between planned frames:
    assert _first_two_kinds(policy, [9.0, 9.2]) == ["", "tokens"]
    # Frames from the past (a replaced camera, a clock reset), and frames without a time:
    assert _first_two_kinds(policy, [1.0, 1.2]) == ["", "tokens"]
    assert _first_two_kinds(policy, [None, None]) == ["", ""]
    assert policy.memory.counts["resets"] >= 4


def test_recompute_choice_takes_relevant_then_changed_tokens() -> None:
    scores = np.zeros(10)
    scores[[7, 2]] = [5.0, 4.0]
    change = np.arange(10, dtype=float)  # token 9 changed most
    chosen = choose_recompute(scores, change, count=4, relevant=2)
    np.testing.assert_array_equal(chosen, [2, 7, 8, 9])
    images = np.arange(2 * 8 * 8 * 3, dtype=np.uint8).reshape(2, 8, 8, 3)
    pixels = patch_pixels(images, 4)
    assert pixels.shape == (8, 48)
    np.testing.assert_array_equal(pixels[5], images[1, :4, 4:8].reshape(-1))  # camera 1, (0, 1)


# ---------------------------------------------------------------- action reuse


def _result(chunk: np.ndarray, scores: np.ndarray) -> system2.PlanResult:
    return system2.PlanResult(
        candidates=chunk[None].astype(np.float32),
        q=np.zeros(1, np.float32),
        q_critics=np.zeros((1, 2), np.float32),
        chosen=0,
        token_scores=scores,
        timings_s={},
    )


def test_action_reuse_skips_only_while_the_last_two_plans_agree() -> None:
    memory = PlanMemory(Reuse(action_reuse_max=2, action_top_tokens=4), None, 4, 0.05)
    chunk = np.cumsum(np.full((8, 7), 0.001), axis=0)  # slow, steady motion
    scores = np.arange(16, dtype=np.float32)
    images = np.zeros((2, 8, 8, 3), np.uint8)
    for t in (0.0, 0.2):
        memory.begin(t)
        assert memory.action_reuse_shift(t) is None  # fewer than two plans: compute
        shifted = reanchor(chunk, round(t / 0.05))
        memory.record(images, t, shifted, _result(shifted, scores), None)
    memory.begin(0.4)
    assert memory.action_reuse_shift(0.4) == 4
    chunk_out, result = memory.reused_action(4)
    assert result.reused == "action"
    np.testing.assert_array_equal(chunk_out, reanchor(reanchor(chunk, 4), 4))
    memory.begin(0.6)
    assert memory.action_reuse_shift(0.6) is None  # 8 steps on: nothing of the plan is left
    # The cap: after action_reuse_max skips a plan must be computed.
    memory.reset()
    for t in (0.0, 0.2):
        shifted = reanchor(chunk, round(t / 0.05))
        memory.record(images, t, shifted, _result(shifted, scores), None)
    for _ in range(2):
        assert memory.action_reuse_shift(0.3) == 2
        memory.reused_action(2)
    assert memory.action_reuse_shift(0.3) is None
    # Disagreeing plans are not reused.
    memory.reset()
    memory.record(images, 0.0, chunk, _result(chunk, scores), None)
    memory.record(images, 0.2, chunk + 0.5, _result(chunk + 0.5, scores), None)
    assert memory.action_reuse_shift(0.4) is None
    # Nor are plans that attended to other tokens.
    memory.reset()
    memory.record(images, 0.0, chunk, _result(chunk, scores), None)
    memory.record(images, 0.2, reanchor(chunk, 4), _result(reanchor(chunk, 4), -scores), None)
    assert memory.action_reuse_shift(0.4) is None


def test_shared_step_change_compares_the_overlap() -> None:
    older = np.arange(8)[:, None] * np.ones((8, 7))
    assert shared_step_change(older, reanchor(older, 2), 2) == 0.0
    assert shared_step_change(older, older, 2) == 2.0
    assert shared_step_change(older, older, 8) == float("inf")


def test_action_reuse_in_a_policy_reanchors_the_last_plan(reuse_bundle: Path) -> None:
    policy = DualSystemPolicy(load_bundle(reuse_bundle)).with_reuse(
        action_reuse_max=1, action_max_change_rad=10.0, action_min_overlap=0.0
    )
    rng = np.random.default_rng(0)
    first = policy.plan(_obs(0, 0.0), rng)
    second = policy.plan(_obs(0, 0.2), rng)
    third = policy.plan(_obs(0, 0.4), rng)
    assert (first.result.reused, third.result.reused) == ("", "action")
    np.testing.assert_array_equal(third.chunk[:4], second.chunk[4:])
    assert policy.plan(_obs(0, 0.6), rng).result.reused != "action"  # the cap of 1


# ---------------------------------------------------------------- steering


def test_steering_at_alpha_zero_is_bit_identical(reuse_bundle: Path) -> None:
    bundle = load_bundle(reuse_bundle)
    plain = DualSystemPolicy(bundle).with_reuse(action_reuse_max=0)
    zero = plain.with_steering({"speed": 0.0, "pace-expert": 0.0})
    assert zero.steering.expert_bias is None
    for i in range(3):
        a = plain.plan(_obs(i, None), np.random.default_rng(i))
        b = zero.plan(_obs(i, None), np.random.default_rng(i))
        assert np.array_equal(a.result.candidates, b.result.candidates)
        assert np.array_equal(a.result.q, b.result.q)


def test_steering_changes_the_plan_and_unknown_names_are_refused(reuse_bundle: Path) -> None:
    bundle = load_bundle(reuse_bundle)
    direction, _ = bundle.manifest.optimizations.steering
    assert (direction.name, direction.site, direction.calibration_rows) == ("speed", "prefix", 30)
    assert direction.contrast["fast_mean_rad_s"] > direction.contrast["slow_mean_rad_s"]
    plain = DualSystemPolicy(bundle).with_reuse(action_reuse_max=0)
    steered = plain.with_steering({"speed": 3.0})
    a = plain.plan(_obs(0, None), np.random.default_rng(0))
    b = steered.plan(_obs(0, None), np.random.default_rng(0))
    assert not np.allclose(a.result.candidates, b.result.candidates)
    with pytest.raises(InvalidSetting, match=r"unknown direction\(s\) \['slowness'\]"):
        plain.with_steering({"slowness": 1.0})


def test_keep_mask_ones_leave_the_prefix_unchanged_and_zeros_do_not(tiny_policy) -> None:
    feeds = [torch.from_numpy(a) for a in _prefix_feeds(tiny_policy)][:4]
    model = tiny_policy.model
    steer = neutral(model.cfg)
    plain = model.encode_prefix(*feeds)
    ones = model.encode_prefix(
        *feeds, torch.from_numpy(steer.keep_mask), torch.from_numpy(steer.steer_bias)
    )
    for a, b in zip(plain, ones, strict=True):
        assert torch.equal(a, b)
    off = steer.keep_mask.copy()
    off[1] = 0.0
    cut = model.encode_prefix(*feeds, torch.from_numpy(off), torch.from_numpy(steer.steer_bias))
    assert torch.equal(plain[0][0], cut[0][0])  # layer 0's cache is computed before layer 1
    assert not torch.allclose(plain[3], cut[3])


@pytest.mark.parametrize(
    "schedule",
    [
        ExpertSchedule.every(1, 6),
        ExpertSchedule.every(3, 6),
        ExpertSchedule(frozenset({0, 2, 5}), "linear"),
    ],
    ids=["every step", "every 3rd", "0,2,5 linear"],
)
def test_expert_steering_runs_as_the_reference_and_leaves_the_prefix_alone(
    reuse_bundle: Path, tiny_policy: ReferencePolicy, schedule: ExpertSchedule
) -> None:
    """A direction at the expert's site is added to the blocks' output on every Euler step,
    cached steps included, exactly as the PyTorch model does it; the prefix is not steered."""
    bundle = load_bundle(reuse_bundle)
    _, direction = bundle.manifest.optimizations.steering
    assert (direction.name, direction.site) == ("pace-expert", "expert")
    policy = DualSystemPolicy(bundle)
    steering = steering_inputs(
        bundle.model, bundle.manifest.optimizations.steering, {"pace-expert": 40.0}
    )
    assert steering.expert_bias is not None and steering.expert_bias.shape == (8, 32)
    assert not steering.steer_bias.any() and (steering.keep_mask == 1).all()
    inputs = policy.prefix_inputs(_obs(0, None))
    noise = system2.sample_noise(np.random.default_rng(0), (5, 8, 7))
    starts = system2.candidate_start_times(5, 0.6, 1.0)
    plain = system2.plan(policy.backend, inputs, noise, starts, 6, schedule)
    steered = system2.plan(
        policy.backend, inputs, noise, starts, 6, schedule, expert_bias=steering.expert_bias
    )
    reference = torch_plan(
        tiny_policy.model, inputs, noise, starts, 6, schedule, steering.expert_bias
    )
    np.testing.assert_allclose(steered.candidates, reference.candidates, atol=1e-4)
    assert np.abs(steered.candidates - plain.candidates).max() > 1e-2
    np.testing.assert_array_equal(steered.token_scores, plain.token_scores)


def test_the_pace_expert_direction_contrasts_the_words_at_the_expert(
    tiny_policy: ReferencePolicy,
) -> None:
    plain = _demos()
    paced = dataclasses.replace(plain, instructions=["touch the red cube quickly"])
    a, b = pace_expert_direction(tiny_policy, plain), pace_expert_direction(tiny_policy, paced)
    assert a.site == "expert"
    vectors = np.asarray(a.vectors)
    assert vectors.shape == (tiny_policy.config.chunk_len, tiny_policy.config.expert_width)
    assert np.abs(vectors).max() > 0
    np.testing.assert_array_equal(vectors, np.asarray(b.vectors))


@pytest.mark.parametrize(
    ("change", "error", "match"),
    [
        ({"site": "value_head"}, BundleSchemaError, "this runtime knows"),
        ({"vectors": [[0.0] * 32] * 7}, BundleShapeMismatch, "8 \\(chunk_len\\)"),
        ({"vectors": [[0.0] * 64] * 8}, BundleShapeMismatch, "expert_width"),
        ({"site": "prefix"}, BundleShapeMismatch, "d_model"),
    ],
)
def test_a_steering_direction_that_does_not_fit_its_site_is_refused(
    reuse_bundle: Path, edited_bundle, change: dict, error: type, match: str
) -> None:
    copy = edited_bundle(reuse_bundle, lambda m: m["optimizations"]["steering"][1].update(change))
    with pytest.raises(error, match=match):
        load_bundle(copy)


@pytest.mark.parametrize("item", ["speed", "speed=", "=1", "speed=fast", "speed=nan"])
def test_malformed_steer_is_refused(item: str) -> None:
    with pytest.raises(InvalidSetting, match="NAME=ALPHA"):
        parse_steer([item])
    assert parse_steer(["speed=-0.5", "x=2"]) == {"speed": -0.5, "x": 2.0}


def test_a_steering_direction_of_the_wrong_width_is_refused(
    reuse_bundle: Path, edited_bundle
) -> None:
    def narrow_row(manifest: dict) -> None:
        manifest["optimizations"]["steering"][0]["vectors"][0] = [0.0] * 3

    with pytest.raises(BundleShapeMismatch, match="d_model"):
        load_bundle(edited_bundle(reuse_bundle, narrow_row))


def test_chunk_speed_is_the_commanded_joint_speed() -> None:
    state = np.zeros((1, 7))
    actions = np.cumsum(np.full((1, 8, 7), 0.01), axis=1)
    np.testing.assert_allclose(chunk_speed(state, actions, 0.05), [0.2])


def test_the_pace_direction_contrasts_the_words_alone(tiny_policy: ReferencePolicy) -> None:
    """Same observations, "... quickly" minus "... slowly": a pace word already in a row's
    instruction is replaced, not doubled, so the direction does not depend on it."""
    plain = _demos()
    paced = dataclasses.replace(plain, instructions=["touch the red cube slowly"])
    a, b = pace_direction(tiny_policy, plain), pace_direction(tiny_policy, paced)
    vectors = np.asarray(a.vectors)
    assert vectors.shape == (tiny_policy.config.n_layers, tiny_policy.config.d_model)
    assert np.abs(vectors).max() > 0
    np.testing.assert_array_equal(vectors, np.asarray(b.vectors))
    # An untrained policy never read pace words: `edgevla export --steering` leaves it out.
    assert not trained_on_paces(tiny_policy)
    trained = dataclasses.replace(
        tiny_policy,
        origin={"behaviour_cloning": {"instructions": ["touch the red cube slowly",
                                                       "touch the red cube quickly"]}},
    )  # fmt: skip
    assert trained_on_paces(trained)


def test_the_committed_paced_checkpoint_was_trained_on_both_words() -> None:
    """`edgevla export --steering` gives it the `pace` direction; the demo policy does not."""
    from edgevla.export.checkpoint import load_checkpoint

    root = Path(__file__).resolve().parent.parent / "checkpoints"
    assert trained_on_paces(load_checkpoint(root / "touch-tiny-paced"))
    assert not trained_on_paces(load_checkpoint(root / "touch-tiny"))
