"""Training the reference policy on CPU: behaviour cloning, then the value head from rollouts.

`train_policy` fits System 2 (the prefix and the flow-matching action expert) to expert
demonstrations (`DemoSet`), then System 1 on the same demonstrations (`train_system1`, which
can also retrain System 1 alone on an existing checkpoint: its weights share nothing with
System 2's):

- System 2 behaviour cloning, pi0's flow matching: x_t = t·ε + (1 − t)·a, target ε − a, every
  sample attending to its own prefix cache (a batch-B cache with N = B candidates).
- System 1 cascaded denoising: the first `s1_horizon` rows of the same expert chunk, as offsets
  from the sample's state in System 1's units (`Normalizer.to_system1`), are noised to
  θ ~ U(0, θ1] and denoised from the sample's own frame and state, because at run time System 1
  starts at θ1 and integrates to 0, visiting every t in (0, θ1].

- Grounding (when labels are given, `edgevla.sim.grounding`): a training-only probe asks the
  output of prefix layer `probe_layer` which visual tokens show the named cube and, from the
  value-query token, where that cube lies; the token selector learns the same patch labels, so
  its scores mean "relevant to this instruction". The probe is discarded after training; it only
  shapes what the prefix cache holds for the action expert to read.

The value head's critics are left alone there. `train_value` later fits
only the two critics to rollout returns (`ValueSet`), each on its own bootstrap resample, so the
runtime's min over them is a pessimistic ensemble (Hume).

Both return a new `ReferencePolicy` (the caller's model is not modified) plus a metrics dict.
Every random draw comes from generators seeded by `TrainConfig.seed`, so a run is repeatable
and leaves torch's global RNG alone; thread count is the caller's business.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import msgspec
import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from edgevla.export.bundle_writer import ExportOptions
from edgevla.export.checkpoint import ReferencePolicy
from edgevla.export.reference import DualSystemVLA, PrefixStates, System1Net
from edgevla.runtime.errors import InvalidSetting
from edgevla.runtime.manifest import Normalization
from edgevla.runtime.tokenizer import InstructionTokenizer
from edgevla.sim.demos import DemoSet, ValueSet
from edgevla.sim.grounding import GroundingLabels

# The sampling a bundle ships with by default: the held-out evaluation's Euler schedules follow
# it so that what is scored is what the runtime runs.
RUNTIME_SAMPLING = ExportOptions().sampling()

# 0.01 rad (0.6°) is below any deliberate motion yet keeps a dimension that never moves in the
# demos (a fixed wrist, a gripper held shut) from turning small run-time offsets into huge
# normalized inputs.
STD_FLOOR = 1e-2
# System 1's offsets from the state are a slice's motion: a few mrad in its first row. The floor
# only has to keep a dimension that never moves (the gripper held shut) finite.
S1_STD_FLOOR = 1e-3

ProgressFn = Callable[[int, int, dict[str, float]], None]


@dataclass(frozen=True)
class TrainConfig:
    """Settings of both training stages; the defaults suit the `tiny` config on a 2-core CPU."""

    # Behaviour cloning (prefix + action expert + System 1). tiny (4 px patches, 142 prefix
    # tokens) at batch 64 runs ~10 steps/s on this 2-core machine: 10k steps ≈ 17 min, about
    # 28 epochs of the 22.5k-sample touch set; held-out error stopped falling by ~8k steps.
    steps: int = 10_000
    batch_size: int = 64  # 128 gives 1.1x the samples/s but half the updates: worse per minute
    lr: float = 1e-3  # 3e-4 had not localised the target after 4k steps; 2e-3 also trains
    warmup_steps: int = 500
    min_lr_ratio: float = 0.05  # cosine decays to lr · min_lr_ratio
    weight_decay: float = 1e-2  # Linear weights only; norms, biases, embeddings are not decayed
    grad_clip: float = 1.0  # global norm; AdamW betas (0.9, 0.95) as in openpi
    seed: int = 0
    time_sampling: str = "beta"  # "beta": pi0's Beta(1.5, 1) on [0.001, 1]; or "uniform"
    # System 1 learns every θ in (0, s1_theta]: a bundle may then run any θ1 up to it without
    # retraining (the bundle's default is smaller; docs/training.md).
    s1_theta: float = 0.5
    # System 1 alone (its own small network; System 2 frozen). tiny: ~30 steps/s here.
    system1_steps: int = 4000
    # Grounding losses (used when train_policy gets labels). Without them 10k BC steps left the
    # tiny policy choosing its cube at chance (docs/training.md).
    grounding_weight: float = 1.0  # patch BCE on the probe and on the token selector
    locate_weight: float = 1.0  # MSE of the named cube's normalized table position
    probe_layer: int = 0  # prefix layer whose output is probed; the expert reads the next one
    # Off: the sim's cameras never move, so a shift is label noise when the target's pixel
    # position sets the joints (synthetic two-square task, 4k steps: held-out plan MSE 0.003
    # without, 0.012 with ±2 px).
    image_shift_px: int = 0  # random shift per camera, edges replicated; 0 = off
    state_noise_std: float = 0.0  # Gaussian noise on the normalized state; 0 = off
    # Pruning-aware training: on a `prune_share` of System 2's steps the prefix keeps only the
    # selector's top `prune_keep_tokens` visual tokens, as a bundle exported with
    # `--keep-tokens K` runs it (no grounding loss on those steps: it labels every token).
    prune_keep_tokens: int | None = None
    prune_share: float = 0.5
    # Held-out episodes, scored every eval_interval steps with the runtime's sampling.
    val_fraction: float = 0.1
    eval_interval: int = 2000
    eval_samples: int = 256
    log_interval: int = 10
    # Value head (critics only).
    value_steps: int = 3000
    value_batch_size: int = 256
    value_lr: float = 1e-3
    value_weight_decay: float = 1e-4
    value_holdout_fraction: float = 0.2
    value_summary_batch: int = 128

    def validate(self) -> None:
        """Refuse settings no run can use (InvalidSetting naming the field)."""
        positive = (
            "steps",
            "system1_steps",
            "batch_size",
            "lr",
            "log_interval",
            "eval_interval",
            "eval_samples",
            "value_steps",
            "value_batch_size",
            "value_lr",
            "value_summary_batch",
        )
        for name in positive:
            if not getattr(self, name) > 0:
                raise InvalidSetting(f"TrainConfig.{name}", f"{getattr(self, name)!r} must be > 0")
        rules = [
            ("warmup_steps", self.warmup_steps >= 0, "must be >= 0"),
            ("min_lr_ratio", 0.0 <= self.min_lr_ratio <= 1.0, "must be in [0, 1]"),
            ("weight_decay", self.weight_decay >= 0.0, "must be >= 0"),
            ("grad_clip", self.grad_clip > 0.0, "must be > 0"),
            ("time_sampling", self.time_sampling in ("beta", "uniform"), "must be beta|uniform"),
            ("s1_theta", 0.0 < self.s1_theta <= 1.0, "must be in (0, 1]"),
            ("grounding_weight", self.grounding_weight >= 0.0, "must be >= 0"),
            ("locate_weight", self.locate_weight >= 0.0, "must be >= 0"),
            ("probe_layer", self.probe_layer >= 0, "must be >= 0"),
            ("image_shift_px", self.image_shift_px >= 0, "must be >= 0"),
            ("state_noise_std", self.state_noise_std >= 0.0, "must be >= 0"),
            (
                "prune_keep_tokens",
                self.prune_keep_tokens is None or self.prune_keep_tokens >= 1,
                "must be >= 1",
            ),
            ("prune_share", 0.0 <= self.prune_share <= 1.0, "must be in [0, 1]"),
            ("val_fraction", 0.0 <= self.val_fraction < 1.0, "must be in [0, 1)"),
            ("value_weight_decay", self.value_weight_decay >= 0.0, "must be >= 0"),
            ("value_holdout_fraction", 0.0 <= self.value_holdout_fraction < 1.0, "in [0, 1)"),
        ]
        for name, ok, rule in rules:
            if not ok:
                raise InvalidSetting(f"TrainConfig.{name}", f"{getattr(self, name)!r} {rule}")


def learning_rate(step: int, total: int, peak: float, warmup: int, min_ratio: float) -> float:
    """Linear warm-up to `peak`, then cosine decay to `peak · min_ratio` at `total`."""
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    cosine = 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
    return peak * (min_ratio + (1.0 - min_ratio) * cosine)


def normalization_from_demos(
    demos: DemoSet, s1_horizon: int, std_floor: float = STD_FLOOR
) -> Normalization:
    """Per-dimension mean/std of the state and of every action row of every chunk, and per
    (row, dimension) mean/std of the first `s1_horizon` rows' offsets from the state.

    Computed in float64; std (population, like numpy's default) is floored at `std_floor`
    (`S1_STD_FLOOR` for the offsets).
    """
    state = np.asarray(demos.state, dtype=np.float64)
    chunks = np.asarray(demos.actions, dtype=np.float64)
    if state.shape[-1] != chunks.shape[-1]:
        raise InvalidSetting(
            "demos.state",
            f"{state.shape[-1]} dimensions but actions have {chunks.shape[-1]}: System 1 needs "
            "each action's offset from the state of the same name",
        )
    actions = chunks.reshape(-1, chunks.shape[-1])
    offsets = chunks[:, :s1_horizon] - state[:, None, :]

    def stats(x: np.ndarray, floor: float) -> tuple[list, list]:
        return x.mean(0).tolist(), np.maximum(x.std(0), floor).tolist()

    state_mean, state_std = stats(state, std_floor)
    action_mean, action_std = stats(actions, std_floor)
    s1_mean, s1_std = stats(offsets, S1_STD_FLOOR)
    return Normalization(
        state_mean=state_mean,
        state_std=state_std,
        action_mean=action_mean,
        action_std=action_std,
        s1_delta_mean=s1_mean,
        s1_delta_std=s1_std,
    )


def _normalize(x: np.ndarray, mean: list, std: list) -> Tensor:
    out = (np.asarray(x, np.float32) - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)
    return torch.from_numpy(np.ascontiguousarray(out, dtype=np.float32))


def _instruction_tokens(
    policy: ReferencePolicy, instructions: list[str], index: np.ndarray
) -> tuple[Tensor, Tensor]:
    """Ids and masks [N, T] per row: each distinct instruction is tokenized once, then indexed.

    T is the model's own max_instruction_tokens: the prefix length (and the action expert's
    RoPE positions after it) is fixed by the config, as in the exported graphs.
    """
    tokenizer = InstructionTokenizer(policy.tokenizer, policy.config.max_instruction_tokens)
    encoded = [tokenizer.encode(text) for text in instructions]
    ids = torch.from_numpy(np.concatenate([e[0] for e in encoded]))
    mask = torch.from_numpy(np.concatenate([e[1] for e in encoded]))
    rows = torch.from_numpy(np.asarray(index, dtype=np.int64))
    return ids[rows], mask[rows]


@dataclass
class _Rows:
    """A dataset as model-ready tensors (images stay uint8: the model normalizes them)."""

    images: Tensor  # uint8 [N, C, S, S, 3]
    ids: Tensor  # int64 [N, T]
    mask: Tensor  # bool [N, T]
    state: Tensor  # float32 [N, state_dim], normalized
    actions: Tensor  # float32 [N, H, A], normalized
    state_raw: Tensor  # float32 [N, state_dim], robot units (System 1's offsets start here)
    s1_actions: Tensor | None = None  # float32 [N, h1, A]: first rows in System 1's units
    patch_target: Tensor | None = None  # float32 [N, visual tokens] in [0, 1]
    target_xy: Tensor | None = None  # float32 [N, 2], metres on the table

    def take(self, idx: np.ndarray | Tensor) -> _Rows:
        i = torch.as_tensor(idx, dtype=torch.int64)

        def pick(x: Tensor | None) -> Tensor | None:
            return None if x is None else x[i]

        return _Rows(
            self.images[i],
            self.ids[i],
            self.mask[i],
            self.state[i],
            self.actions[i],
            self.state_raw[i],
            pick(self.s1_actions),
            pick(self.patch_target),
            pick(self.target_xy),
        )


@dataclass(frozen=True)
class _System1Units:
    """Conversions between System 2's normalized absolute rows and System 1's offsets."""

    action_mean: Tensor
    action_std: Tensor
    s1_mean: Tensor  # [h1, A]
    s1_std: Tensor

    @classmethod
    def of(cls, norm: Normalization) -> _System1Units:
        if norm.s1_delta_mean is None or norm.s1_delta_std is None:
            raise InvalidSetting("normalization.s1_delta_mean", "System 1 statistics are missing")

        def f32(x: list) -> Tensor:
            return torch.tensor(x, dtype=torch.float32)

        return cls(
            f32(norm.action_mean),
            f32(norm.action_std),
            f32(norm.s1_delta_mean),
            f32(norm.s1_delta_std),
        )

    def to_system1(self, rows: Tensor, state_raw: Tensor) -> Tensor:
        """Normalized absolute rows [B, h1, A] → System 1's units, offsets from `state_raw`."""
        absolute = rows * self.action_std + self.action_mean
        return (absolute - state_raw[:, None] - self.s1_mean) / self.s1_std

    def from_system1(self, x: Tensor, state_raw: Tensor) -> Tensor:
        absolute = x * self.s1_std + self.s1_mean + state_raw[:, None]
        return (absolute - self.action_mean) / self.action_std


