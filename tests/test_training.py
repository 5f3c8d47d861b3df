"""Training: behaviour cloning lowers the loss, is repeatable, and the value head trains alone.

The data is synthetic and made here: two coloured squares on a grey table, seen by two cameras;
the instruction names one and its position sets the joint targets the chunk moves towards.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

import numpy as np
import pytest
import torch

from edgevla.export.checkpoint import (
    ReferencePolicy,
    init_policy,
    load_checkpoint,
    save_checkpoint,
)
from edgevla.export.configs import get_config
from edgevla.export.reference import build_model
from edgevla.export.training import (
    S1_STD_FLOOR,
    STD_FLOOR,
    TrainConfig,
    correlations,
    learning_rate,
    normalization_from_demos,
    shift_images,
    train_policy,
    train_system1,
    train_value,
)
from edgevla.runtime.errors import InvalidSetting
from edgevla.sim.demos import DemoSet, ValueSet

TINY = get_config("tiny")
HOME = np.array([0.0, -1.57, 1.57, -1.57, -1.57, 0.0], np.float32)
INSTRUCTIONS = ["reach the red block", "reach the blue block"]
COLOURS = np.array([[220, 30, 30], [30, 30, 220]], np.uint8)
SQUARE = 6
# Few steps, small batches: the file must stay fast on a 2-core machine.
QUICK = TrainConfig(
    steps=5, system1_steps=5, batch_size=8, warmup_steps=2, log_interval=1, eval_samples=8
)


@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> Iterator[None]:
    """Tiny batches gain nothing from a second thread, and a busy machine makes two threads
    wait on each other at every op (measured: 100× slower under load)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def synthetic_demos(samples: int = 64, episodes: int = 8, seed: int = 0) -> DemoSet:
    rng = np.random.default_rng(seed)
    size, horizon = TINY.image_size, TINY.chunk_len
    images = np.full((samples, TINY.num_cameras, size, size, 3), 90, np.uint8)
    corner = rng.integers(0, size - SQUARE, size=(samples, 2, 2))  # [sample, colour, (row, col)]
    instruction = (np.arange(samples) % 2).astype(np.int16)
    for i in range(samples):
        for colour in range(2):
            r, c = corner[i, colour]
            images[i, 0, r : r + SQUARE, c : c + SQUARE] = COLOURS[colour]
            images[i, 1, c : c + SQUARE, r : r + SQUARE] = COLOURS[colour]  # the other view
    where = corner[np.arange(samples), instruction].astype(np.float32) / (size - SQUARE)
    target = np.repeat(HOME[None], samples, axis=0)
    target[:, 0] += where[:, 0] - 0.5
    target[:, 1] += where[:, 1] - 0.5
    target[:, 2] += 0.5 * (where[:, 0] - where[:, 1])
    joints = HOME + rng.normal(0.0, 0.1, (samples, 6)).astype(np.float32)
    alpha = (np.arange(1, horizon + 1, dtype=np.float32) / horizon)[None, :, None]
    chunk = joints[:, None] + alpha * (target - joints)[:, None]
    gripper = np.ones((samples, horizon, 1), np.float32)  # never moves: a constant dimension
    return DemoSet(
        images=images,
        state=np.concatenate([joints, np.ones((samples, 1), np.float32)], axis=-1),
        actions=np.concatenate([chunk, gripper], axis=-1).astype(np.float32),
        instruction_index=instruction,
        episode=(np.arange(samples) % episodes).astype(np.int32),
        step=(np.arange(samples) // episodes).astype(np.int32),
        instructions=list(INSTRUCTIONS),
        step_period_s=0.05,
    )


def synthetic_values(demos: DemoSet, seed: int = 1) -> ValueSet:
    """Executed chunks = expert chunk + a joint offset of 0..0.6 rad; return falls with it."""
    rng = np.random.default_rng(seed)
    offset = rng.uniform(0.0, 0.6, len(demos)).astype(np.float32)
    actions = demos.actions.copy()
    actions[..., :6] += offset[:, None, None]
    return ValueSet(
        images=demos.images,
        state=demos.state,
        actions=actions,
        returns=np.exp(-offset / 0.2).astype(np.float32),
        instruction_index=demos.instruction_index,
        episode=np.arange(len(demos), dtype=np.int32) // 4,
        instructions=list(demos.instructions),
    )


def _weights(policy: ReferencePolicy) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in policy.model.state_dict().items()}


