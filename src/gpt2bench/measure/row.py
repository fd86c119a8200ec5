"""The result row: the one owner of its schema, its columns, its label and the identity of the
configuration it measured. Every row is built here: the ok row of a measured cell, the failed row
of a cell that could not be measured (with the same identity fields), and the merged row of an
interleaved sweep's rounds. `--resume`, `collect`, `plot` and `compare` all ask `identity` and
`config_key` whether two rows measured the same configuration.

No torch and nothing that imports it (report/ builds on this module); the spec, model and
measurement types are only named for type checking.
"""

from __future__ import annotations

import hashlib
import json
import secrets
import statistics
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from gpt2bench.machine.sysinfo import CpuContention, cpu_fingerprint
from gpt2bench.measure.metrics import PER_RUN_METRICS, STATS, burst_fraction, burst_warning, percentiles, summarize
from gpt2bench.measure.roofline import probe_runs, roofline_rates
from gpt2bench.measure.stopping import FIXED, precision_columns

if TYPE_CHECKING:
    from gpt2bench.measure.harness import LoadResult, Measurement
    from gpt2bench.measure.prompts import Prompts
    from gpt2bench.measure.spec import RunSpec
    from gpt2bench.models.ref import ModelRef

Row = dict[str, Any]
SCHEMA_VERSION = 1

IDENTITY_COLUMNS = [
    "schema_version",
    "run_id",
    "label",
    "cell_key",
    "status",
    "error",
    "backend",
    "model",
    "model_hash",
    "weights",
    "device",
    "dtype",
    "threads",
    "batch_size",
    "prompt_len",
    "gen_len",
    "warmup",
    "repeats",
    "sampling",
    "options",
]
MEASURE_COLUMNS = [
    "prepare_s",
    "load_s",
    "setup_s",
    "tokenize_ms",
    "tokens_per_run",
    "tokens_consistent",
    *[f"{m}_{s}" for m in PER_RUN_METRICS for s in STATS],
    "stop_reason",  # fixed | target | budget | max_repeats: why the cell ran `repeats` timed runs
    "ci_level",  # confidence of the median intervals below (lower per look with repeats: auto)
    "tpot_median_ci_low",
    "tpot_median_ci_high",
    "tpot_ci_rel",  # achieved precision: the interval's half-width over the median (NaN: not bounded)
    "e2e_median_ci_low",
    "e2e_median_ci_high",
    "e2e_ci_rel",
    "warmup_s",  # where the cell's time went (a sweep sums these into its time breakdown)
    "timed_s",
    "loop_s",
    "probe_s",
    "cell_s",  # the worker's whole time on the cell: the above, quality, and the rest (idle)
    "itl_ms_p50",
    "itl_ms_p90",
    "itl_ms_p99",
    "decode_tps_per_seq_median",
    "rss_after_load_mb",
    "peak_rss_mb",
    "peak_rss_scope",
    "other_cpu_s",
    "other_cpu_frac",
    "compile_cache",  # cold | warm | none: this process compiled, or reused an on-disk cache (setup_s, load_s)
    "async_scheduling",  # vLLM: the next step scheduled while one runs (on CUDA); see docs/backends.md
    "cuda_use_tf32",  # ONNX Runtime's CUDA provider: "0" = true fp32 matmuls
    "itl_burst_frac",  # share of inter-token gaps under 10 us: tokens that arrived in bursts
    "timing_warnings",  # what the timestamps say is wrong (bursts); empty when nothing is
    "timestamp_utc",
    "git_commit",
    "gpt2bench_version",
    "machine",  # the measuring CPU's fingerprint (machine/sysinfo.cpu_fingerprint): which rows share a machine
    "node",  # a cluster sweep's node that measured the row (host and Ray node id); empty on one machine
    "node_type",  # the machine as part of the identity: set only by a cluster sweep's each-node placement
    "retried",  # why the row's first attempt failed (a lost node), when this row is its one retry
]
# Empty unless the run asked for --quality (see measure/quality.py for definitions).
QUALITY_COLUMNS = [
    "ppl",
    "ppl_window",
    "ppl_stride",
    "bits_per_byte",
    "ppl_tokens",
    "ppl_windows",
    "agree_greedy",
    "agree_first_divergence",
    "agree_top1",
    "agree_kl_mean",
    "agree_max_abs_logprob",
    "quality_s",
    "quality_error",  # why quality failed; the row's speed figures stand
]
# See measure/roofline.py: weight and KV-cache bytes read per decoded token, achieved GB/s, share of the measured read
# bandwidth; prefill GFLOP, achieved GFLOP/s, share of the measured peak matmul rate.
ROOFLINE_COLUMNS = [
    "weight_bytes_per_token",  # the weights alone, at the backend's weight width
    "kv_bytes_per_token",  # the KV cache a decode step moves, mean over the run, every sequence
    "decode_bytes_per_token",  # the two together: what decode_gbs and decode_bw_frac are of
    "decode_gbs",
    "decode_bw_frac",
    "read_bandwidth_gbs",
    "bandwidth_source",  # "probe": measured around this row's runs; "cached": once per machine
    "prefill_gflop",
    "prefill_gflops",
    "compute_dtype",  # the arithmetic of the backend's matmuls: which roof applies
    "peak_gflops",  # the matmul roof (of compute_dtype) prefill_peak_frac is taken against
    "prefill_peak_frac",
]
COLUMNS = IDENTITY_COLUMNS + MEASURE_COLUMNS + QUALITY_COLUMNS + ROOFLINE_COLUMNS


