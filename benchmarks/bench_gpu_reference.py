"""The PyTorch reference model on a CUDA GPU: System 2 plan and System 1 step, eager.

  python benchmarks/bench_gpu_reference.py [--configs small pi0-scale] [--candidates 5 1]
      [--precisions fp32 tf32 bf16 fp16] [--repeats 30] [--cuda-graph] [--compile none]

Needs a CUDA GPU (exits with code 2 without one). Random weights (`build_model(cfg, seed=0)`,
initialised on the GPU): latency does not depend on training. For each config, precision and
number of candidates N, on identical inputs and noise:
  shared           edgevla's plan: one `encode_prefix` on the batch-1 observation, K Euler steps
                   of `expert_velocity` for N candidates over that one cache (batch 1, broadcast),
                   then `value`
  percand_batched  baseline, Hume's released pattern batched: `encode_prefix` on N copies of the
                   observation, the expert over the batch-N cache, `value`
  percand_loop     baseline as in bench_plan.py: N separate batch-1 plans, one after the other
  s1_step          one System 1 step: 3 `system1_velocity` calls (θ1 = 0.5), as bench_plan.py
  s1_call          one `system1_velocity` call
(at N = 1 the three plans are the same arithmetic, so only `shared` runs). Each method runs its
repeats in two blocks, the second pass in reverse order (ABBA). Latency is host wall time from a
synchronised GPU to the chosen candidate's index on the host (what the runtime waits for); CUDA
event times are kept in the JSON too. Precisions: fp32 (TF32 off, PyTorch's default), tf32 (fp32
weights, TF32 matmuls), bf16 and fp16 (`model.to(dtype)`; reference.py keeps RMSNorm statistics,
softmax and the time embedding in float32). Prints a table, writes JSON to benchmarks/results/.

--cuda-graph records each plan (and the System 1 step) as one CUDA graph and times its replays:
what the GPU needs without Python's per-operator launch cost (percand_loop is then left out).
Outputs are checked against eager. --compile times torch.compile'd entry points instead; with
torch 2.11 `--compile reduce-overhead` failed (CUDA-graph trees overwrote the prefix cache that
the expert steps still read), and the other modes have not been tried.
"""

from __future__ import annotations

import argparse
import datetime as dt
import itertools
import platform
import statistics
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path

import torch
from common import RESULTS, machine, save

from edgevla.export.configs import get_config
from edgevla.export.reference import DualSystemVLA, build_model
from edgevla.runtime.model_config import ModelConfig

DTYPES = {
    "fp32": torch.float32,
    "tf32": torch.float32,
    "bf16": torch.bfloat16,
    "fp16": torch.float16,
}
S1_STEPS, S1_THETA = 3, 0.5
GIB = 1024**3

Observation = tuple[torch.Tensor, ...]  # images, instruction_ids, instruction_mask, state


def percentiles(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    return {
        "median_ms": statistics.median(ordered) * 1e3,
        "p90_ms": ordered[min(len(ordered) - 1, int(0.9 * len(ordered)))] * 1e3,
        "min_ms": ordered[0] * 1e3,
        "n": len(ordered),
    }


def gpu_info(device: torch.device) -> dict[str, object]:
    info: dict[str, object] = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version(),
    }
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info |= {
            "gpu": torch.cuda.get_device_name(device),
            "gpu_memory_gib": round(props.total_memory / GIB, 1),
            "multiprocessors": props.multi_processor_count,
            "compute_capability": f"{props.major}.{props.minor}",
        }
        try:
            query = "--query-gpu=driver_version,clocks.max.sm,power.limit"
            info["nvidia_smi"] = subprocess.run(
                ["nvidia-smi", query, "--format=csv,noheader"],
                capture_output=True,
                text=True,
                timeout=20,
                check=True,
            ).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            info["nvidia_smi"] = None
    return info


