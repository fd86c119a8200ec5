"""A folder of results folders read as one document. `run` writes results/<run-id>/ for every call,
so `gpt2bench plot results/` (and `compare`) take every run in the folder together: the newest
measurement of each configuration, one model, one CPU."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from gpt2bench.core.errors import BenchError
from gpt2bench.machine.sysinfo import cpu_label
from gpt2bench.report.store import JSON_NAME, SCHEMA_VERSION, read_document

Row = dict[str, Any]
# What a label alone does not say about a run; labels that cover several get it appended.
HIDDEN = ("options", "threads", "sampling")
# Options that say how cached artifacts are prepared (export the ONNX files again), not what is
# measured: a run with rebuild=true measured the same configuration as one without.
PREPARATION_ONLY = ("rebuild",)


def read_results(folder: Path, required: tuple[str, ...] = (), model: str | None = None) -> dict[str, Any]:
    """`folder`'s results.json, or else every results.json one level below it, combined."""
    if not folder.is_dir() or (folder / JSON_NAME).is_file():
        docs, name = [read_document(folder, required)], None
    else:
        runs = sorted(p for p in folder.iterdir() if (p / JSON_NAME).is_file())
        if not runs:
            raise BenchError(
                f"'{folder}' holds no {JSON_NAME}, and no folder in it does (is it a gpt2bench results folder?)"
            )
        docs, name = [read_document(p, required) for p in runs], str(folder)
    if name is None and model is None:
        return docs[0]
    return combine(docs, name or str(folder), model)


def _options(row: Row) -> dict[str, Any]:
    value = row.get("options")
    options = json.loads(value) if isinstance(value, str) and value else dict(value or {})
    return {k: v for k, v in options.items() if k not in PREPARATION_ONLY}


def _value(row: Row, key: str) -> str:
    return json.dumps(_options(row), sort_keys=True) if key == "options" else str(row.get(key))


def _identity(row: Row) -> tuple[Any, ...]:
    """One configuration measured: a later measurement of it replaces an earlier one."""
    keys = ("backend", "dtype", "device", "prompt_len", "gen_len", "batch_size", "model_hash")
    return tuple(_value(row, k) for k in (*keys, *HIDDEN))


def _describe(row: Row, differing: list[str]) -> str:
    parts = []
    for key in differing:
        value = row.get(key)
        if key == "options":
            parts.append(", ".join(f"{k}={v}" for k, v in sorted(_options(row).items())) or "default options")
        elif key == "threads":
            parts.append(f"{value} threads")
        else:
            parts.append(str(value))
    return f" ({'; '.join(parts)})"


def _relabel(rows: list[Row]) -> None:
    """Two configurations under one label (a backend run with and without an option, or with other
    threads) would draw as one series; give each the part of its configuration that differs."""
    by_label: dict[str, list[Row]] = {}
    for row in rows:
        by_label.setdefault(row["label"], []).append(row)
    for same_label in by_label.values():
        differing = [k for k in HIDDEN if len({_value(r, k) for r in same_label}) > 1]
        if differing:
            for row in same_label:
                row["label"] += _describe(row, differing)


def combine(docs: list[dict[str, Any]], name: str, model: str | None = None) -> dict[str, Any]:
    entries = [
        (row, sample, doc.get("environment", {}))
        for doc in docs
        for row, sample in zip(doc["rows"], doc.get("samples") or [{}] * len(doc["rows"]), strict=False)
    ]
    if model is not None:
        chosen = [e for e in entries if model in (e[0].get("model"), e[0].get("model_hash"))]
        if not chosen:
            found = sorted({str(e[0].get("model")) for e in entries})
            raise BenchError(f"no results of model '{model}' in '{name}' (it has: {', '.join(found)})")
        entries = chosen
    ok = [e for e in entries if e[0].get("status") == "ok"]
    # The same weights under two names (a path and `tiny`) are one model.
    named: dict[str, str] = {str(e[0].get("model_hash") or e[0].get("model")): str(e[0].get("model")) for e in ok}
    models = sorted(f"{ref} ({weights})" for weights, ref in named.items())
    if len(models) > 1:
        listed = ", ".join(models)
        raise BenchError(f"'{name}' holds results of {len(models)} models ({listed}): choose one with --model")
    cpus = sorted({cpu_label(e[2]) for e in ok})
    if len(cpus) > 1:
        raise BenchError(f"'{name}' holds results from {len(cpus)} CPUs ({'; '.join(cpus)}): plot them apart")
    latest: dict[tuple[Any, ...], tuple[Row, dict[str, Any], dict[str, Any]]] = {}
    for entry in sorted(entries, key=lambda e: str(e[0].get("timestamp_utc") or "")):  # failed rows have none
        latest[_identity(entry[0])] = entry
    kept = list(latest.values())
    rows = [dict(row) for row, _, _ in kept]
    _relabel(rows)
    newest = max(kept, key=lambda e: str(e[0].get("timestamp_utc") or ""))[2]
    commits = sorted({str((e[2].get("git") or {}).get("commit") or "?")[:12] for e in kept})
    return {
        "schema_version": SCHEMA_VERSION,
        "run_id": f"{len(docs)} results folder(s) in {name}",
        "combined": {"folders": len(docs), "superseded": len(entries) - len(kept), "commits": commits},
        "environment": newest,
        "rows": rows,
        "samples": [sample for _, sample, _ in kept],
    }
