"""Test-only backends for `gpt2bench ab`'s proof that it detects a slowdown: `delayed-hf-eager` and
`delayed-onnx-int8` run the real backend and then spin for GPT2BENCH_TEST_DELAY (a fraction, e.g.
0.10) of each step's own time, so every step (prefill and decode) takes that much longer, as a
regression of the code would. Never shipped: this folder is a plugin distribution that the tests
and scripts/bench_ab.py put on PYTHONPATH; an A/B run sets the variable for one side only
(`--new-env GPT2BENCH_TEST_DELAY=0.1`).

It reads a clock, which a product backend never does: the delay must be a fraction of a step whose
length only a clock knows. Spinning, not sleeping, keeps the core busy as slower code would.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from typing import Any

from gpt2bench.backends.base import get_backend, register

DELAY_ENV = "GPT2BENCH_TEST_DELAY"
INNER = ("hf-eager", "onnx-int8")


def _spin(seconds: float) -> None:
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass


def _delayed(inner: str) -> None:
    info = get_backend(inner)

    class Delayed(info.cls):  # type: ignore[misc, valid-type]
        fraction = 0.0

        def load(self, model: Any, settings: Any) -> dict[str, float]:
            self.fraction = float(os.environ.get(DELAY_ENV) or 0)
            return super().load(model, settings)

        def generate(self, input_ids: Any, max_new_tokens: int, sampling: Any) -> Iterator[Any]:
            steps = super().generate(input_ids, max_new_tokens, sampling)
            while True:
                start = time.perf_counter()
                try:
                    step = next(steps)
                except StopIteration:
                    return
                if self.fraction:
                    _spin(self.fraction * (time.perf_counter() - start))
                yield step

        def describe(self) -> dict[str, Any]:
            return {**super().describe(), "injected_delay": self.fraction}

    register(
        f"delayed-{inner}",
        description=f"{inner}, each step {DELAY_ENV} (a fraction) slower: a test backend",
        requires=info.requires,
        devices=info.devices,
        dtypes=info.dtypes,
        options=info.options,
        imports=info.imports,
        weight_bytes=info.weight_bytes,
        compute_dtype=info.compute_dtype,
        kv_reads=info.kv_reads,
        kv_slot_round=info.kv_slot_round,
        kv_bytes=info.kv_bytes,
    )(Delayed)


for _name in INNER:
    _delayed(_name)
