"""`make demo` for now: export the tiny reference model, then plan and react from the bundle.

The runtime half (load, plan, react) is the code the robot runs; the simulated robot arrives
with the runtime issue and replaces the synthetic observation used here.
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

from edgevla.runtime.policy import DualSystemPolicy, Observation

_CUBES = {"red": (200, 40, 40), "green": (40, 170, 60), "blue": (40, 70, 200)}


def synthetic_observation(policy: DualSystemPolicy, instruction: str, seed: int) -> Observation:
    """Grey table, three coloured squares per camera, the arm at its home pose."""
    cfg = policy.bundle.model
    rng = np.random.default_rng(seed)
    s = cfg.image_size
    images = np.full((cfg.num_cameras, s, s, 3), 120, dtype=np.uint8)
    size = max(2, s // 8)
    for cam in range(cfg.num_cameras):
        for colour in _CUBES.values():
            y, x = rng.integers(0, s - size, 2)
            images[cam, y : y + size, x : x + size] = colour
    state = np.asarray(policy.bundle.manifest.normalization.state_mean, dtype=np.float32)
    return Observation(images=images, state=state, instruction=instruction)


def run_demo(out: Path, seed: int, instruction: str, console: Console) -> int:
    from edgevla.export.bundle_writer import ExportOptions, export_bundle
    from edgevla.export.checkpoint import init_policy
    from edgevla.export.configs import get_config

    with console.status("exporting the tiny reference model") as status:
        start = time.perf_counter()
        manifest = export_bundle(
            init_policy(get_config("tiny"), seed),
            out,
            ExportOptions(),
            overwrite=True,
            on_progress=status.update,
        )
    console.print(
        f"exported {out} in {time.perf_counter() - start:.1f} s; parity gate passed "
        f"(plan max abs err {manifest.parity.plan['candidates'].max_abs_err:.1e})"
    )

    policy = DualSystemPolicy.from_dir(str(out))
    rng = np.random.default_rng(seed)
    obs = synthetic_observation(policy, instruction, seed)
    console.print(f"providers {policy.backend.providers}; instruction {instruction!r}")
    console.print(f"tokens: {policy.tokenizer.tokens(instruction)}")

    plan = policy.plan(obs, rng)
    result, sampling = plan.result, policy.sampling
    table = Table(title=f"System 2: {sampling.candidates} candidates over one prefix")
    for column in ("candidate", "Q = min(critics)", "critic 1", "critic 2", "first action (rad)"):
        table.add_column(column)
    for i in range(sampling.candidates):
        first = policy.normalizer.unnormalize_actions(result.candidates[i][0])
        table.add_row(
            f"{i}{' ← chosen' if i == result.chosen else ''}",
            f"{result.q[i]:+.4f}",
            f"{result.q_critics[i, 0]:+.4f}",
            f"{result.q_critics[i, 1]:+.4f}",
            " ".join(f"{v:+.3f}" for v in first),
        )
    console.print(table)
    timings = ", ".join(f"{k} {v * 1e3:.2f} ms" for k, v in result.timings_s.items())
    console.print(f"plan timings: {timings}")

    names = policy.bundle.manifest.action_space.action_names
    period = policy.bundle.manifest.action_space.step_period_s
    react = Table(title="System 1: refined slice for 'now', step by step (first action shown)")
    react.add_column("t (s)")
    for name in names:
        react.add_column(name)
    react.add_column("Δ vs plan (rad)")
    latencies = []
    for step in range(policy.bundle.model.chunk_len):
        begin = time.perf_counter()
        refined = policy.react(plan, step, obs, rng)
        latencies.append(time.perf_counter() - begin)
        delta = float(np.max(np.abs(refined[0, :6] - plan.chunk[step, :6])))
        react.add_row(f"{step * period:.2f}", *(f"{v:+.3f}" for v in refined[0]), f"{delta:.3f}")
    console.print(react)
    console.print(
        f"System 1 step: median {statistics.median(latencies) * 1e3:.2f} ms over "
        f"{len(latencies)} steps ({sampling.s1_steps} denoising steps from θ1={sampling.s1_theta})"
    )
    console.print(
        "[dim]These weights are untrained (seeded initialisation): the numbers show the pipeline, "
        "not a skill.[/dim]"
    )
    return 0
