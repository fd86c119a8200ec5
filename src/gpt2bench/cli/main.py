"""The command line. Commands stay thin and import heavy modules inside their bodies, so
`gpt2bench --help`, `backends` and `plot` never import torch."""

from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path
from typing import Annotated

import typer

from gpt2bench.core.errors import BenchError, UsageError

app = typer.Typer(
    name="gpt2bench",
    help="Benchmark GPT-2 inference backends: latency, throughput, memory and quality, reproducibly.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _warn(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr, flush=True)


def _parse_options(pairs: list[str]) -> dict[str, object]:
    import yaml

    options: dict[str, object] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise UsageError(f"--option expects key=value, got '{pair}'")
        options[key.strip()] = yaml.safe_load(value)
    return options


@app.command()
def run(
    backend: Annotated[str, typer.Option("--backend", "-b", help="Backend name (see `gpt2bench backends`).")],
    prompt_len: Annotated[int, typer.Option(help="Prompt length in tokens.")] = 50,
    gen_len: Annotated[int, typer.Option(help="Tokens to generate (exactly; EOS is ignored).")] = 100,
    batch_size: Annotated[int, typer.Option(help="Sequences per generation.")] = 1,
    repeats: Annotated[int, typer.Option(help="Timed repetitions.")] = 5,
    warmup: Annotated[int, typer.Option(help="Untimed warm-up generations.")] = 2,
    model: Annotated[
        str | None,
        typer.Option(help="Hub id, local Hugging Face folder, or 'random'. Default: gpt2, or random when offline."),
    ] = None,
    threads: Annotated[int | None, typer.Option(help="Intra-op threads. Default: the cores available.")] = None,
    device: Annotated[str, typer.Option(help="cpu or cuda.")] = "cpu",
    dtype: Annotated[str, typer.Option(help="fp32, bf16 or fp16, where the backend supports it.")] = "fp32",
    temperature: Annotated[float, typer.Option(help="0 = greedy (default); > 0 samples.")] = 0.0,
    top_k: Annotated[int, typer.Option(help="Sampling: keep the k best tokens (0 = all).")] = 0,
    top_p: Annotated[float, typer.Option(help="Sampling: nucleus mass.")] = 1.0,
    seed: Annotated[int, typer.Option(help="Sampling seed.")] = 0,
    option: Annotated[
        list[str] | None, typer.Option("--option", "-o", help="Backend option key=value (repeatable).")
    ] = None,
    rebuild: Annotated[bool, typer.Option(help="Rebuild cached artifacts (ONNX export...) first.")] = False,
    quality: Annotated[bool, typer.Option(help="Also measure perplexity and agreement with hf-eager fp32.")] = False,
    probe_bandwidth: Annotated[
        bool, typer.Option(help="Measure read bandwidth around every timed run, for the roofline ratio (CPU).")
    ] = False,
    eval_text: Annotated[Path | None, typer.Option(help="Perplexity text (default: bundled WikiText-2 test).")] = None,
    ppl_window: Annotated[int | None, typer.Option(help="Perplexity window (default: the model's context).")] = None,
    ppl_stride: Annotated[int | None, typer.Option(help="Sliding-window stride (default: the window).")] = None,
    ppl_max_windows: Annotated[int, typer.Option(help="Cap on perplexity windows; 0 = the whole text.")] = 4,
    output: Annotated[Path, typer.Option(help="Results folder; each run writes <output>/<run-id>/.")] = Path("results"),
) -> None:
    """Measure one backend on one (prompt length, generation length, batch size) cell."""
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    from gpt2bench.backends import get_backend
    from gpt2bench.measure.spec import RunSpec, Sampling, default_threads

    options = _parse_options(option or [])
    if rebuild and "rebuild" in get_backend(backend).options:
        options["rebuild"] = True
    quality_settings = None
    if quality:
        from gpt2bench.core.paths import DEFAULT_TEXT
        from gpt2bench.measure.quality import QualitySettings

        if ppl_max_windows < 0:
            raise UsageError(f"ppl-max-windows must be >= 0 (0 = the whole text), got {ppl_max_windows}")
        quality_settings = QualitySettings(ppl_window, ppl_stride, ppl_max_windows or None, eval_text or DEFAULT_TEXT)
    spec = RunSpec(
        backend=backend,
        prompt_len=prompt_len,
        gen_len=gen_len,
        batch_size=batch_size,
        repeats=repeats,
        warmup=warmup,
        model=model,
        threads=threads if threads is not None else default_threads(),
        device=device,
        dtype=dtype,
        sampling=Sampling(temperature, top_k, top_p, seed),
        options=options,
        quality=quality_settings,
        probe_bandwidth=probe_bandwidth,
    )
    spec.validate()

    from gpt2bench.measure.runner import QUALITY_INTERRUPTED, prepare_output, run_cell
    from gpt2bench.report.store import ResultsStore, new_run_id
    from gpt2bench.report.summary import print_summary

    prepare_output(output)
    run_id = new_run_id(backend)
    console = Console()
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total}"),
        TimeElapsedColumn(),
        console=console,
        transient=True,
        auto_refresh=False,  # no refresh thread competing with the timed repetitions in this process
    ) as progress:
        task = progress.add_task(f"{backend}: loading", total=warmup + repeats)
        progress.refresh()

        def on_step(phase: str, _i: int, _n: int) -> None:
            progress.update(task, advance=0 if phase == "quality" else 1, description=f"{backend}: {phase}")
            progress.refresh()

        cell = run_cell(spec, run_id, _warn, on_step)
    store = ResultsStore(output / run_id, cell.environment, meta={"run_id": run_id, "model": cell.model.as_record()})
    store.add(cell.row, cell.samples)
    print_summary(console, cell.row, cell.sample_text, cell.details, str(store.folder), cell.samples["warnings"])
    if cell.row.get("quality_error") == QUALITY_INTERRUPTED:
        print(f"interrupted during quality; the speed results are saved in {store.folder}", file=sys.stderr)
        sys.exit(130)
    if cell.row.get("quality_error"):
        raise BenchError(f"quality failed ({cell.row['quality_error']}); the speed results are saved in {store.folder}")


