"""System 2 plan and System 1 step latency, with their baselines measured in the same run.

  python benchmarks/bench_plan.py [--config small] [--candidates 5] [--repeats 20]

Compares, on identical inputs and noise, in blocks of repeats per method, the block order
reversed on the second pass (ABBA) so that machine drift hits all alike:
  ort_shared     onnxruntime, one prefix, N candidates batched over its cache (edgevla)
  ort_shared_own_pools  the same with a thread pool per graph instead of one shared pool
  torch_shared   PyTorch eager, same arithmetic (the export-side reference)
  ort_percand    onnxruntime, Hume's released pattern: prefix + K steps per candidate
  torch_percand  PyTorch eager, the same per-candidate pattern
and the System 1 step (K1 System 1 graph calls). Prints a table, writes JSON to
benchmarks/results/.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from common import RESULTS, cpu_model, export_in_child, machine, save
from rich.console import Console
from rich.table import Table

from edgevla.export.bundle_writer import library_versions
from edgevla.export.checkpoint import init_policy
from edgevla.export.configs import get_config
from edgevla.export.model_stats import model_stats
from edgevla.export.parity import parity_inputs
from edgevla.export.reference_policy import torch_plan, torch_react
from edgevla.runtime import system1, system2
from edgevla.runtime.backend import CPU, BackendConfig, OnnxRuntimeBackend
from edgevla.runtime.bundle import load_bundle


def percentiles(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    return {
        "median_ms": statistics.median(ordered) * 1e3,
        "p90_ms": ordered[min(len(ordered) - 1, int(0.9 * len(ordered)))] * 1e3,
        "min_ms": ordered[0] * 1e3,
        "n": len(ordered),
    }


def timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="small")
    parser.add_argument("--candidates", type=int, default=5)
    parser.add_argument("--denoise-steps", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=20, help="per method, over two passes")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    console = Console(width=120)
    torch.set_num_threads(args.threads)
    cfg = get_config(args.config)
    policy = init_policy(cfg, args.seed)
    n, k = args.candidates, args.denoise_steps

    with tempfile.TemporaryDirectory(prefix="edgevla-bench-") as tmp:
        export_s = {}
        for count in (n, 1):
            start = time.perf_counter()
            with console.status(f"exporting '{cfg.name}' with N={count} (graphs + parity gate)"):
                export_in_child(
                    cfg.name,
                    Path(tmp) / f"n{count}",
                    "--seed",
                    str(args.seed),
                    "--candidates",
                    str(count),
                    "--denoise-steps",
                    str(k),
                )
            export_s[count] = time.perf_counter() - start
        backend_config = BackendConfig(
            providers=(CPU,), intra_op_threads=args.threads, warmup_runs=2
        )
        # Per-session pools must exist before onnxruntime's shared pool is created.
        own_pools = OnnxRuntimeBackend.from_bundle(
            load_bundle(Path(tmp) / f"n{n}"), replace(backend_config, thread_pool="per_session")
        )
        shared = OnnxRuntimeBackend.from_bundle(load_bundle(Path(tmp) / f"n{n}"), backend_config)
        single = OnnxRuntimeBackend.from_bundle(load_bundle(Path(tmp) / "n1"), backend_config)

        inputs = parity_inputs(policy, count=1, seed=args.seed)[0]
        rng = np.random.default_rng(args.seed)
        noise = system2.sample_noise(rng, (n, cfg.chunk_len, cfg.action_dim))
        starts = system2.candidate_start_times(n, 0.9, 1.0)
        s1_noise = system2.sample_noise(rng, (cfg.s1_horizon, cfg.action_dim))
        theta1, s1_steps = 0.5, 3

        def ort_shared() -> system2.PlanResult:
            return system2.plan(shared, inputs, noise, starts, k)

        def ort_shared_own_pools() -> system2.PlanResult:
            return system2.plan(own_pools, inputs, noise, starts, k)

        def torch_shared() -> object:
            return torch_plan(policy.model, inputs, noise, starts, k)

        def ort_percand() -> int:
            results = [
                system2.plan(single, inputs, noise[i : i + 1], starts[i : i + 1], k)
                for i in range(n)
            ]
            return int(np.argmax([r.q[0] for r in results]))

        def torch_percand() -> int:
            results = [
                torch_plan(policy.model, inputs, noise[i : i + 1], starts[i : i + 1], k)
                for i in range(n)
            ]
            return int(np.argmax([r.q[0] for r in results]))

        reference = ort_shared()
        slice_ = system1.plan_slice(reference.chunk, 0, cfg.s1_horizon)

        def ort_s1() -> np.ndarray:
            return system1.react(
                shared, inputs.images, inputs.state, slice_, s1_noise, theta1, s1_steps
            )

        def torch_s1() -> np.ndarray:
            return torch_react(
                policy.model, inputs.images, inputs.state, slice_, s1_noise, theta1, s1_steps
            )

        # Same inputs, same answer: otherwise the comparison means nothing.
        assert ort_percand() == reference.chosen == torch_percand()
        methods = {
            "ort_shared": ort_shared,
            "ort_shared_own_pools": ort_shared_own_pools,
            "torch_shared": torch_shared,
            "ort_percand": ort_percand,
            "torch_percand": torch_percand,
            "ort_s1_step": ort_s1,
            "torch_s1_step": torch_s1,
        }
        samples: dict[str, list[float]] = {name: [] for name in methods}
        phases: dict[str, list[float]] = {"prefix_s": [], "denoise_s": [], "value_s": []}
        # Blocks, not round-robin: onnxruntime's and torch's thread pools spin-wait after work,
        # and interleaving calls on two cores makes each library pay for the other's spinning.
        order = list(methods)
        for pass_ in range(2):
            for name in order if pass_ == 0 else reversed(order):
                console.print(f"pass {pass_ + 1}/2: {name}            ", end="\r")
                time.sleep(0.5)  # let the previous library's spinning threads go idle
                for _ in range(args.warmup):
                    methods[name]()
                for _ in range(args.repeats // 2):
                    samples[name].append(timed(methods[name]))
        for _ in range(args.repeats // 2):
            for phase, value in ort_shared().timings_s.items():
                if phase in phases:
                    phases[phase].append(value)

    stats = {name: percentiles(values) for name, values in samples.items()}
    med = {name: s["median_ms"] for name, s in stats.items()}
    flops = model_stats(cfg, n, k)
    ratios = {
        "ort_vs_torch_eager_plan": med["torch_shared"] / med["ort_shared"],
        "shared_prefix_vs_per_candidate_ort": med["ort_percand"] / med["ort_shared"],
        "shared_prefix_vs_per_candidate_torch": med["torch_percand"] / med["torch_shared"],
        "ort_vs_torch_eager_s1_step": med["torch_s1_step"] / med["ort_s1_step"],
        "shared_vs_per_session_thread_pools": med["ort_shared_own_pools"] / med["ort_shared"],
        "flops_per_candidate_vs_shared": flops.per_candidate_prefix_flops / flops.plan_flops,
    }
    record = {
        "benchmark": "plan",
        "created_utc": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "machine": {**machine(), "threads": args.threads},
        "versions": library_versions(),
        "settings": {
            "config": cfg.name,
            "candidates": n,
            "denoise_steps": k,
            "s1_steps": s1_steps,
            "s1_theta": theta1,
            "repeats": args.repeats,
            "warmup": args.warmup,
            "precision": "fp32",
            "provider": CPU,
        },
        "model": {
            "params_m": sum(flops.params.values()) / 1e6,
            "prefix_tokens": cfg.prefix_len,
            "plan_gflop": flops.plan_flops / 1e9,
            "per_candidate_gflop": flops.per_candidate_prefix_flops / 1e9,
        },
        "export_s": {f"n{c}": round(s, 1) for c, s in export_s.items()},
        "latency": stats,
        "ort_plan_phases_median_ms": {p: statistics.median(v) * 1e3 for p, v in phases.items()},
        "ratios": ratios,
        "goals": {"ort_vs_torch_eager_plan": 1.5, "shared_prefix_vs_per_candidate_ort": 3.0},
    }

    table = Table(title=f"'{cfg.name}' N={n} K={k}, {args.threads} threads, {cpu_model()}")
    for column in ("method", "median ms", "p90 ms", "min ms"):
        table.add_column(column, justify="right" if column != "method" else "left")
    for name, s in stats.items():
        table.add_row(name, f"{s['median_ms']:.2f}", f"{s['p90_ms']:.2f}", f"{s['min_ms']:.2f}")
    console.print(table)
    phase_text = ", ".join(
        f"{p} {v:.2f} ms" for p, v in record["ort_plan_phases_median_ms"].items()
    )
    console.print(f"ort_shared phases: {phase_text}")
    for name, value in ratios.items():
        goal = record["goals"].get(name)
        verdict = ""
        if goal is not None:
            verdict = f" (goal ≥ {goal:.1f}× {'met' if value >= goal else 'NOT met'})"
        console.print(f"{name}: {value:.2f}×{verdict}")
    path = save(record, args.out, f"plan-{cfg.name}-n{n}")
    console.print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
