"""Pure metric definitions. Times come in as integer nanoseconds from one monotonic clock.

For one generation of n tokens per sequence, batch B, prompt length P, started at t0, with the
host receiving step i's ids at t[i]:

    TTFT        = t[0] - t0                       prefill + first token
    e2e         = t[n-1] - t0
    TPOT        = (e2e - TTFT) / (n - 1)          mean decode time per step (undefined for n = 1)
    ITL[i]      = t[i] - t[i-1], i = 1..n-1       inter-token latencies
    decode tok/s  = B * (n - 1) / (e2e - TTFT)
    overall tok/s = B * n / e2e
    prefill tok/s = B * P / TTFT
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

NS_PER_MS = 1e6
NS_PER_S = 1e9
PER_RUN_METRICS = ("ttft_ms", "tpot_ms", "e2e_ms", "decode_tps", "overall_tps", "prefill_tps")
STATS = ("median", "mean", "std", "min", "max", "p90", "p99", "ci95_low", "ci95_high")


@dataclass(frozen=True)
class RunMetrics:
    ttft_ms: float
    tpot_ms: float
    e2e_ms: float
    decode_tps: float
    overall_tps: float
    prefill_tps: float
    itl_ms: tuple[float, ...]

    def scalars(self) -> dict[str, float]:
        return {name: getattr(self, name) for name in PER_RUN_METRICS}


def run_metrics(start_ns: int, token_ns: Sequence[int], batch_size: int, prompt_len: int) -> RunMetrics:
    if not token_ns:
        raise ValueError("a generation must produce at least one token")
    stamps = np.asarray(token_ns, dtype=np.int64)
    if stamps[0] < start_ns or np.any(np.diff(stamps) < 0):
        raise ValueError("token timestamps must not precede the start or go backwards")
    n = len(stamps)
    ttft = int(stamps[0] - start_ns)
    e2e = int(stamps[-1] - start_ns)
    decode = e2e - ttft
    nan = math.nan
    return RunMetrics(
        ttft_ms=ttft / NS_PER_MS,
        tpot_ms=decode / (n - 1) / NS_PER_MS if n > 1 else nan,
        e2e_ms=e2e / NS_PER_MS,
        decode_tps=batch_size * (n - 1) / (decode / NS_PER_S) if n > 1 and decode > 0 else nan,
        overall_tps=batch_size * n / (e2e / NS_PER_S) if e2e > 0 else nan,
        prefill_tps=batch_size * prompt_len / (ttft / NS_PER_S) if ttft > 0 else nan,
        itl_ms=tuple((np.diff(stamps) / NS_PER_MS).tolist()),
    )


def t_critical_95(dof: int) -> float:
    from scipy.stats import t

    return float(t.ppf(0.975, dof))


def resolves(q: float, n: int) -> bool:
    """Whether n samples can tell the q-th percentile from the maximum: at least one sample must
    lie above it, n >= 100 / (100 - q). p90 needs 10 samples and p99 100; of 5 repetitions,
    "p99" would be the largest one under another name."""
    return n * (100 - q) >= 100


def median_ci(values: Sequence[float], confidence: float = 0.95) -> tuple[float, float]:
    """A distribution-free interval for the median: the order statistics [x(j), x(n+1-j)] with the
    largest j whose coverage, P(j <= B <= n-j) for B ~ Binomial(n, 1/2), is at least `confidence`.
    (NaN, NaN) when even [min, max] falls short: 5 samples give it 93.75%, so a 95% interval
    needs 6 and a 99% one 8."""
    arr = np.sort(np.asarray(values, dtype=np.float64))
    n = arr.size
    j, tail = 0, 0.0  # tail: P(B <= j - 1), one side's miss probability of [x(j+1), ...]
    while j < n // 2:
        tail_next = tail + math.comb(n, j) / 2**n
        if 1 - 2 * tail_next < confidence:
            break
        j, tail = j + 1, tail_next
    if j == 0:
        return math.nan, math.nan
    return float(arr[j - 1]), float(arr[n - j])


def percentile(arr: np.ndarray, q: float) -> float:
    """The q-th percentile (linear interpolation), NaN where the sample cannot resolve it."""
    return float(np.percentile(arr, q)) if resolves(q, arr.size) else math.nan


def summarize(values: Sequence[float]) -> dict[str, float]:
    """Median, mean, sample std, min, max, p90, p99 (linear interpolation; NaN where too few
    samples resolve them, see `resolves`) and the 95% confidence interval of the mean (Student t).
    NaN samples (e.g. TPOT of 1-token runs) are ignored; one sample has no spread (std NaN)."""
    arr = np.asarray(values, dtype=np.float64)
    arr = arr[~np.isnan(arr)]
    if arr.size == 0:
        return dict.fromkeys(STATS, math.nan)
    mean = float(arr.mean())
    std = float(arr.std(ddof=1)) if arr.size > 1 else math.nan
    half = t_critical_95(arr.size - 1) * std / math.sqrt(arr.size) if arr.size > 1 else math.nan
    return {
        "median": float(np.median(arr)),
        "mean": mean,
        "std": std,
        "min": float(arr.min()),
        "max": float(arr.max()),
        "p90": percentile(arr, 90),
        "p99": percentile(arr, 99),
        "ci95_low": mean - half,
        "ci95_high": mean + half,
    }


def percentiles(values: Sequence[float], qs: Sequence[int] = (50, 90, 99)) -> dict[str, float]:
    arr = np.asarray(values, dtype=np.float64)
    if arr.size == 0:
        return {f"p{q}": math.nan for q in qs}
    return {f"p{q}": percentile(arr, q) for q in qs}


# A GPT-2 decode step takes milliseconds on the hardware here; gaps under 10 us are tokens that were
# already computed when the harness asked for them (compute-ahead, or a batch run in waves).
BURST_ITL_MS = 0.010
BURST_FRACTION = 0.10  # more than this share of such gaps flags the row


def burst_fraction(itl_ms: Sequence[float]) -> float:
    """Share of inter-token gaps shorter than BURST_ITL_MS."""
    return sum(g < BURST_ITL_MS for g in itl_ms) / len(itl_ms) if len(itl_ms) else 0.0


def burst_warning(fraction: float) -> str:
    """The row's timing warning for a burst fraction (empty when there is nothing to say)."""
    if fraction <= BURST_FRACTION:
        return ""
    return (
        f"{fraction:.0%} of inter-token gaps were under {BURST_ITL_MS * 1e3:.0f} us: tokens arrived in bursts "
        "(the backend computed ahead, or ran the batch in waves), so TPOT and ITL do not show per-token work"
    )
