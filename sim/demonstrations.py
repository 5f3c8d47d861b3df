"""Seeded, reproducible demonstrations of the touch task by the scripted expert.

Each episode is run closed loop through `sim.episode` (the runtime's stitching and safety filter,
simulated time) with the expert re-planning at every action step. The executed chunk carries a
slowly wandering joint offset during the approach (DART: Laskey et al. 2017) while the *recorded*
label is the expert's clean chunk from the state the arm actually reached: the policy sees states
off the expert's path and learns how the expert returns from them. The offset is drawn from the
episode seed, so a dataset is a pure function of its seeds and settings.

Paced demonstrations (`DemoSettings.paces`) add an adverb to the instruction ("touch the red cube
slowly") and run the expert at that pace: the data a policy needs to read speed from its
instruction, and a steering direction to be found by contrasting those words (export/steering.py).
"""

from __future__ import annotations

import multiprocessing
from collections.abc import Callable, Iterable
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import asdict, dataclass, replace

import numpy as np

from edgevla.sim.demos import DemoSet
from edgevla.sim.episode import EpisodeSettings, PlanEvent, run_episode
from edgevla.sim.evaluation import EpisodeWorkerDied
from edgevla.sim.expert import ExpertAgent, ExpertConfig
from edgevla.sim.tasks import TOUCH_INSTRUCTION, touch_episode


@dataclass(frozen=True)
class DemoSettings:
    chunk_len: int = 8
    step_period_s: float = 0.05
    image_size: int = 32
    noise_rad: float = 0.03  # stationary std of the executed joint offset
    noise_correlation: float = 0.9  # per plan: the offset wanders, it does not jitter
    # After this the offset decays instead of wandering: the expert cannot see the offset, so a
    # persistent one would keep the fingertips off the cube for good.
    noise_until_s: float = 1.5
    clean_fraction: float = 0.25  # episodes executed without offset
    system2_latency_s: float = 0.05
    # Each episode draws one of these paces (from its seed) for its instruction and the expert's
    # speed; empty: the plain instruction at the expert's own speed.
    paces: tuple[str, ...] = ()


# The expert's cruise speed for each pace word, as a factor of its default 0.25 m/s.
PACE_SPEED_FACTOR = {"slowly": 0.5, "quickly": 1.6}


@dataclass
class _Episode:
    seed: int
    success: bool
    images: np.ndarray
    state: np.ndarray
    actions: np.ndarray
    instruction: str


def _one_episode(args: tuple[int, DemoSettings]) -> _Episode:
    seed, d = args
    episode = touch_episode(seed)
    expert = ExpertConfig()
    if d.paces:
        pace = d.paces[int(np.random.default_rng([seed, 0x9ACE]).integers(len(d.paces)))]
        episode = replace(episode, instruction=f"{episode.instruction} {pace}")
        expert = ExpertConfig(speed_m_s=expert.speed_m_s * PACE_SPEED_FACTOR[pace])
    rng = np.random.default_rng([seed, 0xDA27])
    clean = rng.random() < d.clean_fraction
    offset = np.zeros(7, dtype=np.float32)
    kick = d.noise_rad * np.sqrt(1.0 - d.noise_correlation**2)

    def perturb(event: PlanEvent) -> np.ndarray | None:
        if clean:
            return None
        offset[:6] *= d.noise_correlation
        if event.t_s < d.noise_until_s:
            offset[:6] += rng.normal(0.0, kick, 6)
        return event.chunk + offset

    settings = EpisodeSettings(
        image_size=d.image_size,
        system1_enabled=False,
        system2_rate_hz=1.0 / d.step_period_s,
        system2_latency_s=d.system2_latency_s,
    )
    result = run_episode(
        ExpertAgent(d.chunk_len, d.step_period_s, expert),
        episode,
        settings,
        d.step_period_s,
        keep_events=True,  # the events hold the clean chunks: the labels
        on_plan=perturb,
    )
    rows = result.events
    return _Episode(
        seed=seed,
        success=result.success,
        images=np.stack([r.obs.images for r in rows]),
        state=np.stack([r.obs.state for r in rows]).astype(np.float32),
        actions=np.stack([r.chunk for r in rows]).astype(np.float32),
        instruction=episode.instruction,
    )


def generate_demos(
    seeds: Iterable[int],
    settings: DemoSettings | None = None,
    workers: int = 1,
    on_episode: Callable[[int, int, bool], None] | None = None,
) -> DemoSet:
    """Demonstrations of the touch task for `seeds`; failed expert episodes are left out."""
    d = settings or DemoSettings()
    unknown = set(d.paces) - set(PACE_SPEED_FACTOR)
    if unknown:
        raise ValueError(f"unknown paces {sorted(unknown)}; known: {sorted(PACE_SPEED_FACTOR)}")
    seeds = list(seeds)
    jobs = [(seed, d) for seed in seeds]
    episodes: list[_Episode] = []
    if workers > 1:
        # spawn: each worker opens its own OSMesa contexts; a forked GL state is not safe.
        # An executor, not a Pool: a worker that dies breaks the run instead of hanging it.
        ctx = multiprocessing.get_context("spawn")
        try:
            with ProcessPoolExecutor(workers, mp_context=ctx) as pool:
                for done, ep in enumerate(pool.map(_one_episode, jobs), 1):
                    episodes.append(ep)
                    if on_episode:
                        on_episode(done, len(jobs), ep.success)
        except BrokenProcessPool as exc:
            raise EpisodeWorkerDied(
                f"a demonstration worker died after {len(episodes)} of {len(jobs)} episodes ({exc})"
            ) from exc
    else:
        for done, job in enumerate(jobs, 1):
            episodes.append(_one_episode(job))
            if on_episode:
                on_episode(done, len(jobs), episodes[-1].success)
    kept = [ep for ep in episodes if ep.success]
    if not kept:
        raise RuntimeError("the expert solved none of the episodes: no demonstrations")
    instructions = sorted({ep.instruction for ep in kept})
    index = {text: i for i, text in enumerate(instructions)}
    return DemoSet(
        images=np.concatenate([ep.images for ep in kept]),
        state=np.concatenate([ep.state for ep in kept]),
        actions=np.concatenate([ep.actions for ep in kept]),
        instruction_index=np.concatenate(
            [np.full(len(ep.state), index[ep.instruction], np.int16) for ep in kept]
        ),
        episode=np.concatenate([np.full(len(ep.state), ep.seed, np.int32) for ep in kept]),
        step=np.concatenate([np.arange(len(ep.state), dtype=np.int32) for ep in kept]),
        instructions=instructions,
        step_period_s=d.step_period_s,
        meta={
            "task": "touch",
            "instruction_template": TOUCH_INSTRUCTION,
            "seeds": [min(seeds), max(seeds)],
            "episodes_run": len(episodes),
            "episodes_kept": len(kept),
            "expert_success_rate": len(kept) / len(episodes),
            "settings": asdict(d),
            "expert": asdict(ExpertConfig()),
        },
    )
