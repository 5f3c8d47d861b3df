"""The committed reference checkpoint: it exports through the parity gate and runs closed loop."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from edgevla.cli import main
from edgevla.export.checkpoint import load_checkpoint

CHECKPOINT = Path(__file__).resolve().parent.parent / "checkpoints" / "touch-tiny"


def test_the_committed_checkpoint_is_small_documented_and_trained() -> None:
    size = sum(p.stat().st_size for p in CHECKPOINT.iterdir())
    assert size <= 20 * 2**20
    card = (CHECKPOINT / "README.md").read_text()
    for heading in ("## Data", "## Training", "## Metrics", "## Reproduce"):
        assert heading in card
    origin = json.loads((CHECKPOINT / "config.json").read_text())["origin"]
    assert "behaviour_cloning" in origin and "value_training" in origin
    assert origin["behaviour_cloning"]["grounding"] is True
    # Trained statistics, not the placeholder centred on home with 0.6 rad spread.
    assert load_checkpoint(CHECKPOINT).normalization.action_std[0] != 0.6


def test_the_committed_checkpoint_exports_through_the_parity_gate(trained_bundle: Path) -> None:
    from edgevla.runtime.bundle import load_bundle

    manifest = load_bundle(trained_bundle).manifest
    assert manifest.parity.passed
    assert manifest.export_options["origin"]["behaviour_cloning"]["episodes"] > 100


def test_a_two_episode_evaluation_runs_from_the_command_line(
    trained_bundle: Path, tmp_path: Path
) -> None:
    report = tmp_path / "eval.json"
    sheet = tmp_path / "sheet.png"
    argv = ["eval", "--bundle", str(trained_bundle), "--episodes", "2", "--workers", "1"]
    assert main([*argv, "--json", str(report), "--sheet", str(sheet)]) == 0
    result = json.loads(report.read_text())
    assert result["summary"]["episodes"] == 2
    assert [e["seed"] for e in result["episodes"]] == [1_000_000, 1_000_001]
    assert all(
        e["outcome"] in {"success", "wrong_object", "timeout", "trip"} for e in result["episodes"]
    )
    assert result["settings"]["system1_enabled"] is True
    assert sheet.stat().st_size > 10_000


def test_an_evaluation_with_an_expert_schedule_records_it(
    trained_bundle: Path, tmp_path: Path
) -> None:
    report = tmp_path / "eval.json"
    argv = ["eval", "--bundle", str(trained_bundle), "--episodes", "1", "--workers", "1"]
    schedule = ["--expert-full-steps", "0,4,7,9", "--expert-cache-extrapolation", "linear"]
    assert main([*argv, *schedule, "--json", str(report)]) == 0
    result = json.loads(report.read_text())
    assert result["sampling"]["expert_full_steps"] == [0, 4, 7, 9]
    assert result["sampling"]["expert_cache_extrapolation"] == "linear"
    assert "expert_full_steps=0,4,7,9 expert_cache_extrapolation=linear" in result["configuration"]


def test_the_exported_policy_reads_the_colour_word(trained_bundle: Path, first_frames) -> None:
    """On held-out first frames, the bundle's token selector picks a patch of the cube the
    instruction names, for every colour: the prefix graph reads the instruction. (The previous
    checkpoint, trained without grounding, hit the named cube in 1 of these 9 cases.)"""
    import numpy as np

    from edgevla.runtime.policy import DualSystemPolicy, Observation
    from edgevla.sim.grounding import colour_mask, patch_fraction
    from edgevla.sim.scene import CUBE_COLOURS
    from edgevla.sim.tasks import HELD_OUT_SEED_BASE

    policy = DualSystemPolicy.from_dir(trained_bundle)
    cfg = policy.bundle.model
    state = np.zeros(cfg.state_dim, np.float32)
    for seed in range(HELD_OUT_SEED_BASE, HELD_OUT_SEED_BASE + 3):
        frames = first_frames(seed, cfg.image_size)
        for colour in CUBE_COLOURS:
            obs = Observation(frames, state, f"touch the {colour} cube")
            plan = policy.plan(obs, np.random.default_rng(0))
            top = int(np.argmax(plan.result.token_scores))
            labels = patch_fraction(colour_mask(frames, colour), cfg.patch_size).reshape(-1)
            assert labels[top] > 0, (seed, colour, top, np.flatnonzero(labels))


def test_demo_walks_through_one_plan_and_names_a_missing_bundle(
    trained_bundle: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["demo", "--bundle", str(trained_bundle)]) == 0
    shown = capsys.readouterr().out
    assert "← chosen" in shown and "System 1" in shown and "untrained" not in shown
    assert main(["demo", "--bundle", str(tmp_path / "none")]) == 1
    assert "make demo" in capsys.readouterr().err
