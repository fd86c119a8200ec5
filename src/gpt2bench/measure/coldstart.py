"""Cold start: from a fresh process's start to its first generated token, split into interpreter
start-up, imports, load (prepare + load + setup) and the first token. The child stamps
time.monotonic(), which on Linux is one system-wide clock, so its stamps and the parent's spawn
time are comparable and the parts add up to the total exactly."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gpt2bench.backends.aoti import DIR_ENV
from gpt2bench.core.errors import BenchError

if TYPE_CHECKING:
    from gpt2bench.measure.spec import RunSpec

PARTS = ("interpreter_s", "imports_s", "load_s", "first_token_s")


@dataclass(frozen=True)
class ColdStart:
    interpreter_s: float
    imports_s: float
    load_s: float
    first_token_s: float
    process_s: float = float("nan")  # spawn to the child's exit, measured by the parent alone

    @property
    def total_s(self) -> float:
        return self.interpreter_s + self.imports_s + self.load_s + self.first_token_s


def parts(spawn: float, stamps: dict[str, float], exited: float = float("nan")) -> ColdStart:
    return ColdStart(
        stamps["main"] - spawn,
        stamps["imported"] - stamps["main"],
        stamps["loaded"] - stamps["imported"],
        stamps["first_token"] - stamps["loaded"],
        exited - spawn,
    )


@dataclass(frozen=True)
class ChildSpec:
    """What one fresh process loads and runs: its command line (`child` reads it back)."""

    backend: str
    model: str  # the local folder the parent resolved
    device: str
    dtype: str
    threads: int
    prompt_len: int

    def argv(self) -> list[str]:
        fields = (self.backend, self.model, self.device, self.dtype, str(self.threads), str(self.prompt_len))
        return [sys.executable, "-m", "gpt2bench.measure.coldstart", *fields]


def measure(child: ChildSpec, env: dict[str, str] | None = None) -> ColdStart:
    """One fresh process's parts; `env` is its environment (None: this process's)."""
    args = child.argv()
    spawn = time.monotonic()
    proc = subprocess.run(args, capture_output=True, text=True, env=env)
    exited = time.monotonic()
    if proc.returncode != 0:
        lines = proc.stderr.strip().splitlines()
        raise BenchError(f"cold-start child failed: {lines[-1] if lines else proc.returncode}")
    return parts(spawn, json.loads(proc.stdout.strip().splitlines()[-1]), exited)


def cold_cache_env(root: Path) -> dict[str, str]:
    """This environment with private, empty compile caches under `root` (inductor's, static-kv's
    AOTInductor packages and vLLM's): a process started with it compiles from scratch, as the first
    process on a machine does. The model folder and gpt2bench's prepared artifacts (ONNX exports) are
    not compile caches and stay."""
    root.mkdir(parents=True, exist_ok=True)
    caches = {"TORCHINDUCTOR_CACHE_DIR": "inductor", DIR_ENV: "aoti", "VLLM_CACHE_ROOT": "vllm"}
    return {**os.environ, **{name: str(root / folder) for name, folder in caches.items()}}


def measure_processes(
    repeats: int, child: ChildSpec, cold_cache: bool = False
) -> tuple[list[ColdStart], BaseException | None]:
    """`repeats` fresh processes, one after another, each with empty compile caches of its own when
    `cold_cache`. When one fails or Ctrl-C arrives after the first has finished, the processes
    already timed are kept: the stop comes back beside them."""
    runs: list[ColdStart] = []
    try:
        for _ in range(repeats):
            if not cold_cache:
                runs.append(measure(child))
                continue
            with tempfile.TemporaryDirectory(prefix="gpt2bench-cold-") as tmp:
                runs.append(measure(child, cold_cache_env(Path(tmp))))
    except (BenchError, KeyboardInterrupt) as exc:
        if not runs:
            raise
        return runs, exc
    return runs, None


def measure_and_save(
    spec: RunSpec, output: Path, warn: Callable[[str], None], cold_cache: bool = False
) -> tuple[Path, dict[str, Any], BaseException | None]:
    """Resolve the model once, time `spec.repeats` fresh processes, write coldstart.json. Returns
    its path, the document and what stopped the processes early (None when all finished)."""
    from gpt2bench.core.fsutil import atomic_write_text
    from gpt2bench.machine.sysinfo import environment
    from gpt2bench.measure.row import new_run_id
    from gpt2bench.measure.runner import check_fits
    from gpt2bench.models.resolve import resolve_model

    # Resolved here, once: the children load from the local folder, as a deployment loads weights
    # from disk, so no child's load time holds a Hub lookup, an offline fallback or tiny's training.
    ref = resolve_model(spec.model)
    if fallback := ref.fallback_warning():
        warn(fallback)
    check_fits(spec, ref)
    child = ChildSpec(spec.backend, str(ref.path), spec.device, spec.dtype, spec.threads, spec.prompt_len)
    runs, stopped = measure_processes(spec.repeats, child, cold_cache)
    doc = document(runs, ref.as_record(), spec.as_record(), environment())
    # Warm (the default) is a deployment's restart; cold is a machine's first process.
    cold = "cold: private, empty inductor, AOTInductor package and vLLM caches per process"
    doc["compile_cache"] = cold if cold_cache else "shared"
    if stopped is not None:
        doc["stopped"] = "interrupted (Ctrl-C)" if isinstance(stopped, KeyboardInterrupt) else str(stopped)
    folder = output / new_run_id(f"coldstart-{spec.backend}")
    folder.mkdir(parents=True)
    atomic_write_text(folder / "coldstart.json", json.dumps(doc, indent=1))
    return folder / "coldstart.json", doc, stopped


def document(runs: list[ColdStart], model: dict[str, Any], spec: dict[str, Any], env: dict[str, Any]) -> dict:
    """What `coldstart --output` writes: every process's parts, their median/min/max, the model and
    the machine, as every result is recorded."""
    import statistics

    names = (*PARTS, "total_s", "process_s")
    per_process = [{**asdict(r), "total_s": r.total_s} for r in runs]
    summary = {}
    for name in names:
        values = [p[name] for p in per_process]
        summary[name] = {"median": statistics.median(values), "min": min(values), "max": max(values)}
    return {
        "kind": "coldstart",
        "spec": spec,
        "model": model,
        "per_process": per_process,
        "summary": summary,
        "environment": env,
    }


def child(argv: list[str]) -> None:
    main = time.monotonic()
    import importlib

    from gpt2bench.backends import BackendSettings, get_backend

    backend_name, model_ref, device, dtype, threads, prompt_len = argv
    info = get_backend(backend_name)
    for module in info.imports:
        importlib.import_module(module)
    imported = time.monotonic()

    import numpy as np

    from gpt2bench.backends.base import Sampling
    from gpt2bench.models.ref import load_tokenizer
    from gpt2bench.models.resolve import resolve_model

    model = resolve_model(model_ref)
    backend = info.create()
    settings = BackendSettings(device, dtype, int(threads))
    backend.prepare(model, settings)
    backend.load(model, settings)
    ids = np.asarray([load_tokenizer(model).encode("The " * int(prompt_len)).ids[: int(prompt_len)]], dtype=np.int64)
    backend.setup(1, ids.shape[1], 1, Sampling())
    backend.synchronize()
    loaded = time.monotonic()
    next(iter(backend.generate(ids, 1, Sampling())))
    backend.synchronize()
    first = time.monotonic()
    print(json.dumps({"main": main, "imported": imported, "loaded": loaded, "first_token": first}))


if __name__ == "__main__":
    child(sys.argv[1:])
