"""The reference dual-system VLA in PyTorch (Hume on a pi0-style backbone).

- ViT patch encoder over every camera's frame.
- Prefix decoder (RMSNorm, RoPE, SwiGLU, grouped-query attention) over [visual tokens,
  instruction tokens, state token, value-query token], bidirectional within the prefix, returning
  every layer's keys and values: the prefix KV cache.
- Flow-matching action expert: one block per prefix layer; its action tokens attend to that
  layer's cache and to each other. The cache is shared by all N candidates without being copied:
  attention scores against it are a broadcasting matmul.
- Value-query head: the value-query token's final state plus a candidate's first steps, scored
  by two critics; Q is their minimum.
- Token-selector head: instruction-conditioned additive scores of the visual tokens.
- System 1: a light transformer over the newest frame's patch tokens, the state and a slice of
  the plan, which it denoises.

Everything here is traceable by `torch.onnx.export` at static shapes; `precision="fp16"` casts
the weights while RMSNorm statistics, attention softmax and the time embedding are computed in
float32 (the ViT and System 1 LayerNorms run at the weights' precision).
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from edgevla.runtime.model_config import ModelConfig

_MASKED = -1e9  # additive mask value; applied in float32


def rope_tables(positions: int, head_dim: int, theta: float) -> tuple[Tensor, Tensor]:
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim))
    angles = torch.arange(positions, dtype=torch.float64)[:, None] * inv_freq[None, :]
    angles = torch.cat([angles, angles], dim=-1)
    return angles.cos().float(), angles.sin().float()


def apply_rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """x: [B, heads, T, head_dim]; cos/sin: [T, head_dim] (rotate-half convention)."""
    half = x.shape[-1] // 2
    rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
    return x * cos.to(x.dtype) + rotated * sin.to(x.dtype)


def sinusoidal_time(
    t: Tensor, dim: int, min_period: float = 4e-3, max_period: float = 4.0
) -> Tensor:
    """pi0's time embedding, always in float32 (fp16 cannot resolve t / 4e-3)."""
    fraction = torch.linspace(0.0, 1.0, dim // 2, dtype=torch.float32, device=t.device)
    period = min_period * (max_period / min_period) ** fraction
    angle = t.float()[:, None] * (2 * math.pi / period)[None, :]
    return torch.cat([angle.sin(), angle.cos()], dim=-1)


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        xf = x.float()
        # Written as a division so onnxruntime fuses it into SimplifiedLayerNormalization.
        normed = xf / torch.sqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return (normed * self.weight.float()).to(x.dtype)


def grouped_attention(
    q: Tensor, keys: list[Tensor], values: list[Tensor], key_masks: list[Tensor]
) -> Tensor:
    """Grouped-query attention over one or more key/value blocks.

    q: [B, heads, T, hd]. Each key/value block is [B or 1, kv_heads, Tk, hd]; a batch of 1
    broadcasts (the shared prefix). key_masks: matching [B or 1, Tk] bool, True = attend.
    Query heads are folded as [kv_heads, rep·T] so no key or value is repeated or copied.
    """
    b, heads, t, hd = q.shape
    kv_heads = keys[0].shape[1]
    rep = heads // kv_heads
    qg = q.reshape(b, kv_heads, rep * t, hd) * (hd**-0.5)
    scores = [
        torch.matmul(qg, k.transpose(-1, -2)).float()
        + torch.where(m, 0.0, _MASKED)[:, None, None, :].float()
        for k, m in zip(keys, key_masks, strict=True)
    ]
    probs = torch.softmax(torch.cat(scores, dim=-1), dim=-1).to(q.dtype)
    out = None
    offset = 0
    for v in values:
        part = torch.matmul(probs[..., offset : offset + v.shape[2]], v)
        out = part if out is None else out + part
        offset += v.shape[2]
    assert out is not None
    return out.reshape(b, heads, t, hd)


class GQABlock(nn.Module):
    """Pre-norm decoder block: RMSNorm → GQA attention (RoPE) → RMSNorm → SwiGLU."""

    def __init__(self, width: int, n_heads: int, n_kv_heads: int, head_dim: int, ffn: int) -> None:
        super().__init__()
        self.n_heads, self.n_kv_heads, self.head_dim = n_heads, n_kv_heads, head_dim
        self.attn_norm = RMSNorm(width)
        self.q_proj = nn.Linear(width, n_heads * head_dim, bias=False)
        self.k_proj = nn.Linear(width, n_kv_heads * head_dim, bias=False)
        self.v_proj = nn.Linear(width, n_kv_heads * head_dim, bias=False)
        self.o_proj = nn.Linear(n_heads * head_dim, width, bias=False)
        self.ffn_norm = RMSNorm(width)
        self.gate_proj = nn.Linear(width, ffn, bias=False)
        self.up_proj = nn.Linear(width, ffn, bias=False)
        self.down_proj = nn.Linear(ffn, width, bias=False)

    def _qkv(self, x: Tensor, cos: Tensor, sin: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        b, t, _ = x.shape
        h = self.attn_norm(x)
        q = self.q_proj(h).view(b, t, self.n_heads, self.head_dim).transpose(1, 2)
        k = self.k_proj(h).view(b, t, self.n_kv_heads, self.head_dim).transpose(1, 2)
        v = self.v_proj(h).view(b, t, self.n_kv_heads, self.head_dim).transpose(1, 2)
        return q, apply_rope(k, cos, sin), v  # keys roped here, queries by the caller

    def _finish(self, x: Tensor, attn: Tensor, ffn_mask: Tensor | None) -> Tensor:
        b, t, _ = x.shape
        x = x + self.o_proj(attn.transpose(1, 2).reshape(b, t, -1))
        h = self.ffn_norm(x)
        hidden = F.silu(self.gate_proj(h)) * self.up_proj(h)
        if ffn_mask is not None:  # activation steering: switch FFN neurons off (1 keeps)
            hidden = hidden * ffn_mask.to(hidden.dtype)
        return x + self.down_proj(hidden)

    def forward(
        self,
        x: Tensor,
        cos: Tensor,
        sin: Tensor,
        mask: Tensor,
        past: tuple[Tensor, Tensor, Tensor] | None = None,
        ffn_mask: Tensor | None = None,
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Returns (x, k, v) with this block's own keys/values (post-RoPE) for caching."""
        b, t, _ = x.shape
        q, k, v = self._qkv(x, cos, sin)
        q = apply_rope(q, cos, sin)
        if past is None:
            attn = grouped_attention(q, [k], [v], [mask])
        else:
            past_k, past_v, past_mask = past
            own_mask = torch.ones(b, t, dtype=torch.bool, device=x.device)
            attn = grouped_attention(q, [past_k, k], [past_v, v], [past_mask, own_mask])
        return self._finish(x, attn, ffn_mask), k, v

    def forward_partial(
        self,
        x: Tensor,
        cos: Tensor,
        sin: Tensor,
        positions: Tensor,
        cache: tuple[Tensor, Tensor],
        mask: Tensor,
        ffn_mask: Tensor | None = None,
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Token reuse (VLA-Cache): `x` holds only the tokens being recomputed, at sequence
        `positions` [B, R]; their fresh keys and values replace those rows of the previous
        frame's `cache` ([B, kv, L, hd] each), and they attend to the whole updated layer.
        Returns (x, k, v) with k and v the full updated layer cache."""
        q, k, v = self._qkv(x, cos, sin)
        q = apply_rope(q, cos, sin)
        index = positions[:, None, :, None].expand(-1, k.shape[1], -1, k.shape[3])
        full_k = cache[0].to(k.dtype).scatter(2, index, k)
        full_v = cache[1].to(v.dtype).scatter(2, index, v)
        attn = grouped_attention(q, [full_k], [full_v], [mask])
        return self._finish(x, attn, ffn_mask), full_k, full_v


class ViTBlock(nn.Module):
    """Pre-LayerNorm transformer block with full self-attention and a GELU MLP."""

    def __init__(self, width: int, heads: int, mlp_dim: int) -> None:
        super().__init__()
        self.heads = heads
        self.ln1 = nn.LayerNorm(width)
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)
        self.ln2 = nn.LayerNorm(width)
        self.fc1 = nn.Linear(width, mlp_dim)
        self.fc2 = nn.Linear(mlp_dim, width)

    def forward(self, x: Tensor) -> Tensor:
        b, t, w = x.shape
        hd = w // self.heads
        qkv = self.qkv(self.ln1(x)).view(b, t, 3, self.heads, hd).permute(2, 0, 3, 1, 4)
        scores = torch.matmul(qkv[0], qkv[1].transpose(-1, -2)).float() * (hd**-0.5)
        attn = torch.matmul(torch.softmax(scores, dim=-1).to(x.dtype), qkv[2])
        x = x + self.proj(attn.transpose(1, 2).reshape(b, t, w))
        return x + self.fc2(F.gelu(self.fc1(self.ln2(x)), approximate="tanh"))


def patchify(images: Tensor, patch: int, dtype: torch.dtype) -> Tensor:
    """uint8 [B, C, S, S, 3] → [B, C, P, patch·patch·3] in [-1, 1]."""
    b, c, s, _, ch = images.shape
    g = s // patch
    x = images.to(dtype) * (2.0 / 255.0) - 1.0
    x = x.reshape(b, c, g, patch, g, patch, ch).permute(0, 1, 2, 4, 3, 5, 6)
    return x.reshape(b, c, g * g, patch * patch * ch)


class VisionEncoder(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.patch = cfg.patch_size
        self.patch_embed = nn.Linear(cfg.patch_size**2 * 3, cfg.vit_width)
        self.pos_embed = nn.Parameter(torch.randn(cfg.patches_per_camera, cfg.vit_width) * 0.02)
        self.camera_embed = nn.Parameter(torch.randn(cfg.num_cameras, cfg.vit_width) * 0.02)
        self.blocks = nn.ModuleList(
            ViTBlock(cfg.vit_width, cfg.vit_heads, cfg.vit_mlp_dim) for _ in range(cfg.vit_depth)
        )
        self.norm = nn.LayerNorm(cfg.vit_width)

    def forward(self, images: Tensor) -> Tensor:
        x = self.patch_embed(patchify(images, self.patch, self.patch_embed.weight.dtype))
        x = x + self.pos_embed[None, None] + self.camera_embed[None, :, None]
        b, c, p, w = x.shape
        x = x.reshape(b, c * p, w)
        for block in self.blocks:
            x = block(x)
        return self.norm(x)


class TokenSelector(nn.Module):
    """Scores visual tokens for pruning: v·tanh(W_v·token + W_t·instruction summary)."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.token_proj = nn.Linear(width, width)
        self.text_proj = nn.Linear(width, width, bias=False)
        self.score = nn.Linear(width, 1)

    def forward(self, visual: Tensor, text: Tensor, text_mask: Tensor) -> Tensor:
        weights = text_mask.to(text.dtype)[..., None]
        summary = (text * weights).sum(1) / weights.sum(1).clamp(min=1.0)
        hidden = torch.tanh(self.token_proj(visual) + self.text_proj(summary)[:, None])
        return self.score(hidden).squeeze(-1).float()


@dataclass
class PrefixStates:
    """One prefix pass: the cache the graphs return plus each layer's output for probes."""

    keys: Tensor  # [layers, B, kv, L, hd]
    values: Tensor
    mask: Tensor  # [B, L] bool
    value_summary: Tensor  # [B, d_model] float32
    token_scores: Tensor  # [B, visual tokens] float32
    hidden: list[Tensor]  # per layer [B, L, d_model], before the final norm
    embeddings: Tensor  # [B, L, d_model]: the input of layer 0 (before any steering)
    kept_tokens: Tensor  # [B, K] int64: the visual tokens in the prefix, ascending


def critic(in_dim: int, hidden: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Linear(in_dim, hidden),
        nn.SiLU(),
        nn.Linear(hidden, hidden),
        nn.SiLU(),
        nn.Linear(hidden, 1),
    )


class System1Net(nn.Module):
    """Light reactive denoiser over [frame patch tokens, state token, action tokens] → velocity.

    Every patch of every camera stays a token with its own position and camera embedding: a
    per-camera average of linear patch embeddings equals the embedding of the mean tile, so it
    cannot tell where in the frame an object is, and where the object is now is what System 1
    exists to react to.
    """

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        w = cfg.s1_width
        self.patch = cfg.patch_size
        self.patch_embed = nn.Linear(cfg.patch_size**2 * 3, w)
        self.patch_pos = nn.Parameter(torch.randn(cfg.patches_per_camera, w) * 0.02)
        self.camera_embed = nn.Parameter(torch.randn(cfg.num_cameras, w) * 0.02)
        self.state_proj = nn.Linear(cfg.state_dim, w)
        self.action_in = nn.Linear(cfg.action_dim, w)
        self.time_mlp = nn.Sequential(nn.Linear(w, w), nn.SiLU(), nn.Linear(w, w))
        # Positions of the state token and the h1 action tokens (patches have their own).
        self.pos_embed = nn.Parameter(torch.randn(1 + cfg.s1_horizon, w) * 0.02)
        self.blocks = nn.ModuleList(ViTBlock(w, cfg.s1_heads, 4 * w) for _ in range(cfg.s1_depth))
        self.norm = nn.LayerNorm(w)
        self.action_out = nn.Linear(w, cfg.action_dim)
        self.horizon = cfg.s1_horizon

    def forward(self, images: Tensor, state: Tensor, noisy: Tensor, t: Tensor) -> Tensor:
        dtype = self.patch_embed.weight.dtype
        patches = self.patch_embed(patchify(images, self.patch, dtype))  # [B, C, P, w]
        patches = patches + self.patch_pos[None, None] + self.camera_embed[None, :, None]
        frame = patches.flatten(1, 2)  # [B, C·P, w]
        st = self.state_proj(state.to(dtype))[:, None]
        time = self.time_mlp(sinusoidal_time(t, self.action_in.out_features).to(dtype))
        actions = self.action_in(noisy.to(dtype)) + time[:, None]
        x = torch.cat([frame, torch.cat([st, actions], dim=1) + self.pos_embed[None]], dim=1)
        for block in self.blocks:
            x = block(x)
        return self.action_out(self.norm(x[:, -self.horizon :])).float()


class DualSystemVLA(nn.Module):
    """All weights of the policy; the five graph entry points are methods."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        d, e = cfg.d_model, cfg.expert_width
        self.vision = VisionEncoder(cfg)
        self.vision_proj = nn.Linear(cfg.vit_width, d)
        self.embed_tokens = nn.Embedding(cfg.vocab_size, d)
        self.state_proj = nn.Linear(cfg.state_dim, d)
        self.value_query = nn.Parameter(torch.randn(1, 1, d) * 0.02)
        self.layers = nn.ModuleList(
            GQABlock(d, cfg.n_heads, cfg.n_kv_heads, cfg.head_dim, cfg.ffn_dim)
            for _ in range(cfg.n_layers)
        )
        self.final_norm = RMSNorm(d)
        self.selector = TokenSelector(d)
        # Action expert (pi0's action-time MLP on the way in).
        self.action_in = nn.Linear(cfg.action_dim, e)
        self.action_time_mlp = nn.Sequential(nn.Linear(2 * e, e), nn.SiLU(), nn.Linear(e, e))
        self.expert_layers = nn.ModuleList(
            GQABlock(e, cfg.n_heads, cfg.n_kv_heads, cfg.head_dim, cfg.expert_ffn_dim)
            for _ in range(cfg.n_layers)
        )
        self.expert_norm = RMSNorm(e)
        self.action_out = nn.Linear(e, cfg.action_dim)
        # Value-query head: two critics.
        value_in = d + cfg.value_horizon * cfg.action_dim
        self.critics = nn.ModuleList(critic(value_in, cfg.value_hidden) for _ in range(2))
        self.system1 = System1Net(cfg)
        # Visual-token pruning: how many visual tokens enter the decoder (None: all). Set on a
        # copy by `with_token_pruning`; the graphs and the parity reference both follow it.
        self.keep_tokens: int | None = None
        cos, sin = rope_tables(cfg.prefix_len + cfg.chunk_len, cfg.head_dim, cfg.rope_theta)
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)

    @property
    def dtype(self) -> torch.dtype:
        return self.action_in.weight.dtype

    def with_token_pruning(self, keep_tokens: int | None) -> DualSystemVLA:
        """This model (weights shared, not copied) keeping only the `keep_tokens` visual tokens
        its token selector scores highest."""
        if keep_tokens is not None and not 1 <= keep_tokens <= self.cfg.num_visual_tokens:
            raise ValueError(
                f"keep_tokens {keep_tokens} must be in [1, {self.cfg.num_visual_tokens}]"
            )
        clone = copy.copy(self)
        clone.keep_tokens = keep_tokens
        return clone

    def encode_prefix(
        self,
        images: Tensor,
        instruction_ids: Tensor,
        instruction_mask: Tensor,
        state: Tensor,
        keep_mask: Tensor | None = None,
        steer_bias: Tensor | None = None,
    ) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
        """→ prefix_k, prefix_v [layers, B, kv, L, hd], prefix_mask, value_summary,
        token_scores, kept_tokens."""
        s = self.prefix_states(
            images, instruction_ids, instruction_mask, state, keep_mask, steer_bias
        )
        return s.keys, s.values, s.mask, s.value_summary, s.token_scores, s.kept_tokens

    def _prefix_inputs(
        self, images: Tensor, instruction_ids: Tensor, instruction_mask: Tensor, state: Tensor
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """(visual tokens, text tokens, [state, value query] tokens, selector scores)."""
        cfg = self.cfg
        b = images.shape[0]
        visual = self.vision_proj(self.vision(images))
        text = self.embed_tokens(instruction_ids) * math.sqrt(cfg.d_model)
        st = self.state_proj(state.to(self.dtype))[:, None]
        tail = torch.cat([st, self.value_query.expand(b, 1, -1)], dim=1)
        return visual, text, tail, self.selector(visual, text, instruction_mask)

    def _visual_subset(
        self, visual: Tensor, tokens: Tensor
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Visual tokens at indices `tokens` [B, K], the sequence positions of those tokens and
        of every non-visual token [B, K + T + 2], and the RoPE tables at those positions (a kept
        token keeps the position it has in the full prefix)."""
        cfg = self.cfg
        b = visual.shape[0]
        picked = torch.gather(visual, 1, tokens[..., None].expand(-1, -1, visual.shape[-1]))
        rest = torch.arange(cfg.num_visual_tokens, cfg.prefix_len, device=visual.device)
        positions = torch.cat([tokens, rest[None].expand(b, -1)], dim=1)
        cos = self.rope_cos[positions][:, None]  # [B, 1, L', hd]: broadcast over heads
        sin = self.rope_sin[positions][:, None]
        return picked, positions, cos, sin

    def _full_mask(self, instruction_mask: Tensor, visual_tokens: int) -> Tensor:
        b = instruction_mask.shape[0]
        valid = torch.ones(b, visual_tokens, dtype=torch.bool, device=instruction_mask.device)
        tail = torch.ones(b, 2, dtype=torch.bool, device=instruction_mask.device)
        return torch.cat([valid, instruction_mask, tail], dim=1)

    def prefix_states(
        self,
        images: Tensor,
        instruction_ids: Tensor,
        instruction_mask: Tensor,
        state: Tensor,
        keep_mask: Tensor | None = None,
        steer_bias: Tensor | None = None,
    ) -> PrefixStates:
        """The prefix pass with every layer's output kept (training probes read them).

        `keep_mask` [layers, ffn_dim] scales each layer's FFN neurons and `steer_bias`
        [layers, d_model] is added to the residual stream entering each layer (activation
        steering); None, ones and zeros leave the model unchanged. With `keep_tokens` set
        (visual-token pruning) only the K visual tokens the selector scores highest enter the
        decoder.
        """
        cfg = self.cfg
        b = images.shape[0]
        visual, text, tail, scores = self._prefix_inputs(
            images, instruction_ids, instruction_mask, state
        )
        if self.keep_tokens is None:
            kept = torch.arange(cfg.num_visual_tokens, device=images.device)[None].expand(b, -1)
            cos, sin = self.rope_cos[: cfg.prefix_len], self.rope_sin[: cfg.prefix_len]
        else:
            # Sorted, so the kept tokens stay in frame order (and top-k ties cannot reorder).
            kept = torch.topk(scores, self.keep_tokens, dim=-1).indices.sort(dim=-1).values
            visual, _, cos, sin = self._visual_subset(visual, kept)
        x = torch.cat([visual, text, tail], dim=1)
        mask = self._full_mask(instruction_mask, visual.shape[1])
        embeddings = x
        ks, vs, hidden = [], [], []
        for i, layer in enumerate(self.layers):
            if steer_bias is not None:
                x = x + steer_bias[i].to(x.dtype)
            ffn_mask = None if keep_mask is None else keep_mask[i]
            x, k, v = layer(x, cos, sin, mask, ffn_mask=ffn_mask)
            ks.append(k)
            vs.append(v)
            hidden.append(x)
        x = self.final_norm(x)
        return PrefixStates(
            keys=torch.stack(ks),
            values=torch.stack(vs),
            mask=mask,
            value_summary=x[:, -1].float(),
            token_scores=scores,
            hidden=hidden,
            embeddings=embeddings,
            kept_tokens=kept,
        )

    def encode_prefix_reuse(
        self,
        images: Tensor,
        instruction_ids: Tensor,
        instruction_mask: Tensor,
        state: Tensor,
        keep_mask: Tensor,
        steer_bias: Tensor,
        cache_k: Tensor,
        cache_v: Tensor,
        recompute_tokens: Tensor,
    ) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
        """Visual-token reuse (VLA-Cache): the previous prefix cache with only the visual tokens
        `recompute_tokens` [B, R] (and every text, state and value-query token) recomputed.

        The ViT and the selector still see the whole new frame; the decoder runs R + T + 2
        query tokens instead of the full prefix. A reused token keeps the keys and values it had
        in `cache_k`/`cache_v` at every layer. Outputs as `encode_prefix`.
        """
        cfg = self.cfg
        b = images.shape[0]
        visual, text, tail, scores = self._prefix_inputs(
            images, instruction_ids, instruction_mask, state
        )
        visual_new, positions, cos, sin = self._visual_subset(visual, recompute_tokens)
        x = torch.cat([visual_new, text, tail], dim=1)
        mask = self._full_mask(instruction_mask, cfg.num_visual_tokens)
        ks, vs = [], []
        for i, layer in enumerate(self.layers):
            x = x + steer_bias[i].to(x.dtype)
            x, k, v = layer.forward_partial(
                x, cos, sin, positions, (cache_k[i], cache_v[i]), mask, keep_mask[i]
            )
            ks.append(k)
            vs.append(v)
        x = self.final_norm(x)
        kept = torch.arange(cfg.num_visual_tokens, device=images.device)[None].expand(b, -1)
        return torch.stack(ks), torch.stack(vs), mask, x[:, -1].float(), scores, kept

    def expert_velocity(
        self, prefix_k: Tensor, prefix_v: Tensor, prefix_mask: Tensor, noisy: Tensor, t: Tensor
    ) -> Tensor:
        """Velocity for N candidates over one prefix (prefix tensors keep their batch of 1)."""
        return self.expert_step(prefix_k, prefix_v, prefix_mask, noisy, t)[0]

    def _expert_input(self, noisy: Tensor, t: Tensor) -> Tensor:
        n, h, _ = noisy.shape
        e = self.action_in.out_features
        time = sinusoidal_time(t, e).to(self.dtype)[:, None].expand(n, h, e)
        return self.action_time_mlp(torch.cat([self.action_in(noisy.to(self.dtype)), time], dim=-1))

    def expert_step(
        self, prefix_k: Tensor, prefix_v: Tensor, prefix_mask: Tensor, noisy: Tensor, t: Tensor
    ) -> tuple[Tensor, Tensor]:
        """(velocity, residual): the residual [N, H, E] float32 is what the expert's attention
        and MLP blocks added to the action tokens, all layers summed — the cache that
        `expert_velocity_cached` reuses on the denoising steps in between (EfficientVLA)."""
        cfg = self.cfg
        h = noisy.shape[1]
        x0 = self._expert_input(noisy, t)
        positions = slice(cfg.prefix_len, cfg.prefix_len + h)
        cos, sin = self.rope_cos[positions], self.rope_sin[positions]
        prefix_k, prefix_v = prefix_k.to(self.dtype), prefix_v.to(self.dtype)
        x = x0
        for i, layer in enumerate(self.expert_layers):
            x, _, _ = layer(x, cos, sin, prefix_mask, past=(prefix_k[i], prefix_v[i], prefix_mask))
        velocity = self.action_out(self.expert_norm(x)).float()
        return velocity, (x - x0).float()

    def expert_velocity_cached(self, noisy: Tensor, t: Tensor, residual: Tensor) -> Tensor:
        """Velocity from a cached residual: only the action tokens' input (this step's noisy
        actions and time) is recomputed; every attention and MLP block is skipped."""
        x = self._expert_input(noisy, t) + residual.to(self.dtype)
        return self.action_out(self.expert_norm(x)).float()

    def value(self, value_summary: Tensor, actions: Tensor) -> tuple[Tensor, Tensor]:
        """Q(s, a) of each candidate: min over the two critics. → q [N], q_critics [N, 2]."""
        n = actions.shape[0]
        head = actions[:, : self.cfg.value_horizon].reshape(n, -1)
        z = torch.cat([value_summary.expand(n, -1), head], dim=-1).to(self.dtype)
        q_critics = torch.cat([c(z) for c in self.critics], dim=-1).float()
        return q_critics.min(dim=-1).values, q_critics

    def system1_velocity(self, images: Tensor, state: Tensor, noisy: Tensor, t: Tensor) -> Tensor:
        return self.system1(images, state, noisy, t)


def build_model(cfg: ModelConfig, seed: int) -> DualSystemVLA:
    """Deterministic initialisation: the same config and seed give bit-identical weights."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = DualSystemVLA(cfg)
    return model.eval()
