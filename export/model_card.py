"""The checkpoint's model card (README.md), written from the training runs' own records.

Every number in the card comes from the metrics and dataset cards the training commands wrote,
so the card cannot drift from the weights it describes.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from edgevla.export.checkpoint import ReferencePolicy


def _fmt(value: Any, digits: int = 4) -> str:
    if isinstance(value, float):
        return f"{value:.{digits}g}"
    return "—" if value is None else str(value)


def _table(rows: dict[str, Any]) -> str:
    lines = ["| | |", "|---|---|"]
    lines += [f"| {key} | {_fmt(value)} |" for key, value in rows.items()]
    return "\n".join(lines)


# Where each training command records itself in `origin`, in the order a pipeline runs them.
_STAGES = ("behaviour_cloning", "value_training", "system1_training")


def commands_of(origin: dict[str, Any]) -> list[str]:
    """The commands that made a checkpoint, in the order they ran (`origin` keeps it).

    DAgger rows name the policy that was rolled out: its own commands come first, then its
    export, then the rollouts.
    """
    bc = origin.get("behaviour_cloning", {})
    demos_meta = bc.get("demos_meta") or {}
    commands: list[str] = []
    for part in demos_meta.get("parts") or [demos_meta]:
        rolled_out = part.get("policy_origin")
        if rolled_out:
            commands += commands_of(rolled_out)
            commands.append(
                f"edgevla export --checkpoint {rolled_out.get('checkpoint', 'CHECKPOINT')} "
                f"--out {part.get('bundle')} --candidates {part.get('candidates')}"
            )
        commands.append(part.get("command") or "edgevla demos generate ...")
    for key in origin:
        command = origin[key].get("command") if key in _STAGES else None
        if command:
            commands.append(command)
    return list(dict.fromkeys(commands))  # first occurrence of each, in order


def write_model_card(
    out: Path,
    policy: ReferencePolicy,
    policy_metrics: dict[str, Any] | None,
    value_metrics: dict[str, Any],
) -> Path:
    origin = policy.origin
    commands = commands_of(origin)
    cfg = policy.config
    params = sum(p.numel() for p in policy.model.parameters())
    bc = origin.get("behaviour_cloning", {})
    demos_meta = bc.get("demos_meta") or {}
    parts = demos_meta.get("parts") or [demos_meta]
    rollouts = origin.get("value_rollouts", {})
    rollout_summary = rollouts.get("rollouts", {})
    bc_config = bc.get("config", {})
    s1 = origin.get("system1_training", {})
    s1_metrics = (policy_metrics or {}).get("system1") or {}
    sections = [
        f"# touch-tiny: the reference dual-system policy for the simulated touch task\n\n"
        f"Config `{cfg.name}` ({params / 1e6:.2f} M parameters), trained on this project's "
        "simulated UR5e cell to touch the cube whose colour the instruction names. It exists to "
        "measure runtime choices by closed-loop success (`docs/training.md`); it is not a policy "
        "for a real robot.",
        "## Data\n\n"
        + _table(
            {
                "task": "touch the {red, green, blue} cube (sim/tasks.py)",
                "training rows": f"{bc.get('samples')} samples from {bc.get('episodes')} episodes",
                "training sets": "; ".join(
                    f"{part.get('source') or 'expert demonstrations'}, seeds {part.get('seeds')}, "
                    f"{part.get('episodes_kept')} episodes"
                    for part in parts
                ),
                "frames": f"{cfg.num_cameras} cameras (scene, wrist) at {cfg.image_size} px",
                "action space": f"{cfg.chunk_len}-step chunks of 6 joint targets + gripper, "
                f"{policy.action_space.step_period_s} s per step",
                "value rollouts": f"{value_metrics.get('samples')} plans from "
                f"{value_metrics.get('episodes')} policy episodes, seeds "
                f"{rollouts.get('seeds')}, a random candidate executed per plan",
                "rollout success (random candidate)": rollout_summary.get("success_rate"),
            }
        ),
        "## Training\n\n"
        + _table(
            {
                "behaviour cloning": "flow matching (pi0 convention) of prefix + action expert",
                "System 1": f"denoising θ-noised expert slices, θ ~ U(0, {s1.get('s1_theta')}], "
                "as offsets from the state normalized per row; "
                f"{s1.get('steps')} steps, seed {s1.get('seed')}",
                "grounding": (
                    f"on: which patches show the named cube (BCE on prefix layer "
                    f"{bc_config.get('probe_layer')}'s output through a training-only probe, and "
                    f"on the token selector; weight {bc_config.get('grounding_weight')}) and where "
                    f"it lies (MSE; weight {bc_config.get('locate_weight')})"
                    if bc.get("grounding")
                    else "off"
                ),
                "steps × batch": f"{bc_config.get('steps')} × {bc_config.get('batch_size')}",
                "learning rate": f"{bc_config.get('lr')} (warm-up {bc_config.get('warmup_steps')},"
                " cosine)",
                "seed": bc_config.get("seed"),
                "wall time (BC)": None
                if not policy_metrics
                else f"{policy_metrics['wall_time_s']:.0f} s "
                f"({policy_metrics['steps_per_s']:.1f} steps/s)",
                "wall time (System 1)": None
                if not s1_metrics
                else f"{s1_metrics['wall_time_s']:.0f} s ({s1_metrics['steps_per_s']:.1f} steps/s)",
                "value head": f"two critics on their own bootstrap resamples, MSE to the "
                f"discounted return (γ = {rollouts.get('gamma')} per chunk), "
                f"{value_metrics.get('steps')} steps; every other weight unchanged",
            }
        ),
        "## Metrics\n\n"
        + _table(
            {
                **{f"BC final {k}": v for k, v in (bc.get("final") or {}).items() if k != "lr"},
                **{f"BC held-out {k}": v for k, v in (bc.get("val") or {}).items() if k != "step"},
                **{
                    f"System 1 final {k}": v
                    for k, v in (s1.get("final") or {}).items()
                    if k != "lr"
                },
                **{
                    f"System 1 held-out {k}": v
                    for k, v in (s1.get("val") or {}).items()
                    if k != "step"
                },
                "value held-out Spearman": value_metrics["held_out"].get("spearman"),
                "value held-out Pearson": value_metrics["held_out"].get("pearson"),
                "value held-out MSE (min of critics)": value_metrics["held_out"].get("min_mse"),
            }
        )
        + "\n\nClosed-loop success on held-out episodes, per runtime configuration: "
        "`docs/benchmarks.md` (benchmarks/bench_success.py).",
        "## Reproduce\n\n```\n" + "\n".join(commands) + "\n```\n\n"
        "Generation and training are seeded; rollouts run in worker processes whose inference "
        "is single-threaded, so each command repeats exactly on one machine. `make policy` runs "
        'the same pipeline from scratch (`docs/training.md`, "The committed checkpoint", says '
        "where this checkpoint's own history differs from it).",
    ]
    path = out / "README.md"
    path.write_text("\n\n".join(sections) + "\n")
    return path


def load_metrics(path: Path) -> dict[str, Any] | None:
    return json.loads(path.read_text()) if path.is_file() else None
