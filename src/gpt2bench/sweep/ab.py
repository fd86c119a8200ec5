"""`gpt2bench ab BASE [NEW]`: two versions of gpt2bench measured on this machine at the same time,
interleaved, as `asv continuous` does for microbenchmarks.

Per backend, a worker of each side (sweep/worker.py, run from that side's own source) loads the
same model files; then, per cell, rounds alternate BASE NEW, NEW BASE, ... and each round's pair is
one paired observation. A slow drift of the machine (its memory-bandwidth states last minutes here)
moves both halves of a round alike; which side goes first alternates, so neither owns the warmer
slot. The statistics are report/ab.py's.

Nothing finished is lost: ab.json is rewritten after every round, each side's merged rows go into
base/ and new/ (ordinary results folders: `plot` and `compare` read them) when a cell ends, and a
Ctrl-C, a failed backend or a worker that dies still leaves the report of every finished round.
"""

from __future__ import annotations

import json
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gpt2bench.core.errors import BenchError
from gpt2bench.core.fsutil import atomic_write_text
from gpt2bench.machine.sysinfo import cpu_label, environment
from gpt2bench.measure.row import merge_rounds
from gpt2bench.models.ref import ModelRef
from gpt2bench.report.ab import Judged, Pairing, judge, markdown
from gpt2bench.report.store import ResultsStore
from gpt2bench.sweep.ab_sides import Side
from gpt2bench.sweep.config import BackendConfig, Cell, SweepSpec
from gpt2bench.sweep.process import Worker, WorkerGone

Say = Callable[[str], None]
Kept = dict[str, tuple[list[dict[str, Any]], list[dict[str, Any]]]]  # a side's rows and samples of a cell


class CellFailed(Exception):
    """A side's worker could not measure a round (it answered with an error, died or hung)."""


def cell_name(cell: Cell) -> str:
    return f"p{cell.prompt_len}/g{cell.gen_len}/b{cell.batch_size}"


@dataclass
class AbRun:
    """One A/B run under way: what to measure, the two sides, and every round measured so far."""

    spec: SweepSpec
    base: Side
    new: Side
    model: ModelRef
    threads: int
    output: Path
    run_id: str
    say: Say
    warn: Say
    rounds: list[dict[str, Any]] = field(default_factory=list)
    failures: dict[str, str] = field(default_factory=dict)
    environment: dict[str, Any] = field(default_factory=environment)
    started: str = field(default_factory=lambda: time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))

    @property
    def sides(self) -> tuple[Side, Side]:
        return self.base, self.new

    def is_aa(self) -> bool:
        """Both sides the same code and environment: every verdict but "no change" is a false alarm."""
        same_code = self.base.commit == self.new.commit and not self.base.dirty and not self.new.dirty
        return same_code and self.base.env == self.new.env

    def stores(self) -> dict[str, ResultsStore]:
        return {
            side.name: ResultsStore(self.output / side.name.lower(), self.environment, self._meta(side))
            for side in self.sides
        }

    def _meta(self, side: Side) -> dict[str, Any]:
        return {"run_id": self.run_id, "model": self.model.as_record(), "ab_side": side.record()}

    def pairings(self) -> list[Pairing]:
        """Every (backend, cell, metric) with each side's per-round values, in round order."""
        groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
        for r in self.rounds:
            groups.setdefault((r["backend"], r["cell"]), []).append(r)
        return [
            Pairing(
                b,
                c,
                m,
                tuple(r["BASE"][m] for r in rs),
                tuple(r["NEW"][m] for r in rs),
                tuple(r["block"] for r in rs),
            )
            for (b, c), rs in groups.items()
            for m in self.spec.ab.metrics
        ]

    def judge(self) -> list[Judged]:
        return judge(self.pairings(), self.spec.ab.threshold, self.spec.ab.alpha)

    def header(self) -> list[str]:
        ab = self.spec.ab
        lines = [
            "## gpt2bench ab: NEW against BASE",
            "",
            f"- {self.base.describe()}",
            f"- {self.new.describe()}",
            f"- {cpu_label(self.environment)}, {self.threads} threads; model {self.model.reference} "
            f"({self.model.weights}, {self.model.weights_hash[:12]})",
            f"- {ab.rounds} rounds per cell, alternating BASE NEW / NEW BASE, by {ab.pairs} worker pair(s) started in "
            f"alternating order; {self.spec.repeats} repetition(s) a side a round (a round's value: their median), "
            f"warm-up {self.spec.warmup} per pair, then {ab.round_warmup} a round",
        ]
        if self.is_aa():
            lines.append(
                "- **A/A run**: both sides are the same code, so any verdict but 'no change detected' is a false "
                "alarm, and 'detects' is the noise floor: the smallest slowdown a run like this one flags"
            )
        lines += [f"- **{name} failed**: {why}" for name, why in self.failures.items()]
        return lines

    def save(self, judged: list[Judged] | None, interrupted: bool = False) -> None:
        """ab.json (every round, and the verdicts once there are any) and ab.md, atomically."""
        doc = {
            "kind": "gpt2bench-ab",
            "run_id": self.run_id,
            "started": self.started,
            "interrupted": interrupted,
            "sides": [s.record() for s in self.sides],
            "aa": self.is_aa(),
            "model": self.model.as_record(),
            "threads": self.threads,
            "config": {**self.spec.record(self.threads), "ab": vars(self.spec.ab), "source": self.spec.source},
            "environment": self.environment,
            "rounds": self.rounds,
            "failures": self.failures,
            "comparisons": [j.record() for j in judged or []],
        }
        self.output.mkdir(parents=True, exist_ok=True)
        atomic_write_text(self.output / "ab.json", json.dumps(doc, indent=1, default=str) + "\n")
        if judged is not None:
            text = markdown(judged, self.header(), self.spec.ab.threshold, self.spec.ab.alpha)
            atomic_write_text(self.output / "ab.md", text)


