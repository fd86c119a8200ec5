"""The command line: the app, its commands (one module per group, cli/*.py) and the one place an
error becomes a line on stderr and an exit code. Commands import heavy modules inside their bodies,
so `gpt2bench --help`, `backends` and `plot` never import torch."""

from __future__ import annotations

import logging
import os
import sys

import typer

from gpt2bench.cli import ab, machine, report, run, serve, sweep
from gpt2bench.core.errors import BenchError
from gpt2bench.core.progress import quiet_libraries

app = typer.Typer(
    name="gpt2bench",
    help="Benchmark GPT-2 inference backends: latency, throughput, memory and quality, reproducibly.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
app.command()(run.run)
app.command()(sweep.sweep)
app.command()(serve.serve)
app.command()(serve.load)
app.command()(report.plot)
app.command(epilog=report.COMPARE_EPILOG)(report.compare)
app.command(epilog=ab.AB_EPILOG)(ab.ab)
app.command()(machine.env)
app.command()(run.coldstart)
app.command(epilog=run.PROFILE_EPILOG)(run.profile)
app.command("make-tiny")(machine.make_tiny)
app.command("backends")(machine.list_backends)


def is_usage_error(exc: Exception) -> bool:
    """click's usage errors (bad value, unknown option, missing argument), from the click that
    typer carries: recognised by their interface, since typer's copy of click is a private module."""
    return callable(getattr(exc, "format_message", None)) and isinstance(getattr(exc, "exit_code", None), int)


def command_name(ctx: object) -> str:
    """`gpt2bench run`, however the program was started (`python -m gpt2bench` names itself so)."""
    names = []
    while getattr(ctx, "parent", None) is not None:
        names.append(ctx.info_name)  # type: ignore[attr-defined]
        ctx = ctx.parent  # type: ignore[attr-defined]
    return " ".join(["gpt2bench", *reversed(names)])


def usage_error(exc: Exception) -> None:
    """One line on stderr and click's exit code (2), like every other usage error."""
    message = exc.format_message()  # type: ignore[attr-defined]
    ctx = getattr(exc, "ctx", None)
    if message:  # empty for "no arguments": the help was printed already
        where = f"; see '{command_name(ctx)} --help'" if ctx is not None else ""
        print(f"error: {message.rstrip('.')}{where}".replace("\n", " "), file=sys.stderr)
    sys.exit(exc.exit_code)  # type: ignore[attr-defined]


def main() -> None:
    """Entry point: our errors become one line on stderr and an exit code, never a traceback."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(levelname)s: %(message)s"))
    logger = logging.getLogger("gpt2bench")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    quiet_libraries()
    try:
        # Not standalone: click's usage errors come back here, to be one line like every other error
        # (standalone, typer draws them as a box of five or six lines).
        code = app(standalone_mode=False)
    except typer.Abort:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    except BenchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    except Exception as exc:  # a bug: keep it to one line unless asked for the traceback
        if is_usage_error(exc):
            usage_error(exc)
        if os.environ.get("GPT2BENCH_DEBUG"):
            raise
        print(f"internal error: {type(exc).__name__}: {exc} (set GPT2BENCH_DEBUG=1 for the traceback)", file=sys.stderr)
        sys.exit(1)
    if isinstance(code, int) and code:  # typer.Exit(1) (compare's regression verdict), --help's 0
        sys.exit(code)