class GroundingProbe(nn.Module):
    """Training-only heads on one prefix layer's output; never exported.

    The position head regresses the named cube's (x, y) standardised by the labels' own mean and
    spread (kept as buffers), so its loss is scale-free and `locate_m` answers in metres.
    """

    def __init__(self, width: int, target_xy: np.ndarray) -> None:
        super().__init__()
        self.patch = nn.Linear(width, 1)  # per visual token: shows the named cube?
        self.locate = nn.Linear(width, 2)  # value-query token: the named cube's (x, y)
        # float64 statistics and standardisation, as numpy computes them (runs stay repeatable).
        xy = torch.as_tensor(np.asarray(target_xy, np.float64))
        self.register_buffer("xy_mean", xy.mean(0))
        self.register_buffer("xy_std", xy.std(0, unbiased=False).clamp(min=1e-3))

    def locate_loss(self, query: Tensor, target_xy: Tensor) -> Tensor:
        standard = ((target_xy.double() - self.xy_mean) / self.xy_std).float()
        return F.mse_loss(self.locate(query), standard)

    def locate_m(self, query: Tensor) -> Tensor:
        return self.locate(query).double() * self.xy_std + self.xy_mean


def _rows(
    policy: ReferencePolicy,
    data: DemoSet | ValueSet,
    norm: Normalization,
    grounding: GroundingLabels | None = None,
) -> _Rows:
    ids, mask = _instruction_tokens(policy, data.instructions, data.instruction_index)
    rows = _Rows(
        images=torch.from_numpy(np.ascontiguousarray(data.images, dtype=np.uint8)),
        ids=ids,
        mask=mask,
        state=_normalize(data.state, norm.state_mean, norm.state_std),
        actions=_normalize(data.actions, norm.action_mean, norm.action_std),
        state_raw=torch.from_numpy(np.ascontiguousarray(data.state, dtype=np.float32)),
    )
    if norm.s1_delta_mean is not None and norm.s1_delta_std is not None:
        h1 = policy.config.s1_horizon
        offsets = np.asarray(data.actions[:, :h1], np.float32) - rows.state_raw.numpy()[:, None]
        rows.s1_actions = _normalize(offsets, norm.s1_delta_mean, norm.s1_delta_std)
    if grounding is not None:
        visual = policy.config.num_visual_tokens
        if grounding.patch_target.shape != (len(data), visual):
            raise InvalidSetting(
                "grounding",
                f"patch labels of shape {grounding.patch_target.shape}, the model has "
                f"{len(data)} rows × {visual} visual tokens",
            )
        rows.patch_target = torch.from_numpy(grounding.patch_target.astype(np.float32))
        rows.target_xy = torch.from_numpy(grounding.target_xy.astype(np.float32))
    return rows


