"""Action-expert caching: what a skipped Euler step estimates, in numpy and in torch alike."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from edgevla.runtime.expert_cache import ExpertSchedule, ResidualCache


def _filled(schedule: ExpertSchedule, computed: dict[int, float], wrap) -> dict[int, float]:
    """Run a 10-step loop; computed steps record `computed[k]`, the rest return estimates."""
    cache, seen = ResidualCache(schedule), {}
    for k in range(10):
        if cache.must_compute(k):
            cache.record(k, wrap(computed[k]))
        else:
            seen[k] = float(cache.estimate(k)[0])
    return seen


@pytest.mark.parametrize("wrap", [np.float32, torch.float32], ids=["numpy", "torch"])
def test_hold_and_linear_estimates(wrap) -> None:
    def make(value: float):
        if wrap is torch.float32:
            return torch.tensor([value], dtype=torch.float32)
        return np.array([value], dtype=np.float32)

    values = {0: 1.0, 4: 3.0, 7: 9.0, 9: 0.0}
    hold = _filled(ExpertSchedule(frozenset(values)), values, make)
    assert hold == {1: 1.0, 2: 1.0, 3: 1.0, 5: 3.0, 6: 3.0, 8: 9.0}
    linear = _filled(ExpertSchedule(frozenset(values), "linear"), values, make)
    # One computed step behind 1–3: held. Then the line through (0, 1) and (4, 3): slope 0.5;
    # through (4, 3) and (7, 9): slope 2.
    assert linear == {1: 1.0, 2: 1.0, 3: 1.0, 5: 3.5, 6: 4.0, 8: 11.0}


def test_every_kth_step_schedule_and_its_description() -> None:
    assert ExpertSchedule.every(3, 10).full_steps == {0, 3, 6, 9}
    assert ExpertSchedule.every(1, 4).describe(4) == "every Euler step"
    schedule = ExpertSchedule(frozenset({0, 6, 9}), "linear")
    assert schedule.describe(10) == "Euler steps 0, 6, 9 of 10 (linear in between)"


def test_a_step_is_computed_when_nothing_is_cached_yet() -> None:
    """A schedule that does not start at 0 cannot reach the runtime (validate_sampling), but the
    cache still never estimates from nothing."""
    cache = ResidualCache(ExpertSchedule(frozenset({3})))
    assert cache.must_compute(0)
