"""Policy-visited states labelled by the expert (DAgger, Ross et al. 2011).

Behaviour cloning only ever sees the expert's own states, plus the small excursions DART noise
adds during the approach. The cloned policy misjudges the cube's position by a few centimetres
from 32-pixel frames, comes down beside the cube, and there it is in states no demonstration
showed: it hovers until the episode times out (most of the touch policy's failures). DAgger runs
the policy closed loop and asks the expert, for every observation the policy planned from, what
it would have done from there; training on demonstrations plus these rows teaches recovery from
the policy's own mistakes.

The expert is privileged (it is told where the target cube is), which is what makes it a label
source; it plans from the measured state, so its chunk from any state is well defined. The rows
share the demonstrations' format (`DemoSet`), so the loaders, grounding labels and training take
them unchanged.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path

import numpy as np

from edgevla.sim.demos import DemoSet
from edgevla.sim.episode import EpisodeResult, EpisodeSettings
from edgevla.sim.evaluation import run_policy_episodes, settings_record, summarize
from edgevla.sim.expert import ExpertConfig, TouchExpert
from edgevla.sim.scene import cube_layout
from edgevla.sim.tasks import TOUCH_INSTRUCTION


def expert_labels(result: EpisodeResult, chunk_len: int, step_period_s: float) -> np.ndarray:
    """The expert's chunk [plans, H, 7] from the state of each of the episode's plans, in order
    (the expert keeps the heading of the first state it sees, as in the demonstrations)."""
    episode = result.episode
    cube = np.asarray(cube_layout(episode.seed)[episode.target])
    expert = TouchExpert(cube, chunk_len, step_period_s)
    return np.stack([expert.plan(event.obs.state) for event in result.events]).astype(np.float32)


def collect_dagger(
    bundle: str | Path,
    seeds: Sequence[int],
    settings: EpisodeSettings,
    *,
    workers: int = 1,
    on_episode: Callable[[EpisodeResult], None] | None = None,
) -> DemoSet:
    """Run the bundle on `seeds` and label every plan's observation with the expert's chunk."""
    from edgevla.runtime.bundle import load_bundle

    manifest = load_bundle(bundle).manifest
    step_s = manifest.action_space.step_period_s
    chunk_len = int(manifest.model["chunk_len"])
    results = run_policy_episodes(
        bundle, seeds, settings, workers=workers, keep_events=True, on_episode=on_episode
    )
    results = [r for r in results if r.events]
    if not results:
        raise RuntimeError("the rollouts made no plans")
    instructions = sorted({r.episode.instruction for r in results})
    index = {text: i for i, text in enumerate(instructions)}
    events = [(r, e) for r in results for e in r.events]
    return DemoSet(
        images=np.stack([e.obs.images for _, e in events]),
        state=np.stack([e.obs.state for _, e in events]).astype(np.float32),
        actions=np.concatenate([expert_labels(r, chunk_len, step_s) for r in results]),
        instruction_index=np.array([index[r.episode.instruction] for r, _ in events], np.int16),
        episode=np.array([r.episode.seed for r, _ in events], np.int32),
        step=np.array([round(e.t_s / step_s) for _, e in events], np.int32),
        instructions=instructions,
        step_period_s=step_s,
        meta={
            "task": "touch",
            "source": "dagger",
            "instruction_template": TOUCH_INSTRUCTION,
            "bundle": str(bundle),
            "candidates": manifest.sampling.candidates,
            "seeds": [min(seeds), max(seeds)],
            "episodes_run": len(seeds),
            "episodes_kept": len(results),
            "settings": settings_record(settings),
            "expert": asdict(ExpertConfig()),
            "rollouts": summarize(results),
        },
    )
