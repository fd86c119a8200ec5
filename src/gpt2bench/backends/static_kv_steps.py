"""static-kv's step functions and the ways they are compiled: eager, torch.compile (dynamo), or
AOTInductor packages kept on disk (aoti.py, the CPU default).

Every step takes the model, the ids, their positions and `slots` (arange of the attention window).
No host sync inside a step: sampling uses the exponential-noise argmax (argmax p/q with q ~ Exp(1)
draws from p) instead of torch.multinomial, so a compiled or captured step can hold it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from gpt2bench.backends.aoti import PackagedStep, Step
from gpt2bench.backends.torch_common import sampling_probs

if TYPE_CHECKING:
    import torch

COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
DEFAULT_MODE = {"cpu": "max-autotune-no-cudagraphs", "cuda": "reduce-overhead"}
# aoti: packages on disk, loaded by later processes (CPU only); dynamo: torch.compile in-process.
COMPILERS = {"cpu": ("aoti", "dynamo"), "cuda": ("dynamo",)}
# torch.compile takes a mode or an options dict, not both; on the CPU we pass options (the GEMM
# backends, a silent autotune report), so each mode is spelled out as the inductor settings it stands for.
MODE_OPTIONS: dict[str, dict[str, Any]] = {
    "default": {},
    "reduce-overhead": {"triton.cudagraphs": True},
    "max-autotune": {"max_autotune": True, "triton.cudagraphs": True},
    "max-autotune-no-cudagraphs": {"max_autotune": True, "triton.cudagraphs": False},
}


def next_token(logits: torch.Tensor, temperature: float, top_k: int, top_p: float) -> torch.Tensor:
    """[batch, vocab] -> [batch] ids, with no host sync (safe inside a compiled or captured step)."""
    import torch

    if temperature == 0.0:
        return logits.argmax(dim=-1)
    probs = sampling_probs(logits, temperature, top_k, top_p)
    noise = torch.empty_like(probs).exponential_(1)
    return (probs / noise).argmax(dim=-1)


def prefill_step(
    model: Any, idx: torch.Tensor, pos: torch.Tensor, slots: torch.Tensor, temperature: float, top_k: int, top_p: float
) -> torch.Tensor:
    return next_token(model(idx, pos, slots, last_only=True)[:, -1], temperature, top_k, top_p)


def wide_prefill_step(
    model: Any, idx: torch.Tensor, pos: torch.Tensor, slots: torch.Tensor, temperature: float, top_k: int, top_p: float
) -> torch.Tensor:
    return next_token(model(idx, pos, slots, last_only=True, widen=True)[:, -1], temperature, top_k, top_p)


def decode_step(
    model: Any, idx: torch.Tensor, pos: torch.Tensor, slots: torch.Tensor, temperature: float, top_k: int, top_p: float
) -> torch.Tensor:
    return next_token(model(idx, pos, slots)[:, -1], temperature, top_k, top_p)


def full_logits(model: Any, idx: torch.Tensor, pos: torch.Tensor, slots: torch.Tensor) -> torch.Tensor:
    return model(idx, pos, slots)


def wide_full_logits(model: Any, idx: torch.Tensor, pos: torch.Tensor, slots: torch.Tensor) -> torch.Tensor:
    return model(idx, pos, slots, widen=True)


@dataclass
class Steps:
    """The callables a static-kv instance generates with. `wide_prefill` is set where bf16/fp16 is
    emulated: long prompts run their GEMMs in fp32 from widened weights (gpt2.linear, WIDEN_ROWS)."""

    decode: Callable[..., Any]
    prefill: Callable[..., Any]
    wide_prefill: Callable[..., Any] | None
    full: Callable[..., Any]


def eager_steps(emulated: bool) -> Steps:
    if emulated:
        return Steps(decode_step, prefill_step, wide_prefill_step, wide_full_logits)
    return Steps(decode_step, prefill_step, None, full_logits)


def cpu_options(mode: str) -> dict[str, Any]:
    """Decode's inductor settings on the CPU. The autotune report (every GEMM candidate's timing on
    stderr) is not ours. GEMMs come from inductor's C++ template only: with oneDNN/MKL as candidates
    too, noisy autotuning timings here picked a different mix per compile, and the extern kernels
    read weights at 10-20 GB/s against the template's ~30 (bf16 TPOT 9-13 ms by process)."""
    return {
        **MODE_OPTIONS[mode],
        "autotune_num_choices_displayed": 0,
        "max_autotune_report_choices_stats": False,
        "max_autotune_gemm_backends": "CPP",
    }


