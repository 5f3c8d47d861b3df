"""Steering directions found from the model's own activations (export side).

`pace`: contrastive instructions (the steering paper's and CAA's method). The same observations
are run with the instruction ending in "quickly" and in "slowly"; the direction of layer l is the
mean difference of its input (averaged over the valid tokens), from layer 1 on. It only means
something for a policy that learned those words (paced demonstrations, `edgevla demos generate
--paces`); the observations are the same in both halves, so the direction carries the words'
effect alone.

`pace-expert`: the same contrast in the action expert's residual stream (after its last block,
one vector per chunk step): the words act on the actions through their own token, which a
plain instruction lacks, so the prefix's other tokens are a weak lever and the expert a direct
one (`pace_expert_direction`).

`speed`: the contrast of the prefix's residual stream between moments where the expert moved
fast and moments where it moved slowly. For each calibration row, the input of every prefix
layer is averaged over the valid tokens; the direction of layer l is the mean over the fastest
third of rows minus the mean over the slowest third (the mean-difference method of
contrastive activation addition). Adding alpha times it at run time (`--steer speed=ALPHA`)
asks for faster motion with alpha > 0 and slower with alpha < 0; how much it really changes the
commanded speed is measured, not assumed (benchmarks/bench_optimizations.py).
"""

from __future__ import annotations

import numpy as np
import torch

from edgevla.export.checkpoint import ReferencePolicy
from edgevla.export.pruning import calibration_inputs
from edgevla.runtime.errors import InvalidSetting
from edgevla.runtime.manifest import SteeringDirection

DIRECTIONS = ("speed", "pace")
PACE_WORDS = ("quickly", "slowly")  # (faster, slower)


def chunk_speed(state: np.ndarray, actions: np.ndarray, step_period_s: float) -> np.ndarray:
    """Mean joint speed (rad/s) the expert commanded over each row's chunk: the mean absolute
    change of the six joint targets per step, from the state into the chunk."""
    joints = np.concatenate([state[:, None, :6], actions[:, :, :6]], axis=1)
    return np.abs(np.diff(joints, axis=1)).mean(axis=(1, 2)) / step_period_s


@torch.no_grad()
def layer_means(policy: ReferencePolicy, inputs) -> np.ndarray:
    """[rows, layers, d_model]: each prefix layer's input averaged over the valid tokens."""
    model = policy.model
    out = []
    for obs in inputs:
        feeds = [torch.from_numpy(np.ascontiguousarray(a)) for a in obs.feeds().values()]
        states = model.prefix_states(*feeds)
        valid = states.mask[0]
        layer_inputs = [states.embeddings, *states.hidden[:-1]]
        out.append(np.stack([x[0][valid].float().mean(0).numpy() for x in layer_inputs]))
    return np.stack(out)


def speed_direction(
    policy: ReferencePolicy, demos, count: int = 96, seed: int = 0
) -> SteeringDirection:
    """The `speed` direction from `count` rows of a demonstration set."""
    if len(demos) < 6:
        raise InvalidSetting("steering", f"needs at least 6 demonstration rows, got {len(demos)}")
    size = min(count, len(demos))
    rows = np.sort(np.random.default_rng(seed).choice(len(demos), size=size, replace=False))
    speed = chunk_speed(demos.state[rows], demos.actions[rows], demos.step_period_s)
    slow_max, fast_min = np.quantile(speed, [1 / 3, 2 / 3])
    fast, slow = speed >= fast_min, speed <= slow_max
    if not fast.any() or not slow.any() or fast_min <= slow_max:
        raise InvalidSetting("steering", "the calibration rows do not differ in speed")
    # calibration_inputs draws the same rows for the same seed and count.
    inputs = calibration_inputs(policy, demos, count=size, seed=seed)
    means = layer_means(policy, inputs)
    vectors = means[fast].mean(0) - means[slow].mean(0)
    return SteeringDirection(
        name="speed",
        method=(
            "mean prefix-layer input (over valid tokens) of the fastest third of calibration "
            "rows minus that of the slowest third, by the expert's commanded joint speed"
        ),
        vectors=[[round(float(x), 7) for x in row] for row in vectors],
        calibration_rows=size,
        contrast={
            "fast_mean_rad_s": round(float(speed[fast].mean()), 6),
            "slow_mean_rad_s": round(float(speed[slow].mean()), 6),
        },
    )


def trained_on_paces(policy: ReferencePolicy) -> bool:
    """Whether the policy was behaviour-cloned on paced instructions (both pace words)."""
    seen = " ".join(policy.origin.get("behaviour_cloning", {}).get("instructions", []))
    return all(word in seen.split() for word in PACE_WORDS)


