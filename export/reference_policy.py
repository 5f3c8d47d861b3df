"""PyTorch mirrors of the runtime's plan and react functions.

The same arithmetic as `edgevla.runtime.system2.plan` and `system1.react`, on the eager model:
the reference for the parity gate and the PyTorch baseline of the benchmarks.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from edgevla.export.reference import DualSystemVLA
from edgevla.runtime.expert_cache import ExpertSchedule, ResidualCache
from edgevla.runtime.system2 import PrefixInputs


@dataclass(frozen=True)
class TorchPlan:
    candidates: np.ndarray
    q: np.ndarray
    q_critics: np.ndarray
    chosen: int


def to_torch(inputs: PrefixInputs) -> tuple[torch.Tensor, ...]:
    return tuple(torch.from_numpy(np.ascontiguousarray(a)) for a in inputs.feeds().values())


@torch.no_grad()
def torch_plan(
    model: DualSystemVLA,
    inputs: PrefixInputs,
    noise: np.ndarray,
    start_times: np.ndarray,
    steps: int,
    schedule: ExpertSchedule | None = None,
    expert_bias: np.ndarray | None = None,
) -> TorchPlan:
    """System 2 in PyTorch as `runtime.system2.plan` runs it; `expert_bias` [H, E] is added to
    the expert blocks' output (steering at the expert's site)."""
    k, v, mask, summary, _, _ = model.encode_prefix(*to_torch(inputs))
    starts = torch.from_numpy(start_times)
    x = torch.from_numpy(noise).clone()
    dt = starts / steps
    bias = None if expert_bias is None else torch.from_numpy(expert_bias)
    cache = ResidualCache(schedule or ExpertSchedule.every(1, steps))
    for i in range(steps):
        t = starts * (1.0 - i / steps)
        velocity = None
        if cache.must_compute(i):
            velocity, residual = model.expert_step(k, v, mask, x, t)
            cache.record(i, residual)
        else:
            residual = cache.estimate(i)
        if bias is not None:
            velocity, residual = None, residual + bias
        if velocity is None:
            velocity = model.expert_velocity_cached(x, t, residual)
        x -= dt[:, None, None] * velocity
    q, q_critics = model.value(summary, x)
    return TorchPlan(x.numpy(), q.numpy(), q_critics.numpy(), int(q.argmax()))


@torch.no_grad()
def torch_react(
    model: DualSystemVLA,
    images: np.ndarray,
    state: np.ndarray,
    slice_: np.ndarray,
    noise: np.ndarray,
    theta1: float,
    steps: int,
) -> np.ndarray:
    imgs, st = torch.from_numpy(images), torch.from_numpy(state)
    x = torch.from_numpy(theta1 * noise + (1.0 - theta1) * slice_).float()[None]
    dt = theta1 / steps
    for i in range(steps):
        t = torch.tensor([theta1 * (1.0 - i / steps)], dtype=torch.float32)
        x -= dt * model.system1_velocity(imgs, st, x, t)
    return x[0].numpy()
