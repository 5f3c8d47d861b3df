"""Steering directions found from the model's own activations (export side).

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

DIRECTIONS = ("speed",)


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
