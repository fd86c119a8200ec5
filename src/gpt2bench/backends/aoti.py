"""AOTInductor packages: static-kv's compiled CPU steps kept on disk for the next process.

torch.compile's work dies with its process, and inductor's on-disk FX graph cache cannot keep
static-kv's graphs: freezing prepacks the weights as oneDNN tensors, which it cannot pickle. So every
sweep worker and every `gpt2bench run` compiled decode and prefill again (25-38 s + 18-23 s at 124M,
max-autotune, Zen 4). An AOTInductor package is the compiled code with its frozen constants in one
file that a later process loads: measured at 124M fp32 (docs/findings.md), setup 4.3 s loaded
against 73 s compiled (130 s to build them once), TPOT and TTFT within noise, tokens equal.

A package is built for one step (decode, prefill, full logits), one batch size and one sampling
setting; the window and the prompt length stay dynamic. Its name hashes everything that decides the
compiled code (`package_key`), so a package is never loaded where it was not built for. Packages
live in `package_dir()`, bounded in size (least recently loaded removed first), built under a file
lock (two workers of a sweep never build the same package twice) and published by a rename (an
interrupted build leaves no package behind).

The KV cache is the caller's: a package's cache buffers are replaced at load by the model's own
tensors (`load_constants(..., user_managed=True)`), so prefill writes the slots decode reads.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gpt2bench.core import progress
from gpt2bench.core.cpu import cpu_fingerprint
from gpt2bench.core.errors import BenchError, UsageError
from gpt2bench.core.paths import cache_dir

if TYPE_CHECKING:
    import torch

DIR_ENV = "GPT2BENCH_AOTI_CACHE"  # the package folder (coldstart --cold-cache points it at a fresh one)
MAX_GB_ENV = "GPT2BENCH_AOTI_MAX_GB"
# 124M fp32 packages measured 0.7-1.1 GB each (decode carries the GEMM template's packed weights
# beside the originals), so a sweep's fp32 and bf16 steps take ~4 GB: 10 GB keeps two models' worth.
DEFAULT_MAX_GB = 10.0
STALE_BUILD_S = 24 * 3600  # a build folder this old was left by a killed process
# Packages built and loaded by this process: tests count them as they count dynamo's graphs.
COUNTS = {"built": 0, "loaded": 0}
# The files whose code ends up in a package: a change to any of them builds anew.
SOURCES = ("gpt2.py", "static_kv_steps.py", "torch_common.py", "aoti.py")


def package_dir() -> Path:
    env = os.environ.get(DIR_ENV)
    return Path(env).expanduser() if env else cache_dir() / "aoti"


def max_bytes() -> int:
    raw = os.environ.get(MAX_GB_ENV, str(DEFAULT_MAX_GB))
    try:
        gb = float(raw)
    except ValueError:
        gb = -1.0
    if gb <= 0:
        raise UsageError(f"{MAX_GB_ENV} must be a positive number of gigabytes, got '{raw}'")
    return int(gb * 2**30)


def usage() -> tuple[int, int]:
    """The packages in the folder and their bytes (`gpt2bench env` shows them)."""
    folder = package_dir()
    sizes = [p.stat().st_size for p in folder.glob("*.pt2")] if folder.is_dir() else []
    return len(sizes), sum(sizes)


def source_hash() -> str:
    here = Path(__file__).parent
    digest = hashlib.sha256()
    for name in SOURCES:
        digest.update((here / name).read_bytes())
    return digest.hexdigest()[:16]


@dataclass(frozen=True)
class Step:
    """One static-kv step function and the inductor settings it is built with."""

    kind: str  # "decode" ([batch, 1] ids) or "prefill" / "logits" ([batch, seq] ids): the example shapes
    fn: Callable[..., Any]
    inductor: dict[str, Any] = field(hash=False)


def package_key(step: Step, model: Any, weights_hash: str, batch: int, params: tuple[Any, ...]) -> str:
    """The package's file stem: every input that decides its compiled code, hashed. Threads are in it
    because inductor writes the thread count into its OpenMP loops; the CPU because it picks the
    instruction set and the GEMM blocking for this one."""
    import torch

    ident = {
        "step": [step.kind, step.fn.__name__, step.inductor],
        "model": [weights_hash, repr(model.cfg), str(next(model.parameters()).dtype)],
        "batch": batch,
        "sampling": list(params),
        "torch": torch.__version__,
        "cpu": cpu_fingerprint(),
        "threads": torch.get_num_threads(),
        "source": source_hash(),
    }
    digest = hashlib.sha256(json.dumps(ident, sort_keys=True, default=str).encode()).hexdigest()[:20]
    return f"{step.kind}-b{batch}-{digest}"


def _step_module(step: Step, model: Any, params: tuple[Any, ...]) -> torch.nn.Module:
    """The step as a module holding the model, so torch.export sees its buffers (the KV cache)."""
    import torch

    class StepModule(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.m = model

        def forward(self, idx: torch.Tensor, pos: torch.Tensor, slots: torch.Tensor) -> torch.Tensor:
            return step.fn(self.m, idx, pos, slots, *params)

    return StepModule().eval()


def build(step: Step, model: Any, batch: int, params: tuple[Any, ...], path: Path) -> None:
    """Export the step for this batch size (window and prompt length dynamic) and AOT-compile it."""
    import torch
    from torch.export import Dim

    n = model.cfg.n_positions
    window = Dim("window", min=2, max=n)
    if step.kind == "decode":
        args = (torch.zeros(batch, 1, dtype=torch.long), torch.tensor([3]), torch.arange(64))
        shapes: dict[str, Any] = {"idx": None, "pos": None, "slots": {0: window}}
    else:
        seq = Dim("seq", min=2, max=n)
        args = (torch.zeros(batch, 8, dtype=torch.long), torch.arange(8), torch.arange(64))
        shapes = {"idx": {1: seq}, "pos": {0: seq}, "slots": {0: window}}
    with torch.inference_mode():
        program = torch.export.export(_step_module(step, model, params), args, dynamic_shapes=shapes)
    with tempfile.TemporaryDirectory(prefix="build-", dir=path.parent) as tmp:
        partial = Path(tmp) / path.name
        configs = dict(step.inductor)  # a copy: inductor adds its own keys to the dict it is given
        torch._inductor.aoti_compile_and_package(program, package_path=str(partial), inductor_configs=configs)
        partial.replace(path)


@contextmanager
def locked(path: Path, wait: bool = True) -> Iterator[bool]:
    """Hold `path`'s lock while building or loading it: a second process wanting the same package
    waits, then loads it, and eviction passes it by. Yields False, holding nothing, when `wait` is
    off and another holds it. The lock files stay (empty): removing one would let a process that
    waits on it and a newcomer both take "the" lock."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_suffix(".lock"), "a") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX if wait else fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def evict(folder: Path, limit: int, keep: Path) -> list[Path]:
    """Remove the least recently loaded packages until the folder holds at most `limit` bytes
    (`keep`, the package just built, stays whatever its size, and so does one another process is
    building or loading), and build folders a killed process left. Returns what was removed."""
    now = time.time()
    for stale in folder.glob("build-*"):
        if now - stale.stat().st_mtime > STALE_BUILD_S:
            shutil.rmtree(stale, ignore_errors=True)
    packages = sorted(folder.glob("*.pt2"), key=lambda p: p.stat().st_mtime)
    total = sum(p.stat().st_size for p in packages)
    removed = []
    for package in packages:
        if total <= limit:
            break
        if package == keep:
            continue
        with locked(package, wait=False) as free:
            if not free:
                continue
            total -= package.stat().st_size
            package.unlink(missing_ok=True)
        removed.append(package)
    return removed


