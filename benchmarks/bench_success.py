"""Closed-loop success of the trained reference policy in every runtime configuration.

  python benchmarks/bench_success.py [--checkpoint checkpoints/touch-tiny] [--episodes 100]

Exports the checkpoint twice (N=1 and N=5 candidates: the graphs have static shapes), then
runs the same held-out episodes (same seeds, same sampling noise per seed) in four
configurations: System 2 only with N=1 (the baseline), N=5 value-selected, and each with
System 1. Reports success with Wilson 95 % intervals, the value-selection gain (N=5 vs N=1) and
the System 1 gain with Newcombe intervals, and the paired counts on shared seeds. Prints a
table, writes JSON to benchmarks/results/.
"""

from __future__ import annotations

import argparse
import datetime as dt
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

from common import RESULTS, export_in_child, machine, save
from rich.console import Console
from rich.table import Table

from edgevla.export.bundle_writer import library_versions
from edgevla.sim.episode import EpisodeSettings
from edgevla.sim.evaluation import (
    difference_interval,
    run_policy_episodes,
    settings_record,
    summarize,
)
from edgevla.sim.tasks import held_out_seeds

ROOT = Path(__file__).resolve().parent.parent
CONFIGS = {  # name: (candidates, System 1)
    "S2 N=1": (1, False),
    "S2 N=5 value": (5, False),
    "S2 N=1 + S1": (1, True),
    "S2 N=5 value + S1": (5, True),
}


def paired(a: list[bool], b: list[bool]) -> dict[str, int]:
    return {
        "both": sum(x and y for x, y in zip(a, b, strict=True)),
        "only_a": sum(x and not y for x, y in zip(a, b, strict=True)),
        "only_b": sum(y and not x for x, y in zip(a, b, strict=True)),
        "neither": sum(not (x or y) for x, y in zip(a, b, strict=True)),
    }


def gain(name: str, a: str, b: str, runs: dict) -> dict:
    sa, sb = runs[a]["summary"], runs[b]["summary"]
    d, lo, hi = difference_interval(
        sa["successes"], sa["episodes"], sb["successes"], sb["episodes"]
    )
    return {
        "name": name,
        "a": a,
        "b": b,
        "difference": d,
        "ci95": [lo, hi],
        "paired": paired(runs[a]["success"], runs[b]["success"]),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", default=str(ROOT / "checkpoints" / "touch-tiny"))
    parser.add_argument("--episodes", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0, help="first held-out seed offset")
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    console = Console(highlight=False)
    seeds = held_out_seeds(args.seed, args.episodes)
    base = EpisodeSettings()
    runs: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as tmp:
        bundles = {}
        for n in sorted({n for n, _ in CONFIGS.values()}):
            bundles[n] = Path(tmp) / f"n{n}"
            console.print(f"exporting {args.checkpoint} with N={n}")
            export_in_child(Path(args.checkpoint), bundles[n], "--candidates", str(n))
        for name, (n, s1) in CONFIGS.items():
            settings = replace(base, system1_enabled=s1)
            start = time.perf_counter()
            results = run_policy_episodes(bundles[n], seeds, settings, workers=args.workers)
            summary = summarize(results)
            runs[name] = {
                "candidates": n,
                "system1": s1,
                "summary": summary,
                "success": [r.success for r in results],
                "wall_s": time.perf_counter() - start,
            }
            console.print(
                f"{name}: {summary['success_rate']:.1%} ({summary['successes']}/{len(seeds)}) "
                f"in {runs[name]['wall_s']:.0f} s"
            )
    gains = [
        gain("value selection (S2 only)", "S2 N=5 value", "S2 N=1", runs),
        gain("value selection (with S1)", "S2 N=5 value + S1", "S2 N=1 + S1", runs),
        gain("System 1 (N=5)", "S2 N=5 value + S1", "S2 N=5 value", runs),
        gain("System 1 (N=1)", "S2 N=1 + S1", "S2 N=1", runs),
    ]
    table = Table(title=f"touch task, {len(seeds)} held-out episodes per configuration")
    for column in ("configuration", "success", "95 % CI", "time to success p50", "outcomes"):
        table.add_column(column)
    for name, run in runs.items():
        s = run["summary"]
        tts = s["time_to_success_s"]["median"]
        table.add_row(
            name,
            f"{s['success_rate']:.1%}",
            f"{s['ci95'][0]:.1%} – {s['ci95'][1]:.1%}",
            "—" if tts is None else f"{tts:.2f} s",
            ", ".join(f"{k} {v}" for k, v in sorted(s["outcomes"].items())),
        )
    console.print(table)
    for g in gains:
        p = g["paired"]
        console.print(
            f"{g['name']}: {g['difference']:+.1%} (95 % CI {g['ci95'][0]:+.1%} to "
            f"{g['ci95'][1]:+.1%}); paired: {p['only_a']} seeds only with, {p['only_b']} only "
            f"without"
        )
    record = {
        "benchmark": "success",
        "created_utc": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "machine": machine(),
        "libraries": library_versions(),
        "checkpoint": args.checkpoint,
        "seeds": [seeds[0], seeds[-1]],
        "settings": settings_record(base),
        "runs": runs,
        "gains": gains,
    }
    path = save(record, RESULTS, f"success-{len(seeds)}ep")
    console.print(f"saved {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
