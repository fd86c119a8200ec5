"""CTranslate2 backends: `ct2` (float32) and `ct2-int8` (int8 weights and int8 GEMMs), OpenNMT's C++
engine, which supports GPT-2 natively.

`prepare` converts the model with CTranslate2's own Transformers converter into the cache (int8
variants are quantized at conversion, so the file holds int8 weights). Generation goes through its
step-wise API, `generate_tokens`: the engine runs the decode loop in its own worker thread and hands
each step's token ids over through a queue, which is how CTranslate2 streams. `end_token=[]` means no
token ends a sequence, and `max_length` counts generated tokens only (include_prompt_in_result is
False there), so every sequence is exactly the asked-for length. The worker thread runs ahead of
our consumer, so a step's id is read as soon as it is made: the harness's clock sees production
times as long as the consumer keeps up (it does: a queue get against a ms-long step).

Compute types: CTranslate2's "int8" keeps the non-quantized weights (embeddings aside, the layer
norms and biases) in the checkpoint's precision, float32 here, so for our fp32 models "int8" and
"int8_float32" are the same computation (its 3.18 release notes); `--option compute_type=` picks
either, and the row records the type CTranslate2 resolved.

Logits for quality come from `forward_batch`, the same kernels and compute type as generation.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from gpt2bench.backends.base import Backend, BackendSettings, check_bool_options, register
from gpt2bench.core.errors import UsageError

if TYPE_CHECKING:
    from gpt2bench.backends.artifacts import Built
    from gpt2bench.backends.base import Sampling
    from gpt2bench.models.ref import ModelRef

REQUIRES = (("ctranslate2", "ct2"),)
CONVERT_VERSION = 1  # bump when the conversion below changes what it writes
COMPUTE_TYPES = {"float32": ("float32",), "int8": ("int8", "int8_float32")}


class _Ct2Backend(Backend):
    quantization: ClassVar[str]  # the converter's weight type, and the default compute type

    @classmethod
    def check_options(cls, options: dict[str, Any]) -> None:
        check_bool_options(options, "rebuild")
        allowed = COMPUTE_TYPES[cls.quantization]
        if str(options.get("compute_type", allowed[0])) not in allowed:
            raise UsageError(f"{cls.name}: compute_type must be one of {', '.join(allowed)}")

    def prepare(self, model: ModelRef, settings: BackendSettings) -> dict[str, float]:
        from gpt2bench.backends.artifacts import cached_build

        fields = {
            "variant": self.name,
            "model_hash": model.weights_hash,
            "quantization": self.quantization,
            "ctranslate2": metadata.version("ctranslate2"),
            "convert_version": CONVERT_VERSION,
        }
        rebuild = bool(settings.options.get("rebuild", False))
        self.artifact: Built = cached_build(
            "ct2", fields, lambda tmp: _convert(model.path, tmp, self.quantization), rebuild, "CTranslate2 conversion"
        )
        return self.artifact.phases

    def load(self, model: ModelRef, settings: BackendSettings) -> dict[str, float]:
        import ctranslate2

        self.check_options(settings.options)
        if not hasattr(self, "artifact"):
            self.prepare(model, settings)
        folder = self.artifact.folder
        compute = str(settings.options.get("compute_type", COMPUTE_TYPES[self.quantization][0]))
        # inter_threads=1: one model replica, one job at a time; intra_threads: its GEMM threads.
        self.generator = ctranslate2.Generator(
            str(folder), device="cpu", compute_type=compute, intra_threads=settings.threads, inter_threads=1
        )
        self.vocab = json.loads((folder / "vocabulary.json").read_text())
        self._ct2 = ctranslate2
        return {}

    def generate(self, input_ids: np.ndarray, max_new_tokens: int, sampling: Sampling) -> Iterator[np.ndarray]:
        batch = input_ids.shape[0]
        prompts = [[self.vocab[int(i)] for i in row] for row in input_ids]
        if not sampling.greedy:
            self._ct2.set_random_seed(sampling.seed)
        steps = self.generator.generate_tokens(
            prompts,
            max_length=max_new_tokens,
            end_token=[],  # EOS never ends a sequence: exact lengths
            sampling_topk=1 if sampling.greedy else sampling.top_k,  # 0: the whole vocabulary
            sampling_topp=sampling.top_p,
            sampling_temperature=sampling.temperature or 1.0,
        )
        step = np.zeros(batch, dtype=np.int64)
        seen = 0
        for result in steps:
            step[result.batch_id] = result.token_id
            seen += 1
            if seen == batch:  # every sequence has its token of this step
                yield step.copy()
                seen = 0

    def logits(self, input_ids: np.ndarray) -> np.ndarray:
        out = self.generator.forward_batch(np.ascontiguousarray(input_ids, dtype=np.int32).tolist())
        return np.asarray(out, dtype=np.float32)

    def describe(self) -> dict[str, Any]:
        files = self.artifact.manifest.get("files", {})
        return {
            "compute_type": self.generator.compute_type,
            "model_mb": round(sum(f["size"] for f in files.values()) / 2**20, 1),
            "ctranslate2": metadata.version("ctranslate2"),
        }

    def close(self) -> None:
        self.generator = None


def _convert(model_dir: Path, out: Path, quantization: str) -> dict[str, Any]:
    """CTranslate2's Transformers converter into `out` (which exists: the cache's temporary folder)."""
    from ctranslate2.converters import TransformersConverter

    TransformersConverter(str(model_dir)).convert(
        str(out), quantization=None if quantization == "float32" else quantization, force=True
    )
    return {"quantization": quantization}


@register(
    "ct2",
    imports=("ctranslate2",),
    description="CTranslate2 (C++), float32, its step-wise generate_tokens",
    requires=REQUIRES,
    options=("rebuild", "compute_type"),
)
class Ct2Backend(_Ct2Backend):
    quantization = "float32"


@register(
    "ct2-int8",
    imports=("ctranslate2",),
    description="CTranslate2 (C++), int8 weights and GEMMs (activations quantized per row)",
    requires=REQUIRES,
    options=("rebuild", "compute_type"),
    weight_bytes=1,  # plus one float32 scale per output row
    compute_dtype="int8",
)
class Ct2Int8Backend(_Ct2Backend):
    quantization = "int8"
