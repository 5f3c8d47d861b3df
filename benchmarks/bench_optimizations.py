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
Techniques so far: action-expert caching at k = 2, 3, 5 and layer pruning (EfficientVLA), alone
and combined. Pruning is a different export (calibrated on demonstrations when --calibration is
given); caching is a sampling setting of any bundle. Prints a table, writes JSON to
benchmarks/results/.
"""

from __future__ import annotations

import argparse
import datetime as dt
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import msgspec
import numpy as np
from common import RESULTS, export_in_child, machine, save
from rich.console import Console
from rich.table import Table

from edgevla.export.bundle_writer import library_versions
from edgevla.runtime.backend import CPU, BackendConfig
from edgevla.runtime.bundle import load_bundle
from edgevla.runtime.policy import DualSystemPolicy, Observation
from edgevla.sim.camera import start_frames
from edgevla.sim.episode import EpisodeSettings
from edgevla.sim.evaluation import difference_interval, run_policy_episodes, summarize
from edgevla.sim.tasks import held_out_seeds, touch_episode

ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Technique:
    export: tuple[str, ...] = ()  # `edgevla export` flags: another bundle
    sampling: tuple[tuple[str, int], ...] = ()  # sampling overrides of that bundle


# The baseline first.
TECHNIQUES: dict[str, Technique] = {
    "baseline": Technique(),
    "expert cache k=2": Technique(sampling=(("expert_cache_every", 2),)),
    "expert cache k=3": Technique(sampling=(("expert_cache_every", 3),)),
    "expert cache k=5": Technique(sampling=(("expert_cache_every", 5),)),
    "prune auto": Technique(export=("--prune-layers", "auto")),
    "prune 1 layer (forced)": Technique(
        export=("--prune-layers", "1", "--prune-min-cosine", "0.01")
    ),
    "prune auto + cache k=3": Technique(
        export=("--prune-layers", "auto"), sampling=(("expert_cache_every", 3),)
    ),
}


def plan_latency(
    policies: dict[str, DualSystemPolicy], obs: Observation, repeats: int, warmup: int
) -> dict[str, list[float]]:
    """Seconds per plan for every technique, in ABBA blocks."""
    variants = {
        name: policies[name].with_sampling(**dict(t.sampling)) for name, t in TECHNIQUES.items()
    }
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


def fidelity(
    policies: dict[str, DualSystemPolicy], observations: list[Observation]
) -> dict[str, dict]:
    """Each technique's plans against the baseline's on the same observations and noise."""
    out = {}
    policy = policies["baseline"]
    for name, technique in TECHNIQUES.items():
        variant = policies[name].with_sampling(**dict(technique.sampling))
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
    parser.add_argument(
        "--calibration", metavar="DEMOS", help="demonstrations that calibrate the trained prune"
    )
    args = parser.parse_args()
    console = Console(highlight=False, width=150)
    seeds = held_out_seeds(0, args.episodes)
    backend = BackendConfig(providers=(CPU,), warmup_runs=2)
    record_latency: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        exports = sorted({t.export for t in TECHNIQUES.values()})
        bundles: dict[str, dict[tuple[str, ...], Path]] = {"small": {}, "trained": {}}
        records: dict[str, dict] = {}
        for i, flags in enumerate(exports):
            for model, source in (("small", args.latency_config), ("trained", args.checkpoint)):
                out = Path(tmp) / f"{model}-{i}"
                extra = list(flags)
                if flags and model == "trained" and args.calibration:
                    extra += ["--calibration", args.calibration]
                console.print(f"exporting {source} {' '.join(extra)}")
                export_in_child(Path(source) if model == "trained" else source, out, *extra)
                bundles[model][flags] = out
                pruning = load_bundle(out).manifest.optimizations.layer_pruning
                records[f"{model} {' '.join(flags) or 'baseline'}"] = (
                    None if pruning is None else msgspec.to_builtins(pruning)
                )
        policies_by_model = {
            label: {
                name: DualSystemPolicy.from_dir(bundles[model][t.export], backend)
                for name, t in TECHNIQUES.items()
            }
            for label, model in ((args.latency_config, "small"), ("trained tiny", "trained"))
        }
        for label, policies in policies_by_model.items():
            cfg = policies["baseline"].bundle.model
            obs = first_observations(1, cfg.image_size)[0]
            console.print(f"plan latency, {label}")
            samples = plan_latency(policies, obs, args.repeats, args.warmup)
            base = median_ms(samples["baseline"])
            record_latency[label] = {
                name: {"median_ms": median_ms(s), "speedup": base / median_ms(s)}
                for name, s in samples.items()
            }
        trained_policies = policies_by_model["trained tiny"]
        observations = first_observations(
            args.fidelity_observations, trained_policies["baseline"].bundle.model.image_size
        )
        console.print(f"fidelity on {len(observations)} held-out first frames")
        record_fidelity = fidelity(trained_policies, observations)
        runs: dict[str, dict] = {}
        for name, technique in TECHNIQUES.items():
            start = time.perf_counter()
            results = run_policy_episodes(
                bundles["trained"][technique.export],
                seeds,
                replace(EpisodeSettings(), system1_enabled=True),
                workers=args.workers,
                sampling=dict(technique.sampling),
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
        "techniques": {name: asdict(t) for name, t in TECHNIQUES.items()},
        "pruning": records,
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
