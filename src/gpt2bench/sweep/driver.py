"""Run a sweep: each backend in its own fresh worker process (thread pools, memory peaks and
crashes stay contained), loaded once, then its cells. Every finished cell is written at once, so an
interruption loses nothing finished, and --resume skips it. A crash, timeout or out-of-memory kill
becomes a failed row and the sweep goes on with a fresh worker for the remaining cells.
"""

from __future__ import annotations

import collections
import contextlib
import json
import os
import selectors
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, replace
from typing import Any

from gpt2bench.core.errors import UsageError
from gpt2bench.machine.roofs import probe_runs, roofline_rates
from gpt2bench.machine.sysinfo import CpuContention
from gpt2bench.measure.metrics import PER_RUN_METRICS, percentiles, summarize
from gpt2bench.report.store import ResultsStore
from gpt2bench.sweep.config import BackendConfig, Cell, SweepSpec, cell_key, to_quality_settings

Progress = Callable[[str], None]
Warn = Callable[[str], None]


class WorkerGone(Exception):
    """The worker died or went silent; the message says which."""


class Interrupted(KeyboardInterrupt):
    """Ctrl-C while a worker measured a cell, with what the worker answered before it stopped: a
    row if it was past its timed runs (a quality check answers with its timed runs), else None."""

    def __init__(self, reply: dict[str, Any] | None) -> None:
        super().__init__()
        self.reply = reply if reply and reply.get("event") == "row" else None


# A terminal's Ctrl-C reaches the workers too (one process group). One in its quality check answers
# at once with its timed runs (runner._quality); one in its timed runs dies without answering.
LAST_WORDS_S = 10.0


class Worker:
    def __init__(self, spec: SweepSpec, backend: BackendConfig, run_id: str, threads: int) -> None:
        from gpt2bench.measure.spec import Sampling

        quality = to_quality_settings(spec.quality) if spec.quality.enabled else None
        job = {
            "run_id": run_id,
            "spec": {
                "backend": backend.name,
                "dtype": backend.dtype,
                "options": backend.options,
                "model": spec.model,
                "device": spec.device,
                "threads": threads,
                "probe_bandwidth": spec.probe_bandwidth,
                "sampling": asdict(Sampling()),
                "quality": {**asdict(quality), "text": str(quality.text)} if quality else None,
            },
        }
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "gpt2bench.sweep.worker", str(os.getpid())],  # the worker dies with us
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            bufsize=1,
        )
        # A thread drains stderr all the time, so a chatty worker never blocks on a full pipe and a
        # progress bar's unterminated line never holds up reading the protocol on stdout.
        self.stderr_tail: collections.deque[str] = collections.deque(maxlen=20)
        self._drainer = threading.Thread(target=self._drain_stderr, daemon=True)
        self._drainer.start()
        self.selector = selectors.DefaultSelector()
        self.selector.register(self.proc.stdout, selectors.EVENT_READ)  # type: ignore[arg-type]
        self._send(job)

    def _drain_stderr(self) -> None:
        for line in self.proc.stderr:  # type: ignore[union-attr]
            if line.strip():
                self.stderr_tail.append(line)

    def _send(self, message: dict[str, Any]) -> None:
        try:
            self.proc.stdin.write(json.dumps(message) + "\n")  # type: ignore[union-attr]
            self.proc.stdin.flush()  # type: ignore[union-attr]
        except BrokenPipeError:
            raise WorkerGone(self._death()) from None

    def _death(self) -> str:
        code = self.proc.poll()
        if code is not None:
            self._drainer.join(timeout=2)  # let it read the dying worker's last words
        detail = self.stderr_tail[-1].strip() if self.stderr_tail else ""
        if code is not None and code < 0:
            how = f"worker killed by signal {-code}" + (" (out of memory?)" if -code == 9 else "")
        else:
            how = f"worker exited with code {code}"
        return f"{how}: {detail}" if detail else how

    def receive(self, timeout: float) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                self.kill()
                raise WorkerGone(f"timed out after {timeout:g} s")
            if self.selector.select(timeout=min(left, 1.0)):
                line = self.proc.stdout.readline()  # type: ignore[union-attr]
                if not line:
                    self.proc.wait()
                    raise WorkerGone(self._death())
                return json.loads(line)
            if self.proc.poll() is not None and not self.selector.select(timeout=0):
                raise WorkerGone(self._death())

    def request(self, command: dict[str, Any], timeout: float) -> dict[str, Any]:
        self._send(command)
        try:
            return self.receive(timeout)
        except KeyboardInterrupt:
            reply = None
            with contextlib.suppress(WorkerGone, ValueError, KeyboardInterrupt):  # nothing more to save
                reply = self.receive(LAST_WORDS_S)
            if reply is None:  # no answer in time (it is killed then), a second Ctrl-C or a garbled line
                self.kill()
            raise Interrupted(reply) from None

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.stdin.close()  # type: ignore[union-attr]
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.kill()


