"""Commands that measure one configuration: run, profile, coldstart."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from gpt2bench.cli.options import (
    Backend,
    BackendOptions,
    BatchSize,
    Device,
    Dtype,
    GenLen,
    Model,
    Output,
    PromptLen,
    Threads,
    parse_options,
    threads_or_default,
    warn,
)
from gpt2bench.core.errors import BenchError, UsageError

if TYPE_CHECKING:
    from rich.console import Console

    from gpt2bench.measure.runner import CellResult
    from gpt2bench.measure.spec import QualitySettings, RunSpec
    from gpt2bench.measure.stopping import Adaptive


def parse_repeats(text: str, target_ci: float) -> tuple[int, Adaptive | None]:
    """--repeats: a count, or auto (the stopping rule's defaults, with --target-ci)."""
    from gpt2bench.core.errors import UsageError
    from gpt2bench.measure.stopping import Adaptive

    if text.strip().lower() == "auto":
        rule = Adaptive(target_ci=target_ci)
        return rule.max_repeats, rule
    try:
        count = int(text)
    except ValueError:
        raise UsageError(f"--repeats must be a whole number or auto, got '{text}'") from None
    if count < 1:
        raise UsageError(f"--repeats must be at least 1, got {count}")
    return count, None


def run(
    backend: Backend,
    prompt_len: PromptLen = 50,
    gen_len: GenLen = 100,
    batch_size: BatchSize = 1,
    repeats: Annotated[
        str, typer.Option(help="Timed repetitions, or auto: until the medians are known to --target-ci.")
    ] = "5",
    target_ci: Annotated[
        float, typer.Option(help="With --repeats auto: the medians' relative half-width to reach.")
    ] = 0.02,
    warmup: Annotated[int, typer.Option(help="Untimed warm-up generations.")] = 2,
    model: Model = None,
    threads: Threads = None,
    device: Device = "cpu",
    dtype: Dtype = "fp32",
    temperature: Annotated[float, typer.Option(help="0 = greedy (default); > 0 samples.")] = 0.0,
    top_k: Annotated[int, typer.Option(help="Sampling: keep the k best tokens (0 = all).")] = 0,
    top_p: Annotated[float, typer.Option(help="Sampling: nucleus mass.")] = 1.0,
    seed: Annotated[int, typer.Option(help="Sampling seed.")] = 0,
    option: BackendOptions = None,
    rebuild: Annotated[bool, typer.Option(help="Rebuild cached artifacts (ONNX export...) first.")] = False,
    quality: Annotated[bool, typer.Option(help="Also measure perplexity and agreement with hf-eager fp32.")] = False,
    probe_bandwidth: Annotated[
        bool, typer.Option(help="Measure read bandwidth around every timed run, for the roofline ratio (CPU).")
    ] = False,
    eval_text: Annotated[Path | None, typer.Option(help="Perplexity text (default: bundled WikiText-2 test).")] = None,
    ppl_window: Annotated[int | None, typer.Option(help="Perplexity window (default: the model's context).")] = None,
    ppl_stride: Annotated[int | None, typer.Option(help="Sliding-window stride (default: the window).")] = None,
    ppl_max_windows: Annotated[int, typer.Option(help="Cap on perplexity windows; 0 = the whole text.")] = 4,
    output: Output = Path("results"),
) -> None:
    """Measure one backend on one (prompt length, generation length, batch size) cell."""
    from gpt2bench.backends import get_backend
    from gpt2bench.backends.base import Sampling
    from gpt2bench.measure.spec import RunSpec

    options = parse_options(option)
    if rebuild and "rebuild" in get_backend(backend).options:
        options["rebuild"] = True
    count, adaptive = parse_repeats(repeats, target_ci)
    spec = RunSpec(
        backend=backend,
        prompt_len=prompt_len,
        gen_len=gen_len,
        batch_size=batch_size,
        repeats=count,
        adaptive=adaptive,
        warmup=warmup,
        model=model,
        threads=threads_or_default(threads),
        device=device,
        dtype=dtype,
        sampling=Sampling(temperature, top_k, top_p, seed),
        options=options,
        quality=_quality_settings(eval_text, ppl_window, ppl_stride, ppl_max_windows) if quality else None,
        probe_bandwidth=probe_bandwidth,
    )
    spec.validate()
    _measure_and_report(spec, output)


def _quality_settings(
    eval_text: Path | None, window: int | None, stride: int | None, max_windows: int
) -> QualitySettings:
    from gpt2bench.core.paths import DEFAULT_TEXT
    from gpt2bench.measure.spec import QualitySettings

    if max_windows < 0:
        raise UsageError(f"ppl-max-windows must be >= 0 (0 = the whole text), got {max_windows}")
    return QualitySettings(window, stride, max_windows or None, eval_text or DEFAULT_TEXT)


def _measure_and_report(spec: RunSpec, output: Path) -> None:
    """Measure `spec` with a progress bar, write its results folder, print the summary."""
    from rich.console import Console

    from gpt2bench.measure.row import new_run_id
    from gpt2bench.measure.runner import QUALITY_INTERRUPTED, prepare_output
    from gpt2bench.report.store import ResultsStore
    from gpt2bench.report.summary import print_summary

    prepare_output(output)
    run_id = new_run_id(spec.backend)
    console = Console()
    cell = _measure_with_progress(console, spec, run_id)
    store = ResultsStore(output / run_id, cell.environment, meta={"run_id": run_id, "model": cell.model.as_record()})
    store.add(cell.row, cell.samples)
    print_summary(console, cell.row, cell.sample_text, cell.details, str(store.folder), cell.samples["warnings"])
    if cell.row.get("quality_error") == QUALITY_INTERRUPTED:
        print(f"interrupted during quality; the speed results are saved in {store.folder}", file=sys.stderr)
        sys.exit(130)
    if cell.row.get("quality_error"):
        raise BenchError(f"quality failed ({cell.row['quality_error']}); the speed results are saved in {store.folder}")


def _measure_with_progress(console: Console, spec: RunSpec, run_id: str) -> CellResult:
    from rich.progress import Progress

    from gpt2bench.cli.progress import columns, phases_on
    from gpt2bench.measure.runner import run_cell

    # auto_refresh off: no refresh thread competing with the timed repetitions in this process.
    with Progress(*columns(), console=console, transient=True, auto_refresh=False) as progress, phases_on(progress):
        task = progress.add_task(f"{spec.backend}: loading", total=spec.warmup + spec.repeats, detail="")
        progress.refresh()

        def on_step(phase: str, _i: int, _n: int) -> None:
            progress.update(task, advance=0 if phase == "quality" else 1, description=f"{spec.backend}: {phase}")
            progress.refresh()

        return run_cell(spec, run_id, warn, on_step)


def coldstart(
    backend: Backend,
    model: Model = None,
    device: Device = "cpu",
    dtype: Dtype = "fp32",
    threads: Threads = None,
    prompt_len: Annotated[int, typer.Option(help="Prompt length for the first token.")] = 8,
    repeats: Annotated[int, typer.Option(help="Fresh processes to start.")] = 3,
    cold_cache: Annotated[
        bool, typer.Option(help="Give each process empty compile caches (inductor, vLLM): a first compile.")
    ] = False,
    output: Output = Path("results"),
) -> None:
    """Time from a fresh process's start to its first token: interpreter, imports, load, first token."""
    from gpt2bench.measure.coldstart import PARTS, measure_and_save
    from gpt2bench.measure.runner import prepare_output
    from gpt2bench.measure.spec import RunSpec

    spec = RunSpec(
        backend=backend,
        prompt_len=prompt_len,
        gen_len=1,
        model=model,
        device=device,
        dtype=dtype,
        threads=threads_or_default(threads),
        repeats=repeats,
    )
    spec.validate()
    prepare_output(output)
    path, doc, stopped = measure_and_save(spec, output, warn, cold_cache)
    if isinstance(stopped, KeyboardInterrupt):
        done = len(doc["per_process"])
        print(f"interrupted; the {done} finished process(es) are saved in {path.parent}", file=sys.stderr)
        sys.exit(130)
    if stopped is not None:
        raise BenchError(f"{stopped}; the {len(doc['per_process'])} finished process(es) are saved in {path.parent}")
    loaded = doc["model"]
    print(
        f"cold start of {backend} ({device}/{dtype}, {spec.threads} threads, model {loaded['reference']} "
        f"({loaded['weights']})), {repeats} fresh processes; load includes export/compile unless cached"
    )
    print(f"{'part':<16}{'median s':>10}{'min s':>10}{'max s':>10}")
    for part in (*PARTS, "total_s"):
        stats = doc["summary"][part]
        print(f"{part:<16}{stats['median']:>10.3f}{stats['min']:>10.3f}{stats['max']:>10.3f}")
    print(f"results: {path}")


PROFILE_EPILOG = (
    "Writes pyinstrument's HTML and text, plus the backend's own trace where it has one (torch "
    "profiler, ONNX Runtime profiling)."
)


def profile(
    backend: Backend,
    prompt_len: PromptLen = 50,
    gen_len: Annotated[int, typer.Option(help="Tokens to generate.")] = 20,
    batch_size: BatchSize = 1,
    model: Model = None,
    threads: Threads = None,
    device: Device = "cpu",
    dtype: Dtype = "fp32",
    option: BackendOptions = None,
    output: Output = Path("results"),
) -> None:
    """Profile one generation (after set-up and a warm-up) with pyinstrument and the backend's own tracer."""
    from gpt2bench.measure.profile import profile_generation
    from gpt2bench.measure.runner import prepare_output
    from gpt2bench.measure.spec import RunSpec

    spec = RunSpec(
        backend=backend,
        prompt_len=prompt_len,
        gen_len=gen_len,
        batch_size=batch_size,
        model=model,
        threads=threads_or_default(threads),
        device=device,
        dtype=dtype,
        options=parse_options(option),
    )
    spec.validate()
    prepare_output(output)
    for path in profile_generation(spec, output, warn):
        print(path)
