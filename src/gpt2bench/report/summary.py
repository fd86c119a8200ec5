"""The rich summary printed after a run."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from rich.console import Console
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from gpt2bench.measure.metrics import PER_RUN_METRICS
from gpt2bench.measure.roofline import rate_unit
from gpt2bench.measure.row import COLUMNS

LABELS = {
    "ttft_ms": "TTFT ms",
    "tpot_ms": "TPOT ms",
    "e2e_ms": "e2e ms",
    "decode_tps": "decode tok/s",
    "overall_tps": "total tok/s",
    "prefill_tps": "prefill tok/s",
}
RANDOM_WARNING = (
    "WEIGHTS ARE RANDOM: speed numbers have GPT-2 124M's real shapes and cost, but any "
    "quality number (perplexity, agreement, sample text) is meaningless."
)


def _fmt(value: Any, digits: int = 2) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if not isinstance(value, float):
        return str(value)
    return f"{value:,.0f}" if abs(value) >= 1000 else f"{value:.{digits}f}"


def in_words(key: str, value: Any) -> str:
    """A backend's own figure (`onnx-int8_cache_hit`, `export_s`, `cuda_max_allocated_mb`) as words."""
    if key.endswith("_cache_hit"):
        return f"{key.removesuffix('_cache_hit')} artifact {'read from the cache' if value else 'built now'}"
    for suffix, unit in (("_s", "s"), ("_mb", "MB")):
        if key.endswith(suffix):
            return f"{key.removesuffix(suffix).replace('_', ' ')} {_fmt(value)} {unit}"
    return f"{key.replace('_', ' ')} {_fmt(value)}"


def contention_fact(row: dict[str, Any]) -> str:
    other, share = row.get("other_cpu_s"), row.get("other_cpu_frac")
    if _fmt(other) == "-":
        return "other processes' CPU: not measured (no /proc/stat)"
    if _fmt(share) == "-":
        return (
            f"other processes used {_fmt(other)} CPU-s "
            "(the timed runs were too short for /proc/stat's clock ticks to give a share of the machine)"
        )
    return f"other processes used {_fmt(other)} CPU-s ({_fmt(share * 100, 1)}% of the machine)"


def roofline_line(row: dict[str, Any]) -> str | None:
    """The row's roofline figures in one sentence (None for rows without them)."""
    if row.get("decode_gbs") is None:
        return None
    frac = row.get("decode_bw_frac")
    peak = row.get("prefill_peak_frac")
    arithmetic = row.get("compute_dtype") or row.get("dtype")
    unit = rate_unit(arithmetic)
    roof = (
        f"{peak * 100:.0f}% of the {row['peak_gflops']:.0f} {unit} {arithmetic} matmul roof"
        if peak is not None
        else f"no {arithmetic} matmul roof measured"
    )
    memory = (
        f"{frac * 100:.0f}% of the {row['read_bandwidth_gbs']:.2f} GB/s measured, {row.get('bandwidth_source')}"
        if frac is not None and not math.isnan(frac)
        else "no read bandwidth measured"
    )
    return (
        f"roofline: decode reads {row['weight_bytes_per_token'] / 1e6:.0f} MB of weights and "
        f"{(row.get('kv_bytes_per_token') or 0) / 1e6:.1f} MB of KV cache per step, "
        f"{row['decode_gbs']:.1f} GB/s ({memory}); prefill {row['prefill_gflops']:.1f} {unit} ({roof})"
    )


def print_summary(
    console: Console,
    row: dict[str, Any],
    sample_text: str,
    details: dict[str, Any],
    out_folder: str,
    warnings: Sequence[str] = (),
) -> None:
    header = (
        f"[bold]{row['backend']}[/]  model={row['model']} ({row['weights']}, sha256:{row['model_hash']})  "
        f"{row['device']}/{row['dtype']}  threads={row['threads']}\n"
        f"prompt={row['prompt_len']} gen={row['gen_len']} batch={row['batch_size']}  "
        f"warmup={row['warmup']} repeats={row['repeats']}  {row['sampling']}  "
        f"tokens/run={row['tokens_per_run']} (counted as ids)"
    )
    console.print(Panel(header, title="gpt2bench run", expand=False))
    console.print(metrics_table(row))
    if "stop_reason" in row:
        console.print(f"precision: {precision_line(row)}", markup=False)
    _print_facts(console, row, details)
    _print_flags(console, row, sample_text, warnings)
    console.print(f"results: {out_folder}")


