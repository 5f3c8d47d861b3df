"""Action-expert caching: which Euler steps run the expert's blocks, and what the others use.

EfficientVLA caches the expert's attention and MLP outputs and recomputes them every k-th
denoising step. Two measured refinements (docs/optimizations.md):

- an explicit schedule (`Sampling.expert_full_steps`): on the trained touch policy the blocks'
  output changes most over the last steps towards t = 0, so a schedule such as 0, 4, 7, 9
  spends its four full steps where they matter, at the cost of every-3rd caching;
- linear extrapolation (`Sampling.expert_cache_extrapolation = "linear"`): a skipped step uses
  the line through the last two computed outputs instead of holding the last one (the
  forecasting idea of FORA/TaylorSeer for diffusion transformers).

`ResidualCache` works on numpy arrays and torch tensors alike, so the runtime and the PyTorch
reference (export/reference_policy.py) share one definition of what a cached step computes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from edgevla.runtime.manifest import Sampling


@dataclass(frozen=True)
class ExpertSchedule:
    """The Euler steps (0-based) on which the expert's blocks run; the rest are cached."""

    full_steps: frozenset[int]
    extrapolation: str = "hold"

    @classmethod
    def every(cls, k: int, steps: int, extrapolation: str = "hold") -> ExpertSchedule:
        return cls(frozenset(range(0, steps, k)), extrapolation)

    @classmethod
    def from_sampling(cls, s: Sampling) -> ExpertSchedule:
        if s.expert_full_steps is not None:
            return cls(frozenset(s.expert_full_steps), s.expert_cache_extrapolation)
        return cls.every(s.expert_cache_every, s.denoise_steps, s.expert_cache_extrapolation)

    def describe(self, steps: int) -> str:
        if len(self.full_steps) >= steps:
            return "every Euler step"
        ran = ", ".join(str(k) for k in sorted(self.full_steps))
        return f"Euler steps {ran} of {steps} ({self.extrapolation} in between)"


class ResidualCache:
    """The blocks' outputs of the computed steps, and the estimate for a skipped step."""

    def __init__(self, schedule: ExpertSchedule) -> None:
        self.schedule = schedule
        self._last: tuple[int, Any] | None = None
        self._before: tuple[int, Any] | None = None

    def must_compute(self, step: int) -> bool:
        return step in self.schedule.full_steps or self._last is None

    def record(self, step: int, residual: Any) -> None:
        self._before, self._last = self._last, (step, residual)

    def estimate(self, step: int) -> Any:
        assert self._last is not None, "estimate before any computed step"
        k1, r1 = self._last
        if self.schedule.extrapolation == "hold" or self._before is None:
            return r1
        k0, r0 = self._before
        return r1 + (r1 - r0) * ((step - k1) / (k1 - k0))
