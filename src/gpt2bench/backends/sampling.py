"""Next-token selection on numpy logits, for backends whose logits arrive as numpy (ONNX Runtime).
Same rules as backends/torch_common.select_next: argmax when greedy, else temperature, top-k, top-p."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import numpy as np

from gpt2bench.backends.base import Sampling


def make_rng(sampling: Sampling) -> np.random.Generator | None:
    return None if sampling.greedy else np.random.default_rng(sampling.seed)


def select_next(logits: np.ndarray, sampling: Sampling, rng: np.random.Generator | None) -> np.ndarray:
    """[batch, vocab] logits -> [batch] int64 token ids."""
    if sampling.greedy or rng is None:
        return logits.argmax(axis=-1).astype(np.int64)
    scores = logits.astype(np.float64) / sampling.temperature
    if sampling.top_k:
        k = min(sampling.top_k, scores.shape[-1])
        kth = np.partition(scores, -k, axis=-1)[:, -k][:, None]
        scores = np.where(scores < kth, -np.inf, scores)
    if sampling.top_p < 1.0:
        order = np.argsort(-scores, axis=-1)
        sorted_scores = np.take_along_axis(scores, order, axis=-1)
        probs = _softmax(sorted_scores)
        # Drop a token when the mass before it already reaches top_p; the best token always stays.
        drop_sorted = (np.cumsum(probs, axis=-1) - probs) >= sampling.top_p
        drop = np.empty_like(drop_sorted)
        np.put_along_axis(drop, order, drop_sorted, axis=-1)
        scores = np.where(drop, -np.inf, scores)
    probs = _softmax(scores)
    return np.array([rng.choice(probs.shape[-1], p=row) for row in probs], dtype=np.int64)


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def host_decode(
    forward: Callable[[np.ndarray, int], np.ndarray], input_ids: np.ndarray, max_new_tokens: int, sampling: Sampling
) -> Iterator[np.ndarray]:
    """The decode loop of the backends that return logits to the host (ONNX Runtime, OpenVINO,
    llama.cpp): `forward(ids, past_len)` runs ids [batch, seq] after past_len cached positions and
    returns logits [batch, kept, vocab]; the prompt first, then one chosen token per step."""
    rng = make_rng(sampling)
    ids = np.ascontiguousarray(input_ids, dtype=np.int64)
    past_len = 0
    for _ in range(max_new_tokens):
        logits = forward(ids, past_len)
        past_len += ids.shape[1]
        nxt = select_next(logits[:, -1, :], sampling, rng)
        yield nxt
        ids = nxt[:, None]
