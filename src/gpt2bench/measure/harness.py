"""The timing loop every backend runs through.

The harness owns every clock read. It timestamps each step's token ids as they reach the host,
counts ids itself (never text), insists on exactly gen-len steps, and synchronizes the device
before each clock read. Tokenization happened before (prompts.py) and is not in any timed region.
"""

from __future__ import annotations

import contextlib
import gc
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import numpy as np

from gpt2bench.backends.base import Backend, BackendSettings, Sampling
from gpt2bench.core.errors import BenchError
from gpt2bench.machine.sysinfo import ContentionMonitor, CpuContention, peak_rss_mb, reset_peak_rss, rss_mb
from gpt2bench.measure.metrics import (
    PER_RUN_METRICS,
    RunMetrics,
    burst_fraction,
    percentiles,
    run_metrics,
    summarize,
)
from gpt2bench.measure.prompts import Prompts
from gpt2bench.measure.stopping import CHECKED, FIXED, Adaptive, decide, precision_columns
from gpt2bench.models.ref import ModelRef

Clock = Callable[[], int]


@dataclass
class Generation:
    start_ns: int
    token_ns: list[int]
    tokens: np.ndarray  # int64 [batch, n_steps], as counted by the harness


@dataclass
class LoadResult:
    prepare_s: float  # one-off export/optimize/quantize (zero-ish when cached)
    load_s: float
    phases: dict[str, float]  # backend-reported sub-phases (export_s, compile_s, ...)
    rss_after_load_mb: float | None


@dataclass
class Measurement:
    generations: list[Generation]
    runs: list[RunMetrics]
    contention: CpuContention
    peak_rss_mb: float
    peak_rss_scope: str  # "measurement" when the peak was reset before it, else "process"
    setup_s: float  # per-cell preparation before warm-up (static cache, compilation)
    setup_phases: dict[str, float]
    device_memory: dict[str, float] = field(default_factory=dict)
    # Read bandwidth (GB/s) probed before each timed run and after the last: repeats + 1 samples.
    bandwidth_gbs: list[float] = field(default_factory=list)
    warmup_s: float = 0.0  # the warm-up generations, wall time
    timed_s: float = 0.0  # the timed generations themselves (first clock read to last token)
    loop_s: float = 0.0  # the timed loop's wall: timed_s plus collections, probes, bookkeeping
    probe_s: float = 0.0  # bandwidth probes inside the loop
    stop_reason: str = FIXED
    confidence: float = 0.95  # the level of the median intervals (lower per look when adaptive)

    @property
    def tokens_per_run(self) -> int:
        return int(self.generations[0].tokens.size)

    @property
    def tokens_consistent(self) -> bool:
        """Whether every repetition produced the same ids (expected under greedy decoding)."""
        first = self.generations[0].tokens
        return all(np.array_equal(first, g.tokens) for g in self.generations[1:])

    def stats(self) -> dict[str, dict[str, float]]:
        return {name: summarize([getattr(r, name) for r in self.runs]) for name in PER_RUN_METRICS}

    def precision(self) -> dict[str, float]:
        """The medians' intervals of TPOT and e2e and their relative half-widths: the row's
        achieved precision (measure/stopping.py)."""
        return precision_columns({name: [getattr(r, name) for r in self.runs] for name in CHECKED}, self.confidence)

    def burst_fraction(self) -> float:
        """Share of inter-token gaps under metrics.BURST_ITL_MS over all timed repetitions."""
        return burst_fraction([v for r in self.runs for v in r.itl_ms])

    def itl_percentiles(self) -> dict[str, float]:
        """Inter-token latencies pooled over all measured repetitions."""
        return percentiles([v for r in self.runs for v in r.itl_ms])


def timed_load(
    backend: Backend, model: ModelRef, settings: BackendSettings, clock: Clock = time.perf_counter_ns
) -> LoadResult:
    t0 = clock()
    phases = dict(backend.prepare(model, settings))
    t1 = clock()
    phases.update(backend.load(model, settings) or {})
    backend.synchronize()
    return LoadResult((t1 - t0) / 1e9, (clock() - t1) / 1e9, phases, rss_mb())


def timed_generation(
    backend: Backend, input_ids: np.ndarray, gen_len: int, sampling: Sampling, clock: Clock = time.perf_counter_ns
) -> Generation:
    steps = []
    stamps = []
    backend.synchronize()
    start = clock()
    for step in backend.generate(input_ids, gen_len, sampling):
        # Host ids first, then the clock: a step yielded as a lazy or device array is computed or
        # copied by this conversion, inside its own timestamp rather than after it.
        steps.append(np.asarray(step, dtype=np.int64).reshape(-1))
        backend.synchronize()
        stamps.append(clock())
        if len(steps) > gen_len:
            break
    batch = input_ids.shape[0]
    if len(steps) != gen_len:
        raise BenchError(f"backend '{backend.name}' produced {len(steps)} generation steps, expected exactly {gen_len}")
    tokens = np.stack(steps, axis=1)
    if tokens.shape != (batch, gen_len):
        raise BenchError(
            f"backend '{backend.name}' produced token ids of shape {tokens.shape}, expected {(batch, gen_len)}"
        )
    return Generation(start, stamps, tokens)