def aoti_steps(mode: str, emulated: bool, weights_hash: str) -> Steps:
    """Decode, prefill and (where nothing is widened) full logits as packages, frozen (see
    with_freezing). The widened steps stay torch.compile'd and unfrozen: frozen, they would fold fp32
    copies of the weights into constants (+0.5 GB a graph at 124M, a bf16 row whose memory is not bf16's)."""
    import torch

    options = {**cpu_options(mode), "freezing": True}
    decode = PackagedStep(Step("decode", decode_step, options), weights_hash)
    # bf16/fp16 without native instructions (AVX2): freezing cannot hand prefill's GEMMs to oneDNN,
    # and aten's fallback loop made TTFT 4x fp32's at prompt 50 on a Zen 3, so short prefills take
    # inductor's C++ template as decode does. Elsewhere prefill takes default mode (oneDNN's packed
    # GEMMs): at max-autotune its TTFT at prompt 50 was 1.8x default's (124M fp32, Zen 4).
    prefill = PackagedStep(Step("prefill", prefill_step, options if emulated else {"freezing": True}), weights_hash)
    if not emulated:
        full = PackagedStep(Step("logits", full_logits, {"freezing": True}), weights_hash)
        return Steps(decode, prefill, None, full)
    wide = torch.compile(wide_prefill_step, fullgraph=True, dynamic=True)
    return Steps(decode, prefill, wide, torch.compile(wide_full_logits, fullgraph=True, dynamic=True))


def dynamo_steps(device_type: str, mode: str, emulated: bool) -> Steps:
    """The steps as torch.compile'd functions, compiled on first use in this process. Decode sees
    fixed shapes (the window is marked dynamic by the caller); prefill and full logits see a new
    length per cell: dynamic shapes, default mode unless said below (CUDA graphs of every prompt
    length would cost memory for one call each)."""
    import torch

    short_options: dict[str, Any] = {}
    if device_type == "cpu":
        options = cpu_options(mode)
        decode = torch.compile(decode_step, options=options, fullgraph=True, dynamic=False)
        if emulated:  # short prefills on the C++ template, as in aoti_steps
            short_options = options
    else:
        decode = torch.compile(decode_step, mode=mode, fullgraph=True, dynamic=False)
    prefill = torch.compile(prefill_step, options=short_options, fullgraph=True, dynamic=True)
    full = torch.compile(wide_full_logits if emulated else full_logits, fullgraph=True, dynamic=True)
    if device_type == "cpu":
        decode, prefill = with_freezing(decode), with_freezing(prefill)
        full = full if emulated else with_freezing(full)  # the widened graph unfrozen, as in aoti_steps
    wide = torch.compile(wide_prefill_step, fullgraph=True, dynamic=True) if emulated else None
    return Steps(decode, prefill, wide, full)


def cudagraph_skips() -> int:
    """Compiled graphs inductor has run without the CUDA graphs they asked for, in this process."""
    from torch._dynamo.utils import counters

    return counters["inductor"]["cudagraph_skips"]


def with_freezing(compiled: Callable[..., Any]) -> Callable[..., Any]:
    """Run a torch.compile'd function with inductor's freezing on, wherever it (re)compiles.

    Freezing folds the weights into the graph as constants, so inductor prepacks them for its CPU
    GEMM kernels: measured here, fp32 TPOT 50 ms without it, 15-19 ms with it. It has to be the
    global setting at call time: dynamo decides whether parameters become constants while tracing
    and reads the global config, so `torch.compile(options={"freezing": True})` alone leaves every
    weight a graph input (and the GEMMs on unpacked aten kernels). AOTInductor takes it per build.
    """
    from torch._inductor import config

    def call(*args: Any) -> Any:
        previous = config.freezing
        config.freezing = True
        try:
            return compiled(*args)
        finally:
            config.freezing = previous

    return call
