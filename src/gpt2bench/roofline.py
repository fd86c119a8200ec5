"""The memory-bandwidth bound of decoding: at batch 1 every decoded token reads every weight once,
so TPOT >= weight bytes / read bandwidth. Pure arithmetic plus one cached microbenchmark."""

from __future__ import annotations

import json
import math
import statistics
import time
from collections.abc import Sequence
from typing import Any

from gpt2bench.fsutil import atomic_write_text
from gpt2bench.paths import cache_dir

BYTES_PER_PARAM = {"fp32": 4, "bf16": 2, "fp16": 2, "int8": 1}
# Backends whose weights are stored narrower than their activation dtype says.
BACKEND_WEIGHT_BYTES = {"hf-fp16-dynq": 2, "hf-int8-dynq": 1, "onnx-int8": 1}


def decode_weight_bytes(config: dict[str, Any], bytes_per_param: float) -> float:
    """Bytes of weights one decode step reads: every block's parameters, the final LayerNorm and
    the (tied) embedding matrix as lm_head. The embedding lookups read one row each: ignored."""
    width, layers, vocab = config["n_embd"], config["n_layer"], config["vocab_size"]
    inner = config.get("n_inner") or 4 * width
    attention = width * 3 * width + 3 * width + width * width + width
    mlp = width * inner + inner + inner * width + width
    norms = 2 * 2 * width
    return (layers * (attention + mlp + norms) + 2 * width + vocab * width) * bytes_per_param


def param_count(config: dict[str, Any]) -> tuple[int, int]:
    """(matmul parameters per token, embedding-table parameters) of GPT-2: the first is what a
    forward pass multiplies each token by (blocks + lm_head), for FLOP counting."""
    width, layers, vocab = config["n_embd"], config["n_layer"], config["vocab_size"]
    inner = config.get("n_inner") or 4 * width
    per_layer = width * 3 * width + width * width + 2 * width * inner
    return layers * per_layer + vocab * width, vocab * width


def prefill_flops(config: dict[str, Any], batch: int, prompt: int) -> float:
    """Multiply-adds x 2 of a prefill: every weight matrix once per token, plus causal attention
    (QK^T and AV over on average (prompt+1)/2 keys per query)."""
    matmul_params, _ = param_count(config)
    attention = 2 * 2 * config["n_layer"] * config["n_embd"] * prompt * (prompt + 1) / 2
    return batch * (2 * matmul_params * prompt + attention)


def roofline_columns(
    row: dict[str, Any], config: dict[str, Any], bandwidth_gbs: float | None, peak_gflops: float | None
) -> dict[str, float | None]:
    """Per-row roofline figures. Decode at batch B still reads every weight once per step, so
    achieved bandwidth = weight bytes / TPOT; prefill efficiency = FLOPs / TTFT against peak."""
    bytes_per_param = BACKEND_WEIGHT_BYTES.get(row["backend"], BYTES_PER_PARAM.get(row["dtype"], 4))
    weight_bytes = decode_weight_bytes(config, bytes_per_param)
    tpot_s = (row.get("tpot_ms_median") or float("nan")) / 1e3
    ttft_s = (row.get("ttft_ms_median") or float("nan")) / 1e3
    achieved = weight_bytes / tpot_s / 1e9 if tpot_s > 0 else None
    flops = prefill_flops(config, row["batch_size"], row["prompt_len"])
    gflops = flops / ttft_s / 1e9 if ttft_s > 0 else None
    return {
        "weight_bytes_per_token": weight_bytes,
        "decode_gbs": achieved,
        "decode_bw_frac": achieved / bandwidth_gbs if achieved and bandwidth_gbs else None,
        "prefill_gflop": flops / 1e9,
        "prefill_gflops": gflops,
        "prefill_peak_frac": gflops / peak_gflops if gflops and peak_gflops else None,
    }


