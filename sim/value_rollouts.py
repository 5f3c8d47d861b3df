"""Rollouts of a trained policy labelled by their outcome, for training the value head.

The policy runs closed loop (System 2 only, so the executed chunk is exactly the chosen
candidate) and executes a *uniformly drawn* candidate at every plan. Each plan becomes a sample
(observation, executed chunk) with the Monte-Carlo return of its episode:

    return = γ^((t_success − t_plan) / chunk_duration)   on success,   0 otherwise.

So the critics learn Q(s, a) of the random-choice behaviour policy; picking the candidate with
the highest Q is then one step of policy improvement over choosing at random (Hume's value-query
head plays the same role, trained there with offline RL). Discounting by time makes a chunk that
leads to a faster touch worth more than one that dawdles; touching the wrong cube, timing out or
tripping the safety filter are all worth 0.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from edgevla.sim.demos import ValueSet
from edgevla.sim.episode import EpisodeResult, EpisodeSettings
from edgevla.sim.evaluation import run_policy_episodes, settings_record, summarize

DEFAULT_GAMMA = 0.9


def label_returns(result: EpisodeResult, chunk_duration_s: float, gamma: float) -> np.ndarray:
    times = np.array([e.t_s for e in result.events], dtype=np.float64)
    if not result.success:
        return np.zeros(len(times), dtype=np.float32)
    remaining = np.maximum(result.duration_s - times, 0.0)
    return (gamma ** (remaining / chunk_duration_s)).astype(np.float32)


def collect_value_rollouts(
    bundle: str | Path,
    seeds: Sequence[int],
    settings: EpisodeSettings,
    *,
    gamma: float = DEFAULT_GAMMA,
    workers: int = 1,
    on_episode: Callable[[EpisodeResult], None] | None = None,
) -> ValueSet:
    from edgevla.runtime.bundle import load_bundle

    manifest = load_bundle(bundle).manifest
    chunk_duration = manifest.action_space.step_period_s * int(manifest.model["chunk_len"])
    results = run_policy_episodes(
        bundle,
        seeds,
        settings,
        choice="random",
        workers=workers,
        on_episode=on_episode,
    )
    rows = [(r, e) for r in results for e in r.events]
    if not rows:
        raise RuntimeError("the rollouts made no plans")
    instructions = sorted({r.episode.instruction for r in results})
    index = {text: i for i, text in enumerate(instructions)}
    returns = np.concatenate([label_returns(r, chunk_duration, gamma) for r in results])
    return ValueSet(
        images=np.stack([e.obs.images for _, e in rows]),
        state=np.stack([e.obs.state for _, e in rows]).astype(np.float32),
        actions=np.stack([e.chunk for _, e in rows]).astype(np.float32),
        returns=returns,
        instruction_index=np.array([index[r.episode.instruction] for r, _ in rows], np.int16),
        episode=np.array([r.episode.seed for r, _ in rows], np.int32),
        instructions=instructions,
        meta={
            "bundle": str(bundle),
            "choice": "random candidate per plan",
            "gamma": gamma,
            "chunk_duration_s": chunk_duration,
            "seeds": [min(seeds), max(seeds)],
            "settings": settings_record(settings),
            "rollouts": summarize(results),
        },
    )
