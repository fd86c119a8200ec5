"""Views of result rows that the figures and summary.md share: which rows succeeded, the headline
cell, quality per backend, load warnings, and which cells were measured under contention."""

from __future__ import annotations

import math
from collections import Counter
from typing import Any

Row = dict[str, Any]

HEADLINE = (50, 100, 1)


RANDOM_STAMP = "RANDOM WEIGHTS: speed is real, quality numbers are meaningless"


MAX_OTHER_CPU = 0.10  # the share of the machine other processes may take before a cell is flagged


def ok_rows(doc: dict[str, Any]) -> list[Row]:
    """The rows that measured one stream of requests (load tests are plot_serving.py's), each
    labelled with its machine when they span several (a cluster sweep's nodes), so a figure never
    draws two machines' numbers as one line."""
    rows = [r for r in doc.get("rows") or [] if r.get("status") == "ok" and not r.get("scenario")]
    if len(machines(rows)) < 2:
        return rows
    return [{**r, "label": f"{r['label']} [{str(r.get('machine'))[:6]}]"} for r in rows]


def machines(rows: list[Row]) -> list[str]:
    """The CPU fingerprints (machine/sysinfo.cpu_fingerprint) the rows were measured on."""
    return list(dict.fromkeys(r["machine"] for r in rows if r.get("machine")))


def cluster_line(doc: dict[str, Any], rows: list[Row]) -> str | None:
    """How many nodes and machines a cluster sweep's rows came from, each machine by its CPU."""
    nodes = {r["node"] for r in rows if r.get("node")}
    if not nodes:
        return None
    cpus = {n.get("machine"): n.get("cpu_model") for n in (doc.get("cluster") or {}).get("nodes", [])}
    kinds = ", ".join(f"`{m[:6]}` {cpus.get(m) or '?'}" for m in machines(rows))
    return f"Measured on a Ray cluster: {len(nodes)} node(s), {len(machines(rows))} machine type(s) ({kinds})."


def run_warnings(doc: dict[str, Any]) -> dict[str, list[str]]:
    """label -> the distinct warnings its backend printed at load (e.g. an arithmetic this CPU only
    emulates), from the samples stored beside each successful row."""
    samples = doc.get("samples") or []
    found: dict[str, list[str]] = {}
    for row, sample in zip(doc["rows"], samples, strict=False):
        if row.get("status") != "ok":
            continue
        for message in (sample or {}).get("warnings") or []:
            mine = found.setdefault(row["label"], [])
            if message not in mine:
                mine.append(message)
    return found


def labels(rows: list[Row]) -> list[str]:
    return list(dict.fromkeys(r["label"] for r in rows))


def headline_cell(rows: list[Row]) -> tuple[int, int, int]:
    """(prompt, gen, batch): the cell the most backends share, 50/100/1 among equals (a folder of
    runs may hold 50/100/1 for one backend and another cell for all of them)."""
    cells = Counter((r["prompt_len"], r["gen_len"], r["batch_size"]) for r in rows)
    return max(cells, key=lambda c: (cells[c], c == HEADLINE, c[1], c[0]))


def cell_rows(rows: list[Row], cell: tuple[int, int, int]) -> list[Row]:
    return [r for r in rows if (r["prompt_len"], r["gen_len"], r["batch_size"]) == cell]


def half_ci(row: Row, metric: str) -> float:
    high, mean = row.get(f"{metric}_ci95_high"), row.get(f"{metric}_mean")
    return high - mean if high is not None and mean is not None else 0.0


def quality_rows(rows: list[Row]) -> list[Row]:
    """One row per backend that has quality numbers (they do not depend on the cell)."""
    seen: dict[str, Row] = {}
    for r in rows:
        if r.get("ppl") is not None and r["label"] not in seen:
            seen[r["label"]] = r
    return list(seen.values())


def busy(row: Row) -> bool:
    """Measured while other processes used more than MAX_OTHER_CPU of the machine."""
    noise = row.get("other_cpu_frac")
    return isinstance(noise, int | float) and not math.isnan(noise) and noise > MAX_OTHER_CPU


NUMERIC = ("prompt_len", "gen_len", "batch_size", "e2e_ms_median", "e2e_ms_mean", "tpot_ms_median", "ttft_ms_median",
           "decode_tps_median")  # fmt: skip


def check_numbers(rows: list[Row], where: str) -> None:
    """The figures' columns hold numbers (or nothing) in every successful row: a hand-edited or
    foreign results.json is named here, not in a matplotlib traceback."""
    from gpt2bench.core.errors import BenchError

    for i, row in enumerate(rows):
        for column in NUMERIC:
            value = row.get(column)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int | float)):
                raise BenchError(f"'{where}': row {i} ({row.get('label')}) has {column} = {value!r}, not a number")
