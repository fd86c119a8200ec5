"""Importing this package registers every backend: the built-in ones, then those of installed
plugins (plugins.py). Backend modules import only light modules at the top, so this stays cheap
(no torch)."""

from gpt2bench.backends import (
    hf,  # noqa: F401  (registers hf-eager, hf-fp16-dynq, hf-int8-dynq)
    onnx,  # noqa: F401  (registers onnx, onnx-opt, onnx-int8)
    static_kv,  # noqa: F401  (registers static-kv, static-kv-eager)
    vllm,  # noqa: F401  (registers vllm)
)
from gpt2bench.backends.base import (
    PLUGIN_ERRORS,
    REGISTRY,
    Backend,
    BackendInfo,
    BackendSettings,
    get_backend,
    register,
)
from gpt2bench.backends.plugins import load_plugins

PLUGIN_ERRORS.extend(load_plugins())

__all__ = ["PLUGIN_ERRORS", "REGISTRY", "Backend", "BackendInfo", "BackendSettings", "get_backend", "register"]
