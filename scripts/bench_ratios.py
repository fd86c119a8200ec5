#!/usr/bin/env python3
"""Run several backends on one cell, each in its own fresh `gpt2bench run` process, and print
their speed as ratios to a reference backend measured in the same session.

Ratios from one session are what this machine can compare honestly; absolute milliseconds drift
with load and thermal state. Example (the ONNX issue's targets):

    python scripts/bench_ratios.py --backends hf-eager onnx onnx-opt onnx-int8 \\
        --expect onnx-int8:e2e:4 --expect onnx:e2e:1

A backend may carry a dtype, e.g. `static-kv@bf16`. `--expect BACKEND:METRIC:SPEEDUP` checks
reference/backend >= SPEEDUP for e2e, tpot or ttft; `--within-bound BACKEND:FACTOR` checks that
its TPOT is within FACTOR x its memory-bandwidth bound (weight bytes read per decoded token /
this machine's read bandwidth, probed around each timed repetition). The exit code is 1 when a
check fails.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

from gpt2bench.machine.sysinfo import cpu_label

METRICS = {"e2e": "e2e_ms_median", "tpot": "tpot_ms_median", "ttft": "ttft_ms_median"}


def run_backend(label: str, args: argparse.Namespace, out: Path) -> dict:
    """The row of one fresh `gpt2bench run`, with its bandwidth probes added as `probes_gbs`."""
    backend, _, dtype = label.partition("@")
    cmd = [sys.executable, "-m", "gpt2bench", "run", "--backend", backend, "--dtype", dtype or "fp32"]
    cmd += ["--model", args.model, "--prompt-len", str(args.prompt_len), "--gen-len", str(args.gen_len)]
    cmd += ["--repeats", str(args.repeats), "--warmup", str(args.warmup), "--output", str(out / label)]
    cmd += ["--probe-bandwidth"]
    for opt in args.option.get(label, []):
        cmd += ["--option", opt]
    print(f"$ {' '.join(cmd[2:])}", flush=True)
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"{label} failed: {proc.stderr.strip()}")
    (run_dir,) = (out / label).iterdir()
    doc = json.loads((run_dir / "results.json").read_text())
    return {**doc["rows"][0], "probes_gbs": doc["samples"][0]["bandwidth_gbs"], "environment": doc["environment"]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backends", nargs="+", required=True, help="the first one is the reference")
    parser.add_argument("--model", default="random")
    parser.add_argument("--prompt-len", type=int, default=50)
    parser.add_argument("--gen-len", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--backend-option", action="append", default=[], metavar="BACKEND:KEY=VALUE")
    parser.add_argument("--expect", action="append", default=[], metavar="BACKEND:METRIC:SPEEDUP")
    parser.add_argument("--within-bound", action="append", default=[], metavar="BACKEND:FACTOR")
    args = parser.parse_args()
    if args.gen_len < 2:
        parser.error("--gen-len must be at least 2: TPOT and the bandwidth bound need a decode step")
    args.option = {}
    for item in args.backend_option:
        name, _, opt = item.partition(":")
        args.option.setdefault(name, []).append(opt)

    # Every run probes read bandwidth around each timed repetition (`--probe-bandwidth`): memory
    # speed here drifts with neighbours' load (25-46 GB/s within minutes), so each repetition's
    # decode is set against its own moment; TPOT/bound is 1 / the row's decode_bw_frac.
    with tempfile.TemporaryDirectory(prefix="gpt2bench-ratios-") as tmp:
        rows = {b: run_backend(b, args, Path(tmp)) for b in args.backends}
    bound_ms = {b: row["decode_bytes_per_token"] / (row["read_bandwidth_gbs"] * 1e9) * 1e3 for b, row in rows.items()}
    over_bound = {b: 1 / row["decode_bw_frac"] for b, row in rows.items()}
    ref_name = args.backends[0]
    ref = rows[ref_name]
    print(
        f"\nmodel={ref['model']} ({ref['weights']}) prompt={args.prompt_len} gen={args.gen_len} "
        f"threads={ref['threads']}; speedup = {ref_name} time / backend time (medians)\n"
        f"cpu: {cpu_label(ref['environment'])}\n"
    )
    print(
        "bound = weight bytes read per decoded token / read bandwidth (median of the probes around the row's "
        "runs); TPOT/bnd pairs each run with its own probes; weights counted as the backend stores them\n"
    )
    header = ("backend", "TTFT ms", "TPOT ms", "e2e ms", "e2e x", "TPOT x", "bound ms", "TPOT/bnd", "setup s")
    print(f"{header[0]:<18}" + "".join(f"{h:>10}" for h in header[1:]) + f"{'noise':>8}{'probes GB/s':>14}")
    for name, row in rows.items():
        cells = [
            row["ttft_ms_median"],
            row["tpot_ms_median"],
            row["e2e_ms_median"],
            ref["e2e_ms_median"] / row["e2e_ms_median"],
            ref["tpot_ms_median"] / row["tpot_ms_median"],
            bound_ms[name],
            over_bound[name],
            row["setup_s"],
        ]
        # The probes' range shows when the memory changed state during the row (see docs/findings.md).
        probes = f"{min(row['probes_gbs']):.0f}-{max(row['probes_gbs']):.0f}"
        print(f"{name:<18}" + "".join(f"{c:>10.2f}" for c in cells) + f"{row['other_cpu_frac']:>8.1%}{probes:>14}")
    if any(ratio < 1 for ratio in over_bound.values()):
        print(
            "note: TPOT/bnd below 1.00 means the decode read faster than the microbenchmark did: the bound "
            "then underestimates what this machine's memory delivers"
        )
    failed = 0
    for item in args.expect:
        name, metric, target = item.split(":")
        speedup = ref[METRICS[metric]] / rows[name][METRICS[metric]]
        ok = speedup >= float(target)
        failed += not ok
        print(f"expect {name} {metric} >= {target}x {ref_name}: {speedup:.2f}x {'PASS' if ok else 'FAIL'}")
    for item in args.within_bound:
        name, factor = item.split(":")
        ratio = over_bound[name]
        ok = ratio <= float(factor)
        failed += not ok
        print(f"expect {name} TPOT <= {factor}x its bandwidth bound: {ratio:.2f}x {'PASS' if ok else 'FAIL'}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
