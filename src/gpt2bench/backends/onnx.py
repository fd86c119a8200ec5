"""ONNX Runtime backends: `onnx` (our export, past key/values as explicit inputs/outputs),
`onnx-opt` (onnxruntime's GPT-2 transformer fusions), `onnx-int8` (dynamic int8 of onnx-opt).

Export, optimization and quantization happen in `prepare` (cached; see onnx_export.py), so load
time is session creation alone. The decode loop is plain: feed the presents back as the next
step's past. On CUDA, IO binding keeps the cache on the device between steps; on the CPU it would
only add copies, so plain `run` is used.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from gpt2bench.backends.base import Backend, BackendSettings, check_bool_options, register
from gpt2bench.backends.sampling import host_decode
from gpt2bench.core.errors import BenchError, UsageError

if TYPE_CHECKING:
    from gpt2bench.backends.base import Sampling
    from gpt2bench.models.ref import ModelRef

REQUIRES = (("onnxruntime", "onnx"), ("onnx", "onnx"))
COMMON_OPTIONS = ("rebuild", "ort_opt_level")
OPT_LEVELS = ("disable", "basic", "extended", "all")
# Chosen on one measurement of random GPT-2 124M on a 2-core CPU (prompt 50, gen 100, 5 repeats;
# logits of 4x128-token prompts against hf-eager fp32):
#   weights            TPOT     mean KL    top-1 agreement
#   QInt8 per-channel  7.9 ms   2.2e-4     0.92
#   QInt8 per-tensor   8.3 ms   3.1e-4     0.89
#   QUInt8 per-channel 9.6 ms   2.2e-4     0.88
#   QUInt8 per-tensor  9.2 ms   3.0e-4     0.90
# Per-channel scales cut the KL by ~30% (one scale per matrix lets outlier columns squeeze every
# other column's resolution) and cost nothing here; signed weights hit the faster s8 kernels.
# Override with --option weight_type=QUInt8 --option per_channel=false.
DEFAULT_WEIGHT_TYPE = "QInt8"
DEFAULT_PER_CHANNEL = True


def execution_providers(device: str) -> list[Any]:
    """ONNX Runtime's providers for `device`. The CUDA provider runs fp32 MatMul and Conv in TF32
    by default (10-bit mantissas) on Ampere and later, where torch and vLLM run true fp32: off, so
    an "fp32" row means the same arithmetic on every backend. Every ONNX backend here is fp32."""
    if device == "cuda":
        return [("CUDAExecutionProvider", {"use_tf32": "0"}), "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


class _OrtBackend(Backend):
    variant: ClassVar[str]

    def prepare(self, model: ModelRef, settings: BackendSettings) -> dict[str, float]:
        from gpt2bench.backends.onnx_export import build

        self.artifact = build(
            model, self.variant, self._build_options(settings), rebuild=bool(settings.options.get("rebuild", False))
        )
        return self.artifact.phases

    @classmethod
    def check_options(cls, options: dict[str, Any]) -> None:
        check_bool_options(options, "rebuild")
        level = str(options.get("ort_opt_level", "all"))
        if level not in OPT_LEVELS:
            raise UsageError(f"ort_opt_level must be one of {', '.join(OPT_LEVELS)}, got '{level}'")

    def _build_options(self, settings: BackendSettings) -> dict[str, Any]:
        # onnx-opt's fusions differ for the GPU (attention kernels the CUDA provider has): a GPU run
        # optimizes for it, into an artifact of its own.
        return {"use_gpu": settings.device == "cuda"} if self.variant == "onnx-opt" else {}

    def load(self, model: ModelRef, settings: BackendSettings) -> dict[str, float]:
        import onnxruntime as ort

        from gpt2bench.backends.onnx_export import past_names, present_names

        if not hasattr(self, "artifact"):
            self.prepare(model, settings)
        self.check_options(settings.options)
        level = str(settings.options.get("ort_opt_level", "all"))
        options = ort.SessionOptions()
        options.intra_op_num_threads = settings.threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.log_severity_level = 3  # errors only: its warnings about our graph are not the user's concern
        options.graph_optimization_level = {
            "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
            "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
            "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
            "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
        }[level]
        self.cuda = settings.device == "cuda"
        if self.cuda and "CUDAExecutionProvider" not in ort.get_available_providers():
            raise BenchError(
                "--device cuda needs onnxruntime's CUDA provider: pip install onnxruntime-gpu (in place of onnxruntime)"
            )
        providers = execution_providers(settings.device)
        self.session = ort.InferenceSession(str(self.artifact.path), options, providers=providers)
        self._session_args = (options, providers)
        config = model.config()
        self.n_layer = int(config["n_layer"])
        self.n_head = int(config["n_head"])
        self.head_dim = int(config["n_embd"]) // self.n_head
        self.past_names = past_names(self.n_layer)
        self.present_names = present_names(self.n_layer)
        self._ort = ort
        return {}

    def _empty_past(self, batch: int) -> dict[str, Any]:
        empty = np.zeros((batch, self.n_head, 0, self.head_dim), dtype=np.float32)
        if self.cuda:
            return {n: self._ort.OrtValue.ortvalue_from_numpy(empty, "cuda", 0) for n in self.past_names}
        return dict.fromkeys(self.past_names, empty)

    def _run(
        self, ids: np.ndarray, past_len: int, past: dict[str, Any], all_logits: bool = False
    ) -> tuple[np.ndarray, dict[str, Any]]:
        """One forward pass; logits for the last position only unless `all_logits`."""
        batch, seq = ids.shape
        feed = {
            "input_ids": ids,
            "attention_mask": np.ones((batch, past_len + seq), dtype=np.int64),
            "position_ids": np.broadcast_to(np.arange(past_len, past_len + seq, dtype=np.int64), (batch, seq)).copy(),
            "logits_positions": np.arange(seq, dtype=np.int64) if all_logits else np.array([seq - 1], dtype=np.int64),
        }
        if not self.cuda:
            outputs = self.session.run(None, {**feed, **past})
            return outputs[0], dict(zip(self.past_names, outputs[1:], strict=True))
        binding = self.session.io_binding()
        for name, value in feed.items():
            binding.bind_cpu_input(name, value)
        for name, value in past.items():
            binding.bind_ortvalue_input(name, value)
        binding.bind_output("logits", "cpu")  # sampled on the host
        for name in self.present_names:
            binding.bind_output(name, "cuda")
        self.session.run_with_iobinding(binding)
        outputs = binding.get_outputs()
        return outputs[0].numpy(), dict(zip(self.past_names, outputs[1:], strict=True))

    def generate(self, input_ids: np.ndarray, max_new_tokens: int, sampling: Sampling) -> Iterator[np.ndarray]:
        past = self._empty_past(input_ids.shape[0])

        def forward(ids: np.ndarray, past_len: int) -> np.ndarray:
            nonlocal past
            logits, past = self._run(ids, past_len, past)  # the presents are the next step's past
            return logits

        yield from host_decode(forward, input_ids, max_new_tokens, sampling)

    def logits(self, input_ids: np.ndarray) -> np.ndarray:
        ids = np.ascontiguousarray(input_ids, dtype=np.int64)
        logits, _ = self._run(ids, 0, self._empty_past(ids.shape[0]), all_logits=True)
        return logits.astype(np.float32, copy=False)

    def trace(self, run: Callable[[], None], out_dir: Path) -> Path | None:
        """ONNX Runtime's own profiler (per-node timings, JSON in Chrome trace format). It is a
        session option, so `run` goes through a second, profiling session."""
        options, providers = self._session_args
        profiled = self._ort.SessionOptions()
        for name in (
            "intra_op_num_threads",
            "inter_op_num_threads",
            "execution_mode",
            "graph_optimization_level",
            "log_severity_level",
        ):
            setattr(profiled, name, getattr(options, name))
        profiled.enable_profiling = True
        profiled.profile_file_prefix = str(out_dir / "ort_profile")
        plain, self.session = (
            self.session,
            self._ort.InferenceSession(str(self.artifact.path), profiled, providers=providers),
        )
        try:
            run()
            return Path(self.session.end_profiling())
        finally:
            self.session = plain

    def describe(self) -> dict[str, Any]:
        info = dict(self.artifact.manifest.get("info", {}))
        info["onnx_mb"] = round(self.artifact.path.stat().st_size / 2**20, 1)
        info["providers"] = self.session.get_providers()
        if self.cuda:  # what the session runs with, as the provider reports it
            info["cuda_use_tf32"] = self.session.get_provider_options().get("CUDAExecutionProvider", {}).get("use_tf32")
        return info

    def close(self) -> None:
        self.session = None


@register(
    "onnx",
    imports=("onnxruntime", "onnx"),
    description="ONNX Runtime, our GPT-2 export with past key/values",
    requires=REQUIRES,
    devices=("cpu", "cuda"),
    options=COMMON_OPTIONS,
    kv_reads="concat",  # Concat(past, new) -> present every step, then attention
)
class OnnxBackend(_OrtBackend):
    variant = "onnx"


@register(
    "onnx-opt",
    imports=("onnxruntime", "onnx"),
    description="onnx after onnxruntime's GPT-2 fusions (LayerNorm, Gelu, ...)",
    requires=REQUIRES,
    devices=("cpu", "cuda"),
    options=COMMON_OPTIONS,
    kv_reads="concat",  # Concat(past, new) -> present every step, then attention
)
class OnnxOptBackend(_OrtBackend):
    variant = "onnx-opt"


@register(
    "onnx-int8",
    imports=("onnxruntime", "onnx"),
    description="onnx-opt with dynamic int8 weights (onnxruntime.quantization)",
    requires=REQUIRES,
    devices=("cpu",),
    options=(*COMMON_OPTIONS, "weight_type", "per_channel"),
    weight_bytes=1,
    compute_dtype="int8",  # dynamic quantization: activations quantized per call, int8 x int8
    kv_reads="concat",  # Concat(past, new) -> present every step, then attention
)
class OnnxInt8Backend(_OrtBackend):
    variant = "onnx-int8"

    @classmethod
    def check_options(cls, options: dict[str, Any]) -> None:
        super().check_options(options)
        if str(options.get("weight_type", DEFAULT_WEIGHT_TYPE)) not in ("QInt8", "QUInt8"):
            raise UsageError(f"weight_type must be QInt8 or QUInt8, got '{options['weight_type']}'")
        check_bool_options(options, "per_channel")

    def _build_options(self, settings: BackendSettings) -> dict[str, Any]:
        self.check_options(settings.options)
        return {
            "weight_type": str(settings.options.get("weight_type", DEFAULT_WEIGHT_TYPE)),
            "per_channel": settings.options.get("per_channel", DEFAULT_PER_CHANNEL),
        }
