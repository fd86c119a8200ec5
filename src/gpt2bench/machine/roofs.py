"""The machine's roofs: its read bandwidth and peak matmul rate per arithmetic, measured by
microbenchmarks in a helper process (`python -m gpt2bench.machine.roofs THREADS`) and cached per
machine. What a row does with them is measure/roofline.py's arithmetic."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import time
import warnings
from collections.abc import Callable
from typing import Any

from gpt2bench.core.errors import BenchError
from gpt2bench.core.fsutil import atomic_write_text
from gpt2bench.core.paths import cache_dir
from gpt2bench.core.progress import phase, replay_lines, report_to_parent
from gpt2bench.machine.sysinfo import ContentionMonitor, cpu_fingerprint

log = logging.getLogger(__name__)
# Roofs measured while other processes used more than this share of the machine are used for the
# run at hand but not cached: a busy moment once halved every later row's roofs here.
MAX_OTHER_CPU_FRAC = 0.10

# Matmul roofs measured per arithmetic: on a CPU with AVX512-BF16 or VNNI, bf16 and int8 matmuls
# run 2-5x faster than fp32, so a bf16 prefill set against the fp32 roof read as 160% of peak.
PEAK_DTYPES = ("fp32", "bf16", "int8")


def _matmul_kernels(dtype: str, size: int) -> list[Callable[[], Any]]:
    """The square `size` matmuls PyTorch offers in `dtype`, each ready to call. int8 has two:
    `torch._int_mm` (oneDNN; a scalar fallback loop on an AVX2-only CPU) and fbgemm's quantized
    linear (uint8 x int8 with vpmaddubsw on AVX2, VNNI where present), the kernel hf-int8-dynq
    runs. Measured on an AVX2-only Zen 3 at 2048: 1.4 and 327 GOP/s, against fp32's 137 GFLOP/s."""
    import torch

    a, b = torch.randn(size, size), torch.randn(size, size)
    if dtype == "fp32":
        return [lambda: torch.mm(a, b)]
    if dtype == "bf16":
        a16, b16 = a.bfloat16(), b.bfloat16()
        return [lambda: torch.mm(a16, b16)]
    a8, b8 = a.clamp(-4, 4).mul(30).to(torch.int8), b.clamp(-4, 4).mul(30).to(torch.int8)
    kernels: list[Callable[[], Any]] = [lambda: torch._int_mm(a8, b8)]
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # quantized tensors are deprecated; the kernel is what we time
            weight = torch.ops.quantized.linear_prepack(torch.quantize_per_tensor(b, 0.05, 0, torch.qint8), None)
            x = torch.quantize_per_tensor(a, 0.05, 128, torch.quint8)
        kernels.append(lambda: torch.ops.quantized.linear(x, weight, 1.0, 128))
    except (RuntimeError, AttributeError):
        pass  # a torch build without a quantized engine
    return kernels


# The whole measurement's time budget: every kernel gets one timed call at least, then repeats only
# while time is left. On a loaded 2-core machine the unbounded measurement took ~6 minutes.
BUDGET_S = 45.0
_deadline: list[float] = []  # set by measure_roofs for the kernels below; empty: no budget


def _time_left() -> bool:
    return not _deadline or time.monotonic() < _deadline[0]


def _best_of(call: Callable[[], Any], repeats: int) -> float:
    """Seconds of the fastest of up to `repeats` calls (one at least, the rest within the budget)."""
    best = float("inf")
    for i in range(repeats):
        if i and not _time_left():
            break
        t0 = time.perf_counter()
        call()
        best = min(best, time.perf_counter() - t0)
    return best


def _rate(mm: Callable[[], Any], size: int, repeats: int) -> float | None:
    """GFLOP/s of the best of `repeats` calls of a square `size` matmul; None where it cannot run."""
    try:
        mm()  # warm up the kernel library
    except RuntimeError:
        return None
    return 2 * size**3 / _best_of(mm, repeats) / 1e9


