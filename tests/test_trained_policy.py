"""The committed reference checkpoint: it exports through the parity gate and runs closed loop."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from edgevla.cli import main
from edgevla.export.bundle_writer import ExportOptions, export_bundle
from edgevla.export.checkpoint import load_checkpoint

CHECKPOINT = Path(__file__).resolve().parent.parent / "checkpoints" / "touch-tiny"


@pytest.fixture(scope="module")
def trained_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("trained") / "bundle"
    export_bundle(load_checkpoint(CHECKPOINT), out, ExportOptions(candidates=5))
    return out


def test_the_committed_checkpoint_is_small_documented_and_trained() -> None:
    size = sum(p.stat().st_size for p in CHECKPOINT.iterdir())
    assert size <= 20 * 2**20
    card = (CHECKPOINT / "README.md").read_text()
    for heading in ("## Data", "## Training", "## Metrics", "## Reproduce"):
        assert heading in card
    origin = json.loads((CHECKPOINT / "config.json").read_text())["origin"]
    assert "behaviour_cloning" in origin and "value_training" in origin
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
