"""`gpt2bench plot`: figures and a markdown summary from a results folder. Reads only the results
files (matplotlib, no torch). Every figure is a function of the rows, so tests can check its data.
Error bars are 95% confidence intervals of the mean (Student t), as the results store them."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only; never a window
import matplotlib.pyplot as plt
from matplotlib.figure import Figure

from gpt2bench.core.errors import BenchError
from gpt2bench.core.fsutil import check_writable
from gpt2bench.machine.sysinfo import cpu_label
from gpt2bench.report.collect import read_results
from gpt2bench.report.plot_serving import fig_goodput, fig_latency_vs_throughput, serve_rows, serving_markdown
from gpt2bench.report.rows import (
    MAX_OTHER_CPU,
    RANDOM_STAMP,
    Row,
    busy,
    cell_rows,
    check_numbers,
    half_ci,
    headline_cell,
    labels,
    ok_rows,
    quality_rows,
    run_warnings,
)
from gpt2bench.report.summary_md import summary_markdown

REQUIRED = (
    "label",
    "status",
    "prompt_len",
    "gen_len",
    "batch_size",
    "e2e_ms_median",
    "tpot_ms_median",
    "ttft_ms_median",
    "decode_tps_median",
)


def _caption(fig: Figure, doc: dict[str, Any], rows: list[Row]) -> None:
    env = doc.get("environment", {})
    first = rows[0]
    commit = ((env.get("git") or {}).get("commit") or "")[:12]
    name = str(first.get("model"))
    name = Path(name).name if "/" in name else name  # a local folder's full path would run off the figure
    model = f"model {name} ({first.get('weights')}, {first.get('model_hash')})"
    text = (
        f"{model} | {cpu_label(env)} | {first.get('threads')} threads | "
        f"gpt2bench {env.get('gpt2bench_version', '?')} {commit}"
    )
    fig.text(0.01, 0.005, text, fontsize=7, color="0.35", ha="left", va="bottom")
    shown = {r["label"] for r in rows}
    crowded = sorted({r["label"] for r in rows if busy(r)})
    if crowded:
        fig.text(
            0.99,
            0.06,
            f"measured under CPU contention (> {MAX_OTHER_CPU:.0%} other processes): {', '.join(crowded)}",
            fontsize=7,
            color="darkorange",
            ha="right",
            va="bottom",
            weight="bold",
        )
    warned = sorted(label for label in run_warnings(doc) if label in shown)
    if warned:
        # The full text is in summary.md; a figure passed around alone must still carry the doubt.
        fig.text(
            0.99,
            0.035,
            f"warning for {', '.join(warned)}: see summary.md",
            fontsize=7,
            color="firebrick",
            ha="right",
            va="bottom",
            weight="bold",
        )
    if any(r.get("weights") == "random" for r in rows):
        fig.text(
            0.01,
            0.035,
            RANDOM_STAMP,
            fontsize=8,
            color="white",
            ha="left",
            va="bottom",
            weight="bold",
            bbox={"facecolor": "firebrick", "edgecolor": "none", "pad": 3},
        )


def _log_if_wide(ax: Any, axis: str, values: list[float]) -> None:
    positive = [v for v in values if v and v > 0]
    if positive and max(positive) / min(positive) >= 10:
        (ax.set_xscale if axis == "x" else ax.set_yscale)("log")


def fig_headline(doc: dict[str, Any], rows: list[Row]) -> Figure:
    cell = headline_cell(rows)
    at = cell_rows(rows, cell)
    fig, ax = plt.subplots(figsize=(8, 4.5))
    names = [r["label"] for r in at]
    ax.bar(names, [r["e2e_ms_mean"] for r in at], yerr=[half_ci(r, "e2e_ms") for r in at], capsize=4, color="steelblue")
    ax.set_ylabel("end-to-end latency (ms), mean ± 95% CI")
    ax.set_title(f"End-to-end time per backend: prompt {cell[0]}, generate {cell[1]}, batch {cell[2]}")
    ax.tick_params(axis="x", rotation=20)
    _caption(fig, doc, rows)
    fig.tight_layout(rect=(0, 0.07, 1, 1))
    return fig


def fig_perplexity(doc: dict[str, Any], rows: list[Row]) -> Figure | None:
    q = quality_rows(rows)
    if not q:
        return None
    fig, ax = plt.subplots(figsize=(8, 4.5))
    ax.bar([r["label"] for r in q], [r["ppl"] for r in q], color="darkseagreen")
    ax.set_ylabel("perplexity (lower is better)")
    window = q[0].get("ppl_window")
    ax.set_title(f"Perplexity per backend ({q[0].get('ppl_tokens')} tokens, windows of {window})")
    ax.tick_params(axis="x", rotation=20)
    _caption(fig, doc, rows)
    fig.tight_layout(rect=(0, 0.07, 1, 1))
    return fig


def fig_time_vs_prompt(doc: dict[str, Any], rows: list[Row]) -> Figure:
    batch = headline_cell(rows)[2]
    gens = sorted({r["gen_len"] for r in rows if r["batch_size"] == batch})
    fig, axes = plt.subplots(1, len(gens), figsize=(max(8, 4.5 * len(gens)), 4.6), squeeze=False)
    for ax, gen in zip(axes[0], gens, strict=True):
        for name in labels(rows):
            pts = sorted(
                (r["prompt_len"], r["e2e_ms_median"])
                for r in rows
                if r["label"] == name and r["gen_len"] == gen and r["batch_size"] == batch
            )
            if pts:
                ax.plot(*zip(*pts, strict=True), marker="o", label=name)
        ax.set_title(f"generate {gen} tokens")
        ax.set_xlabel("prompt length (tokens)")
        ax.set_ylabel("end-to-end time (ms, median)")
        _log_if_wide(ax, "x", [r["prompt_len"] for r in rows])
        _log_if_wide(ax, "y", [r["e2e_ms_median"] for r in rows])
    axes[0][-1].legend(fontsize=8)
    fig.suptitle(f"Time against prompt length, per generation length (batch {batch})")
    _caption(fig, doc, rows)
    fig.tight_layout(rect=(0, 0.07, 1, 0.96))
    return fig


def fig_ttft_and_throughput(doc: dict[str, Any], rows: list[Row]) -> Figure | None:
    """TTFT against prompt length and decode rate against output length: each panel only where its
    axis has two values at least (one output length drew two dots on a 9.6-10.4 axis)."""
    batch = headline_cell(rows)[2]
    mine = [r for r in rows if r["batch_size"] == batch]
    gen_fixed = Counter(r["gen_len"] for r in mine).most_common(1)[0][0]
    prompt_fixed = Counter(r["prompt_len"] for r in mine).most_common(1)[0][0]
    panels = [
        (
            [r for r in mine if r["gen_len"] == gen_fixed],
            ("prompt_len", "ttft_ms_median"),
            (f"TTFT against prompt length (generate {gen_fixed})", "prompt tokens", "time to first token (ms, median)"),
        ),
        (
            [r for r in mine if r["prompt_len"] == prompt_fixed and r["decode_tps_median"] is not None],
            ("gen_len", "decode_tps_median"),
            (f"Decode throughput against output length (prompt {prompt_fixed})", "generated tokens",
             "decode tokens/s (median)"),
        ),
    ]  # fmt: skip
    panels = [p for p in panels if len({r[p[1][0]] for r in p[0]}) > 1]
    if not panels:
        return None
    fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels) + 0.5, 4.2), squeeze=False)
    for ax, (selected, (x, y), (title, xlabel, ylabel)) in zip(axes[0], panels, strict=True):
        for name in labels(selected):
            ax.plot(*zip(*sorted((r[x], r[y]) for r in selected if r["label"] == name), strict=True), marker="o",
                    label=name)  # fmt: skip
        ax.set(title=title, xlabel=xlabel, ylabel=ylabel)
        _log_if_wide(ax, "x", [r[x] for r in rows])
    axes[0][0].legend(fontsize=8)
    _caption(fig, doc, rows)
    fig.tight_layout(rect=(0, 0.07, 1, 1))
    return fig


def pareto_front(points: list[tuple[float, float, str]]) -> list[tuple[float, float, str]]:
    """Points no other point beats on both axes (lower is better on each), by increasing x."""
    front: list[tuple[float, float, str]] = []
    for x, y, name in sorted(points):
        if not front or y < front[-1][1]:
            front.append((x, y, name))
    return front


def fig_speed_quality(doc: dict[str, Any], rows: list[Row]) -> Figure | None:
    cell = headline_cell(rows)
    q = {r["label"]: r for r in quality_rows(rows)}
    at = [r for r in cell_rows(rows, cell) if r["label"] in q and r.get("tpot_ms_median") is not None]
    if not at:
        return None
    use_ppl = all(q[r["label"]].get("ppl") is not None for r in at)
    ykey, ylabel = ("ppl", "perplexity") if use_ppl else ("agree_greedy", "greedy disagreement")
    points = [
        (r["tpot_ms_median"], q[r["label"]][ykey] if use_ppl else 1 - q[r["label"]][ykey], r["label"]) for r in at
    ]
    fig, ax = plt.subplots(figsize=(8, 5.5))
    for x, y, name in points:
        ax.scatter(x, y, s=40)
        ax.annotate(name, (x, y), textcoords="offset points", xytext=(5, 5), fontsize=8)
    front = pareto_front(points)
    ax.plot([p[0] for p in front], [p[1] for p in front], "--", color="firebrick", label="Pareto front")
    ax.set(
        xlabel="TPOT (ms, median; lower is faster)",
        ylabel=f"{ylabel} (lower is better)",
        title=f"Speed against quality (prompt {cell[0]}, generate {cell[1]}, batch {cell[2]})",
    )
    ax.legend(fontsize=8)
    _caption(fig, doc, rows)
    fig.tight_layout(rect=(0, 0.07, 1, 1))
    return fig


def build_figures(doc: dict[str, Any]) -> dict[str, Figure]:
    rows, serving = ok_rows(doc), serve_rows(doc)
    if not rows and not serving:
        raise BenchError(
            "every cell failed, so there is nothing to plot: each failed row's error is in results.json "
            "(status 'failed', error)"
        )
    candidates = {
        "latency_vs_throughput.png": fig_latency_vs_throughput(serving),
        "goodput_vs_rate.png": fig_goodput(serving),
    }
    if rows:
        candidates |= {
            "e2e_headline.png": fig_headline(doc, rows),
            "perplexity.png": fig_perplexity(doc, rows),
            "time_vs_prompt.png": fig_time_vs_prompt(doc, rows),
            "ttft_and_throughput.png": fig_ttft_and_throughput(doc, rows),
            "speed_vs_quality.png": fig_speed_quality(doc, rows),
        }
    return {name: fig for name, fig in candidates.items() if fig is not None}


def plot(folder: Path, out: Path | None = None, model: str | None = None) -> list[Path]:
    doc = read_results(folder, REQUIRED, model)
    check_numbers(ok_rows(doc), str(folder))
    out = out or folder
    try:
        check_writable(out)
    except OSError as exc:
        raise BenchError(f"cannot write figures to '{out}': {exc.strerror or exc}") from None
    figures = build_figures(doc)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name, fig in figures.items():
        fig.savefig(out / name, dpi=110)
        plt.close(fig)
        written.append(out / name)
    summary = out / "summary.md"
    rows = ok_rows(doc)
    text = summary_markdown(doc, rows, list(figures)) if rows else ""
    summary.write_text(text + "\n".join(serving_markdown(serve_rows(doc))))
    return [*written, summary]
