"""Typed, validated descriptions of what to measure. Validation happens here, before any model
is loaded, so bad input costs nothing and leaves nothing behind."""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from gpt2bench import MAX_CONTEXT
from gpt2bench.core.errors import UsageError

if TYPE_CHECKING:
    from gpt2bench.measure.quality import QualitySettings

DEVICES = ("cpu", "cuda")
DTYPES = ("fp32", "bf16", "fp16")
# fp16 arithmetic on a CPU is emulated by most of them and no backend here has CPU fp16 kernels worth
# timing; bf16 is the CPU's half-precision format.
CUDA_ONLY_DTYPES = ("fp16",)


def dtype_label(dtype: str) -> str:
    """How `backends` lists a dtype: the ones a CPU run refuses say so."""
    return f"{dtype} (cuda)" if dtype in CUDA_ONLY_DTYPES else dtype


def default_threads() -> int:
    """The cores this process may run on (respects taskset/cgroups, unlike os.cpu_count())."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def oversubscription(threads: int) -> str | None:
    """A warning when `threads` exceeds the cores this process may use: the threads then take turns
    on the cores, and the timings measure that contention rather than the backend."""
    cores = default_threads()
    if threads <= cores:
        return None
    return f"{threads} threads on the {cores} cores this process may use: they will take turns, and the timings show it"


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
        if self.temperature < 0:
            raise UsageError(f"temperature must be >= 0, got {self.temperature}")
        if self.top_k < 0:
            raise UsageError(f"top-k must be >= 0, got {self.top_k}")
        if not 0 < self.top_p <= 1:
            raise UsageError(f"top-p must be in (0, 1], got {self.top_p}")


@dataclass(frozen=True)
class RunSpec:
    """One benchmark cell: a backend on one (prompt length, generation length, batch size)."""

    backend: str
    prompt_len: int = 50
    gen_len: int = 100
    batch_size: int = 1
    repeats: int = 5
    warmup: int = 2
    model: str | None = None  # None: GPT-2 from the Hub, falling back to `random` when offline
    threads: int = field(default_factory=default_threads)
    device: str = "cpu"
    dtype: str = "fp32"
    sampling: Sampling = field(default_factory=Sampling)
    options: dict[str, Any] = field(default_factory=dict)
    quality: QualitySettings | None = None  # None: speed only
    probe_bandwidth: bool = False  # measure read bandwidth around every timed run (CPU only)

    def validate(self) -> None:
        from gpt2bench.backends import get_backend

        info = get_backend(self.backend)
        for name in ("prompt_len", "gen_len", "batch_size", "repeats", "threads"):
            if getattr(self, name) < 1:
                raise UsageError(f"{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}")
        if self.warmup < 0:
            raise UsageError(f"warmup must be >= 0, got {self.warmup}")
        if self.prompt_len + self.gen_len > MAX_CONTEXT:
            raise UsageError(
                f"prompt-len + gen-len = {self.prompt_len + self.gen_len} exceeds GPT-2's {MAX_CONTEXT}-token context"
            )
        if self.probe_bandwidth and self.device != "cpu":
            raise UsageError("--probe-bandwidth measures the CPU's memory; it is for --device cpu")
        if self.device not in DEVICES:
            raise UsageError(f"unknown device '{self.device}' (choose from: {', '.join(DEVICES)})")
        if self.device not in info.devices:
            raise UsageError(
                f"backend '{self.backend}' does not run on {self.device} (it runs on: {', '.join(info.devices)})"
            )
        if self.dtype not in info.dtypes:
            raise UsageError(
                f"backend '{self.backend}' does not support dtype '{self.dtype}' "
                f"(it supports: {', '.join(info.dtypes)})"
            )
        if self.dtype in CUDA_ONLY_DTYPES and self.device == "cpu":
            raise UsageError(f"{self.dtype} is for --device cuda; on the CPU use fp32 or bf16")
        unknown = sorted(set(self.options) - set(info.options))
        if unknown:
            valid = ", ".join(info.options) or "none"
            raise UsageError(f"backend '{self.backend}' has no option '{unknown[0]}' (valid: {valid})")
        info.cls.check_options(self.options)
        self.sampling.validate()
        if self.quality is not None:
            self.quality.validate()

    def as_record(self) -> dict[str, Any]:
        return asdict(self)