@pytest.fixture(scope="module")
def demos() -> DemoSet:
    return synthetic_demos()


@pytest.fixture(scope="module")
def trained(demos: DemoSet) -> tuple[ReferencePolicy, ReferencePolicy, dict, dict]:
    """(untrained, trained, per-stage per-step losses, metrics) after 150 + 150 steps."""
    untrained = init_policy(TINY, 3)
    losses: dict[str, list[float]] = {}
    stages: list[str] = []

    def record(step: int, total: int, report: dict[str, float]) -> None:
        if "loss" in report:  # evaluations report val_* keys only
            losses.setdefault(stages[-1], []).append(report["loss"])

    cfg = TrainConfig(
        steps=150,
        system1_steps=150,
        batch_size=16,
        warmup_steps=10,
        log_interval=1,
        eval_samples=8,
    )
    policy, metrics = train_policy(untrained, demos, cfg, record, on_stage=stages.append)
    assert stages == ["system2", "system1"]
    return untrained, policy, {k: np.array(v) for k, v in losses.items()}, metrics


def test_training_lowers_the_loss_and_changes_only_trained_weights(trained) -> None:
    untrained, policy, losses, metrics = trained
    assert metrics["steps"] == 150 and metrics["system1"]["steps"] == 150
    assert len(losses["system2"]) == 150 and len(losses["system1"]) == 150
    # Mean of the first vs the last 15 steps.
    for stage, limit in (("system2", 0.75), ("system1", 0.85)):
        ratio = losses[stage][-15:].mean() / losses[stage][:15].mean()
        assert ratio < limit, (stage, ratio)
    before, after = untrained.model.state_dict(), policy.model.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert any(k.startswith("expert_layers.") for k in changed)
    assert any(k.startswith("layers.") for k in changed)
    assert any(k.startswith("system1.") for k in changed)
    assert not any(k.startswith(("critics.", "selector.")) for k in changed)
    # The caller's policy is left as it was.
    assert all(
        torch.equal(before[k], v) for k, v in init_policy(TINY, 3).model.state_dict().items()
    )
    assert metrics["val"] is not None and np.isfinite(metrics["val"]["plan_mse"])
    s1_val = metrics["system1"]["val"]
    assert np.isfinite(s1_val["s1_slice_rad"]) and np.isfinite(s1_val["plan_slice_rad"])
    assert "behaviour_cloning" in policy.origin and "system1_training" in policy.origin


def test_normalization_matches_numpy_and_floors_a_constant_dimension(demos: DemoSet) -> None:
    norm = normalization_from_demos(demos, TINY.s1_horizon)
    rows = demos.actions.reshape(-1, demos.actions.shape[-1]).astype(np.float64)
    np.testing.assert_allclose(norm.state_mean, demos.state.astype(np.float64).mean(0))
    np.testing.assert_allclose(norm.action_mean, rows.mean(0))
    np.testing.assert_allclose(norm.state_std[:6], demos.state[:, :6].astype(np.float64).std(0))
    np.testing.assert_allclose(norm.action_std[:6], rows[:, :6].std(0))
    # The gripper never moves in these demos: its std is the floor, not 0.
    assert norm.state_std[6] == STD_FLOOR and norm.action_std[6] == STD_FLOOR
    # System 1: per (row, dimension) statistics of each row's offset from the state.
    offsets = demos.actions[:, : TINY.s1_horizon].astype(np.float64) - demos.state[:, None]
    np.testing.assert_allclose(norm.s1_delta_mean, offsets.mean(0), atol=1e-12)
    np.testing.assert_allclose(np.array(norm.s1_delta_std)[:, :6], offsets[..., :6].std(0))
    assert np.array(norm.s1_delta_std).shape == (TINY.s1_horizon, TINY.action_dim)
    assert all(row[6] == S1_STD_FLOOR for row in norm.s1_delta_std)
    # Later rows move further from the state than the first: the per-row spread grows.
    spread = np.array(norm.s1_delta_std)[:, 0]
    assert spread[-1] > 2 * spread[0]


def test_normalization_refuses_a_state_unlike_the_actions(demos: DemoSet) -> None:
    short = dataclasses.replace(demos, state=demos.state[:, :6])
    with pytest.raises(InvalidSetting, match=r"demos\.state"):
        normalization_from_demos(short, TINY.s1_horizon)


