"""`gpt2bench ab`'s statistics: paired, drifting data from two versions measured in alternation.

One comparison is a backend, a cell and a metric. Every round measures BASE and NEW back to back
(A B, then B A: sweep/ab.py), so a drift of the machine moves both sides of a round alike and
cancels in the round's ratio NEW / BASE (each side's value: the median of its repetitions in that
round). The rounds come in blocks, each measured by a fresh pair of worker processes, the pair's
start order alternating from block to block: on this VM the worker started second ran 4-7% faster
than the first, whichever side it was (onnx-int8, A/A, 2026-12-03), an offset alternation within a
block cannot see. A block's median ratio carries that offset; the estimate is the geometric mean
of the blocks' medians, in which the offsets of an even number of blocks cancel.

- **Interval**: a percentile bootstrap of that estimate, resampling rounds within each block
  (10,000 resamples, seeded, so a report is reproducible from its JSON).
- **Tests against a margin**: "regression" is the hypothesis that the median ratio exceeds
  1 + threshold, "improvement" that it is below 1 - threshold. Each p-value is twice the share of
  bootstrap medians on the wrong side of its margin, so for a single comparison p < alpha is
  exactly "the (1 - alpha) interval lies wholly beyond the margin".
- **Many comparisons**: Holm's step-down correction over every comparison of the run (the smaller
  of each one's two p-values), so the chance of any false verdict in a run stays at alpha.
- **Effect size**: the ratio and its interval; and `detectable`, the smallest slowdown this run
  would flag in ~90% of repeats, from the bootstrap's standard error (the noise floor an A/A run
  measures).

How well this holds on a real machine is measured, not assumed: scripts/bench_ab.py runs A/A and
injected-slowdown A/B runs and counts false alarms and detections (docs/findings.md).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from statistics import NormalDist
from typing import Any

import numpy as np

from gpt2bench.report.compare import holm

BOOTSTRAP_RESAMPLES = 10_000
MIN_ROUNDS = 6  # fewer rounds than this give no verdict: a bootstrap of 2-5 values says little
POWER = 0.9  # `detectable` is the slowdown flagged in this share of repeated runs
METRIC_NAMES = {"tpot_ms": "TPOT", "ttft_ms": "TTFT", "e2e_ms": "e2e"}


@dataclass(frozen=True)
class Pairing:
    """One comparison's data: the per-round values of each side (ms), in round order, and the
    block (worker pair) each round was measured by."""

    backend: str
    cell: str
    metric: str
    base: tuple[float, ...]
    new: tuple[float, ...]
    blocks: tuple[int, ...] = ()  # empty: one block

    def ratios(self) -> np.ndarray:
        return np.asarray(self.new, dtype=float) / np.asarray(self.base, dtype=float)

    def by_block(self) -> list[np.ndarray]:
        """The ratios of each block, blocks in order of first appearance."""
        ratios = self.ratios()
        blocks = np.asarray(self.blocks or (0,) * len(ratios))
        return [ratios[blocks == b] for b in dict.fromkeys(blocks.tolist())]


def block_estimate(blocks: list[np.ndarray]) -> float:
    """The geometric mean of the blocks' median ratios."""
    return float(np.exp(np.mean([np.log(np.median(b)) for b in blocks])))