@contextlib.contextmanager
def frozen_heap() -> Iterator[None]:
    """Collect once and freeze what survives (the engine, the libraries) for a cell's timed runs,
    so each run's own collection (no_garbage_collection) walks only what the runs allocated since.
    Unfrozen at the end. A full collection before every run took 0.27 s of a tiny model's ~0.03 s
    run with torch and transformers loaded (2026-12-02, Zen 4): 90% of a sweep's time, untimed."""
    gc.collect()
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


@contextlib.contextmanager
def no_garbage_collection() -> Iterator[None]:
    """Keep Python's cyclic garbage collector out of a timed region: collect now and disable
    automatic collection until the region ends. A collection inside a generation would land in one
    token's latency."""
    gc.collect()
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def measure(
    backend: Backend,
    prompts: Prompts,
    gen_len: int,
    sampling: Sampling,
    warmup: int,
    repeats: int,
    on_step: Callable[[str, int, int], None] | None = None,
    probe: Callable[[], float] | None = None,
    adaptive: Adaptive | None = None,
) -> Measurement:
    """Set up for the cell's shapes, warm up (results discarded), then time `repeats` generations,
    or with `adaptive` as many as its stopping rule asks for (measure/stopping.py).

    `probe` (a read-bandwidth microbenchmark) runs around every timed generation, outside its
    clock, so each run's decode speed can be set against the memory speed of its own moment. It
    should measure in another process (`gpt2bench.machine.probe`): its buffers would count in peak RSS."""
    t0 = time.perf_counter_ns()
    setup_phases = dict(backend.setup(prompts.batch_size, prompts.prompt_len, gen_len, sampling) or {})
    backend.synchronize()
    t1 = time.perf_counter_ns()
    for i in range(warmup):
        timed_generation(backend, prompts.input_ids, gen_len, sampling)
        if on_step:
            on_step("warmup", i + 1, warmup)
    t2 = time.perf_counter_ns()
    scope = "measurement" if reset_peak_rss() else "process"
    backend.reset_peak_memory()
    loop = _timed_runs(backend, prompts, gen_len, sampling, repeats, on_step, probe, adaptive)
    generations = loop.generations
    return Measurement(
        generations,
        loop.runs,
        CpuContention.total(loop.contentions),
        peak_rss_mb(),
        scope,
        (t1 - t0) / 1e9,
        setup_phases,
        backend.memory_stats(),
        loop.bandwidth,
        warmup_s=(t2 - t1) / 1e9,
        timed_s=sum(g.token_ns[-1] - g.start_ns for g in generations) / 1e9,
        loop_s=loop.wall_s,
        probe_s=loop.probe_s,
        stop_reason=loop.stop_reason,
        confidence=adaptive.confidence() if adaptive else 0.95,
    )


@dataclass
class _Loop:
    generations: list[Generation] = field(default_factory=list)
    runs: list[RunMetrics] = field(default_factory=list)
    contentions: list[CpuContention] = field(default_factory=list)
    bandwidth: list[float] = field(default_factory=list)
    probe_s: float = 0.0
    wall_s: float = 0.0
    stop_reason: str = FIXED


def _timed_runs(
    backend: Backend,
    prompts: Prompts,
    gen_len: int,
    sampling: Sampling,
    repeats: int,
    on_step: Callable[[str, int, int], None] | None,
    probe: Callable[[], float] | None,
    adaptive: Adaptive | None,
) -> _Loop:
    """The timed generations: `repeats` of them, or until `adaptive`'s rule stops the cell."""
    loop = _Loop()
    most = adaptive.max_repeats if adaptive else repeats
    started = time.perf_counter_ns()
    with frozen_heap():
        for i in range(most):
            if probe:
                p0 = time.perf_counter_ns()
                loop.bandwidth.append(probe())
                loop.probe_s += (time.perf_counter_ns() - p0) / 1e9
            # Other processes' CPU is counted over the timed generations only: the bandwidth probe
            # runs in a helper process between them, and is not noise.
            with no_garbage_collection():  # its collection before the run is outside the monitored window
                monitor = ContentionMonitor()
                g = timed_generation(backend, prompts.input_ids, gen_len, sampling)
                loop.contentions.append(monitor.stop())
            loop.generations.append(g)
            loop.runs.append(run_metrics(g.start_ns, g.token_ns, prompts.batch_size, prompts.prompt_len))
            if on_step:
                on_step("measure", i + 1, most)
            if adaptive:
                so_far = {name: [getattr(r, name) for r in loop.runs] for name in CHECKED}
                if reason := decide(adaptive, so_far, (time.perf_counter_ns() - started) / 1e9):
                    loop.stop_reason = reason
                    break
    loop.wall_s = (time.perf_counter_ns() - started) / 1e9
    if probe:  # after the last run too: each run sits between two probes
        p0 = time.perf_counter_ns()
        loop.bandwidth.append(probe())
        loop.probe_s += (time.perf_counter_ns() - p0) / 1e9
    return loop
