"""This CPU's identity: its model name, family/model/stepping and the instruction sets that decide
which kernels it gets. Core, because compiled code is keyed on it (backends/aoti.py) as well as
measured roofs and result records (machine/)."""

from __future__ import annotations

import os
import platform
from pathlib import Path
from typing import Any

# The instruction sets that decide which kernels a backend gets: bf16 and int8 matmuls run natively
# with AVX512-BF16 / VNNI / AMX and are emulated (or widened to fp32) without them. A VM's model name
# alone ("AMD EPYC") does not tell an AVX2-only Zen 3 from a Zen 4 with AVX512-BF16.
ISA_FLAGS = ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "avx_vnni", "amx_bf16", "amx_int8", "asimd", "sve")


def _parse_cpuinfo(text: str) -> dict[str, str]:
    """The first processor's block of a /proc/cpuinfo text as {field: value}."""
    fields: dict[str, str] = {}
    for line in text.split("\n\n", 1)[0].splitlines():
        key, sep, value = line.partition(":")
        if sep:
            fields.setdefault(key.strip(), value.strip())
    return fields


def _cpuinfo_first() -> dict[str, str]:
    try:
        return _parse_cpuinfo(Path("/proc/cpuinfo").read_text())
    except OSError:
        return {}


def cpu_model() -> str:
    return _cpuinfo_first().get("model name") or platform.processor() or platform.machine()


def cpu_id() -> dict[str, Any]:
    """Vendor, family/model/stepping and the kernel-deciding ISA extensions of this CPU."""
    info = _cpuinfo_first()
    flags = set((info.get("flags") or info.get("Features") or "").split())
    return {
        "vendor": info.get("vendor_id") or info.get("CPU implementer"),
        "family": info.get("cpu family"),
        "model": info.get("model"),
        "stepping": info.get("stepping"),
        "isa": [flag for flag in ISA_FLAGS if flag in flags],
    }


def cpu_fingerprint() -> str:
    """A short hash of what decides this CPU's roofs: model name, family/model/stepping, the
    kernel-deciding instruction sets and the logical core count."""
    import hashlib
    import json

    ident = {"model_name": cpu_model(), **cpu_id(), "cores": os.cpu_count()}
    return hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:12]