@dataclass(frozen=True)
class Judged:
    backend: str
    cell: str
    metric: str
    rounds: int
    base_ms: float  # median over rounds of BASE's per-round value
    new_ms: float
    ratio: float  # the geometric mean over blocks of the median per-round ratio NEW / BASE
    low: float  # the (1 - alpha) bootstrap interval of that median
    high: float
    p_regression: float
    p_improvement: float
    p_holm: float
    noise: float  # the bootstrap standard error of the ratio
    blocks: int  # worker pairs the rounds were measured by
    detectable: float  # the smallest slowdown (a fraction) flagged in POWER of such runs
    verdict: str  # regression | improvement | no change detected | too few rounds

    def record(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class _Boot:
    ratio: float
    low: float
    high: float
    p_regression: float
    p_improvement: float
    noise: float


def _bootstrap(blocks: list[np.ndarray], threshold: float, alpha: float, seed: int) -> _Boot:
    """Resample rounds within each block; every resample's estimate as `block_estimate` makes it."""
    rng = np.random.default_rng(seed)
    logs = [np.log(np.median(b[rng.integers(0, len(b), (BOOTSTRAP_RESAMPLES, len(b)))], axis=1)) for b in blocks]
    medians = np.exp(np.mean(logs, axis=0))
    low, high = np.quantile(medians, [alpha / 2, 1 - alpha / 2])
    return _Boot(
        ratio=block_estimate(blocks),
        low=float(low),
        high=float(high),
        p_regression=min(1.0, 2 * float(np.mean(medians <= 1 + threshold))),
        p_improvement=min(1.0, 2 * float(np.mean(medians >= 1 - threshold))),
        noise=float(np.std(medians)),
    )


def detectable_slowdown(noise: float, threshold: float, alpha: float, comparisons: int) -> float:
    """The true slowdown that puts the interval's lower end above 1 + threshold in POWER of runs:
    the estimate must clear the margin by the (Holm-worst-case) critical value, and lands above
    that in POWER of runs when the truth is another POWER-quantile of its noise higher."""
    z_alpha = NormalDist().inv_cdf(1 - alpha / (2 * max(comparisons, 1)))
    return threshold + (z_alpha + NormalDist().inv_cdf(POWER)) * noise


def judge(pairings: list[Pairing], threshold: float, alpha: float, seed: int = 0) -> list[Judged]:
    """Every comparison's estimate, interval and verdict; Holm over the run's comparisons."""
    boots = [_bootstrap(p.by_block(), threshold, alpha, seed) if len(p.base) >= MIN_ROUNDS else None for p in pairings]
    tested = [i for i, b in enumerate(boots) if b is not None]
    adjusted = holm([min(boots[i].p_regression, boots[i].p_improvement) for i in tested])  # type: ignore[union-attr]
    p_holm = dict(zip(tested, adjusted, strict=True))
    return [_judged(p, boots[i], p_holm.get(i), threshold, alpha, len(tested)) for i, p in enumerate(pairings)]


def _judged(
    pairing: Pairing, boot: _Boot | None, p_holm: float | None, threshold: float, alpha: float, tests: int
) -> Judged:
    nan = math.nan
    base, new = float(np.median(pairing.base)), float(np.median(pairing.new))
    if boot is None or p_holm is None:
        ratio = block_estimate(pairing.by_block()) if pairing.base else nan
        return Judged(pairing.backend, pairing.cell, pairing.metric, len(pairing.base), base, new, ratio,
                      nan, nan, nan, nan, nan, nan, len(pairing.by_block()), nan, "too few rounds")  # fmt: skip
    verdict = "no change detected"
    if p_holm < alpha:
        verdict = "regression" if boot.p_regression < boot.p_improvement else "improvement"
    return Judged(
        pairing.backend,
        pairing.cell,
        pairing.metric,
        len(pairing.base),
        base,
        new,
        boot.ratio,
        boot.low,
        boot.high,
        boot.p_regression,
        boot.p_improvement,
        p_holm,
        boot.noise,
        len(pairing.by_block()),
        detectable_slowdown(boot.noise, threshold, alpha, tests),
        verdict,
    )


def _pct(x: float) -> str:
    return "n/a" if math.isnan(x) else f"{(x - 1) * 100:+.1f}%"


def markdown(judged: list[Judged], header: list[str], threshold: float, alpha: float) -> str:
    """The report a reviewer reads (a PR comment): who was measured, then one row per comparison."""
    lines = [*header, ""]
    lines.append(
        "| backend | cell | metric | BASE ms | NEW ms | NEW/BASE | 95% interval | p (Holm) | noise | "
        "detects | verdict |"
    )
    lines.append("|---|---|---|---:|---:|---:|---|---:|---:|---:|---|")
    for j in judged:
        interval = "n/a" if math.isnan(j.low) else f"{_pct(j.low)} .. {_pct(j.high)}"
        p = "n/a" if math.isnan(j.p_holm) else f"{j.p_holm:.3g}"
        noise = "n/a" if math.isnan(j.noise) else f"{j.noise * 100:.1f}%"
        detects = "n/a" if math.isnan(j.detectable) else f">= {j.detectable * 100:.0f}%"
        verdict = f"**{j.verdict}**" if j.verdict in ("regression", "improvement") else j.verdict
        lines.append(
            f"| {j.backend} | {j.cell} | {METRIC_NAMES.get(j.metric, j.metric)} | {j.base_ms:.2f} | {j.new_ms:.2f} "
            f"| {j.ratio:.3f} ({_pct(j.ratio)}) | {interval} | {p} | {noise} | {detects} | {verdict} |"
        )
    lines += ["", summary(judged, threshold, alpha)]
    return "\n".join(lines) + "\n"


def summary(judged: list[Judged], threshold: float, alpha: float) -> str:
    counts = {v: sum(j.verdict == v for j in judged) for v in ("regression", "improvement", "too few rounds")}
    worst = max((j.detectable for j in judged if not math.isnan(j.detectable)), default=math.nan)
    floor = "" if math.isnan(worst) else f"; this run detects slowdowns >= {worst * 100:.0f}% in every comparison"
    return (
        f"{counts['regression']} regression(s), {counts['improvement']} improvement(s), "
        f"{counts['too few rounds']} without a verdict (too few rounds), {len(judged)} comparisons "
        f"(a change counts when its interval lies beyond +-{threshold:.0%}; alpha {alpha}, Holm){floor}"
    )