def failed_row(spec: SweepSpec, backend: BackendConfig, cell: Cell, run_id: str, error: str) -> dict[str, Any]:
    return {
        "schema_version": 1,
        "run_id": run_id,
        "label": backend.display(),
        "cell_key": cell_key(spec.model, backend, cell, spec.device),
        "status": "failed",
        "error": error,
        "backend": backend.name,
        "model": spec.model or "",
        "device": spec.device,
        "dtype": backend.dtype,
        "batch_size": cell.batch_size,
        "prompt_len": cell.prompt_len,
        "gen_len": cell.gen_len,
        "warmup": spec.warmup,
        "repeats": spec.repeats,
        "options": json.dumps(backend.options, sort_keys=True),
    }


def merge_rounds(rows: list[dict[str, Any]], samples: list[dict[str, Any]]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Combine interleaved rounds (each a few repetitions) of one backend and cell into one row:
    statistics and roofline figures recomputed from the pooled raw samples, CPU noise summed,
    peaks maxed. Each round's probes (when asked for) pair with that round's own run."""
    row = dict(rows[-1])  # the last round carries quality, when asked for
    per_run = {m: [v for s in samples for v in s["per_run"][m]] for m in PER_RUN_METRICS}
    itl = [lat for s in samples for run in s["itl_ms"] for lat in run]
    for metric, values in per_run.items():
        row.update({f"{metric}_{stat}": v for stat, v in summarize(values).items()})
    row.update({f"itl_ms_{k}": v for k, v in percentiles(itl).items()})
    row["repeats"] = len(per_run["e2e_ms"])
    row["warmup"] = rows[0]["warmup"]
    row["setup_s"] = rows[0]["setup_s"]
    contention = CpuContention.total(
        [
            CpuContention(s["contention_wall_s"], r["other_cpu_s"], r["other_cpu_frac"], s.get("contention_windows", 1))
            for r, s in zip(rows, samples, strict=True)
        ]
    )
    row["other_cpu_s"], row["other_cpu_frac"] = contention.other_cpu_s, contention.other_cpu_frac
    row["peak_rss_mb"] = max(r["peak_rss_mb"] for r in rows)
    row["tokens_consistent"] = all(r["tokens_consistent"] for r in rows)
    # A round's weight bytes, FLOPs and roofs hold for every round; its rates do not.
    probed = [s for s in samples if s.get("bandwidth_gbs")]
    runs = [run for s in probed for run in probe_runs(s["per_run"]["tpot_ms"], s["bandwidth_gbs"])]
    probes = [p for s in probed for p in s["bandwidth_gbs"]]
    bandwidth = statistics.median(probes) if probes else row.get("read_bandwidth_gbs")
    row.update(
        roofline_rates(
            row["weight_bytes_per_token"],
            row["prefill_gflop"],
            row["tpot_ms_median"],
            row["ttft_ms_median"],
            bandwidth,
            row.get("peak_gflops"),
            runs,
        )
    )
    merged = dict(samples[-1])
    merged["per_run"] = per_run
    merged["itl_ms"] = [run for s in samples for run in s["itl_ms"]]
    merged["contention_wall_s"] = contention.wall_s
    merged["contention_windows"] = contention.windows
    merged["interleaved_rounds"] = len(rows)
    if probed:
        merged["bandwidth_gbs"] = [s["bandwidth_gbs"] for s in probed]  # per round: before and after its run
    return row, merged


def resolve_model_once(spec: SweepSpec, warn: Warn) -> SweepSpec:
    """Resolve the sweep's model here, before any worker starts, so a model that cannot be had
    fails the sweep once (not every backend's load) and every cell is checked against the model's
    context up front. A default that fell back to random weights goes on as `random`: the workers
    then load what the parent warned about, and --resume's cell keys name what was measured."""
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
        to_quality_settings(spec.quality).validate(n_positions)
    return spec


def wants_quality(spec: SweepSpec, cell: Cell) -> bool:
    """Quality does not depend on the cell: measure it once per backend, with the sweep's first cell."""
    return spec.quality.enabled and cell == spec.cells[0]


def plan(spec: SweepSpec, store: ResultsStore) -> list[tuple[BackendConfig, list[Cell]]]:
    # A cell whose quality failed is measured again: --resume retries what failed.
    done = {row["cell_key"] for row in store.rows if row.get("status") == "ok" and not row.get("quality_error")}
    return [(b, [c for c in spec.cells if cell_key(spec.model, b, c, spec.device) not in done]) for b in spec.backends]


def _command(spec: SweepSpec, backend: BackendConfig, cell: Cell, warmup: int, repeats: int, quality: bool) -> dict:
    return {
        "cell": asdict(cell),
        "warmup": warmup,
        "repeats": repeats,
        "quality": quality,
        "label": backend.display(),
        "cell_key": cell_key(spec.model, backend, cell, spec.device),
    }


def _announce(hello: dict[str, Any], warn: Warn) -> None:
    """A worker's load warnings (emulated arithmetic, oversubscribed threads); its stderr is only
    shown when it dies. `warn` is expected to drop repeats: every worker of a sweep runs on the
    same machine, and the parent has said some of them already."""
    for message in hello.get("warnings", []):
        warn(message)


def run_sequential(
    spec: SweepSpec, store: ResultsStore, run_id: str, threads: int, on_cell: Progress, warn: Warn
) -> None:
    for backend, cells in plan(spec, store):
        remaining = list(cells)
        while remaining:
            worker = Worker(spec, backend, run_id, threads)
            try:
                hello = worker.receive(spec.cell_timeout_s)
                _announce(hello, warn)
                if hello["event"] == "load_failed":
                    for cell in remaining:
                        store.add(failed_row(spec, backend, cell, run_id, f"load failed: {hello['error']}"), {})
                        on_cell(backend.display())
                    remaining = []
                    break
                for cell in list(remaining):
                    try:
                        reply = worker.request(
                            _command(spec, backend, cell, spec.warmup, spec.repeats, wants_quality(spec, cell)),
                            spec.cell_timeout_s,
                        )
                    except Interrupted as stop:
                        if stop.reply:
                            store.add(stop.reply["row"], stop.reply["samples"])
                        raise
                    if reply["event"] == "row":
                        store.add(reply["row"], reply["samples"])
                    else:
                        store.add(failed_row(spec, backend, cell, run_id, reply["error"]), {})
                    remaining.remove(cell)
                    on_cell(backend.display())
            except WorkerGone as gone:
                # The cell in flight takes the blame; a fresh worker carries on with the rest.
                store.add(failed_row(spec, backend, remaining[0], run_id, str(gone)), {})
                on_cell(backend.display())
                remaining = remaining[1:]
            finally:
                worker.close()


def run_interleaved(
    spec: SweepSpec, store: ResultsStore, run_id: str, threads: int, on_cell: Progress, warn: Warn
) -> None:
    """All backends' workers stay up; each cell's repetitions alternate between backends, one at a
    time, so slow drift of the machine spreads over every backend instead of hitting one."""
    todo = plan(spec, store)
    workers: dict[str, Worker] = {}
    load_errors: dict[str, str] = {}
    try:
        for backend, _ in todo:
            worker = Worker(spec, backend, run_id, threads)
            try:
                hello = worker.receive(spec.cell_timeout_s)
            except WorkerGone as gone:  # died or hung while loading: its cells fail, the others go on
                hello = {"event": "load_failed", "error": str(gone)}
            _announce(hello, warn)
            if hello["event"] == "ready":
                workers[backend.display()] = worker
            else:
                load_errors[backend.display()] = f"load failed: {hello['error']}"
                worker.close()
        for cell in spec.cells:
            active = [b for b, cells in todo if cell in cells]
            rounds: dict[str, tuple[list, list]] = {b.display(): ([], []) for b in active}
            failed: dict[str, str] = {}
            for r in range(spec.repeats):
                for backend in active:
                    name = backend.display()
                    if name in failed:
                        continue
                    if name not in workers:
                        failed[name] = load_errors.get(name, "load failed")
                        continue
                    last = r == spec.repeats - 1
                    command = _command(
                        spec, backend, cell, spec.warmup if r == 0 else 0, 1, wants_quality(spec, cell) and last
                    )
                    try:
                        reply = workers[name].request(command, spec.cell_timeout_s)
                    except WorkerGone as gone:
                        failed[name] = str(gone)
                        workers.pop(name).close()
                        continue
                    except Interrupted as stop:
                        if stop.reply:
                            rounds[name][0].append(stop.reply["row"])
                            rounds[name][1].append(stop.reply["samples"])
                        # Backends with every round of this cell done are finished results.
                        for done in active:
                            rows, samples = rounds[done.display()]
                            if len(rows) == spec.repeats and done.display() not in failed:
                                store.add(*merge_rounds(rows, samples))
                        raise
                    if reply["event"] == "row":
                        rounds[name][0].append(reply["row"])
                        rounds[name][1].append(reply["samples"])
                    else:
                        failed[name] = reply["error"]
            for backend in active:
                name = backend.display()
                if name in failed:
                    store.add(failed_row(spec, backend, cell, run_id, failed[name]), {})
                else:
                    store.add(*merge_rounds(*rounds[name]))
                on_cell(name)
    finally:
        for worker in workers.values():
            worker.close()


def cells_to_run(spec: SweepSpec, store: ResultsStore) -> int:
    return sum(len(cells) for _, cells in plan(spec, store))


def open_store(spec: SweepSpec, resume: bool, environment: dict[str, Any], meta: dict[str, Any]) -> ResultsStore:
    existing = ResultsStore.load(spec.output)
    if existing is not None and not resume:
        raise UsageError(
            f"'{spec.output}' already holds results; pass --resume to continue it, or choose another output folder"
        )
    if existing is not None:
        return existing
    return ResultsStore(spec.output, environment, meta)
