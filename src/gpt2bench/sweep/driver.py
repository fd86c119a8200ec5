"""Run a sweep: each backend in its own fresh worker process (thread pools, memory peaks and
crashes stay contained), loaded once, then its cells. Every finished cell is written at once, so an
interruption loses nothing finished, and --resume skips it. A crash, timeout or out-of-memory kill
becomes a failed row and the sweep goes on with a fresh worker for the remaining cells.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from gpt2bench.core.errors import UsageError
from gpt2bench.measure.row import config_key, failed_row, merge_rounds, on_machine, spec_fields
from gpt2bench.measure.spec import RunSpec
from gpt2bench.models.ref import ModelRef
from gpt2bench.report.store import ResultsStore
from gpt2bench.sweep.config import BackendConfig, Cell, SweepSpec
from gpt2bench.sweep.ledger import TimeLedger
from gpt2bench.sweep.process import Interrupted, Worker, WorkerGone

Progress = Callable[[str], None]
Warn = Callable[[str], None]


@dataclass
class SweepRun:
    """One sweep under way: what to measure, on which resolved model, into which store."""

    spec: SweepSpec
    model: ModelRef
    store: ResultsStore
    run_id: str
    threads: int
    on_cell: Progress
    warn: Warn
    lock: threading.Lock = field(default_factory=threading.Lock)  # a cluster sweep's threads share the store
    ledger: TimeLedger = field(default_factory=TimeLedger)  # where the sweep's time goes

    def cell_spec(
        self,
        backend: BackendConfig,
        cell: Cell,
        warmup: int | None = None,
        repeats: int | None = None,
        quality: bool = False,
    ) -> RunSpec:
        """The RunSpec a worker measures for `backend` on `cell` (the sweep's warm-up and repeats
        unless given; quality only where asked for)."""
        return self.spec.run_spec(backend, cell, self.threads, warmup, repeats, quality)

    def key(self, backend: BackendConfig, cell: Cell, node_type: str | None = None) -> str:
        return config_key(on_machine(spec_fields(self.cell_spec(backend, cell), self.model, self.run_id), node_type))

    def save(self, row: dict[str, Any], samples: dict[str, Any], label: str | None = None) -> None:
        """A finished row into the store (on disk at once), the time breakdown so far beside it;
        `label` advances the progress bar."""
        with self.lock:
            self.ledger.measured(row["label"], row)
            self.store.meta["time_breakdown"] = self.ledger.record()
            self.store.add(row, samples)
        if label is not None:
            self.on_cell(label)

    def fail(self, backend: BackendConfig, cell: Cell, error: str, node_type: str | None = None) -> None:
        row = failed_row(self.cell_spec(backend, cell), self.model, self.run_id, error, backend.label)
        self.save(on_machine(row, node_type), {}, backend.display())

    def worker(self, backend: BackendConfig) -> Worker:
        return Worker(self.cell_spec(backend, self.spec.cells[0]), self.run_id)

    def loaded(self, backend: BackendConfig, worker: Worker, hello: dict[str, Any]) -> None:
        with self.lock:
            self.ledger.loaded(backend.display(), worker.started, hello)

    def wants_quality(self, cell: Cell) -> bool:
        """Quality does not depend on the cell: measure it once per backend, with the sweep's first cell."""
        return self.spec.quality.enabled and cell == self.spec.cells[0]


def resolve_model_once(spec: SweepSpec, warn: Warn) -> tuple[SweepSpec, ModelRef]:
    """Resolve the sweep's model here, before any worker starts, so a model that cannot be had
    fails the sweep once (not every backend's load) and every cell is checked against the model's
    context up front. A default that fell back to random weights goes on as `random`: the workers
    then load what the parent warned about."""
    from gpt2bench.models.resolve import RANDOM, resolve_model

    model = resolve_model(spec.model)
    if fallback := model.fallback_warning():
        warn(fallback)
        spec = replace(spec, model=RANDOM)
    n_positions = model.n_positions()
    too_long = [c for c in spec.cells if c.prompt_len + c.gen_len > n_positions]
    if too_long:
        first = too_long[0]
        more = f" (and {len(too_long) - 1} more cells)" if len(too_long) > 1 else ""
        raise UsageError(
            f"{spec.source}: prompt {first.prompt_len} + gen {first.gen_len} = {first.prompt_len + first.gen_len} "
            f"exceeds this model's {n_positions}-token context{more}"
        )
    if spec.quality.enabled:
        spec.quality_settings().validate(n_positions)
    return spec, model