@app.command()
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
) -> None:
    """Run every backend of a sweep config over its cells, each backend in a fresh worker process."""
    import dataclasses

    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    from gpt2bench.machine.sysinfo import environment
    from gpt2bench.measure.runner import prepare_output
    from gpt2bench.measure.spec import default_threads, oversubscription
    from gpt2bench.report.store import new_run_id
    from gpt2bench.sweep.config import load_sweep
    from gpt2bench.sweep.driver import cells_to_run, open_store, resolve_model_once, run_interleaved, run_sequential

    spec = load_sweep(config)
    if output is not None:
        spec = dataclasses.replace(spec, output=output)
    if interleave is not None:
        spec = dataclasses.replace(spec, interleave=interleave)
    if quality is not None:
        spec = dataclasses.replace(spec, quality=dataclasses.replace(spec.quality, enabled=quality))
    prepare_output(spec.output)
    threads = spec.threads or default_threads()
    warned: set[str] = set()

    def warn_once(message: str) -> None:  # every backend's worker says the same about this machine
        if message not in warned:
            warned.add(message)
            _warn(message)

    if crowded := oversubscription(threads):
        warn_once(crowded)
    spec = resolve_model_once(spec, warn_once)
    run_id = new_run_id("sweep")
    meta = {
        "run_id": run_id,
        "sweep_config": str(config),
        "sweep_config_text": config.read_text(),
        "interleave": spec.interleave,
        "threads": threads,
    }
    store = open_store(spec, resume, environment(), meta)
    run_id = store.meta.get("run_id", run_id)
    total = cells_to_run(spec, store)
    console = Console()
    if total == 0:
        console.print(f"nothing to do: every cell of {config} is already in {spec.output}")
        return
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=console) as progress:
        task = progress.add_task("sweep", total=total)

        def on_cell(label: str) -> None:
            progress.update(task, advance=1, description=f"sweep ({label} done a cell)")

        try:
            (run_interleaved if spec.interleave else run_sequential)(spec, store, run_id, threads, on_cell, warn_once)
        except KeyboardInterrupt:
            progress.stop()
            print(
                f"interrupted; {len(store.rows)} finished cell(s) are saved in {spec.output} "
                "(the same command with --resume continues)",
                file=sys.stderr,
            )
            sys.exit(130)
    failed = [r for r in store.rows if r.get("status") != "ok"]
    console.print(f"{len(store.rows) - len(failed)} cells ok, {len(failed)} failed; results in {spec.output}")
    for row in failed:
        console.print(
            f"  failed: {row['label']} prompt={row['prompt_len']} gen={row['gen_len']} "
            f"batch={row['batch_size']}: {row['error']}",
            markup=False,
        )
    no_quality = [r for r in store.rows if r.get("quality_error")]
    for row in no_quality:
        console.print(f"  quality failed: {row['label']}: {row['quality_error']}", markup=False)
    if failed:
        raise BenchError(f"{len(failed)} of {len(store.rows)} cells failed (their rows record why)")
    if no_quality:
        raise BenchError(f"quality failed for {len(no_quality)} backend(s); their speed results are saved")


