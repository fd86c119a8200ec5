"""The memory-bandwidth bound of decoding: at batch 1 every decoded token reads every weight once,
so TPOT >= weight bytes / read bandwidth. Pure arithmetic plus one cached microbenchmark."""

from __future__ import annotations

import json
import time
from typing import Any

from gpt2bench.fsutil import atomic_write_text
from gpt2bench.paths import cache_dir

BYTES_PER_PARAM = {"fp32": 4, "bf16": 2, "fp16": 2, "int8": 1}


def decode_weight_bytes(config: dict[str, Any], bytes_per_param: float) -> float:
    """Bytes of weights one decode step reads: every block's parameters, the final LayerNorm and
    the (tied) embedding matrix as lm_head. The embedding lookups read one row each: ignored."""
    width, layers, vocab = config["n_embd"], config["n_layer"], config["vocab_size"]
    inner = config.get("n_inner") or 4 * width
    attention = width * 3 * width + 3 * width + width * width + width
    mlp = width * inner + inner + inner * width + width
    norms = 2 * 2 * width
    return (layers * (attention + mlp + norms) + 2 * width + vocab * width) * bytes_per_param


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


def read_bandwidth(threads: int, refresh: bool = False) -> float:
    """measure_read_bandwidth, cached per thread count in <cache>/machine.json."""
    path = cache_dir() / "machine.json"
    try:
        cached = json.loads(path.read_text())
    except (OSError, ValueError):
        cached = {}
    key = f"read_bandwidth_gbs_threads{threads}_v2"  # v2: best of several kernels
    if refresh or key not in cached:
        cached[key] = measure_read_bandwidth(threads)
        atomic_write_text(path, json.dumps(cached, indent=1))
    return float(cached[key])
