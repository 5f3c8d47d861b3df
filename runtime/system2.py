"""System 2: value-guided planning over one shared prefix (pure functions over a backend).

One prefix pass per plan; all N candidates are denoised as one batch over that prefix's KV
cache, each from its own start time (Hume's spread over [t_min, t_max]); the value head scores
them with the prefix's value summary and the best one becomes the plan. Euler integration stays
in float32 here whatever precision the graphs run at.

Flow convention (pi0): x_t = t·noise + (1 − t)·actions, velocity = noise − actions, t: 1 → 0.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from edgevla.runtime.backend import InferenceBackend
from edgevla.runtime.errors import NonFiniteOutput
from edgevla.runtime.expert_cache import ExpertSchedule, ResidualCache


@dataclass(frozen=True)
class PrefixInputs:
    """Feeds of the prefix graph: one observation, already tokenized and normalized."""

    images: np.ndarray  # uint8 [1, cameras, S, S, 3]
    instruction_ids: np.ndarray  # int64 [1, T]
    instruction_mask: np.ndarray  # bool [1, T]
    state: np.ndarray  # float32 [1, state_dim], normalized
    # Activation steering (runtime.steering): ones and zeros leave the model unchanged. The
    # graphs need both; None (PyTorch only: calibration, pruning) means no steering at all.
    keep_mask: np.ndarray | None = None  # float32 [layers, ffn_dim]
    steer_bias: np.ndarray | None = None  # float32 [layers, d_model]

    def feeds(self) -> dict[str, np.ndarray]:
        feeds = {
            "images": self.images,
            "instruction_ids": self.instruction_ids,
            "instruction_mask": self.instruction_mask,
            "state": self.state,
        }
        if self.keep_mask is not None and self.steer_bias is not None:
            feeds["keep_mask"] = self.keep_mask
            feeds["steer_bias"] = self.steer_bias
        return feeds


@dataclass(frozen=True)
class Prefix:
    """The prefix graph's outputs: the per-layer KV cache every candidate attends to."""

    k: np.ndarray
    v: np.ndarray
    mask: np.ndarray
    value_summary: np.ndarray
    token_scores: np.ndarray  # float32 [visual tokens]
    kept_tokens: np.ndarray  # int64 [K]: the visual tokens in the cache (all, unless pruned)


@dataclass(frozen=True)
class ReuseRequest:
    """Visual-token reuse: the previous frame's prefix and the visual tokens to recompute."""

    cache: Prefix
    recompute_tokens: np.ndarray  # int64 [R], distinct and ascending


@dataclass(frozen=True)
class PlanResult:
    """All candidates (normalized action space), their values and the chosen one."""

    candidates: np.ndarray  # float32 [N, H, A]
    q: np.ndarray  # float32 [N]
    q_critics: np.ndarray  # float32 [N, 2]
    chosen: int
    token_scores: np.ndarray  # float32 [visual tokens]
    timings_s: dict[str, float]
    prefix: Prefix | None = None  # the cache this plan attended to (kept for token reuse)
    # What this plan did not compute: "tokens" (visual-token reuse), "action" (the previous
    # plan, re-anchored; FlashVLA's action reuse). Empty for a full plan.
    reused: str = ""

    @property
    def chunk(self) -> np.ndarray:
        return self.candidates[self.chosen]


def require_finite(
    graph: str, output: str, value: np.ndarray, where: str = "", per: str | None = None
) -> None:
    """Refuse NaN/Inf from a graph before it reaches a choice or the robot.

    np.argmax returns the index of the first NaN, so a NaN candidate would win the plan.
    `per` names the first axis (e.g. "candidates") to say which entries are affected.
    """
    finite = np.isfinite(value)
    if finite.all():
        return
    detail = f"{int((~finite).sum())} of {value.size} values"
    if per is not None:
        bad = np.unique(np.argwhere(~finite)[:, 0])
        detail += f" in {per} {bad.tolist()}"
    raise NonFiniteOutput(graph, output, detail + where)


def candidate_start_times(candidates: int, t_min: float, t_max: float) -> np.ndarray:
    """Evenly spread start times, the first candidate from pure noise at t_max."""
    if candidates == 1:
        return np.array([t_max], dtype=np.float32)
    return np.linspace(t_max, t_min, candidates, dtype=np.float32)


