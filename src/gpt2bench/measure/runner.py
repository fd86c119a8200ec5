"""One benchmark cell, end to end: validate, resolve the model, cut prompts, load, measure, write."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gpt2bench.core.errors import UsageError, one_line
from gpt2bench.core.fsutil import check_writable
from gpt2bench.core.progress import quiet_libraries
from gpt2bench.measure.row import ROW_DETAILS, ok_row, spec_fields
from gpt2bench.measure.spec import RunSpec, oversubscription

QUALITY_INTERRUPTED = "interrupted (Ctrl-C) before quality finished"


@dataclass
class CellResult:
    row: dict[str, Any]
    samples: dict[str, Any]
    details: dict[str, Any]
    model: Any
    sample_text: str
    environment: dict[str, Any]


@dataclass
class Session:
    """One loaded backend, ready to measure any number of cells (a sweep loads once per backend)."""

    backend: Any
    model: Any
    tokenizer: Any
    load: Any
    _probe: Any = None

    def probe(self, threads: int) -> Any:
        """The bandwidth probe's helper process, started once for all the session's cells (each
        start imports torch, ~1.5 s); it waits on a pipe, using no CPU, between probes."""
        if self._probe is None:
            from gpt2bench.machine.probe import BandwidthProbe

            self._probe = BandwidthProbe(threads).__enter__()
        return self._probe

    def close(self) -> None:
        if self._probe is not None:
            self._probe.__exit__(None, None, None)
        self.backend.close()


def check_fits(spec: RunSpec, model: Any) -> None:
    """The cell's lengths and quality window against this model's context (GPT-2's 1024 is checked
    with the spec; a local model may have fewer positions)."""
    n_positions = model.n_positions()
    if spec.prompt_len + spec.gen_len > n_positions:
        raise UsageError(
            f"prompt-len + gen-len = {spec.prompt_len + spec.gen_len} exceeds this model's {n_positions}-token context"
        )
    if spec.quality is not None:
        spec.quality.validate(n_positions)


def open_session(
    spec: RunSpec, warn: Callable[[str], None], check_cell: bool = True, model_at: tuple[str, Path] | None = None
) -> Session:
    """Resolve the model and load the backend. With check_cell, `spec`'s own cell is checked
    against the model first, so a bad length fails before a long load (a sweep worker checks each
    cell as it comes instead). `model_at` (reference, folder): the model another process resolved,
    its files at `folder` here (a cluster node's copy), loaded as that reference."""
    from gpt2bench.backends import BackendSettings, get_backend
    from gpt2bench.measure.harness import timed_load
    from gpt2bench.models.ref import load_tokenizer, local_model
    from gpt2bench.models.resolve import resolve_model

    spec.validate()
    if crowded := oversubscription(spec.threads):
        warn(crowded)
    quiet_libraries()
    backend = get_backend(spec.backend).create()
    model = local_model(model_at[0], model_at[1]) if model_at else resolve_model(spec.model)
    if fallback := model.fallback_warning():
        warn(fallback)
    if check_cell:
        check_fits(spec, model)
    settings = BackendSettings(spec.device, spec.dtype, spec.threads, spec.options)
    load = timed_load(backend, model, settings)
    for message in backend.warnings():
        warn(message)
    return Session(backend, model, load_tokenizer(model), load)


def measure_cell(
    session: Session,
    spec: RunSpec,
    run_id: str,
    label: str = "",
    on_step: Callable[[str, int, int], None] | None = None,
) -> CellResult:
    """Measure one (prompt, gen, batch) cell with an open session; `spec` names the cell."""
    from gpt2bench.machine.sysinfo import environment
    from gpt2bench.measure.harness import measure
    from gpt2bench.measure.prompts import make_prompts

    started = time.perf_counter()
    spec.validate()
    backend, model, tokenizer = session.backend, session.model, session.tokenizer
    check_fits(spec, model)
    prompts = make_prompts(tokenizer, spec.prompt_len, spec.batch_size)
    probe = session.probe(spec.threads) if spec.probe_bandwidth else None
    # Before the timed runs: measuring the roofs takes seconds on a machine's first run, and a
    # Ctrl-C there must not cost finished measurements. It is cached, so later cells read a file.
    roofs_started = time.perf_counter()
    roofs = _machine_roofs(spec.device, spec.threads)
    roofs_s = time.perf_counter() - roofs_started
    m = measure(backend, prompts, spec.gen_len, spec.sampling, spec.warmup, spec.repeats, on_step, probe, spec.adaptive)
    details = backend.describe()
    quality = _quality(backend, model, tokenizer, spec.quality, on_step) if spec.quality is not None else {}
    env = environment()
    facts = {k: details[k] for k in ROW_DETAILS if k in details}
    row = ok_row(spec_fields(spec, model, run_id, label), session.load, m, prompts, env, {**facts, **quality})
    stored = backend.stored_weight_bytes()
    row.update(_roofline(spec, row, model, roofs, [r.tpot_ms for r in m.runs], m.bandwidth_gbs, stored))
    row["probe_s"] += roofs_s  # the machine's roofs, measured on its first cell and cached
    row["cell_s"] = time.perf_counter() - started
    sample_text = tokenizer.decode(m.generations[0].tokens[0].tolist())
    samples = _samples(spec, row, m, prompts, sample_text, details, backend.warnings(), env)
    return CellResult(row, samples, details, model, sample_text, env)


def _samples(
    spec: RunSpec,
    row: dict[str, Any],
    m: Any,
    prompts: Any,
    sample_text: str,
    details: dict[str, Any],
    warnings: list[str],
    env: dict[str, Any],
) -> dict[str, Any]:
    """The raw record beside a row in results.json: per-repetition figures, ids, the spec."""
    return {
        "run_id": row["run_id"],
        "cell_key": row["cell_key"],
        "per_run": {name: [r.scalars()[name] for r in m.runs] for name in m.stats()},
        "itl_ms": [list(r.itl_ms) for r in m.runs],
        "prompt_ids": prompts.input_ids.tolist(),
        "generated_ids": [g.tokens.tolist() for g in m.generations[:1]],
        "sample_text": sample_text,
        "backend_details": details,
        "warnings": warnings,  # as printed at load: e.g. an arithmetic this CPU only emulates
        "spec": spec.as_record(),
        "contention_wall_s": m.contention.wall_s,
        "contention_windows": m.contention.windows,
        "bandwidth_gbs": m.bandwidth_gbs,  # probes around the timed runs, when asked for
        "torch": env["torch"],
    }


def run_cell(
    spec: RunSpec, run_id: str, warn: Callable[[str], None], on_step: Callable[[str, int, int], None] | None = None
) -> CellResult:
    session = open_session(spec, warn)
    try:
        return measure_cell(session, spec, run_id, on_step=on_step)
    finally:
        session.close()


def _machine_roofs(device: str, threads: int) -> dict[str, Any]:
    """The machine's roofs are CPU microbenchmarks, so GPU rows get none."""
    from gpt2bench.machine.roofs import machine_roofs

    return machine_roofs(threads) if device == "cpu" else {}


def _roofline(
    spec: RunSpec,
    row: dict[str, Any],
    model: Any,
    roofs: dict[str, Any],
    tpot_ms: list[float],
    probed: list[float],
    stored_bytes: float | None = None,
) -> dict[str, Any]:
    """Roofline columns, from the backend's weight width (the loaded backend's own figure where it
    has one, else the declared one) and arithmetic. With probes around the runs, the bandwidth is
    theirs and each run is set against its own moment."""
    import statistics

    from gpt2bench.backends.base import get_backend
    from gpt2bench.measure.roofline import peak_for, probe_runs, roofline_columns

    info = get_backend(spec.backend)
    arithmetic = info.arithmetic(spec.dtype)
    bandwidth = statistics.median(probed) if probed else roofs.get("read_bandwidth_gbs")
    runs = probe_runs(tpot_ms, probed) if probed else []
    columns = roofline_columns(
        row,
        model.config(),
        stored_bytes or info.bytes_per_weight(spec.dtype),
        bandwidth,
        peak_for(roofs, arithmetic),
        runs,
        info.kv_traffic(spec.dtype),
    )
    if roofs.get("contended") and columns["bandwidth_source"] == "cached":
        columns["bandwidth_source"] = "cached-contended"  # measured on a busy machine: see machine_roofs
    return {**columns, "compute_dtype": arithmetic}


def _quality(
    backend: Any, model: Any, tokenizer: Any, settings: Any, on_step: Callable[[str, int, int], None] | None
) -> dict[str, Any]:
    """Quality after speed, so it never disturbs the timed runs; its own time is recorded. If it
    fails, the timed runs are finished results all the same: the row keeps them, with the error."""

    from gpt2bench.measure.quality import evaluate

    if on_step:
        on_step("quality", 0, 1)
    t0 = time.perf_counter()
    try:
        result = evaluate(backend, model, tokenizer, settings)
    except KeyboardInterrupt:  # Ctrl-C: the caller saves the timed runs, then stops
        return {"quality_error": QUALITY_INTERRUPTED}
    except Exception as exc:
        return {"quality_error": one_line(exc)}
    return {**result.columns(), "quality_s": time.perf_counter() - t0}


def prepare_output(output: Path) -> None:
    """Fail before any expensive work if results could not be written, or the cache not used."""
    from gpt2bench.core.errors import BenchError
    from gpt2bench.core.paths import check_cache

    try:
        check_writable(output)
    except OSError as exc:
        raise BenchError(f"cannot write results to '{output}': {exc.strerror or exc}") from None
    check_cache()
