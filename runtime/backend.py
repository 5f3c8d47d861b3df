"""Inference backends: the `InferenceBackend` protocol and its onnxruntime implementation.

One code path serves CPU, CUDA and TensorRT: TensorRT is reached through onnxruntime's
TensorRT execution provider, so the same graphs, feeds and checks apply on every target.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol, runtime_checkable

import numpy as np
import onnxruntime as ort

from edgevla.runtime.bundle import Bundle, sha256_file, verify_files
from edgevla.runtime.errors import (
    BackendUnavailable,
    BundleGraphInvalid,
    BundleShapeMismatch,
    ConfigError,
    InferenceInputError,
)
from edgevla.runtime.model_config import GraphSpec, TensorSpec

log = logging.getLogger(__name__)

TENSORRT = "TensorrtExecutionProvider"
CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"
AUTO_ORDER = (TENSORRT, CUDA, CPU)
THREAD_POOLS = ("shared", "per_session")

# Mirrors onnxruntime's process-global state: the (intra-op, inter-op) sizes this process
# created the shared thread pools with. onnxruntime sizes them once per process and cannot
# report them, so this is the only record of what a later backend actually gets.
_shared_pool_sizes: tuple[int, int] | None = None

_ORT_TYPES = {
    "tensor(float)": "float32",
    "tensor(float16)": "float16",
    "tensor(int64)": "int64",
    "tensor(uint8)": "uint8",
    "tensor(bool)": "bool",
}


@runtime_checkable
class InferenceBackend(Protocol):
    """Runs a bundle's named graphs on numpy feeds."""

    @property
    def providers(self) -> list[str]: ...

    def run(self, graph: str, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]: ...


@dataclass(frozen=True)
class BackendConfig:
    """How to open graphs. `providers="auto"` takes TensorRT, CUDA, then CPU, by availability."""

    # "auto", or execution provider names in priority order.
    providers: Literal["auto"] | tuple[str, ...] = "auto"
    intra_op_threads: int = 0  # 0: onnxruntime's default (one per physical core)
    inter_op_threads: int = 1
    # "shared": every graph runs on onnxruntime's process-wide thread pool. "per_session": each
    # graph gets its own pool; a plan alternates four graphs, and each pool's threads spin-wait
    # after their work and steal the cores from the next graph's (measured: plan 1.9x slower on
    # 2 cores, docs/benchmarks.md).
    thread_pool: Literal["shared", "per_session"] = "shared"
    # Per-session pools only (the Python API has no spin control for the shared pool).
    allow_spinning: bool = True
    warmup_runs: int = 1
    # Root of the TensorRT engine and timing caches; engines go in a per-content subdirectory
    # (see `engine_cache_for`). Default: a sibling `<bundle>.engines/`, so the hash-checked
    # bundle directory itself is never written to.
    engine_cache_dir: Path | None = None
    # None: TensorRT fp16 exactly when the bundle was exported (and parity-checked) at fp16.
    tensorrt_fp16: bool | None = None

    def __post_init__(self) -> None:
        if isinstance(self.providers, list):
            object.__setattr__(self, "providers", tuple(self.providers))
        if self.providers != "auto" and not (
            isinstance(self.providers, tuple) and all(isinstance(p, str) for p in self.providers)
        ):
            raise ConfigError(
                f"providers must be 'auto' or a tuple of provider names, got {self.providers!r}"
            )
        if self.thread_pool not in THREAD_POOLS:
            raise ConfigError(
                f"thread_pool must be 'shared' or 'per_session', got {self.thread_pool!r}"
            )
        for field in ("intra_op_threads", "inter_op_threads", "warmup_runs"):
            value = getattr(self, field)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ConfigError(f"{field} must be an integer >= 0, got {value!r}")


def default_engine_cache(bundle_dir: Path) -> Path:
    """Root of the engine cache when none is configured: `<bundle>.engines/` beside the bundle."""
    bundle_dir = bundle_dir.resolve()  # "." has no name to derive a sibling from
    return bundle_dir.with_name(bundle_dir.name + ".engines")


def engine_cache_for(bundle: Bundle, config: BackendConfig) -> Path:
    """`<root>/<first 16 hex of sha256(manifest.json)>/`: one cache directory per bundle content.

    onnxruntime's TensorRT provider names cached engines after the model's path, so an in-place
    re-export under the same path would otherwise be served the old bundle's engines. The
    manifest records every file's sha256, so its own hash changes whenever any file does.
    """
    root = config.engine_cache_dir or default_engine_cache(bundle.path)
    return root / bundle.manifest_sha256[:16]