def _split_episodes(
    episode: np.ndarray, fraction: float, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """(train rows, held-out rows), holding out whole episodes: consecutive moments of one
    episode are near-duplicates, so a row-level split would score memorisation."""
    rows = np.arange(len(episode))
    if fraction <= 0.0:
        return rows, rows[:0]
    unique = np.unique(episode)
    if len(unique) >= 2:
        count = min(len(unique) - 1, max(1, round(fraction * len(unique))))
        held = rng.choice(unique, size=count, replace=False)
        is_held = np.isin(episode, held)
        return rows[~is_held], rows[is_held]
    # One episode: fall back to a row split rather than no held-out score at all.
    count = min(len(rows) - 1, max(1, round(fraction * len(rows))))
    if count <= 0:
        return rows, rows[:0]
    perm = rng.permutation(rows)
    return np.sort(perm[count:]), np.sort(perm[:count])


def shift_images(images: Tensor, max_px: int, gen: torch.Generator) -> Tensor:
    """Shift each camera's frame by its own random (dy, dx) in [-max_px, max_px], replicating
    the edge: cheap robustness to small camera-mount offsets. uint8 in, uint8 out."""
    b, c, s = images.shape[:3]
    flat = images.reshape(b * c, s, s, images.shape[-1])
    shifts = torch.randint(-max_px, max_px + 1, (b * c, 2), generator=gen)
    base = torch.arange(s)
    rows = (base[None] + shifts[:, :1]).clamp(0, s - 1)
    cols = (base[None] + shifts[:, 1:]).clamp(0, s - 1)
    n = torch.arange(b * c)[:, None, None]
    return flat[n, rows[:, :, None], cols[:, None, :]].reshape(images.shape)


def _flow_times(n: int, how: str, gen: torch.Generator) -> Tensor:
    u = torch.rand(n, generator=gen)
    if how == "uniform":
        return 1e-3 + (1.0 - 1e-3) * u
    # Beta(1.5, 1) has CDF t^1.5, so u^(2/3) samples it exactly from our own generator.
    return 1e-3 + (1.0 - 1e-3) * u.pow(2.0 / 3.0)


# Target patches are ~5 % of the visual tokens; weighting positives 5x keeps the probe from
# settling on "never".
_PATCH_POS_WEIGHT = 5.0


def _grounding_losses(
    probe: GroundingProbe, states: PrefixStates, batch: _Rows, layer: int
) -> dict[str, Tensor]:
    assert batch.patch_target is not None and batch.target_xy is not None
    visual = batch.patch_target.shape[1]
    hidden = states.hidden[layer].float()
    pos_weight = torch.tensor(_PATCH_POS_WEIGHT)
    patch_logits = probe.patch(hidden[:, :visual]).squeeze(-1)
    probe_bce = F.binary_cross_entropy_with_logits(
        patch_logits, batch.patch_target, pos_weight=pos_weight
    )
    selector_bce = F.binary_cross_entropy_with_logits(
        states.token_scores, batch.patch_target, pos_weight=pos_weight
    )
    locate = probe.locate_loss(hidden[:, -1], batch.target_xy)
    return {"patch": probe_bce, "selector": selector_bce, "locate": locate}


def _system2_losses(
    model: DualSystemVLA,
    batch: _Rows,
    cfg: TrainConfig,
    gen: torch.Generator,
    probe: GroundingProbe | None = None,
) -> dict[str, Tensor]:
    images, state, actions = batch.images, batch.state, batch.actions
    if cfg.image_shift_px > 0:
        images = shift_images(images, cfg.image_shift_px, gen)
    if cfg.state_noise_std > 0.0:
        state = state + cfg.state_noise_std * torch.randn(state.shape, generator=gen)
    b = actions.shape[0]
    # Every sample's chunk attends to its own prefix (batch-B cache, N = B).
    states = model.prefix_states(images, batch.ids, batch.mask, state)
    k, v, mask = states.keys, states.values, states.mask
    noise = torch.randn(actions.shape, generator=gen)
    t = _flow_times(b, cfg.time_sampling, gen)
    x_t = t[:, None, None] * noise + (1.0 - t[:, None, None]) * actions
    bc = F.mse_loss(model.expert_velocity(k, v, mask, x_t, t), noise - actions)
    losses = {"loss": bc, "bc": bc}
    if probe is not None and batch.patch_target is not None:
        aux = _grounding_losses(probe, states, batch, cfg.probe_layer)
        losses["loss"] = (
            losses["loss"]
            + cfg.grounding_weight * (aux["patch"] + aux["selector"])
            + cfg.locate_weight * aux["locate"]
        )
        losses.update(aux)
    return losses


def _system1_losses(
    model: DualSystemVLA, batch: _Rows, cfg: TrainConfig, gen: torch.Generator
) -> dict[str, Tensor]:
    """Noise the "now" slice (System 1's units) to θ ∈ (0, θ1]; denoise it from the frame."""
    assert batch.s1_actions is not None
    slice_ = batch.s1_actions
    b = slice_.shape[0]
    noise = torch.randn(slice_.shape, generator=gen)
    theta = cfg.s1_theta * (1.0 - torch.rand(b, generator=gen))
    x_theta = theta[:, None, None] * noise + (1.0 - theta[:, None, None]) * slice_
    velocity = model.system1_velocity(batch.images, batch.state, x_theta, theta)
    s1 = F.mse_loss(velocity, noise - slice_)
    return {"loss": s1, "s1": s1}


@torch.no_grad()
def _evaluate(
    model: DualSystemVLA,
    rows: _Rows,
    batch_size: int,
    seed: int,
    units: _System1Units,
    probe: GroundingProbe | None = None,
    probe_layer: int = 0,
    system1: bool = False,
) -> dict[str, float]:
    """Run the runtime's sampling on held-out rows.

    `plan_mse`: System 2's chunk from pure noise at start_time_max (the first candidate), Euler
    denoise_steps, against the expert chunk (MSE in normalized units). `plan_slice_rad`: the RMS
    joint error of its first s1_horizon rows, in radians. With `system1`, `s1_slice_rad`: the
    same rows after System 1 re-noises them to θ1 in its own units and denoises in s1_steps.
    Radians, not normalized units, because the two systems normalize differently and a joint
    whose spread was floored (a wrist that barely moves) would dominate either's MSE.
    The same seed every time keeps scores comparable across the run.

    With grounding labels and the probe: `locate_cm`, the probe's mean error in placing the named
    cube (centimetres on the table), and `selector_hit`, how often the token selector's top token
    shows the named cube.
    """
    s, h1 = RUNTIME_SAMPLING, model.cfg.s1_horizon
    gen = torch.Generator().manual_seed(seed)
    sums = {"plan_mse": 0.0, "plan_slice_rad": 0.0}
    if system1:
        sums["s1_slice_rad"] = 0.0
    joints = slice(0, model.cfg.action_dim - 1)  # the last action dimension is the gripper

    def squared_rad(rows: Tensor, truth: Tensor) -> float:
        error = (rows - truth)[..., joints] * units.action_std[joints]
        return error.pow(2).sum().item() / error[0].numel()

    grounded = probe is not None and rows.target_xy is not None
    if grounded:
        sums.update(locate_cm=0.0, selector_hit=0.0)
    n = rows.actions.shape[0]
    for start in range(0, n, batch_size):
        batch = rows.take(np.arange(start, min(n, start + batch_size)))
        b = batch.actions.shape[0]
        states = model.prefix_states(batch.images, batch.ids, batch.mask, batch.state)
        k, v, mask = states.keys, states.values, states.mask
        if grounded:
            assert probe is not None
            assert batch.target_xy is not None and batch.patch_target is not None
            guess = probe.locate_m(states.hidden[probe_layer][:, -1].float())
            error_m = (guess - batch.target_xy.double()).norm(dim=-1)
            sums["locate_cm"] += 100.0 * error_m.sum().item()
            top = states.token_scores.argmax(dim=-1)
            hits = batch.patch_target.gather(1, top[:, None]).squeeze(1) > 0
            sums["selector_hit"] += hits.float().sum().item()
        x = torch.randn(batch.actions.shape, generator=gen)
        for i in range(s.denoise_steps):
            t = torch.full((b,), s.start_time_max * (1.0 - i / s.denoise_steps))
            x = x - (s.start_time_max / s.denoise_steps) * model.expert_velocity(k, v, mask, x, t)
        plan_slice, expert_slice = x[:, :h1], batch.actions[:, :h1]
        sums["plan_mse"] += F.mse_loss(x, batch.actions, reduction="sum").item() / x[0].numel()
        sums["plan_slice_rad"] += squared_rad(plan_slice, expert_slice)
        if system1:
            clean = units.to_system1(plan_slice, batch.state_raw)
            y = s.s1_theta * torch.randn(clean.shape, generator=gen) + (1.0 - s.s1_theta) * clean
            for i in range(s.s1_steps):
                t = torch.full((b,), s.s1_theta * (1.0 - i / s.s1_steps))
                velocity = model.system1_velocity(batch.images, batch.state, y, t)
                y = y - (s.s1_theta / s.s1_steps) * velocity
            refined = units.from_system1(y, batch.state_raw)
            sums["s1_slice_rad"] += squared_rad(refined, expert_slice)
    scores = {key: value / n for key, value in sums.items()}
    for key in ("plan_slice_rad", "s1_slice_rad"):
        if key in scores:
            scores[key] = math.sqrt(scores[key])
    return scores


def _param_groups(roots: list[nn.Module], weight_decay: float) -> list[dict[str, object]]:
    """Decay Linear weights only (norms, biases and embeddings are not decayed)."""
    params = [p for root in roots for p in root.parameters()]
    linear = {id(m.weight) for root in roots for m in root.modules() if isinstance(m, nn.Linear)}
    decay = [p for p in params if id(p) in linear]
    no_decay = [p for p in params if id(p) not in linear]
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


class _System2(nn.Module):
    """The weights System 2's behaviour cloning trains: everything but System 1 and the critics
    (trained from rollouts later); the token selector only when a grounding loss reaches it."""

    def __init__(self, model: DualSystemVLA, probe: GroundingProbe | None) -> None:
        super().__init__()
        skip = {"system1", "critics"} | ({"selector"} if probe is None else set())
        self.parts = nn.ModuleList(m for name, m in model.named_children() if name not in skip)
        self.loose = nn.ParameterList(p for name, p in model.named_parameters(recurse=False))
        self.probe = probe


class _Batches:
    """Shuffled epochs from a numpy Generator; a batch never repeats a row."""

    def __init__(self, rows: np.ndarray, batch_size: int, rng: np.random.Generator) -> None:
        self.rows, self.size, self.rng = rows, min(batch_size, len(rows)), rng
        self.order, self.pos = rng.permutation(rows), 0

    def next(self) -> np.ndarray:
        if self.pos + self.size > len(self.order):
            self.order, self.pos = self.rng.permutation(self.rows), 0
        out = self.order[self.pos : self.pos + self.size]
        self.pos += self.size
        return out


@dataclass
class _Fit:
    """One optimisation run's record: interval means and held-out scores."""

    history: list[dict[str, float]]
    val_history: list[dict[str, float]]
    wall_s: float


def _fit(
    model: DualSystemVLA,
    trained: nn.Module,
    loss_fn: Callable[[np.ndarray], dict[str, Tensor]],
    batches: _Batches,
    steps: int,
    cfg: TrainConfig,
    evaluate: Callable[[], dict[str, float]] | None,
    on_progress: ProgressFn | None,
) -> _Fit:
    """AdamW over `trained`'s parameters with warm-up and cosine decay; `loss_fn(rows)` gives
    the batch's losses ("loss" is optimised). Evaluates every `eval_interval` and at the end."""
    started = time.perf_counter()
    groups = _param_groups([trained], cfg.weight_decay)
    params = [p for g in groups for p in g["params"]]  # type: ignore[attr-defined]
    opt = torch.optim.AdamW(groups, lr=cfg.lr, betas=(0.9, 0.95))
    history: list[dict[str, float]] = []
    val_history: list[dict[str, float]] = []
    window: dict[str, list[float]] = {}
    model.train()
    for step in range(steps):
        lr = learning_rate(step, steps, cfg.lr, cfg.warmup_steps, cfg.min_lr_ratio)
        for group in opt.param_groups:
            group["lr"] = lr
        losses = loss_fn(batches.next())
        opt.zero_grad(set_to_none=True)
        losses["loss"].backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
        opt.step()
        for key, value in {**losses, "grad_norm": grad_norm}.items():
            window.setdefault(key, []).append(value.item())
        done = step + 1
        if done % cfg.log_interval == 0 or done == steps:
            report = {key: float(np.mean(values)) for key, values in window.items()}
            report["lr"] = lr
            history.append({"step": done, **report})
            window = {}
            if on_progress is not None:
                on_progress(done, steps, report)
        if evaluate is not None and (done % cfg.eval_interval == 0 or done == steps):
            model.eval()
            scores = evaluate()
            model.train()
            val_history.append({"step": done, **scores})
            if on_progress is not None:
                on_progress(done, steps, {f"val_{k}": v for k, v in scores.items()})
    model.eval()
    return _Fit(history, val_history, time.perf_counter() - started)


def _held_out(
    demos: DemoSet, rows: _Rows, cfg: TrainConfig, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, _Rows | None]:
    """(train rows, held-out rows, held-out tensors): whole episodes, capped at eval_samples."""
    train_idx, val_idx = _split_episodes(demos.episode, cfg.val_fraction, rng)
    if len(val_idx) > cfg.eval_samples:
        val_idx = np.sort(rng.choice(val_idx, size=cfg.eval_samples, replace=False))
    return train_idx, val_idx, rows.take(val_idx) if len(val_idx) else None


def _fit_metrics(fit: _Fit, steps: int, demos: DemoSet, train: int, val: int) -> dict[str, object]:
    return {
        "steps": steps,
        "samples": len(demos),
        "train_samples": train,
        "val_samples": val,
        "episodes": len(np.unique(demos.episode)),
        "wall_time_s": fit.wall_s,
        "steps_per_s": steps / fit.wall_s,
        "first": {k: v for k, v in fit.history[0].items() if k != "step"},
        "final": {k: v for k, v in fit.history[-1].items() if k != "step"},
        "val": fit.val_history[-1] if fit.val_history else None,
        "history": fit.history,
        "val_history": fit.val_history,
    }


def train_policy(
    policy: ReferencePolicy,
    demos: DemoSet,
    cfg: TrainConfig = TrainConfig(),
    on_progress: ProgressFn | None = None,
    grounding: GroundingLabels | None = None,
    on_stage: Callable[[str], None] | None = None,
) -> tuple[ReferencePolicy, dict[str, object]]:
    """Behaviour-clone System 2 (prefix, action expert) on `demos`, then System 1.

    `grounding`: labels aligned with `demos` (`edgevla.sim.grounding.grounding_labels`); with
    them the grounding losses join System 2's and the token selector is trained.

    Returns a new policy (trained copy of the weights, the demos' normalization, `origin`
    noting the run) and metrics: System 2's at the top level, System 1's under "system1".
    `on_progress(step, total, losses)` is called every `log_interval` steps with the interval's
    mean losses and the learning rate, and at every evaluation with `val_*` scores;
    `on_stage(name)` as each stage ("system2", "system1") begins.
    """
    cfg.validate()
    if len(demos) == 0:
        raise InvalidSetting("demos", "the demonstration set is empty")
    norm = normalization_from_demos(demos, policy.config.s1_horizon)
    model = copy.deepcopy(policy.model).float()
    if grounding is not None and cfg.probe_layer >= model.cfg.n_layers:
        raise InvalidSetting(
            "TrainConfig.probe_layer",
            f"{cfg.probe_layer} but the prefix has {model.cfg.n_layers} layers",
        )
    probe = None
    if grounding is not None:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.seed + 0x9E0)
            probe = GroundingProbe(model.cfg.d_model, grounding.target_xy)
    pruned = None
    if cfg.prune_keep_tokens is not None:
        if cfg.prune_keep_tokens > model.cfg.num_visual_tokens:
            raise InvalidSetting(
                "TrainConfig.prune_keep_tokens",
                f"{cfg.prune_keep_tokens} but the model has {model.cfg.num_visual_tokens} "
                f"visual tokens",
            )
        pruned = model.with_token_pruning(cfg.prune_keep_tokens)  # the same weights
    rows = _rows(policy, demos, norm, grounding)
    units = _System1Units.of(norm)
    rng = np.random.default_rng(cfg.seed)
    train_idx, val_idx, val_rows = _held_out(demos, rows, cfg, rng)
    gen = torch.Generator().manual_seed(cfg.seed)

    def evaluate() -> dict[str, float]:
        assert val_rows is not None
        return _evaluate(
            model, val_rows, cfg.batch_size, cfg.seed + 1, units, probe, cfg.probe_layer
        )

    if on_stage is not None:
        on_stage("system2")

    def system2_losses(idx: np.ndarray) -> dict[str, Tensor]:
        if pruned is not None and torch.rand((), generator=gen).item() < cfg.prune_share:
            return _system2_losses(pruned, rows.take(idx), cfg, gen, None)
        return _system2_losses(model, rows.take(idx), cfg, gen, probe)

    fit = _fit(
        model,
        _System2(model, probe),
        system2_losses,
        _Batches(train_idx, cfg.batch_size, rng),
        cfg.steps,
        cfg,
        evaluate if val_rows is not None else None,
        on_progress,
    )
    metrics = {
        **_fit_metrics(fit, cfg.steps, demos, len(train_idx), len(val_idx)),
        "grounding": grounding is not None,
    }
    origin = {
        **policy.origin,
        "behaviour_cloning": {
            "samples": len(demos),
            "episodes": metrics["episodes"],
            "instructions": list(demos.instructions),
            "grounding": grounding is not None,
            "final": metrics["final"],
            "val": metrics["val"],
            "config": dataclasses.asdict(cfg),
        },
    }
    system2 = dataclasses.replace(policy, model=model, normalization=norm, origin=origin)
    if on_stage is not None:
        on_stage("system1")
    trained, s1_metrics = train_system1(system2, demos, cfg, on_progress)
    metrics["wall_time_s"] = float(metrics["wall_time_s"]) + float(s1_metrics["wall_time_s"])
    return trained, {**metrics, "system1": s1_metrics}