def sample_noise(
    rng: np.random.Generator, shape: tuple[int, ...], temperature: float = 1.0
) -> np.ndarray:
    return (rng.standard_normal(shape) * temperature).astype(np.float32)


def encode_prefix(
    backend: InferenceBackend, inputs: PrefixInputs, reuse: ReuseRequest | None = None
) -> Prefix:
    """The prefix pass; with `reuse`, the `prefix_reuse` graph updates the given cache."""
    if reuse is None:
        out = backend.run("prefix", inputs.feeds())
    else:
        feeds = {
            **inputs.feeds(),
            "cache_k": reuse.cache.k,
            "cache_v": reuse.cache.v,
            "recompute_tokens": reuse.recompute_tokens[None].astype(np.int64),
        }
        out = backend.run("prefix_reuse", feeds)
    return Prefix(
        k=out["prefix_k"],
        v=out["prefix_v"],
        mask=out["prefix_mask"],
        value_summary=out["value_summary"],
        token_scores=out["token_scores"][0],
        kept_tokens=out["kept_tokens"][0],
    )


def denoise_candidates(
    backend: InferenceBackend,
    prefix: Prefix,
    noise: np.ndarray,
    start_times: np.ndarray,
    steps: int,
    schedule: ExpertSchedule | None = None,
    expert_bias: np.ndarray | None = None,
) -> np.ndarray:
    """Integrate each candidate from its start time to t = 0 in `steps` Euler steps.

    The action expert's attention and MLP blocks run on the `schedule`'s steps (default: all);
    a step in between runs `expert_cached`, which recomputes only the action tokens' input for
    this step and adds the cache's estimate of the blocks' output (runtime/expert_cache.py).

    `expert_bias` [H, E] (activation steering at the expert's site) is added to the blocks'
    output on every step, and every velocity then comes from `expert_cached` on that sum.
    """
    x = noise.astype(np.float32, copy=True)
    dt = (start_times / steps).astype(np.float32)
    cache = ResidualCache(schedule or ExpertSchedule.every(1, steps))
    for k in range(steps):
        t = (start_times * (1.0 - k / steps)).astype(np.float32)
        graph = "expert_step" if cache.must_compute(k) else "expert_cached"
        if graph == "expert_step":
            feeds = {
                "prefix_k": prefix.k,
                "prefix_v": prefix.v,
                "prefix_mask": prefix.mask,
                "noisy_actions": x,
                "time": t,
            }
            out = backend.run(graph, feeds)
            residual = out["residual"]
            cache.record(k, residual)  # the blocks' own output: steering is added per step
        else:
            residual = cache.estimate(k)
        if expert_bias is not None:
            graph, residual = "expert_cached", residual + expert_bias
        if graph == "expert_cached":
            out = backend.run(graph, {"noisy_actions": x, "time": t, "residual": residual})
        velocity = out["velocity"]
        require_finite(
            graph, "velocity", velocity, f", Euler step {k + 1} of {steps}", "candidates"
        )
        x -= dt[:, None, None] * velocity.astype(np.float32)
    return x


def plan(
    backend: InferenceBackend,
    inputs: PrefixInputs,
    noise: np.ndarray,
    start_times: np.ndarray,
    steps: int,
    schedule: ExpertSchedule | None = None,
    reuse: ReuseRequest | None = None,
    expert_bias: np.ndarray | None = None,
) -> PlanResult:
    """One System 2 plan: prefix once, N candidates batched over it, value-selected."""
    t0 = time.perf_counter()
    prefix = encode_prefix(backend, inputs, reuse)
    t1 = time.perf_counter()
    candidates = denoise_candidates(
        backend, prefix, noise, start_times, steps, schedule, expert_bias
    )
    t2 = time.perf_counter()
    scored = backend.run("value", {"value_summary": prefix.value_summary, "actions": candidates})
    t3 = time.perf_counter()
    q = scored["q"]
    require_finite("value", "q", q, per="candidates")
    return PlanResult(
        candidates=candidates,
        q=q,
        q_critics=scored["q_critics"],
        chosen=int(np.argmax(q)),
        token_scores=prefix.token_scores,
        timings_s={
            "prefix_s": t1 - t0,
            "denoise_s": t2 - t1,
            "value_s": t3 - t2,
            "total_s": t3 - t0,
        },
        prefix=prefix,
        reused="" if reuse is None else "tokens",
    )
