"""Layer pruning (EfficientVLA): drop the prefix layers that change their input least.

A layer whose output is nearly its input (cosine similarity of the hidden state per token,
averaged over a calibration set) does little; EfficientVLA removes the most such layers of the
VLM (32 → 22 in its OpenVLA experiments). Here the action expert has one block per prefix layer,
attending to that layer's keys and values, so removing prefix layer i removes expert block i with
it (pi0's mixture of transformers shares layers the same way).

`auto` tries every cut (the c most redundant layers, c = 1 … n − 1) and takes the deepest whose
plans stay within a fidelity gate of the unpruned model's: the same observations and noise
planned by both, cosine of all candidates ≥ `min_cosine` (default 0.98) on every calibration
observation.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from edgevla.export.checkpoint import ReferencePolicy
from edgevla.export.reference import DualSystemVLA
from edgevla.export.reference_policy import torch_plan
from edgevla.runtime import system2
from edgevla.runtime.errors import InvalidSetting
from edgevla.runtime.expert_cache import ExpertSchedule
from edgevla.runtime.manifest import LayerPruning, Sampling

DEFAULT_MIN_COSINE = 0.98


@torch.no_grad()
def layer_redundancy(
    model: DualSystemVLA, observations: Sequence[system2.PrefixInputs]
) -> list[float]:
    """Per prefix layer: the mean cosine between its input and output hidden state over the
    valid tokens of every observation (1.0: the layer changes nothing)."""
    sums = np.zeros(model.cfg.n_layers)
    for inputs in observations:
        # Unsteered: a steering bias would sit between one layer's output and the next's input.
        feeds = [torch.from_numpy(np.ascontiguousarray(a)) for a in inputs.feeds().values()]
        states = model.prefix_states(*feeds[:4])
        valid = states.mask[0]
        layer_inputs = [states.embeddings, *states.hidden[:-1]]
        for i, (before, after) in enumerate(zip(layer_inputs, states.hidden, strict=True)):
            cos = torch.nn.functional.cosine_similarity(before[0].float(), after[0].float(), dim=-1)
            sums[i] += float(cos[valid].mean())
    return (sums / len(observations)).tolist()


def prune_layers(policy: ReferencePolicy, remove: Sequence[int]) -> ReferencePolicy:
    """A copy of `policy` without prefix layers `remove` (and the expert blocks that read them).

    Every other weight is copied unchanged; RoPE positions do not depend on depth, so nothing
    else moves.
    """
    cfg = policy.config
    removed = sorted(set(remove))
    if any(not 0 <= i < cfg.n_layers for i in removed):
        raise InvalidSetting(
            "prune_layers", f"{removed}: the prefix has layers 0..{cfg.n_layers - 1}"
        )
    keep = [i for i in range(cfg.n_layers) if i not in removed]
    if not keep:
        raise InvalidSetting("prune_layers", "cannot remove every layer")
    pruned_cfg = dataclasses.replace(cfg, n_layers=len(keep))
    source = policy.model
    model = DualSystemVLA(pruned_cfg)
    state = {}
    for key, value in source.state_dict().items():
        head, _, rest = key.partition(".")
        if head in ("layers", "expert_layers"):
            index, _, tail = rest.partition(".")
            if int(index) in removed:
                continue
            key = f"{head}.{keep.index(int(index))}.{tail}"
        state[key] = value.clone()
    model.load_state_dict(state)
    origin = {**policy.origin, "pruned_layers": removed}
    return dataclasses.replace(policy, model=model.eval().to(source.dtype), origin=origin)


@torch.no_grad()
def plan_fidelity(
    reference: DualSystemVLA,
    candidate: DualSystemVLA,
    observations: Sequence[system2.PrefixInputs],
    sampling: Sampling,
    seed: int = 0,
) -> float:
    """The worst cosine, over observations, between both models' candidates from the same noise
    (normalized action units, all N candidates flattened)."""
    rng = np.random.default_rng(seed)
    cfg = reference.cfg
    n = sampling.candidates
    starts = system2.candidate_start_times(n, sampling.start_time_min, sampling.start_time_max)
    worst = 1.0
    for inputs in observations:
        noise = system2.sample_noise(
            rng, (n, cfg.chunk_len, cfg.action_dim), sampling.noise_temperature
        )
        steps, schedule = sampling.denoise_steps, ExpertSchedule.from_sampling(sampling)
        a = torch_plan(reference, inputs, noise, starts, steps, schedule).candidates.ravel()
        b = torch_plan(candidate, inputs, noise, starts, steps, schedule).candidates.ravel()
        a, b = a.astype(np.float64), b.astype(np.float64)
        worst = min(worst, float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b))))
    return worst


@dataclass(frozen=True)
class PruningChoice:
    policy: ReferencePolicy
    record: LayerPruning


def choose_pruning(
    policy: ReferencePolicy,
    request: int | str,
    observations: Sequence[system2.PrefixInputs],
    sampling: Sampling,
    min_cosine: float = DEFAULT_MIN_COSINE,
    on_progress: Callable[[str], None] = lambda _: None,
) -> PruningChoice:
    """Remove the `request` most redundant layers, or with "auto" the most that keep every plan
    within `min_cosine` of the unpruned model's. A fixed count that fails the gate is refused."""
    n_layers = policy.config.n_layers
    if not 0.0 < min_cosine <= 1.0:
        raise InvalidSetting("prune_min_cosine", f"{min_cosine!r} must be in (0, 1]")
    if request != "auto" and (not isinstance(request, int) or not 0 <= request < n_layers):
        raise InvalidSetting("prune_layers", f"{request!r}: 'auto' or a count in 0..{n_layers - 1}")
    # Unsteered: a steering bias is per layer index, which pruning renumbers.
    observations = [dataclasses.replace(o, keep_mask=None, steer_bias=None) for o in observations]
    on_progress("ranking layers by redundancy")
    redundancy = layer_redundancy(policy.model, observations)
    order = sorted(range(n_layers), key=lambda i: -redundancy[i])  # most redundant first
    cuts = range(1, n_layers) if request == "auto" else [request] if request else []
    best, best_cosine, best_removed = policy, 1.0, []
    tried: dict[str, float] = {}
    for cut in cuts:
        removed = sorted(order[:cut])
        on_progress(f"pruning layers {removed}: fidelity against the unpruned model")
        pruned = prune_layers(policy, removed)
        cosine = plan_fidelity(policy.model, pruned.model, observations, sampling)
        tried[str(cut)] = round(cosine, 6)
        if cosine < min_cosine:
            if request != "auto":
                raise InvalidSetting(
                    "prune_layers",
                    f"removing layers {removed} gives plan cosine {cosine:.4f} against the "
                    f"unpruned model, below the gate {min_cosine} (try 'auto' or fewer layers)",
                )
            continue
        best, best_cosine, best_removed = pruned, cosine, removed
    record = LayerPruning(
        source_layers=n_layers,
        removed=best_removed,
        redundancy=[round(r, 6) for r in redundancy],
        plan_cosine=round(best_cosine, 6),
        min_cosine=min_cosine,
        cuts_tried=tried,
        calibration_observations=len(observations),
    )
    return PruningChoice(best, record)