def _content_key(graphs: Mapping[str, Path]) -> str:
    """A per-content cache key for graphs opened without a bundle (and so without a manifest)."""
    digest = hashlib.sha256()
    for name in sorted(graphs):
        path = Path(graphs[name])
        for file in (path, path.with_name(path.name + ".data")):
            if file.exists():
                digest.update(f"{name}:{file.name}:{sha256_file(file)}\n".encode())
    return digest.hexdigest()[:16]


def _provider_names(config: BackendConfig, available: Sequence[str]) -> list[str]:
    if config.providers == "auto":
        chosen = [p for p in AUTO_ORDER if p in available]
    else:
        requested = tuple(config.providers)
        missing = [p for p in requested if p not in available]
        if missing:
            raise BackendUnavailable(
                f"execution provider(s) {missing} not in this onnxruntime "
                f"{ort.__version__}; available: {list(available)}"
            )
        chosen = list(requested)
    if CPU not in chosen:
        chosen.append(CPU)  # onnxruntime assigns nodes other providers cannot run to the CPU
    return chosen


def select_providers(
    config: BackendConfig,
    precision: str,
    engine_cache: Path,
    available: Sequence[str] | None = None,
) -> list[tuple[str, dict[str, Any]]]:
    """Provider list with options, in priority order, for `ort.InferenceSession`.

    `engine_cache` is the TensorRT cache directory itself (already per content).
    """
    available = list(ort.get_available_providers() if available is None else available)
    options: list[tuple[str, dict[str, Any]]] = []
    for name in _provider_names(config, available):
        if name == TENSORRT:
            fp16 = config.tensorrt_fp16
            if fp16 is None:
                fp16 = precision == "fp16"
            options.append(
                (
                    name,
                    {
                        "trt_fp16_enable": fp16,
                        "trt_engine_cache_enable": True,
                        "trt_engine_cache_path": str(engine_cache),
                        "trt_timing_cache_enable": True,
                        "trt_timing_cache_path": str(engine_cache),
                    },
                )
            )
        else:
            options.append((name, {}))
    return options


def _spec_of(arg: Any) -> tuple[str, tuple[Any, ...], str]:
    return arg.name, tuple(arg.shape), _ORT_TYPES.get(arg.type, arg.type)


def check_session_signature(session: ort.InferenceSession, spec: GraphSpec, file: Path) -> None:
    """Refuse a graph file whose real inputs/outputs differ from the signature it must have."""
    for side, listed, expected in (
        ("inputs", session.get_inputs(), spec.inputs),
        ("outputs", session.get_outputs(), spec.outputs),
    ):
        have = [_spec_of(a) for a in listed]
        want = [(t.name, t.shape, t.dtype) for t in expected]
        if [h[0] for h in have] != [w[0] for w in want]:
            raise BundleShapeMismatch(
                file, side, f"graph has {[h[0] for h in have]}, expected {[w[0] for w in want]}"
            )
        for (name, shape, dtype), (_, wshape, wdtype) in zip(have, want, strict=True):
            if shape != wshape or dtype != wdtype:
                raise BundleShapeMismatch(
                    file,
                    f"{side}.{name}",
                    f"graph has {dtype}{list(shape)}, expected {wdtype}{list(wshape)}",
                )


def _ensure_shared_thread_pool(config: BackendConfig) -> None:
    """Create onnxruntime's process-wide thread pools, or keep the ones that already exist.

    onnxruntime allows this once per process; a later backend shares the first one's pools,
    whatever sizes it asks for, so a different request is logged as a warning.
    """
    global _shared_pool_sizes
    wanted = (config.intra_op_threads, config.inter_op_threads)
    try:
        ort.set_global_thread_pool_sizes(*wanted)
    except Exception as exc:  # onnxruntime raises its own Fail type
        if "already been created" not in str(exc):
            raise
        if _shared_pool_sizes is None:
            log.warning(
                "onnxruntime's shared thread pools were created outside edgevla with unknown "
                "sizes; this backend asked for intra-op %d, inter-op %d threads and shares them",
                *wanted,
            )
        elif _shared_pool_sizes != wanted:
            log.warning(
                "onnxruntime's shared thread pools exist with intra-op %d, inter-op %d threads; "
                "this backend asked for intra-op %d, inter-op %d and shares the existing pools "
                "(onnxruntime sizes them once per process)",
                *_shared_pool_sizes,
                *wanted,
            )
        return
    _shared_pool_sizes = wanted


def _placeholder(spec: TensorSpec) -> np.ndarray:
    if spec.dtype == "bool":
        return np.ones(spec.shape, dtype=bool)
    return np.zeros(spec.shape, dtype=spec.dtype)


