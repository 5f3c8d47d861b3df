"""The parity gate: exported graphs against the PyTorch model, per graph and per plan.

Every graph output and the whole System 2 plan and System 1 reaction are compared with the
float32 PyTorch model on a set of observations. fp32 bundles must match to cosine ≥ 0.9999 and
max abs error ≤ 1e-4; fp16 bundles to graph cosine ≥ 0.999 and action cosine ≥ 0.99 (the
denoising accumulation stays float32 in the runtime). A failure names the graph and the numbers.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from edgevla.export.checkpoint import ReferencePolicy
from edgevla.export.reference_policy import torch_plan, torch_react
from edgevla.runtime import system1, system2
from edgevla.runtime.backend import InferenceBackend
from edgevla.runtime.errors import EdgeVlaError
from edgevla.runtime.manifest import OutputParity, ParityReport, Sampling
from edgevla.runtime.normalization import Normalizer
from edgevla.runtime.tokenizer import InstructionTokenizer

PARITY_INSTRUCTIONS = (
    "touch the red cube",
    "push the blue block to the green mark",
    "pick up the yellow cube and place it on the tray slowly",
)


class ParityError(EdgeVlaError):
    """An exported graph disagrees with PyTorch beyond the precision's thresholds."""


@dataclass(frozen=True)
class Thresholds:
    graph_cosine: float
    graph_max_abs: float | None  # None: not gated at this precision
    action_cosine: float
    action_max_abs: float | None

    def as_dict(self) -> dict[str, float]:
        return {k: v for k, v in vars(self).items() if v is not None}


THRESHOLDS = {
    "fp32": Thresholds(
        graph_cosine=0.9999, graph_max_abs=1e-4, action_cosine=0.9999, action_max_abs=1e-4
    ),
    "fp16": Thresholds(
        graph_cosine=0.999, graph_max_abs=None, action_cosine=0.99, action_max_abs=None
    ),
}


def compare(reference: np.ndarray, actual: np.ndarray) -> tuple[float, float]:
    """(cosine similarity of the flattened tensors, max abs error), in float64."""
    ref = np.asarray(reference, dtype=np.float64).ravel()
    act = np.asarray(actual, dtype=np.float64).ravel()
    if ref.shape != act.shape:
        return 0.0, float("inf")
    if not np.all(np.isfinite(act)):
        return 0.0, float("inf")
    denom = np.linalg.norm(ref) * np.linalg.norm(act)
    cosine = (
        1.0 if denom == 0 and np.array_equal(ref, act) else float(ref @ act / max(denom, 1e-300))
    )
    return cosine, float(np.max(np.abs(ref - act))) if ref.size else 0.0


class _Tally:
    """Worst cosine and worst max-abs error per (group, output) over all observations."""

    def __init__(self) -> None:
        self.worst: dict[str, dict[str, tuple[float, float]]] = {}

    def add(self, group: str, output: str, reference: np.ndarray, actual: np.ndarray) -> None:
        cosine, err = compare(reference, actual)
        old = self.worst.setdefault(group, {}).get(output, (1.0, 0.0))
        self.worst[group][output] = (min(old[0], cosine), max(old[1], err))

    def report(self, group: str, cos_min: float, abs_max: float | None) -> dict[str, OutputParity]:
        return {
            name: OutputParity(
                cosine=round(c, 8),
                max_abs_err=float(f"{e:.3e}"),
                passed=c >= cos_min and (abs_max is None or e <= abs_max),
            )
            for name, (c, e) in self.worst.get(group, {}).items()
        }


def parity_inputs(policy: ReferencePolicy, count: int, seed: int) -> list[system2.PrefixInputs]:
    """Observations for the gate: random frames and states, real instructions."""
    cfg = policy.config
    rng = np.random.default_rng(seed)
    tokenizer = InstructionTokenizer(policy.tokenizer, cfg.max_instruction_tokens)
    observations = []
    for i in range(count):
        ids, mask = tokenizer.encode(PARITY_INSTRUCTIONS[i % len(PARITY_INSTRUCTIONS)])
        shape = (1, cfg.num_cameras, cfg.image_size, cfg.image_size, 3)
        observations.append(
            system2.PrefixInputs(
                images=rng.integers(0, 256, shape, dtype=np.uint8),
                instruction_ids=ids,
                instruction_mask=mask,
                state=rng.standard_normal((1, cfg.state_dim)).astype(np.float32),
            )
        )
    return observations


