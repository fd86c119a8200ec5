"""Pieces every PyTorch backend shares: dtype names, device checks, next-token selection."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from gpt2bench.core.errors import BenchError

if TYPE_CHECKING:
    import numpy as np
    import torch

    from gpt2bench.backends.base import Sampling


def torch_dtype(name: str) -> torch.dtype:
    import torch

    return {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[name]


def torch_device(name: str, threads: int) -> torch.device:
    """Apply the thread setting (recorded with every result) and check the device exists."""
    import torch

    torch.set_num_threads(threads)
    if name == "cuda" and not torch.cuda.is_available():
        raise BenchError("--device cuda was asked for, but torch sees no CUDA device")
    return torch.device(name)


def emulated_on_cpu(dtype: torch.dtype, device: torch.device) -> bool:
    """bf16/fp16 on a CPU without instructions for it (oneDNN finds no native kernels: AVX2 only),
    where PyTorch widens every element in software. Measured on a Zen 3, hf-eager bf16 at prompt
    200: TTFT 37 s and TPOT 218 ms, against fp32's 0.34 s and 41 ms."""
    import torch

    if device.type != "cpu":
        return False
    if dtype == torch.bfloat16:
        return not torch.ops.mkldnn._is_mkldnn_bf16_supported()
    return dtype == torch.float16 and not torch.ops.mkldnn._is_mkldnn_fp16_supported()


def emulation_warnings(dtype: torch.dtype, device: torch.device, engine: str = "PyTorch") -> list[str]:
    """The one-line warning a backend prints at load when `engine` runs `dtype` in software here."""
    if not emulated_on_cpu(dtype, device):
        return []
    name = str(dtype).removeprefix("torch.")
    return [
        f"this CPU has no {name} instructions (no native {name} kernels in oneDNN): {engine} emulates "
        f"{name} here, so these timings measure the emulation, not {name} arithmetic"
    ]


def make_generator(sampling: Sampling, device: torch.device) -> torch.Generator | None:
    """A seeded generator per generation, so a sampled run is reproducible repetition after repetition."""
    import torch

    if sampling.greedy:
        return None
    gen = torch.Generator(device=device)
    gen.manual_seed(sampling.seed)
    return gen


def select_next(logits: torch.Tensor, sampling: Sampling, generator: torch.Generator | None) -> torch.Tensor:
    """[batch, vocab] logits -> [batch] token ids: argmax when greedy, else temperature/top-k/top-p."""
    import torch

    if sampling.greedy:
        return logits.argmax(dim=-1)
    probs = sampling_probs(logits, sampling.temperature, sampling.top_k, sampling.top_p)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


def sampling_probs(logits: torch.Tensor, temperature: float, top_k: int, top_p: float) -> torch.Tensor:
    """[batch, vocab] logits -> the distribution to sample from: temperature, then the top-k and
    top-p cuts. No host sync, so a compiled or captured step (static-kv) can use it too."""
    import torch

    scores = logits.float() / temperature
    if top_k:
        kth = torch.topk(scores, min(top_k, scores.shape[-1]), dim=-1).values[:, -1:]
        scores = scores.masked_fill(scores < kth, float("-inf"))
    if top_p < 1.0:
        sorted_scores, order = torch.sort(scores, descending=True, dim=-1)
        probs = sorted_scores.softmax(dim=-1)
        # Drop a token when the mass before it already reaches top_p; the best token always stays.
        drop_sorted = (probs.cumsum(dim=-1) - probs) >= top_p
        scores = scores.masked_fill(drop_sorted.scatter(-1, order, drop_sorted), float("-inf"))
    return scores.softmax(dim=-1)


def compile_cache_state(folder: Path) -> str:
    """ "warm" when an on-disk compile cache already holds entries (a later process reuses what an
    earlier one compiled, and its setup or load time shows that), else "cold". Read before this
    process compiles anything."""
    return "warm" if folder.is_dir() and any(folder.iterdir()) else "cold"


def inductor_cache_state() -> str:
    """The state of inductor's on-disk cache (TORCHINDUCTOR_CACHE_DIR, else /tmp/torchinductor_USER)."""
    from torch._inductor.runtime.cache_dir_utils import cache_dir

    return compile_cache_state(Path(cache_dir()))


def torch_trace(run: Callable[[], None], out_dir: Path, cuda: bool) -> Path:
    """torch.profiler around `run`, exported as a Chrome trace (open in chrome://tracing or Perfetto)."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profile(activities=activities, record_shapes=True) as prof:
        run()
    path = out_dir / "torch_trace.json"
    prof.export_chrome_trace(str(path))
    return path


class TorchDevice:
    """Device plumbing every PyTorch backend shares; expects `self.device` and `self.dtype`."""

    device: torch.device
    dtype: torch.dtype

    def warnings(self) -> list[str]:
        return emulation_warnings(self.dtype, self.device)

    def trace(self, run: Callable[[], None], out_dir: Path) -> Path | None:
        return torch_trace(run, out_dir, self.device.type == "cuda")

    def ids(self, input_ids: np.ndarray) -> torch.Tensor:
        """Token ids on the device, in a fresh tensor with a contiguous tensor's strides. A row of a
        larger array (quality's `prompts[i][None]`, `seqs[i : i + 1]`) keeps its parent's stride, or
        0, in its size-1 batch dimension, and dynamo guards every stride: static-kv compiled its
        prefill graph again for prompt 50 (23-31 s at 124M, Zen 4) after quality's agreement
        prompts compiled it with stride 0."""
        import torch

        # Cloned on the host, so a CUDA device gets one copy, not a copy and a clone of it.
        return torch.from_numpy(input_ids).clone(memory_format=torch.contiguous_format).to(self.device)

    def synchronize(self) -> None:
        if self.device.type == "cuda":
            import torch

            torch.cuda.synchronize(self.device)

    def reset_peak_memory(self) -> None:
        if self.device.type == "cuda":
            import torch

            torch.cuda.reset_peak_memory_stats(self.device)

    def memory_stats(self) -> dict[str, float]:
        if self.device.type != "cuda":
            return {}
        import torch

        return {"cuda_max_allocated_mb": torch.cuda.max_memory_allocated(self.device) / 2**20}
