"""The backend interface and registry.

A backend turns token ids into token ids. It never reads a clock: the harness does, around the
iterator that `generate` returns, so every backend is timed by the same code.
"""

from __future__ import annotations

import importlib.util
import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from gpt2bench.core.errors import MissingExtraError, UsageError

if TYPE_CHECKING:
    from pathlib import Path

    from gpt2bench.models.ref import ModelRef


@dataclass(frozen=True)
class Sampling:
    """temperature 0 means greedy argmax, the default: it makes every backend's tokens comparable."""

    temperature: float = 0.0
    top_k: int = 0  # 0 = no top-k cut
    top_p: float = 1.0  # 1 = no nucleus cut
    seed: int = 0

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0

    def label(self) -> str:
        if self.greedy:
            return "greedy"
        return f"sample(t={self.temperature:g},k={self.top_k},p={self.top_p:g},seed={self.seed})"

    def validate(self) -> None:
        for name in ("temperature", "top_p"):  # NaN passes every comparison below, then fails in sampling
            if not math.isfinite(getattr(self, name)):
                raise UsageError(f"{name.replace('_', '-')} must be a finite number, got {getattr(self, name)}")
        if self.temperature < 0:
            raise UsageError(f"temperature must be >= 0, got {self.temperature}")
        if self.top_k < 0:
            raise UsageError(f"top-k must be >= 0, got {self.top_k}")
        if not 0 < self.top_p <= 1:
            raise UsageError(f"top-p must be in (0, 1], got {self.top_p}")


