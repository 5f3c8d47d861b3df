"""`edgevla demos`, `edgevla train` and `edgevla eval`: data, training and closed-loop success.

Kept apart from `edgevla.cli` so each command module stays about one thing; `cli.build_parser`
registers these. Training imports torch lazily; `demos` and `eval` never do.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path

import msgspec
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from edgevla.runtime.errors import ConfigError
from edgevla.runtime.manifest import EXTRAPOLATIONS


def _setting(value: object) -> str:
    """A setting as typed: 0.25, 3, linear, 0,4,7,9."""
    if isinstance(value, list | tuple):
        return ",".join(str(v) for v in value)
    return f"{value:g}" if isinstance(value, float) else str(value)


def step_list(text: str) -> tuple[int, ...]:
    """'0,4,7,9' → (0, 4, 7, 9); the order and range are checked with the sampling settings."""
    try:
        return tuple(int(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated step numbers such as 0,4,7,9, got {text!r}"
        ) from None


# TrainConfig.s1_theta, kept here so `--help` does not import torch.
TRAIN_S1_THETA = 0.5


class _Progress(Progress):
    """A rich progress bar on a terminal; a plain line every 30 s into a log or a pipe, where a
    bar is only drawn when it finishes."""

    def __init__(self, console) -> None:
        super().__init__(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[info]}"),
            TimeRemainingColumn(),
            console=console,
            transient=False,
        )
        self._plain = not console.is_terminal
        self._last_line = time.monotonic()

    def update(self, task_id, **kwargs) -> None:  # type: ignore[override]
        super().update(task_id, **kwargs)
        if self._plain and time.monotonic() - self._last_line >= 30.0:
            self._last_line = time.monotonic()
            task = self.tasks[task_id]
            self.console.print(
                f"{task.description}: {task.completed:.0f}/{task.total:.0f} "
                f"{task.fields.get('info', '')}",
                markup=False,
            )


def _progress(console) -> Progress:
    return _Progress(console)


def _episode_tick(progress: Progress, task):
    """`on_episode` callback: advance the bar and count the successes so far."""
    wins = [0]

    def tick(result) -> None:
        wins[0] += result.success
        progress.update(task, advance=1, info=f"{wins[0]} succeeded")

    return tick


# ----------------------------------------------------------------------------- demos


def cmd_demos_generate(args: argparse.Namespace) -> int:
    from edgevla.cli import err, out
    from edgevla.sim.demonstrations import DemoSettings, generate_demos
    from edgevla.sim.demos import save_demos
    from edgevla.sim.tasks import HELD_OUT_SEED_BASE

    if args.seed + args.episodes > HELD_OUT_SEED_BASE:
        raise ConfigError(
            f"demonstration seeds must stay below {HELD_OUT_SEED_BASE} (held out for evaluation)"
        )
    paces = tuple(w for w in args.paces.split(",") if w) if args.paces else ()
    settings = DemoSettings(chunk_len=args.chunk_len, image_size=args.image_size, paces=paces)
    start = time.perf_counter()
    with _progress(err) as progress:
        task = progress.add_task("expert episodes", total=args.episodes, info="")
        failures = [0]

        def tick(done: int, total: int, success: bool) -> None:
            failures[0] += not success
            progress.update(task, completed=done, info=f"{failures[0]} failed")

        demos = generate_demos(
            range(args.seed, args.seed + args.episodes), settings, args.workers, tick
        )
    demos.meta["command"] = _command_line()
    save_demos(demos, Path(args.out))
    out.print(
        f"demonstrations written: {args.out} ({len(demos)} samples from "
        f"{demos.meta['episodes_kept']} episodes; expert success "
        f"{demos.meta['expert_success_rate']:.1%}; {time.perf_counter() - start:.0f} s)"
    )
    return 0


def cmd_demos_dagger(args: argparse.Namespace) -> int:
    from edgevla.cli import err, out
    from edgevla.runtime.bundle import load_bundle
    from edgevla.sim.dagger import collect_dagger
    from edgevla.sim.demos import save_demos
    from edgevla.sim.tasks import HELD_OUT_SEED_BASE

    if args.seed + args.episodes > HELD_OUT_SEED_BASE:
        raise ConfigError(f"DAgger seeds must stay below {HELD_OUT_SEED_BASE} (held out)")
    bundle = load_bundle(args.bundle)
    settings = _episode_settings(args, bundle.model.image_size)
    start = time.perf_counter()
    with _progress(err) as progress:
        task = progress.add_task("policy rollouts", total=args.episodes, info="")
        rows = collect_dagger(
            args.bundle,
            range(args.seed, args.seed + args.episodes),
            settings,
            workers=args.workers,
            on_episode=_episode_tick(progress, task),
        )
    rows.meta["command"] = _command_line()
    # The rolled-out policy's own making, so a checkpoint trained on these rows can say it.
    rows.meta["policy_origin"] = bundle.manifest.export_options.get("origin")
    save_demos(rows, Path(args.out))
    rollouts = rows.meta["rollouts"]
    out.print(
        f"DAgger rows written: {args.out} ({len(rows)} expert-labelled plans from "
        f"{args.episodes} policy episodes; the policy succeeded in {rollouts['success_rate']:.1%}; "
        f"{time.perf_counter() - start:.0f} s)"
    )
    return 0


# ----------------------------------------------------------------------------- train


def _losses_text(losses: dict[str, float]) -> str:
    keys = [k for k in losses if k in ("loss", "bc", "s1", "critic0", "critic1")]
    keys += [k for k in losses if k.startswith("val_")]
    return " ".join(f"{k} {losses[k]:.4f}" for k in keys)


def _command_line() -> str:
    return "edgevla " + shlex.join(sys.argv[1:])


def _write_metrics(path: Path, name: str, metrics: dict) -> None:
    (path / name).write_text(json.dumps(metrics, indent=2, default=float) + "\n")


def cmd_train_policy(args: argparse.Namespace) -> int:
    import torch

    from edgevla.cli import err, out
    from edgevla.export.checkpoint import init_policy, load_checkpoint, save_checkpoint
    from edgevla.export.configs import get_config
    from edgevla.export.training import TrainConfig, train_policy
    from edgevla.sim.demos import concat_demos, load_demos

    if args.threads:
        torch.set_num_threads(args.threads)
    demos = concat_demos([load_demos(Path(path)) for path in args.demos])
    if args.init:
        # Fine-tuning: the checkpoint's weights (its critics too) are the start; its config wins.
        policy = load_checkpoint(Path(args.init))
    else:
        policy = init_policy(get_config(args.config), args.seed)
    model = policy.config
    if demos.images.shape[1:] != (model.num_cameras, model.image_size, model.image_size, 3):
        raise ConfigError(
            f"demonstrations hold frames {list(demos.images.shape[1:])}; config "
            f"'{model.name}' takes {model.num_cameras} cameras at {model.image_size} px"
        )
    if demos.actions.shape[1] != model.chunk_len:
        raise ConfigError(
            f"demonstration chunks have {demos.actions.shape[1]} steps; config '{model.name}' "
            f"has chunk_len {model.chunk_len}"
        )
    cfg = TrainConfig(
        steps=args.steps or TrainConfig.steps,
        batch_size=args.batch_size or TrainConfig.batch_size,
        seed=args.seed,
        image_shift_px=args.image_shift_px,
        prune_keep_tokens=args.prune_keep_tokens,
        **({"prune_share": args.prune_share} if args.prune_share is not None else {}),
        **({"lr": args.lr} if args.lr else {}),
        **({"system1_steps": args.system1_steps} if args.system1_steps else {}),
        **(
            {"warmup_steps": min(TrainConfig.warmup_steps, args.steps // 10)}
            if args.init and args.steps
            else {}
        ),
    )
    grounding = None
    if not args.no_grounding:
        from edgevla.sim.grounding import grounding_labels

        if demos.meta.get("task") != "touch":
            raise ConfigError(
                f"grounding labels exist for the touch task only; {args.demos} holds task "
                f"{demos.meta.get('task')!r} (pass --no-grounding to train without them)"
            )
        grounding = grounding_labels(demos, model.patch_size)
    stages = {
        "system2": ("System 2 behaviour cloning", cfg.steps),
        "system1": ("System 1", cfg.system1_steps),
    }
    with _progress(err) as progress:
        tasks: list = []

        def stage(name: str) -> None:
            description, total = stages[name]
            tasks.append(progress.add_task(description, total=total, info=""))

        trained, metrics = train_policy(
            policy, demos, cfg, _training_tick(err, progress, tasks), grounding, stage
        )
    trained.origin["source"] = "edgevla train policy"
    trained.origin["demos"] = [str(path) for path in args.demos]
    if args.init:
        trained.origin["fine_tuned_from"] = {
            "checkpoint": args.init,
            "note": "System 2 fine-tuned and System 1 retrained here; the value critics are "
            "the start checkpoint's, not retrained",
        }
    trained.origin["behaviour_cloning"]["command"] = _command_line()
    trained.origin["behaviour_cloning"]["demos_meta"] = _demos_meta(demos)
    trained.origin["system1_training"]["command"] = _command_line()
    save_checkpoint(trained, Path(args.out))
    _write_metrics(Path(args.out), "train_policy.json", metrics)
    s1 = metrics["system1"]
    out.print(
        f"checkpoint written: {args.out} (System 2: {cfg.steps} steps, final "
        f"{_losses_text(metrics['final'])}; System 1: {cfg.system1_steps} steps, final "
        f"{_losses_text(s1['final'])}; {metrics['wall_time_s']:.0f} s in all)"
    )
    return 0


def _without_history(metrics: dict) -> dict:
    """A training record without its loss curves (System 1's nested record too)."""
    kept = {k: v for k, v in metrics.items() if not k.endswith("history")}
    if isinstance(kept.get("system1"), dict):
        kept["system1"] = _without_history(kept["system1"])
    return kept


def _demos_meta(demos) -> dict:
    """What the card needs of a training set's making; a combined set keeps each part's."""
    keys = (
        "source",
        "seeds",
        "episodes_run",
        "episodes_kept",
        "expert_success_rate",
        "command",
        "bundle",
        "candidates",
        "policy_origin",
    )
    parts = demos.meta.get("parts")
    if parts:
        return {"parts": [{k: part.get(k) for k in keys} for part in parts]}
    return {k: demos.meta.get(k) for k in keys}


def _training_tick(err, progress, tasks: list):
    """Progress callback: the newest task's bar; held-out scores as a line of their own."""

    def tick(step: int, total: int, losses: dict[str, float]) -> None:
        if any(k.startswith("val_") for k in losses):
            err.print(f"step {step}: {_losses_text(losses)}")
        elif tasks:
            progress.update(tasks[-1], completed=step, info=_losses_text(losses))

    return tick


def cmd_train_system1(args: argparse.Namespace) -> int:
    import torch

    from edgevla.cli import err, out
    from edgevla.export.checkpoint import load_checkpoint, save_checkpoint
    from edgevla.export.model_card import load_metrics, write_model_card
    from edgevla.export.training import TrainConfig, train_system1
    from edgevla.sim.demos import load_demos

    if args.threads:
        torch.set_num_threads(args.threads)
    policy = load_checkpoint(Path(args.checkpoint))
    demos = load_demos(Path(args.demos))
    model = policy.config
    if demos.images.shape[1:] != (model.num_cameras, model.image_size, model.image_size, 3):
        raise ConfigError(
            f"demonstrations hold frames {list(demos.images.shape[1:])}; checkpoint "
            f"'{model.name}' takes {model.num_cameras} cameras at {model.image_size} px"
        )
    cfg = TrainConfig(
        system1_steps=args.steps or TrainConfig.system1_steps,
        s1_theta=args.theta_max,
        seed=args.seed,
    )
    with _progress(err) as progress:
        tasks = [progress.add_task("System 1", total=cfg.system1_steps, info="")]
        trained, metrics = train_system1(policy, demos, cfg, _training_tick(err, progress, tasks))
    trained.origin["system1_training"]["command"] = _command_line()
    trained.origin["system1_training"]["demos"] = str(args.demos)
    trained.origin["system1_training"]["demos_meta"] = _demos_meta(demos)
    out_dir = Path(args.out)
    save_checkpoint(trained, out_dir)
    # The checkpoint's other training records travel with it; System 1's is replaced.
    for name in ("train_policy.json", "train_value.json"):
        recorded = load_metrics(Path(args.checkpoint, name))
        if recorded is not None and Path(args.checkpoint).resolve() != out_dir.resolve():
            _write_metrics(out_dir, name, recorded)
    policy_metrics = load_metrics(out_dir / "train_policy.json")
    if policy_metrics is not None:
        policy_metrics["system1"] = metrics
        policy_metrics = _without_history(policy_metrics)
        _write_metrics(out_dir, "train_policy.json", policy_metrics)
    value_metrics = load_metrics(out_dir / "train_value.json")
    if value_metrics is not None:  # a finished checkpoint: its card follows the new System 1
        write_model_card(out_dir, trained, policy_metrics, value_metrics)
    val = metrics["val"] or {}
    out.print(
        f"checkpoint written: {args.out} (System 1: {cfg.system1_steps} steps in "
        f"{metrics['wall_time_s']:.0f} s; held-out slice error (RMS, joints) "
        f"{val.get('plan_slice_rad', 0):.4f} rad from System 2, "
        f"{val.get('s1_slice_rad', 0):.4f} rad after System 1)"
    )
    return 0


def cmd_train_value(args: argparse.Namespace) -> int:
    import tempfile

    import torch

    from edgevla.cli import err, out
    from edgevla.export.bundle_writer import ExportOptions, export_bundle
    from edgevla.export.checkpoint import load_checkpoint, save_checkpoint
    from edgevla.export.model_card import load_metrics, write_model_card
    from edgevla.export.training import TrainConfig, train_value
    from edgevla.sim.demos import load_values, save_values
    from edgevla.sim.episode import EpisodeSettings
    from edgevla.sim.tasks import HELD_OUT_SEED_BASE
    from edgevla.sim.value_rollouts import collect_value_rollouts

    if args.threads:
        torch.set_num_threads(args.threads)
    policy = load_checkpoint(Path(args.checkpoint))
    if args.rollouts and Path(args.rollouts, "dataset.json").is_file() and not args.recollect:
        values = load_values(Path(args.rollouts))
        out.print(f"using the rollouts in {args.rollouts} ({len(values)} plans)")
    else:
        if args.seed + args.episodes > HELD_OUT_SEED_BASE:
            raise ConfigError(f"rollout seeds must stay below {HELD_OUT_SEED_BASE} (held out)")
        settings = EpisodeSettings(image_size=policy.config.image_size, system1_enabled=False)
        with tempfile.TemporaryDirectory() as tmp:
            bundle = Path(tmp) / "bundle"
            with err.status("exporting the policy for rollouts"):
                export_bundle(policy, bundle, ExportOptions(candidates=args.candidates))
            with _progress(err) as progress:
                task = progress.add_task("rollouts", total=args.episodes, info="")
                values = collect_value_rollouts(
                    bundle,
                    range(args.seed, args.seed + args.episodes),
                    settings,
                    workers=args.workers,
                    on_episode=_episode_tick(progress, task),
                )
        if args.rollouts:
            save_values(values, Path(args.rollouts))
        rollouts = values.meta["rollouts"]
        out.print(
            f"rollouts: {len(values)} plans from {args.episodes} episodes, success "
            f"{rollouts['success_rate']:.1%} with a random candidate per plan"
        )
    cfg = TrainConfig(seed=args.seed_train)
    with _progress(err) as progress:
        task = progress.add_task("value head", total=cfg.value_steps, info="")

        def tick_train(step: int, total: int, losses: dict[str, float]) -> None:
            progress.update(task, completed=step, info=_losses_text(losses))

        trained, metrics = train_value(policy, values, cfg, tick_train)
    trained.origin["value_rollouts"] = values.meta
    trained.origin["value_training"]["command"] = _command_line()
    save_checkpoint(trained, Path(args.out))
    policy_metrics = load_metrics(Path(args.checkpoint, "train_policy.json"))
    if policy_metrics is not None:
        # The full loss history stays with the BC run; the card needs the summary.
        _write_metrics(Path(args.out), "train_policy.json", _without_history(policy_metrics))
    _write_metrics(Path(args.out), "train_value.json", metrics)
    write_model_card(Path(args.out), trained, policy_metrics, metrics)
    held = metrics["held_out"]
    out.print(
        f"checkpoint written: {args.out} (critics trained on {metrics['train_samples']} plans; "
        f"held-out Spearman {held.get('spearman')}, Pearson {held.get('pearson')})"
    )
    return 0


# ----------------------------------------------------------------------------- eval


def _episode_settings(args: argparse.Namespace, image_size: int):
    from dataclasses import replace

    from edgevla.runtime.config import load_config
    from edgevla.sim.evaluation import settings_from_runtime

    settings = settings_from_runtime(load_config(args.config), image_size)
    if args.system1 is not None:
        settings = replace(settings, system1_enabled=args.system1 == "on")
    if args.timeout is not None:
        settings = replace(settings, timeout_s=args.timeout)
    return settings


def cmd_eval(args: argparse.Namespace) -> int:
    from edgevla.cli import err, out
    from edgevla.runtime.bundle import load_bundle
    from edgevla.sim.evaluation import (
        contact_sheet,
        run_policy_episodes,
        settings_record,
        summarize,
    )
    from edgevla.sim.tasks import split_seeds

    bundle = load_bundle(args.bundle)
    settings = _episode_settings(args, bundle.model.image_size)
    if bundle.model.num_cameras != len(settings.cameras):
        raise ConfigError(
            f"the bundle takes {bundle.model.num_cameras} cameras, the config lists "
            f"{len(settings.cameras)}"
        )
    seeds = split_seeds(args.split, args.seed, args.episodes)
    sampling: dict[str, object] = {}
    if args.s1_theta is not None:
        sampling["s1_theta"] = args.s1_theta
    if args.expert_cache_every is not None:
        sampling["expert_cache_every"] = args.expert_cache_every
    if args.expert_full_steps is not None:
        sampling["expert_full_steps"] = list(args.expert_full_steps)
    if args.expert_cache_extrapolation is not None:
        sampling["expert_cache_extrapolation"] = args.expert_cache_extrapolation
    if sampling:
        # Refuse a bad override before any worker starts.
        from edgevla.runtime.manifest import validate_sampling

        validate_sampling(msgspec.structs.replace(bundle.manifest.sampling, **sampling))
    reuse: dict[str, float] = {}
    if args.action_reuse_max is not None:
        reuse["action_reuse_max"] = args.action_reuse_max
    if reuse:
        from edgevla.runtime.manifest import validate_reuse

        validate_reuse(
            msgspec.structs.replace(bundle.manifest.reuse, **reuse), bundle.model.num_visual_tokens
        )
    from edgevla.runtime.steering import parse_steer, steering_inputs

    steer = parse_steer(args.steer)
    steering_inputs(bundle.model, bundle.manifest.optimizations.steering, steer)
    label = (
        f"N={bundle.candidates} "
        f"{'System 2 + System 1' if settings.system1_enabled else 'System 2 only'}"
        + "".join(f" {key}={_setting(value)}" for key, value in {**sampling, **reuse}.items())
        + "".join(f" steer {key}={value:g}" for key, value in steer.items())
    )
    with _progress(err) as progress:
        task = progress.add_task(f"eval {label}", total=len(seeds), info="")
        wins = [0]

        def tick(result) -> None:
            wins[0] += result.success
            done = progress.tasks[task].completed + 1
            progress.update(task, advance=1, info=f"{wins[0]}/{done} succeeded")

        results = run_policy_episodes(
            args.bundle,
            seeds,
            settings,
            workers=args.workers,
            record_every=args.sheet_every if args.sheet else 0,
            sampling=sampling,
            on_episode=tick,
            reuse=reuse,
            steer=steer,
        )
    summary = summarize(results)
    report = {
        "bundle": str(args.bundle),
        "configuration": label,
        "candidates": bundle.candidates,
        "sampling": msgspec.to_builtins(
            msgspec.structs.replace(bundle.manifest.sampling, **sampling)
        ),
        "reuse": msgspec.to_builtins(msgspec.structs.replace(bundle.manifest.reuse, **reuse)),
        "steer": steer,
        "split": args.split,
        "seeds": [seeds[0], seeds[-1]],
        "settings": settings_record(settings),
        "summary": summary,
        "episodes": [r.summary() for r in results],
    }
    table = Table(title=f"closed-loop evaluation: {label}, {len(seeds)} {args.split} episodes")
    for column in ("success", "95 % CI", "time to success p50 / p90", "outcomes"):
        table.add_column(column)
    tts = summary["time_to_success_s"]
    table.add_row(
        f"{summary['success_rate']:.1%} ({summary['successes']}/{summary['episodes']})",
        f"{summary['ci95'][0]:.1%} – {summary['ci95'][1]:.1%}",
        "—" if tts["median"] is None else f"{tts['median']:.2f} s / {tts['p90']:.2f} s",
        ", ".join(f"{k} {v}" for k, v in sorted(summary["outcomes"].items())),
    )
    out.print(table)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
        out.print(f"report: {args.json}")
    if args.sheet:
        contact_sheet(results[: args.sheet_episodes], Path(args.sheet))
        out.print(f"contact sheet: {args.sheet}")
    return 0


def register(sub, add, group) -> None:
    """Add `demos`, `train` and `eval` to the `edgevla` parser (see `cli.build_parser`)."""
    demos = group("demos", "demonstrations of the simulated touch task")
    p = add(
        "generate",
        cmd_demos_generate,
        "record seeded expert demonstrations (closed loop in simulation)",
        demos,
    )
    p.add_argument("--out", required=True, metavar="DIR")
    p.add_argument("--episodes", type=int, default=500, metavar="N")
    p.add_argument("--seed", type=int, default=0, help="first episode seed")
    p.add_argument("--workers", type=int, default=2, metavar="W", help="processes")
    p.add_argument("--chunk-len", type=int, default=8, metavar="H")
    p.add_argument("--image-size", type=int, default=32, metavar="PX")
    p.add_argument(
        "--paces",
        metavar="WORDS",
        help="comma-separated pace words (slowly, quickly): each episode draws one, adds it to "
        "its instruction and runs the expert at that pace (data for speed steering)",
    )
    p = add(
        "dagger",
        cmd_demos_dagger,
        "run a policy bundle closed loop and label every plan's observation with the expert "
        "(DAgger rows, in the demonstrations' format)",
        demos,
    )
    p.add_argument("--bundle", required=True, metavar="DIR")
    p.add_argument("--out", required=True, metavar="DIR")
    p.add_argument("--episodes", type=int, default=300, metavar="N")
    p.add_argument("--seed", type=int, default=300_000, help="first episode seed")
    p.add_argument("--workers", type=int, default=2, metavar="W", help="processes")
    p.add_argument("--config", metavar="PATH", help="runtime TOML (rates, System 1, limits)")
    p.add_argument("--system1", choices=("on", "off"), help="override policy.system1_enabled")
    p.add_argument("--timeout", type=float, metavar="S", help="episode timeout (default 8 s)")

    train = group("train", "train the reference policy (PyTorch, export side)")
    p = add(
        "policy",
        cmd_train_policy,
        "behaviour cloning (flow matching) of System 2 (prefix, action expert), then System 1",
        train,
    )
    p.add_argument(
        "--demos",
        required=True,
        nargs="+",
        metavar="DIR",
        help="demonstration sets (several are combined: demonstrations plus DAgger rows)",
    )
    p.add_argument("--config", default="tiny", help="named model config")
    p.add_argument(
        "--init",
        metavar="CHECKPOINT",
        help="fine-tune: start from this checkpoint's weights (its config; --config is ignored)",
    )
    p.add_argument("--out", required=True, metavar="CHECKPOINT")
    p.add_argument("--steps", type=int, metavar="N", help="optimizer steps (default: TrainConfig)")
    p.add_argument("--lr", type=float, metavar="LR", help="peak learning rate (default 1e-3)")
    p.add_argument("--system1-steps", type=int, metavar="N", help="System 1 steps (default 4000)")
    p.add_argument(
        "--prune-keep-tokens",
        type=int,
        metavar="K",
        help="pruning-aware training: some steps see only the selector's top K visual tokens, "
        "as a bundle exported with --keep-tokens K runs",
    )
    p.add_argument(
        "--prune-share",
        type=float,
        metavar="F",
        help="share of System 2's steps trained pruned (default 0.5)",
    )
    p.add_argument("--batch-size", type=int, metavar="B")
    p.add_argument("--seed", type=int, default=0, help="initialisation and batch order")
    p.add_argument(
        "--image-shift-px",
        type=int,
        default=0,
        metavar="PX",
        help="random per-camera image shift (augmentation); at 32 px one pixel is centimetres "
        "on the table, so the default is off",
    )
    p.add_argument(
        "--no-grounding",
        action="store_true",
        help="plain behaviour cloning: no probe or token-selector losses (docs/training.md)",
    )
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p = add(
        "system1",
        cmd_train_system1,
        "(re)train System 1 alone on a checkpoint; System 2 and the critics are kept",
        train,
    )
    p.add_argument("--checkpoint", required=True, metavar="DIR")
    p.add_argument("--demos", required=True, metavar="DIR")
    p.add_argument("--out", required=True, metavar="CHECKPOINT")
    p.add_argument("--steps", type=int, metavar="N", help="optimizer steps (default: TrainConfig)")
    p.add_argument(
        "--theta-max",
        type=float,
        default=TRAIN_S1_THETA,
        metavar="θ",
        help="train on re-noise levels in (0, θ]; a bundle may run any θ1 up to it",
    )
    p.add_argument("--seed", type=int, default=0, help="System 1 initialisation and batch order")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p = add(
        "value",
        cmd_train_value,
        "train the value head's critics from outcome-labelled rollouts of the policy",
        train,
    )
    p.add_argument("--checkpoint", required=True, metavar="DIR", help="behaviour-cloned policy")
    p.add_argument("--out", required=True, metavar="CHECKPOINT")
    p.add_argument("--episodes", type=int, default=200, metavar="N")
    p.add_argument("--seed", type=int, default=100_000, help="first rollout episode seed")
    p.add_argument("--candidates", type=int, default=5, metavar="N")
    p.add_argument("--workers", type=int, default=2, metavar="W")
    p.add_argument("--rollouts", metavar="DIR", help="save (or reuse) the rollouts here")
    p.add_argument("--recollect", action="store_true", help="collect even if --rollouts exists")
    p.add_argument("--seed-train", type=int, default=0, help="critic initialisation order")
    p.add_argument("--threads", type=int, default=0)

    p = add(
        "eval",
        cmd_eval,
        "closed-loop success of a bundle on held-out simulated episodes",
    )
    p.add_argument("--bundle", required=True, metavar="DIR")
    p.add_argument("--episodes", type=int, default=50, metavar="N")
    p.add_argument("--seed", type=int, default=0, help="first seed of the split (offset)")
    p.add_argument(
        "--split",
        choices=("held-out", "validation"),
        default="held-out",
        help="held-out: the reported results; validation: for choosing settings first",
    )
    p.add_argument("--config", metavar="PATH", help="runtime TOML (rates, System 1, limits)")
    p.add_argument("--system1", choices=("on", "off"), help="override policy.system1_enabled")
    p.add_argument("--timeout", type=float, metavar="S", help="episode timeout (default 8 s)")
    p.add_argument(
        "--s1-theta", type=float, metavar="θ1", help="System 1 re-noise level (default: bundle's)"
    )
    p.add_argument(
        "--expert-cache-every",
        type=int,
        metavar="k",
        help="action-expert caching: its blocks on every k-th Euler step (default: bundle's)",
    )
    p.add_argument(
        "--expert-full-steps",
        type=step_list,
        metavar="0,A,B,…",
        help="action-expert caching by schedule: the Euler steps that run its blocks "
        "(default: bundle's)",
    )
    p.add_argument(
        "--expert-cache-extrapolation",
        choices=EXTRAPOLATIONS,
        help="what a cached Euler step uses (default: bundle's)",
    )
    p.add_argument(
        "--action-reuse-max",
        type=int,
        metavar="M",
        help="action reuse: skip up to M plans in a row while the last two agree (default: "
        "bundle's)",
    )
    p.add_argument(
        "--steer",
        action="append",
        default=[],
        metavar="NAME=ALPHA",
        help="activation steering along a direction the bundle carries (repeatable)",
    )
    p.add_argument("--workers", type=int, default=2, metavar="W", help="processes")
    p.add_argument("--json", metavar="PATH", help="write the JSON report here")
    p.add_argument("--sheet", metavar="PNG", help="write a contact sheet of the scene camera")
    p.add_argument("--sheet-episodes", type=int, default=6, metavar="K")
    p.add_argument("--sheet-every", type=int, default=6, metavar="FRAMES")
