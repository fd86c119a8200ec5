"""llama.cpp backends through llama-cpp-python's low-level API: `llamacpp` (f32 weights),
`llamacpp-f16`, `llamacpp-q8_0` and `llamacpp-q4_0` (llama.cpp's block formats: 8.5 and 4.5 bits per
weight with their scales).

`prepare` writes the model as an f32 GGUF (gguf_export.py) and quantizes it with llama.cpp's own
quantizer, both cached. The decode loop is llama.cpp's: one `llama_decode` per step on a batch that
holds every sequence's next token (sequence b is llama.cpp sequence b, in a KV stream of its own),
then the next ids from the logits llama.cpp returns, chosen on the host by the same numpy sampler as
the ONNX backends (greedy is argmax). The cache is cleared before every generation. `setup` sizes
the context for the cell (batch x (prompt + gen) slots), so no generation pays for a bigger one.

The KV cache is f32 for the f32 variant, so its row is the same arithmetic as hf-eager's, and f16
(llama.cpp's default) for the others, as a llama.cpp user runs them. llama.cpp's q4_0 quantizer
keeps the tied embedding/head at q6_K (or q8_0 where a row is not a multiple of 256), so the row's
weight bytes come from the file's tensors, not from the nominal 4.5 bits.

The library is built from source when installed (scripts/setup.sh: GGML_NATIVE off with AVX2, FMA
and F16C, so one cached wheel runs on every x86-64 machine of this project; on an AVX-512 machine a
native build, CMAKE_ARGS=-DGGML_NATIVE=ON, may be faster).
"""

from __future__ import annotations

import ctypes
from collections.abc import Iterator
from importlib import metadata
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from gpt2bench.backends.base import Backend, BackendSettings, check_bool_options, register
from gpt2bench.backends.sampling import host_decode
from gpt2bench.core.errors import BenchError

if TYPE_CHECKING:
    from gpt2bench.backends.artifacts import Built
    from gpt2bench.backends.base import Sampling
    from gpt2bench.models.ref import ModelRef

REQUIRES = (("llama_cpp", "llamacpp"), ("gguf", "llamacpp"))
CONVERT_VERSION = 1
GGML_TYPE_F32, GGML_TYPE_F16 = 0, 1


