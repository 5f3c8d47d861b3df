"""The exported policy as an episode `Agent`: System 2 plans and System 1 reactions from a bundle.

`choice="value"` is the runtime's rule (the value head picks the candidate). `choice="random"`
executes a uniformly drawn candidate instead: rollouts for training the value head must try
candidates the current head would not pick, or it could only ever confirm itself.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from edgevla.runtime.policy import DualSystemPolicy, Observation, Plan
from edgevla.sim.tasks import Episode

CHOICES = ("value", "random")


class PolicyAgent:
    def __init__(self, policy: DualSystemPolicy, choice: str = "value") -> None:
        if choice not in CHOICES:
            raise ValueError(f"choice must be one of {CHOICES}, got {choice!r}")
        self.policy = policy
        self.choice = choice
        self.rng = np.random.default_rng(0)

    def begin(self, episode: Episode, robot: object) -> None:
        # Sampling noise is a function of the episode: an evaluation is reproducible.
        self.rng = np.random.default_rng([episode.seed, 0x5A3D])
        self.policy.reset()  # no token or plan reuse across episodes

    def plan(self, obs: Observation, t_s: float) -> Plan:
        plan = self.policy.plan(obs, self.rng)
        if self.choice == "random":
            j = int(self.rng.integers(len(plan.result.candidates)))
            result = dataclasses.replace(plan.result, chosen=j)
            plan = Plan(self.policy.normalizer.unnormalize_actions(result.chunk), result)
        return plan

    def react(self, plan: Plan, step: int, obs: Observation, t_s: float) -> np.ndarray:
        return self.policy.react(plan, step, obs, self.rng)