@app.command()
def plot(
    folder: Annotated[
        Path, typer.Argument(help="A results folder (from run or sweep), or a folder of them, e.g. results/.")
    ],
    out: Annotated[Path | None, typer.Option(help="Where to write figures (default: the results folder).")] = None,
    model: Annotated[
        str | None, typer.Option(help="Only this model's results (its --model name or weights hash).")
    ] = None,
) -> None:
    """PNG figures and summary.md from a results folder (never imports torch)."""
    from gpt2bench.report.plot import plot as make_plots

    for path in make_plots(folder, out, model):
        print(path)


@app.command(
    epilog="A regression is a change both significant (Mann-Whitney U on the per-repetition samples) and "
    "beyond the threshold. Baseline rows the new run does not have fail too: a gate must not pass what "
    "it did not check."
)
def compare(
    baseline: Annotated[Path, typer.Argument(help="Baseline results folder.")],
    new: Annotated[Path, typer.Argument(help="New results folder.")],
    metric: Annotated[list[str] | None, typer.Option(help="Speed metric to judge (repeatable).")] = None,
    threshold: Annotated[float, typer.Option(help="Relative change that counts, e.g. 0.1 = 10%.")] = 0.10,
    quality_threshold: Annotated[
        float, typer.Option(help="Relative change in perplexity/agreement that counts.")
    ] = 0.01,
    alpha: Annotated[float, typer.Option(help="Significance level of the Mann-Whitney U test.")] = 0.05,
    normalize: Annotated[
        str | None, typer.Option(help="Reference backend measured in the same run, e.g. hf-eager.")
    ] = None,
    allow_missing: Annotated[
        bool, typer.Option(help="Do not fail when baseline rows are missing from the new run.")
    ] = False,
) -> None:
    """Compare two results folders; exit 1 on a regression or a missing row."""
    from gpt2bench.report.compare import DEFAULT_METRICS, REGRESSIONS, load, machine_note, markdown, power_note
    from gpt2bench.report.compare import compare as run_compare

    old_doc, new_doc = load(baseline), load(new)
    verdicts = run_compare(
        old_doc, new_doc, tuple(metric or DEFAULT_METRICS), threshold, quality_threshold, alpha, normalize
    )
    print(markdown(verdicts, normalize))
    for note in (machine_note(old_doc, new_doc), power_note(verdicts, alpha)):
        if note:
            print(f"\n{note}")
    bad = [v for v in verdicts if v.verdict in REGRESSIONS]
    missing = [v for v in verdicts if v.verdict == "missing"]
    print(
        f"\n{len(bad)} regression(s), {len(missing)} missing, {len(verdicts)} comparisons "
        f"(threshold {threshold:.0%}, alpha {alpha})"
    )
    if bad:
        raise typer.Exit(1)
    if missing and not allow_missing:
        raise BenchError(
            f"{len(missing)} baseline comparison(s) missing from the new run (--allow-missing to accept that)"
        )