def test_trained_policy_carries_the_demos_normalization(trained, demos: DemoSet) -> None:
    assert trained[1].normalization == normalization_from_demos(demos, TINY.s1_horizon)


def test_train_system1_changes_only_system1_and_keeps_system2_statistics(
    trained, demos: DemoSet
) -> None:
    """Retraining System 1 on other demonstrations: System 2's weights and statistics are the
    checkpoint's own; System 1's offsets statistics are the new demonstrations'."""
    policy = trained[1]
    other = synthetic_demos(seed=5)
    retrained, metrics = train_system1(policy, other, QUICK)
    before, after = policy.model.state_dict(), retrained.model.state_dict()
    changed = {k.split(".")[0] for k in before if not torch.equal(before[k], after[k])}
    assert changed == {"system1"}
    own = normalization_from_demos(other, TINY.s1_horizon)
    norm = retrained.normalization
    assert norm.s1_delta_mean == own.s1_delta_mean and norm.s1_delta_std == own.s1_delta_std
    assert norm.state_mean == policy.normalization.state_mean
    assert norm.action_std == policy.normalization.action_std
    assert metrics["steps"] == QUICK.system1_steps
    assert retrained.origin["system1_training"]["steps"] == QUICK.system1_steps
    # Deterministic: the same call again gives the same System 1.
    again, _ = train_system1(policy, other, QUICK)
    assert all(torch.equal(v, again.model.state_dict()[k]) for k, v in after.items())


def test_same_seed_gives_identical_weights_and_another_seed_does_not(demos: DemoSet) -> None:
    cfg = dataclasses.replace(QUICK, state_noise_std=0.05, image_shift_px=2)
    a, _ = train_policy(init_policy(TINY, 0), demos, cfg)
    b, _ = train_policy(init_policy(TINY, 0), demos, cfg)
    c, _ = train_policy(init_policy(TINY, 0), demos, dataclasses.replace(cfg, seed=1))
    wa, wb, wc = _weights(a), _weights(b), _weights(c)
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    assert not all(torch.equal(wa[k], wc[k]) for k in wa)


def test_batched_cache_expert_equals_one_call_per_sample() -> None:
    """A batch-B prefix cache with N = B gives each sample attention to its own prefix."""
    model = build_model(TINY, 0)
    g = torch.Generator().manual_seed(0)
    b, t_len = 3, TINY.max_instruction_tokens
    shape = (b, TINY.num_cameras, TINY.image_size, TINY.image_size, 3)
    images = torch.randint(0, 256, shape, generator=g, dtype=torch.uint8)
    ids = torch.randint(2, 60, (b, t_len), generator=g)
    mask = torch.zeros(b, t_len, dtype=torch.bool)
    for i, length in enumerate((2, 5, t_len)):  # different masks per sample
        mask[i, :length] = True
    state = torch.randn(b, TINY.state_dim, generator=g)
    noisy = torch.randn(b, TINY.chunk_len, TINY.action_dim, generator=g)
    t = torch.tensor([0.9, 0.4, 0.05])
    with torch.no_grad():
        k, v, prefix_mask, *_ = model.encode_prefix(images, ids, mask, state)
        batched = model.expert_velocity(k, v, prefix_mask, noisy, t)
        one = [slice(i, i + 1) for i in range(b)]
        single = [
            model.expert_velocity(k[:, s], v[:, s], prefix_mask[s], noisy[s], t[s]) for s in one
        ]
    for s, result in zip(one, single, strict=True):
        torch.testing.assert_close(batched[s], result, atol=1e-5, rtol=0)
    # And the per-sample results differ, so the check above is not vacuous.
    assert not torch.allclose(batched[0], batched[1], atol=1e-3)


def test_train_value_changes_only_the_critics_and_ranks_held_out_returns(
    trained, demos: DemoSet
) -> None:
    policy = trained[1]
    values = synthetic_values(demos)
    cfg = TrainConfig(value_steps=300, value_batch_size=32, value_holdout_fraction=0.25)
    valued, metrics = train_value(policy, values, cfg)
    before, after = policy.model.state_dict(), valued.model.state_dict()
    for key in before:
        if key.startswith("critics."):
            continue
        assert torch.equal(before[key], after[key]), key
    for i in range(2):  # each critic trained
        assert not torch.equal(before[f"critics.{i}.0.weight"], after[f"critics.{i}.0.weight"])
    assert valued.normalization == policy.normalization
    held = metrics["held_out"]
    assert held["samples"] == 16
    assert held["spearman"] > 0.5 and held["pearson"] > 0.5, held
    assert len(metrics["train_critic_mse"]) == 2


