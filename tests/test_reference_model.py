"""The PyTorch reference model: determinism, attention folding, shared-prefix batching, masks."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from edgevla.export.checkpoint import (
    CheckpointError,
    init_policy,
    load_checkpoint,
    save_checkpoint,
)
from edgevla.export.configs import get_config
from edgevla.export.model_stats import model_stats
from edgevla.export.reference import build_model, grouped_attention
from edgevla.runtime.errors import ConfigError
from edgevla.runtime.model_config import ModelConfig


def _prefix_inputs(cfg: ModelConfig, seed: int = 0) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(
        0,
        256,
        (1, cfg.num_cameras, cfg.image_size, cfg.image_size, 3),
        generator=g,
        dtype=torch.uint8,
    )
    ids = torch.randint(2, 60, (1, cfg.max_instruction_tokens), generator=g)
    mask = torch.zeros(1, cfg.max_instruction_tokens, dtype=torch.bool)
    mask[0, :5] = True
    state = torch.randn(1, cfg.state_dim, generator=g)
    return images, ids, mask, state


def test_same_seed_same_weights_other_seed_differs() -> None:
    cfg = get_config("tiny")
    a, b, c = (
        build_model(cfg, 3).state_dict(),
        build_model(cfg, 3).state_dict(),
        build_model(cfg, 4).state_dict(),
    )
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)


def test_grouped_attention_matches_repeated_kv_sdpa() -> None:
    """Folding query heads per KV head must equal the textbook repeat-KV attention."""
    g = torch.Generator().manual_seed(0)
    q = torch.randn(3, 8, 5, 16, generator=g)
    k = torch.randn(3, 2, 7, 16, generator=g)
    v = torch.randn(3, 2, 7, 16, generator=g)
    mask = torch.ones(3, 7, dtype=torch.bool)
    mask[1, 4:] = False
    ours = grouped_attention(q, [k], [v], [mask])
    ref = F.scaled_dot_product_attention(
        q,
        k.repeat_interleave(4, dim=1),
        v.repeat_interleave(4, dim=1),
        attn_mask=mask[:, None, None, :],
    )
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=1e-5)


def test_batched_candidates_over_shared_prefix_equal_one_by_one() -> None:
    """N candidates against one broadcast cache give what N separate batch-1 calls give."""
    cfg = get_config("tiny")
    model = build_model(cfg, 1)
    with torch.no_grad():
        k, v, mask, *_ = model.encode_prefix(*_prefix_inputs(cfg))
        noisy = torch.randn(4, cfg.chunk_len, cfg.action_dim)
        t = torch.tensor([1.0, 0.9, 0.5, 0.1])
        batched = model.expert_velocity(k, v, mask, noisy, t)
        single = torch.cat(
            [model.expert_velocity(k, v, mask, noisy[i : i + 1], t[i : i + 1]) for i in range(4)]
        )
    torch.testing.assert_close(batched, single, atol=1e-5, rtol=1e-5)


def test_padded_instruction_tokens_do_not_leak() -> None:
    """Changing ids under the padding mask must not change anything the policy uses."""
    cfg = get_config("tiny")
    model = build_model(cfg, 2)
    images, ids, mask, state = _prefix_inputs(cfg)
    other = ids.clone()
    other[0, 5:] = 3
    with torch.no_grad():
        a = model.encode_prefix(images, ids, mask, state)
        b = model.encode_prefix(images, other, mask, state)
        noisy = torch.randn(2, cfg.chunk_len, cfg.action_dim)
        t = torch.tensor([0.7, 0.3])
        va = model.expert_velocity(a[0], a[1], a[2], noisy, t)
        vb = model.expert_velocity(b[0], b[1], b[2], noisy, t)
    torch.testing.assert_close(a[3], b[3])  # value summary
    torch.testing.assert_close(a[4], b[4])  # token scores
    torch.testing.assert_close(va, vb)
    # ...while a change to a real instruction token does change the plan inputs.
    other[0, 0] = ids[0, 0] + 1
    with torch.no_grad():
        c = model.encode_prefix(images, other, mask, state)
    assert not torch.allclose(a[3], c[3])


def test_value_is_min_of_two_critics() -> None:
    cfg = get_config("tiny")
    model = build_model(cfg, 0)
    with torch.no_grad():
        q, critics = model.value(
            torch.randn(1, cfg.d_model), torch.randn(6, cfg.chunk_len, cfg.action_dim)
        )
    assert critics.shape == (6, 2)
    torch.testing.assert_close(q, critics.min(dim=-1).values)
    assert not torch.allclose(critics[:, 0], critics[:, 1])


def test_checkpoint_round_trip(tmp_path) -> None:
    policy = init_policy(get_config("tiny"), 5)
    save_checkpoint(policy, tmp_path / "ckpt")
    loaded = load_checkpoint(tmp_path / "ckpt")
    assert loaded.config == policy.config
    assert loaded.normalization == policy.normalization
    assert (
        loaded.tokenizer.encode("touch the red cube").ids
        == policy.tokenizer.encode("touch the red cube").ids
    )
    inputs = _prefix_inputs(policy.config)
    with torch.no_grad():
        for x, y in zip(
            policy.model.encode_prefix(*inputs), loaded.model.encode_prefix(*inputs), strict=True
        ):
            assert torch.equal(x, y)


def test_checkpoint_with_foreign_weights_is_refused(tmp_path) -> None:
    save_checkpoint(init_policy(get_config("tiny"), 0), tmp_path / "ckpt")
    small = init_policy(get_config("small"), 0)
    from safetensors.torch import save_file

    save_file(
        {k: v.contiguous() for k, v in small.model.state_dict().items()},
        str(tmp_path / "ckpt" / "model.safetensors"),
    )
    with pytest.raises(CheckpointError, match=r"model.safetensors.*another shape"):
        load_checkpoint(tmp_path / "ckpt")
    (tmp_path / "ckpt" / "config.json").unlink()
    with pytest.raises(CheckpointError, match=r"config\.json is missing"):
        load_checkpoint(tmp_path / "ckpt")


def test_checkpoint_tokenizer_must_fit_the_vocabulary(tmp_path) -> None:
    save_checkpoint(init_policy(get_config("tiny"), 0), tmp_path / "ckpt")
    path = tmp_path / "ckpt" / "tokenizer.json"
    tok = json.loads(path.read_text())
    vocab = tok["model"]["vocab"]
    for i in range(200):
        vocab.setdefault(f"word{i}", len(vocab))
    path.write_text(json.dumps(tok))
    with pytest.raises(CheckpointError, match=r"tokenizer\.json: has 314 tokens .* only 128"):
        load_checkpoint(tmp_path / "ckpt")
    del vocab["[PAD]"]
    path.write_text(json.dumps(tok))
    with pytest.raises(CheckpointError, match=r"tokenizer\.json: lacks the \[PAD\] token"):
        load_checkpoint(tmp_path / "ckpt")


def _square_at(cfg: ModelConfig, row: int, col: int) -> torch.Tensor:
    """Grey frames with one red 8-pixel square starting at patch (row, col), on every camera.

    The square spans whole patches (one 8-pixel patch, or 2 × 2 patches of 4 pixels), so moving
    it by whole patches keeps the mean tile the same.
    """
    s, p = cfg.image_size, cfg.patch_size
    size = max(p, 8)
    images = torch.full((1, cfg.num_cameras, s, s, 3), 120, dtype=torch.uint8)
    images[0, :, row * p : row * p + size, col * p : col * p + size] = torch.tensor(
        [200, 40, 40], dtype=torch.uint8
    )
    return images


@pytest.mark.parametrize("seed", [0, 7])
def test_system1_sees_where_an_object_is(seed: int) -> None:
    """Moving a square by whole patches must change System 1's velocity.

    A per-camera mean of linear patch embeddings is the embedding of the mean tile, which a
    whole-patch move leaves unchanged (measured with that design: relative change 1.7e-7, float
    rounding). With per-patch tokens the move changes the output by a fraction of what removing
    the square does that is orders of magnitude above rounding (measured, untrained: 0.2-0.4 with
    8-pixel patches, 0.06-0.13 with tiny's 4-pixel patches).
    """
    cfg = get_config("tiny")
    model = build_model(cfg, seed)
    g = torch.Generator().manual_seed(1)
    state = torch.randn(1, cfg.state_dim, generator=g)
    noisy = torch.randn(1, cfg.s1_horizon, cfg.action_dim, generator=g)
    t = torch.tensor([0.5])
    empty = torch.full_like(_square_at(cfg, 0, 0), 120)
    with torch.no_grad():
        here = model.system1_velocity(_square_at(cfg, 0, 0), state, noisy, t)
        there = model.system1_velocity(_square_at(cfg, 2, 3), state, noisy, t)
        gone = model.system1_velocity(empty, state, noisy, t)
    moved = float((here - there).norm() / here.norm())
    removed = float((here - gone).norm() / here.norm())
    assert moved > 1e-3
    assert moved > 0.03 * removed

    base = get_config("tiny").to_dict()
    with pytest.raises(ConfigError, match="multiple of patch_size"):
        ModelConfig.from_dict({**base, "patch_size": 7})
    with pytest.raises(ConfigError, match="n_kv_heads"):
        ModelConfig.from_dict({**base, "n_kv_heads": 3})
    with pytest.raises(ConfigError, match="d_model"):
        ModelConfig.from_dict({**base, "d_model": "wide"})
    with pytest.raises(ConfigError, match="unknown model config 'huge'"):
        get_config("huge")


def test_pi0_scale_is_sized_without_allocating() -> None:
    stats = model_stats(get_config("pi0-scale"))
    total = sum(stats.params.values())
    assert 2.5e9 < total < 4.0e9  # PaliGemma 3B backbone + 300M expert
    assert 0.2e9 < stats.params["action_expert"] < 0.5e9
    # One shared prefix must cost fewer FLOPs than a prefix per candidate.
    assert stats.per_candidate_prefix_flops > 3 * stats.plan_flops
    assert np.isfinite(stats.plan_flops)