class _LlamaCppBackend(Backend):
    quant: ClassVar[str]  # "f32" or a gguf_export.FTYPES key

    @classmethod
    def check_options(cls, options: dict[str, Any]) -> None:
        check_bool_options(options, "rebuild")

    def prepare(self, model: ModelRef, settings: BackendSettings) -> dict[str, float]:
        from gpt2bench.backends.artifacts import cached_build
        from gpt2bench.backends.gguf_export import quantize, write_gguf

        rebuild = bool(settings.options.get("rebuild", False))
        base = {"model_hash": model.weights_hash, "gguf": metadata.version("gguf"), "convert_version": CONVERT_VERSION}
        f32 = cached_build(
            "llamacpp",
            {**base, "variant": "llamacpp"},
            lambda tmp: _with_bytes(write_gguf(model.path, tmp / "model.gguf"), tmp),
            rebuild,
            "GGUF f32",
        )
        phases = dict(f32.phases)
        if self.quant == "f32":
            self.artifact: Built = f32
            return phases
        fields = {
            **base,
            "variant": self.name,
            "llama_cpp": metadata.version("llama_cpp_python"),
            "source": f32.folder.name,
        }
        self.artifact = cached_build(
            "llamacpp",
            fields,
            lambda tmp: _with_bytes(
                quantize(f32.folder / "model.gguf", tmp / "model.gguf", self.quant, settings.threads), tmp
            ),
            rebuild,
            f"llama.cpp quantizer, {self.quant}",
        )
        return {**phases, **self.artifact.phases}

    def load(self, model: ModelRef, settings: BackendSettings) -> dict[str, float]:
        import llama_cpp
        from llama_cpp import _logger

        self.check_options(settings.options)
        if not hasattr(self, "artifact"):
            self.prepare(model, settings)
        _logger.set_verbose(False)  # its load report: hundreds of lines on stderr
        llama_cpp.llama_backend_init()
        params = llama_cpp.llama_model_default_params()
        params.n_gpu_layers = 0
        path = str(self.artifact.folder / "model.gguf").encode()
        self.model = llama_cpp.llama_model_load_from_file(path, params)
        if not self.model:
            raise BenchError(f"llama.cpp could not load {self.artifact.folder / 'model.gguf'}")
        self.lib, self.threads, self.ctx, self.shape = llama_cpp, settings.threads, None, (0, 0)
        self.n_positions = model.n_positions()
        self.vocab = llama_cpp.llama_vocab_n_tokens(llama_cpp.llama_model_get_vocab(self.model))
        return {}

    def _ensure_context(self, batch: int, length: int) -> None:
        """A context of `batch` sequences with `length` slots each, made anew only when too small."""
        if self.ctx is not None and self.shape[0] >= batch and self.shape[1] >= length:
            return
        lib = self.lib
        if self.ctx is not None:
            lib.llama_free(self.ctx)
            lib.llama_batch_free(self.batch)
        params = lib.llama_context_default_params()
        params.n_ctx = batch * length  # split into one stream per sequence (kv_unified off)
        params.n_seq_max = batch
        params.n_batch = params.n_ctx  # a whole prefill goes in one llama_decode
        params.n_ubatch = min(512, params.n_ctx)
        params.n_threads = params.n_threads_batch = self.threads
        params.kv_unified = False
        params.no_perf = True
        params.type_k = params.type_v = GGML_TYPE_F32 if self.quant == "f32" else GGML_TYPE_F16
        self.ctx = lib.llama_init_from_model(self.model, params)
        if not self.ctx:
            raise BenchError(f"llama.cpp could not create a context of {batch} x {length} tokens")
        self.batch = lib.llama_batch_init(params.n_ctx, 0, batch)
        self.shape = (batch, length)

    def setup(self, batch_size: int, prompt_len: int, max_new_tokens: int, sampling: Sampling) -> dict[str, float]:
        self._ensure_context(batch_size, prompt_len + max_new_tokens)
        return {}

    def _decode(self, ids: np.ndarray, start: int, all_logits: bool = False) -> np.ndarray:
        """One llama_decode of ids [batch, seq] at positions start..; logits [batch, kept, vocab] of
        the last position of each sequence (every position with `all_logits`)."""
        b = self.batch
        batch, seq = ids.shape
        for s in range(batch):
            for t in range(seq):
                i = s * seq + t
                b.token[i], b.pos[i], b.n_seq_id[i] = int(ids[s, t]), start + t, 1
                b.seq_id[i][0] = s
                b.logits[i] = all_logits or t == seq - 1
        b.n_tokens = batch * seq
        code = self.lib.llama_decode(self.ctx, b)
        if code != 0:
            raise BenchError(f"llama_decode failed (code {code})")
        kept = range(seq) if all_logits else [seq - 1]
        rows = [self.lib.llama_get_logits_ith(self.ctx, s * seq + t) for s in range(batch) for t in kept]
        out = np.stack(
            [np.ctypeslib.as_array(ctypes.cast(r, ctypes.POINTER(ctypes.c_float)), (self.vocab,)) for r in rows]
        )
        return out.reshape(batch, len(kept), self.vocab)

    def generate(self, input_ids: np.ndarray, max_new_tokens: int, sampling: Sampling) -> Iterator[np.ndarray]:
        batch, seq = input_ids.shape
        self._ensure_context(batch, seq + max_new_tokens)
        self.lib.llama_memory_clear(self.lib.llama_get_memory(self.ctx), True)
        yield from host_decode(self._decode, input_ids, max_new_tokens, sampling)

    def logits(self, input_ids: np.ndarray) -> np.ndarray:
        seq = input_ids.shape[1]
        out = []
        for row in np.asarray(input_ids, dtype=np.int64):  # one sequence at a time: every position's logits
            self._ensure_context(1, seq)
            self.lib.llama_memory_clear(self.lib.llama_get_memory(self.ctx), True)
            out.append(self._decode(row[None, :], 0, all_logits=True)[0])
        return np.stack(out).astype(np.float32, copy=False)

    def stored_weight_bytes(self) -> float | None:
        return self.artifact.manifest.get("info", {}).get("bytes_per_weight")

    def describe(self) -> dict[str, Any]:
        info = self.artifact.manifest.get("info", {})
        return {
            "gguf_tensor_types": info.get("tensor_types"),
            "bytes_per_weight": info.get("bytes_per_weight"),
            "kv_cache": "f32" if self.quant == "f32" else "f16",
            "llama_cpp_python": metadata.version("llama_cpp_python"),
            "gguf_mb": round((self.artifact.folder / "model.gguf").stat().st_size / 2**20, 1),
        }

    def close(self) -> None:
        if getattr(self, "ctx", None):
            self.lib.llama_batch_free(self.batch)
            self.lib.llama_free(self.ctx)
        if getattr(self, "model", None):
            self.lib.llama_model_free(self.model)
        self.ctx = self.model = None


def _with_bytes(info: dict[str, Any], folder: Any) -> dict[str, Any]:
    """`info` with the file's tensor types and its mean bytes per weight over the tensors a decode
    step reads (all but position_embd, whose rows are looked up)."""
    import gguf

    from gpt2bench.backends.gguf_export import tensor_types

    tensors = [t for t in gguf.GGUFReader(str(folder / "model.gguf")).tensors if t.name != "position_embd.weight"]
    n_bytes = sum(int(t.n_bytes) for t in tensors)
    n_elements = sum(int(t.n_elements) for t in tensors)
    return {**info, "tensor_types": tensor_types(folder / "model.gguf"), "bytes_per_weight": n_bytes / n_elements}


def _register(name: str, quant: str, weight_bytes: float | None, description: str) -> None:
    cls = type(f"LlamaCpp_{quant}", (_LlamaCppBackend,), {"quant": quant})
    register(
        name,
        imports=("llama_cpp",),
        description=description,
        requires=REQUIRES,
        options=("rebuild",),
        weight_bytes=weight_bytes,
        compute_dtype=None if quant in ("f32", "f16") else "int8",  # q8_0/q4_0 dot products against q8 activations
        kv_bytes=None if quant == "f32" else 2,
    )(cls)


_register("llamacpp", "f32", None, "llama.cpp (GGUF f32), one llama_decode per step, f32 KV cache")
_register("llamacpp-f16", "f16", 2, "llama.cpp, GGUF f16 weights (fp32 compute), f16 KV cache")
_register("llamacpp-q8_0", "q8_0", 34 / 32, "llama.cpp, q8_0 blocks (8.5 bits/weight), f16 KV cache")
_register("llamacpp-q4_0", "q4_0", 18 / 32, "llama.cpp, q4_0 blocks (4.5 bits/weight), f16 KV cache")