def _paced_inputs(policy: ReferencePolicy, demos, count: int, seed: int):
    """The same `count` calibration observations with the instruction ending in each pace word
    (a word already in a row's instruction is replaced, not doubled): (faster, slower)."""
    import dataclasses

    from edgevla.runtime.tokenizer import InstructionTokenizer

    vocab = policy.tokenizer.get_vocab()
    if any(word not in vocab for word in PACE_WORDS):
        raise InvalidSetting("steering", f"the tokenizer lacks one of {list(PACE_WORDS)}")
    size = min(count, len(demos))
    inputs = calibration_inputs(policy, demos, count=size, seed=seed)
    rows = np.sort(np.random.default_rng(seed).choice(len(demos), size=size, replace=False))
    tokenizer = InstructionTokenizer(policy.tokenizer, policy.config.max_instruction_tokens)

    def worded(word: str):
        out = []
        for obs, i in zip(inputs, rows, strict=True):
            base = " ".join(w for w in demos.instruction(int(i)).split() if w not in PACE_WORDS)
            ids, mask = tokenizer.encode(f"{base} {word}".strip())
            out.append(dataclasses.replace(obs, instruction_ids=ids, instruction_mask=mask))
        return out

    faster, slower = PACE_WORDS
    return worded(faster), worded(slower)


def pace_direction(
    policy: ReferencePolicy, demos, count: int = 96, seed: int = 0, first_layer: int = 1
) -> SteeringDirection:
    """The `pace` direction: "... quickly" minus "... slowly" on the same `count` rows, zero
    below `first_layer`. At the embeddings (layer 0's input) the words differ in one token;
    spread over every token as a bias it broke the trained tiny policy's plans (10 episodes,
    alpha +1: 30 % success against 70 %), while from layer 1 on, where attention has already
    carried the word into every token, it kept them (80 %)."""
    faster, slower = _paced_inputs(policy, demos, count, seed)
    vectors = layer_means(policy, faster).mean(0) - layer_means(policy, slower).mean(0)
    vectors[:first_layer] = 0.0
    return SteeringDirection(
        name="pace",
        method=(
            f"mean prefix-layer input (over valid tokens) with the instruction ending in "
            f"'{PACE_WORDS[0]}' minus that with '{PACE_WORDS[1]}', on the same calibration "
            f"observations; zero below layer {first_layer}"
        ),
        vectors=[[round(float(x), 7) for x in row] for row in vectors],
        calibration_rows=len(faster),
        contrast={"direction_norm_mean": round(float(np.linalg.norm(vectors, axis=1).mean()), 6)},
    )


@torch.no_grad()
def expert_residuals(policy: ReferencePolicy, inputs, steps: int, seed: int = 0) -> np.ndarray:
    """[H, E]: the action tokens' residual stream after the expert's last block (before its
    final norm), averaged over rows and Euler steps. One candidate per row, from t = 1, with
    the same noise for the same row and seed, so that two instruction sets compare alike."""
    model = policy.model
    cfg = policy.config
    rng = np.random.default_rng(seed)
    total = torch.zeros(cfg.chunk_len, cfg.expert_width)
    for obs in inputs:
        feeds = [torch.from_numpy(np.ascontiguousarray(a)) for a in obs.feeds().values()]
        k, v, mask, _, _, _ = model.encode_prefix(*feeds)
        noise = rng.standard_normal((1, cfg.chunk_len, cfg.action_dim)).astype(np.float32)
        x = torch.from_numpy(noise)
        for i in range(steps):
            t = torch.tensor([1.0 - i / steps])
            velocity, residual = model.expert_step(k, v, mask, x, t)
            total += (model._expert_input(x, t) + residual)[0].float()
            x = x - velocity / steps
    return (total / (len(inputs) * steps)).numpy()


def pace_expert_direction(
    policy: ReferencePolicy, demos, count: int = 96, seed: int = 0, steps: int = 10
) -> SteeringDirection:
    """The `pace-expert` direction: the pace words' contrast where the actions are made, in
    the action expert's residual stream after its last block, one vector per chunk step.

    The words reach the expert through their own token's keys and values, which a plain
    instruction does not have: a bias on the prefix's other tokens barely moved the commanded
    speed of the paced policy (open loop on 96 calibration rows other than the direction's,
    `pace` at alpha -1: 0.98x, against 0.80x for the word "slowly"), while this one gave 0.85x
    at -1 and 1.23x at +1.
    """
    faster, slower = _paced_inputs(policy, demos, count, seed)
    vectors = expert_residuals(policy, faster, steps, seed) - expert_residuals(
        policy, slower, steps, seed
    )
    return SteeringDirection(
        name="pace-expert",
        method=(
            f"the action expert's residual after its last block (per chunk step, mean over "
            f"rows and {steps} Euler steps from t = 1) with the instruction ending in "
            f"'{PACE_WORDS[0]}' minus that with '{PACE_WORDS[1]}', on the same calibration "
            f"observations and noise"
        ),
        vectors=[[round(float(x), 7) for x in row] for row in vectors],
        calibration_rows=len(faster),
        contrast={"direction_norm_mean": round(float(np.linalg.norm(vectors, axis=1).mean()), 6)},
        site="expert",
    )
