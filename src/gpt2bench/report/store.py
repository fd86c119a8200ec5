"""The results schema and writers: results.csv (one flat row per configuration) and results.json
(rows, raw per-repetition samples, environment metadata). Both are rewritten atomically after every
finished row, so an interruption never loses finished rows or leaves half a file."""

from __future__ import annotations

import csv
import io
import json
import math
import secrets
import time
from pathlib import Path
from typing import Any

from gpt2bench.core.fsutil import atomic_write_text
from gpt2bench.measure.metrics import PER_RUN_METRICS, STATS

SCHEMA_VERSION = 1
CSV_NAME = "results.csv"
JSON_NAME = "results.json"

# Columns every row has, in this order; backend-specific extras (load phases...) follow.
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
    "itl_ms_p50",
    "itl_ms_p90",
    "itl_ms_p99",
    "decode_tps_per_seq_median",
    "rss_after_load_mb",
    "peak_rss_mb",
    "peak_rss_scope",
    "other_cpu_s",
    "other_cpu_frac",
    "timestamp_utc",
    "git_commit",
    "gpt2bench_version",
]
# Empty unless the run asked for --quality (see quality.py for definitions).
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
# See roofline.py: weight bytes read per decoded token, achieved GB/s, share of the measured read
# bandwidth; prefill GFLOP, achieved GFLOP/s, share of the measured peak matmul rate.
ROOFLINE_COLUMNS = [
    "weight_bytes_per_token",
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


def new_run_id(label: str) -> str:
    return f"{time.strftime('%Y%m%d-%H%M%S')}-{label}-{secrets.token_hex(2)}"


def _clean(value: Any) -> Any:
    """JSON has no NaN: write null, so other tools can read the file."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(v) for v in value]
    return value


class ResultsStore:
    """A results folder: add() a finished row and both files are on disk, complete, at once."""

    def __init__(self, folder: Path, environment: dict[str, Any], meta: dict[str, Any] | None = None) -> None:
        self.folder = folder
        self.environment = environment
        self.meta = meta or {}
        self.rows: list[dict[str, Any]] = []
        self.samples: list[dict[str, Any]] = []

    @classmethod
    def load(cls, folder: Path) -> ResultsStore | None:
        """An existing results folder, to append to (--resume); None when there is none yet."""
        path = folder / JSON_NAME
        if not path.is_file():
            return None
        doc = read_document(folder)
        meta = {k: v for k, v in doc.items() if k not in ("schema_version", "environment", "rows", "samples")}
        store = cls(folder, doc.get("environment", {}), meta)
        store.rows, store.samples = list(doc["rows"]), list(doc.get("samples", [{}] * len(doc["rows"])))
        return store

    def add(self, row: dict[str, Any], samples: dict[str, Any]) -> None:
        """Append a finished row; a retried cell replaces its earlier (failed) row."""
        key = row.get("cell_key")
        if key:
            keep = [i for i, r in enumerate(self.rows) if r.get("cell_key") != key]
            self.rows = [self.rows[i] for i in keep]
            self.samples = [self.samples[i] for i in keep]
        self.rows.append(row)
        self.samples.append(samples)
        self._write()

    def columns(self) -> list[str]:
        extra = [k for row in self.rows for k in row if k not in COLUMNS]
        return COLUMNS + list(dict.fromkeys(extra))

    def _write(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=self.columns(), extrasaction="raise", lineterminator="\n")
        writer.writeheader()
        for row in self.rows:
            writer.writerow({k: ("" if v is None else v) for k, v in row.items()})
        document = {
            "schema_version": SCHEMA_VERSION,
            **self.meta,
            "environment": self.environment,
            "rows": self.rows,
            "samples": self.samples,
        }
        # JSON first: it holds everything; the CSV is a view of it.
        atomic_write_text(self.folder / JSON_NAME, json.dumps(_clean(document), indent=1))
        atomic_write_text(self.folder / CSV_NAME, buf.getvalue())


def read_document(folder: Path, required: tuple[str, ...] = ()) -> dict[str, Any]:
    """A results.json, checked: one clear error for a missing, foreign or incomplete folder."""
    from gpt2bench.core.errors import BenchError

    path = folder / JSON_NAME
    if not folder.is_dir():
        raise BenchError(f"results folder '{folder}' does not exist")
    if not path.is_file():
        raise BenchError(f"'{folder}' holds no {JSON_NAME} (is it a gpt2bench results folder?)")
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise BenchError(f"'{path}' is not readable JSON: {exc}") from None
    if not isinstance(doc, dict) or doc.get("schema_version") != SCHEMA_VERSION:
        found = doc.get("schema_version") if isinstance(doc, dict) else None
        raise BenchError(f"'{path}' has schema version {found!r}; this gpt2bench reads version {SCHEMA_VERSION}")
    rows = doc.get("rows")
    if not isinstance(rows, list) or not rows:
        raise BenchError(f"'{path}' holds no result rows")
    for column in required:
        if not any(column in row for row in rows):
            raise BenchError(f"'{path}' lacks the column '{column}'")
    return doc