def train_system1(
    policy: ReferencePolicy,
    demos: DemoSet,
    cfg: TrainConfig = TrainConfig(),
    on_progress: ProgressFn | None = None,
) -> tuple[ReferencePolicy, dict[str, object]]:
    """(Re)train System 1 alone on `demos`; every other weight stays bit-identical.

    System 2's normalization (state and action statistics) is the policy's own; System 1's
    offset statistics come from `demos`. System 1 starts from a fresh initialisation (seeded by
    `cfg.seed`), so a checkpoint whose System 1 was trained in other units can be brought up to
    date. Held-out scores (`plan_slice_rad` before and `s1_slice_rad` after System 1) use the
    policy's own System 2 plans, as the runtime does.
    """
    cfg.validate()
    if len(demos) == 0:
        raise InvalidSetting("demos", "the demonstration set is empty")
    own = normalization_from_demos(demos, policy.config.s1_horizon)
    norm = msgspec.structs.replace(
        policy.normalization, s1_delta_mean=own.s1_delta_mean, s1_delta_std=own.s1_delta_std
    )
    units = _System1Units.of(norm)
    model = copy.deepcopy(policy.model).float()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed + 0x51)
        model.system1 = System1Net(model.cfg)
    rows = _rows(policy, demos, norm)
    # The same held-out episodes as System 2's behaviour cloning (same seed, same first draws).
    rng = np.random.default_rng(cfg.seed)
    train_idx, val_idx, val_rows = _held_out(demos, rows, cfg, rng)
    gen = torch.Generator().manual_seed(cfg.seed + 0x51)

    def evaluate() -> dict[str, float]:
        assert val_rows is not None
        return _evaluate(model, val_rows, cfg.batch_size, cfg.seed + 1, units, system1=True)

    fit = _fit(
        model,
        model.system1,
        lambda idx: _system1_losses(model, rows.take(idx), cfg, gen),
        _Batches(train_idx, cfg.batch_size, rng),
        cfg.system1_steps,
        cfg,
        evaluate if val_rows is not None else None,
        on_progress,
    )
    metrics = _fit_metrics(fit, cfg.system1_steps, demos, len(train_idx), len(val_idx))
    origin = {
        **policy.origin,
        "system1_training": {
            "samples": len(demos),
            "episodes": metrics["episodes"],
            "units": "offsets from the state, per-row normalized (bundle schema 3)",
            "final": metrics["final"],
            "val": metrics["val"],
            "steps": cfg.system1_steps,
            "s1_theta": cfg.s1_theta,
            "seed": cfg.seed,
        },
    }
    trained = dataclasses.replace(policy, model=model, normalization=norm, origin=origin)
    return trained, metrics


