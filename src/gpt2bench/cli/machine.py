"""Commands about this machine and what it can run: env, backends, make-tiny."""

from __future__ import annotations

from typing import Annotated

import typer

from gpt2bench.cli.options import threads_or_default, warn
from gpt2bench.cli.progress import phases_shown
from gpt2bench.core.errors import UsageError


def env(
    threads: Annotated[
        int | None, typer.Option(help="Threads for the microbenchmarks (default: cores available).")
    ] = None,
    refresh: Annotated[bool, typer.Option(help="Measure the roofs again instead of using the cache.")] = False,
) -> None:
    """Machine report (CPU, cores, memory, GPU, library versions) and its measured roofs."""
    if threads is not None and threads < 1:
        raise UsageError(f"threads must be at least 1, got {threads}")
    from rich.console import Console

    from gpt2bench.backends import aoti
    from gpt2bench.core.paths import check_cache
    from gpt2bench.machine.roofs import machine_report
    from gpt2bench.machine.sysinfo import cpu_label
    from gpt2bench.measure.roofline import rate_unit

    threads = threads_or_default(threads)
    check_cache()
    with phases_shown(Console(stderr=True)):
        info, roofs = machine_report(threads, refresh)
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
    count, size = aoti.usage()
    print(
        f"aoti cache   {count} static-kv packages, {size / 2**30:.1f} of {aoti.max_bytes() / 2**30:.1f} GB, "
        f"in {aoti.package_dir()}"
    )
    print(f"python       {info['python']} on {info['platform']}")
    dirty = " (dirty)" if info["git"]["dirty"] else ""
    print(f"gpt2bench    {info['gpt2bench_version']} at {info['git']['commit']}{dirty}")
    for name, version in info["packages"].items():
        print(f"  {name:<17}{version or '-'}")


def make_tiny(
    steps: Annotated[
        int | None, typer.Option(help="Training steps (2 x 512 tokens each). Default: the recipe's (300).")
    ] = None,
    seed: Annotated[int, typer.Option(help="Seed for init and data order.")] = 0,
    rebuild: Annotated[bool, typer.Option(help="Train again even if cached.")] = False,
) -> None:
    """Train (once, cached) the small GPT-2 that `--model tiny` uses for meaningful quality numbers."""
    from dataclasses import replace

    from rich.console import Console

    from gpt2bench.models.tiny import TinyRecipe, tiny_model_dir

    if steps is not None and steps < 1:
        raise UsageError(f"--steps must be at least 1, got {steps}")
    from gpt2bench.core.paths import check_cache

    check_cache()
    recipe = replace(TinyRecipe(), seed=seed, **({"steps": steps} if steps is not None else {}))
    with phases_shown(Console(stderr=True)):
        folder = tiny_model_dir(recipe, rebuild=rebuild)
    print(f"tiny model: {folder}")


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
        warn(error)
