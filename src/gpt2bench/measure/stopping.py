"""When a cell has measured enough: fixed repetitions, or `repeats: auto` (a target precision).

Precision is the relative half-width of a distribution-free confidence interval of the median
(order statistics, `metrics.median_ci`) of TPOT and of e2e: (high - low) / 2 / median.

The adaptive rule looks at the runs only at a few planned counts (`looks`: the minimum, then x1.5
each time, up to the maximum) and stops at the first look where every checked metric is precise
enough, or where the next look would overrun the cell's time budget. Stopping when an interval
happens to be narrow would make the reported interval too optimistic if each look used a plain
95% interval (the chance that some look's interval misses grows with the number of looks). So
each look computes its interval at 1 - alpha / K for K planned looks (Bonferroni): the chance that
any of them misses the median is at most alpha, whatever the rule then does, and the interval
reported at the stopping look covers with at least 1 - alpha. The price is a wider interval than
a fixed count of the same size would report (at 12 runs [x2, x11] instead of [x3, x10]).

The runs are taken as independent draws of one distribution; slow drift of the machine within a
cell breaks that, as it does for fixed repetitions.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import asdict, dataclass

from gpt2bench.core.errors import UsageError
from gpt2bench.measure.metrics import median_ci

ALPHA = 0.05
CHECKED = ("tpot_ms", "e2e_ms")  # TPOT is NaN for 1-token runs: then e2e alone
GROWTH = 1.5

# Why a cell stopped where it did (the row's `stop_reason`).
FIXED = "fixed"  # the repeats asked for
TARGET = "target"  # every checked metric within target_ci
BUDGET = "budget"  # the next look would overrun the cell's time budget
MAX_REPEATS = "max_repeats"  # the last look, still short of the target


@dataclass(frozen=True)
class Adaptive:
    """`repeats: auto`: measure until the median of TPOT and e2e is known to `target_ci` (relative
    half-width), with at least `min_repeats` runs, at most `max_repeats`, and timed runs stopping
    at the look before `budget_s` seconds would be exceeded."""

    target_ci: float = 0.02
    min_repeats: int = 8
    max_repeats: int = 40
    budget_s: float = 60.0

    def validate(self) -> None:
        if not 0 < self.target_ci < 1:
            raise UsageError(f"target_ci must be in (0, 1) (a relative half-width, 0.02 = 2%), got {self.target_ci}")
        if self.min_repeats < 2:
            raise UsageError(f"min_repeats must be at least 2, got {self.min_repeats}")
        if self.max_repeats < self.min_repeats:
            raise UsageError(f"max_repeats ({self.max_repeats}) must be at least min_repeats ({self.min_repeats})")
        if self.budget_s <= 0:
            raise UsageError(f"budget_s must be positive, got {self.budget_s}")
        if math.isnan(median_ci([0.0] * self.min_repeats, self.confidence())[0]):
            need = next(n for n in range(2, 100) if not math.isnan(median_ci([0.0] * n, self.confidence())[0]))
            raise UsageError(
                f"min_repeats {self.min_repeats} cannot bound a median at {self.confidence():.2%} "
                f"({len(self.looks())} looks at alpha {ALPHA}): use at least {need}"
            )

    def looks(self) -> list[int]:
        """The counts at which the runs are looked at: min, x1.5 each time, max."""
        counts = [self.min_repeats]
        while counts[-1] < self.max_repeats:
            counts.append(min(self.max_repeats, max(counts[-1] + 1, math.ceil(counts[-1] * GROWTH))))
        return counts

    def confidence(self) -> float:
        """Each look's level, so that all looks together hold 1 - ALPHA (Bonferroni)."""
        return 1 - ALPHA / len(self.looks())

    def record(self) -> dict[str, float]:
        return asdict(self)


def interval(values: Sequence[float], confidence: float) -> tuple[float, float, float]:
    """The median's interval (low, high) at `confidence` and its relative half-width; NaNs when the
    values cannot bound it (too few of them, or all NaN, as TPOT of 1-token runs is)."""
    finite = [v for v in values if not math.isnan(v)]
    if not finite:
        return math.nan, math.nan, math.nan
    low, high = median_ci(finite, confidence)
    mid = statistics.median(finite)
    return low, high, (high - low) / 2 / mid if mid > 0 else math.nan


def precision(values: Sequence[float], confidence: float) -> float:
    """Relative half-width of the median's interval (NaN: not bounded)."""
    return interval(values, confidence)[2]


def precision_columns(runs: dict[str, Sequence[float]], confidence: float) -> dict[str, float]:
    """A row's precision columns: each checked metric's median interval at `confidence` and its
    relative half-width (`tpot_median_ci_low`, ..., `e2e_ci_rel`)."""
    out: dict[str, float] = {}
    for name in CHECKED:
        metric = name.removesuffix("_ms")
        low, high, rel = interval(runs[name], confidence)
        out[f"{metric}_median_ci_low"], out[f"{metric}_median_ci_high"], out[f"{metric}_ci_rel"] = low, high, rel
    return out


def worst_precision(runs: dict[str, Sequence[float]], confidence: float) -> float:
    """The least precise checked metric; a metric with no finite value (TPOT of 1-token runs) is
    not checked. NaN when some checked metric cannot be bounded yet."""
    checked = [runs[name] for name in CHECKED if any(not math.isnan(v) for v in runs.get(name, []))]
    found = [precision(values, confidence) for values in checked]
    return math.nan if not found or any(math.isnan(p) for p in found) else max(found)


def decide(rule: Adaptive, runs: dict[str, Sequence[float]], elapsed_s: float) -> str | None:
    """After a run: None to go on, else why the cell stops. `runs` holds each checked metric's
    values so far; `elapsed_s` is the wall time of the timed loop so far."""
    n = len(runs[CHECKED[-1]])
    looks = rule.looks()
    if n not in looks:
        return None
    worst = worst_precision(runs, rule.confidence())
    if not math.isnan(worst) and worst <= rule.target_ci:
        return TARGET
    if n >= rule.max_repeats:
        return MAX_REPEATS
    following = looks[looks.index(n) + 1]
    if elapsed_s / n * following > rule.budget_s:
        return BUDGET
    return None