class PackagedStep:
    """A static-kv step served by AOTInductor packages: one runner per batch size, sampling setting
    and KV cache, loaded from disk or built there first. Called as the step function is."""

    def __init__(self, step: Step, weights_hash: str) -> None:
        self.step, self.weights_hash = step, weights_hash
        self.runners: dict[tuple[Any, ...], Any] = {}
        self.built = self.loaded = 0

    def __call__(self, model: Any, idx: torch.Tensor, pos: torch.Tensor, slots: torch.Tensor, *params: Any) -> Any:
        if self.step.kind != "decode" and idx.shape[1] < 2:
            # Export gives the prompt length a range from 2 (sizes 0 and 1 are specialized); a
            # one-token full-logits call is rare and cheap, so it runs the step uncompiled.
            return self.step.fn(model, idx, pos, slots, *params)
        key = (idx.shape[0], params, id(model.h[0].attn.kv_cache.k))
        runner = self.runners.get(key)
        if runner is None:
            runner = self.runners[key] = self._runner(model, idx.shape[0], params)
        return runner(idx, pos, slots)

    def _runner(self, model: Any, batch: int, params: tuple[Any, ...]) -> Any:
        import torch

        path = package_dir() / f"{package_key(self.step, model, self.weights_hash, batch, params)}.pt2"
        limit = max_bytes()  # a bad GPT2BENCH_AOTI_MAX_GB is one line before a build, not after it
        with locked(path):
            if not path.exists():
                with progress.phase(f"static-kv: building {path.name} (an AOTInductor package, kept for later runs)"):
                    build(self.step, model, batch, params, path)
                self.built += 1
                COUNTS["built"] += 1
                evict(path.parent, limit, keep=path)
            runner = torch._inductor.aoti_load_package(str(path))
            os.utime(path)  # loaded now: the last to go when the folder is over its size
        self.loaded += 1
        COUNTS["loaded"] += 1
        _share_cache(runner, model)
        return runner


def _share_cache(runner: Any, model: Any) -> None:
    """Point the package's KV cache constants at the model's own cache tensors."""
    buffers = dict(model.named_buffers())
    shared = {}
    for fqn in runner.get_constant_fqns():
        name = fqn.removeprefix("m.")
        if name.endswith(("kv_cache.k", "kv_cache.v")):
            shared[fqn] = buffers[name]
    if len(shared) != 2 * len(model.h):
        # A step writing a cache of its own would decode from slots prefill never wrote.
        raise BenchError(f"AOTInductor package holds {len(shared)} KV cache buffers, expected {2 * len(model.h)}")
    runner.load_constants(shared, check_full_update=False, user_managed=True)
