"""Export the five graphs of a reference model to ONNX at static shapes.

Each graph is a thin module around one entry point of `DualSystemVLA` whose inputs and outputs
are exactly the signature `edgevla.runtime.model_config.graph_specs` declares; the written
file is checked against that signature before anything else uses it.
"""

from __future__ import annotations

import copy
import io
import logging
import warnings
from contextlib import redirect_stdout
from pathlib import Path

import numpy as np
import onnx
import torch
from torch import Tensor, nn

from edgevla.export.reference import DualSystemVLA
from edgevla.runtime.errors import EdgeVlaError
from edgevla.runtime.model_config import GraphSpec, ModelConfig, TensorSpec, cache_dtype

log = logging.getLogger(__name__)
# The exporter logs a warning per torchvision op it cannot register; we use none of them.
logging.getLogger("torch.onnx._internal.exporter._registration").setLevel(logging.ERROR)
# The prefix graph's `kept_tokens` is a constant output when nothing is pruned; the optimizer
# warns that it cannot deduplicate a graph output. Nothing is wrong.
logging.getLogger("onnx_ir.passes.common.initializer_deduplication").setLevel(logging.ERROR)

_ONNX_DTYPES = {
    onnx.TensorProto.FLOAT: "float32",
    onnx.TensorProto.FLOAT16: "float16",
    onnx.TensorProto.INT64: "int64",
    onnx.TensorProto.UINT8: "uint8",
    onnx.TensorProto.BOOL: "bool",
}


class ExportError(EdgeVlaError):
    """A graph could not be exported, or came out with the wrong signature."""


class PrefixGraph(nn.Module):
    """`prefix` (or, with `reuse`, `prefix_reuse`): the model's outputs, the cache cast to the
    bundle's cache dtype."""

    def __init__(self, model: DualSystemVLA, kv_dtype: torch.dtype, reuse: bool = False) -> None:
        super().__init__()
        self.model, self.kv_dtype = model, kv_dtype
        self.encode = model.encode_prefix_reuse if reuse else model.encode_prefix

    def forward(self, *inputs: Tensor) -> tuple[Tensor, ...]:
        k, v, mask, summary, scores, kept = self.encode(*inputs)
        return k.to(self.kv_dtype), v.to(self.kv_dtype), mask, summary, scores, kept


class ExpertStepGraph(nn.Module):
    def __init__(self, model: DualSystemVLA) -> None:
        super().__init__()
        self.model = model

    def forward(
        self,
        prefix_k: Tensor,
        prefix_v: Tensor,
        prefix_mask: Tensor,
        noisy_actions: Tensor,
        time: Tensor,
    ) -> tuple[Tensor, Tensor]:
        return self.model.expert_step(prefix_k, prefix_v, prefix_mask, noisy_actions, time)


class ExpertCachedGraph(nn.Module):
    def __init__(self, model: DualSystemVLA) -> None:
        super().__init__()
        self.model = model

    def forward(self, noisy_actions: Tensor, time: Tensor, residual: Tensor) -> Tensor:
        return self.model.expert_velocity_cached(noisy_actions, time, residual)


class ValueGraph(nn.Module):
    def __init__(self, model: DualSystemVLA) -> None:
        super().__init__()
        self.model = model

    def forward(self, value_summary: Tensor, actions: Tensor) -> tuple[Tensor, Tensor]:
        return self.model.value(value_summary, actions)


class System1Graph(nn.Module):
    def __init__(self, model: DualSystemVLA) -> None:
        super().__init__()
        self.model = model

    def forward(self, images: Tensor, state: Tensor, noisy_actions: Tensor, time: Tensor) -> Tensor:
        return self.model.system1_velocity(images, state, noisy_actions, time)


def model_at_precision(model: DualSystemVLA, precision: str) -> DualSystemVLA:
    if precision == "fp32":
        return model
    return copy.deepcopy(model).half().eval()