def run_parity_gate(
    policy: ReferencePolicy,
    backend: InferenceBackend,
    precision: str,
    sampling: Sampling,
    observations: int = 3,
    seed: int = 0,
    on_progress: Callable[[str], None] | None = None,
) -> ParityReport:
    """Compare `backend` (the exported graphs) with the float32 PyTorch model; never raises."""
    model, cfg = policy.model, policy.config
    thresholds = THRESHOLDS[precision]
    kv_dtype = np.float16 if precision == "fp16" else np.float32
    rng = np.random.default_rng(seed + 1)
    tally = _Tally()
    choices_agree = 0
    n, h, a = sampling.candidates, cfg.chunk_len, cfg.action_dim
    starts = system2.candidate_start_times(n, sampling.start_time_min, sampling.start_time_max)
    normalizer = Normalizer.from_manifest(policy.normalization)
    for i, inputs in enumerate(parity_inputs(policy, observations, seed)):
        if on_progress:
            on_progress(f"parity observation {i + 1}/{observations}")
        feeds = inputs.feeds()
        with torch.no_grad():
            ref = model.encode_prefix(*(torch.from_numpy(v) for v in feeds.values()))
        ref_prefix = dict(
            zip(
                ("prefix_k", "prefix_v", "prefix_mask", "value_summary", "token_scores"),
                (t.numpy() for t in ref),
                strict=True,
            )
        )
        got = backend.run("prefix", feeds)
        for name, value in ref_prefix.items():
            tally.add("prefix", name, value, got[name])

        cache = {
            "prefix_k": ref_prefix["prefix_k"].astype(kv_dtype),
            "prefix_v": ref_prefix["prefix_v"].astype(kv_dtype),
            "prefix_mask": ref_prefix["prefix_mask"],
        }
        noisy = rng.standard_normal((n, h, a)).astype(np.float32)
        t = rng.uniform(0.05, 1.0, n).astype(np.float32)
        with torch.no_grad():
            ref_v = model.expert_velocity(
                *(torch.from_numpy(c) for c in cache.values()),
                torch.from_numpy(noisy),
                torch.from_numpy(t),
            ).numpy()
        got_v = backend.run("expert_step", {**cache, "noisy_actions": noisy, "time": t})
        tally.add("expert_step", "velocity", ref_v, got_v["velocity"])

        with torch.no_grad():
            ref_q, ref_qc = model.value(
                torch.from_numpy(ref_prefix["value_summary"]), torch.from_numpy(noisy)
            )
        got_q = backend.run(
            "value", {"value_summary": ref_prefix["value_summary"], "actions": noisy}
        )
        tally.add("value", "q", ref_q.numpy(), got_q["q"])
        tally.add("value", "q_critics", ref_qc.numpy(), got_q["q_critics"])

        s1_noisy = noisy[:1, : cfg.s1_horizon]
        s1_t = t[:1]
        with torch.no_grad():
            ref_s1 = model.system1_velocity(
                torch.from_numpy(inputs.images),
                torch.from_numpy(inputs.state),
                torch.from_numpy(s1_noisy),
                torch.from_numpy(s1_t),
            ).numpy()
        got_s1 = backend.run(
            "system1",
            {
                "images": inputs.images,
                "state": inputs.state,
                "noisy_actions": s1_noisy,
                "time": s1_t,
            },
        )
        tally.add("system1", "velocity", ref_s1, got_s1["velocity"])

        # Whole plan and reaction, through the runtime's own functions.
        noise = system2.sample_noise(rng, (n, h, a), sampling.noise_temperature)
        ref_plan = torch_plan(model, inputs, noise, starts, sampling.denoise_steps)
        got_plan = system2.plan(backend, inputs, noise, starts, sampling.denoise_steps)
        tally.add("plan", "candidates", ref_plan.candidates, got_plan.candidates)
        tally.add("plan", "q", ref_plan.q, got_plan.q)
        tally.add(
            "plan",
            "chunk_robot_units",
            normalizer.unnormalize_actions(ref_plan.candidates[ref_plan.chosen]),
            normalizer.unnormalize_actions(got_plan.candidates[ref_plan.chosen]),
        )
        choices_agree += int(ref_plan.chosen == got_plan.chosen)
        slice_ = system1.plan_slice(ref_plan.candidates[ref_plan.chosen], 1, cfg.s1_horizon)
        s1_noise = system2.sample_noise(rng, slice_.shape)
        react_args = (
            inputs.images,
            inputs.state,
            slice_,
            s1_noise,
            sampling.s1_theta,
            sampling.s1_steps,
        )
        tally.add(
            "react", "slice", torch_react(model, *react_args), system1.react(backend, *react_args)
        )

    graphs = {
        g: tally.report(g, thresholds.graph_cosine, thresholds.graph_max_abs)
        for g in ("prefix", "expert_step", "value", "system1")
    }
    plan = tally.report("plan", thresholds.action_cosine, thresholds.action_max_abs)
    react = tally.report("react", thresholds.action_cosine, thresholds.action_max_abs)
    passed = all(o.passed for group in (*graphs.values(), plan, react) for o in group.values())
    return ParityReport(
        precision=precision,
        observations=observations,
        thresholds=thresholds.as_dict(),
        graphs=graphs,
        plan=plan,
        react=react,
        choice_agreement=choices_agree / observations,
        passed=passed,
    )


def failures(report: ParityReport) -> list[str]:
    """One line per failing output, naming the graph (or plan/react) and the numbers."""
    lines = []
    groups = {**report.graphs, "plan": report.plan, "react": report.react}
    t = report.thresholds
    for group, outputs in groups.items():
        for name, o in outputs.items():
            if not o.passed:
                graph = group in report.graphs
                cos_min = t["graph_cosine" if graph else "action_cosine"]
                abs_max = t.get("graph_max_abs" if graph else "action_max_abs")
                limit = f"cosine ≥ {cos_min}" + (f", max abs ≤ {abs_max:g}" if abs_max else "")
                lines.append(
                    f"{group}.{name}: cosine {o.cosine:.6f}, max abs err {o.max_abs_err:.3g} "
                    f"(needs {limit})"
                )
    return lines
