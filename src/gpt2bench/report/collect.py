"""A folder of results folders read as one document. `run` writes results/<run-id>/ for every call,
so `gpt2bench plot results/` (and `compare`) take every run in the folder together: the newest
measurement of each configuration, one model, one CPU."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from gpt2bench.core.errors import BenchError
from gpt2bench.machine.sysinfo import cpu_label
from gpt2bench.measure.row import SCHEMA_VERSION, config_key, identity, measured_options
from gpt2bench.report.store import JSON_NAME, read_document

Row = dict[str, Any]
# What a label alone does not say about a run; labels that cover several get it appended.
HIDDEN = ("options", "threads", "sampling")


def read_results(folder: Path, required: tuple[str, ...] = (), model: str | None = None) -> dict[str, Any]:
    """`folder`'s results.json, or else every results.json one level below it, combined. A path to
    a results.json itself stands for its folder."""
    if folder.name == JSON_NAME and folder.is_file():
        folder = folder.parent
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


def _describe(row: Row, differing: list[str]) -> str:
    parts = []
    for key in differing:
        value = row.get(key)
        if key == "options":
            parts.append(", ".join(f"{k}={v}" for k, v in measured_options(value).items()) or "default options")
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
        differing = [k for k in HIDDEN if len({identity(r)[k] for r in same_label}) > 1]
        if differing:
            for row in same_label:
                row["label"] += _describe(row, differing)


def newest_of_each(entries: list[tuple[Row, dict[str, Any], dict[str, Any]]]) -> list[tuple[Row, Any, Any]]:
    """Per configuration (measure/row.py's identity), the newest successful measurement; a failed
    one only where no success of that configuration exists (then the newest failure)."""
    latest: dict[str, tuple[Row, Any, Any]] = {}
    for entry in sorted(entries, key=lambda e: (e[0].get("status") == "ok", str(e[0].get("timestamp_utc") or ""))):
        latest[config_key(entry[0])] = entry
    return list(latest.values())


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
    kept = newest_of_each(entries)
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