def test_trained_policy_round_trips_through_a_checkpoint(trained, tmp_path) -> None:
    policy = trained[1]
    save_checkpoint(policy, tmp_path / "ckpt")
    loaded = load_checkpoint(tmp_path / "ckpt")
    assert loaded.normalization == policy.normalization
    saved = policy.model.state_dict()
    assert all(torch.equal(saved[k], v) for k, v in loaded.model.state_dict().items())
    assert loaded.origin["behaviour_cloning"]["samples"] == 64


def test_learning_rate_warms_up_then_decays_to_the_floor() -> None:
    peak, total, warmup = 1e-3, 100, 10
    rates = [learning_rate(s, total, peak, warmup, 0.1) for s in range(total + 1)]
    assert rates[0] == pytest.approx(peak / warmup) and rates[warmup - 1] == pytest.approx(peak)
    assert all(a >= b for a, b in zip(rates[warmup:], rates[warmup + 1 :], strict=False))
    assert rates[-1] == pytest.approx(0.1 * peak)


def test_image_shift_moves_each_camera_by_at_most_the_limit() -> None:
    images = torch.zeros(4, 2, 16, 16, 3, dtype=torch.uint8)
    images[:, :, 6:10, 6:10] = 255
    shifted = shift_images(images, 2, torch.Generator().manual_seed(0))
    assert shifted.shape == images.shape and shifted.dtype == torch.uint8
    for frame in shifted.reshape(-1, 16, 16, 3):
        rows, cols = torch.nonzero(frame[..., 0], as_tuple=True)
        assert rows.numel() == 16  # the square survives whole
        assert 4 <= int(rows.min()) <= 8 and 4 <= int(cols.min()) <= 8
    assert torch.equal(shift_images(images, 0, torch.Generator()), images)


def test_spearman_averages_tied_ranks() -> None:
    pearson, spearman = correlations(np.array([0.1, 0.2, 0.3, 0.4]), np.array([0, 0, 1, 1.0]))
    assert spearman == pytest.approx(np.sqrt(0.8)) and pearson > 0.8
    assert correlations(np.ones(4), np.arange(4.0)) == (None, None)


def test_config_refuses_a_theta_the_runtime_cannot_use() -> None:
    with pytest.raises(InvalidSetting, match="s1_theta"):
        TrainConfig(s1_theta=0.0).validate()
    with pytest.raises(InvalidSetting, match="system1_steps"):
        TrainConfig(system1_steps=0).validate()


def test_the_cli_default_theta_is_the_training_default() -> None:
    from edgevla.cli_learning import TRAIN_S1_THETA

    assert TrainConfig().s1_theta == TRAIN_S1_THETA


def test_a_checkpoint_from_before_system1_offsets_loads_but_does_not_export(
    trained, tmp_path
) -> None:
    """Checkpoints saved before bundle schema 3 have no System 1 offset statistics: they load
    (so `train system1` can bring them up to date) and the exporter refuses them by name."""
    import json

    from edgevla.export.bundle_writer import export_bundle

    save_checkpoint(trained[1], tmp_path / "old")
    config_path = tmp_path / "old" / "config.json"
    config = json.loads(config_path.read_text())
    del config["normalization"]["s1_delta_mean"], config["normalization"]["s1_delta_std"]
    config_path.write_text(json.dumps(config))
    old = load_checkpoint(tmp_path / "old")
    assert old.normalization.s1_delta_mean is None
    with pytest.raises(InvalidSetting, match="edgevla train system1"):
        export_bundle(old, tmp_path / "bundle")
    assert not (tmp_path / "bundle").exists()


