"""Importing this package registers every built-in backend; other packages' backends (plugins.py)
are imported only when a name is not built in or every backend is listed. Backend modules import
only light modules at the top, so this stays cheap (no torch)."""

from gpt2bench.backends import (
    ct2,  # noqa: F401  (registers ct2, ct2-int8)
    genai,  # noqa: F401  (registers onnx-genai, onnx-genai-int8)
    hf,  # noqa: F401  (registers hf-eager, hf-fp16-dynq, hf-int8-dynq)
    llamacpp,  # noqa: F401  (registers llamacpp, llamacpp-f16, llamacpp-q8_0, llamacpp-q4_0)
    onnx,  # noqa: F401  (registers onnx, onnx-opt, onnx-int8)
    openvino,  # noqa: F401  (registers openvino, openvino-int8)
    static_kv,  # noqa: F401  (registers static-kv, static-kv-eager)
    vllm,  # noqa: F401  (registers vllm)
)
from gpt2bench.backends.base import (
    REGISTRY,
    Backend,
    BackendInfo,
    BackendSettings,
    Sampling,
    all_backends,
    get_backend,
    plugin_errors,
    register,
)

__all__ = [
    "REGISTRY",
    "Backend",
    "BackendInfo",
    "BackendSettings",
    "Sampling",
    "all_backends",
    "get_backend",
    "plugin_errors",
    "register",
]
