"""The parity gate: exported graphs against the PyTorch model, per graph and per plan.

Every graph output and the whole System 2 plan and System 1 reaction are compared with the
float32 PyTorch model on a set of observations, against the thresholds of
`edgevla.runtime.parity_thresholds` (which the bundle loader re-checks): cosine and max abs
error for graph outputs and normalized actions, max abs error for Q and for the chosen chunk in
robot units, and agreement on the chosen candidate where PyTorch's choice is not a near tie.
A failure names the graph and the numbers.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from edgevla.export.checkpoint import ReferencePolicy
from edgevla.export.reference_policy import torch_plan, torch_react
from edgevla.runtime import system1, system2
from edgevla.runtime.backend import InferenceBackend
from edgevla.runtime.errors import EdgeVlaError, NonFiniteOutput
from edgevla.runtime.expert_cache import ExpertSchedule
from edgevla.runtime.manifest import ChoiceParity, OutputParity, ParityReport, Sampling
from edgevla.runtime.model_config import GRAPH_NAMES
from edgevla.runtime.normalization import Normalizer
from edgevla.runtime.parity_thresholds import THRESHOLDS, describe_gate, output_passes
from edgevla.runtime.steering import SteeringInputs, neutral
from edgevla.runtime.tokenizer import InstructionTokenizer

PARITY_INSTRUCTIONS = (
    "touch the red cube",
    "push the blue block to the green mark",
    "pick up the yellow cube and place it on the tray slowly",
)


class ParityError(EdgeVlaError):
    """An exported graph disagrees with PyTorch beyond the precision's thresholds."""


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

    def report(self, group: str, thresholds: dict[str, float]) -> dict[str, OutputParity]:
        out = {}
        for name, (c, e) in self.worst.get(group, {}).items():
            # Rounded first, so that `passed` is exactly what the loader recomputes.
            cosine, err = round(c, 8), float(f"{e:.3e}")
            passed = output_passes(thresholds, group, name, cosine, err)
            out[name] = OutputParity(cosine=cosine, max_abs_err=err, passed=passed)
        return out


def parity_inputs(policy: ReferencePolicy, count: int, seed: int) -> list[system2.PrefixInputs]:
    """Observations for the gate: random frames and states, real instructions."""
    cfg = policy.config
    rng = np.random.default_rng(seed)
    tokenizer = InstructionTokenizer(policy.tokenizer, cfg.max_instruction_tokens)
    observations = []
    for i in range(count):
        ids, mask = tokenizer.encode(PARITY_INSTRUCTIONS[i % len(PARITY_INSTRUCTIONS)])
        shape = (1, cfg.num_cameras, cfg.image_size, cfg.image_size, 3)
        # Neutral steering on the first observation, as the runtime runs by default; then a
        # steer bias, and on every third one FFN neurons switched off, so both inputs are gated.
        steering = neutral(cfg)
        if i % 3 >= 1:
            bias = 0.1 * rng.standard_normal(steering.steer_bias.shape)
            steering = SteeringInputs(steering.keep_mask, bias.astype(np.float32))
        if i % 3 == 2:
            keep = (rng.random(steering.keep_mask.shape) > 0.1).astype(np.float32)
            steering = SteeringInputs(keep, steering.steer_bias)
        observations.append(
            system2.PrefixInputs(
                images=rng.integers(0, 256, shape, dtype=np.uint8),
                instruction_ids=ids,
                instruction_mask=mask,
                state=rng.standard_normal((1, cfg.state_dim)).astype(np.float32),
                keep_mask=steering.keep_mask,
                steer_bias=steering.steer_bias,
            )
        )
    return observations


_PREFIX_OUTPUTS = (
    "prefix_k",
    "prefix_v",
    "prefix_mask",
    "value_summary",
    "token_scores",
    "kept_tokens",
)


