"""Figures and tables of load tests (`gpt2bench load`, rows with scenario "serve"): latency against
throughput per backend, and goodput against the offered rate, one line per backend."""

from __future__ import annotations

from typing import Any

from matplotlib.figure import Figure

from gpt2bench.report.rows import Row


def serve_rows(doc: dict[str, Any]) -> list[Row]:
    return [r for r in doc.get("rows") or [] if r.get("scenario") == "serve" and r.get("status") == "ok"]


def _rate(row: Row) -> float:
    return float("inf") if row["request_rate"] == "inf" else float(row["request_rate"])


def _series(rows: list[Row]) -> dict[str, list[Row]]:
    out: dict[str, list[Row]] = {}
    for row in sorted(rows, key=_rate):
        out.setdefault(row["label"], []).append(row)
    return out


def fig_latency_vs_throughput(rows: list[Row]) -> Figure | None:
    """Each backend's rates as points of (output tokens/s, latency): p50 TTFT and p50 TPOT."""
    if not rows:
        return None
    fig = Figure(figsize=(11, 4.2))
    axes = fig.subplots(1, 2)
    for ax, metric, name in ((axes[0], "ttft_ms_median", "TTFT"), (axes[1], "tpot_ms_median", "TPOT")):
        for label, series in _series(rows).items():
            points = [(r["output_tps"], r[metric]) for r in series if r.get(metric) is not None]
            if points:
                ax.plot(*zip(*points, strict=True), marker="o", label=label)
        ax.set(xlabel="output tokens/s (all requests)", ylabel=f"{name} ms (median)")
        ax.set_title(f"{name} against throughput")
        ax.set_yscale("log")
        ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def fig_goodput(rows: list[Row]) -> Figure | None:
    """Goodput (requests/s within the SLOs) and request throughput against the offered rate."""
    finite = [r for r in rows if r["request_rate"] != "inf"]
    if not finite:
        return None
    fig = Figure(figsize=(6.5, 4.2))
    ax = fig.subplots()
    for label, series in _series(finite).items():
        rates = [_rate(r) for r in series]
        line = ax.plot(rates, [r["goodput"] for r in series], marker="o", label=f"{label} goodput")[0]
        ax.plot(rates, [r["request_throughput"] for r in series], ls="--", color=line.get_color(), alpha=0.6)
    top = max(_rate(r) for r in finite)
    ax.plot([0, top], [0, top], color="0.7", lw=0.8, label="offered rate")
    slo = next((r.get("slo") for r in finite if r.get("slo")), "") or "none"
    ax.set(xlabel="offered rate (requests/s)", ylabel="requests/s", title=f"Goodput (SLO {slo}); dashed: throughput")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def serving_markdown(rows: list[Row]) -> list[str]:
    """summary.md's table of load tests: a line per backend and rate."""
    if not rows:
        return []

    def num(value: Any, digits: int = 1) -> str:
        return "-" if value is None else f"{value:.{digits}f}"

    lines = [
        "## Load tests (many users)",
        "",
        "| backend | rate/s | ok | req/s | goodput/s | tok/s | TTFT p50 / p99 ms | TPOT p50 ms | ITL p99 ms "
        "| peak conc. |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for label, series in _series(rows).items():
        for r in series:
            lines.append(
                f"| {label} | {r['request_rate']} | {r['completed']}/{r['requests']} "
                f"| {num(r['request_throughput'], 2)} | {num(r['goodput'], 2)} | {num(r['output_tps'], 0)} "
                f"| {num(r['ttft_ms_median'])} / {num(r['ttft_ms_p99'])} | {num(r['tpot_ms_median'])} "
                f"| {num(r['itl_ms_p99'])} | {r['peak_concurrency']} |"
            )
    overhead = rows[0].get("client_overhead_ttft_ms_median")
    if overhead is not None:
        lines += ["", f"Client overhead (against a server that does no work): TTFT p50 {overhead:.1f} ms, "
                      f"ITL p50 {rows[0].get('client_overhead_itl_ms_median', 0):.2f} ms."]  # fmt: skip
    return [*lines, ""]
