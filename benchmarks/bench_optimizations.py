"""Ablation of the plan-time optimizations: latency, fidelity and closed-loop success, one run.

  python benchmarks/bench_optimizations.py [--checkpoint checkpoints/touch-tiny]
      [--calibration DEMOS] [--episodes 50] [--latency-config small] [--passes 2]

Every technique is measured three ways against the unoptimized bundle, in the same run:
  latency    mean System 2 plan time (prefix + K Euler steps + value, N candidates) over a
             sequence of real observations (the scripted expert's own episodes, rendered at the
             model's frame size, with their frame times), so that stateful techniques (token
             reuse, action reuse) pay for their full refreshes and count their skipped plans:
             on the `small` config (pi0's proportions, untrained weights: latency does not
             depend on training) and on the trained tiny checkpoint; every technique restarts
             the sequence from a reset, passes alternate the order (ABBA); ratio of means
  fidelity   the same observation sequence and noise planned with and without the technique:
             cosine of all candidates (normalized units) and the largest difference of the
             chosen chunk in robot units (rad), trained tiny
  success    the trained checkpoint at its bundle defaults (N = 5, System 1 on) on held-out
             episodes, same seeds and sampling noise as the baseline: difference with Newcombe's
             interval and the paired counts; the mean host time per plan inside those episodes
  steering   with --calibration, the baseline bundle carries the `speed` direction; held-out
             episodes at several alphas: the mean joint speed the chosen chunks command, and
             success
Prints tables, writes JSON to benchmarks/results/.
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
from common import RESULTS, commanded_speed, export_in_child, machine, save
from rich.console import Console
from rich.table import Table

from edgevla.export.bundle_writer import library_versions
from edgevla.runtime.backend import CPU, BackendConfig
from edgevla.runtime.bundle import load_bundle
from edgevla.runtime.policy import DualSystemPolicy, Observation
from edgevla.sim.episode import EpisodeSettings, run_episode
from edgevla.sim.evaluation import difference_interval, run_policy_episodes, summarize
from edgevla.sim.expert import ExpertAgent
from edgevla.sim.tasks import held_out_seeds, touch_episode

ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Technique:
    # `edgevla export` flags (another bundle); "{half}" and "{quarter}" stand for that share of
    # the model's visual tokens ("{three_quarters}" too).
    export: tuple[str, ...] = ()
    sampling: tuple[tuple[str, object], ...] = ()  # sampling overrides of that bundle
    reuse: tuple[tuple[str, float], ...] = ()  # reuse overrides of that bundle


LOOSE_ACTION_REUSE = (
    ("action_reuse_max", 1),
    ("action_max_change_rad", 0.1),
    ("action_min_overlap", 0.5),
)
SCHEDULE_4 = (("expert_full_steps", (0, 4, 7, 9)), ("expert_cache_extrapolation", "linear"))
SCHEDULE_3 = (("expert_full_steps", (0, 6, 9)), ("expert_cache_extrapolation", "linear"))
# The baseline first.
TECHNIQUES: dict[str, Technique] = {
    "baseline": Technique(),
    "expert cache k=2": Technique(sampling=(("expert_cache_every", 2),)),
    "expert cache k=3": Technique(sampling=(("expert_cache_every", 3),)),
    "expert cache k=5": Technique(sampling=(("expert_cache_every", 5),)),
    # Schedules chosen by open-loop fidelity on training-seed expert episodes (docs/benchmarks.md):
    # the blocks' output changes most near t = 0, so the full steps sit late, and a skipped step
    # extrapolates the last two.
    "expert cache 0,4,7,9 linear": Technique(sampling=SCHEDULE_4),
    "expert cache 0,6,9 linear": Technique(sampling=SCHEDULE_3),
    "keep 3/4 + cache 0,4,7,9 linear": Technique(
        export=("--keep-tokens", "{three_quarters}"), sampling=SCHEDULE_4
    ),
    "token reuse 1/4 + cache 0,4,7,9 linear": Technique(
        export=("--reuse-tokens", "{quarter}"), sampling=SCHEDULE_4
    ),
    "prune auto": Technique(export=("--prune-layers", "auto")),
    "prune 1 layer (forced)": Technique(
        export=("--prune-layers", "1", "--prune-min-cosine", "0.01")
    ),
    "keep 1/2 tokens": Technique(export=("--keep-tokens", "{half}")),
    "keep 1/4 tokens": Technique(export=("--keep-tokens", "{quarter}")),
    "token reuse 1/4": Technique(export=("--reuse-tokens", "{quarter}")),
    "action reuse <=1": Technique(reuse=(("action_reuse_max", 1),)),
    "keep 1/2 + cache k=3": Technique(
        export=("--keep-tokens", "{half}"), sampling=(("expert_cache_every", 3),)
    ),
    "keep 1/2 + cache k=3 + action reuse": Technique(
        export=("--keep-tokens", "{half}"),
        sampling=(("expert_cache_every", 3),),
        reuse=(("action_reuse_max", 1),),
    ),
    # The default gate almost never opens on this task (docs/benchmarks.md): a loose one.
    "action reuse <=1, loose gate": Technique(reuse=LOOSE_ACTION_REUSE),
    "cache k=3 + loose action reuse": Technique(
        sampling=(("expert_cache_every", 3),), reuse=LOOSE_ACTION_REUSE
    ),
    "keep 1/2 + cache k=3 + loose action reuse": Technique(
        export=("--keep-tokens", "{half}"),
        sampling=(("expert_cache_every", 3),),
        reuse=LOOSE_ACTION_REUSE,
    ),
}
STEER_ALPHAS = (-2.0, -1.0, 1.0, 2.0)


def variant(policy: DualSystemPolicy, technique: Technique) -> DualSystemPolicy:
    """The technique's policy with fresh reuse state."""
    return policy.with_sampling(**dict(technique.sampling)).with_reuse(**dict(technique.reuse))