def logits_nll(logits: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """Negative log-likelihood (nats) of each target under its row of [n, vocab] logits, in float64."""
    x = logits.astype(np.float64)
    x -= x.max(axis=-1, keepdims=True)
    log_z = np.log(np.exp(x).sum(axis=-1))
    return log_z - x[np.arange(len(targets)), targets]


@dataclass(frozen=True)
class BackendSettings:
    device: str = "cpu"
    dtype: str = "fp32"
    threads: int = 1
    options: dict[str, Any] = field(default_factory=dict)


def check_bool_options(options: dict[str, Any], *keys: str) -> None:
    """Switches must be YAML/--option booleans: "rebuild=maybe" would otherwise read as true."""
    for key in keys:
        if key in options and not isinstance(options[key], bool):
            raise UsageError(f"{key} must be true or false, got '{options[key]}'")


class Backend(ABC):
    """Implementations keep heavy imports (torch, onnxruntime, vllm) inside their methods, so
    that listing backends or plotting results never pays for them."""

    name: ClassVar[str]

    @classmethod
    def check_options(cls, options: dict[str, Any]) -> None:
        """Raise UsageError for a bad option value, before anything is loaded."""

    def prepare(self, model: ModelRef, settings: BackendSettings) -> dict[str, float]:
        """One-off work a deployment does ahead of time (export, optimize, quantize), cached where
        possible. Timed apart from `load`; returns its phases (export_s, ...) in seconds."""
        return {}

    @abstractmethod
    def load(self, model: ModelRef, settings: BackendSettings) -> dict[str, float]:
        """Load weights and get ready to generate; the harness times the call as load time.
        Return sub-phases worth reporting on their own (compile_s...), in seconds."""

    def setup(self, batch_size: int, prompt_len: int, max_new_tokens: int, sampling: Sampling) -> dict[str, float]:
        """Get ready for one cell's shapes before warm-up (allocate a static cache, compile).
        The harness times it as setup_s, so compile time never hides in TTFT."""
        return {}

    @abstractmethod
    def generate(self, input_ids: np.ndarray, max_new_tokens: int, sampling: Sampling) -> Iterator[np.ndarray]:
        """Yield exactly `max_new_tokens` steps, each the [batch] int64 ids of that step, on the
        host. Work must start lazily, at the first `next()`, and EOS must not stop generation."""

    @abstractmethod
    def logits(self, input_ids: np.ndarray) -> np.ndarray:
        """Float32 [batch, seq, vocab] logits of one forward pass, with the generation numerics."""

    def token_nll(self, input_ids: np.ndarray) -> np.ndarray:
        """[1, T] ids -> [T-1] negative log-likelihoods (nats) of ids[1:], each given the tokens
        before it, for perplexity. From `logits` unless a backend has an exact cheaper path."""
        return logits_nll(self.logits(input_ids)[0, :-1], input_ids[0, 1:])

    def trace(self, run: Callable[[], None], out_dir: Path) -> Path | None:
        """Run `run` under this backend's own profiler and write its trace into out_dir (torch
        profiler Chrome trace, ONNX Runtime profiling JSON...); None when there is none."""
        return None

    def synchronize(self) -> None:
        """Wait for queued device work; the harness calls it before every clock read."""

    def reset_peak_memory(self) -> None:
        """Reset device peak-memory counters (host RSS is handled by the harness)."""

    def memory_stats(self) -> dict[str, float]:
        """Device memory figures in MB, e.g. {'cuda_max_allocated_mb': ...}."""
        return {}

    def stored_weight_bytes(self) -> float | None:
        """Mean bytes per weight as the loaded model stores them, for a backend whose tensors differ
        in width (llama.cpp's q4_0 keeps the tied head at q6_K); None: the declared weight_bytes."""
        return None

    def warnings(self) -> list[str]:
        """What a user should know about this load before reading its numbers (one line each)."""
        return []

    def describe(self) -> dict[str, Any]:
        """Facts about the loaded backend worth recording (what was quantized, providers...)."""
        return {}

    def close(self) -> None:
        """Release the model; the backend is not used again."""


@dataclass(frozen=True)
class BackendInfo:
    name: str
    cls: type[Backend]
    description: str
    requires: tuple[tuple[str, str], ...] = ()  # (importable module, extra that installs it)
    devices: tuple[str, ...] = ("cpu",)
    dtypes: tuple[str, ...] = ("fp32",)
    options: tuple[str, ...] = ()  # the --option keys this backend understands
    imports: tuple[str, ...] = ()  # heavy modules its load needs (for cold-start timing)
    # Roofline facts, where they are not the row's dtype: bytes per weight as the backend stores
    # them (int8 weights: 1, fbgemm's fp16 weights: 2), and the arithmetic its matmuls run in
    # (fbgemm's fp16 widens to fp32; int8 backends quantize activations too and multiply int8).
    weight_bytes: float | None = None
    compute_dtype: str | None = None
    # How a decode step reads the KV cache (measure/roofline.py, KV_PASSES): "context" (the live
    # context once), "concat" (copied into a new tensor every step, then read) or "allocated"
    # (every slot of a preallocated cache, rounded up to kv_slot_round).
    kv_reads: str = "context"
    kv_slot_round: int = 1
    kv_bytes: float | None = None  # bytes per cached element where not the row's dtype (llama.cpp: f16)

    def kv_traffic(self, dtype: str) -> tuple[float, str, int]:
        """(bytes per cached element, how the cache is read, slot rounding) for a row in `dtype`: the
        cache holds activations, so int8-weight backends still cache fp32."""
        return self.kv_bytes or BYTES_PER_PARAM.get(dtype, 4), self.kv_reads, self.kv_slot_round

    def bytes_per_weight(self, dtype: str) -> float:
        """What one weight of a row in `dtype` occupies in memory, as this backend stores it."""
        return self.weight_bytes if self.weight_bytes is not None else BYTES_PER_PARAM.get(dtype, 4)

    def arithmetic(self, dtype: str) -> str:
        """The dtype of this backend's matmuls for a row in `dtype`: which matmul roof applies."""
        return self.compute_dtype or dtype

    def missing(self) -> tuple[str, str] | None:
        """The first (module, extra) that is not installed, without importing anything."""
        for module, extra in self.requires:
            if importlib.util.find_spec(module) is None:
                return module, extra
        return None

    def unavailable_reason(self) -> str | None:
        gap = self.missing()
        return f"needs '{gap[0]}': pip install 'gpt2bench[{gap[1]}]'" if gap else None

    def create(self) -> Backend:
        gap = self.missing()
        if gap:
            raise MissingExtraError(f"backend '{self.name}'", *gap)
        return self.cls()


BYTES_PER_PARAM = {"fp32": 4, "bf16": 2, "fp16": 2, "int8": 1}
REGISTRY: dict[str, BackendInfo] = {}
_plugin_errors: list[str] | None = None  # None until plugins are imported


def plugin_errors() -> list[str]:
    """Import other packages' backends, once: only when they are asked for, since scanning the
    installed distributions costs ~50 ms, which every cold start would otherwise pay. One line per
    plugin that failed to import."""
    global _plugin_errors
    if _plugin_errors is None:
        from gpt2bench.backends.plugins import load_plugins

        _plugin_errors = []  # set first: a plugin's own import of this package must not recurse
        _plugin_errors.extend(load_plugins())
    return _plugin_errors


def all_backends() -> dict[str, BackendInfo]:
    plugin_errors()
    return REGISTRY


def register(
    name: str,
    *,
    description: str,
    requires: tuple[tuple[str, str], ...] = (),
    devices: tuple[str, ...] = ("cpu",),
    dtypes: tuple[str, ...] = ("fp32",),
    options: tuple[str, ...] = (),
    imports: tuple[str, ...] = (),
    weight_bytes: float | None = None,
    compute_dtype: str | None = None,
    kv_reads: str = "context",
    kv_slot_round: int = 1,
    kv_bytes: float | None = None,
) -> Callable[[type[Backend]], type[Backend]]:
    """Register a backend class under `name`; the keywords are BackendInfo's fields."""

    def decorate(cls: type[Backend]) -> type[Backend]:
        if name in REGISTRY:
            raise ValueError(f"backend '{name}' registered twice")
        cls.name = name
        if kv_reads not in ("context", "concat", "allocated"):
            raise ValueError(f"backend '{name}': kv_reads must be context, concat or allocated, got {kv_reads!r}")
        REGISTRY[name] = BackendInfo(
            name,
            cls,
            description,
            requires,
            devices,
            dtypes,
            options,
            imports,
            weight_bytes,
            compute_dtype,
            kv_reads,
            kv_slot_round,
            kv_bytes,
        )
        return cls

    return decorate


def get_backend(name: str) -> BackendInfo:
    if name not in REGISTRY:
        errors = plugin_errors()
        if name not in REGISTRY:
            broken = f"; {'; '.join(errors)}" if errors else ""
            raise UsageError(f"unknown backend '{name}' (valid: {', '.join(sorted(REGISTRY))}){broken}")
    return REGISTRY[name]