def _reuse_parity(
    model: torch.nn.Module,
    backend: InferenceBackend,
    inputs: system2.PrefixInputs,
    cache: dict[str, np.ndarray],
    recompute_tokens: int,
    rng: np.random.Generator,
    tally: _Tally,
) -> None:
    """`prefix_reuse` against PyTorch: this observation over another one's cache."""
    cfg = model.cfg
    tokens = np.sort(rng.choice(cfg.num_visual_tokens, recompute_tokens, replace=False))[None]
    feeds = {
        **inputs.feeds(),
        "cache_k": cache["prefix_k"],
        "cache_v": cache["prefix_v"],
        "recompute_tokens": tokens.astype(np.int64),
    }
    with torch.no_grad():
        ref = model.encode_prefix_reuse(*(torch.from_numpy(v) for v in feeds.values()))
    got = backend.run("prefix_reuse", feeds)
    for name, value in zip(_PREFIX_OUTPUTS, ref, strict=True):
        tally.add("prefix_reuse", name, value.numpy(), got[name])


def run_parity_gate(
    policy: ReferencePolicy,
    backend: InferenceBackend,
    precision: str,
    sampling: Sampling,
    observations: int = 3,
    seed: int = 0,
    on_progress: Callable[[str], None] | None = None,
    recompute_tokens: int | None = None,
) -> ParityReport:
    """Compare `backend` (the exported graphs) with the float32 PyTorch model.

    Mismatches are reported, not raised. Only a NaN or Inf from the exported graphs inside a
    whole plan or reaction, which the runtime itself refuses, raises ParityError naming it.
    A token-pruned policy's model keeps its tokens in PyTorch too; `recompute_tokens` gates
    the `prefix_reuse` graph as well.
    """
    model, cfg = policy.model, policy.config
    thresholds = THRESHOLDS[precision]
    margin = thresholds["choice_margin"]
    kv_dtype = np.float16 if precision == "fp16" else np.float32
    rng = np.random.default_rng(seed + 1)
    tally = _Tally()
    choices_agree = decisive = decisive_agree = 0
    n, h, a = sampling.candidates, cfg.chunk_len, cfg.action_dim
    starts = system2.candidate_start_times(n, sampling.start_time_min, sampling.start_time_max)
    normalizer = Normalizer.from_manifest(policy.normalization)
    previous_cache: dict[str, np.ndarray] | None = None
    for i, inputs in enumerate(parity_inputs(policy, observations, seed)):
        if on_progress:
            on_progress(f"parity observation {i + 1}/{observations}")
        feeds = inputs.feeds()
        with torch.no_grad():
            ref = model.encode_prefix(*(torch.from_numpy(v) for v in feeds.values()))
        ref_prefix = dict(zip(_PREFIX_OUTPUTS, (t.numpy() for t in ref), strict=True))
        got = backend.run("prefix", feeds)
        for name, value in ref_prefix.items():
            tally.add("prefix", name, value, got[name])
        if recompute_tokens is not None:
            cache = {name: ref_prefix[name].astype(kv_dtype) for name in ("prefix_k", "prefix_v")}
            _reuse_parity(
                model, backend, inputs, previous_cache or cache, recompute_tokens, rng, tally
            )
            previous_cache = cache

        cache = {
            "prefix_k": ref_prefix["prefix_k"].astype(kv_dtype),
            "prefix_v": ref_prefix["prefix_v"].astype(kv_dtype),
            "prefix_mask": ref_prefix["prefix_mask"],
        }
        noisy = rng.standard_normal((n, h, a)).astype(np.float32)
        t = rng.uniform(0.05, 1.0, n).astype(np.float32)
        with torch.no_grad():
            ref_v, ref_r = model.expert_step(
                *(torch.from_numpy(c) for c in cache.values()),
                torch.from_numpy(noisy),
                torch.from_numpy(t),
            )
        got_v = backend.run("expert_step", {**cache, "noisy_actions": noisy, "time": t})
        tally.add("expert_step", "velocity", ref_v.numpy(), got_v["velocity"])
        tally.add("expert_step", "residual", ref_r.numpy(), got_v["residual"])
        # The cached step on the next step's time, from PyTorch's residual.
        t_next = (t * 0.9).astype(np.float32)
        with torch.no_grad():
            ref_c = model.expert_velocity_cached(
                torch.from_numpy(noisy), torch.from_numpy(t_next), ref_r
            ).numpy()
        got_c = backend.run(
            "expert_cached", {"noisy_actions": noisy, "time": t_next, "residual": ref_r.numpy()}
        )
        tally.add("expert_cached", "velocity", ref_c, got_c["velocity"])

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
        steps, schedule = sampling.denoise_steps, ExpertSchedule.from_sampling(sampling)
        ref_plan = torch_plan(model, inputs, noise, starts, steps, schedule)
        try:
            got_plan = system2.plan(backend, inputs, noise, starts, steps, schedule)
        except NonFiniteOutput as exc:
            raise ParityError(f"parity gate failed at {precision}; plan: {exc}") from exc
        tally.add("plan", "candidates", ref_plan.candidates, got_plan.candidates)
        tally.add("plan", "q", ref_plan.q, got_plan.q)
        top_two = np.sort(ref_plan.q)[-2:] if n > 1 else np.zeros(2)
        is_decisive = bool(top_two[1] - top_two[0] > margin)
        same = ref_plan.chosen == got_plan.chosen
        choices_agree += int(same)
        decisive += int(is_decisive)
        decisive_agree += int(is_decisive and same)
        # The chunk the robot would run: the runtime's own choice. On a near tie either choice
        # is right, so it is compared with PyTorch's version of that same candidate; otherwise
        # with PyTorch's choice, so that a flipped ranking shows up as a large error here too.
        reference = ref_plan.candidates[ref_plan.chosen if is_decisive else got_plan.chosen]
        tally.add(
            "plan",
            "chunk_robot_units",
            normalizer.unnormalize_actions(reference),
            normalizer.unnormalize_actions(got_plan.candidates[got_plan.chosen]),
        )
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
        try:
            got_slice = system1.react(backend, *react_args)
        except NonFiniteOutput as exc:
            raise ParityError(f"parity gate failed at {precision}; react: {exc}") from exc
        tally.add("react", "slice", torch_react(model, *react_args), got_slice)

    names = [*GRAPH_NAMES, *(["prefix_reuse"] if recompute_tokens is not None else [])]
    graphs = {g: tally.report(g, thresholds) for g in names}
    plan = tally.report("plan", thresholds)
    react = tally.report("react", thresholds)
    choice = ChoiceParity(
        agreement=round(choices_agree / observations, 6),
        decisive=decisive,
        passed=decisive_agree == decisive,
    )
    passed = choice.passed and all(
        o.passed for group in (*graphs.values(), plan, react) for o in group.values()
    )
    return ParityReport(
        precision=precision,
        observations=observations,
        thresholds=dict(thresholds),
        graphs=graphs,
        plan=plan,
        react=react,
        choice=choice,
        passed=passed,
    )


def failures(report: ParityReport) -> list[str]:
    """One line per failing output, naming the graph (or plan/react) and the numbers."""
    lines = []
    groups = {**report.graphs, "plan": report.plan, "react": report.react}
    for group, outputs in groups.items():
        for name, o in outputs.items():
            if not o.passed:
                lines.append(
                    f"{group}.{name}: cosine {o.cosine:.6f}, max abs err {o.max_abs_err:.3g} "
                    f"(needs {describe_gate(report.thresholds, group, name)})"
                )
    c = report.choice
    if not c.passed:
        lines.append(
            f"plan.choice: chose another candidate than PyTorch on a decisive observation "
            f"(agreement {c.agreement:.2f} over {report.observations}, {c.decisive} decisive: "
            f"PyTorch's top-two Q margin > {report.thresholds['choice_margin']:g})"
        )
    return lines
