"""Grounding labels: the colour masks find each cube in rendered frames and nothing else, patch
labels follow the model's patch order, and training with them trains the token selector."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from edgevla.export.checkpoint import init_policy
from edgevla.export.configs import get_config
from edgevla.export.reference import patchify
from edgevla.export.training import TrainConfig, train_policy
from edgevla.runtime.errors import InvalidSetting
from edgevla.sim.demos import DemoSet
from edgevla.sim.grounding import (
    colour_mask,
    grounding_labels,
    instruction_colour,
    patch_fraction,
)
from edgevla.sim.scene import CUBE_COLOURS, cube_layout
from edgevla.sim.tasks import touch_episode

TINY = get_config("tiny")


def _u8(rgba: tuple[float, ...], light: float = 1.0) -> np.ndarray:
    return np.round(np.asarray(rgba[:3]) * light * 255).astype(np.uint8)


def test_colour_mask_takes_each_cube_and_no_other_surface_of_the_scene() -> None:
    # The scene's other materials (sim/scene.py): table, its shadow-coloured patch, arm, gripper.
    others = [(0.62, 0.50, 0.38), (0.45, 0.36, 0.28), (0.72, 0.75, 0.78), (0.18, 0.18, 0.20)]
    pixels = [_u8(c, light) for c in others for light in (0.5, 1.0)]
    pixels += [_u8(CUBE_COLOURS[c], light) for c in CUBE_COLOURS for light in (0.5, 1.0)]
    image = np.stack(pixels)[None]  # [1, 14, 3]
    for k, colour in enumerate(CUBE_COLOURS):
        expected = np.zeros(14, bool)
        expected[8 + 2 * k : 10 + 2 * k] = True
        assert colour_mask(image, colour)[0].tolist() == expected.tolist(), colour


def test_patch_fraction_follows_the_models_patch_order() -> None:
    mask = np.zeros((32, 32), bool)
    mask[9:11, 21:23] = True  # 4 pixels inside patch (row 2, column 5)
    mask[30, 0] = True  # 1 pixel in patch (row 7, column 0)
    fraction = patch_fraction(mask, 4)
    # patchify of the mask as an image puts the same tiles at the same token indices.
    image = torch.from_numpy(np.repeat(mask[..., None], 3, -1).astype(np.uint8) * 255)
    tokens = patchify(image[None, None], 4, torch.float32)[0, 0]
    assert np.flatnonzero(fraction).tolist() == [2 * 8 + 5, 7 * 8 + 0]
    assert np.flatnonzero((tokens > -1).any(-1).numpy()).tolist() == [21, 56]
    assert fraction[21] == 1.0 and fraction[56] == 0.25
    with pytest.raises(ValueError, match="do not split"):
        patch_fraction(np.zeros((30, 30), bool), 4)


def test_instruction_colour_needs_exactly_one_colour_word() -> None:
    assert instruction_colour("touch the green cube") == "green"
    assert instruction_colour("Touch the RED cube, please") == "red"
    for text in ("touch the cube", "touch the red or the blue cube"):
        with pytest.raises(ValueError, match="names"):
            instruction_colour(text)


@pytest.fixture(scope="module")
def rendered(first_frames) -> tuple[int, np.ndarray]:
    """One episode's first frames from both cameras, as in a demonstration."""
    seed = 7
    return seed, first_frames(seed, TINY.image_size)


def test_each_cube_is_found_apart_in_the_scene_camera(rendered) -> None:
    _, frames = rendered
    found = {
        c: patch_fraction(colour_mask(frames[0], c), TINY.patch_size) > 0 for c in CUBE_COLOURS
    }
    for colour, patches in found.items():
        assert patches.any(), f"the {colour} cube was not found"
        # At 32 px a 4 cm cube covers 1-6 pixels of the scene view, at most 2x2 patches; more
        # would mean another surface of the scene passed the colour test.
        assert patches.sum() <= 4, (colour, np.flatnonzero(patches))
    red, green, blue = found.values()
    assert not (red & green).any() and not (red & blue).any() and not (green & blue).any()


def test_labels_mark_the_named_cube_and_its_table_position(rendered) -> None:
    seed, frames = rendered
    episode = touch_episode(seed)
    instructions = [f"touch the {c} cube" for c in CUBE_COLOURS]
    named = instructions.index(episode.instruction)
    demos = DemoSet(
        images=np.stack([frames, frames]),
        state=np.zeros((2, 7), np.float32),
        actions=np.zeros((2, TINY.chunk_len, 7), np.float32),
        instruction_index=np.array([named, (named + 1) % 3], np.int16),
        episode=np.array([seed, seed], np.int32),
        step=np.zeros(2, np.int32),
        instructions=instructions,
        step_period_s=0.05,
    )
    labels = grounding_labels(demos, TINY.patch_size)
    assert labels.patch_target.shape == (2, TINY.num_visual_tokens)
    assert labels.patch_target[0].any() and labels.patch_target[1].any()
    assert not np.logical_and(labels.patch_target[0] > 0, labels.patch_target[1] > 0).any()
    # Both rows share the episode seed; the first row's instruction is the episode's own.
    np.testing.assert_allclose(labels.target_xy[0], cube_layout(seed)[episode.target][:2])