@torch.no_grad()
def value_summaries(model: DualSystemVLA, rows: _Rows, batch_size: int) -> Tensor:
    """The prefix's value-query summary [M, d_model] for every row, in batches."""
    parts = []
    for start in range(0, rows.images.shape[0], batch_size):
        b = rows.take(np.arange(start, min(rows.images.shape[0], start + batch_size)))
        parts.append(model.encode_prefix(b.images, b.ids, b.mask, b.state)[3])
    return torch.cat(parts)


def _ranks(x: np.ndarray) -> np.ndarray:
    """Ranks with ties averaged (returns are full of ties: every failure is 0)."""
    order = np.argsort(x, kind="stable")
    ranks = np.empty(len(x), dtype=np.float64)
    ranks[order] = np.arange(len(x), dtype=np.float64)
    _, inverse, counts = np.unique(x, return_inverse=True, return_counts=True)
    sums = np.bincount(inverse, weights=ranks)
    return (sums / counts)[inverse]


def correlations(pred: np.ndarray, target: np.ndarray) -> tuple[float | None, float | None]:
    """(Pearson, Spearman); None where either side is constant."""
    pred, target = np.asarray(pred, np.float64), np.asarray(target, np.float64)
    if len(pred) < 2 or np.ptp(pred) == 0 or np.ptp(target) == 0:
        return None, None
    pearson = float(np.corrcoef(pred, target)[0, 1])
    spearman = float(np.corrcoef(_ranks(pred), _ranks(target))[0, 1])
    return pearson, spearman


