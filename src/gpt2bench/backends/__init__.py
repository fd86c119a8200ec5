"""Importing this package registers every backend. Backend modules import only light modules at
the top, so this stays cheap (no torch)."""

from gpt2bench.backends import (
    hf,  # noqa: F401  (registers hf-eager, hf-fp16-dynq, hf-int8-dynq)
    onnx,  # noqa: F401  (registers onnx, onnx-opt, onnx-int8)
    static_kv,  # noqa: F401  (registers static-kv, static-kv-eager)
    vllm,  # noqa: F401  (registers vllm)
)
from gpt2bench.backends.base import REGISTRY, Backend, BackendInfo, BackendSettings, get_backend, register

__all__ = ["REGISTRY", "Backend", "BackendInfo", "BackendSettings", "get_backend", "register"]