def graph_module(model: DualSystemVLA, graph: str, precision: str) -> nn.Module:
    kv = torch.float16 if cache_dtype(precision) == "float16" else torch.float32
    modules = {
        "prefix": lambda: PrefixGraph(model, kv),
        "prefix_reuse": lambda: PrefixGraph(model, kv, reuse=True),
        "expert_step": lambda: ExpertStepGraph(model),
        "expert_cached": lambda: ExpertCachedGraph(model),
        "value": lambda: ValueGraph(model),
        "system1": lambda: System1Graph(model),
    }
    return modules[graph]().eval()


def example_tensor(spec: TensorSpec, rng: np.random.Generator, cfg: ModelConfig) -> Tensor:
    """A valid random value for `spec` (masks all-True, ids inside the vocabulary, token
    indices distinct and ascending, steering near its neutral value)."""
    if spec.name == "recompute_tokens":
        picked = rng.choice(cfg.num_visual_tokens, size=spec.shape[-1], replace=False)
        array = np.sort(picked)[None].astype(np.int64)
    elif spec.name == "keep_mask":
        array = np.ones(spec.shape, dtype=np.float32)
    elif spec.name == "steer_bias":
        array = (0.1 * rng.standard_normal(spec.shape)).astype(np.float32)
    elif spec.dtype == "uint8":
        array = rng.integers(0, 256, spec.shape, dtype=np.uint8)
    elif spec.dtype == "int64":
        array = rng.integers(2, cfg.vocab_size, spec.shape, dtype=np.int64)
    elif spec.dtype == "bool":
        array = np.ones(spec.shape, dtype=bool)
    elif spec.name == "time":
        array = rng.uniform(0.05, 1.0, spec.shape).astype(np.float32)
    else:
        array = rng.standard_normal(spec.shape).astype(spec.dtype)
    return torch.from_numpy(array)


def onnx_signature(model: onnx.ModelProto) -> dict[str, list[TensorSpec]]:
    def specs(values: list[onnx.ValueInfoProto]) -> list[TensorSpec]:
        out = []
        for v in values:
            t = v.type.tensor_type
            shape = tuple(d.dim_value if d.HasField("dim_value") else -1 for d in t.shape.dim)
            out.append(TensorSpec(v.name, shape, _ONNX_DTYPES.get(t.elem_type, str(t.elem_type))))
        return out

    return {"inputs": specs(list(model.graph.input)), "outputs": specs(list(model.graph.output))}


def external_data_file(path: Path) -> Path:
    """Where the exporter puts a graph's weights when they live outside the graph file."""
    return path.with_name(path.name + ".data")


def export_graph(
    model: DualSystemVLA,
    spec: GraphSpec,
    precision: str,
    path: Path,
    opset: int | None = None,
    external_data: bool = False,
) -> None:
    """Trace `spec.name` of `model` (already at `precision`) into `path` and check its signature.

    With `external_data` the weights go to `<path>.data` (needed past protobuf's 2 GiB limit).
    """
    module = graph_module(model, spec.name, precision)
    rng = np.random.default_rng(0)
    args = tuple(example_tensor(t, rng, model.cfg) for t in spec.inputs)
    with torch.no_grad(), warnings.catch_warnings(), redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        try:
            torch.onnx.export(
                module,
                args,
                str(path),
                input_names=[t.name for t in spec.inputs],
                output_names=[t.name for t in spec.outputs],
                opset_version=opset,
                dynamo=True,
                external_data=external_data,
                optimize=True,
            )
        except Exception as exc:  # the exporter raises many types; name the graph
            raise ExportError(f"exporting graph {spec.name!r} failed: {exc}") from exc
    onnx.checker.check_model(str(path))  # by path: works past 2 GiB with external data
    proto = onnx.load(str(path), load_external_data=False)
    got = onnx_signature(proto)
    for side in ("inputs", "outputs"):
        want = list(getattr(spec, side))
        if got[side] != want:
            raise ExportError(
                f"graph {spec.name!r} {side} came out as "
                f"{[(t.name, t.shape, t.dtype) for t in got[side]]}, expected "
                f"{[(t.name, t.shape, t.dtype) for t in want]}"
            )