def plan(run: SweepRun, node_type: str | None = None) -> list[tuple[BackendConfig, list[Cell]]]:
    """Every backend with the cells it still has to measure (on machines of `node_type`, for a
    sweep that measures each machine type). A cell whose quality failed is measured again:
    --resume retries what failed."""
    with run.lock:
        done = {config_key(r) for r in run.store.rows if r.get("status") == "ok" and not r.get("quality_error")}
    return [(b, [c for c in run.spec.cells if run.key(b, c, node_type) not in done]) for b in run.spec.backends]


def cells_to_run(run: SweepRun) -> int:
    return sum(len(cells) for _, cells in plan(run))


def _announce(hello: dict[str, Any], warn: Warn) -> None:
    """A worker's load warnings (emulated arithmetic, oversubscribed threads); its stderr is only
    shown when it dies. `warn` is expected to drop repeats: every worker of a sweep runs on the
    same machine, and the parent has said some of them already."""
    for message in hello.get("warnings", []):
        warn(message)


@dataclass
class Leftover:
    """What a worker left: the cells a fresh worker must still do, and the cell it was measuring
    when it died or hung (already a failed row), with why."""

    rest: list[Cell]
    lost: Cell | None = None
    gone: WorkerGone | None = None


def run_sequential(run: SweepRun) -> None:
    for backend, cells in plan(run):
        remaining = list(cells)
        while remaining:
            remaining = measure_cells(run, backend, remaining, run.worker(backend)).rest


def measure_cells(
    run: SweepRun, backend: BackendConfig, remaining: list[Cell], worker: Worker, node_type: str | None = None
) -> Leftover:
    """`worker` (just started) loads `backend` and measures `remaining` in order; every answer is
    a row in the store at once. `node_type`: the machine type in the rows' identity (each-node)."""
    try:
        hello = worker.receive(run.spec.cell_timeout_s)
        run.loaded(backend, worker, hello)
        _announce(hello, run.warn)
        if hello["event"] == "load_failed":
            for cell in remaining:
                run.fail(backend, cell, f"load failed: {hello['error']}", node_type)
            return Leftover([])
        for i, cell in enumerate(remaining):
            spec = run.cell_spec(backend, cell, quality=run.wants_quality(cell))
            try:
                reply = worker.request(spec, backend.display(), run.spec.cell_timeout_s)
            except Interrupted as stop:
                if stop.reply:
                    run.save(on_machine(stop.reply["row"], node_type), stop.reply["samples"])
                raise
            except WorkerGone as gone:
                # The cell in flight takes the blame; a fresh worker carries on with the rest.
                run.fail(backend, cell, str(gone), node_type)
                return Leftover(remaining[i + 1 :], cell, gone)
            if reply["event"] == "row":
                run.save(on_machine(reply["row"], node_type), reply["samples"], backend.display())
            else:
                run.fail(backend, cell, reply["error"], node_type)
        return Leftover([])
    except WorkerGone as gone:  # died or hung while loading
        run.fail(backend, remaining[0], str(gone), node_type)
        return Leftover(remaining[1:], remaining[0], gone)
    finally:
        worker.close()


