"""Commands over results files: plot and compare (report/; they never import torch)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from gpt2bench.core.errors import BenchError


def plot(
    folder: Annotated[
        Path, typer.Argument(help="A results folder (from run or sweep), or a folder of them, e.g. results/.")
    ],
    out: Annotated[Path | None, typer.Option(help="Where to write figures (default: the results folder).")] = None,
    model: Annotated[
        str | None, typer.Option(help="Only this model's results (its --model name or weights hash).")
    ] = None,
) -> None:
    """PNG figures and summary.md from a results folder (never imports torch)."""
    from gpt2bench.report.plot import plot as make_plots

    for path in make_plots(folder, out, model):
        print(path)


COMPARE_EPILOG = (
    "A regression is a change both significant (Mann-Whitney U on the per-repetition samples, "
    "Holm-corrected over every speed comparison of the call; 2+ repetitions per side) and beyond "
    "the threshold. Baseline rows the new run does not have fail too: a gate must not pass what it did not check."
)


def compare(
    baseline: Annotated[Path, typer.Argument(help="Baseline results folder.")],
    new: Annotated[Path, typer.Argument(help="New results folder.")],
    metric: Annotated[list[str] | None, typer.Option(help="Speed metric to judge (repeatable).")] = None,
    threshold: Annotated[float, typer.Option(help="Relative change that counts, e.g. 0.1 = 10%.")] = 0.10,
    quality_threshold: Annotated[
        float, typer.Option(help="Relative change in perplexity/agreement that counts.")
    ] = 0.01,
    alpha: Annotated[float, typer.Option(help="Significance level of the Mann-Whitney U test.")] = 0.05,
    normalize: Annotated[
        str | None, typer.Option(help="Reference backend measured in the same run, e.g. hf-eager.")
    ] = None,
    allow_missing: Annotated[
        bool, typer.Option(help="Do not fail when baseline rows are missing from the new run.")
    ] = False,
) -> None:
    """Compare two results folders; exit 1 on a regression or a missing row."""
    from gpt2bench.report.compare import (
        DEFAULT_METRICS,
        REGRESSIONS,
        few_note,
        load,
        machine_note,
        markdown,
        power_note,
    )
    from gpt2bench.report.compare import compare as run_compare

    old_doc, new_doc = load(baseline), load(new)
    verdicts = run_compare(
        old_doc, new_doc, tuple(metric or DEFAULT_METRICS), threshold, quality_threshold, alpha, normalize
    )
    print(markdown(verdicts, normalize))
    for note in (machine_note(old_doc, new_doc), power_note(verdicts, alpha), few_note(verdicts)):
        if note:
            print(f"\n{note}")
    bad = [v for v in verdicts if v.verdict in REGRESSIONS]
    missing = [v for v in verdicts if v.verdict == "missing"]
    print(
        f"\n{len(bad)} regression(s), {len(missing)} missing, {len(verdicts)} comparisons "
        f"(threshold {threshold:.0%}, alpha {alpha})"
    )
    if bad:
        raise typer.Exit(1)
    if missing and not allow_missing:
        raise BenchError(
            f"{len(missing)} baseline comparison(s) missing from the new run (--allow-missing to accept that)"
        )