# Facts a backend's describe() reports that qualify its numbers, so they are columns of the row.
# cache_len: the slots a static-kv decode step reads (its attention window), which its TPOT depends on.
ROW_DETAILS = ("compile_cache", "cache_len", "async_scheduling", "cuda_use_tf32")


# Identity fields most rows lack: a row without one keeps the key it had before the field existed.
OPTIONAL_IDENTITY = (
    "node_type",  # set only when a cluster sweep measures each cell once per machine type
    "scenario",  # "serve" for a load test (gpt2bench load); absent for one stream of requests
    "request_rate",  # a load test's offered rate (requests/s; inf = all at once)
    "burstiness",
    "max_concurrency",
)
# What makes two rows one configuration measured: the engine and its settings, the weights, the
# threads, the sampling and the cell. Not when, how often (warm-up, repeats) or by which run.
IDENTITY_FIELDS = (
    "backend",
    "dtype",
    "device",
    "options",
    "model_hash",
    "threads",
    "sampling",
    "prompt_len",
    "gen_len",
    "batch_size",
    *OPTIONAL_IDENTITY,
)
# Options that say how cached artifacts are prepared (export the ONNX files again), not what is
# measured: a run with rebuild=true measured the same configuration as one without.
PREPARATION_ONLY = ("rebuild",)


def new_run_id(label: str) -> str:
    """A run's id, and its results folder's name: when, what, and a few random hex digits."""
    return f"{time.strftime('%Y%m%d-%H%M%S')}-{label}-{secrets.token_hex(2)}"


def label(backend: str, dtype: str, custom: str = "") -> str:
    """How a configuration is shown: its custom label, else the backend, with the dtype unless fp32."""
    return custom or (backend if dtype == "fp32" else f"{backend}@{dtype}")


def measured_options(options: Mapping[str, Any] | str | None) -> dict[str, Any]:
    """A row's options (a dict, or the JSON text rows store) without the preparation-only ones."""
    parsed = json.loads(options) if isinstance(options, str) and options else dict(options or {})
    return {k: v for k, v in sorted(parsed.items()) if k not in PREPARATION_ONLY}


def identity(row: Mapping[str, Any]) -> dict[str, str]:
    """The configuration a row (or the fields of a row to be) measured, as comparable strings."""
    out = {}
    for name in IDENTITY_FIELDS:
        value = row.get(name)
        out[name] = json.dumps(measured_options(value), sort_keys=True) if name == "options" else str(value)
    return out


def config_key(row: Mapping[str, Any]) -> str:
    """`identity` as a short hash: the row's `cell_key` column, what --resume skips and a store replaces."""
    fields = identity(row)
    for name in OPTIONAL_IDENTITY:  # absent: the row keeps the key it had before these fields existed
        if fields[name] == "None":
            del fields[name]
    return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:16]


def spec_fields(spec: RunSpec, model: ModelRef, run_id: str, custom_label: str = "") -> Row:
    """The columns every row of `spec` on `model` has, measured or failed: identity and setup."""
    fields: Row = {
        "schema_version": SCHEMA_VERSION,
        "run_id": run_id,
        "label": label(spec.backend, spec.dtype, custom_label),
        "cell_key": "",
        "status": "ok",
        "error": "",
        "backend": spec.backend,
        "model": model.reference,
        "model_hash": model.weights_hash,
        "weights": model.weights,
        "device": spec.device,
        "dtype": spec.dtype,
        "threads": spec.threads,
        "batch_size": spec.batch_size,
        "prompt_len": spec.prompt_len,
        "gen_len": spec.gen_len,
        "warmup": spec.warmup,
        "repeats": spec.repeats,
        "sampling": spec.sampling.label(),
        "options": json.dumps(spec.options, sort_keys=True),
    }
    fields["cell_key"] = config_key(fields)
    return fields


def on_machine(row: Row, node_type: str | None) -> Row:
    """`row` as measured on the machine type `node_type` (each-node placement): the type joins its
    identity, so one cell measured on two kinds of machine makes two rows, not one replacing the other."""
    if node_type is None:
        return row
    row = {**row, "node_type": node_type}
    row["cell_key"] = config_key(row)
    return row