def run_ab(run: AbRun) -> list[Judged]:
    """Measure every backend of the config, side against side; the verdicts of what was measured.
    On any way out (a load that fails, Ctrl-C) the report of the finished rounds is written."""
    stores = run.stores()
    interrupted = True
    try:
        for backend in run.spec.backends:
            _measure_backend(run, backend, stores)
        interrupted = False
    finally:
        judged = run.judge()
        run.save(judged, interrupted)
    return judged


def _start(run: AbRun, backend: BackendConfig, side: Side) -> Worker:
    """`side`'s worker with `backend` loaded from the model files the parent resolved; a side that
    cannot load it (a version without that backend, a worker protocol it does not speak) ends the
    run with one line."""
    session = run.spec.run_spec(backend, run.spec.cells[0], run.threads)
    worker = Worker(session, run.run_id, (run.model.reference, str(run.model.path)), side.worker_env())
    try:
        hello = worker.receive(run.spec.cell_timeout_s)
    except WorkerGone as gone:
        hello = {"event": "load_failed", "error": str(gone)}
    for message in hello.get("warnings", []):
        run.warn(message)
    if hello["event"] != "ready":
        worker.close()
        raise BenchError(f"{side.describe()} cannot load backend '{backend.display()}': {hello['error']}")
    return worker


def _measure_backend(run: AbRun, backend: BackendConfig, stores: dict[str, ResultsStore]) -> None:
    """Every cell of `backend`, block by block: each block a fresh pair of workers, BASE's started
    first in even blocks and NEW's in odd ones. Each side's rows of a cell merge into one row."""
    kept: dict[Cell, Kept] = {c: {s.name: ([], []) for s in run.sides} for c in run.spec.cells}
    try:
        for block, rounds in enumerate(run.spec.ab.blocks()):
            workers: dict[str, Worker] = {}
            try:
                for side in run.sides if block % 2 == 0 else run.sides[::-1]:
                    workers[side.name] = _start(run, backend, side)
                for cell in run.spec.cells:
                    _measure_rounds(run, backend, cell, workers, block, rounds, kept[cell])
            finally:
                for worker in workers.values():
                    worker.close()
        for sides_kept in kept.values():
            for side in run.sides:
                stores[side.name].add(*merge_rounds(*sides_kept[side.name]))
    except CellFailed as failed:  # this backend's comparisons stop here; the other backends go on
        run.failures[backend.display()] = str(failed)
        run.say(f"{backend.display()}: {failed}")


def _measure_rounds(
    run: AbRun, backend: BackendConfig, cell: Cell, workers: dict[str, Worker], block: int, rounds: range, kept: Kept
) -> None:
    """One block's rounds of one cell, each side's rows and samples added to `kept`. A fresh
    worker warms up with the config's warm-up, later rounds with round_warmup."""
    ab, name = run.spec.ab, backend.display()
    for r in rounds:
        order = run.sides if r % 2 == 0 else run.sides[::-1]
        record: dict[str, Any] = {
            "backend": name, "cell": cell_name(cell), "round": r, "block": block, "order": [s.name for s in order]
        }  # fmt: skip
        for side in order:
            warmup = run.spec.warmup if r == rounds.start else ab.round_warmup
            spec = run.spec.run_spec(backend, cell, run.threads, warmup)
            reply = _request(run, workers[side.name], side, spec, f"{name} {side.name}")
            record[side.name] = {m: statistics.median(reply["samples"]["per_run"][m]) for m in ab.metrics}
            kept[side.name][0].append(reply["row"])
            kept[side.name][1].append(reply["samples"])
        run.rounds.append(record)
        run.save(None)
        ratios = ", ".join(f"{m} {record['NEW'][m] / record['BASE'][m]:.3f}" for m in ab.metrics)
        run.say(f"{name} {cell_name(cell)} round {r + 1}/{ab.rounds} (pair {block + 1}): NEW/BASE {ratios}")


def _request(run: AbRun, worker: Worker, side: Side, spec: Any, label: str) -> dict[str, Any]:
    """One round of one side; its row must carry the commit the side was checked out at."""
    try:
        reply = worker.request(spec, label, run.spec.cell_timeout_s)
    except WorkerGone as gone:
        raise CellFailed(f"{side.describe()}: {gone}") from None
    if reply["event"] != "row":
        raise CellFailed(f"{side.describe()}: {reply['error']}")
    ran = reply["row"].get("git_commit")
    if ran != side.commit:
        raise BenchError(
            f"{side.name}'s worker ran gpt2bench from commit {str(ran)[:10]}, not {side.commit[:10]}: is gpt2bench "
            "installed in editable mode (pip install -e) in this environment?"
        )
    return reply