@app.command()
def env(
    threads: Annotated[
        int | None, typer.Option(help="Threads for the microbenchmarks (default: cores available).")
    ] = None,
    refresh: Annotated[bool, typer.Option(help="Measure the roofs again instead of using the cache.")] = False,
) -> None:
    """Machine report (CPU, cores, memory, GPU, library versions) and its measured roofs."""
    if threads is not None and threads < 1:
        raise UsageError(f"threads must be at least 1, got {threads}")
    import torch  # the report includes torch's view of the machine, and the roofs need it

    from gpt2bench.machine.roofs import machine_roofs, rate_unit
    from gpt2bench.machine.sysinfo import cpu_label, environment
    from gpt2bench.measure.spec import default_threads

    threads = threads or default_threads()
    torch.set_num_threads(threads)
    info = environment()
    roofs = machine_roofs(threads, refresh)
    print(f"cpu          {cpu_label(info)}, torch kernels {info['torch']['cpu_capability']}")
    print(f"cores        {info['cpu_count_logical']} logical, {info['cpu_affinity']} available to this process")
    print(f"memory       {info['memory_total_gb']:.1f} GiB")
    print(f"gpu          {info['torch'].get('cuda_device', 'none')}")
    print(
        f"threads      {threads} (torch intra-op {info['torch']['num_threads']}, inter-op "
        f"{info['torch']['num_interop_threads']})"
    )
    print(f"bandwidth    {roofs['read_bandwidth_gbs']:.1f} GB/s read (best of fp32/bf16 sum, amax, dot; cached)")
    for dtype, peak in roofs["peak_gflops"].items():
        measured = roofs.get("matmul_gflops", {}).get(dtype)
        if peak:
            shown = f"{peak:.1f} {rate_unit(dtype)} (2048x2048 matmul; cached)"
        elif measured:
            shown = (
                f"none: no native {dtype} matmul here (torch's fallback loop: {measured:.1f} {rate_unit(dtype)} "
                "at 256x256)"
            )
        else:
            shown = "not available"
        print(f"peak {dtype:<7} {shown}")
    print(f"python       {info['python']} on {info['platform']}")
    dirty = " (dirty)" if info["git"]["dirty"] else ""
    print(f"gpt2bench    {info['gpt2bench_version']} at {info['git']['commit']}{dirty}")
    for name, version in info["packages"].items():
        print(f"  {name:<17}{version or '-'}")


