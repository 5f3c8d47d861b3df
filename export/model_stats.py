"""Parameter counts and FLOPs of the reference model's graphs, traced on the meta device.

Nothing is allocated, so `pi0-scale` (about 3 B parameters) can be sized on any machine.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.utils.flop_counter import FlopCounterMode

from edgevla.export.onnx_export import graph_module
from edgevla.export.reference import DualSystemVLA
from edgevla.runtime.model_config import ModelConfig, graph_specs

_TORCH_DTYPES = {
    "float32": torch.float32,
    "float16": torch.float16,
    "int64": torch.int64,
    "uint8": torch.uint8,
    "bool": torch.bool,
}


@dataclass(frozen=True)
class ModelStats:
    params: dict[str, int]  # per component
    graph_flops: dict[str, int]  # one call of each graph at N candidates
    plan_flops: int  # prefix once + K expert steps over N + value
    per_candidate_prefix_flops: int  # Hume's released pattern: prefix and K steps per candidate


def _component_params(model: DualSystemVLA) -> dict[str, int]:
    groups = {
        "vision": ("vision.", "vision_proj."),
        "prefix_decoder": ("embed_tokens.", "state_proj.", "value_query", "layers.", "final_norm."),
        "token_selector": ("selector.",),
        "action_expert": (
            "action_in.",
            "action_time_mlp.",
            "expert_layers.",
            "expert_norm.",
            "action_out.",
        ),
        "value_head": ("critics.",),
        "system1": ("system1.",),
    }
    counts = dict.fromkeys(groups, 0)
    for name, p in model.named_parameters():
        group = next(g for g, prefixes in groups.items() if name.startswith(prefixes))
        counts[group] += p.numel()
    return counts


def _flops(model: DualSystemVLA, graph: str, candidates: int) -> int:
    spec = graph_specs(model.cfg, candidates, "fp32")[graph]
    module = graph_module(model, graph, "fp32")
    args = [torch.zeros(t.shape, dtype=_TORCH_DTYPES[t.dtype], device="meta") for t in spec.inputs]
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        module(*args)
    return int(counter.get_total_flops())


def model_stats(cfg: ModelConfig, candidates: int = 5, denoise_steps: int = 10) -> ModelStats:
    with torch.device("meta"):
        model = DualSystemVLA(cfg).eval()
    flops = {g: _flops(model, g, candidates) for g in ("prefix", "expert_step", "value", "system1")}
    expert_one = _flops(model, "expert_step", 1)
    value_one = _flops(model, "value", 1)
    return ModelStats(
        params=_component_params(model),
        graph_flops=flops,
        plan_flops=flops["prefix"] + denoise_steps * flops["expert_step"] + flops["value"],
        per_candidate_prefix_flops=candidates
        * (flops["prefix"] + denoise_steps * expert_one + value_one),
    )