class OnnxRuntimeBackend:
    """Opens a set of graphs as onnxruntime sessions and runs them by name.

    Each graph file is checked against the signature it must have before it is used.
    """

    def __init__(
        self,
        graphs: Mapping[str, Path],
        specs: Mapping[str, GraphSpec],
        config: BackendConfig | None = None,
        precision: str = "fp32",
        engine_cache: Path | None = None,
        after_open: Callable[[], None] | None = None,
    ) -> None:
        """`engine_cache`: the TensorRT cache directory (default: per content, under the
        configured root or beside the graphs' directory). `after_open` runs once every graph
        is open, before any is checked or run (`from_bundle` re-verifies the files there).
        """
        self.specs = dict(specs)
        self.config = config or BackendConfig()
        self.warmup_s: dict[str, float] = {}
        tensorrt = TENSORRT in _provider_names(self.config, ort.get_available_providers())
        if tensorrt and engine_cache is None:
            first = Path(next(iter(graphs.values())))
            root = self.config.engine_cache_dir or default_engine_cache(first.parent)
            engine_cache = root / _content_key(graphs)
        cache = engine_cache or Path()  # only TensorRT reads it
        providers = select_providers(self.config, precision, cache)
        if tensorrt:
            cache.mkdir(parents=True, exist_ok=True)
        options = ort.SessionOptions()
        if self.config.thread_pool == "shared":
            _ensure_shared_thread_pool(self.config)
            options.use_per_session_threads = False
        else:
            options.intra_op_num_threads = self.config.intra_op_threads
            options.inter_op_num_threads = self.config.inter_op_threads
            options.add_session_config_entry(
                "session.intra_op.allow_spinning", "1" if self.config.allow_spinning else "0"
            )
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self._sessions: dict[str, ort.InferenceSession] = {}
        for name in self.specs:
            file = Path(graphs[name])
            try:
                self._sessions[name] = ort.InferenceSession(str(file), options, providers=providers)
            except Exception as exc:  # onnxruntime raises several pybind types, not one base
                if "use_per_session_threads must be false" in str(exc):
                    raise ConfigError(
                        "thread_pool='per_session' is impossible in this process: onnxruntime's "
                        "shared thread pool was created first (use 'shared', or per-session "
                        "pools from the start)"
                    ) from exc
                reason = " ".join(str(exc).split())
                raise BundleGraphInvalid(
                    file, None, f"onnxruntime cannot open it: {reason}"
                ) from exc
        if after_open is not None:
            after_open()
        for name, spec in self.specs.items():
            check_session_signature(self._sessions[name], spec, Path(graphs[name]))
        self._providers = next(iter(self._sessions.values())).get_providers()
        log.info("onnxruntime %s providers %s", ort.__version__, self._providers)
        self.warmup(self.config.warmup_runs)

    @classmethod
    def from_bundle(cls, bundle: Bundle, config: BackendConfig | None = None) -> OnnxRuntimeBackend:
        """Open a verified bundle's graphs; refuses the bundle if its files changed meanwhile."""
        config = config or BackendConfig()
        return cls(
            {name: bundle.graph_path(name) for name in bundle.specs},
            bundle.specs,
            config,
            precision=bundle.precision,
            engine_cache=engine_cache_for(bundle, config),
            after_open=lambda: verify_files(bundle),
        )

    @property
    def providers(self) -> list[str]:
        return list(self._providers)

    def warmup(self, runs: int) -> dict[str, float]:
        """Run each graph `runs` times on placeholder feeds (TensorRT builds engines here)."""
        for name, spec in self.specs.items():
            feeds = {t.name: _placeholder(t) for t in spec.inputs}
            start = time.perf_counter()
            for _ in range(runs):
                self._sessions[name].run(None, feeds)
            self.warmup_s[name] = time.perf_counter() - start
        return dict(self.warmup_s)

    def run(self, graph: str, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        try:
            spec = self.specs[graph]
        except KeyError:
            raise InferenceInputError(
                f"unknown graph {graph!r}; backend has {sorted(self.specs)}"
            ) from None
        for t in spec.inputs:
            value = feeds.get(t.name)
            if value is None:
                raise InferenceInputError(f"graph {graph!r}: input {t.name!r} missing")
            if value.shape != t.shape or value.dtype != np.dtype(t.dtype):
                raise InferenceInputError(
                    f"graph {graph!r}: input {t.name!r} is {value.dtype}{list(value.shape)}, "
                    f"expected {t.dtype}{list(t.shape)}"
                )
        outputs = self._sessions[graph].run(None, {t.name: feeds[t.name] for t in spec.inputs})
        return {t.name: out for t, out in zip(spec.outputs, outputs, strict=True)}