def precision_line(row: dict[str, Any]) -> str:
    """A row's achieved precision: runs, the medians' relative half-widths, level, why it stopped."""

    def pct(value: object) -> str:
        return "unbounded" if not isinstance(value, float) or math.isnan(value) else f"+-{value:.1%}"

    tpot = "n/a (1 token)" if row.get("gen_len") == 1 else pct(row.get("tpot_ci_rel"))  # no gaps to time
    return (
        f"{row['repeats']} runs, median TPOT {tpot}, e2e {pct(row.get('e2e_ci_rel'))} "
        f"({row['ci_level']:.1%} interval), stopped: {row['stop_reason']}"
    )


def metrics_table(row: dict[str, Any]) -> Table:
    """The per-repetition statistics of every timed metric, and the pooled inter-token latencies."""
    table = Table(title="per repetition: median, p90, mean ± 95% CI (Student t), std, min, max")
    for col in ("metric", "median", "p90", "mean ± CI", "std", "min", "max"):
        table.add_column(col, justify="left" if col == "metric" else "right", no_wrap=True)
    for name in PER_RUN_METRICS:
        g = {s: row.get(f"{name}_{s}") for s in ("median", "p90", "mean", "std", "min", "max", "ci95_high")}
        half = g["ci95_high"] - g["mean"] if g["ci95_high"] is not None and g["mean"] is not None else None
        table.add_row(
            LABELS[name],
            _fmt(g["median"], 1),
            _fmt(g["p90"], 1),
            f"{_fmt(g['mean'], 1)} ± {_fmt(half, 1)}",
            _fmt(g["std"], 1),
            _fmt(g["min"], 1),
            _fmt(g["max"], 1),
        )
    table.add_row(
        "ITL ms",
        _fmt(row.get("itl_ms_p50"), 1),
        _fmt(row.get("itl_ms_p90"), 1),
        f"p99 {_fmt(row.get('itl_ms_p99'), 1)}",
        "",
        "",
        "",
    )
    return table


def _print_facts(console: Console, row: dict[str, Any], details: dict[str, Any]) -> None:
    facts = [
        f"prepare {_fmt(row.get('prepare_s'))} s, load {_fmt(row['load_s'])} s, setup {_fmt(row.get('setup_s'))} s",
        f"tokenization {_fmt(row['tokenize_ms'])} ms (not in any timed figure)",
        f"RSS after load {_fmt(row.get('rss_after_load_mb'), 0)} MB, peak {_fmt(row.get('peak_rss_mb'), 0)} MB "
        f"({row.get('peak_rss_scope')})",
        contention_fact(row),
    ]
    extra = {k: v for k, v in row.items() if k not in COLUMNS}  # backend phases, device memory
    facts += [in_words(k, v) for k, v in extra.items()]
    line = roofline_line(row)
    if line:
        facts.append(line)
    if details:
        facts.append("backend: " + ", ".join(f"{k}={v}" for k, v in details.items()))
    console.print("  ".join(facts[:2]))
    for fact in facts[2:]:
        console.print(fact)


def _print_flags(console: Console, row: dict[str, Any], sample_text: str, warnings: Sequence[str]) -> None:
    """What should make a reader doubt or qualify the numbers: noise, non-determinism, quality."""
    if row.get("timing_warnings"):
        console.print(f"timing: {row['timing_warnings']}", style="yellow", markup=False, highlight=False)
    noise = row.get("other_cpu_frac")
    if noise is not None and not math.isnan(noise) and noise > 0.1:
        console.print(
            f"[yellow]noise: other processes took {noise:.0%} of the CPU during measurement; numbers may be inflated[/]"
        )
    if not row.get("tokens_consistent", True) and row["sampling"] == "greedy":
        console.print("[yellow]greedy repetitions produced different tokens: this backend is not deterministic[/]")
    if row.get("quality_error"):
        console.print(f"quality failed: {row['quality_error']}", style="red", markup=False, highlight=False)
    if row.get("ppl") is not None:
        console.print(
            f"quality: perplexity {_fmt(row['ppl'])}, {_fmt(row['bits_per_byte'], 3)} bits/byte over "
            f"{row['ppl_tokens']} tokens ({row['ppl_windows']} windows of {row['ppl_window']}, stride "
            f"{row['ppl_stride']}); vs hf-eager fp32: free-running greedy tokens {row['agree_greedy']:.1%} "
            f"identical, first divergence at {_fmt(row['agree_first_divergence'], 1)}; teacher-forced top-1 "
            f"{row['agree_top1']:.1%} identical, mean KL {row['agree_kl_mean']:.2e}, "
            f"max |dlogprob| {row['agree_max_abs_logprob']:.2e}  ({_fmt(row['quality_s'])} s)"
        )
    console.print(f"sample (first sequence, decoded after timing): {sample_text[:200]!r}", markup=False)
    for message in warnings:  # printed at load too, but long scrolled away by now
        console.print(Text(f"warning: {message}", style="yellow"))
    if row["weights"] == "random":
        console.print(Panel(f"[bold red]{RANDOM_WARNING}[/]", border_style="red"))