def test_train_system1_command_replaces_system1_and_rewrites_the_card(
    trained, demos: DemoSet, tmp_path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`edgevla train system1` on a finished checkpoint (one with a value record): System 1
    changes, nothing else does, and the card lists the command and System 1's numbers."""
    import json

    from edgevla.cli import main
    from edgevla.sim.demos import save_demos

    save_checkpoint(trained[1], tmp_path / "ckpt")
    value_record = {"samples": 10, "episodes": 2, "steps": 1, "held_out": {"spearman": 0.5}}
    (tmp_path / "ckpt" / "train_value.json").write_text(json.dumps(value_record))
    (tmp_path / "ckpt" / "train_policy.json").write_text(json.dumps(trained[3], default=float))
    save_demos(synthetic_demos(seed=9), tmp_path / "demos")
    argv = ["train", "system1", "--checkpoint", str(tmp_path / "ckpt"), "--threads", "1"]
    argv += ["--demos", str(tmp_path / "demos"), "--out", str(tmp_path / "out"), "--steps", "3"]
    monkeypatch.setattr("sys.argv", ["edgevla", *argv])  # the command line the card records
    assert main(argv) == 0
    before = load_checkpoint(tmp_path / "ckpt")
    after = load_checkpoint(tmp_path / "out")
    changed = {
        k.split(".")[0]
        for k, v in before.model.state_dict().items()
        if not torch.equal(v, after.model.state_dict()[k])
    }
    assert changed == {"system1"}
    assert "train system1" in after.origin["system1_training"]["command"]
    card = (tmp_path / "out" / "README.md").read_text()
    assert "train system1" in card and "System 1 held-out s1_slice_rad" in card
    record = json.loads((tmp_path / "out" / "train_policy.json").read_text())
    assert record["system1"]["steps"] == 3 and "history" not in record["system1"]


def test_train_policy_can_fine_tune_a_checkpoint(trained, tmp_path) -> None:
    """`--init`: the start checkpoint's weights (and config) are the start; System 2 and System
    1 train, the critics are carried over untouched and the origin says so."""
    from edgevla.cli import main
    from edgevla.sim.demos import save_demos

    save_checkpoint(trained[1], tmp_path / "ckpt")
    save_demos(synthetic_demos(seed=9), tmp_path / "demos")
    argv = ["train", "policy", "--init", str(tmp_path / "ckpt"), "--demos", str(tmp_path / "demos")]
    argv += ["--out", str(tmp_path / "out"), "--steps", "3", "--system1-steps", "2"]
    argv += ["--no-grounding", "--lr", "1e-4", "--threads", "1"]
    assert main(argv) == 0
    before = load_checkpoint(tmp_path / "ckpt").model.state_dict()
    after = load_checkpoint(tmp_path / "out")
    changed = {
        k.split(".")[0]
        for k, v in before.items()
        if not torch.equal(v, after.model.state_dict()[k])
    }
    assert "system1" in changed and "critics" not in changed and len(changed) > 2
    assert after.origin["fine_tuned_from"]["checkpoint"] == str(tmp_path / "ckpt")
    assert after.origin["behaviour_cloning"]["config"]["lr"] == 1e-4


def test_pruning_aware_training_plans_from_the_kept_tokens(trained, demos: DemoSet) -> None:
    """`prune_keep_tokens`: the steps drawn for pruning run the prefix on the selector's top K
    visual tokens. With K = all tokens they match unpruned training; with K = 4 they do not."""

    def system2_losses(keep: int, share: float) -> list[float]:
        losses: list[float] = []
        stages: list[str] = []

        def record(step: int, total: int, report: dict[str, float]) -> None:
            if "loss" in report and stages[-1] == "system2":
                losses.append(report["loss"])

        cfg = dataclasses.replace(QUICK, steps=3, prune_keep_tokens=keep, prune_share=share)
        train_policy(trained[1], demos, cfg, record, on_stage=stages.append)
        return losses

    visual = trained[1].config.num_visual_tokens
    unpruned = system2_losses(visual, 0.0)
    np.testing.assert_allclose(system2_losses(visual, 1.0), unpruned, rtol=1e-4)
    assert not np.allclose(system2_losses(4, 1.0), unpruned, rtol=1e-3)
    with pytest.raises(InvalidSetting, match="prune_keep_tokens"):
        train_policy(trained[1], demos, dataclasses.replace(QUICK, prune_keep_tokens=visual + 1))
    with pytest.raises(InvalidSetting, match="prune_keep_tokens"):
        dataclasses.replace(QUICK, prune_keep_tokens=0).validate()
    with pytest.raises(InvalidSetting, match="prune_share"):
        dataclasses.replace(QUICK, prune_share=1.5).validate()
