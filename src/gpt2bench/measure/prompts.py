"""Deterministic prompts of exactly N tokens, the same ids for every backend.

Prompts are cut from the bundled WikiText-2 test text as consecutive windows of token ids, so row b
of a batch is ids[b*N:(b+1)*N]. Tokenization is timed here, once, and kept out of model timing.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from gpt2bench.core.errors import UsageError
from gpt2bench.core.paths import DEFAULT_TEXT

if TYPE_CHECKING:
    from tokenizers import Tokenizer

# Characters per GPT-2 token on English prose is ~4.5; start with a generous multiple and grow.
_CHARS_PER_TOKEN_GUESS = 8


@dataclass(frozen=True)
class Prompts:
    input_ids: np.ndarray  # int64 [batch, prompt_len]
    tokenize_s: float  # wall time to encode the source text the windows were cut from
    source: str

    @property
    def batch_size(self) -> int:
        return int(self.input_ids.shape[0])

    @property
    def prompt_len(self) -> int:
        return int(self.input_ids.shape[1])


def make_prompts(tokenizer: Tokenizer, prompt_len: int, batch_size: int, text_path: Path = DEFAULT_TEXT) -> Prompts:
    if prompt_len < 1 or batch_size < 1:
        raise UsageError("prompt length and batch size must be at least 1")
    text = text_path.read_text(encoding="utf-8")
    need = prompt_len * batch_size
    n_chars = need * _CHARS_PER_TOKEN_GUESS
    while True:
        chunk = text[:n_chars]
        t0 = time.perf_counter()
        ids = tokenizer.encode(chunk).ids
        tokenize_s = time.perf_counter() - t0
        # The last token may be cut mid-word by the character slice, so demand one spare.
        if len(ids) > need or n_chars >= len(text):
            break
        n_chars *= 2
    if len(ids) < need:
        raise UsageError(f"{text_path.name} has {len(ids)} tokens, fewer than prompt-len x batch-size = {need}")
    rows = np.asarray(ids[:need], dtype=np.int64).reshape(batch_size, prompt_len)
    return Prompts(rows, tokenize_s, text_path.name)
