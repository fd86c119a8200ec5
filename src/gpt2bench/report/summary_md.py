"""summary.md: a results document's numbers as markdown tables, beside the figures."""

from __future__ import annotations

import math
from typing import Any

from gpt2bench.machine.sysinfo import cpu_label
from gpt2bench.report.rows import (
    MAX_OTHER_CPU,
    RANDOM_STAMP,
    Row,
    busy,
    cell_rows,
    cluster_line,
    half_ci,
    headline_cell,
    quality_rows,
    run_warnings,
)


def _fmt(v: Any, digits: int = 1) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    return f"{v:,.{digits}f}" if isinstance(v, float) else str(v)


def summary_markdown(doc: dict[str, Any], rows: list[Row], figures: list[str]) -> str:
    cell = headline_cell(rows)
    env = doc.get("environment", {})
    lines = [f"# gpt2bench results: {doc.get('run_id', '')}", ""]
    if any(r.get("weights") == "random" for r in rows):
        lines += [f"> **{RANDOM_STAMP}.**", ""]
    lines += [
        f"Model `{rows[0].get('model')}` ({rows[0].get('weights')}, sha256 {rows[0].get('model_hash')}); "
        f"{cpu_label(env)}; {rows[0].get('threads')} threads; gpt2bench "
        f"{env.get('gpt2bench_version', '?')} at {(env.get('git') or {}).get('commit')}.",
        "",
    ]
    if served := cluster_line(doc, rows):
        lines += [served, ""]
    if combined := doc.get("combined"):
        lines += [
            f"Combined from {combined['folders']} results folders (commits {', '.join(combined['commits'])}); "
            f"{combined['superseded']} earlier measurement(s) of a configuration measured again were left out.",
            "",
        ]
    warned = run_warnings(doc)
    if warned:
        lines += ["## Warnings", ""]
        lines += [f"- **{label}**: {message}" for label, messages in warned.items() for message in messages]
        lines.append("")
    lines += _headline_table(rows, cell) + _cells_table(rows) + _failures(doc, rows)
    lines += ["", "## Figures", ""] + [f"![{name}]({name})" for name in figures]
    return "\n".join(lines) + "\n"


def _headline_table(rows: list[Row], cell: tuple[int, int, int]) -> list[str]:
    lines = [
        f"## Headline cell: prompt {cell[0]}, generate {cell[1]}, batch {cell[2]}",
        "",
        "Medians over repetitions; e2e as mean ± half-width of the 95% CI (Student t).",
        "",
        "| backend | TTFT ms | TPOT ms | e2e ms | decode tok/s | peak RSS MB | perplexity | greedy agreement "
        "| top-1 agreement |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    quality = {r["label"]: r for r in quality_rows(rows)}  # measured once per backend, maybe in another cell
    for r in cell_rows(rows, cell):
        q = quality.get(r["label"], {})
        lines.append(
            f"| {r['label']} | {_fmt(r['ttft_ms_median'])} | {_fmt(r['tpot_ms_median'], 2)} | "
            f"{_spread(r)} | {_fmt(r['decode_tps_median'])} | "
            f"{_fmt(r.get('peak_rss_mb'), 0)} | {_fmt(q.get('ppl'), 2)} | {_fmt(q.get('agree_greedy'), 3)} | "
            f"{_fmt(q.get('agree_top1'), 3)} |"
        )
    return lines


def _spread(row: Row) -> str:
    """e2e as mean ± half-width of its 95% interval; one repetition has none, and says so."""
    if row.get("repeats") == 1:
        return f"{_fmt(row['e2e_ms_mean'])} (n = 1)"
    return f"{_fmt(row['e2e_ms_mean'])} ± {_fmt(half_ci(row, 'e2e_ms'))}"


def _cells_table(rows: list[Row]) -> list[str]:
    lines = [
        "",
        "## Every cell",
        "",
        "| backend | prompt | gen | batch | TTFT ms | TPOT ms | e2e ms (median) | other CPU |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        noise = r.get("other_cpu_frac")
        lines.append(
            f"| {r['label']} | {r['prompt_len']} | {r['gen_len']} | {r['batch_size']} | "
            f"{_fmt(r['ttft_ms_median'])} | {_fmt(r['tpot_ms_median'], 2)} | {_fmt(r['e2e_ms_median'])} | "
            f"{_fmt(noise * 100) + '%' if _fmt(noise) != '-' else '-'}{' **busy**' if busy(r) else ''} |"
        )
    if any(busy(r) for r in rows):
        lines += ["", f"**busy**: other processes used more than {MAX_OTHER_CPU:.0%} of the CPU while it was measured."]
    return lines


def _failures(doc: dict[str, Any], rows: list[Row]) -> list[str]:
    lines: list[str] = []
    failed = [r for r in doc["rows"] if r.get("status") != "ok"]
    if failed:
        lines += ["", "## Failed cells", ""]
        lines += [
            f"- {r['label']} prompt {r['prompt_len']} gen {r['gen_len']} batch {r['batch_size']}: {r.get('error')}"
            for r in failed
        ]
    no_quality = [r for r in rows if r.get("quality_error")]
    if no_quality:
        lines += ["", "## Quality that failed (the speed figures stand)", ""]
        lines += [f"- {r['label']}: {r['quality_error']}" for r in no_quality]
    return lines
