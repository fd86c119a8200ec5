#!/usr/bin/env python3
"""static-kv's two CPU compilers side by side: AOTInductor packages (the default) and torch.compile.

static-kv builds its decode, prefill and full-logits steps as AOTInductor packages kept on disk
(backends/aoti.py), so a later process loads them instead of compiling them again. This script
measures what that buys and checks it costs nothing, each part in a fresh process, as a worker:

  1. cold: the packages built into an empty folder; setup time, what was built, the package sizes;
  2. warm: the packages loaded by a new process; setup time, greedy tokens against static-kv-eager,
     then TPOT and TTFT through gpt2bench's own harness against `compiler: dynamo` (torch.compile,
     compiled in that process), in alternating rounds (asv's A/B).

    python scripts/aoti_vs_dynamo.py --model random --prompt-len 50 --gen-len 100 --rounds 6

The package folder defaults to a fresh one under the cache, so the cold figure is a real first build.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from gpt2bench.backends import BackendSettings, get_backend
from gpt2bench.backends.aoti import DIR_ENV
from gpt2bench.backends.base import Sampling
from gpt2bench.core.paths import cache_dir
from gpt2bench.machine.sysinfo import cpu_label, environment
from gpt2bench.measure.harness import measure
from gpt2bench.measure.prompts import make_prompts
from gpt2bench.models.ref import load_tokenizer
from gpt2bench.models.resolve import resolve_model


def timed_setup(backend: Any, args: argparse.Namespace) -> float:
    """setup alone, as the harness's setup_s (loading the weights is apart)."""
    started = time.perf_counter()
    backend.setup(1, args.prompt_len, args.gen_len, Sampling())
    return time.perf_counter() - started


def session(args: argparse.Namespace) -> dict[str, Any]:
    """One fresh process: static-kv on packages (building what is missing) and, when asked, rounds
    of it against static-kv on torch.compile; prints one JSON line."""
    model = resolve_model(args.model)
    settings = BackendSettings(threads=args.threads, dtype=args.dtype)
    prompts = make_prompts(load_tokenizer(model), args.prompt_len, 1)
    sampling = Sampling()
    packaged = get_backend("static-kv").create()
    packaged.load(model, settings)
    out: dict[str, Any] = {"setup_s": timed_setup(packaged, args), **packaged.describe()["aoti_packages"]}
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
    compiled.load(
        model, BackendSettings(threads=settings.threads, dtype=settings.dtype, options={"compiler": "dynamo"})
    )
    rounds: dict[str, Any] = {"compiled_setup_s": timed_setup(compiled, args), "packaged": [], "compiled": []}
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
    fresh = cache_dir() / f"aoti-check-{os.getpid()}"
    parser.add_argument("--folder", default=str(fresh), help="the package folder (default: a fresh one)")
    parser.add_argument("--session", action="store_true", help=argparse.SUPPRESS)  # one child process
    args = parser.parse_args()
    if args.session:
        print(json.dumps(session(args)), flush=True)
        return 0
    base = [sys.executable, __file__, "--session", "--model", args.model, "--dtype", args.dtype]
    base += ["--threads", str(args.threads), "--prompt-len", str(args.prompt_len), "--gen-len", str(args.gen_len)]
    base += ["--folder", args.folder, "--repeats", str(args.repeats)]
    report: dict[str, Any] = {"cpu": cpu_label(environment()), "folder": args.folder}
    env = {**os.environ, DIR_ENV: args.folder}
    for name, rounds in [("cold", 0), ("warm", args.rounds)]:  # each a fresh process, as a worker
        proc = subprocess.run([*base, "--rounds", str(rounds)], capture_output=True, text=True, env=env)
        if proc.returncode != 0:
            sys.exit(f"{name} process failed: {proc.stderr.strip()[-2000:]}")
        report[name] = json.loads(proc.stdout.strip().splitlines()[-1])
        print(name, json.dumps(report[name]), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
