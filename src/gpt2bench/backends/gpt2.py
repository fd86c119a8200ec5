"""GPT-2 in one readable file, with a static KV cache (after nanoGPT and gpt-fast).

The cache is allocated once as [batch, heads, max_len, head_dim] and written in place at the
current positions, so decoding has fixed shapes: torch.compile builds one graph and reuses it for
every token, and CUDA graphs can capture it. Attention reads a window of the cache, its first
`len(slots)` positions: a caller sizes the window for its generation, and a compiler that treats
that length as dynamic serves every window with one graph. Attention masks by position, which
also hides whatever an earlier generation left in the window beyond the current position.

`widen=True` runs the projections of a call in fp32 from bf16/fp16 weights (see `linear`): for
CPUs that have no instructions for those types, on calls with many rows.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

# transformers' Conv1D stores these as [in, out]; nn.Linear wants [out, in].
CONV1D_WEIGHTS = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")


@dataclass(frozen=True)
class Config:
    n_layer: int = 12
    n_head: int = 12
    n_embd: int = 768
    vocab_size: int = 50257
    n_positions: int = 1024
    layer_norm_epsilon: float = 1e-5

    @classmethod
    def from_hf(cls, folder: Path) -> Config:
        raw = json.loads((Path(folder) / "config.json").read_text())
        return cls(**{k: raw[k] for k in cls.__dataclass_fields__ if k in raw})

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, widen: bool = False) -> torch.Tensor:
    """F.linear, or with `widen` the same product computed in fp32 and rounded back to x's dtype.

    A bf16 GEMM takes bf16 inputs, accumulates in fp32 and rounds its output to bf16; widening
    does that too, only in another order. It exists for CPUs without bf16/fp16 instructions
    (AVX2): there every GEMM kernel widens each weight in registers once per block of rows, which
    made a bf16 prefill 2.4x slower than fp32 at 900 tokens. Widening the weights once per call
    costs ~40 ms for GPT-2 124M and lets fp32 GEMMs do the rows. The fp32 copies are temporaries,
    so the model keeps its bf16 memory footprint (unless a compiler freezes the weights and folds
    the widening into constants: static-kv compiles its widened graphs without freezing).
    """
    if not widen or weight.dtype == torch.float32:
        return F.linear(x, weight, bias)
    return F.linear(x.float(), weight.float(), None if bias is None else bias.float()).to(x.dtype)


class Linear(nn.Linear):
    def forward(self, x: torch.Tensor, widen: bool = False) -> torch.Tensor:
        return linear(x, self.weight, self.bias, widen)


class KVCache(nn.Module):
    def __init__(
        self, batch: int, n_head: int, max_len: int, head_dim: int, dtype: torch.dtype, device: torch.device
    ) -> None:
        super().__init__()
        self.register_buffer("k", torch.empty(0), persistent=False)
        self.register_buffer("v", torch.empty(0), persistent=False)
        self.resize(batch, n_head, max_len, head_dim, dtype, device)

    def resize(
        self, batch: int, n_head: int, max_len: int, head_dim: int, dtype: torch.dtype, device: torch.device
    ) -> None:
        """New zeroed buffers of a new shape in the same module (static_kv keeps each shape's
        tensors and points the module back at them when a cell returns to that shape)."""
        shape = (batch, n_head, max_len, head_dim)
        self.k = torch.zeros(shape, dtype=dtype, device=device)
        self.v = torch.zeros(shape, dtype=dtype, device=device)

    def update(self, pos: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        self.k.index_copy_(2, pos, k)
        self.v.index_copy_(2, pos, v)
        return self.k, self.v


def decode_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Attention of one query per sequence, written as plain reductions in fp32.

    For decode on the CPU this is what inductor should see: it fuses the whole thing into a couple
    of loops over the cache, where SDPA's CPU kernel (built for long queries) costs ~0.2 ms per
    layer in bf16, a quarter of the step. q [B, H, 1, D], k/v [B, H, L, D], mask [1, 1, 1, L].
    """
    scores = (q.float() * k.float()).sum(-1) * q.shape[-1] ** -0.5  # [B, H, L]
    probs = scores.masked_fill(~mask[:, :, 0], float("-inf")).softmax(-1)
    return (probs.unsqueeze(-1) * v.float()).sum(-2, keepdim=True).to(q.dtype)