def train_value(
    policy: ReferencePolicy,
    values: ValueSet,
    cfg: TrainConfig = TrainConfig(),
    on_progress: ProgressFn | None = None,
) -> tuple[ReferencePolicy, dict[str, object]]:
    """Fit the two critics to rollout returns; every other weight stays bit-identical.

    Inputs are the frozen prefix's value summary and the executed chunk, normalized with the
    policy's own statistics (train the policy first). Each critic sees its own bootstrap
    resample of the training rows; whole episodes are held out for the reported scores.
    """
    cfg.validate()
    if len(values) == 0:
        raise InvalidSetting("values", "the value set is empty")
    started = time.perf_counter()
    model = copy.deepcopy(policy.model)
    model.eval()
    rows = _rows(policy, values, policy.normalization)
    summary = value_summaries(model, rows, cfg.value_summary_batch)
    horizon = model.cfg.value_horizon
    features = torch.cat([summary, rows.actions[:, :horizon].flatten(1)], dim=-1)
    features = features.to(model.dtype)
    returns = torch.from_numpy(np.asarray(values.returns, dtype=np.float32))

    rng = np.random.default_rng(cfg.seed)
    train_idx, held_idx = _split_episodes(values.episode, cfg.value_holdout_fraction, rng)
    critics = list(model.critics)
    boots = [rng.choice(train_idx, size=len(train_idx), replace=True) for _ in critics]
    opt = torch.optim.AdamW(
        model.critics.parameters(), lr=cfg.value_lr, weight_decay=cfg.value_weight_decay
    )
    warmup = min(100, cfg.value_steps // 10)
    batch = min(cfg.value_batch_size, len(train_idx))
    window: dict[str, list[float]] = {}
    model.critics.train()
    with torch.enable_grad():
        for step in range(cfg.value_steps):
            lr = learning_rate(step, cfg.value_steps, cfg.value_lr, warmup, 0.05)
            for group in opt.param_groups:
                group["lr"] = lr
            opt.zero_grad(set_to_none=True)
            losses = {}
            for i, (critic, boot) in enumerate(zip(critics, boots, strict=True)):
                idx = torch.from_numpy(boot[rng.integers(0, len(boot), size=batch)])
                pred = critic(features[idx]).squeeze(-1).float()
                losses[f"critic{i}"] = F.mse_loss(pred, returns[idx])
            sum(losses.values()).backward()  # type: ignore[union-attr]
            for critic in critics:  # clipped apart: the critics share nothing
                torch.nn.utils.clip_grad_norm_(critic.parameters(), cfg.grad_clip)
            opt.step()
            for key, value in losses.items():
                window.setdefault(key, []).append(value.item())
            done = step + 1
            last = done == cfg.value_steps
            if on_progress is not None and (done % cfg.log_interval == 0 or last):
                report = {key: float(np.mean(v)) for key, v in window.items()}
                on_progress(done, cfg.value_steps, {**report, "lr": lr})
                window = {}
    model.eval()

    with torch.no_grad():
        q_train = torch.cat([c(features).float() for c in critics], dim=-1)
        held_rows = torch.from_numpy(held_idx)
        q_min, q_critics = model.value(summary[held_rows], rows.actions[held_rows])
    train_loss = [
        float(F.mse_loss(q_train[torch.from_numpy(b), i], returns[torch.from_numpy(b)]))
        for i, b in enumerate(boots)
    ]
    held: dict[str, object] = {"samples": len(held_idx)}
    if len(held_idx):
        y = returns[held_rows]
        held["critic_mse"] = [float(F.mse_loss(q_critics[:, i], y)) for i in range(len(critics))]
        held["min_mse"] = float(F.mse_loss(q_min, y))
        held["pearson"], held["spearman"] = correlations(q_min.numpy(), y.numpy())
    metrics: dict[str, object] = {
        "steps": cfg.value_steps,
        "samples": len(values),
        "train_samples": len(train_idx),
        "episodes": len(np.unique(values.episode)),
        "wall_time_s": time.perf_counter() - started,
        "train_critic_mse": train_loss,
        "held_out": held,
    }
    origin = {
        **policy.origin,
        "value_training": {
            "samples": len(values),
            "episodes": metrics["episodes"],
            "train_critic_mse": train_loss,
            "held_out": held,
        },
    }
    return dataclasses.replace(policy, model=model, origin=origin), metrics
