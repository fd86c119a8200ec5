#!/usr/bin/env python3
"""Can static-kv's compiles outlive their process? A probe of AOTInductor packages (issue #30).

static-kv compiles its decode and prefill graphs in every worker (~25-38 s + ~18-23 s at 124M,
max-autotune, on a Zen 4), and inductor's on-disk FX graph cache cannot keep them: freezing prepacks
the weights as oneDNN tensors, which it cannot pickle. An AOTInductor package is compiled code plus
its constants in one file that a later process loads. This probe builds static-kv's two steps as
packages, with the inductor settings static-kv uses on the CPU, then in fresh processes:

  1. builds them (cold) and reports the time and the package sizes;
  2. loads them (warm) and reports the time, with the KV cache shared by both packages and owned by
     the caller (`load_constants(..., user_managed=True)`): prefill writes the slots decode reads;
  3. checks greedy tokens against static-kv-eager, and measures TPOT and TTFT through gpt2bench's own
     harness for the package-backed steps and for static-kv (torch.compile), in alternating rounds.

    python scripts/aoti_probe.py --model random --prompt-len 50 --gen-len 100 --rounds 6

Not a backend yet: the steps live here until their numbers say they should replace torch.compile.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from gpt2bench.backends import BackendSettings, get_backend
from gpt2bench.backends.base import Sampling
from gpt2bench.backends.static_kv import MODE_OPTIONS, StaticKVCompiled, decode_step, prefill_step
from gpt2bench.core.paths import cache_dir
from gpt2bench.machine.sysinfo import cpu_fingerprint, cpu_label, environment
from gpt2bench.measure.harness import measure
from gpt2bench.measure.prompts import make_prompts
from gpt2bench.models.ref import load_tokenizer
from gpt2bench.models.resolve import resolve_model

# static-kv's CPU settings (backends/static_kv.py, _compile) for fp32 in its default mode: decode at
# max-autotune on inductor's C++ GEMM template, prefill in default mode (oneDNN's packed GEMMs), both
# frozen, which static-kv sets globally around each call (with_freezing) and AOTInductor takes per
# compile. Measured at 124M: prefill at max-autotune made TTFT at prompt 50 1.8x torch.compile's.
INDUCTOR = {
    "decode": {
        **MODE_OPTIONS["max-autotune-no-cudagraphs"],
        "max_autotune_gemm_backends": "CPP",
        "autotune_num_choices_displayed": 0,
        "freezing": True,
    },
    "prefill": {"freezing": True},
}
STEPS = {"decode": decode_step, "prefill": prefill_step}


def step_module(fn: Any, model: Any, params: tuple[float, int, float]) -> Any:
    """One static-kv step as a module, so torch.export sees the model's buffers (the KV cache)."""
    import torch

    class Step(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.m = model

        def forward(self, idx: torch.Tensor, pos: torch.Tensor, slots: torch.Tensor) -> torch.Tensor:
            return fn(self.m, idx, pos, slots, *params)

    return Step().eval()


def package_path(folder: Path, kind: str, model_hash: str, batch: int, params: tuple[float, int, float]) -> Path:
    import torch

    key = json.dumps(
        [kind, model_hash, batch, params, torch.__version__, cpu_fingerprint(), INDUCTOR[kind]], sort_keys=True
    )
    return folder / f"{kind}-b{batch}-{hashlib.sha256(key.encode()).hexdigest()[:16]}.pt2"


def build(kind: str, model: Any, batch: int, params: tuple[float, int, float], path: Path) -> float:
    """Export and AOT-compile one step for this batch size; the window (and prefill's length) dynamic."""
    import torch
    from torch.export import Dim

    n = model.cfg.n_positions
    window = Dim("window", min=2, max=n)
    if kind == "decode":
        args = (torch.zeros(batch, 1, dtype=torch.long), torch.tensor([3]), torch.arange(64))
        shapes = {"idx": None, "pos": None, "slots": {0: window}}
    else:
        seq = Dim("seq", min=2, max=n)
        args = (torch.zeros(batch, 8, dtype=torch.long), torch.arange(8), torch.arange(64))
        shapes = {"idx": {1: seq}, "pos": {0: seq}, "slots": {0: window}}
    started = time.perf_counter()
    with torch.inference_mode():
        program = torch.export.export(step_module(STEPS[kind], model, params), args, dynamic_shapes=shapes)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".partial.pt2")
    configs = dict(INDUCTOR[kind])  # a copy: it adds its own keys to the dict, which would change our key
    torch._inductor.aoti_compile_and_package(program, package_path=str(partial), inductor_configs=configs)
    partial.replace(path)
    return time.perf_counter() - started


class PackagedStep:
    """A static-kv step served by AOTInductor packages: one per batch size and sampling setting,
    built on first use unless a package is on disk, each pointed at the model's own KV cache."""

    def __init__(self, kind: str, folder: Path, model_hash: str) -> None:
        self.kind, self.folder, self.model_hash = kind, folder, model_hash
        self.runners: dict[tuple[Any, ...], Any] = {}
        self.build_s = self.load_s = 0.0

    def __call__(self, model: Any, idx: Any, pos: Any, slots: Any, *params: Any) -> Any:
        caches = [block.attn.kv_cache for block in model.h]
        key = (idx.shape[0], params, id(caches[0].k))
        runner = self.runners.get(key) or self._load(model, idx.shape[0], params)
        self.runners[key] = runner
        return runner(idx, pos, slots)

    def _load(self, model: Any, batch: int, params: tuple[float, int, float]) -> Any:
        import torch

        path = package_path(self.folder, self.kind, self.model_hash, batch, params)
        if not path.exists():
            self.build_s += build(self.kind, model, batch, params, path)
        started = time.perf_counter()
        runner = torch._inductor.aoti_load_package(str(path))
        buffers = dict(model.named_buffers())
        shared = {fqn: buffers[fqn.removeprefix("m.")] for fqn in runner.get_constant_fqns() if "kv_cache" in fqn}
        runner.load_constants(shared, check_full_update=False, user_managed=True)  # the caller's cache
        self.load_s += time.perf_counter() - started
        return runner