def measure_peak_gflops(
    threads: int, dtype: str = "fp32", size: int = 2048, repeats: int = 5, screen: int = 256
) -> float | None:
    """GFLOP/s (GOP/s for int8) of the best square matmul in `dtype`: the compute roof for prefill.
    None where torch has no such matmul on this CPU. Where `dtype` has several kernels, one more
    than 4x slower than the best at `screen` is a fallback loop and is not timed at `size` (the
    int8 one would take 6 x 12 s on an AVX2-only CPU to say the same)."""
    import torch

    torch.set_num_threads(threads)
    kernels = _matmul_kernels(dtype, size)
    if len(kernels) > 1 and size > screen:
        small = [_rate(mm, screen, 2) for mm in _matmul_kernels(dtype, screen)]
        best = max((r for r in small if r is not None), default=None)
        kernels = [mm for mm, r in zip(kernels, small, strict=True) if r is not None and r * 4 >= best]
    rates = [r for r in (_rate(mm, size, repeats) for mm in kernels) if r is not None]
    return max(rates) if rates else None


def measure_read_bandwidth(threads: int, size_mb: int = 512, repeats: int = 7) -> float:
    """GB/s of the fastest of a few read-only kernels (fp32 and bf16 sum, amax, dot) over a buffer
    far larger than the caches, best of `repeats` each, with `threads` torch threads (the pool a
    backend decodes with). One kernel alone understates what the memory system delivers: here
    fp32 sum reached 29 GB/s, bf16 sum 35 GB/s, and a compiled fp32 decode 34 GB/s."""
    import torch

    torch.set_num_threads(threads)
    n_bytes = size_mb * 2**20
    fp32 = torch.ones(n_bytes // 4, dtype=torch.float32)
    bf16 = torch.ones(n_bytes // 2, dtype=torch.bfloat16)
    kernels = (fp32.sum, fp32.amax, lambda: torch.dot(fp32, fp32), bf16.sum)
    best = min(_best_of(kernel, repeats) for kernel in kernels)
    return n_bytes / best / 1e9


def native_roofs(matmul_gflops: dict[str, float | None]) -> dict[str, float | None]:
    """The matmul rates that are roofs. A narrower arithmetic that multiplies slower than fp32 is
    running torch's fallback loop, because this CPU lacks its instructions (bf16 and int8 on an
    AVX2-only CPU: 0.3 and 1.4 GFLOP/s against fp32's 147). That measures the loop, not the
    machine, and a row held to it would read thousands of percent of peak, so it is no roof."""
    fp32 = matmul_gflops.get("fp32")
    return {
        dtype: None if dtype != "fp32" and fp32 and peak is not None and peak < fp32 else peak
        for dtype, peak in matmul_gflops.items()
    }


def measure_matmuls(
    threads: int, size: int = 2048, screen: int = 256, step: Callable[[str], None] = lambda _part: None
) -> dict[str, float | None]:
    """GFLOP/s of a `size` square matmul per arithmetic in PEAK_DTYPES. Each narrower one is first
    screened at `screen` against fp32 at the same size: a fallback loop is left at that rate, since
    at `size` it would take minutes (6 x 57 s for bf16 on an AVX2-only CPU) to say the same."""
    small_fp32 = measure_peak_gflops(threads, "fp32", size=screen)
    rates: dict[str, float | None] = {}
    for dtype in PEAK_DTYPES:
        step(f"{dtype} matmul")
        small = small_fp32 if dtype == "fp32" else measure_peak_gflops(threads, dtype, size=screen)
        fallback = dtype != "fp32" and small is not None and small_fp32 is not None and small < small_fp32
        rates[dtype] = small if fallback or small is None else measure_peak_gflops(threads, dtype, size=size)
    return rates


def measure_roofs(threads: int) -> tuple[dict[str, Any], float]:
    """The machine's roofs measured here and now, and the share of the CPU other processes used meanwhile.
    `matmul_gflops` keeps every measured matmul rate, `peak_gflops` the ones that are roofs."""
    monitor = ContentionMonitor()
    _deadline[:] = [time.monotonic() + BUDGET_S]
    name = f"measuring this machine's roofs at {threads} threads (once, cached; <= {BUDGET_S:.0f} s)"
    try:
        with phase(name, total=len(PEAK_DTYPES) + 1) as progress:
            matmul = measure_matmuls(threads, step=lambda part: progress.step(detail=part))
            progress.step(detail="read bandwidth")
            roofs = {
                "read_bandwidth_gbs": measure_read_bandwidth(threads),
                "peak_gflops": native_roofs(matmul),
                "matmul_gflops": matmul,
            }
            progress.step()
    finally:
        _deadline.clear()  # the budget is this measurement's, not every later probe's in the process
    return roofs, monitor.stop().other_cpu_frac


def measure_in_helper(threads: int) -> tuple[dict[str, Any], float]:
    """`measure_roofs` in a fresh process. The caller is often a measured backend's process: this
    keeps torch out of ONNX Runtime and vLLM runs and the microbenchmarks' buffers out of its memory."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "gpt2bench.machine.roofs", str(threads)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    err = replay_lines(proc.stderr)  # type: ignore[arg-type]
    out = proc.stdout.read()  # type: ignore[union-attr]  # one JSON line: it never fills the pipe
    if proc.wait() != 0:
        raise BenchError(f"measuring the machine's roofs failed: {err[-1] if err else f'exit code {proc.returncode}'}")
    roofs, busy = json.loads(out.strip().splitlines()[-1])
    return roofs, busy


def machine_roofs(
    threads: int,
    refresh: bool = False,
    measure: Callable[[int], tuple[dict[str, Any], float]] = measure_in_helper,
) -> dict[str, Any]:
    """Read bandwidth (GB/s) and peak matmul per compute dtype ({"fp32": GFLOP/s, ...}) at
    `threads`, measured once and cached in <cache>/machine.json (a few seconds the first time)."""
    path = cache_dir() / "machine.json"
    try:
        cached = json.loads(path.read_text())
    except (OSError, ValueError):
        cached = {}
    # Keyed by the CPU too: a cache folder shared between hosts (a Docker volume, a home directory on
    # NFS) must not serve one machine's roofs to another. v5: the int8 roof includes fbgemm's linear.
    key = f"{cpu_fingerprint()}-threads{threads}_v5"
    if not refresh and key in cached:
        return _say_if_contended(dict(cached[key]))
    roofs, busy = measure(threads)
    if busy > MAX_OTHER_CPU_FRAC:
        # Cached all the same, flagged: measuring again on every run cost each run minutes.
        roofs["contended"] = busy
    cached[key] = roofs
    atomic_write_text(path, json.dumps(cached, indent=1))
    return _say_if_contended(roofs)


def _say_if_contended(roofs: dict[str, Any]) -> dict[str, Any]:
    """Roofs measured on a busy machine serve every run until `env --refresh`; each run says so."""
    if roofs.get("contended"):
        log.warning(
            "this machine's roofs were measured while other processes used %.0f%% of the CPU: roofline "
            "fractions may read high; `gpt2bench env --refresh` measures them again on an idle machine",
            roofs["contended"] * 100,
        )
    return roofs


def machine_report(threads: int, refresh: bool = False) -> tuple[dict[str, Any], dict[str, Any]]:
    """`gpt2bench env`'s facts: the environment with torch's view of the machine (so torch is
    imported, with `threads`), and the roofs at `threads`."""
    import torch

    from gpt2bench.machine.sysinfo import environment

    torch.set_num_threads(threads)
    return environment(), machine_roofs(threads, refresh)


if __name__ == "__main__":
    with report_to_parent():
        print(json.dumps(measure_roofs(int(sys.argv[1]))))
