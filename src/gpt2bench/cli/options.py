"""The options several commands share, declared once, and the small helpers every command uses."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from gpt2bench.core.errors import UsageError

Backend = Annotated[str, typer.Option("--backend", "-b", help="Backend name (see `gpt2bench backends`).")]
PromptLen = Annotated[int, typer.Option(help="Prompt length in tokens.")]
GenLen = Annotated[int, typer.Option(help="Tokens to generate (exactly; EOS is ignored).")]
BatchSize = Annotated[int, typer.Option(help="Sequences per generation.")]
Model = Annotated[
    str | None,
    typer.Option(help="Hub id, local Hugging Face folder, 'random' or 'tiny'. Default: gpt2, or random when offline."),
]
Threads = Annotated[int | None, typer.Option(help="Intra-op threads. Default: the cores available.")]
Device = Annotated[str, typer.Option(help="cpu or cuda.")]
Dtype = Annotated[str, typer.Option(help="fp32, bf16 or fp16, where the backend supports it.")]
BackendOptions = Annotated[
    list[str] | None, typer.Option("--option", "-o", help="Backend option key=value (repeatable).")
]
Output = Annotated[Path, typer.Option(help="Results folder; each call writes <output>/<id>/.")]


def warn(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr, flush=True)


def parse_options(pairs: list[str] | None) -> dict[str, object]:
    """--option key=value pairs, values read as YAML scalars (true, 3, 0.5, text)."""
    import yaml

    options: dict[str, object] = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise UsageError(f"--option expects key=value, got '{pair}'")
        options[key.strip()] = yaml.safe_load(value)
    return options


def threads_or_default(threads: int | None) -> int:
    from gpt2bench.measure.spec import default_threads

    return threads if threads is not None else default_threads()