class Packaged(StaticKVCompiled):
    """static-kv with its decode and prefill steps from AOTInductor packages (quality's full-logits
    graph and the widened bf16 prefill stay torch.compile'd)."""

    folder: Path
    model_hash: str

    def _compile(self) -> None:
        super()._compile()
        self._decode = PackagedStep("decode", self.folder, self.model_hash)
        self._prefill = PackagedStep("prefill", self.folder, self.model_hash)

    def packaged_s(self) -> dict[str, float]:
        steps = [self._decode, self._prefill]
        return {"build_s": sum(s.build_s for s in steps), "load_s": sum(s.load_s for s in steps)}


def session(args: argparse.Namespace) -> dict[str, Any]:
    """One fresh process: the packaged backend (building what is missing) and, when asked, rounds
    of it against static-kv; prints one JSON line."""
    model = resolve_model(args.model)
    settings = BackendSettings(threads=args.threads, dtype=args.dtype)
    prompts = make_prompts(load_tokenizer(model), args.prompt_len, 1)
    sampling = Sampling()
    packaged = Packaged()
    packaged.folder, packaged.model_hash = Path(args.folder), model.weights_hash
    packaged.load(model, settings)
    started = time.perf_counter()  # setup alone, as compiled_setup_s (loading the weights is apart)
    packaged.setup(1, args.prompt_len, args.gen_len, sampling)
    out: dict[str, Any] = {"setup_s": time.perf_counter() - started, **packaged.packaged_s()}
    tokens = np.concatenate(list(packaged.generate(prompts.input_ids, args.gen_len, sampling)), axis=0)
    eager = get_backend("static-kv-eager").create()
    eager.load(model, settings)
    reference = np.concatenate(list(eager.generate(prompts.input_ids, args.gen_len, sampling)), axis=0)
    out["tokens_match"] = bool(np.array_equal(tokens, reference))
    out["sizes_mb"] = {p.name: round(p.stat().st_size / 2**20, 1) for p in sorted(Path(args.folder).glob("*.pt2"))}
    if args.rounds:
        out["rounds"] = alternate(packaged, model, settings, prompts, args)
    return out


def alternate(packaged: Any, model: Any, settings: Any, prompts: Any, args: argparse.Namespace) -> dict[str, Any]:
    """TPOT and TTFT medians of the two, round by round in alternating order (asv's A/B)."""
    compiled = get_backend("static-kv").create()
    compiled.load(model, settings)
    started = time.perf_counter()
    compiled.setup(1, args.prompt_len, args.gen_len, Sampling())
    rounds: dict[str, Any] = {"compiled_setup_s": time.perf_counter() - started, "packaged": [], "compiled": []}
    sides = [("packaged", packaged), ("compiled", compiled)]
    for r in range(args.rounds):
        for name, backend in sides if r % 2 == 0 else sides[::-1]:
            m = measure(backend, prompts, args.gen_len, Sampling(), 1, args.repeats)
            tpot = statistics.median(run.tpot_ms for run in m.runs)
            ttft = statistics.median(run.ttft_ms for run in m.runs)
            rounds[name].append({"tpot_ms": round(tpot, 3), "ttft_ms": round(ttft, 3)})
    for metric in ("tpot_ms", "ttft_ms"):
        ratios = [p[metric] / c[metric] for p, c in zip(rounds["packaged"], rounds["compiled"], strict=True)]
        rounds[f"{metric}_ratio_median"] = round(statistics.median(ratios), 3)
        rounds[f"{metric}_ratio_range"] = [round(min(ratios), 3), round(max(ratios), 3)]
    return rounds


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="random")
    parser.add_argument("--dtype", default="fp32")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--prompt-len", type=int, default=50)
    parser.add_argument("--gen-len", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=6, help="alternating rounds against static-kv (0: none)")
    parser.add_argument("--repeats", type=int, default=3, help="timed generations per round and side")
    parser.add_argument("--folder", default=str(cache_dir() / "aoti-probe"), help="where the packages go")
    parser.add_argument("--session", action="store_true", help=argparse.SUPPRESS)  # one child process
    args = parser.parse_args()
    if args.session:
        print(json.dumps(session(args)), flush=True)
        return 0
    base = [sys.executable, __file__, "--session", "--model", args.model, "--dtype", args.dtype]
    base += ["--threads", str(args.threads), "--prompt-len", str(args.prompt_len), "--gen-len", str(args.gen_len)]
    base += ["--folder", args.folder, "--repeats", str(args.repeats)]
    report: dict[str, Any] = {"cpu": cpu_label(environment()), "folder": args.folder}
    for name, rounds in [("cold", 0), ("warm", args.rounds)]:  # each a fresh process, as a worker
        proc = subprocess.run([*base, "--rounds", str(rounds)], capture_output=True, text=True)
        if proc.returncode != 0:
            sys.exit(f"{name} process failed: {proc.stderr.strip()[-2000:]}")
        report[name] = json.loads(proc.stdout.strip().splitlines()[-1])
        print(name, json.dumps(report[name]), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