def calibration_inputs(
    policy: ReferencePolicy, demos, count: int = 16, seed: int = 0
) -> list[system2.PrefixInputs]:
    """`count` rows of a demonstration set (`edgevla.sim.demos.DemoSet`) as the policy's
    prefix inputs: a trained policy's layers are ranked on frames of its own task."""
    from edgevla.runtime.normalization import Normalizer
    from edgevla.runtime.tokenizer import InstructionTokenizer

    if len(demos) == 0:
        raise InvalidSetting("calibration", "the demonstration set is empty")
    cfg = policy.config
    want = (cfg.num_cameras, cfg.image_size, cfg.image_size, 3)
    if tuple(demos.images.shape[1:]) != want:
        raise InvalidSetting(
            "calibration", f"frames {list(demos.images.shape[1:])}, the model takes {list(want)}"
        )
    tokenizer = InstructionTokenizer(policy.tokenizer, cfg.max_instruction_tokens)
    normalizer = Normalizer.from_manifest(policy.normalization)
    size = min(count, len(demos))
    rows = np.random.default_rng(seed).choice(len(demos), size=size, replace=False)
    inputs = []
    for i in sorted(rows):
        ids, mask = tokenizer.encode(demos.instruction(int(i)))
        inputs.append(
            system2.PrefixInputs(
                images=np.ascontiguousarray(demos.images[i][None]),
                instruction_ids=ids,
                instruction_mask=mask,
                state=normalizer.normalize_state(demos.state[i])[None],
            )
        )
    return inputs