def export_flags(flags: tuple[str, ...], visual_tokens: int) -> list[str]:
    shares = {
        "{three_quarters}": str(3 * visual_tokens // 4),
        "{half}": str(visual_tokens // 2),
        "{quarter}": str(visual_tokens // 4),
    }
    return [shares.get(flag, flag) for flag in flags]


def expert_sequences(seeds: list[int], image_size: int) -> list[list[Observation]]:
    """The scripted expert's episodes as the observations a policy would plan from."""
    settings = EpisodeSettings(image_size=image_size, system1_enabled=False)
    sequences = []
    for seed in seeds:
        result = run_episode(
            ExpertAgent(8, 0.05), touch_episode(seed), settings, 0.05, keep_events=True
        )
        sequences.append([event.obs for event in result.events])
    return sequences


def run_sequence(
    policy: DualSystemPolicy, sequence: list[Observation], seed: int
) -> tuple[list[float], list]:
    """Plan every observation of one sequence from a reset: (seconds per plan, plans)."""
    policy.reset()
    rng = np.random.default_rng(seed)
    times, plans = [], []
    for obs in sequence:
        start = time.perf_counter()
        plans.append(policy.plan(obs, rng))
        times.append(time.perf_counter() - start)
    return times, plans


def plan_latency(
    policies: dict[str, DualSystemPolicy], sequences: list[list[Observation]], passes: int
) -> dict[str, dict]:
    """Mean seconds per plan for every technique over the sequences, in ABBA passes."""
    variants = {name: variant(policies[name], t) for name, t in TECHNIQUES.items()}
    samples: dict[str, list[float]] = {name: [] for name in variants}
    counts: dict[str, dict[str, int]] = {}
    order = list(variants)
    for name in order:  # warm-up: first runs pay for lazy initialisation
        run_sequence(variants[name], sequences[0][:4], 0)
    for pass_ in range(passes):
        for name in order if pass_ % 2 == 0 else reversed(order):
            v = variants[name]
            before = dict(v.memory.counts)
            for i, sequence in enumerate(sequences):
                samples[name] += run_sequence(v, sequence, i)[0]
            counts[name] = {k: v.memory.counts[k] - before[k] for k in before}
    base = statistics.fmean(samples["baseline"])
    return {
        name: {
            "mean_ms": 1e3 * statistics.fmean(s),
            "median_ms": 1e3 * statistics.median(s),
            "speedup": base / statistics.fmean(s),
            "plans": counts[name],
        }
        for name, s in samples.items()
    }


def fidelity(
    policies: dict[str, DualSystemPolicy], sequences: list[list[Observation]]
) -> dict[str, dict]:
    """Each technique's plans against the baseline's on the same sequences and noise."""
    out = {}
    baseline = variant(policies["baseline"], TECHNIQUES["baseline"])
    reference = [run_sequence(baseline, seq, i)[1] for i, seq in enumerate(sequences)]
    for name, technique in TECHNIQUES.items():
        v = variant(policies[name], technique)
        cosines, max_rad = [], 0.0
        for i, seq in enumerate(sequences):
            for base, got in zip(reference[i], run_sequence(v, seq, i)[1], strict=True):
                a = base.result.candidates.ravel().astype(np.float64)
                b = got.result.candidates.ravel().astype(np.float64)
                cosines.append(float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b))))
                diff = np.abs(got.chunk[:, :6] - base.chunk[:, :6]).max()
                max_rad = max(max_rad, float(diff))
        out[name] = {
            "action_cosine_min": min(cosines),
            "action_cosine_mean": statistics.fmean(cosines),
            "chunk_max_abs_rad": max_rad,
        }
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", default=str(ROOT / "checkpoints" / "touch-tiny"))
    parser.add_argument("--latency-config", default="small")
    parser.add_argument("--episodes", type=int, default=50)
    parser.add_argument(
        "--sequences", type=int, default=3, help="expert episodes whose frames are planned"
    )
    parser.add_argument("--passes", type=int, default=2, help="timed passes (ABBA order)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument(
        "--calibration",
        metavar="DEMOS",
        help="demonstrations that calibrate the trained prune and find the steering direction",
    )
    parser.add_argument(
        "--only",
        nargs="+",
        metavar="NAME",
        help="run these techniques (and the baseline) only",
    )
    parser.add_argument("--no-steering", action="store_true", help="skip the steering runs")
    args = parser.parse_args()
    if args.only:
        unknown = sorted(set(args.only) - set(TECHNIQUES))
        if unknown:
            parser.error(f"unknown techniques {unknown}; choose from {list(TECHNIQUES)}")
        for name in list(TECHNIQUES):
            if name != "baseline" and name not in args.only:
                del TECHNIQUES[name]
    console = Console(highlight=False, width=160)
    seeds = held_out_seeds(0, args.episodes)
    backend = BackendConfig(providers=(CPU,), warmup_runs=2)
    record_latency: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as tmp:
        exports = sorted({t.export for t in TECHNIQUES.values()})
        bundles: dict[str, dict[tuple[str, ...], Path]] = {"small": {}, "trained": {}}
        records: dict[str, dict] = {}
        for i, flags in enumerate(exports):
            for model, source in (("small", args.latency_config), ("trained", args.checkpoint)):
                out = Path(tmp) / f"{model}-{i}"
                src = Path(source) if model == "trained" else source
                if model == "trained":
                    from edgevla.export.checkpoint import load_checkpoint

                    tokens = load_checkpoint(src).config.num_visual_tokens
                else:
                    from edgevla.export.configs import get_config

                    tokens = get_config(source).num_visual_tokens
                extra = export_flags(flags, tokens)
                if model == "trained" and args.calibration:
                    extra += ["--calibration", args.calibration]
                    if not flags and not args.no_steering:
                        extra.append("--steering")
                console.print(f"exporting {source} {' '.join(extra)}")
                export_in_child(src, out, *extra)
                bundles[model][flags] = out
                o = load_bundle(out).manifest.optimizations
                records[f"{model} {' '.join(extra) or 'baseline'}"] = msgspec.to_builtins(
                    {**msgspec.structs.asdict(o), "steering": [d.name for d in o.steering]}
                )
        policies_by_model = {
            label: {
                name: DualSystemPolicy.from_dir(bundles[model][t.export], backend)
                for name, t in TECHNIQUES.items()
            }
            for label, model in ((args.latency_config, "small"), ("trained tiny", "trained"))
        }
        sequence_seeds = held_out_seeds(0, args.sequences)
        sequences = {}
        for label, policies in policies_by_model.items():
            size = policies["baseline"].bundle.model.image_size
            console.print(f"expert observation sequences at {size} px")
            sequences[label] = expert_sequences(sequence_seeds, size)
            frames = sum(len(q) for q in sequences[label])
            console.print(f"plan latency, {label}: {frames} observations × {args.passes} passes")
            record_latency[label] = plan_latency(policies, sequences[label], args.passes)
        trained_policies = policies_by_model["trained tiny"]
        console.print("fidelity against the baseline on the trained tiny sequences")
        record_fidelity = fidelity(trained_policies, sequences["trained tiny"])
        runs: dict[str, dict] = {}
        for name, technique in TECHNIQUES.items():
            start = time.perf_counter()
            results = run_policy_episodes(
                bundles["trained"][technique.export],
                seeds,
                replace(EpisodeSettings(), system1_enabled=True),
                workers=args.workers,
                sampling=dict(technique.sampling),
                reuse=dict(technique.reuse),
            )
            summary = summarize(results)
            plans = sum(r.plans for r in results)
            runs[name] = {
                "summary": summary,
                "success": [r.success for r in results],
                "episode_plan_ms_mean": 1e3 * sum(r.plan_wall_s for r in results) / plans,
                "wall_s": time.perf_counter() - start,
            }
            console.print(
                f"{name}: {summary['success_rate']:.1%} ({summary['successes']}/{len(seeds)}), "
                f"{runs[name]['episode_plan_ms_mean']:.2f} ms per plan in episodes"
            )
        steering: dict[str, dict] = {}
        base_bundle = bundles["trained"][()]
        if load_bundle(base_bundle).manifest.optimizations.steering:
            step_s = load_bundle(base_bundle).manifest.action_space.step_period_s
            for alpha in (0.0, *STEER_ALPHAS):
                results = run_policy_episodes(
                    base_bundle,
                    seeds,
                    replace(EpisodeSettings(), system1_enabled=True),
                    workers=args.workers,
                    keep_events=True,
                    steer={"speed": alpha} if alpha else None,
                )
                summary = summarize(results)
                steering[f"{alpha:+g}"] = {
                    "commanded_speed_rad_s": commanded_speed(results, step_s),
                    "success_rate": summary["success_rate"],
                    "successes": summary["successes"],
                    "time_to_success_s": summary["time_to_success_s"],
                }
                console.print(f"steer speed={alpha:+g}: {steering[f'{alpha:+g}']}")
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
        f"plan {args.latency_config} (mean)",
        "plan tiny (mean)",
        "action cosine min / mean",
        "chunk Δ max (rad)",
        "success",
        "Δ success (95 % CI); only with / only baseline",
    ):
        table.add_column(column)
    for name in TECHNIQUES:
        lat_small = record_latency[args.latency_config][name]
        lat_tiny = record_latency["trained tiny"][name]
        fid = record_fidelity[name]
        delta = success_delta[name]
        table.add_row(
            name,
            f"{lat_small['mean_ms']:.1f} ms ({lat_small['speedup']:.2f}×)",
            f"{lat_tiny['mean_ms']:.2f} ms ({lat_tiny['speedup']:.2f}×)",
            f"{fid['action_cosine_min']:.4f} / {fid['action_cosine_mean']:.4f}",
            f"{fid['chunk_max_abs_rad']:.4f}",
            f"{runs[name]['summary']['success_rate']:.0%}",
            f"{delta['difference']:+.0%} ({delta['ci95'][0]:+.0%} to {delta['ci95'][1]:+.0%}); "
            f"{delta['only_with']}/{delta['only_baseline']}",
        )
    console.print(table)
    if steering:
        table = Table(title="activation steering along 'speed', trained tiny")
        for column in ("alpha", "commanded joint speed", "success"):
            table.add_column(column)
        for alpha, row in steering.items():
            table.add_row(
                alpha, f"{row['commanded_speed_rad_s']:.4f} rad/s", f"{row['success_rate']:.0%}"
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
        "optimizations": records,
        "seeds": [seeds[0], seeds[-1]],
        "latency": record_latency,
        "fidelity": record_fidelity,
        "success": {name: run["summary"] for name, run in runs.items()},
        "episode_plan_ms_mean": {name: run["episode_plan_ms_mean"] for name, run in runs.items()},
        "success_delta": success_delta,
        "steering": steering,
    }
    path = save(record, RESULTS, f"optimizations-{len(seeds)}ep")
    console.print(f"saved {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
