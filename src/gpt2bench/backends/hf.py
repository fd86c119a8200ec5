"""Hugging Face transformers GPT-2: fp32 eager, and torch dynamic quantization (fp16 or int8).

The decode loop is our own rather than `model.generate`, so the harness sees every token id the
moment it exists, EOS never stops generation, and nothing re-tokenizes text.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import numpy as np

from gpt2bench.backends.base import Backend, BackendSettings, check_bool_options, register
from gpt2bench.backends.torch_common import (
    TorchDevice,
    inductor_cache_state,
    make_generator,
    select_next,
    torch_device,
    torch_dtype,
)

if TYPE_CHECKING:
    import torch

    from gpt2bench.backends.base import Sampling
    from gpt2bench.models.ref import ModelRef


@register(
    "hf-eager",
    imports=("torch", "transformers"),
    description="transformers GPT2LMHeadModel, eager PyTorch with its KV cache",
    devices=("cpu", "cuda"),
    dtypes=("fp32", "bf16", "fp16"),
    options=("compile",),
    kv_reads="concat",  # DynamicCache: torch.cat into a new tensor every step, then attention
)
class HFEager(TorchDevice, Backend):
    @classmethod
    def check_options(cls, options: dict[str, Any]) -> None:
        check_bool_options(options, "compile")

    def load(self, model: ModelRef, settings: BackendSettings) -> dict[str, float]:
        from transformers import GPT2LMHeadModel

        self.device = torch_device(settings.device, settings.threads)
        self.dtype = torch_dtype(settings.dtype)
        net = GPT2LMHeadModel.from_pretrained(model.path, dtype=self.dtype)
        self.model = self.transform(net.eval().to(self.device))
        self.compiled = bool(settings.options.get("compile", False))
        self.compile_cache = inductor_cache_state() if self.compiled else "none"
        if self.compiled:
            import torch

            # Dynamic shapes: the KV cache grows every step, and one graph should serve them all.
            self.model.forward = torch.compile(self.model.forward, dynamic=True)
        return {}

    def setup(self, batch_size: int, prompt_len: int, max_new_tokens: int, sampling: Sampling) -> dict[str, float]:
        """With compile=true, compile now (prefill and decode shapes), so it is setup time, not TTFT."""
        if self.compiled:
            dummy = np.zeros((batch_size, prompt_len), dtype=np.int64)
            for _ in self.generate(dummy, min(max_new_tokens, 3), sampling):
                pass
        return {}

    def transform(self, model: torch.nn.Module) -> torch.nn.Module:
        return model

    def generate(self, input_ids: np.ndarray, max_new_tokens: int, sampling: Sampling) -> Iterator[np.ndarray]:
        generator = make_generator(sampling, self.device)
        ids = self.ids(input_ids)
        past = None
        for _ in range(max_new_tokens):
            ids, past = self._step(ids, past, sampling, generator)
            yield ids.cpu().numpy()
            ids = ids[:, None]

    def _step(self, ids: torch.Tensor, past: Any, sampling: Sampling, generator: Any) -> tuple[torch.Tensor, Any]:
        import torch

        with torch.inference_mode():
            # logits_to_keep=1: only the last position's logits are needed, as in transformers' own
            # generate; computing lm_head for every prompt position would inflate TTFT.
            out = self.model(input_ids=ids, past_key_values=past, use_cache=True, logits_to_keep=1)
            return select_next(out.logits[:, -1, :], sampling, generator), out.past_key_values

    def logits(self, input_ids: np.ndarray) -> np.ndarray:
        import torch

        with torch.inference_mode():
            out = self.model(input_ids=self.ids(input_ids), use_cache=False)
            return out.logits.float().cpu().numpy()

    def describe(self) -> dict[str, Any]:
        return {"compile_cache": self.compile_cache}

    def close(self) -> None:
        self.model = None


def conv1d_to_linear(model: torch.nn.Module) -> int:
    """Replace every transformers Conv1D with an equivalent nn.Linear, in place; return how many.

    GPT-2's projections are Conv1D (y = x @ W + b, W stored [in, out]), which quantize_dynamic does
    not recognise: given {nn.Linear} it would quietly quantize lm_head alone.
    """
    import torch
    from transformers.pytorch_utils import Conv1D

    replaced = 0
    for parent in list(model.modules()):
        for child_name, child in list(parent.named_children()):
            if isinstance(child, Conv1D):
                n_in, n_out = child.weight.shape
                linear = torch.nn.Linear(n_in, n_out, bias=True, dtype=child.weight.dtype)
                with torch.no_grad():
                    linear.weight.copy_(child.weight.t())
                    linear.bias.copy_(child.bias)
                setattr(parent, child_name, linear)
                replaced += 1
    return replaced


def count_linears(model: torch.nn.Module) -> dict[str, int]:
    import torch
    from torch.ao.nn.quantized.dynamic import Linear as DynamicQuantLinear
    from transformers.pytorch_utils import Conv1D

    counts = {"dynamic_quantized_linear": 0, "float_linear": 0, "conv1d": 0}
    for module in model.modules():
        if isinstance(module, DynamicQuantLinear):
            counts["dynamic_quantized_linear"] += 1
        elif isinstance(module, torch.nn.Linear):
            counts["float_linear"] += 1
        elif isinstance(module, Conv1D):
            counts["conv1d"] += 1
    return counts


class _DynamicQuant(HFEager):
    """Weights of every projection and lm_head quantized ahead of time; activations stay fp32 and
    are quantized on the fly per call (torch.ao dynamic quantization, CPU only)."""

    quant_dtype: str

    def transform(self, model: torch.nn.Module) -> torch.nn.Module:
        import torch
        from torch.ao.quantization import quantize_dynamic

        self.converted = conv1d_to_linear(model)
        with warnings.catch_warnings():
            # torch.ao.quantization is deprecated in favour of torchao, but it is the API the
            # studies we reproduce used, and it still works in torch 2.13.
            warnings.simplefilter("ignore")
            quantized = quantize_dynamic(model, {torch.nn.Linear}, dtype=getattr(torch, self.quant_dtype))
        self.counts = count_linears(quantized)
        return quantized

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "conv1d_converted": self.converted, **self.counts}


@register(
    "hf-fp16-dynq",
    imports=("torch", "transformers"),
    description="hf-eager with every linear layer dynamically quantized to fp16 weights",
    weight_bytes=2,
    compute_dtype="fp32",  # fbgemm widens the fp16 weights and multiplies in fp32
    kv_reads="concat",  # DynamicCache: torch.cat into a new tensor every step, then attention
)
class HFFp16DynQuant(_DynamicQuant):
    quant_dtype = "float16"


@register(
    "hf-int8-dynq",
    imports=("torch", "transformers"),
    description="hf-eager with every linear layer dynamically quantized to qint8",
    weight_bytes=1,
    compute_dtype="int8",  # activations are quantized per call too: int8 x int8
    kv_reads="concat",  # DynamicCache: torch.cat into a new tensor every step, then attention
)
class HFInt8DynQuant(_DynamicQuant):
    quant_dtype = "qint8"