@app.command()
def coldstart(
    backend: Annotated[str, typer.Option("--backend", "-b", help="Backend name.")],
    model: Annotated[str | None, typer.Option(help="As for run.")] = None,
    device: Annotated[str, typer.Option(help="cpu or cuda.")] = "cpu",
    dtype: Annotated[str, typer.Option(help="fp32, bf16 or fp16.")] = "fp32",
    threads: Annotated[int | None, typer.Option(help="Intra-op threads.")] = None,
    prompt_len: Annotated[int, typer.Option(help="Prompt length for the first token.")] = 8,
    repeats: Annotated[int, typer.Option(help="Fresh processes to start.")] = 3,
    output: Annotated[Path, typer.Option(help="Writes <output>/<coldstart-id>/coldstart.json.")] = Path("results"),
) -> None:
    """Time from a fresh process's start to its first token: interpreter, imports, load, first token."""
    from gpt2bench.core.fsutil import atomic_write_text
    from gpt2bench.machine.sysinfo import environment
    from gpt2bench.measure.coldstart import PARTS, document, measure_processes
    from gpt2bench.measure.runner import check_fits, prepare_output
    from gpt2bench.measure.spec import RunSpec, default_threads
    from gpt2bench.models.resolve import resolve_model
    from gpt2bench.report.store import new_run_id

    threads = threads or default_threads()
    spec = RunSpec(
        backend=backend,
        prompt_len=prompt_len,
        gen_len=1,
        model=model,
        device=device,
        dtype=dtype,
        threads=threads,
        repeats=repeats,
    )
    spec.validate()
    prepare_output(output)
    # Resolved here, once: the children load from the local folder, as a deployment loads weights
    # from disk, so no child's load time holds a Hub lookup, an offline fallback or tiny's training.
    ref = resolve_model(model)
    if fallback := ref.fallback_warning():
        _warn(fallback)
    check_fits(spec, ref)
    runs, stopped = measure_processes(repeats, backend, str(ref.path), device, dtype, threads, prompt_len)
    loaded = ref.as_record()
    doc = document(runs, loaded, spec.as_record(), environment())
    if stopped is not None:
        doc["stopped"] = "interrupted (Ctrl-C)" if isinstance(stopped, KeyboardInterrupt) else str(stopped)
    folder = output / new_run_id(f"coldstart-{backend}")
    folder.mkdir(parents=True)
    atomic_write_text(folder / "coldstart.json", json.dumps(doc, indent=1))
    if isinstance(stopped, KeyboardInterrupt):
        print(f"interrupted; the {len(runs)} finished process(es) are saved in {folder}", file=sys.stderr)
        sys.exit(130)
    if stopped is not None:
        raise BenchError(f"{stopped}; the {len(runs)} finished process(es) are saved in {folder}")
    print(
        f"cold start of {backend} ({device}/{dtype}, {threads} threads, model {loaded['reference']} "
        f"({loaded['weights']})), {repeats} fresh processes; load includes export/compile unless cached"
    )
    print(f"{'part':<16}{'median s':>10}{'min s':>10}{'max s':>10}")
    for part in (*PARTS, "total_s"):
        stats = doc["summary"][part]
        print(f"{part:<16}{stats['median']:>10.3f}{stats['min']:>10.3f}{stats['max']:>10.3f}")
    print(f"results: {folder / 'coldstart.json'}")


