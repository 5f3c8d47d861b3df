"""Ablation of the plan-time optimizations: latency, fidelity and closed-loop success, one run.

  python benchmarks/bench_optimizations.py [--checkpoint checkpoints/touch-tiny]
      [--episodes 100] [--latency-config small] [--repeats 20]

Every technique is measured three ways against the unoptimized bundle, in the same run:
  latency    System 2 plan (prefix + K Euler steps + value, N candidates) on the `small` config
             (pi0's proportions, untrained weights: latency does not depend on training) and on
             the trained tiny checkpoint; blocks of repeats, the order reversed on the second
             pass (ABBA), ratio of medians against the baseline's
  fidelity   the same observations and noise planned with and without the technique: cosine of
             all candidates (normalized units) and the largest difference of the chosen chunk in
             robot units (rad), on the first frames of held-out episodes
  success    the trained checkpoint at its bundle defaults (N = 5, System 1 on) on held-out
             episodes, same seeds and sampling noise as the baseline: difference with Newcombe's
             interval and the paired counts
Techniques so far: action-expert caching at k = 2, 3, 5 (EfficientVLA). Prints a table, writes
JSON to benchmarks/results/.
"""

from __future__ import annotations

import argparse
import datetime as dt
import statistics
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
from common import RESULTS, export_in_child, machine, save
from rich.console import Console
from rich.table import Table

from edgevla.export.bundle_writer import library_versions
from edgevla.runtime.backend import CPU, BackendConfig
from edgevla.runtime.policy import DualSystemPolicy, Observation
from edgevla.sim.camera import start_frames
from edgevla.sim.episode import EpisodeSettings
from edgevla.sim.evaluation import difference_interval, run_policy_episodes, summarize
from edgevla.sim.tasks import held_out_seeds, touch_episode

ROOT = Path(__file__).resolve().parent.parent
# name: sampling overrides (the technique) — the baseline first.
TECHNIQUES: dict[str, dict[str, int]] = {
    "baseline": {},
    "expert cache k=2": {"expert_cache_every": 2},
    "expert cache k=3": {"expert_cache_every": 3},
    "expert cache k=5": {"expert_cache_every": 5},
}


def plan_latency(
    policy: DualSystemPolicy, obs: Observation, repeats: int, warmup: int
) -> dict[str, list[float]]:
    """Seconds per plan for every technique, in ABBA blocks on one backend."""
    variants = {name: policy.with_sampling(**change) for name, change in TECHNIQUES.items()}
    samples: dict[str, list[float]] = {name: [] for name in variants}
    order = list(variants)
    for pass_ in range(2):
        for name in order if pass_ == 0 else reversed(order):
            variant = variants[name]
            for i in range(warmup):
                variant.plan(obs, np.random.default_rng(i))
            for i in range(repeats // 2):
                rng = np.random.default_rng(i)
                start = time.perf_counter()
                variant.plan(obs, rng)
                samples[name].append(time.perf_counter() - start)
    return samples


def fidelity(policy: DualSystemPolicy, observations: list[Observation]) -> dict[str, dict]:
    """Each technique's plans against the baseline's on the same observations and noise."""
    out = {}
    for name, change in TECHNIQUES.items():
        variant = policy.with_sampling(**change)
        cosines, max_rad = [], 0.0
        for i, obs in enumerate(observations):
            base = policy.plan(obs, np.random.default_rng(i))
            got = variant.plan(obs, np.random.default_rng(i))
            a = base.result.candidates.ravel().astype(np.float64)
            b = got.result.candidates.ravel().astype(np.float64)
            cosines.append(float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b))))
            max_rad = max(max_rad, float(np.abs(got.chunk[:, :6] - base.chunk[:, :6]).max()))
        out[name] = {"action_cosine_min": min(cosines), "chunk_max_abs_rad": max_rad}
    return out


def first_observations(count: int, image_size: int) -> list[Observation]:
    observations = []
    for seed in held_out_seeds(0, count):
        episode = touch_episode(seed)
        state = np.array([*episode.initial_q, episode.initial_gripper], np.float32)
        observations.append(
            Observation(start_frames(episode, image_size), state, episode.instruction)
        )
    return observations


