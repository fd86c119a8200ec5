"""Roofline arithmetic of one row: the memory-bandwidth bound of decoding (at batch 1 every decoded
token reads every weight once, so TPOT >= weight bytes / read bandwidth) and the compute bound of
prefill (FLOPs / peak matmul rate). Pure functions of the model config, the row's timings and the
machine's roofs (machine/roofs.py); no torch, so report/ can recompute a merged row's rates."""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from typing import Any


def rate_unit(arithmetic: str | None) -> str:
    """int8 matmuls count integer operations, not floating-point ones (the columns keep one name)."""
    return "GOP/s" if arithmetic == "int8" else "GFLOP/s"


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
    """Multiply-adds x 2 of a generation's prefill as every backend computes it: each block's
    weight matrices once per prompt token, causal attention (QK^T and AV over on average
    (prompt+1)/2 keys per query), and lm_head once per sequence, on the last position only (the
    next token needs no other logits). The perplexity path, which scores every position, runs
    lm_head for all of them: a different figure, not this one."""
    matmul_params, embedding = param_count(config)
    blocks = matmul_params - embedding  # lm_head is the tied embedding matrix
    attention = 2 * 2 * config["n_layer"] * config["n_embd"] * prompt * (prompt + 1) / 2
    return batch * (2 * blocks * prompt + 2 * embedding + attention)


# How a backend's decode step reads its KV cache (BackendInfo.kv_reads), in passes over it:
#   context    attention reads the live context once (vLLM's paged cache)
#   concat     the cache is concatenated every step, a new tensor: the old cache read, the new one
#              written, then read by attention (hf-eager's DynamicCache, our ONNX graphs' Concat)
#   allocated  attention reads every slot of a preallocated cache from the first step (static-kv)
KV_PASSES = {"context": 1, "concat": 3, "allocated": 1}


def kv_bytes_per_step(
    config: dict[str, Any],
    batch: int,
    prompt: int,
    gen: int,
    element_bytes: float,
    reads: str = "context",
    slot_round: int = 1,
) -> float:
    """Mean bytes of KV cache one decode step moves, over a generation's n - 1 decode steps: K and V
    of every layer, `element_bytes` each, for every sequence of the batch. Step i (1..n-1) attends
    to the prompt and i tokens, so the live context averages prompt + n/2; a preallocated cache
    holds prompt + n rounded up to `slot_round` slots (at most the model's context) throughout."""
    if gen < 2:
        return 0.0
    per_token = 2 * config["n_layer"] * config["n_embd"] * element_bytes
    if reads == "allocated":
        slots = min(config.get("n_positions", 1024), -(-(prompt + gen) // slot_round) * slot_round)
    else:
        slots = prompt + gen / 2
    return batch * per_token * slots * KV_PASSES[reads]


def roofline_columns(
    row: dict[str, Any],
    config: dict[str, Any],
    bytes_per_weight: float,
    bandwidth_gbs: float | None,
    peak_gflops: float | None,
    probed: Sequence[tuple[float, float, float]] = (),
    kv: tuple[float, str, int] = (4, "context", 1),
) -> dict[str, Any]:
    """Per-row roofline figures: the cell's costs from the model config (weights at the backend's
    `bytes_per_weight`; the KV cache as `kv` = (bytes per element, how it is read, slot rounding),
    see BackendInfo), then `roofline_rates`. `peak_gflops` is the matmul roof of the row's
    arithmetic (`compute_dtype`, which the caller adds to the row)."""
    weight_bytes = decode_weight_bytes(config, bytes_per_weight)
    kv_bytes = kv_bytes_per_step(config, row["batch_size"], row["prompt_len"], row["gen_len"], *kv)
    gflop = prefill_flops(config, row["batch_size"], row["prompt_len"]) / 1e9
    rates = roofline_rates(
        weight_bytes + kv_bytes,
        gflop,
        row.get("tpot_ms_median"),
        row.get("ttft_ms_median"),
        bandwidth_gbs,
        peak_gflops,
        probed,
    )
    return {
        "weight_bytes_per_token": weight_bytes,
        "kv_bytes_per_token": kv_bytes,
        "decode_bytes_per_token": weight_bytes + kv_bytes,
        **rates,
    }


def roofline_rates(
    decode_bytes: float,
    prefill_gflop: float,
    tpot_ms: float | None,
    ttft_ms: float | None,
    bandwidth_gbs: float | None,
    peak_gflops: float | None,
    probed: Sequence[tuple[float, float, float]] = (),
) -> dict[str, Any]:
    """A decode step reads every weight once (at any batch) and the batch's KV cache, so achieved
    bandwidth = those bytes / TPOT; prefill efficiency = FLOPs / TTFT against peak. With `probed`
    runs ((TPOT, probe before, probe after) each, see `probe_runs`), the bandwidth fraction is theirs."""
    tpot_s = (tpot_ms or math.nan) / 1e3
    ttft_s = (ttft_ms or math.nan) / 1e3
    achieved = decode_bytes / tpot_s / 1e9 if tpot_s > 0 else None
    gflops = prefill_gflop / ttft_s if ttft_s > 0 else None
    if probed:
        bw_frac: float | None = probed_bw_frac(decode_bytes, probed)
    else:
        bw_frac = achieved / bandwidth_gbs if achieved and bandwidth_gbs else None
    return {
        "decode_gbs": achieved,
        "decode_bw_frac": bw_frac,
        "read_bandwidth_gbs": bandwidth_gbs,
        "bandwidth_source": "probe" if probed else "cached" if bandwidth_gbs else None,
        "prefill_gflop": prefill_gflop,
        "prefill_gflops": gflops,
        "peak_gflops": peak_gflops,
        "prefill_peak_frac": gflops / peak_gflops if gflops and peak_gflops else None,
    }


def probe_runs(tpot_ms: Sequence[float], bandwidth_gbs: Sequence[float]) -> list[tuple[float, float, float]]:
    """(TPOT, probe before, probe after) per run, from runs probed before each and after the last."""
    if len(bandwidth_gbs) != len(tpot_ms) + 1:
        raise ValueError(f"need one probe more than runs, got {len(bandwidth_gbs)} for {len(tpot_ms)} runs")
    return list(zip(tpot_ms, bandwidth_gbs, bandwidth_gbs[1:], strict=False))


def probed_bw_frac(decode_bytes: float, runs: Sequence[tuple[float, float, float]]) -> float:
    """Median over runs of (achieved decode bandwidth / mean of the two probes around that run).

    Pairing each run with its own moment cancels what a shared machine does to both, which a
    bandwidth measured once (or at another time) cannot: here the probe moved between 25 and 46
    GB/s within minutes.
    """
    fracs = [decode_bytes / (tpot / 1e3) / 1e9 / ((before + after) / 2) for tpot, before, after in runs if tpot > 0]
    return statistics.median(fracs) if fracs else math.nan


def peak_for(roofs: dict[str, Any], arithmetic: str) -> float | None:
    """The matmul roof a row whose matmuls run in `arithmetic` is held to (None if not measured)."""
    return roofs.get("peak_gflops", {}).get(arithmetic)