def failed_row(spec: RunSpec, model: ModelRef, run_id: str, error: str, custom_label: str = "") -> Row:
    """A cell that could not be measured: the identity of an ok row, the error, and when."""
    return {
        **spec_fields(spec, model, run_id, custom_label),
        "status": "failed",
        "error": error,
        "timestamp_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def ok_row(fields: Row, load: LoadResult, m: Measurement, prompts: Prompts, env: Mapping[str, Any], extra: Row) -> Row:
    """A measured cell: `spec_fields`, the measurement's statistics, then `extra` (quality,
    backend phases, device memory). The roofline columns are added by the caller."""
    stats = m.stats()
    return {
        **fields,
        "prepare_s": load.prepare_s,
        "load_s": load.load_s,
        "setup_s": m.setup_s,
        "tokenize_ms": prompts.tokenize_s * 1e3,
        "tokens_per_run": m.tokens_per_run,
        "tokens_consistent": m.tokens_consistent,
        "repeats": len(m.runs),  # with repeats: auto, as many as the stopping rule took
        "stop_reason": m.stop_reason,
        "ci_level": m.confidence,
        **m.precision(),
        "warmup_s": m.warmup_s,
        "timed_s": m.timed_s,
        "loop_s": m.loop_s,
        "probe_s": m.probe_s,
        **{f"{metric}_{stat}": value for metric, s in stats.items() for stat, value in s.items()},
        **{f"itl_ms_{k}": v for k, v in m.itl_percentiles().items()},
        # decode_tps counts every sequence of the batch; this is what one request sees.
        "decode_tps_per_seq_median": stats["decode_tps"]["median"] / fields["batch_size"],
        "rss_after_load_mb": load.rss_after_load_mb,
        "peak_rss_mb": m.peak_rss_mb,
        "peak_rss_scope": m.peak_rss_scope,
        "other_cpu_s": m.contention.other_cpu_s,
        "other_cpu_frac": m.contention.other_cpu_frac,
        "itl_burst_frac": m.burst_fraction(),
        "timing_warnings": burst_warning(m.burst_fraction()),
        "timestamp_utc": env["timestamp_utc"],
        "git_commit": env["git"]["commit"],
        "gpt2bench_version": env["gpt2bench_version"],
        "machine": cpu_fingerprint(),
        **load.phases,
        **m.setup_phases,
        **m.device_memory,
        **extra,
    }


def merge_rounds(rows: list[Row], samples: list[dict[str, Any]]) -> tuple[Row, dict[str, Any]]:
    """Combine interleaved rounds (each a few repetitions) of one backend and cell into one row:
    statistics and roofline figures recomputed from the pooled raw samples, CPU noise summed,
    peaks maxed. Each round's probes (when asked for) pair with that round's own run."""
    row = dict(rows[-1])  # the last round carries quality, when asked for
    per_run = {m: [v for s in samples for v in s["per_run"][m]] for m in PER_RUN_METRICS}
    for metric, values in per_run.items():
        row.update({f"{metric}_{stat}": v for stat, v in summarize(values).items()})
    itl = [x for s in samples for r in s["itl_ms"] for x in r]
    row.update({f"itl_ms_{k}": v for k, v in percentiles(itl).items()})
    row["itl_burst_frac"] = burst_fraction(itl)
    row["timing_warnings"] = burst_warning(row["itl_burst_frac"])
    row["repeats"] = len(per_run["e2e_ms"])
    row.update({"stop_reason": FIXED, "ci_level": 0.95, **precision_columns(per_run, 0.95)})
    for phase in ("warmup_s", "timed_s", "loop_s", "probe_s", "cell_s"):
        row[phase] = sum(r.get(phase) or 0.0 for r in rows)
    row["warmup"], row["setup_s"] = rows[0]["warmup"], rows[0]["setup_s"]
    contention = CpuContention.total(
        [
            CpuContention(s["contention_wall_s"], r["other_cpu_s"], r["other_cpu_frac"], s.get("contention_windows", 1))
            for r, s in zip(rows, samples, strict=True)
        ]
    )
    row["other_cpu_s"], row["other_cpu_frac"] = contention.other_cpu_s, contention.other_cpu_frac
    row["peak_rss_mb"] = max(r["peak_rss_mb"] for r in rows)
    row["tokens_consistent"] = all(r["tokens_consistent"] for r in rows)
    probed = [s for s in samples if s.get("bandwidth_gbs")]
    row.update(_merged_rates(row, probed))
    merged = dict(samples[-1])
    merged["per_run"] = per_run
    merged["itl_ms"] = [run for s in samples for run in s["itl_ms"]]
    merged["contention_wall_s"] = contention.wall_s
    merged["contention_windows"] = contention.windows
    merged["interleaved_rounds"] = len(rows)
    if probed:
        merged["bandwidth_gbs"] = [s["bandwidth_gbs"] for s in probed]  # per round: before and after its run
    return row, merged


def _merged_rates(row: Row, probed: list[dict[str, Any]]) -> Row:
    """A round's weight bytes, FLOPs and roofs hold for every round; its rates do not."""
    runs = [run for s in probed for run in probe_runs(s["per_run"]["tpot_ms"], s["bandwidth_gbs"])]
    probes = [p for s in probed for p in s["bandwidth_gbs"]]
    bandwidth = statistics.median(probes) if probes else row.get("read_bandwidth_gbs")
    return roofline_rates(
        row["decode_bytes_per_token"],
        row["prefill_gflop"],
        row["tpot_ms_median"],
        row["ttft_ms_median"],
        bandwidth,
        row.get("peak_gflops"),
        runs,
    )
