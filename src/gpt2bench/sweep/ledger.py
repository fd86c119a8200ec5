"""Where a sweep's time went: per backend and in total, from the driver's clock around each
worker's load and the phases each row reports (measure/harness.py, measure/runner.py).

    prepare   export/optimize/quantize before load (cached artifacts: ~0)
    load      worker start to ready: Python, imports, the engine's load and start, minus prepare
    setup     per-cell preparation before warm-up (static-kv's cache and compile)
    warmup    warm-up generations
    timed     the timed generations themselves: the measurement
    quality   perplexity and agreement, once per backend
    probes    bandwidth probes around timed runs, and the machine's roofs on a first cell
    harness   the rest of each cell inside the worker: collections, bookkeeping, the row
    idle      the rest of the sweep's wall: the driver, writing results, process ends

`overhead` is everything but timed and quality: what a sweep spends that is not an answer.
"""

from __future__ import annotations

import time
from collections import defaultdict
from typing import Any

PHASES = ("prepare", "load", "setup", "warmup", "timed", "quality", "probes", "harness", "idle")


class TimeLedger:
    def __init__(self) -> None:
        self.started = time.perf_counter()
        self.by_backend: dict[str, dict[str, float]] = defaultdict(lambda: dict.fromkeys(PHASES, 0.0))

    def loaded(self, backend: str, worker_started: float, hello: dict[str, Any]) -> None:
        """A worker said ready (or failed to load): its start-to-hello wall is prepare + load."""
        wall = time.perf_counter() - worker_started
        prepare = min(wall, float(hello.get("prepare_s") or 0.0))
        self.by_backend[backend]["prepare"] += prepare
        self.by_backend[backend]["load"] += wall - prepare

    def measured(self, backend: str, row: dict[str, Any]) -> None:
        """A finished row's own phases (rows of an older worker lack them: counted as idle)."""
        if "cell_s" not in row:
            return
        parts = {
            "setup": row.get("setup_s") or 0.0,
            "warmup": row.get("warmup_s") or 0.0,
            "timed": row.get("timed_s") or 0.0,
            "quality": row.get("quality_s") or 0.0,
            "probes": row.get("probe_s") or 0.0,
        }
        book = self.by_backend[backend]
        for phase, seconds in parts.items():
            book[phase] += seconds
        book["harness"] += max(0.0, row["cell_s"] - sum(parts.values()))

    def record(self) -> dict[str, Any]:
        """The breakdown so far: per backend, the total, the wall and the overhead share."""
        wall = time.perf_counter() - self.started
        total = {p: sum(b[p] for b in self.by_backend.values()) for p in PHASES}
        total["idle"] = max(0.0, wall - sum(total.values()))
        overhead = wall - total["timed"] - total["quality"]
        return {
            "wall_s": wall,
            "total_s": total,
            "overhead_s": overhead,
            "overhead_frac": overhead / wall if wall > 0 else 0.0,
            "by_backend_s": {name: dict(book) for name, book in self.by_backend.items()},
        }


def breakdown_lines(record: dict[str, Any]) -> list[str]:
    """The breakdown as a plain table: a line per backend, then the total."""
    width = max([len(n) for n in record["by_backend_s"]] + [5])
    head = f"{'':{width}}  " + " ".join(f"{p:>8}" for p in PHASES)
    lines = [head]
    for name, book in record["by_backend_s"].items():
        lines.append(f"{name:{width}}  " + " ".join(f"{book.get(p, 0.0):8.1f}" for p in PHASES))
    total = record["total_s"]
    lines.append(f"{'total':{width}}  " + " ".join(f"{total[p]:8.1f}" for p in PHASES))
    lines.append(
        f"wall {record['wall_s']:.0f} s; untimed overhead (all but timed and quality) "
        f"{record['overhead_s']:.0f} s = {record['overhead_frac']:.0%}"
    )
    return lines
