"""Closed-loop evaluation of a bundle on held-out touch-task episodes.

Each episode runs the bundle's graphs through `sim.episode` (simulated time, the runtime's
stitching and safety filter). The report gives the success rate with a Wilson 95 % interval (it
stays inside [0, 1] and is honest at 0 % and 100 %, where the normal approximation collapses to a
point), the time to success, and how every other episode ended.
"""

from __future__ import annotations

import math
import multiprocessing
import statistics
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

import msgspec
import numpy as np

from edgevla.runtime.config import RuntimeConfig
from edgevla.runtime.errors import EdgeVlaError
from edgevla.runtime.kinematics import ROBOT_MODELS
from edgevla.sim.episode import EpisodeResult, EpisodeSettings, run_episode
from edgevla.sim.tasks import touch_episode


def wilson_interval(successes: int, trials: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson score interval of a binomial proportion (95 % for z = 1.96)."""
    if trials == 0:
        return (0.0, 1.0)
    p = successes / trials
    denom = 1.0 + z * z / trials
    centre = (p + z * z / (2 * trials)) / denom
    half = z * math.sqrt(p * (1 - p) / trials + z * z / (4 * trials * trials)) / denom
    return (max(0.0, centre - half), min(1.0, centre + half))


def difference_interval(
    successes_a: int, trials_a: int, successes_b: int, trials_b: int, z: float = 1.96
) -> tuple[float, float, float]:
    """rate_a − rate_b with Newcombe's hybrid score interval (method 10), built from the two
    Wilson intervals. It treats the samples as independent; on shared seeds it is conservative.
    """
    pa, pb = successes_a / trials_a, successes_b / trials_b
    la, ua = wilson_interval(successes_a, trials_a, z)
    lb, ub = wilson_interval(successes_b, trials_b, z)
    d = pa - pb
    return (
        d,
        d - math.sqrt((pa - la) ** 2 + (ub - pb) ** 2),
        d + math.sqrt((ua - pa) ** 2 + (pb - lb) ** 2),
    )


def settings_from_runtime(config: RuntimeConfig, image_size: int) -> EpisodeSettings:
    """The episode settings a runtime config implies (rates, System 1, limits, cameras, robot)."""
    pc = config.policy
    return EpisodeSettings(
        image_size=image_size,
        cameras=tuple(config.cameras.names),
        camera_fps=config.cameras.fps,
        system2_rate_hz=pc.system2_rate_hz,
        system1_rate_hz=pc.system1_rate_hz,
        system1_enabled=pc.system1_enabled,
        crossfade_s=pc.crossfade_s,
        limits=config.limits,
        robot=ROBOT_MODELS[config.robot.model],
    )


@dataclass(frozen=True)
class _RunSpec:
    """What every episode of one evaluation shares (picklable, sent once to each worker)."""

    bundle: str
    settings: EpisodeSettings
    choice: str
    record_every: int
    sampling: tuple[tuple[str, Any], ...] = ()
    keep_events: bool = False
    reuse: tuple[tuple[str, float], ...] = ()
    steer: tuple[tuple[str, float], ...] = ()
    instruction_suffix: str = ""  # appended to every episode's instruction ("slowly")


class _Runner:
    """One loaded policy (sampling overrides applied once) running episodes by seed."""

    def __init__(self, spec: _RunSpec) -> None:
        from edgevla.runtime.backend import BackendConfig
        from edgevla.runtime.policy import DualSystemPolicy

        # One inference thread: the worker processes are the parallelism.
        policy = DualSystemPolicy.from_dir(spec.bundle, BackendConfig(intra_op_threads=1))
        policy = policy.with_sampling(**dict(spec.sampling)) if spec.sampling else policy
        policy = policy.with_reuse(**dict(spec.reuse)) if spec.reuse else policy
        self.policy = policy.with_steering(dict(spec.steer)) if spec.steer else policy
        self.spec = spec

    def __call__(self, seed: int) -> EpisodeResult:
        from edgevla.sim.policy_agent import PolicyAgent

        spec = self.spec
        episode = touch_episode(seed)
        if spec.instruction_suffix:
            episode = replace(
                episode, instruction=f"{episode.instruction} {spec.instruction_suffix}"
            )
        return run_episode(
            PolicyAgent(self.policy, spec.choice),
            episode,
            spec.settings,
            self.policy.bundle.manifest.action_space.step_period_s,
            keep_events=spec.keep_events or spec.choice == "random",
            record_every=spec.record_every,
        )


_worker_runner: _Runner | None = None  # set in pool worker processes only


def _init_worker(spec: _RunSpec) -> None:
    global _worker_runner
    _worker_runner = _Runner(spec)


def _run_in_worker(seed: int) -> EpisodeResult:
    assert _worker_runner is not None, "pool worker without initializer"
    return _worker_runner(seed)


def run_policy_episodes(
    bundle: str | Path,
    seeds: Sequence[int],
    settings: EpisodeSettings,
    *,
    choice: str = "value",
    workers: int = 1,
    record_every: int = 0,
    sampling: dict[str, Any] | None = None,
    on_episode: Callable[[EpisodeResult], None] | None = None,
    keep_events: bool = False,
    reuse: dict[str, float] | None = None,
    steer: dict[str, float] | None = None,
    instruction_suffix: str = "",
) -> list[EpisodeResult]:
    """Run the bundle on `seeds` (in order), in `workers` processes; `sampling` and `reuse`
    override the bundle's defaults (checked like the bundle's own), `steer` steers the prefix
    (direction name → alpha), `instruction_suffix` is appended to every instruction;
    `keep_events` keeps every plan's observation and chunk (always kept with choice "random",
    whose rollouts train the critics).

    A worker that dies (a crash, the OOM killer) raises `EpisodeWorkerDied` instead of leaving
    the run waiting for a result that never comes, and the bundle is checked here first, so a
    bad bundle is refused by name rather than by every worker.
    """
    from concurrent.futures import ProcessPoolExecutor
    from concurrent.futures.process import BrokenProcessPool

    from edgevla.runtime.bundle import load_bundle

    load_bundle(bundle)
    spec = _RunSpec(
        str(bundle),
        settings,
        choice,
        record_every,
        tuple(sorted((sampling or {}).items())),
        keep_events,
        tuple(sorted((reuse or {}).items())),
        tuple(sorted((steer or {}).items())),
        instruction_suffix,
    )
    results: list[EpisodeResult] = []
    if workers > 1:
        # spawn: each worker opens its own OSMesa contexts; a forked GL state is not safe.
        ctx = multiprocessing.get_context("spawn")
        try:
            with ProcessPoolExecutor(
                workers, mp_context=ctx, initializer=_init_worker, initargs=(spec,)
            ) as pool:
                for result in pool.map(_run_in_worker, seeds):
                    results.append(result)
                    if on_episode:
                        on_episode(result)
        except BrokenProcessPool as exc:
            raise EpisodeWorkerDied(
                f"an episode worker process died after {len(results)} of {len(seeds)} episodes "
                f"({exc}); its own error, if any, is above"
            ) from exc
    else:
        runner = _Runner(spec)
        for seed in seeds:
            results.append(runner(seed))
            if on_episode:
                on_episode(results[-1])
    return results


class EpisodeWorkerDied(EdgeVlaError):
    """A worker process running episodes exited before returning its episode."""


def summarize(results: Sequence[EpisodeResult]) -> dict[str, Any]:
    n = len(results)
    wins = [r for r in results if r.success]
    lo, hi = wilson_interval(len(wins), n)
    times = sorted(r.duration_s for r in wins)
    trips = Counter(r.trip for r in results if r.trip)
    return {
        "episodes": n,
        "successes": len(wins),
        "success_rate": len(wins) / n if n else 0.0,
        "ci95": [lo, hi],
        "time_to_success_s": {
            "median": statistics.median(times) if times else None,
            "p90": times[min(len(times) - 1, int(0.9 * len(times)))] if times else None,
        },
        "outcomes": dict(Counter(r.outcome.value for r in results)),
        "trips": dict(trips),
        "plans_per_episode": statistics.mean(r.plans for r in results) if n else 0.0,
        "reactions_per_episode": statistics.mean(r.reactions for r in results) if n else 0.0,
        "wall_s_per_episode": statistics.mean(r.wall_s for r in results) if n else 0.0,
    }


def settings_record(settings: EpisodeSettings) -> dict[str, Any]:
    record = {f.name: getattr(settings, f.name) for f in fields(settings)}
    record["limits"] = msgspec.to_builtins(settings.limits)
    record["robot"] = settings.robot.name
    record["cameras"] = list(settings.cameras)
    return record


def contact_sheet(results: Sequence[EpisodeResult], path: Path, columns: int = 8) -> None:
    """One row per episode: scene frames across the episode, titled with instruction and outcome."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in results if r.frames]
    if not rows:
        raise ValueError("no recorded frames: run the episodes with record_every > 0")
    fig, axes = plt.subplots(
        len(rows),
        columns,
        figsize=(1.3 * columns, 1.5 * len(rows)),
        squeeze=False,
        gridspec_kw={"wspace": 0.03, "hspace": 0.25},
    )
    for row, result in zip(axes, rows, strict=True):
        picks = np.linspace(0, len(result.frames) - 1, columns).round().astype(int)
        for k, (ax, i) in enumerate(zip(row, picks, strict=True)):
            ax.imshow(result.frames[i])
            ax.set_xticks([])
            ax.set_yticks([])
            if k == 0:
                ax.set_title(
                    f"seed {result.episode.seed}: {result.episode.instruction} → "
                    f"{result.outcome.value} ({result.duration_s:.1f} s)",
                    fontsize=8,
                    loc="left",
                )
    fig.subplots_adjust(left=0.01, right=0.99, top=0.95, bottom=0.01)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