def observation(cfg: ModelConfig, device: torch.device, seed: int) -> Observation:
    """A batch-1 observation: random frames, an instruction with padding, a state."""
    g = torch.Generator().manual_seed(seed)
    c, s, t = cfg.num_cameras, cfg.image_size, cfg.max_instruction_tokens
    images = torch.randint(0, 256, (1, c, s, s, 3), dtype=torch.uint8, generator=g)
    ids = torch.randint(0, cfg.vocab_size, (1, t), generator=g)
    mask = torch.zeros(1, t, dtype=torch.bool)
    mask[:, : max(1, 2 * t // 3)] = True
    state = torch.randn(1, cfg.state_dim, generator=g)
    return tuple(x.to(device) for x in (images, ids, mask, state))


def start_times(n: int, device: torch.device) -> torch.Tensor:
    """As `edgevla.runtime.system2.candidate_start_times(n, 0.9, 1.0)`."""
    if n == 1:
        return torch.tensor([1.0], device=device)
    return torch.linspace(1.0, 0.9, n, device=device)


def denoise(
    model: DualSystemVLA,
    k: torch.Tensor,
    v: torch.Tensor,
    mask: torch.Tensor,
    noise: torch.Tensor,
    starts: torch.Tensor,
    steps: int,
) -> torch.Tensor:
    """K Euler steps from each candidate's start time to 0, as `torch_plan` does."""
    x = noise.clone()
    dt_ = starts / steps
    for i in range(steps):
        t = starts * (1.0 - i / steps)
        x = x - dt_[:, None, None] * model.expert_velocity(k, v, mask, x, t)
    return x


def plan_shared(
    model: DualSystemVLA, obs: Observation, noise: torch.Tensor, starts: torch.Tensor, steps: int
) -> tuple[torch.Tensor, torch.Tensor]:
    k, v, mask, summary, _ = model.encode_prefix(*obs)
    x = denoise(model, k, v, mask, noise, starts, steps)
    q, _ = model.value(summary, x)
    return x, q


def plan_percand_batched(
    model: DualSystemVLA,
    obs_n: Observation,
    noise: torch.Tensor,
    starts: torch.Tensor,
    steps: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The prefix of N copies of the observation: every candidate has its own cache."""
    k, v, mask, summary, _ = model.encode_prefix(*obs_n)
    x = denoise(model, k, v, mask, noise, starts, steps)
    q, _ = model.value(summary, x)
    return x, q


def plan_percand_loop(
    model: DualSystemVLA, obs: Observation, noise: torch.Tensor, starts: torch.Tensor, steps: int
) -> tuple[torch.Tensor, torch.Tensor]:
    parts = [
        plan_shared(model, obs, noise[i : i + 1], starts[i : i + 1], steps)
        for i in range(noise.shape[0])
    ]
    return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])


def s1_step(
    model: DualSystemVLA, obs: Observation, slice_: torch.Tensor, noise: torch.Tensor
) -> torch.Tensor:
    """As `torch_react`: start from θ1·noise + (1-θ1)·plan slice, S1_STEPS Euler steps."""
    images, state = obs[0], obs[3]
    x = (S1_THETA * noise + (1.0 - S1_THETA) * slice_)[None]
    dt_ = S1_THETA / S1_STEPS
    for i in range(S1_STEPS):
        t = torch.full((1,), S1_THETA * (1.0 - i / S1_STEPS), device=x.device)
        x = x - dt_ * model.system1_velocity(images, state, x, t)
    return x[0]


class Timer:
    """Wall time from an idle device to the result on the host, plus CUDA event time."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"

    def sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize()

    def __call__(self, fn: Callable[[], object]) -> tuple[float, float]:
        self.sync()
        if self.cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            t0 = time.perf_counter()
            start.record()
            fn()
            end.record()
            end.synchronize()
            wall = time.perf_counter() - t0
            return wall, start.elapsed_time(end) / 1e3
        t0 = time.perf_counter()
        fn()
        wall = time.perf_counter() - t0
        return wall, wall


def peak_memory(device: torch.device, fn: Callable[[], object]) -> float | None:
    if device.type != "cuda":
        fn()
        return None
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats(device)
    fn()
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated(device) / GIB


def run_case(
    cfg: ModelConfig,
    precision: str,
    candidates: list[int],
    args: argparse.Namespace,
    device: torch.device,
    console_log: Callable[[str], None],
) -> dict[str, object]:
    """All methods of one config at one precision; the model is built once for them."""
    dtype = DTYPES[precision]
    torch.backends.cuda.matmul.allow_tf32 = precision == "tf32"
    torch.backends.cudnn.allow_tf32 = precision == "tf32"
    if device.type == "cuda":
        torch.cuda.empty_cache()
    build_start = time.perf_counter()
    with torch.device(device):
        model = build_model(cfg, seed=args.seed)
    model = model.to(dtype)
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
    build_s = time.perf_counter() - build_start
    weights_gib = torch.cuda.memory_allocated(device) / GIB if device.type == "cuda" else None
    params_m = sum(p.numel() for p in model.parameters()) / 1e6
    obs = observation(cfg, device, args.seed)
    g = torch.Generator().manual_seed(args.seed + 1)
    max_n = max(candidates)
    all_noise = torch.randn(max_n, cfg.chunk_len, cfg.action_dim, generator=g).to(device)
    s1_noise = torch.randn(cfg.s1_horizon, cfg.action_dim, generator=g).to(device)

    timer = Timer(device)
    methods: dict[str, Callable[[], object]] = {}
    checks: dict[str, object] = {}
    compiled = None
    if args.compile != "none":
        compiled = compile_model(model, args.compile, console_log)
        checks["compile"] = "ok" if compiled is not None else "failed"

    def chosen(result: tuple[torch.Tensor, torch.Tensor]) -> int:
        return int(torch.argmax(result[1]))  # the runtime needs this index on the host

    with torch.inference_mode():
        for n in candidates:
            noise, starts = all_noise[:n], start_times(n, device)
            obs_n = tuple(x.repeat(n, *([1] * (x.dim() - 1))) for x in obs)

            def shared(n=n, noise=noise, starts=starts) -> int:
                return chosen(plan_shared(model, obs, noise, starts, args.denoise_steps))

            def batched(n=n, noise=noise, starts=starts, obs_n=obs_n) -> int:
                return chosen(plan_percand_batched(model, obs_n, noise, starts, args.denoise_steps))

            def loop(n=n, noise=noise, starts=starts) -> int:
                return chosen(plan_percand_loop(model, obs, noise, starts, args.denoise_steps))

            if compiled is None:
                methods[f"shared_n{n}"] = shared
                if n > 1:
                    methods[f"percand_batched_n{n}"] = batched
                    methods[f"percand_loop_n{n}"] = loop
            else:

                def shared_c(n=n, noise=noise, starts=starts) -> int:
                    return chosen(plan_shared(compiled, obs, noise, starts, args.denoise_steps))

                methods[f"shared_compiled_n{n}"] = shared_c
            # Same inputs and noise: the baselines must compute the same candidates.
            if compiled is None and n > 1:
                ref = plan_shared(model, obs, noise, starts, args.denoise_steps)
                other = plan_percand_batched(model, obs_n, noise, starts, args.denoise_steps)
                diff = (ref[0] - other[0]).abs().max().item()
                scale = ref[0].abs().max().item()
                checks[f"n{n}"] = {
                    "finite": bool(torch.isfinite(ref[0]).all() and torch.isfinite(ref[1]).all()),
                    "max_abs_diff_shared_vs_percand": diff,
                    "max_abs_candidate": scale,
                    "same_choice": chosen(ref) == chosen(other),
                }
        slice_ = plan_shared(model, obs, all_noise[:1], start_times(1, device), 2)[0][
            0, : cfg.s1_horizon
        ]
        s1_model = compiled if compiled is not None else model
        suffix = "_compiled" if compiled is not None else ""
        methods[f"s1_step{suffix}"] = lambda: s1_step(s1_model, obs, slice_, s1_noise).sum().item()
        methods[f"s1_call{suffix}"] = lambda: (
            s1_model.system1_velocity(
                obs[0], obs[3], slice_[None], torch.full((1,), S1_THETA, device=device)
            )
            .sum()
            .item()
        )

        if args.cuda_graph:
            methods = graph_methods(model, obs, all_noise, s1_noise, slice_, args, checks)
        memory: dict[str, float | None] = {}
        for name, fn in methods.items():  # first calls (and compilation) stay out of the timings
            console_log(f"  warm-up {name}")
            for _ in range(args.warmup):
                fn()
            memory[name] = peak_memory(device, fn)
        wall: dict[str, list[float]] = {name: [] for name in methods}
        event: dict[str, list[float]] = {name: [] for name in methods}
        order = list(methods)
        for pass_ in range(2):
            for name in order if pass_ == 0 else reversed(order):
                fn = methods[name]
                fn()
                for _ in range((args.repeats + 1) // 2):
                    w, e = timer(fn)
                    wall[name].append(w)
                    event[name].append(e)
    latency = {
        name: {
            **percentiles(wall[name]),
            "event_median_ms": statistics.median(event[name]) * 1e3,
            "peak_gib": memory[name],
        }
        for name in methods
    }
    return {
        "config": cfg.name,
        "precision": precision,
        "params_m": params_m,
        "build_s": round(build_s, 1),
        "weights_gib": weights_gib,
        "checks": checks,
        "latency": latency,
    }


class Graphed:
    """`fn` recorded as one CUDA graph; calling replays it (no Python per operator)."""

    def __init__(self, fn: Callable[[], tuple[torch.Tensor, ...]]) -> None:
        self.fn = fn  # keeps the tensors the graph reads (fn's default arguments) alive
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(2):
                fn()
        torch.cuda.current_stream().wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.out = fn()

    def __call__(self) -> tuple[torch.Tensor, ...]:
        self.graph.replay()
        return self.out


def graph_methods(
    model: DualSystemVLA,
    obs: Observation,
    all_noise: torch.Tensor,
    s1_noise: torch.Tensor,
    slice_: torch.Tensor,
    args: argparse.Namespace,
    checks: dict[str, object],
) -> dict[str, Callable[[], object]]:
    """The shared plan, the batched per-candidate plan and System 1, each one CUDA graph.

    What the GPU itself needs once Python's per-operator launch cost is gone (the deployed
    engines, TensorRT or onnxruntime with CUDA graphs, launch a graph too). Checked against eager.
    """
    steps, device = args.denoise_steps, all_noise.device
    methods: dict[str, Callable[[], object]] = {}
    for n in args.candidates:
        noise, starts = all_noise[:n], start_times(n, device)
        obs_n = tuple(x.repeat(n, *([1] * (x.dim() - 1))) for x in obs)
        variants = {"shared": (plan_shared, obs)}
        if n > 1:
            variants["percand_batched"] = (plan_percand_batched, obs_n)
        for name, (plan, o) in variants.items():

            def body(plan=plan, o=o, noise=noise, starts=starts) -> tuple[torch.Tensor, ...]:
                return plan(model, o, noise, starts, steps)

            replay = Graphed(body)
            eager = body()
            graphed = replay()
            checks[f"{name}_graph_n{n}_vs_eager_max_abs"] = (
                (graphed[0] - eager[0]).abs().max().item()
            )

            def run(replay=replay) -> int:
                return int(torch.argmax(replay()[1]))

            methods[f"{name}_graph_n{n}"] = run
    t_s1 = torch.full((1,), S1_THETA, device=device)
    step = Graphed(lambda: (s1_step(model, obs, slice_, s1_noise),))
    call = Graphed(lambda: (model.system1_velocity(obs[0], obs[3], slice_[None], t_s1),))
    methods["s1_step_graph"] = lambda: step()[0].sum().item()
    methods["s1_call_graph"] = lambda: call()[0].sum().item()
    return methods


def compile_model(
    model: DualSystemVLA, mode: str, console_log: Callable[[str], None]
) -> DualSystemVLA | None:
    """A shallow copy whose entry points are torch.compile'd; None if compiling fails."""
    import copy

    try:
        clone = copy.copy(model)
        clone.encode_prefix = torch.compile(model.encode_prefix, mode=mode)  # type: ignore[method-assign]
        clone.expert_velocity = torch.compile(model.expert_velocity, mode=mode)  # type: ignore[method-assign]
        clone.system1_velocity = torch.compile(model.system1_velocity, mode=mode)  # type: ignore[method-assign]
        return clone
    except Exception:  # torch.compile is lazy; failures usually surface at the first call
        console_log(traceback.format_exc())
        return None


def flop_counts(cfg: ModelConfig, candidates: list[int], steps: int) -> dict[str, object]:
    """FLOPs per plan from `edgevla model info`'s counter (meta device); empty if unavailable."""
    try:
        from edgevla.export.model_stats import model_stats
    except ImportError as exc:
        return {"unavailable": str(exc)}
    out: dict[str, object] = {}
    for n in candidates:
        stats = model_stats(cfg, n, steps)
        out[f"n{n}"] = {
            "plan_gflop": stats.plan_flops / 1e9,
            "per_candidate_gflop": stats.per_candidate_prefix_flops / 1e9,
            "system1_call_gflop": stats.graph_flops["system1"] / 1e9,
        }
    return out


def ratios_of(cases: list[dict], candidates: list[int]) -> dict[str, float]:
    """Per-candidate baselines over edgevla's shared plan, median over median."""
    ratios: dict[str, float] = {}
    for case in cases:
        lat = case.get("latency", {})
        for n, tag in itertools.product(candidates, ("", "_graph")):
            shared = lat.get(f"shared{tag}_n{n}")
            for base in ("percand_batched", "percand_loop"):
                other = lat.get(f"{base}{tag}_n{n}")
                if shared and other:
                    key = f"{case['config']}/{case['precision']}/n{n}/{base}{tag}_vs_shared{tag}"
                    ratios[key] = other["median_ms"] / shared["median_ms"]
    return ratios


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", nargs="+", default=["small", "pi0-scale"])
    parser.add_argument("--candidates", nargs="+", type=int, default=[5, 1])
    parser.add_argument(
        "--precisions", nargs="+", choices=sorted(DTYPES), default=["fp32", "tf32", "bf16", "fp16"]
    )
    parser.add_argument("--denoise-steps", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=30, help="per method, over two passes")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument(
        "--compile",
        default="none",
        choices=["none", "default", "reduce-overhead", "max-autotune-no-cudagraphs"],
        help="time torch.compile'd entry points (shared plan and System 1 only)",
    )
    parser.add_argument(
        "--cuda-graph",
        action="store_true",
        help="time each plan and System 1 step as one captured CUDA graph instead of eager",
    )
    parser.add_argument("--device", default="cuda", help="cuda; 'cpu' only to smoke-test this file")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()

    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print(
            "bench_gpu_reference: no CUDA device is available (torch "
            f"{torch.__version__}, built for CUDA {torch.version.cuda}); this benchmark "
            "times the reference model on a GPU. Run it on a CUDA machine.",
            file=sys.stderr,
        )
        return 2

    def log(text: str) -> None:
        print(text, flush=True)

    created = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    info = gpu_info(device)
    log(f"{info.get('gpu', args.device)}, torch {info['torch']}, CUDA {info['cuda']}")
    cases: list[dict] = []
    flops: dict[str, object] = {}
    suffix = "" if args.compile == "none" else f"-compile-{args.compile}"
    suffix += "-cudagraph" if args.cuda_graph else ""
    record: dict[str, object] = {
        "benchmark": "gpu_reference",
        "created_utc": created,
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "machine": {**machine(), **info},
        "settings": {
            "configs": args.configs,
            "candidates": args.candidates,
            "precisions": args.precisions,
            "denoise_steps": args.denoise_steps,
            "s1_steps": S1_STEPS,
            "s1_theta": S1_THETA,
            "repeats": args.repeats,
            "warmup": args.warmup,
            "compile": args.compile,
            "cuda_graph": args.cuda_graph,
            "device": args.device,
            "latency": "host wall time, synchronised GPU to chosen index on host",
        },
        "flops": flops,
        "cases": cases,
        "ratios": {},
        "complete": False,
    }
    started = time.perf_counter()
    for name in args.configs:
        cfg = get_config(name)
        flops[name] = flop_counts(cfg, args.candidates, args.denoise_steps)
        for precision in args.precisions:
            log(f"{name} {precision} (at {time.perf_counter() - started:.0f} s)")
            try:
                cases.append(run_case(cfg, precision, args.candidates, args, device, log))
            except Exception as exc:  # e.g. out of memory: record it and go on
                log(traceback.format_exc())
                cases.append({"config": name, "precision": precision, "error": repr(exc)})
            if device.type == "cuda":
                torch.cuda.empty_cache()
            record["ratios"] = ratios_of(cases, args.candidates)
            save(record, args.out, f"gpu-reference{suffix}")  # a partial result survives a kill
    record["complete"] = True
    record["elapsed_s"] = round(time.perf_counter() - started, 1)
    ratios = ratios_of(cases, args.candidates)
    record["ratios"] = ratios

    log("")
    header = (
        f"{'config':<10} {'prec':<5} {'method':<26} {'median ms':>10} {'p90 ms':>9} "
        f"{'min ms':>9} {'event ms':>9} {'peak GiB':>9}"
    )
    log(header)
    log("-" * len(header))
    for case in cases:
        if "error" in case:
            log(f"{case['config']:<10} {case['precision']:<5} ERROR {case['error']}")
            continue
        for method, s in case["latency"].items():
            peak = f"{s['peak_gib']:.2f}" if s["peak_gib"] is not None else "-"
            log(
                f"{case['config']:<10} {case['precision']:<5} {method:<26} "
                f"{s['median_ms']:>10.2f} {s['p90_ms']:>9.2f} {s['min_ms']:>9.2f} "
                f"{s['event_median_ms']:>9.2f} {peak:>9}"
            )
        weights = case["weights_gib"]
        log(
            f"{'':<16} weights {weights if weights is None else round(weights, 2)} GiB, "
            f"{case['params_m']:.1f} M params, checks {case['checks']}"
        )
    for key, value in ratios.items():
        log(f"{key}: {value:.2f}×")
    path = save(record, args.out, f"gpu-reference{suffix}")
    log(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
