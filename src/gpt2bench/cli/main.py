"""The command line: the app, its commands (one module per group, cli/*.py) and the one place an
error becomes a line on stderr and an exit code. Commands import heavy modules inside their bodies,
so `gpt2bench --help`, `backends` and `plot` never import torch."""

from __future__ import annotations

import logging
import os
import sys

import typer

from gpt2bench.cli import machine, report, run, sweep
from gpt2bench.core.errors import BenchError

app = typer.Typer(
    name="gpt2bench",
    help="Benchmark GPT-2 inference backends: latency, throughput, memory and quality, reproducibly.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
app.command()(run.run)
app.command()(sweep.sweep)
app.command()(report.plot)
app.command(epilog=report.COMPARE_EPILOG)(report.compare)
app.command()(machine.env)
app.command()(run.coldstart)
app.command(epilog=run.PROFILE_EPILOG)(run.profile)
app.command("make-tiny")(machine.make_tiny)
app.command("backends")(machine.list_backends)


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