def probed_bw_frac(weight_bytes: float, tpot_ms: Sequence[float], bandwidth_gbs: Sequence[float]) -> float:
    """Median over runs of (achieved decode bandwidth / read bandwidth probed around that run).

    Run i sits between probes i and i+1; their mean is its memory speed. Pairing each run with its
    own moment cancels what a shared machine does to both, which a bandwidth measured once (or at
    another time) cannot: here the probe moved between 25 and 46 GB/s within minutes.
    """
    if len(bandwidth_gbs) != len(tpot_ms) + 1:
        raise ValueError(f"need one probe more than runs, got {len(bandwidth_gbs)} for {len(tpot_ms)} runs")
    fracs = [
        weight_bytes / (tpot / 1e3) / 1e9 / ((before + after) / 2)
        for tpot, before, after in zip(tpot_ms, bandwidth_gbs, bandwidth_gbs[1:], strict=False)
        if tpot > 0
    ]
    return statistics.median(fracs) if fracs else math.nan


def pooled_roofline(
    last: dict[str, Any], tpot_ms: float, ttft_ms: float, probed: Sequence[tuple[Sequence[float], Sequence[float]]]
) -> dict[str, Any]:
    """Roofline columns of interleaved rounds pooled into one row. `last` is one round's row (its
    weight bytes, FLOPs and roofs hold for every round); `tpot_ms`/`ttft_ms` are the pooled
    medians; `probed` holds each round's (TPOT per run, probes around them), empty without probes.
    A fraction of a fixed roof scales with its rate, so the cached-roof fractions are rescaled."""
    cols: dict[str, Any] = {}
    weight_bytes, gflop = last.get("weight_bytes_per_token"), last.get("prefill_gflop")
    if weight_bytes is not None:
        decode_gbs = weight_bytes / (tpot_ms / 1e3) / 1e9 if tpot_ms > 0 else None
        cols["decode_gbs"] = decode_gbs
        if probed:
            fracs = [probed_bw_frac(weight_bytes, tpots, probes) for tpots, probes in probed]
            cols["decode_bw_frac"] = statistics.median(fracs)
            cols["read_bandwidth_gbs"] = statistics.median(p for _, probes in probed for p in probes)
        elif last.get("read_bandwidth_gbs") and decode_gbs:
            cols["decode_bw_frac"] = decode_gbs / last["read_bandwidth_gbs"]
    if gflop is not None:
        gflops = gflop / (ttft_ms / 1e3) if ttft_ms > 0 else None
        cols["prefill_gflops"] = gflops
        if last.get("prefill_peak_frac") and last.get("prefill_gflops") and gflops:
            cols["prefill_peak_frac"] = last["prefill_peak_frac"] * gflops / last["prefill_gflops"]
    return cols


def measure_peak_gflops(threads: int, size: int = 2048, repeats: int = 5) -> float:
    """GFLOP/s of the best fp32 square matmul: the compute roof for prefill."""
    import torch

    torch.set_num_threads(threads)
    a, b = torch.randn(size, size), torch.randn(size, size)
    torch.mm(a, b)  # warm up the BLAS
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - t0)
    return 2 * size**3 / best / 1e9


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
    best = float("inf")
    for kernel in kernels:
        for _ in range(repeats):
            t0 = time.perf_counter()
            kernel()
            best = min(best, time.perf_counter() - t0)
    return n_bytes / best / 1e9


def machine_roofs(threads: int, refresh: bool = False) -> dict[str, float]:
    """Read bandwidth (GB/s) and peak fp32 matmul (GFLOP/s) at `threads`, measured once and cached
    in <cache>/machine.json (a few seconds the first time)."""
    path = cache_dir() / "machine.json"
    try:
        cached = json.loads(path.read_text())
    except (OSError, ValueError):
        cached = {}
    key = f"threads{threads}_v2"
    if refresh or key not in cached:
        cached[key] = {
            "read_bandwidth_gbs": measure_read_bandwidth(threads),
            "peak_gflops": measure_peak_gflops(threads),
        }
        atomic_write_text(path, json.dumps(cached, indent=1))
    return dict(cached[key])


def read_bandwidth(threads: int, refresh: bool = False) -> float:
    return machine_roofs(threads, refresh)["read_bandwidth_gbs"]
