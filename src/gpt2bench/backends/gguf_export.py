"""A Hugging Face GPT-2 folder as a GGUF file for llama.cpp, written with the `gguf` package, then
quantized by llama.cpp's own quantizer (`llama_model_quantize`, the code behind llama-quantize).

The layout is llama.cpp's "gpt2" architecture, as its convert_hf_to_gguf.py writes it: tensors
renamed to token_embd / position_embd / blk.N.{attn_norm, attn_qkv, attn_output, ffn_norm, ffn_up,
ffn_down} / output_norm, the Conv1D weights of c_attn, c_proj and c_fc transposed to (out, in),
no `output` tensor (GPT-2's head is tied: llama.cpp then uses token_embd), and the byte-level BPE
vocabulary with its merges. gpt2bench feeds token ids, but llama.cpp loads the vocabulary all the
same, so the file is a complete model any llama.cpp tool can run.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

LAYER_NAMES = {
    "ln_1": "attn_norm",
    "attn.c_attn": "attn_qkv",
    "attn.c_proj": "attn_output",
    "ln_2": "ffn_norm",
    "mlp.c_fc": "ffn_up",
    "mlp.c_proj": "ffn_down",
}
TOP_NAMES = {"wte": "token_embd", "wpe": "position_embd", "ln_f": "output_norm"}
CONV1D = ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")  # stored (in, out) by Hugging Face
# What llama.cpp's quantizer is asked for, per variant (llama.h's enum llama_ftype).
FTYPES = {"f16": 1, "q4_0": 2, "q8_0": 7}


def gguf_name(hf_name: str) -> str | None:
    """llama.cpp's name for a Hugging Face GPT-2 tensor; None for buffers it does not need."""
    name = hf_name.removeprefix("transformer.")
    if name.endswith((".attn.bias", ".attn.masked_bias")) or name == "lm_head.weight":
        return None  # the causal mask buffer; the head tied to wte
    stem, _, kind = name.rpartition(".")
    if stem in TOP_NAMES:
        return f"{TOP_NAMES[stem]}.{kind}"
    if stem.startswith("h."):
        block, _, rest = stem[2:].partition(".")
        if rest in LAYER_NAMES:
            return f"blk.{block}.{LAYER_NAMES[rest]}.{kind}"
    raise ValueError(f"unexpected GPT-2 tensor '{hf_name}'")


def write_gguf(model_dir: Path, out: Path) -> dict[str, Any]:
    """The f32 GGUF of the model in `model_dir`."""
    import gguf
    from safetensors.numpy import load_file

    config = json.loads((model_dir / "config.json").read_text())
    writer = gguf.GGUFWriter(str(out), "gpt2")
    writer.add_name("gpt2bench")
    writer.add_block_count(config["n_layer"])
    writer.add_context_length(config["n_positions"])
    writer.add_embedding_length(config["n_embd"])
    writer.add_feed_forward_length(config.get("n_inner") or 4 * config["n_embd"])
    writer.add_head_count(config["n_head"])
    writer.add_layer_norm_eps(config["layer_norm_epsilon"])
    writer.add_file_type(0)  # LLAMA_FTYPE_ALL_F32
    _add_vocab(writer, model_dir, config["vocab_size"])
    n = 0
    for hf_name, tensor in load_file(str(model_dir / "model.safetensors")).items():
        name = gguf_name(hf_name)
        if name is None:
            continue
        data = tensor.astype(np.float32)
        if name.endswith(".weight") and hf_name.rsplit(".", 1)[0].endswith(CONV1D):
            data = np.ascontiguousarray(data.T)
        writer.add_tensor(name, data)
        n += 1
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return {"tensors": n}


def _add_vocab(writer: Any, model_dir: Path, vocab_size: int) -> None:
    """The byte-level BPE vocabulary: tokens in id order, merges, <|endoftext|> as BOS and EOS."""
    import gguf

    tokenizer = json.loads((model_dir / "tokenizer.json").read_text())
    vocab = tokenizer["model"]["vocab"]
    tokens = [f"[PAD{i}]" for i in range(vocab_size)]
    types = [gguf.TokenType.UNUSED] * vocab_size
    for token, index in vocab.items():
        tokens[index], types[index] = token, gguf.TokenType.NORMAL
    for added in tokenizer.get("added_tokens", []):
        types[added["id"]] = gguf.TokenType.CONTROL
    merges = tokenizer["model"].get("merges", [])
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("gpt-2")
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges([m if isinstance(m, str) else " ".join(m) for m in merges])
    eos = int(json.loads((model_dir / "config.json").read_text()).get("eos_token_id", vocab_size - 1))
    writer.add_bos_token_id(eos)
    writer.add_eos_token_id(eos)


def quantize(source: Path, out: Path, variant: str, threads: int) -> dict[str, Any]:
    """llama.cpp's quantizer from the f32 GGUF `source` to `variant` (f16, q8_0, q4_0)."""
    import ctypes

    import llama_cpp

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = FTYPES[variant]
    params.nthread = threads
    code = llama_cpp.llama_model_quantize(str(source).encode(), str(out).encode(), ctypes.byref(params))
    if code != 0:
        raise RuntimeError(f"llama.cpp's quantizer failed for {variant} (code {code})")
    return {"ftype": variant}


def tensor_types(path: Path) -> dict[str, int]:
    """How many tensors of each ggml type the file holds, e.g. {"Q8_0": 49, "F32": 98}."""
    import gguf

    counts: dict[str, int] = {}
    for tensor in gguf.GGUFReader(str(path)).tensors:
        counts[tensor.tensor_type.name] = counts.get(tensor.tensor_type.name, 0) + 1
    return counts
