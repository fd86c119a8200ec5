"""Typed, validated descriptions of what to measure. Validation happens here, before any model
is loaded, so bad input costs nothing and leaves nothing behind."""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from gpt2bench import MAX_CONTEXT
from gpt2bench.backends.base import Sampling  # the backend contract's; re-exported for callers of the spec
from gpt2bench.core.errors import UsageError
from gpt2bench.core.paths import DEFAULT_TEXT
from gpt2bench.measure.stopping import Adaptive

DEVICES = ("cpu", "cuda")
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
class QualitySettings:
    window: int | None = None  # None: the model's context (1024 for GPT-2)
    stride: int | None = None  # None: equal to window (disjoint windows)
    max_windows: int | None = 4  # None: the whole text
    text: Path = DEFAULT_TEXT
    agreement_prompts: int = 4
    agreement_prompt_len: int = 32
    agreement_gen_len: int = 32

    def validate(self, n_positions: int = 1024) -> None:
        window = self.window_for(n_positions)
        if not 2 <= window <= n_positions:
            raise UsageError(f"perplexity window must be in [2, {n_positions}] (the model's context), got {window}")
        if self.stride is not None and not 1 <= self.stride <= window:
            raise UsageError(f"perplexity stride must be in [1, window], got {self.stride}")
        if self.max_windows is not None and self.max_windows < 1:
            raise UsageError(f"max windows must be at least 1, got {self.max_windows}")
        if self.text.is_dir():
            raise UsageError(f"eval text '{self.text}' is a folder; give a text file")
        if not self.text.is_file():
            raise UsageError(f"eval text '{self.text}' does not exist")
        if self.text.stat().st_size == 0:
            raise UsageError(f"eval text '{self.text}' is empty")

    def window_for(self, n_positions: int) -> int:
        return self.window if self.window is not None else n_positions

    def record(self) -> dict[str, Any]:
        return {**asdict(self), "text": str(self.text)}


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
    adaptive: Adaptive | None = None  # repeats: auto (measure/stopping.py); None: `repeats` runs

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
        if self.adaptive is not None:
            self.adaptive.validate()
        if self.quality is not None:
            self.quality.validate()

    def as_record(self) -> dict[str, Any]:
        """Every field as JSON-safe values (the eval text's path as a string)."""
        record = asdict(self)
        if self.quality is not None:
            record["quality"] = self.quality.record()
        return record

    def to_json(self) -> str:
        """The spec as the one wire format between a sweep and its workers (see `from_json`)."""
        record = self.as_record()
        if record["adaptive"] is None:  # absent unless used: a worker of an older gpt2bench (gpt2bench ab) reads it
            del record["adaptive"]
        return json.dumps(record, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> RunSpec:
        raw = json.loads(text)
        quality = raw.pop("quality")
        adaptive = raw.pop("adaptive", None)
        return cls(
            **{**raw, "sampling": Sampling(**raw["sampling"])},
            adaptive=Adaptive(**adaptive) if adaptive else None,
            quality=QualitySettings(**{**quality, "text": Path(quality["text"])}) if quality else None,
        )
