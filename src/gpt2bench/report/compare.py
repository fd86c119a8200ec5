"""`gpt2bench compare BASELINE NEW`: match rows by configuration, test each metric on the raw
per-repetition samples (Mann-Whitney U, two-sided) and against a relative threshold, and say
faster / slower / same / missing. A change counts only when it is both significant and larger than
the threshold: noise on shared machines is routinely several percent.

Normalization (`--normalize hf-eager`) divides every sample by the median of the reference backend
measured in the same run and cell, so a baseline recorded on one machine can judge a run on
another: a machine that is uniformly 1.5x slower cancels out. Quality columns (perplexity,
greedy agreement) have no samples; they are judged by the threshold alone.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from gpt2bench.core.errors import UsageError
from gpt2bench.machine.sysinfo import cpu_label
from gpt2bench.measure.row import IDENTITY_FIELDS, identity
from gpt2bench.report.collect import read_results
from gpt2bench.report.rows import machines

# metric -> True when lower is better
SPEED_METRICS = {"tpot_ms": True, "ttft_ms": True, "e2e_ms": True, "decode_tps": False, "overall_tps": False}
QUALITY_METRICS = {"ppl": True, "agree_greedy": False, "agree_top1": False}
DEFAULT_METRICS = ("tpot_ms", "ttft_ms", "e2e_ms")
REGRESSIONS = ("slower", "worse")


@dataclass(frozen=True)
class Verdict:
    key: tuple[Any, ...]
    metric: str
    baseline: float | None
    new: float | None
    ratio: float | None  # new / baseline
    p_value: float | None  # Mann-Whitney U, two-sided, as tested
    verdict: str  # faster | slower | same | too-few | better | worse | missing | new | reference
    samples: tuple[int, int] | None = None  # repetitions behind a speed verdict: (baseline, new)
    p_holm: float | None = None  # p_value after Holm's correction over every speed test of the call


def holm(p_values: list[float]) -> list[float]:
    """Holm's step-down adjustment: the i-th smallest of m p-values times (m - i), kept monotone,
    capped at 1. Rejecting where the adjusted p < alpha holds the family-wise error rate at alpha
    over all m tests (a cpu.yaml sweep compares ~330), with no assumption about their dependence."""
    order = sorted(range(len(p_values)), key=lambda i: p_values[i])
    adjusted = [1.0] * len(p_values)
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (len(p_values) - rank) * p_values[i]))
        adjusted[i] = running
    return adjusted


def _corrected(verdicts: list[Verdict], alpha: float) -> list[Verdict]:
    """Speed verdicts judged on Holm-adjusted p-values: a change is significant only if it
    survives the correction for every other speed test made alongside it."""
    tested = [i for i, v in enumerate(verdicts) if v.p_value is not None]
    adjusted = holm([verdicts[i].p_value for i in tested])  # type: ignore[misc]
    out = list(verdicts)
    for i, p in zip(tested, adjusted, strict=True):
        verdict = out[i].verdict if p < alpha or out[i].verdict not in ("slower", "faster") else "same"
        out[i] = replace(out[i], p_holm=p, verdict=verdict)
    return out


def smallest_p(n_baseline: int, n_new: int) -> float:
    """The smallest two-sided p an exact Mann-Whitney U test can give for these sample sizes (the
    samples fully separated): 2 / C(n1 + n2, n1). With 3 and 3 it is 0.10, so at alpha 0.05 no
    difference, however large, can be significant."""
    return min(1.0, 2 / math.comb(n_baseline + n_new, n_baseline))


def power_note(verdicts: list[Verdict], alpha: float) -> str | None:
    """A warning when some comparisons had too few repetitions to ever be significant."""
    blind = Counter(v.samples for v in verdicts if v.samples and min(v.samples) > 1 and smallest_p(*v.samples) >= alpha)
    if not blind:
        return None
    sizes = ", ".join(f"{a} vs {b} (smallest p {smallest_p(a, b):.2g})" for a, b in sorted(blind))
    return (
        f"note: {sum(blind.values())} comparison(s) had too few repetitions to reach alpha {alpha}: {sizes}; "
        "they can only read 'same'. Repeat more (5 vs 5 reaches 0.008)."
    )


Key = tuple[str, ...]


def config_key(row: dict[str, Any]) -> Key:
    """The configuration a row measured (measure/row.py's identity): two rows with the same key
    are the same measurement, one per side."""
    return tuple(identity(row).values())


def key_fields(key: Key) -> dict[str, str]:
    return dict(zip(IDENTITY_FIELDS, key, strict=True))


def _reference_key(key: Key, reference: str) -> Key:
    """The reference backend in its plain configuration (fp32, default options), same cell and settings."""
    fields = {**key_fields(key), "backend": reference, "dtype": "fp32", "options": "{}"}
    return tuple(fields.values())


def _is_reference(key: Key, reference: str | None) -> bool:
    return reference is not None and key == _reference_key(key, reference)


def _samples(doc: dict[str, Any]) -> dict[Key, tuple[dict[str, Any], dict[str, list[float]]]]:
    out = {}
    samples = doc.get("samples") or [{}] * len(doc["rows"])
    for row, sample in zip(doc["rows"], samples, strict=False):
        if row.get("status") == "ok":
            out[config_key(row)] = (row, (sample or {}).get("per_run", {}))
    return out


def _values(row: dict[str, Any], per_run: dict[str, list[float]], metric: str) -> list[float]:
    values = [v for v in per_run.get(metric, []) if v is not None and not math.isnan(v)]
    if not values and row.get(f"{metric}_median") is not None:
        values = [row[f"{metric}_median"]]
    return values


def _normalizer(table: dict, key: Key, reference: str, metric: str) -> float | None:
    ref_key = _reference_key(key, reference)
    if ref_key not in table:
        return None
    row, per_run = table[ref_key]
    values = _values(row, per_run, metric)
    return float(np.median(values)) if values else None


def _check(metrics: tuple[str, ...], threshold: float, quality_threshold: float, alpha: float) -> None:
    for metric in metrics:
        if metric not in SPEED_METRICS:
            raise UsageError(f"unknown metric '{metric}' (choose from: {', '.join(SPEED_METRICS)})")
    if threshold < 0 or quality_threshold < 0:
        raise UsageError(f"thresholds must be >= 0, got {min(threshold, quality_threshold)}")
    if not 0 < alpha < 1:
        raise UsageError(f"alpha must be between 0 and 1, got {alpha}")


def _models(doc: dict[str, Any]) -> dict[str, str]:
    """weights hash -> the model's name, over a document's successful rows."""
    return {str(r.get("model_hash")): str(r.get("model")) for r in doc["rows"] if r.get("status") == "ok"}


def _check_one_model(baseline: dict[str, Any], new: dict[str, Any]) -> None:
    """Two runs of different weights share no configuration: every row would read "missing" and
    "new". Say what differs instead."""
    old, now = _models(baseline), _models(new)
    if old and now and not set(old) & set(now):

        def named(models: dict[str, str]) -> str:
            return ", ".join(f"{name} ({digest})" for digest, name in sorted(models.items()))

        raise UsageError(
            f"the runs measured different models: the baseline {named(old)}, the new run {named(now)}; "
            "compare runs of one model"
        )


def compare(
    baseline: dict[str, Any],
    new: dict[str, Any],
    metrics: tuple[str, ...] = DEFAULT_METRICS,
    threshold: float = 0.10,
    quality_threshold: float = 0.01,
    alpha: float = 0.05,
    normalize: str | None = None,
) -> list[Verdict]:
    _check(metrics, threshold, quality_threshold, alpha)
    _check_one_model(baseline, new)
    base, cand = _samples(baseline), _samples(new)
    for table, which in ((base, "baseline"), (cand, "new run")):
        if normalize and not any(_is_reference(k, normalize) for k in table):
            raise UsageError(f"--normalize {normalize}: the {which} has no {normalize} rows (fp32, no options)")
    verdicts: list[Verdict] = []
    for key in list(base) + [k for k in cand if k not in base]:
        if key not in cand or key not in base:
            verdicts.append(Verdict(key, "-", None, None, None, None, "missing" if key not in cand else "new"))
            continue
        if _is_reference(key, normalize):
            verdicts.append(Verdict(key, "-", None, None, None, None, "reference"))
        else:
            verdicts += [_speed(base, cand, key, m, threshold, alpha, normalize) for m in metrics]
        verdicts += _quality(base[key][0], cand[key][0], key, quality_threshold)
    return _corrected([v for v in verdicts if v is not None], alpha)


def _speed(
    base: dict, cand: dict, key: Key, metric: str, threshold: float, alpha: float, normalize: str | None
) -> Verdict | None:
    """One speed metric of one configuration: both significant and beyond the threshold to count."""
    from scipy.stats import mannwhitneyu

    (b_row, b_runs), (n_row, n_runs) = base[key], cand[key]
    b, n = _values(b_row, b_runs, metric), _values(n_row, n_runs, metric)
    if normalize:
        b_ref, n_ref = _normalizer(base, key, normalize, metric), _normalizer(cand, key, normalize, metric)
        if not b_ref or not n_ref:
            return Verdict(key, metric, None, None, None, None, "missing")
        b, n = [v / b_ref for v in b], [v / n_ref for v in n]
    if not b or not n:
        return None
    b_med, n_med = float(np.median(b)), float(np.median(n))
    ratio = n_med / b_med if b_med else math.inf
    if len(b) < 2 or len(n) < 2:  # one repetition has no spread: no test can tell change from noise
        return Verdict(key, metric, b_med, n_med, ratio, None, "too-few", (len(b), len(n)))
    p = float(mannwhitneyu(n, b, alternative="two-sided").pvalue)
    worse = ratio > 1 + threshold if SPEED_METRICS[metric] else ratio < 1 - threshold
    better = ratio < 1 - threshold if SPEED_METRICS[metric] else ratio > 1 + threshold
    # Significance is decided after Holm's correction over the whole comparison (`_corrected`).
    verdict = "slower" if worse else "faster" if better else "same"
    return Verdict(key, metric, b_med, n_med, ratio, p, verdict, (len(b), len(n)))


def _quality(b_row: dict[str, Any], n_row: dict[str, Any], key: Key, threshold: float) -> list[Verdict]:
    """Quality columns have no samples: judged by the threshold alone."""
    verdicts = []
    for metric, lower_better in QUALITY_METRICS.items():
        b_val, n_val = b_row.get(metric), n_row.get(metric)
        if b_val is None or n_val is None:
            continue
        ratio = n_val / b_val if b_val else math.inf
        worse = ratio > 1 + threshold if lower_better else ratio < 1 - threshold
        better = ratio < 1 - threshold if lower_better else ratio > 1 + threshold
        verdict = "worse" if worse else "better" if better else "same"
        verdicts.append(Verdict(key, metric, b_val, n_val, ratio, None, verdict))
    return verdicts


def _num(v: float | None, digits: int = 3) -> str:
    return "-" if v is None else f"{v:.{digits}g}"


def markdown(verdicts: list[Verdict], normalized_to: str | None) -> str:
    unit = f" (normalized to {normalized_to})" if normalized_to else ""
    lines = [
        f"| backend | dtype | options | prompt | gen | batch | metric{unit} | baseline | new | ratio | p | p (Holm) "
        "| verdict |",
        "|---|---|---|---:|---:|---:|---|---:|---:|---:|---:|---:|---|",
    ]
    for v in verdicts:
        fields = key_fields(v.key)
        backend, dtype, options = fields["backend"], fields["dtype"], fields["options"]
        prompt, gen, batch = fields["prompt_len"], fields["gen_len"], fields["batch_size"]
        mark = f"**{v.verdict}**" if v.verdict in (*REGRESSIONS, "missing") else v.verdict
        lines.append(
            f"| {backend} | {dtype} | {options} | {prompt} | {gen} | {batch} | {v.metric} | {_num(v.baseline)} | "
            f"{_num(v.new)} | {_num(v.ratio)} | {_num(v.p_value, 2)} | {_num(v.p_holm, 2)} | {mark} |"
        )
    return "\n".join(lines)


def few_note(verdicts: list[Verdict]) -> str | None:
    """A note when some speed metric had a single repetition on a side: no verdict for it."""
    few = [v for v in verdicts if v.verdict == "too-few"]
    if not few:
        return None
    return (
        f"note: {len(few)} comparison(s) had one repetition on a side: one sample has no spread, so no "
        "change can be told from noise there ('too-few', not a verdict). Measure with --repeats 2 or more."
    )


def machine_note(baseline: dict[str, Any], new: dict[str, Any]) -> str | None:
    """A warning when the two runs were measured on different CPUs. Normalizing to a reference
    backend cancels a machine's overall speed, not its instruction sets: int8 with or without
    VNNI, or bf16 with or without AVX512-BF16, moves one backend against hf-eager."""
    spans = [
        f"the {side} ran on {n} machines (a cluster sweep): its cells were paired whichever node measured them"
        for side, doc in (("baseline", baseline), ("new run", new))
        if (n := len(machines(doc.get("rows") or []))) > 1
    ]
    if spans:  # a cluster's driver's environment is not its nodes': the rows say where they ran
        return "note: " + "; ".join(spans)
    old_cpu, new_cpu = (cpu_label(doc.get("environment", {})) for doc in (baseline, new))
    if old_cpu == new_cpu:
        return None
    return f"note: the baseline ran on {old_cpu}, the new run on {new_cpu}: ratios also compare the CPUs"


def load(folder: Path) -> dict[str, Any]:
    return read_results(folder, ("backend", "prompt_len", "gen_len", "batch_size"))
