"""A backend that does no work, behind the real server, so a load test can measure what the client,
HTTP and the server framework cost on their own (serving/load.client_overhead). Never registered:
`gpt2bench backends` does not list it and no sweep can pick it."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np

from gpt2bench.backends.base import Backend, Sampling


class NoWork(Backend):
    name = "no-work"

    def load(self, model: Any, settings: Any) -> dict[str, float]:
        return {}

    def generate(self, input_ids: np.ndarray, max_new_tokens: int, sampling: Sampling) -> Iterator[np.ndarray]:
        ids = np.zeros(input_ids.shape[0], dtype=np.int64)
        for _ in range(max_new_tokens):
            yield ids

    def logits(self, input_ids: np.ndarray) -> np.ndarray:
        raise NotImplementedError("the no-work server computes nothing")
