"""`gpt2bench ab BASE [NEW]`: two versions of gpt2bench measured interleaved on this machine (sweep/ab.py)."""

from __future__ import annotations

import dataclasses
import signal
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from gpt2bench.cli.options import warn
from gpt2bench.core.errors import BenchError, UsageError

if TYPE_CHECKING:
    from gpt2bench.sweep.ab_sides import Side
    from gpt2bench.sweep.config import SweepSpec

AB_EPILOG = (
    "Each round measures BASE and NEW back to back (BASE NEW, then NEW BASE, ...), each side in its own worker "
    "running its own source. A change counts when the 95% bootstrap interval of the median round ratio NEW/BASE "
    "lies wholly beyond +-threshold, Holm-corrected over the run's comparisons. Exit 1 on a regression or a "
    "backend that could not be measured. --aa measures BASE against itself: the noise floor."
)


def _env_pairs(pairs: list[str] | None, flag: str) -> dict[str, str]:
    env: dict[str, str] = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise UsageError(f"{flag} expects KEY=VALUE, got '{pair}'")
        env[key.strip()] = value
    return env


def _settings(
    spec: SweepSpec, rounds: int | None, threshold: float | None, alpha: float | None, metric: list[str] | None
) -> SweepSpec:
    """The config's ab: section with the command line's overrides, checked."""
    given = {"rounds": rounds, "threshold": threshold, "alpha": alpha, "metrics": tuple(metric) if metric else None}
    ab = dataclasses.replace(spec.ab, **{k: v for k, v in given.items() if v is not None})
    if problem := ab.check():
        raise UsageError(problem)
    return dataclasses.replace(spec, ab=ab)


def ab(
    base: Annotated[str, typer.Argument(help="The version to compare against: a git ref (HEAD~1, main, a commit).")],
    new: Annotated[
        str | None, typer.Argument(help="The version under test: a git ref. Default: the checkout's working tree.")
    ] = None,
    config: Annotated[
        Path | None, typer.Option(help="Sweep YAML (backends, cells, repeats, ab:). Default: configs/ab.yaml.")
    ] = None,
    aa: Annotated[bool, typer.Option("--aa", help="A/A: BASE against itself, to measure the noise floor.")] = False,
    rounds: Annotated[int | None, typer.Option(help="Rounds per backend and cell (overrides the config).")] = None,
    threshold: Annotated[float | None, typer.Option(help="Relative change that counts, e.g. 0.05.")] = None,
    alpha: Annotated[float | None, typer.Option(help="Family-wise error rate over the run (Holm).")] = None,
    metric: Annotated[list[str] | None, typer.Option(help="tpot_ms, ttft_ms or e2e_ms (repeatable).")] = None,
    output: Annotated[Path | None, typer.Option(help="Report folder. Default: results/ab/<time>.")] = None,
    repo: Annotated[Path | None, typer.Option(help="The gpt2bench checkout. Default: this gpt2bench's.")] = None,
    allow_dirty: Annotated[bool, typer.Option(help="Measure a working tree with uncommitted changes.")] = False,
    base_env: Annotated[list[str] | None, typer.Option(help="KEY=VALUE for BASE's workers (repeatable).")] = None,
    new_env: Annotated[list[str] | None, typer.Option(help="KEY=VALUE for NEW's workers (repeatable).")] = None,
) -> None:
    """Measure two versions of gpt2bench interleaved on this machine and judge every difference."""
    from gpt2bench.sweep.ab_sides import find_repo, sides
    from gpt2bench.sweep.config import load_sweep

    if aa and new is not None:
        raise UsageError("--aa measures BASE against itself: give one ref, not two")
    envs = _env_pairs(base_env, "--base-env"), _env_pairs(new_env, "--new-env")
    checkout = find_repo(repo)
    spec = _settings(load_sweep(config or checkout / "configs" / "ab.yaml"), rounds, threshold, alpha, metric)
    out = output or Path("results") / "ab" / time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    if (out / "ab.json").exists():
        raise UsageError(f"'{out}' already holds an A/B report; choose another --output")
    with sides(checkout, base, base if aa else new, allow_dirty, *envs) as (base_side, new_side):
        _run(spec, base_side, new_side, out)


def _run(spec: SweepSpec, base_side: Side, new_side: Side, out: Path) -> None:
    from gpt2bench.measure.row import new_run_id
    from gpt2bench.measure.runner import prepare_output
    from gpt2bench.measure.spec import default_threads
    from gpt2bench.report.ab import summary
    from gpt2bench.sweep.ab import AbRun, run_ab
    from gpt2bench.sweep.driver import resolve_model_once

    prepare_output(out)
    warned: set[str] = set()

    def warn_once(message: str) -> None:  # both sides' workers say the same about this machine
        if message not in warned:
            warned.add(message)
            warn(message)

    spec, model = resolve_model_once(spec, warn_once)

    def say(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    threads = spec.threads or default_threads()
    run = AbRun(spec, base_side, new_side, model, threads, out, new_run_id("ab"), say, warn_once)
    say(f"gpt2bench ab: {run.base.describe()} against {run.new.describe()}; report in {out}")
    previous = signal.signal(signal.SIGTERM, _sigterm_as_interrupt)
    try:
        judged = run_ab(run)
    except KeyboardInterrupt:
        print(f"interrupted; the report of {len(run.rounds)} finished round(s) is in {out}", file=sys.stderr)
        sys.exit(130)
    finally:
        signal.signal(signal.SIGTERM, previous)
    print((out / "ab.md").read_text())
    if run.failures:
        raise BenchError(f"{len(run.failures)} backend(s) could not be measured ({', '.join(run.failures)}); see {out}")
    if any(j.verdict == "regression" for j in judged):
        print(f"regression: {summary(judged, spec.ab.threshold, spec.ab.alpha)}", file=sys.stderr)
        raise typer.Exit(1)


def _sigterm_as_interrupt(_signum: int, _frame: object) -> None:
    raise KeyboardInterrupt  # `timeout`, a CI cancel: stop as Ctrl-C stops, saving what finished
