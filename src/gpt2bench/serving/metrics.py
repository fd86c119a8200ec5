"""Serving metrics from a load test's client-side timestamps, with vLLM's `bench serve` definitions.

Per request (all times from the moment the client sent it, by the client's monotonic clock):
- TTFT: until the first chunk that carries a token.
- e2e: until the response ended.
- TPOT: (e2e - TTFT) / (output tokens - 1): the mean time per token after the first.
- ITL: the gap before each token after the first, as the client saw them: a chunk that carries k
  tokens counts k tokens, its gap for the first of them and 0 for the other k - 1 (they arrived
  together; a mean gap would hide the burst).
Per rate:
- duration: from the first request sent to the last one ended.
- request throughput: completed requests / duration; output tokens/s: their output tokens / duration.
- goodput: completed requests within every SLO (TTFT and TPOT limits, when given) / duration;
  SLO attainment: their share of all requests sent (a failed request is a miss).
- peak concurrency: the most requests in flight at one moment.
Output tokens are token ids counted from the response, never re-tokenized text.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass
class RequestRecord:
    """One request as the client saw it: send time, each chunk's arrival and token count (seconds,
    one monotonic clock), and the error that ended it early, if any."""

    sent: float
    chunks: list[tuple[float, int]] = field(default_factory=list)  # (arrival, tokens in the chunk)
    ended: float | None = None
    error: str = ""
    expected_tokens: int = 0

    @property
    def ok(self) -> bool:
        return not self.error and self.ended is not None and self.output_tokens == self.expected_tokens > 0

    @property
    def output_tokens(self) -> int:
        return sum(n for _, n in self.chunks)

    def ttft_s(self) -> float:
        return next(t for t, n in self.chunks if n > 0) - self.sent

    def e2e_s(self) -> float:
        assert self.ended is not None
        return self.ended - self.sent

    def tpot_s(self) -> float | None:
        n = self.output_tokens
        return (self.e2e_s() - self.ttft_s()) / (n - 1) if n > 1 else None

    def itl_s(self) -> list[float]:
        """One gap per token after the first (output tokens - 1 of them)."""
        gaps: list[float] = []
        last = None
        for arrival, n in (c for c in self.chunks if c[1] > 0):
            if last is not None:
                gaps.append(arrival - last)
            gaps.extend([0.0] * (n - 1))  # the chunk's other tokens came with its first
            last = arrival
        return gaps


@dataclass(frozen=True)
class Slo:
    """Service-level limits in ms; None where there is none."""

    ttft_ms: float | None = None
    tpot_ms: float | None = None

    def met(self, record: RequestRecord) -> bool:
        if not record.ok:
            return False
        if self.ttft_ms is not None and record.ttft_s() * 1e3 > self.ttft_ms:
            return False
        tpot = record.tpot_s()
        return self.tpot_ms is None or tpot is None or tpot * 1e3 <= self.tpot_ms

    def label(self) -> str:
        parts = [f"{k}={v:g}" for k, v in (("ttft", self.ttft_ms), ("tpot", self.tpot_ms)) if v is not None]
        return ",".join(parts)


def peak_concurrency(records: list[RequestRecord]) -> int:
    """The most requests in flight at once: +1 at each send, -1 at each end (ends first on ties)."""
    events = sorted([(r.sent, 1) for r in records] + [(r.ended, -1) for r in records if r.ended is not None])
    peak = now = 0
    for _, step in events:
        now += step
        peak = max(peak, now)
    return peak


def _stats(prefix: str, values_s: list[float]) -> dict[str, float | None]:
    if not values_s:
        return {f"{prefix}_ms_{k}": None for k in ("median", "mean", "p90", "p99")}
    ms = np.asarray(values_s) * 1e3
    return {
        f"{prefix}_ms_median": float(np.median(ms)),
        f"{prefix}_ms_mean": float(ms.mean()),
        f"{prefix}_ms_p90": float(np.percentile(ms, 90)),
        f"{prefix}_ms_p99": float(np.percentile(ms, 99)),
    }


def summarize(records: list[RequestRecord], slo: Slo) -> dict[str, Any]:
    """The per-rate figures of `records` (the module docstring defines each)."""
    done = [r for r in records if r.ok]
    ends = [r.ended for r in records if r.ended is not None]
    duration = (max(ends) - min(r.sent for r in records)) if records and ends else math.nan
    per_s = (lambda n: n / duration) if duration and duration > 0 else (lambda _n: math.nan)
    tpots = [t for r in done if (t := r.tpot_s()) is not None]
    return {
        "requests": len(records),
        "completed": len(done),
        "failed": len(records) - len(done),
        "duration_s": duration,
        "request_throughput": per_s(len(done)),
        "output_tps": per_s(sum(r.output_tokens for r in done)),
        "goodput": per_s(sum(1 for r in done if slo.met(r))),
        "slo_attainment": sum(1 for r in done if slo.met(r)) / len(records) if records else math.nan,
        "slo": slo.label(),
        "peak_concurrency": peak_concurrency(records),
        **_stats("ttft", [r.ttft_s() for r in done]),
        **_stats("tpot", tpots),
        **_stats("itl", [g for r in done for g in r.itl_s()]),
        **_stats("e2e", [r.e2e_s() for r in done]),
        "errors": sorted({r.error for r in records if r.error})[:5],
    }