@app.command(
    epilog="Writes pyinstrument's HTML and text, plus the backend's own trace where it has one (torch "
    "profiler, ONNX Runtime profiling)."
)
def profile(
    backend: Annotated[str, typer.Option("--backend", "-b", help="Backend name.")],
    prompt_len: Annotated[int, typer.Option(help="Prompt length in tokens.")] = 50,
    gen_len: Annotated[int, typer.Option(help="Tokens to generate.")] = 20,
    batch_size: Annotated[int, typer.Option(help="Sequences per generation.")] = 1,
    model: Annotated[str | None, typer.Option(help="As for run.")] = None,
    threads: Annotated[int | None, typer.Option(help="Intra-op threads.")] = None,
    device: Annotated[str, typer.Option(help="cpu or cuda.")] = "cpu",
    dtype: Annotated[str, typer.Option(help="fp32, bf16 or fp16.")] = "fp32",
    option: Annotated[list[str] | None, typer.Option("--option", "-o", help="Backend option key=value.")] = None,
    output: Annotated[Path, typer.Option(help="Writes <output>/<profile-id>/.")] = Path("results"),
) -> None:
    """Profile one generation (after set-up and a warm-up) with pyinstrument and the backend's own tracer."""
    from pyinstrument import Profiler

    from gpt2bench.machine.sysinfo import environment
    from gpt2bench.measure.prompts import make_prompts
    from gpt2bench.measure.runner import open_session, prepare_output
    from gpt2bench.measure.spec import RunSpec, Sampling, default_threads
    from gpt2bench.report.store import new_run_id

    spec = RunSpec(
        backend=backend,
        prompt_len=prompt_len,
        gen_len=gen_len,
        batch_size=batch_size,
        model=model,
        threads=threads or default_threads(),
        device=device,
        dtype=dtype,
        options=_parse_options(option or []),
    )
    spec.validate()
    prepare_output(output)
    session = open_session(spec, _warn)
    try:
        ids = make_prompts(session.tokenizer, prompt_len, batch_size).input_ids
        session.backend.setup(batch_size, prompt_len, gen_len, Sampling())

        def generation() -> None:
            for _ in session.backend.generate(ids, gen_len, Sampling()):
                pass
            session.backend.synchronize()

        generation()  # warm-up: the profile shows the steady state, not first-call costs
        out = output / new_run_id(f"profile-{backend}")
        out.mkdir(parents=True)
        profiler = Profiler(interval=0.0005)
        profiler.start()
        generation()
        profiler.stop()
        (out / "profile.html").write_text(profiler.output_html())
        (out / "profile.txt").write_text(profiler.output_text(unicode=True, color=False))
        trace = session.backend.trace(generation, out)
        about = {"spec": spec.as_record(), "model": session.model.as_record(), "environment": environment()}
        (out / "profile.json").write_text(json.dumps(about, indent=1, default=str))
    finally:
        session.close()
    for path in [out / "profile.html", out / "profile.txt", *([trace] if trace else []), out / "profile.json"]:
        print(path)


@app.command("make-tiny")
def make_tiny(
    steps: Annotated[
        int | None, typer.Option(help="Training steps (2 x 512 tokens each). Default: the recipe's (300).")
    ] = None,
    seed: Annotated[int, typer.Option(help="Seed for init and data order.")] = 0,
    rebuild: Annotated[bool, typer.Option(help="Train again even if cached.")] = False,
) -> None:
    """Train (once, cached) the small GPT-2 that `--model tiny` uses for meaningful quality numbers."""
    from dataclasses import replace

    from gpt2bench.models.tiny import TinyRecipe, tiny_model_dir

    if steps is not None and steps < 1:
        raise UsageError(f"--steps must be at least 1, got {steps}")
    recipe = replace(TinyRecipe(), seed=seed, **({"steps": steps} if steps is not None else {}))
    folder = tiny_model_dir(recipe, rebuild=rebuild)
    print(f"tiny model: {folder}")


@app.command("backends")
def list_backends() -> None:
    """List every backend, whether it can run here, and why not."""
    from rich.console import Console
    from rich.table import Table

    from gpt2bench.backends import all_backends, plugin_errors
    from gpt2bench.measure.spec import dtype_label

    table = Table(title="gpt2bench backends")
    for col in ("backend", "available", "devices", "dtypes", "description"):
        table.add_column(col)
    for name, info in sorted(all_backends().items()):
        reason = info.unavailable_reason()
        table.add_row(
            name,
            "yes" if reason is None else f"no: {reason}",
            ",".join(info.devices),
            ",".join(dtype_label(d) for d in info.dtypes),
            info.description,
        )
    Console().print(table)
    for error in plugin_errors():
        _warn(error)


def main() -> None:
    """Entry point: our errors become one line on stderr and an exit code, never a traceback."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(levelname)s: %(message)s"))
    logger = logging.getLogger("gpt2bench")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    try:
        app()
    except BenchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    except Exception as exc:  # a bug: keep it to one line unless asked for the traceback
        if os.environ.get("GPT2BENCH_DEBUG"):
            raise
        print(f"internal error: {type(exc).__name__}: {exc} (set GPT2BENCH_DEBUG=1 for the traceback)", file=sys.stderr)
        sys.exit(1)
