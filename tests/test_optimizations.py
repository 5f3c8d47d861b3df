"""Plan-time optimizations at export: layer pruning (EfficientVLA) with its fidelity gate."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch

from edgevla.export.bundle_writer import ExportOptions, export_bundle
from edgevla.export.checkpoint import ReferencePolicy, init_policy
from edgevla.export.configs import get_config
from edgevla.export.parity import parity_inputs
from edgevla.export.pruning import (
    choose_pruning,
    layer_redundancy,
    plan_fidelity,
    prune_layers,
)
from edgevla.runtime.bundle import load_bundle
from edgevla.runtime.errors import BundleSchemaError, BundleShapeMismatch, InvalidSetting
from edgevla.runtime.policy import DualSystemPolicy, Observation

# Three layers so that a cut can keep more than one.
DEEP = dataclasses.replace(get_config("tiny"), name="tiny-3", n_layers=3)
SAMPLING = ExportOptions().sampling()


def _silence(block: torch.nn.Module) -> None:
    """Make a residual block the identity: its attention and MLP add nothing."""
    with torch.no_grad():
        block.o_proj.weight.zero_()
        block.down_proj.weight.zero_()


@pytest.fixture(scope="module")
def idle_middle() -> ReferencePolicy:
    """A 3-layer policy whose layer 1 (prefix and expert block) does nothing."""
    policy = init_policy(DEEP, 3)
    _silence(policy.model.layers[1])
    _silence(policy.model.expert_layers[1])
    return policy


def test_a_pruned_model_is_the_source_without_the_removed_layers(idle_middle) -> None:
    source = init_policy(DEEP, 5)
    pruned = prune_layers(source, [2])
    assert pruned.config.n_layers == 2 and len(pruned.model.expert_layers) == 2
    assert source.config.n_layers == 3  # the source is left alone
    inputs = parity_inputs(source, 1, 0)[0]
    feeds = [torch.from_numpy(a) for a in inputs.feeds().values()]
    with torch.no_grad():
        k_src, v_src, *_ = source.model.encode_prefix(*feeds)
        k_new, v_new, *_ = pruned.model.encode_prefix(*feeds)
    # Layers 0 and 1 see the same inputs in both models: their caches are identical.
    torch.testing.assert_close(k_new, k_src[:2], rtol=0, atol=0)
    torch.testing.assert_close(v_new, v_src[:2], rtol=0, atol=0)
    with pytest.raises(InvalidSetting, match="prune_layers"):
        prune_layers(source, [3])
    with pytest.raises(InvalidSetting, match="every layer"):
        prune_layers(source, [0, 1, 2])


def test_an_idle_layer_ranks_most_redundant_and_auto_removes_only_it(idle_middle) -> None:
    observations = parity_inputs(idle_middle, 3, 0)
    redundancy = layer_redundancy(idle_middle.model, observations)
    assert redundancy[1] == pytest.approx(1.0, abs=1e-6)
    assert max(redundancy[0], redundancy[2]) < 0.999
    choice = choose_pruning(idle_middle, "auto", observations, SAMPLING)
    assert choice.record.removed == [1]
    assert choice.record.plan_cosine == pytest.approx(1.0, abs=1e-5)
    assert choice.policy.config.n_layers == 2
    # Removing a working layer as well fails the gate: auto stops at the idle one.
    assert all(c < 0.98 for cut, c in choice.record.cuts_tried.items() if cut != "1")


def test_a_fixed_cut_below_the_gate_is_refused_with_the_numbers(idle_middle) -> None:
    observations = parity_inputs(idle_middle, 2, 0)
    with pytest.raises(InvalidSetting, match=r"plan cosine 0\.\d+ .* below the gate 0\.98"):
        choose_pruning(idle_middle, 2, observations, SAMPLING)
    loose = choose_pruning(idle_middle, 2, observations, SAMPLING, min_cosine=0.01)
    assert len(loose.record.removed) == 2 and loose.record.plan_cosine < 0.98
    with pytest.raises(InvalidSetting, match="prune_layers"):
        choose_pruning(idle_middle, 3, observations, SAMPLING)


def test_fidelity_of_a_model_with_itself_is_one(idle_middle) -> None:
    observations = parity_inputs(idle_middle, 2, 0)
    assert plan_fidelity(idle_middle.model, idle_middle.model, observations, SAMPLING) == (
        pytest.approx(1.0, abs=1e-9)
    )


@pytest.fixture(scope="module")
def pruned_bundle(idle_middle, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("pruned") / "bundle"
    export_bundle(idle_middle, out, ExportOptions(prune_layers="auto", parity_observations=1))
    return out


def test_a_pruned_bundle_states_its_cut_passes_parity_and_plans(pruned_bundle: Path) -> None:
    bundle = load_bundle(pruned_bundle)
    record = bundle.manifest.optimizations.layer_pruning
    assert record is not None and record.removed == [1] and record.source_layers == 3
    assert bundle.model.n_layers == 2 and bundle.manifest.parity.passed
    assert bundle.manifest.export_options["prune_layers"] == "auto"
    policy = DualSystemPolicy.from_dir(pruned_bundle)
    cfg = bundle.model
    obs = Observation(
        np.zeros((cfg.num_cameras, cfg.image_size, cfg.image_size, 3), np.uint8),
        np.asarray(bundle.manifest.normalization.state_mean, np.float32),
        "touch the red cube",
    )
    assert policy.plan(obs, np.random.default_rng(0)).chunk.shape == (cfg.chunk_len, 7)


def test_an_unpruned_bundle_records_no_pruning(tiny_bundle: Path) -> None:
    assert load_bundle(tiny_bundle).manifest.optimizations.layer_pruning is None


@pytest.mark.parametrize(
    ("change", "error", "field"),
    [
        (("source_layers", 4), BundleShapeMismatch, "source_layers"),
        (("removed", [1, 1]), BundleSchemaError, "removed"),
        (("removed", [3]), BundleSchemaError, "removed"),
        (("redundancy", [1.0]), BundleShapeMismatch, "redundancy"),
        (("plan_cosine", 0.5), BundleSchemaError, "plan_cosine"),
    ],
)
def test_a_pruning_record_that_does_not_fit_the_model_is_refused(
    pruned_bundle: Path, edited_bundle, change: tuple, error: type, field: str
) -> None:
    copy = edited_bundle(
        pruned_bundle, lambda m: m["optimizations"]["layer_pruning"].update([change])
    )
    with pytest.raises(error) as info:
        load_bundle(copy)
    assert info.value.field == f"optimizations.layer_pruning.{field}"


@pytest.mark.parametrize("value", [-1, "some", 1.5, True])
def test_export_options_refuse_a_bad_prune_request(value: object) -> None:
    with pytest.raises(InvalidSetting, match=r"ExportOptions\.prune_layers"):
        ExportOptions(prune_layers=value).validate()  # type: ignore[arg-type]
    with pytest.raises(InvalidSetting, match=r"ExportOptions\.prune_min_cosine"):
        ExportOptions(prune_min_cosine=0.0).validate()
