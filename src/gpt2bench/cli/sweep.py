"""`gpt2bench sweep`: many cells, each backend in worker processes (sweep/)."""

from __future__ import annotations

import dataclasses
import signal
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from gpt2bench.cli.options import warn
from gpt2bench.core.errors import BenchError, UsageError

if TYPE_CHECKING:
    from rich.console import Console

    from gpt2bench.sweep.config import SweepSpec
    from gpt2bench.sweep.driver import SweepRun


def sweep(
    config: Annotated[Path, typer.Argument(help="Sweep YAML, e.g. configs/cpu.yaml.")],
    resume: Annotated[
        bool, typer.Option(help="Continue the results in the output folder, skipping finished cells.")
    ] = False,
    interleave: Annotated[
        bool | None, typer.Option(help="Alternate backends repetition by repetition (overrides the config).")
    ] = None,
    output: Annotated[Path | None, typer.Option(help="Results folder (overrides the config's output).")] = None,
    quality: Annotated[
        bool | None, typer.Option("--quality/--no-quality", help="Measure quality (overrides the config).")
    ] = None,
    force: Annotated[bool, typer.Option(help="With --resume: continue a folder measured with another config.")] = False,
    executor: Annotated[
        str | None, typer.Option(help="local (this machine) or ray (a Ray cluster; overrides the config).")
    ] = None,
    address: Annotated[
        str | None, typer.Option(help="With --executor ray: the cluster, auto or host:port or ray://host:port.")
    ] = None,
    repeats: Annotated[
        str | None, typer.Option(help="Timed repetitions per cell, or auto (overrides the config).")
    ] = None,
    target_ci: Annotated[
        float | None, typer.Option(help="With repeats auto: the medians' relative half-width to reach.")
    ] = None,
) -> None:
    """Run every backend of a sweep config over its cells, each backend in a fresh worker process."""
    from rich.console import Console

    from gpt2bench.cli.progress import phases_shown
    from gpt2bench.sweep.config import load_sweep

    spec = load_sweep(config)
    if output is not None:
        spec = dataclasses.replace(spec, output=output)
    if interleave is not None:
        spec = dataclasses.replace(spec, interleave=interleave)
    if quality is not None:
        spec = dataclasses.replace(spec, quality=dataclasses.replace(spec.quality, enabled=quality))
    spec = _with_cluster(spec, executor, address)
    spec = _with_repeats(spec, repeats, target_ci)
    console = Console()
    with phases_shown(console):  # the model's first build, before the sweep's own bar
        run = _start(spec, config, resume, console, force)
    if run is not None:
        _run_with_progress(run, console)
        _report(run, console)


def _with_repeats(spec: SweepSpec, repeats: str | None, target_ci: float | None) -> SweepSpec:
    """The config's repetitions with --repeats and --target-ci over them. `--repeats auto` keeps the
    config's own rule (its minimum, maximum and budget) when it has one."""
    from gpt2bench.cli.run import parse_repeats
    from gpt2bench.measure.stopping import Adaptive

    if repeats is None and target_ci is None:
        return spec
    count, rule = (spec.repeats, spec.adaptive) if repeats is None else parse_repeats(repeats, Adaptive().target_ci)
    if rule is None:
        if target_ci is not None:
            where = "add --repeats auto" if repeats is None else "not to a fixed count"
            raise UsageError(f"--target-ci applies to repeats auto, {where}")
        return dataclasses.replace(spec, repeats=count, adaptive=None)
    rule = spec.adaptive or rule
    if target_ci is not None:
        rule = dataclasses.replace(rule, target_ci=target_ci)
    rule.validate()
    return dataclasses.replace(spec, repeats=rule.max_repeats, adaptive=rule)


def _with_cluster(spec: SweepSpec, executor: str | None, address: str | None) -> SweepSpec:
    """The config's cluster settings with --executor and --address over them."""
    from gpt2bench.sweep.config import EXECUTORS

    if executor is not None and executor not in EXECUTORS:
        raise UsageError(f"unknown executor '{executor}' (choose from: {', '.join(EXECUTORS)})")
    cluster = dataclasses.replace(
        spec.cluster,
        executor=executor or spec.cluster.executor,
        address=address or spec.cluster.address,
    )
    if address is not None and cluster.executor != "ray":
        raise UsageError("--address names a Ray cluster: use it with --executor ray")
    return dataclasses.replace(spec, cluster=cluster)