def _start_workers(run: SweepRun, backends: list[BackendConfig]) -> tuple[dict[str, Worker], dict[str, str]]:
    """A loaded worker per backend, and the load error of each backend that has none."""
    workers: dict[str, Worker] = {}
    load_errors: dict[str, str] = {}
    for backend in backends:
        worker = run.worker(backend)
        try:
            hello = worker.receive(run.spec.cell_timeout_s)
        except WorkerGone as gone:  # died or hung while loading: its cells fail, the others go on
            hello = {"event": "load_failed", "error": str(gone)}
        run.loaded(backend, worker, hello)
        _announce(hello, run.warn)
        if hello["event"] == "ready":
            workers[backend.display()] = worker
        else:
            load_errors[backend.display()] = f"load failed: {hello['error']}"
            worker.close()
    return workers, load_errors


def run_interleaved(run: SweepRun) -> None:
    """All backends' workers stay up; each cell's repetitions alternate between backends, one at a
    time, so slow drift of the machine spreads over every backend instead of hitting one."""
    todo = plan(run)
    workers, load_errors = _start_workers(run, [b for b, _ in todo])
    try:
        for cell in run.spec.cells:
            active = [b for b, cells in todo if cell in cells]
            if active:
                _interleave_cell(run, cell, active, workers, load_errors)
    finally:
        for worker in workers.values():
            worker.close()


def _interleave_cell(
    run: SweepRun, cell: Cell, active: list[BackendConfig], workers: dict[str, Worker], load_errors: dict[str, str]
) -> None:
    """One cell, a repetition per backend per round; every backend's rounds merged into its row."""
    repeats = run.spec.repeats
    rounds: dict[str, tuple[list, list]] = {b.display(): ([], []) for b in active}
    failed = {b.display(): load_errors.get(b.display(), "load failed") for b in active if b.display() not in workers}
    for r in range(repeats):
        for backend in (b for b in active if b.display() not in failed):
            name = backend.display()
            warmup = run.spec.warmup if r == 0 else 0
            spec = run.cell_spec(backend, cell, warmup, 1, run.wants_quality(cell) and r == repeats - 1)
            try:
                reply = workers[name].request(spec, name, run.spec.cell_timeout_s)
            except WorkerGone as gone:
                failed[name] = str(gone)
                workers.pop(name).close()
                continue
            except Interrupted as stop:
                if stop.reply:
                    rounds[name][0].append(stop.reply["row"])
                    rounds[name][1].append(stop.reply["samples"])
                # Backends with every round of this cell done are finished results.
                for done, (rows, samples) in rounds.items():
                    if len(rows) == repeats and done not in failed:
                        run.save(*merge_rounds(rows, samples))
                raise
            if reply["event"] == "row":
                rounds[name][0].append(reply["row"])
                rounds[name][1].append(reply["samples"])
            else:
                failed[name] = reply["error"]
    for backend in active:
        name = backend.display()
        if name in failed:
            run.fail(backend, cell, failed[name])
        else:
            run.save(*merge_rounds(*rounds[name]), name)


def open_store(
    spec: SweepSpec, resume: bool, environment: dict[str, Any], meta: dict[str, Any], force: bool = False
) -> ResultsStore:
    """A new store for the sweep, or with --resume the one in its output folder, if that was
    measured with the same config (with --force, whatever it was measured with)."""
    existing = ResultsStore.load(spec.output)
    if existing is not None and not resume:
        raise UsageError(
            f"'{spec.output}' already holds results; pass --resume to continue it, or choose another output folder"
        )
    if existing is None:
        return ResultsStore(spec.output, environment, meta)
    before = existing.meta.get("sweep_spec")
    changed = [k for k, v in meta["sweep_spec"].items() if before is not None and before.get(k) != v]
    if changed and not force:
        detail = ", ".join(
            f"{k} {before.get(k)} -> {meta['sweep_spec'][k]}" if k not in ("cells", "backends", "quality") else k
            for k in changed
        )
        raise UsageError(
            f"'{spec.output}' holds a sweep measured with another config ({detail}): its rows and the new ones "
            "would not be one study; use another output folder, or --resume --force to continue it anyway"
        )
    return existing