def _grid_demos(samples: int = 48) -> tuple[DemoSet, object]:
    """Random frames whose labels are a known function of the frame (a red/blue tile each)."""
    from edgevla.sim.grounding import GroundingLabels

    rng = np.random.default_rng(0)
    images = np.full((samples, 2, 32, 32, 3), 150, np.uint8)
    patch_target = np.zeros((samples, TINY.num_visual_tokens), np.float32)
    for i in range(samples):
        tile = rng.integers(0, 64)
        r, c = divmod(int(tile), 8)
        images[i, 0, 4 * r : 4 * r + 4, 4 * c : 4 * c + 4] = (220, 30, 30)
        patch_target[i, tile] = 1.0
    demos = DemoSet(
        images=images,
        state=rng.normal(0, 0.1, (samples, 7)).astype(np.float32),
        actions=rng.normal(0, 0.1, (samples, TINY.chunk_len, 7)).astype(np.float32),
        instruction_index=np.zeros(samples, np.int16),
        episode=np.arange(samples, dtype=np.int32) % 6,
        step=np.zeros(samples, np.int32),
        instructions=["touch the red cube"],
        step_period_s=0.05,
    )
    xy = rng.normal(0, 0.1, (samples, 2)).astype(np.float32)
    return demos, GroundingLabels(patch_target=patch_target, target_xy=xy)


def test_grounded_training_trains_the_selector_and_reports_probe_scores() -> None:
    torch.set_num_threads(1)
    demos, labels = _grid_demos()
    cfg = TrainConfig(steps=4, batch_size=8, warmup_steps=1, log_interval=1, eval_samples=8)
    untrained = init_policy(TINY, 1)
    plain, plain_metrics = train_policy(untrained, demos, cfg)
    grounded, metrics = train_policy(untrained, demos, cfg, grounding=labels)

    def selector(policy) -> list[torch.Tensor]:
        return [p.detach().clone() for p in policy.model.selector.parameters()]

    before = selector(untrained)
    assert all(torch.equal(a, b) for a, b in zip(before, selector(plain), strict=True))
    assert not all(torch.equal(a, b) for a, b in zip(before, selector(grounded), strict=True))
    assert metrics["grounding"] and not plain_metrics["grounding"]
    assert {"patch", "selector", "locate"} <= set(metrics["final"])
    assert 0.0 <= metrics["val"]["selector_hit"] <= 1.0 and metrics["val"]["locate_cm"] > 0
    assert "locate_cm" not in plain_metrics["val"]
    # The probe is training-only: the checkpoint holds the model's own weights and nothing else.
    assert set(grounded.model.state_dict()) == set(untrained.model.state_dict())


def test_grounding_refuses_labels_of_another_shape_and_a_probe_past_the_last_layer() -> None:
    from edgevla.sim.grounding import GroundingLabels

    demos, labels = _grid_demos(12)
    cfg = TrainConfig(steps=1, batch_size=4, warmup_steps=0, eval_samples=4)
    short = GroundingLabels(labels.patch_target[:, :64], labels.target_xy)
    with pytest.raises(InvalidSetting, match="patch labels"):
        train_policy(init_policy(TINY, 1), demos, cfg, grounding=short)
    deep = TrainConfig(steps=1, batch_size=4, warmup_steps=0, eval_samples=4, probe_layer=2)
    with pytest.raises(InvalidSetting, match="probe_layer"):
        train_policy(init_policy(TINY, 1), demos, deep, grounding=labels)


def test_train_policy_command_grounds_touch_demos_and_refuses_other_tasks(
    rendered, tmp_path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`edgevla train policy` end to end on two rows: grounding on for touch demonstrations;
    another task is refused with the flag that trains without it."""
    from edgevla.cli import main
    from edgevla.export.checkpoint import load_checkpoint
    from edgevla.sim.demos import save_demos

    seed, frames = rendered
    rng = np.random.default_rng(0)
    demos = DemoSet(
        images=np.stack([frames] * 4),
        state=rng.normal(0, 0.1, (4, 7)).astype(np.float32),
        actions=rng.normal(0, 0.1, (4, TINY.chunk_len, 7)).astype(np.float32),
        instruction_index=np.array([0, 1, 2, 0], np.int16),
        episode=np.array([seed, seed, seed + 1, seed + 1], np.int32),
        step=np.zeros(4, np.int32),
        instructions=[f"touch the {c} cube" for c in CUBE_COLOURS],
        step_period_s=0.05,
        meta={"task": "touch"},
    )
    save_demos(demos, tmp_path / "touch")
    args = ["train", "policy", "--steps", "2", "--batch-size", "2", "--threads", "1"]
    assert main([*args, "--demos", str(tmp_path / "touch"), "--out", str(tmp_path / "ck")]) == 0
    assert load_checkpoint(tmp_path / "ck").origin["behaviour_cloning"]["grounding"] is True

    demos.meta = {"task": "stack"}
    save_demos(demos, tmp_path / "stack")
    other = [*args, "--demos", str(tmp_path / "stack"), "--out", str(tmp_path / "ck2")]
    assert main(other) == 1
    assert "--no-grounding" in capsys.readouterr().err
    assert main([*other, "--no-grounding"]) == 0
    assert load_checkpoint(tmp_path / "ck2").origin["behaviour_cloning"]["grounding"] is False