def median_ms(samples: list[float]) -> float:
    return statistics.median(samples) * 1e3


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", default=str(ROOT / "checkpoints" / "touch-tiny"))
    parser.add_argument("--latency-config", default="small")
    parser.add_argument("--episodes", type=int, default=100)
    parser.add_argument("--fidelity-observations", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=20, help="plans per technique, two passes")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    console = Console(highlight=False)
    seeds = held_out_seeds(0, args.episodes)
    backend = BackendConfig(providers=(CPU,), warmup_runs=2)
    record_latency: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        trained = Path(tmp) / "trained"
        small = Path(tmp) / "small"
        console.print(f"exporting {args.checkpoint} (N=5) and '{args.latency_config}' (N=5)")
        export_in_child(Path(args.checkpoint), trained)
        export_in_child(args.latency_config, small)
        policies = {
            args.latency_config: DualSystemPolicy.from_dir(small, backend),
            "trained tiny": DualSystemPolicy.from_dir(trained, backend),
        }
        for label, policy in policies.items():
            cfg = policy.bundle.model
            obs = first_observations(1, cfg.image_size)[0]
            console.print(f"plan latency, {label}")
            samples = plan_latency(policy, obs, args.repeats, args.warmup)
            base = median_ms(samples["baseline"])
            record_latency[label] = {
                name: {"median_ms": median_ms(s), "speedup": base / median_ms(s)}
                for name, s in samples.items()
            }
        trained_policy = policies["trained tiny"]
        observations = first_observations(
            args.fidelity_observations, trained_policy.bundle.model.image_size
        )
        console.print(f"fidelity on {len(observations)} held-out first frames")
        record_fidelity = fidelity(trained_policy, observations)
        runs: dict[str, dict] = {}
        for name, change in TECHNIQUES.items():
            start = time.perf_counter()
            results = run_policy_episodes(
                trained,
                seeds,
                replace(EpisodeSettings(), system1_enabled=True),
                workers=args.workers,
                sampling=change,
            )
            summary = summarize(results)
            runs[name] = {
                "summary": summary,
                "success": [r.success for r in results],
                "wall_s": time.perf_counter() - start,
            }
            console.print(
                f"{name}: {summary['success_rate']:.1%} ({summary['successes']}/{len(seeds)})"
            )
    base = runs["baseline"]
    success_delta = {}
    for name, run in runs.items():
        d, lo, hi = difference_interval(
            run["summary"]["successes"],
            len(seeds),
            base["summary"]["successes"],
            len(seeds),
        )
        pairs = list(zip(run["success"], base["success"], strict=True))
        success_delta[name] = {
            "difference": d,
            "ci95": [lo, hi],
            "only_with": sum(a and not b for a, b in pairs),
            "only_baseline": sum(b and not a for a, b in pairs),
        }

    table = Table(title=f"plan-time optimizations, {len(seeds)} held-out episodes each")
    for column in (
        "technique",
        f"plan {args.latency_config}",
        "plan tiny",
        "action cosine (min)",
        "chunk Δ max (rad)",
        "success",
        "Δ success (95 % CI)",
    ):
        table.add_column(column)
    for name in TECHNIQUES:
        lat_small = record_latency[args.latency_config][name]
        lat_tiny = record_latency["trained tiny"][name]
        fid = record_fidelity[name]
        delta = success_delta[name]
        table.add_row(
            name,
            f"{lat_small['median_ms']:.1f} ms ({lat_small['speedup']:.2f}×)",
            f"{lat_tiny['median_ms']:.2f} ms ({lat_tiny['speedup']:.2f}×)",
            f"{fid['action_cosine_min']:.5f}",
            f"{fid['chunk_max_abs_rad']:.4f}",
            f"{runs[name]['summary']['success_rate']:.0%}",
            f"{delta['difference']:+.0%} ({delta['ci95'][0]:+.0%} to {delta['ci95'][1]:+.0%}); "
            f"{delta['only_with']}/{delta['only_baseline']}",
        )
    console.print(table)
    record = {
        "benchmark": "optimizations",
        "created_utc": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "machine": machine(),
        "libraries": library_versions(),
        "checkpoint": args.checkpoint,
        "techniques": TECHNIQUES,
        "seeds": [seeds[0], seeds[-1]],
        "latency": record_latency,
        "fidelity": record_fidelity,
        "success": {name: run["summary"] for name, run in runs.items()},
        "success_delta": success_delta,
    }
    path = save(record, RESULTS, f"optimizations-{len(seeds)}ep")
    console.print(f"saved {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
