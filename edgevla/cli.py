"""`edgevla` command line. Export-side commands import torch lazily; bundle commands never do.

Exit codes: 0 success, 1 refused or failed (the message says why), 2 bad usage.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from rich.markup import escape
from rich.table import Table

from edgevla.cli_learning import step_list
from edgevla.console import err, out
from edgevla.log import setup_logging
from edgevla.runtime.errors import EdgeVlaError, InvalidSetting
from edgevla.runtime.expert_cache import ExpertSchedule
from edgevla.runtime.manifest import EXTRAPOLATIONS


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


# ----------------------------------------------------------------------------- export side


def _load_policy(args: argparse.Namespace):  # -> ReferencePolicy (torch imported lazily)
    from edgevla.export.checkpoint import init_policy, load_checkpoint
    from edgevla.export.configs import get_config

    if args.checkpoint is not None:
        return load_checkpoint(Path(args.checkpoint))
    return init_policy(get_config(args.config), args.seed)


def _prune_request(value: str) -> int | str:
    if value == "auto":
        return value
    try:
        count = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'auto' or a layer count, got {value!r}") from None
    if count < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {count}")
    return count


def cmd_export(args: argparse.Namespace) -> int:
    from edgevla.export.bundle_writer import ExportOptions, export_bundle

    options = ExportOptions(
        precision=args.precision,
        candidates=args.candidates,
        denoise_steps=args.denoise_steps,
        expert_cache_every=args.expert_cache_every,
        expert_full_steps=args.expert_full_steps,
        expert_cache_extrapolation=args.expert_cache_extrapolation,
        prune_layers=args.prune_layers,
        prune_min_cosine=args.prune_min_cosine,
        keep_tokens=args.keep_tokens,
        reuse_tokens=args.reuse_tokens,
        token_refresh_every=args.token_refresh_every,
        action_reuse_max=args.action_reuse_max,
        parity_observations=args.parity_observations,
    )
    if args.steering and not args.calibration:
        raise InvalidSetting(
            "--steering", "directions are found on demonstrations: add --calibration DEMOS"
        )
    with err.status("loading model") as status:
        policy = _load_policy(args)
        calibration = None
        steering = []
        if args.calibration:
            from edgevla.export.pruning import calibration_inputs
            from edgevla.sim.demos import load_demos

            demos = load_demos(Path(args.calibration))
            calibration = calibration_inputs(policy, demos)
            if args.steering:
                from edgevla.export.steering import (
                    pace_direction,
                    pace_expert_direction,
                    speed_direction,
                    trained_on_paces,
                )

                status.update("finding steering direction 'speed'")
                steering.append(speed_direction(policy, demos))
                if trained_on_paces(policy):
                    status.update("finding steering direction 'pace'")
                    steering.append(pace_direction(policy, demos))
                    status.update("finding steering direction 'pace-expert'")
                    steering.append(
                        pace_expert_direction(policy, demos, steps=options.denoise_steps)
                    )
        manifest = export_bundle(
            policy,
            Path(args.out),
            options,
            overwrite=args.overwrite,
            on_progress=status.update,
            calibration=calibration,
            steering=steering,
        )
    pruning = manifest.optimizations.layer_pruning
    if pruning is not None:
        out.print(
            f"layer pruning: removed {pruning.removed or 'none'} of {pruning.source_layers} "
            f"(plan cosine {pruning.plan_cosine:.4f} against the unpruned model, gate "
            f"{pruning.min_cosine}; cuts tried {pruning.cuts_tried})"
        )
    worst = min(
        o.cosine
        for group in (*manifest.parity.graphs.values(), manifest.parity.plan, manifest.parity.react)
        for o in group.values()
    )
    out.print(
        f"bundle written: {args.out} ({manifest.precision}, N={manifest.sampling.candidates}, "
        f"parity passed, worst cosine {worst:.7f})"
    )
    return 0


def cmd_checkpoint_init(args: argparse.Namespace) -> int:
    from edgevla.export.checkpoint import init_policy, save_checkpoint
    from edgevla.export.configs import get_config

    save_checkpoint(init_policy(get_config(args.config), args.seed), Path(args.out))
    out.print(f"checkpoint written: {args.out} (config {args.config}, seed {args.seed})")
    return 0


def cmd_model_info(args: argparse.Namespace) -> int:
    from edgevla.export.configs import get_config
    from edgevla.export.model_stats import model_stats

    cfg = get_config(args.config)
    stats = model_stats(cfg, args.candidates, args.denoise_steps)
    table = Table(title=f"model '{cfg.name}': {sum(stats.params.values()) / 1e6:.2f} M parameters")
    table.add_column("component")
    table.add_column("parameters", justify="right")
    for name, count in stats.params.items():
        table.add_row(name, f"{count / 1e6:.3f} M")
    out.print(table)
    flops = Table(title=f"GFLOPs (N={args.candidates}, K={args.denoise_steps})")
    flops.add_column("graph / pattern")
    flops.add_column("GFLOP", justify="right")
    for graph, value in stats.graph_flops.items():
        flops.add_row(f"{graph} (one call)", f"{value / 1e9:.3f}")
    flops.add_row("plan: shared prefix, N batched", f"{stats.plan_flops / 1e9:.3f}")
    flops.add_row("plan: prefix per candidate", f"{stats.per_candidate_prefix_flops / 1e9:.3f}")
    out.print(flops)
    out.print(
        f"prefix: {cfg.prefix_len} tokens ({cfg.num_visual_tokens} visual); "
        f"cache: k and v, each [layers {cfg.n_layers}, 1, kv heads {cfg.n_kv_heads}, "
        f"tokens {cfg.prefix_len}, head dim {cfg.head_dim}]"
    )
    return 0


# ----------------------------------------------------------------------------- runtime side


def cmd_bundle_verify(args: argparse.Namespace) -> int:
    from edgevla.runtime.backend import CPU, BackendConfig, OnnxRuntimeBackend
    from edgevla.runtime.bundle import load_bundle

    try:
        bundle = load_bundle(args.bundle)
        # Opening every graph checks its real inputs/outputs against the manifest.
        OnnxRuntimeBackend.from_bundle(bundle, BackendConfig(providers=(CPU,), warmup_runs=0))
    except EdgeVlaError as exc:
        err.print(f"[red]REFUSED[/red] {escape(str(exc))}")
        return 1
    out.print(
        f"[green]OK[/green] {args.bundle}: {len(bundle.manifest.files)} files hash-checked, "
        f"{len(bundle.specs)} graphs match their signatures, parity "
        f"{'passed' if bundle.manifest.parity.passed else 'FAILED'}"
    )
    return 0 if bundle.manifest.parity.passed else 1


def cmd_bundle_info(args: argparse.Namespace) -> int:
    from edgevla.runtime.bundle import load_bundle

    try:
        bundle = load_bundle(args.bundle)
    except EdgeVlaError as exc:
        err.print(f"[red]REFUSED[/red] {escape(str(exc))}")
        return 1
    m, cfg = bundle.manifest, bundle.model
    out.print(f"[bold]{bundle.path}[/bold]  schema {m.schema_version}, created {m.created_utc}")
    out.print(
        f"model '{cfg.name}', precision {m.precision}, {m.sampling.candidates} candidates, "
        f"{m.sampling.denoise_steps} denoising steps, System 1 θ1={m.sampling.s1_theta} "
        f"in {m.sampling.s1_steps} steps"
    )
    out.print(
        f"observation: {cfg.num_cameras} cameras {cfg.image_size}×{cfg.image_size}, "
        f"state {m.action_space.state_names}, instruction ≤ {m.tokenizer.max_tokens} tokens"
    )
    out.print(
        f"action: {m.action_space.kind}, chunk {cfg.chunk_len} × {m.action_space.action_names} "
        f"every {m.action_space.step_period_s} s"
    )
    for line in _optimization_lines(m):
        out.print(line)
    table = Table(title="graphs")
    for column in ("graph", "inputs", "outputs", "MB"):
        table.add_column(column)
    for name, g in m.graphs.items():
        table.add_row(
            name,
            "\n".join(f"{t.name} {t.dtype}{t.shape}" for t in g.inputs),
            "\n".join(f"{t.name} {t.dtype}{t.shape}" for t in g.outputs),
            f"{m.files[g.file].bytes / 1e6:.2f}",
        )
    out.print(table)
    parity = Table(title=f"parity vs PyTorch ({m.parity.observations} observations)")
    for column in ("graph", "output", "cosine", "max abs err", "passed"):
        parity.add_column(column)
    for group, outputs in {
        **m.parity.graphs,
        "plan": m.parity.plan,
        "react": m.parity.react,
    }.items():
        for name, o in outputs.items():
            parity.add_row(
                group, name, f"{o.cosine:.6f}", f"{o.max_abs_err:.2e}", "yes" if o.passed else "NO"
            )
    out.print(parity)
    out.print("versions: " + ", ".join(f"{k} {v}" for k, v in m.library_versions.items()))
    return 0


def _optimization_lines(m) -> list[str]:
    """What the bundle was pruned and cached with, and its reuse defaults, in words."""
    o, r, s = m.optimizations, m.reuse, m.sampling
    lines = []
    if o.layer_pruning is not None:
        lp = o.layer_pruning
        lines.append(
            f"layer pruning: removed {lp.removed or 'none'} of {lp.source_layers} prefix layers "
            f"(plan cosine {lp.plan_cosine:.4f}, gate {lp.min_cosine})"
        )
    if o.token_pruning is not None:
        tp = o.token_pruning
        lines.append(f"token pruning: {tp.keep_tokens} of {tp.visual_tokens} visual tokens kept")
    if o.token_reuse is not None:
        lines.append(
            f"token reuse: {o.token_reuse.recompute_tokens} of {o.token_reuse.visual_tokens} "
            f"visual tokens recomputed, a full prefix every {r.token_refresh_every} plans"
        )
    schedule = ExpertSchedule.from_sampling(s)
    if len(schedule.full_steps) < s.denoise_steps:
        lines.append(f"action-expert caching: blocks run on {schedule.describe(s.denoise_steps)}")
    if r.action_reuse_max:
        lines.append(f"action reuse: up to {r.action_reuse_max} plans skipped in a row")
    for d in o.steering:
        lines.append(
            f"steering direction '{d.name}' at the {d.site} ({d.calibration_rows} calibration rows)"
        )
    return lines or ["no pruning, caching or reuse"]


def cmd_bundle_warmup(args: argparse.Namespace) -> int:
    import onnxruntime as ort

    from edgevla.runtime.backend import TENSORRT, BackendConfig, OnnxRuntimeBackend
    from edgevla.runtime.bundle import load_bundle

    available = ort.get_available_providers()
    if TENSORRT not in available:
        message = (
            f"TensorRT is not available in this onnxruntime {ort.__version__} "
            f"(providers: {', '.join(available)}); no engines to build. On a Jetson, install "
            "JetPack's onnxruntime-gpu built with TensorRT."
        )
        if args.require_tensorrt:
            err.print(f"[red]FAILED[/red] {escape(message)}")
            return 1
        err.print(f"[yellow]note[/yellow] {escape(message)} Warming up what is available.")
    providers = "auto" if args.providers == "auto" else tuple(args.providers.split(","))
    backend = OnnxRuntimeBackend.from_bundle(
        load_bundle(args.bundle), BackendConfig(providers=providers, warmup_runs=args.runs)
    )
    times = ", ".join(f"{g} {s * 1e3:.1f} ms" for g, s in backend.warmup_s.items())
    out.print(f"warm-up on {backend.providers[0]} ({args.runs} runs per graph): {times}")
    return 0


def _injection(text: str):
    from edgevla.runtime.faults import Fault

    name, sep, at = text.partition("@")
    try:
        fault = Fault.parse(name)
        t = float(at) if sep else float("nan")
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    if not t >= 0:
        raise argparse.ArgumentTypeError(
            f"expected FAULT@SECONDS, e.g. policy-hang@5, got {text!r}"
        )
    return fault, t


def cmd_run(args: argparse.Namespace) -> int:
    from edgevla.runtime.bundle import load_bundle
    from edgevla.runtime.config import load_config, to_toml
    from edgevla.runtime.supervisor import RunOptions, run

    config = load_config(args.config)
    if args.steer:
        import msgspec

        from edgevla.runtime.steering import parse_steer

        steer = {**config.policy.steer, **parse_steer(args.steer)}
        config = msgspec.structs.replace(
            config, policy=msgspec.structs.replace(config.policy, steer=steer)
        )
    if args.print_config:
        out.print(to_toml(config), markup=False)
        return 0
    bundle = load_bundle(config.policy.bundle)  # refuse a bad bundle before moving anything
    if config.policy.steer:
        from edgevla.runtime.steering import steering_inputs

        steering_inputs(bundle.model, bundle.manifest.optimizations.steering, config.policy.steer)
    if bundle.model.num_cameras != len(config.cameras.names):
        err.print(
            f"[red]error:[/red] the bundle takes {bundle.model.num_cameras} cameras, "
            f"cameras.names lists {len(config.cameras.names)}"
        )
        return 1
    options = RunOptions(duration_s=args.duration, injections=args.inject, live=not args.quiet)
    report_path = Path(args.report) if args.report else None
    plot_path = Path(args.plot) if args.plot else None
    report = run(config, options, report_path, plot_path)
    _print_report(report)
    if report_path:
        out.print(f"report: {report_path}")
    if plot_path:
        out.print(f"plot: {plot_path}")
    if report["safety"]["limit_violations"] or not report["final"]["robot_stopped"]:
        return 1
    if report["control_process"]["exit_code"] != 0:
        # A device that would not connect (the robot still booting, say) or a crash: not a
        # success, and unlike a refused config, worth a restart under systemd.
        return 4
    faults = [t for t in report["trips"] if t["cause"] != "operator-stop"]
    return 3 if faults else 0


_EMULATOR_COMMANDS = {
    "pstop": ("protective_stop", "protective stop"),
    "estop": ("emergency_stop", "e-stop pressed (release, then `power on` and `brake release`)"),
    "release": ("clear_faults", "faults cleared (e-stop released, powered, unlocked)"),
    "drop": ("drop_connections", "client connections dropped"),
    "stall": ("stall_data", "data stream stalled"),
    "resume": ("clear_faults", "stream resumed, faults cleared"),
}


def _emulator_command(emulator, line: str) -> str:
    """One fault-injection line typed at `edgevla ur-emulator` → what it did."""
    words = line.split()
    if not words:
        return ""
    if words[0] == "delay" and len(words) == 2:
        emulator.delay_packets(float(words[1]))
        return f"data packages delayed by {float(words[1]):g} s"
    if words[0] in _EMULATOR_COMMANDS and len(words) == 1:
        method, done = _EMULATOR_COMMANDS[words[0]]
        getattr(emulator, method)()
        return done
    return f"unknown command {line!r}; try: {', '.join(_EMULATOR_COMMANDS)}, delay S"


def cmd_ur_emulator(args: argparse.Namespace) -> int:
    import threading
    import time

    from edgevla.robots.ur.emulator import EmulatorConfig, URControllerEmulator

    config = EmulatorConfig(
        host=args.host, scene_seed=args.scene_seed, unlock_delay_s=args.unlock_delay
    )
    emulator = URControllerEmulator(config)
    try:
        emulator.start()
    except OSError as exc:
        err.print(
            f"[red]error:[/red] cannot listen on {args.host} ports {config.rtde_port}, "
            f"{config.dashboard_port}, {config.script_port} ({exc}); is another controller or "
            "emulator running here?"
        )
        return 1
    out.print(
        f"UR controller emulator (PolyScope {'.'.join(map(str, config.version))}) on "
        f"{args.host}: RTDE {config.rtde_port}, dashboard {config.dashboard_port}, script "
        f"{config.script_port}. Faults: type {', '.join(_EMULATOR_COMMANDS)} or delay S and "
        "Enter. Ctrl-C stops it."
    )

    def commands() -> None:
        for line in sys.stdin:
            try:
                reply = _emulator_command(emulator, line.strip())
            except (ValueError, EdgeVlaError) as exc:
                reply = f"refused: {exc}"
            if reply:
                out.print(reply)

    threading.Thread(target=commands, daemon=True, name="commands").start()
    start = time.monotonic()
    last = None
    try:
        while args.duration is None or time.monotonic() - start < args.duration:
            now = (emulator.runtime_state(), emulator.safety_mode())
            if now != last:
                running = "running" if now[0] == 2 else "stopped"
                out.print(f"program {running}, safety mode {now[1]}")
                last = now
            time.sleep(0.2)
    except KeyboardInterrupt:
        pass
    finally:
        emulator.stop()
    return 0


def _print_report(report: dict) -> None:
    c, s1, s2 = report["control"], report["system1"], report["system2"]
    pe = c["period_error_us"]
    out.print(
        f"control: {c['rate_hz']:.1f} Hz over {report['duration_s']:.1f} s, period error p50 "
        f"{pe['p50']:.0f} µs p99 {pe['p99']:.0f} µs max {pe['max']:.0f} µs, missed "
        f"{c['missed_cycles']}, SCHED_FIFO {'yes' if c['realtime'] else 'no'}"
    )
    out.print(
        f"system 2: {s2['rate_hz']:.2f} Hz, plan p50 {s2['latency_ms']['p50']} ms; system 1: "
        f"{s1['rate_hz']:.1f} Hz, step p50 {s1['latency_ms']['p50']} ms, frame→setpoint p50 "
        f"{s1['frame_to_setpoint_ms']['p50']} ms"
    )
    trips = ", ".join(f"{t['cause']} at {t['t_s']:.2f} s" for t in report["trips"]) or "none"
    safety = report["safety"]
    out.print(
        f"trips: {trips}; limit violations: {safety['limit_violations']} "
        f"(audited {safety['audited_cycles']} commands); final joint speed "
        f"{report['final']['max_joint_speed_rad_s']:.2e} rad/s ({report['final']['state']})"
    )
    task = report.get("task")
    if task:
        when = "" if task["t_s"] is None else f" at {task['t_s']:.2f} s"
        out.print(f"task: {task['instruction']!r} → {task['outcome']}{when}")


def cmd_demo(args: argparse.Namespace) -> int:
    from edgevla.demo import run_demo

    return run_demo(Path(args.bundle), seed=args.seed, instruction=args.instruction, console=out)


# ----------------------------------------------------------------------------- parser


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="edgevla",
        description="Export, verify and run dual-system VLA robot policies on the robot computer.",
        epilog="Exit codes: 0 success, 1 refused or failed, 2 bad usage, 3 run ended in a trip "
        "(robot stopped safely), 4 the control process failed (a device did not connect).",
    )
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more log output")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name: str, func: Callable[[argparse.Namespace], int], help_: str, on=sub):
        p = on.add_parser(name, help=help_, description=help_)
        p.set_defaults(func=func)
        return p

    def group(name: str, help_: str):
        p = sub.add_parser(name, help=help_, description=help_)
        return p.add_subparsers(dest="action", required=True, metavar="ACTION")

    p = add("export", cmd_export, "export a checkpoint or a seeded reference model to a bundle")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--checkpoint", metavar="DIR", help="checkpoint directory")
    source.add_argument("--config", help="named reference config (tiny, small, pi0-scale)")
    p.add_argument("--seed", type=int, default=0, help="initialisation seed with --config")
    p.add_argument("--out", required=True, metavar="BUNDLE", help="bundle directory to write")
    p.add_argument("--precision", choices=("fp32", "fp16"), default="fp32")
    p.add_argument("--candidates", type=_positive, default=5, metavar="N")
    p.add_argument("--denoise-steps", type=_positive, default=10, metavar="K")
    p.add_argument(
        "--expert-cache-every",
        type=_positive,
        default=1,
        metavar="k",
        help="run the action expert's blocks on every k-th Euler step only and reuse their "
        "output in between (EfficientVLA action-head caching; 1: off)",
    )
    p.add_argument(
        "--expert-full-steps",
        type=step_list,
        metavar="0,A,B,…",
        help="action-expert caching by schedule: the 0-based Euler steps that run the "
        "expert's blocks (instead of --expert-cache-every)",
    )
    p.add_argument(
        "--expert-cache-extrapolation",
        choices=EXTRAPOLATIONS,
        default="hold",
        help="what a cached Euler step uses: the last computed blocks' output, or the line "
        "through the last two (default: hold)",
    )
    p.add_argument(
        "--prune-layers",
        type=_prune_request,
        default=0,
        metavar="N|auto",
        help="remove the N most redundant prefix layers (and their expert blocks), or 'auto': "
        "the most that keep plans within --prune-min-cosine of the unpruned model",
    )
    p.add_argument("--prune-min-cosine", type=float, default=0.98, metavar="C")
    p.add_argument(
        "--calibration",
        metavar="DEMOS",
        help="demonstrations whose frames rank the layers and gate pruning (default: random "
        "frames, as the parity gate uses)",
    )
    p.add_argument(
        "--keep-tokens",
        type=_positive,
        metavar="K",
        help="visual-token pruning: only the K visual tokens the token selector scores highest "
        "enter the prefix decoder",
    )
    p.add_argument(
        "--reuse-tokens",
        type=_positive,
        metavar="R",
        help="visual-token reuse (VLA-Cache): add a prefix graph that recomputes R visual "
        "tokens of the previous frame's cache and reuses the rest",
    )
    p.add_argument(
        "--token-refresh-every",
        type=_positive,
        default=4,
        metavar="k",
        help="with --reuse-tokens: a full prefix pass at least every k-th plan",
    )
    p.add_argument(
        "--action-reuse-max",
        type=int,
        default=0,
        metavar="M",
        help="action reuse (FlashVLA): skip up to M plans in a row while the last two agree "
        "(0: off; a runtime setting, recorded as the bundle's default)",
    )
    p.add_argument(
        "--steering",
        action="store_true",
        help="find the 'speed' steering direction on the --calibration demonstrations and "
        "store it in the bundle (run with --steer speed=ALPHA)",
    )
    p.add_argument("--parity-observations", type=_positive, default=3, metavar="M")
    p.add_argument("--overwrite", action="store_true", help="replace an existing bundle")

    checkpoint = group("checkpoint", "checkpoint tools")
    p = add("init", cmd_checkpoint_init, "write a seeded, untrained checkpoint", checkpoint)
    p.add_argument("--config", required=True)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True, metavar="DIR")

    model = group("model", "model tools")
    p = add("info", cmd_model_info, "parameters and FLOPs of a named config", model)
    p.add_argument("--config", required=True)
    p.add_argument("--candidates", type=_positive, default=5, metavar="N")
    p.add_argument("--denoise-steps", type=_positive, default=10, metavar="K")

    bundle = group("bundle", "bundle tools")
    p = add(
        "verify",
        cmd_bundle_verify,
        "check hashes, schema and graph shapes (exit 1 if refused)",
        bundle,
    )
    p.add_argument("bundle", metavar="DIR")
    p = add("info", cmd_bundle_info, "describe a bundle", bundle)
    p.add_argument("bundle", metavar="DIR")
    p = add(
        "warmup",
        cmd_bundle_warmup,
        "build the TensorRT engine cache (where TensorRT exists)",
        bundle,
    )
    p.add_argument("bundle", metavar="DIR")
    p.add_argument("--providers", default="auto", help="'auto' or a comma-separated list")
    p.add_argument("--runs", type=_positive, default=3)
    p.add_argument("--require-tensorrt", action="store_true", help="exit 1 without TensorRT")

    p = add(
        "run",
        cmd_run,
        "run the dual-system runtime (default: simulated UR5e, cameras and MCU, demo bundle)",
    )
    p.add_argument("--config", metavar="PATH", help="runtime TOML (default: the embedded one)")
    p.add_argument("--duration", type=float, metavar="S", help="stop after S seconds")
    p.add_argument("--report", metavar="PATH", help="write the JSON report here")
    p.add_argument("--plot", metavar="PATH", help="write the PNG here")
    p.add_argument(
        "--inject",
        type=_injection,
        action="append",
        default=[],
        metavar="FAULT@T",
        help="inject a fault at T seconds (repeatable): policy-hang, policy-crash, "
        "nan-plan, wild-plan, camera-stall, robot-pstop, robot-disconnect, estop, mcu-silent",
    )
    p.add_argument(
        "--steer",
        action="append",
        default=[],
        metavar="NAME=ALPHA",
        help="activation steering along a direction the bundle carries (e.g. speed=0.5; "
        "repeatable; see docs/optimizations.md)",
    )
    p.add_argument("--print-config", action="store_true", help="print the effective config")
    p.add_argument("--quiet", action="store_true", help="no live view")

    p = add(
        "ur-emulator",
        cmd_ur_emulator,
        "a loopback UR e-Series controller (RTDE, dashboard, script port) over the simulated "
        'UR5e, for dry runs of `edgevla run` with robot.kind = "ur"',
    )
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (loopback)")
    p.add_argument("--scene-seed", type=int, default=0, metavar="S")
    p.add_argument("--duration", type=float, metavar="S", help="stop after S seconds")
    p.add_argument(
        "--unlock-delay", type=float, default=5.0, metavar="S", help="protective-stop unlock delay"
    )

    from edgevla.cli_bridge import register as register_bridge
    from edgevla.cli_calib import register as register_calib
    from edgevla.cli_camera import register as register_camera
    from edgevla.cli_learning import register
    from edgevla.cli_service import register as register_service

    register(sub, add, group)
    register_camera(sub, add, group)
    register_bridge(sub, add, group)
    register_calib(sub, add, group)
    register_service(sub, add, group)

    p = add(
        "demo",
        cmd_demo,
        "one plan and System 1's refinement, step by step, on a held-out simulated frame",
    )
    p.add_argument("--bundle", default="out/demo-bundle", metavar="DIR")
    p.add_argument("--seed", type=int, default=0, help="held-out episode (offset)")
    p.add_argument("--instruction", default="touch the red cube")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args.verbose)
    try:
        return args.func(args)
    except EdgeVlaError as exc:
        err.print(f"[red]error:[/red] {escape(str(exc))}")
        return 1
    except KeyboardInterrupt:
        err.print("interrupted")
        return 130


if __name__ == "__main__":
    sys.exit(main())
