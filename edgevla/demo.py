"""`edgevla demo`: one System 2 plan and System 1's refinement, step by step, from a bundle.

It shows what the runtime computes on one observation — the candidates with their Q values, the
chosen one, System 1's corrections and the timings — on the first frame of a held-out episode of
the simulated touch task. `make demo` exports the trained checkpoint to the default bundle and
runs the whole runtime; this is the close-up.
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

from edgevla.runtime.errors import BundleFileMissing
from edgevla.runtime.policy import DualSystemPolicy, Observation


def first_observation(policy: DualSystemPolicy, instruction: str, seed: int) -> Observation:
    """Both cameras' first frames and the start state of held-out touch episode `seed`."""
    from edgevla.sim.camera import start_frames  # the simulator is an optional extra
    from edgevla.sim.tasks import held_out_seeds, touch_episode

    episode = touch_episode(held_out_seeds(seed, 1)[0])
    images = start_frames(episode, policy.bundle.model.image_size)
    state = np.asarray([*episode.initial_q, episode.initial_gripper], dtype=np.float32)
    return Observation(images=images, state=state, instruction=instruction)


def run_demo(bundle: Path, seed: int, instruction: str, console: Console) -> int:
    if not (bundle / "manifest.json").is_file():
        raise BundleFileMissing(
            bundle / "manifest.json",
            None,
            "no bundle here: run `make demo`, or `edgevla export --checkpoint "
            f"checkpoints/touch-tiny --out {bundle}`",
        )
    policy = DualSystemPolicy.from_dir(str(bundle))
    rng = np.random.default_rng(seed)
    obs = first_observation(policy, instruction, seed)
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
    origin = policy.bundle.manifest.export_options.get("origin", {})
    if "behaviour_cloning" not in origin:
        console.print(
            "[dim]This bundle's weights are untrained (seeded initialisation): the numbers show "
            "the pipeline, not a skill.[/dim]"
        )
    return 0