class Attention(nn.Module):
    def __init__(self, cfg: Config) -> None:
        super().__init__()
        self.n_head, self.head_dim = cfg.n_head, cfg.head_dim
        self.c_attn = Linear(cfg.n_embd, 3 * cfg.n_embd)
        self.c_proj = Linear(cfg.n_embd, cfg.n_embd)
        self.kv_cache: KVCache | None = None

    def forward(self, x: torch.Tensor, pos: torch.Tensor, mask: torch.Tensor, widen: bool = False) -> torch.Tensor:
        batch, seq, width = x.shape
        q, k, v = self.c_attn(x, widen).split(width, dim=2)
        q, k, v = (t.view(batch, seq, self.n_head, self.head_dim).transpose(1, 2) for t in (q, k, v))
        assert self.kv_cache is not None, "call GPT2.setup_caches first"
        k, v = self.kv_cache.update(pos, k, v)
        window = mask.shape[-1]  # the slots this call reads: the window, not the whole cache
        k, v = k[:, :, :window], v[:, :, :window]
        if seq == 1 and x.device.type == "cpu" and torch.compiler.is_compiling():
            y = decode_attention(q, k, v, mask)
        else:
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self.c_proj(y.transpose(1, 2).reshape(batch, seq, width), widen)


class MLP(nn.Module):
    def __init__(self, cfg: Config) -> None:
        super().__init__()
        self.c_fc = Linear(cfg.n_embd, 4 * cfg.n_embd)
        self.c_proj = Linear(4 * cfg.n_embd, cfg.n_embd)

    def forward(self, x: torch.Tensor, widen: bool = False) -> torch.Tensor:
        return self.c_proj(F.gelu(self.c_fc(x, widen), approximate="tanh"), widen)  # GPT-2's "gelu_new"


class Block(nn.Module):
    def __init__(self, cfg: Config) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(cfg.n_embd, eps=cfg.layer_norm_epsilon)
        self.attn = Attention(cfg)
        self.ln_2 = nn.LayerNorm(cfg.n_embd, eps=cfg.layer_norm_epsilon)
        self.mlp = MLP(cfg)

    def forward(self, x: torch.Tensor, pos: torch.Tensor, mask: torch.Tensor, widen: bool = False) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x), pos, mask, widen)
        return x + self.mlp(self.ln_2(x), widen)


class GPT2(nn.Module):
    def __init__(self, cfg: Config) -> None:
        super().__init__()
        self.cfg = cfg
        self.wte = nn.Embedding(cfg.vocab_size, cfg.n_embd)
        self.wpe = nn.Embedding(cfg.n_positions, cfg.n_embd)
        self.h = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layer))
        self.ln_f = nn.LayerNorm(cfg.n_embd, eps=cfg.layer_norm_epsilon)
        self.max_len = 0

    def setup_caches(self, batch: int, max_len: int) -> None:
        """Allocate the KV cache once; generation never grows it."""
        dtype, device = self.wte.weight.dtype, self.wte.weight.device
        for block in self.h:
            shape = (batch, self.cfg.n_head, max_len, self.cfg.head_dim, dtype, device)
            if block.attn.kv_cache is None:
                block.attn.kv_cache = KVCache(*shape)
            else:
                block.attn.kv_cache.resize(*shape)
        self.max_len = max_len

    def forward(
        self,
        idx: torch.Tensor,
        pos: torch.Tensor,
        slots: torch.Tensor | None = None,
        last_only: bool = False,
        widen: bool = False,
    ) -> torch.Tensor:
        """idx [batch, seq] at positions pos [seq] -> logits [batch, seq or 1, vocab].

        `slots` is arange(window): attention reads the cache's first `window` positions (default:
        all of it). It is a tensor, not an int, so a compiler can take its length as a dynamic size.
        `widen` computes the projections in fp32 (see `linear`); lm_head too unless `last_only`,
        where it has one row per sequence and widening 38M weights would cost more than it saves."""
        if slots is None:
            slots = torch.arange(self.max_len, device=pos.device)
        mask = (slots[None, :] <= pos[:, None])[None, None]  # [1, 1, seq, window]: key j visible iff j <= pos
        x = self.wte(idx) + self.wpe(pos)
        for block in self.h:
            x = block(x, pos, mask, widen)
        x = self.ln_f(x[:, -1:] if last_only else x)
        return linear(x, self.wte.weight, None, widen and not last_only)  # lm_head tied to the token embedding

    @classmethod
    def from_hf(cls, folder: Path, dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu") -> GPT2:
        """Load a Hugging Face GPT-2 folder (safetensors), transposing Conv1D weights once here."""
        from safetensors.torch import load_file

        files = sorted(Path(folder).glob("*.safetensors"))
        if not files:
            raise FileNotFoundError(f"no *.safetensors in {folder}")
        state: dict[str, torch.Tensor] = {}
        for file in files:
            state.update(load_file(file))
        cfg = Config.from_hf(folder)
        mapped = {}
        for name, tensor in state.items():
            name = name.removeprefix("transformer.")
            if name == "lm_head.weight" or name.endswith(".attn.bias") or name.endswith(".attn.masked_bias"):
                continue  # tied to wte / HF's causal-mask buffers
            mapped[name] = tensor.t().contiguous() if name.endswith(CONV1D_WEIGHTS) else tensor
        with torch.device("meta"):
            model = cls(cfg)
        model.load_state_dict(mapped, assign=True, strict=True)
        return model.to(device=device, dtype=dtype).eval().requires_grad_(False)
