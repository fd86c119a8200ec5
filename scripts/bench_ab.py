"""Does `gpt2bench ab` catch a real slowdown, and does it stay quiet when there is none?

Runs `gpt2bench ab` N times as A/A (the same commit, the same environment on both sides) and N times
with an injected slowdown on NEW (the test plugin tests/ab_plugin: `delayed-<backend>` spins for a
fraction of each step's time when GPT2BENCH_TEST_DELAY is set, here for NEW's workers only),
alternating the two kinds so the machine's drift over the hour hits both. Counts false alarms (an
A/A run with any regression verdict) and detections (an injected run flagged as a regression).

    .venv/bin/python scripts/bench_ab.py --runs 20 --delay 0.10 --backend onnx-int8

A benchmark, not a test: it takes ~20 minutes and its counts depend on the machine. The table it
prints is in docs/findings.md.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PLUGIN = ROOT / "tests" / "ab_plugin"
CONFIG = """model: random
threads: {threads}
repeats: 1
warmup: 2
prompt_lens: [{prompt}]
gen_lens: [{gen}]
backends: [{{name: delayed-{backend}}}]
ab: {{rounds: {rounds}, pairs: {pairs}, round_warmup: 0, threshold: {threshold}, alpha: 0.05,
     metrics: [tpot_ms, ttft_ms, e2e_ms]}}
"""


def one_run(gpt2bench: str, config: Path, out: Path, delay: float | None, ref: str) -> dict:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(PLUGIN), os.environ.get("PYTHONPATH")]))}
    args = [gpt2bench, "ab", ref, "--config", str(config), "--output", str(out)]
    args += ["--aa"] if delay is None else [ref, "--new-env", f"GPT2BENCH_TEST_DELAY={delay}"]
    start = time.monotonic()
    proc = subprocess.run(args, capture_output=True, text=True, env=env, cwd=ROOT)
    if proc.returncode not in (0, 1):
        sys.exit(f"gpt2bench ab failed ({proc.returncode}): {proc.stderr.strip().splitlines()[-1:]}")
    doc = json.loads((out / "ab.json").read_text())
    return {"wall_s": time.monotonic() - start, "comparisons": doc["comparisons"], "exit": proc.returncode}


def summarize(kind: str, runs: list[dict]) -> list[str]:
    flagged = sum(any(c["verdict"] == "regression" for c in r["comparisons"]) for r in runs)
    improved = sum(any(c["verdict"] == "improvement" for c in r["comparisons"]) for r in runs)
    lines = []
    for metric in ("tpot_ms", "ttft_ms", "e2e_ms"):
        cs = [c for r in runs for c in r["comparisons"] if c["metric"] == metric]
        hits = sum(c["verdict"] == "regression" for c in cs)
        lines.append(
            f"| {kind} | {metric} | {hits}/{len(runs)} | {statistics.median(c['ratio'] for c in cs):.3f} "
            f"| {min(c['ratio'] for c in cs):.3f}-{max(c['ratio'] for c in cs):.3f} "
            f"| {statistics.median(c['noise'] for c in cs) * 100:.2f}% "
            f"| {statistics.median(c['detectable'] for c in cs) * 100:.1f}% |"
        )
    wall = statistics.median(r["wall_s"] for r in runs)
    lines.append(
        f"| {kind} | **any metric** | **{flagged}/{len(runs)}** (exit 1: {sum(r['exit'] == 1 for r in runs)}; "
        f"an improvement verdict: {improved}) | | | | median wall {wall:.0f} s a run |"
    )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--delay", type=float, default=0.10, help="injected slowdown on NEW, a fraction")
    parser.add_argument("--backend", default="onnx-int8", choices=("onnx-int8", "hf-eager"))
    parser.add_argument("--rounds", type=int, default=40)
    parser.add_argument("--pairs", type=int, default=2)
    parser.add_argument("--threshold", type=float, default=0.05)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--prompt", type=int, default=32)
    parser.add_argument("--gen", type=int, default=16)
    parser.add_argument("--ref", default="HEAD", help="the commit both sides run")
    parser.add_argument("--gpt2bench", default=str(ROOT / ".venv" / "bin" / "gpt2bench"))
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-ab-"))
    config = work / "ab.yaml"
    config.write_text(CONFIG.format(**vars(args)))
    results: dict[str, list[dict]] = {"A/A": [], f"+{args.delay:.0%}": []}
    for i in range(args.runs):
        kinds = [None, args.delay] if i % 2 == 0 else [args.delay, None]
        for delay in kinds:
            kind = "A/A" if delay is None else f"+{args.delay:.0%}"
            run = one_run(args.gpt2bench, config, work / f"{i:02d}-{'aa' if delay is None else 'ab'}", delay, args.ref)
            results[kind].append(run)
            verdicts = ", ".join(f"{c['metric']} {c['ratio']:.3f} {c['verdict']}" for c in run["comparisons"])
            print(f"run {i + 1}/{args.runs} {kind}: {verdicts} ({run['wall_s']:.0f} s)", file=sys.stderr, flush=True)
    print(
        f"delayed-{args.backend}, prompt {args.prompt}, gen {args.gen}, {args.threads} thread(s), {args.rounds} "
        f"rounds x 1 repetition a side by {args.pairs} worker pairs, threshold {args.threshold:.0%}, "
        "alpha 0.05 (Holm over 3 metrics)\n"
    )
    print("| runs | metric | flagged a regression | median ratio | ratio range | median noise | median detects |")
    print("|---|---|---:|---:|---|---:|---:|")
    for kind, runs in results.items():
        print("\n".join(summarize(kind, runs)))
    (work / "runs.json").write_text(json.dumps(results, indent=1))
    print(f"\nevery run's report: {work}", file=sys.stderr)


if __name__ == "__main__":
    main()
