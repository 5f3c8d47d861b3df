"""Activation steering, closed loop: does steering along a direction change the commanded speed
in the asked direction, by how much, and at what cost in success?

  python benchmarks/bench_steering.py --checkpoint checkpoints/touch-tiny-paced \
      --calibration out/demos-calib [--episodes 50] [--directions pace-expert,pace]

Exports the checkpoint with its steering directions (found on the calibration demonstrations)
and one candidate per plan, then runs System 2 alone (steering acts on the prefix or the action
expert, which only System 2 runs) on the same held-out episodes (same seeds, same sampling
noise per seed) with the plain instruction at alpha 0 (the baseline) and at each alpha of each
direction, and, for reference, with the pace word written into the instruction ("... slowly",
"... quickly") at alpha 0: what the words themselves do, which steering tries to reach without
them. The commanded speed is the mean joint speed of the first four steps of every chosen chunk
over all plans. Prints a table, writes JSON to benchmarks/results/.
"""

from __future__ import annotations

import argparse
import datetime as dt
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

from common import RESULTS, commanded_speed, export_in_child, machine, save
from rich.console import Console
from rich.table import Table

from edgevla.export.bundle_writer import library_versions
from edgevla.runtime.bundle import load_bundle
from edgevla.sim.episode import EpisodeSettings
from edgevla.sim.evaluation import difference_interval, run_policy_episodes, summarize
from edgevla.sim.tasks import held_out_seeds

ROOT = Path(__file__).resolve().parent.parent


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", default=str(ROOT / "checkpoints" / "touch-tiny-paced"))
    parser.add_argument("--calibration", required=True, metavar="DEMOS")
    parser.add_argument("--directions", default="pace-expert,pace")
    parser.add_argument("--alphas", default="-1,-0.5,0.5,1")
    parser.add_argument("--episodes", type=int, default=50)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--words", default="slowly,quickly", help="reference rows, '' for none")
    parser.add_argument(
        "--timeout-s",
        type=float,
        default=EpisodeSettings().timeout_s,
        help="episode timeout (a slower arm needs longer: this tells slow from failing)",
    )
    args = parser.parse_args()
    console = Console(width=140)
    alphas = [float(a) for a in args.alphas.split(",") if a]
    seeds = held_out_seeds(0, args.episodes)
    with tempfile.TemporaryDirectory(prefix="edgevla-steer-") as tmp:
        bundle = Path(tmp) / "bundle"
        console.print(f"exporting {args.checkpoint} with steering directions ...")
        export_in_child(
            Path(args.checkpoint),
            bundle,
            "--steering",
            "--calibration",
            args.calibration,
            # One candidate: a fine-tuned checkpoint may carry critics trained on its parent's
            # features, and value selection would then be noise in every row alike.
            "--candidates",
            "1",
        )
        manifest = load_bundle(bundle).manifest
        sites = {d.name: d.site for d in manifest.optimizations.steering}
        directions = [d for d in args.directions.split(",") if d]
        missing = [d for d in directions if d not in sites]
        if missing:
            console.print(f"[red]the bundle has directions {sorted(sites)}, not {missing}")
            return 1
        step_s = manifest.action_space.step_period_s
        # System 1 off: steering acts on System 2's graphs; the commanded speed is that of the
        # plans System 2 chose.
        settings = replace(EpisodeSettings(), system1_enabled=False, timeout_s=args.timeout_s)
        rows: dict[str, dict] = {}
        runs = [("plain, alpha 0", {}, "")]
        runs += [(f"{d}, alpha {a:+g}", {d: a}, "") for d in directions for a in alphas]
        runs += [(f"'{w}', alpha 0", {}, w) for w in args.words.split(",") if w]
        for name, steer, suffix in runs:
            start = time.perf_counter()
            results = run_policy_episodes(
                bundle,
                seeds,
                settings,
                workers=args.workers,
                keep_events=True,
                steer=steer or None,
                instruction_suffix=suffix,
            )
            summary = summarize(results)
            rows[name] = {
                "steer": steer,
                "instruction_suffix": suffix,
                "commanded_speed_rad_s": commanded_speed(results, step_s),
                "success_rate": summary["success_rate"],
                "successes": summary["successes"],
                "time_to_success_s": summary["time_to_success_s"],
                "outcomes": summary["outcomes"],
                "wall_s": time.perf_counter() - start,
            }
            console.print(
                f"{name}: {rows[name]['commanded_speed_rad_s']:.3f} rad/s, "
                f"{summary['success_rate']:.0%} success"
            )
    base = rows["plain, alpha 0"]
    table = Table(
        title=f"steering along {directions}, {args.episodes} held-out episodes, "
        f"{args.timeout_s:g} s timeout"
    )
    columns = ("run", "commanded speed", "vs alpha 0", "success", "Δ success (95 % CI)", "outcomes")
    for col in columns:
        table.add_column(col)
    for name, row in rows.items():
        ratio = row["commanded_speed_rad_s"] / base["commanded_speed_rad_s"]
        d, lo, hi = difference_interval(row["successes"], len(seeds), base["successes"], len(seeds))
        row["speed_ratio"] = ratio
        row["success_delta"] = {"delta": d, "low": lo, "high": hi}
        table.add_row(
            name,
            f"{row['commanded_speed_rad_s']:.3f} rad/s",
            f"{ratio:.2f}×",
            f"{row['success_rate']:.0%}",
            "—" if row is base else f"{100 * d:+.0f} pp ({100 * lo:+.0f} to {100 * hi:+.0f})",
            ", ".join(f"{k} {v}" for k, v in sorted(row["outcomes"].items())),
        )
    console.print(table)
    record = {
        "benchmark": "steering",
        "created_utc": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
        "machine": machine(),
        "libraries": library_versions(),
        "checkpoint": args.checkpoint,
        "directions": {d: sites[d] for d in directions},
        "episodes": args.episodes,
        "timeout_s": args.timeout_s,
        "seeds": [seeds[0], seeds[-1]],
        "rows": rows,
    }
    path = save(record, RESULTS, f"steering-{args.episodes}ep")
    console.print(f"saved {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