def _start(spec: SweepSpec, config: Path, resume: bool, console: Console, force: bool = False) -> SweepRun | None:
    """Check the output, resolve the model, open the store; None when nothing is left to do."""
    from gpt2bench.machine.sysinfo import environment
    from gpt2bench.measure.row import new_run_id
    from gpt2bench.measure.runner import prepare_output
    from gpt2bench.measure.spec import default_threads, oversubscription
    from gpt2bench.sweep.driver import SweepRun, cells_to_run, open_store, resolve_model_once

    for note in spec.notes:
        print(f"note: {note}", file=sys.stderr)
    if problem := spec.interleave_problem():  # --interleave may have turned it on
        raise UsageError(f"{config}: {problem}")
    if spec.cluster.executor == "ray":  # before a model is built for a cluster that is not there
        from gpt2bench.sweep.cluster import preflight

        preflight(spec.cluster.address)
    prepare_output(spec.output)
    threads = spec.threads or default_threads()
    warned: set[str] = set()

    def warn_once(message: str) -> None:  # every backend's worker says the same about this machine
        if message not in warned:
            warned.add(message)
            warn(message)

    if crowded := oversubscription(threads):
        warn_once(crowded)
    spec, model = resolve_model_once(spec, warn_once)
    run_id = new_run_id("sweep")
    meta = {
        "run_id": run_id,
        "sweep_config": str(config),
        "sweep_config_text": config.read_text(),
        "interleave": spec.interleave,
        "threads": threads,
        "sweep_spec": spec.record(threads),
    }
    store = open_store(spec, resume, environment(), meta, force)
    run = SweepRun(spec, model, store, store.meta.get("run_id", run_id), threads, lambda _label: None, warn_once)
    if cells_to_run(run) == 0:
        console.print(f"nothing to do: every cell of {config} is already in {spec.output}")
        return None
    return run


def _run_with_progress(run: SweepRun, console: Console) -> None:
    from rich.progress import Progress

    from gpt2bench.cli.progress import columns, phases_on
    from gpt2bench.sweep.driver import cells_to_run, run_interleaved, run_sequential

    if run.spec.cluster.executor == "ray":
        from gpt2bench.sweep.cluster import run_on_cluster

        execute = run_on_cluster
    else:
        execute = run_interleaved if run.spec.interleave else run_sequential

    terminated: list[int] = []

    def on_sigterm(signum: int, _frame: object) -> None:
        # `timeout`, a CI cancel, `kill`: stop as Ctrl-C stops, saving what finished.
        terminated.append(signum)
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, on_sigterm)
    with Progress(*columns(), console=console) as progress, phases_on(progress):
        task = progress.add_task("sweep", total=cells_to_run(run), detail="")
        run.on_cell = lambda label: progress.update(task, advance=1, description=f"sweep ({label} done a cell)")
        try:
            execute(run)
        except KeyboardInterrupt:
            progress.stop()
            how = "terminated (SIGTERM)" if terminated else "interrupted"
            print(
                f"{how}; {len(run.store.rows)} finished cell(s) are saved in {run.spec.output} "
                "(the same command with --resume continues)",
                file=sys.stderr,
            )
            sys.exit(128 + signal.SIGTERM if terminated else 130)
        finally:
            signal.signal(signal.SIGTERM, previous)


def precision_lines(rows: list[dict], shown: int = 10) -> list[str]:
    """The cells' achieved precision: how many stopped for each reason, then the least precise
    cells (up to `shown`)."""
    import math
    from collections import Counter

    from gpt2bench.report.summary import precision_line

    def worst(row: dict) -> float:
        found = [row.get(k) for k in ("tpot_ci_rel", "e2e_ci_rel") if isinstance(row.get(k), float)]
        defined = [v for v in found if not math.isnan(v)]
        return max(defined) if defined else math.inf

    rows = [r for r in rows if "stop_reason" in r]
    if not rows:
        return []
    reasons = ", ".join(f"{n} {reason}" for reason, n in Counter(r["stop_reason"] for r in rows).most_common())
    lines = [f"achieved precision (interval of the median of TPOT and e2e), cells by why they stopped: {reasons}"]
    for row in sorted(rows, key=worst, reverse=True)[:shown]:
        lines.append(f"  {row['label']} prompt={row['prompt_len']} gen={row['gen_len']}: {precision_line(row)}")
    return lines


def _report(run: SweepRun, console: Console) -> None:
    """What finished and what failed; exit 1 when anything did."""
    from gpt2bench.report.rows import cluster_line
    from gpt2bench.sweep.ledger import breakdown_lines

    rows = run.store.rows
    failed = [r for r in rows if r.get("status") != "ok"]
    say = console.print
    breakdown = run.ledger.record()
    run.store.set_meta("time_breakdown", breakdown)
    say("where the time went (s):", markup=False)
    for line in breakdown_lines(breakdown):
        say(f"  {line}", markup=False)
    for line in precision_lines([r for r in rows if r.get("status") == "ok"]):
        say(line, markup=False)
    say(f"{len(rows) - len(failed)} cells ok, {len(failed)} failed; results in {run.spec.output}")
    if served := cluster_line(run.store.meta, [r for r in rows if r.get("status") == "ok"]):
        say(served, markup=False)
    for row in failed:
        say(
            f"  failed: {row['label']} prompt={row['prompt_len']} gen={row['gen_len']} "
            f"batch={row['batch_size']}: {row['error']}",
            markup=False,
        )
    no_quality = [r for r in rows if r.get("quality_error")]
    for row in no_quality:
        say(f"  quality failed: {row['label']}: {row['quality_error']}", markup=False)
    if failed:
        raise BenchError(f"{len(failed)} of {len(rows)} cells failed (their rows record why)")
    if no_quality:
        raise BenchError(f"quality failed for {len(no_quality)} backend(s); their speed results are saved")
