"""Quality through a backend's own logits path: perplexity, bits per byte, and agreement with the
fp32 reference (hf-eager), so a speed-up can be weighed against what it costs.

Perplexity follows the Hugging Face guide. Windows of `window` tokens start every `stride`
tokens; each window scores only the tokens no earlier window scored, each predicted from up to
window-1 tokens of context; the stream's first token is never scored. stride == window gives
disjoint windows, the cheap default; stride < window gives every token more context.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from gpt2bench.backends.base import Sampling, logits_nll
from gpt2bench.core.errors import UsageError
from gpt2bench.core.paths import cache_dir
from gpt2bench.core.progress import phase
from gpt2bench.measure.spec import QualitySettings

if TYPE_CHECKING:
    from tokenizers import Tokenizer

    from gpt2bench.backends.base import Backend
    from gpt2bench.models.ref import ModelRef

LogitsFn = Callable[[np.ndarray], np.ndarray]  # [1, seq] ids -> [1, seq, vocab] logits
NllFn = Callable[[np.ndarray], np.ndarray]  # [1, seq] ids -> [seq - 1] NLL of ids[1:]
LN2 = math.log(2)


def windows(n_tokens: int, window: int, stride: int) -> Iterator[tuple[int, int, int]]:
    """(begin, end, n_targets): the window is ids[begin:end] and its last n_targets tokens are scored."""
    prev_end = 1  # token 0 has no context and is never scored
    for begin in range(0, n_tokens, stride):
        end = min(begin + window, n_tokens)
        n_targets = end - max(prev_end, begin + 1)
        if n_targets <= 0:
            break
        yield begin, end, n_targets
        prev_end = end
        if end == n_tokens:
            break


@dataclass(frozen=True)
class Perplexity:
    ppl: float
    nll_sum: float  # nats
    tokens_scored: int
    bytes_scored: int
    windows: int

    @property
    def bits_per_byte(self) -> float:
        return self.nll_sum / LN2 / self.bytes_scored


def nll_from_logits(logits_fn: LogitsFn) -> NllFn:
    return lambda window: logits_nll(logits_fn(window)[0, :-1], window[0, 1:])


def perplexity(
    nll_fn: NllFn,
    ids: np.ndarray,
    token_bytes: np.ndarray,
    window: int,
    stride: int | None = None,
    max_windows: int | None = None,
    on_window: Callable[[], None] = lambda: None,
) -> Perplexity:
    """Token-level perplexity of the 1-D id stream `ids`; `token_bytes[id]` is the UTF-8 length of
    a token, for bits per byte. `nll_fn` scores one window (see Backend.token_nll); `on_window` is
    called after each."""
    stride = stride or window
    nll_sum, tokens, n_bytes, count = 0.0, 0, 0, 0
    for begin, end, n_targets in windows(len(ids), window, stride):
        if max_windows is not None and count == max_windows:
            break
        targets = ids[end - n_targets : end]
        nll_sum += float(nll_fn(ids[None, begin:end])[-n_targets:].sum())
        tokens += n_targets
        n_bytes += int(token_bytes[targets].sum())
        count += 1
        on_window()
    if tokens == 0:
        raise UsageError(f"the eval text is {len(ids)} token(s) long; perplexity needs at least 2")
    return Perplexity(math.exp(nll_sum / tokens), nll_sum, tokens, n_bytes, count)


@lru_cache(maxsize=1)
def _byte_decoder() -> dict[str, int]:
    """GPT-2's byte-level BPE shows each byte as a printable character; this maps them back."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    printable += list(range(ord("®"), ord("ÿ") + 1))
    chars = printable[:]
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + extra)
            extra += 1
    return {chr(c): b for b, c in zip(printable, chars, strict=True)}


def token_byte_lengths(tokenizer: Tokenizer) -> np.ndarray:
    """UTF-8 byte length of every token id (special tokens count as 0 bytes)."""
    decoder = _byte_decoder()
    vocab = tokenizer.get_vocab()
    lengths = np.zeros(max(vocab.values()) + 1, dtype=np.int64)
    for token, index in vocab.items():
        if all(ch in decoder for ch in token):
            lengths[index] = len(token)
    for index in tokenizer.get_added_tokens_decoder():  # <|endoftext|> is markup, not text
        lengths[index] = 0
    return lengths


def eval_ids(tokenizer: Tokenizer, settings: QualitySettings, window: int) -> np.ndarray:
    """The eval text as one id stream. Only as much text as the capped windows need is encoded."""
    text = settings.text.read_text(encoding="utf-8")
    if settings.max_windows is not None:
        need = (settings.max_windows - 1) * (settings.stride or window) + window + 1
        text = text[: need * 8]  # ~4.5 characters per token: generous
    return np.asarray(tokenizer.encode(text).ids, dtype=np.int64)


# ---- agreement with the fp32 reference ------------------------------------------------------


@dataclass(frozen=True)
class Agreement:
    greedy_match: float  # fraction of identical greedy tokens, free-running, over all prompts
    first_divergence: float  # mean over prompts of the first differing position (gen_len if none)
    # Free-running, one flipped near-tie sends the rest of a continuation down another path, so
    # greedy_match falls far more than the distributions differ (a tiny model's int8: 74% with KL
    # 1.5e-4). Teacher-forced, every position is judged on its own: llama.cpp's "same top p".
    top1_match: float  # fraction of positions whose most likely token is the reference's, teacher-forced
    kl_mean: float  # mean KL(reference || backend) of next-token distributions, teacher-forced
    # Of log-probabilities, not raw logits: a per-position constant changes no distribution, and
    # vLLM hands back only log-probs (raw, its row read 14 against hf-eager with KL 1e-13).
    max_abs_logprob_diff: float


def log_softmax(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    x = x - x.max(axis=-1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))


def agreement(ref_tokens: np.ndarray, ref_logits: np.ndarray, tokens: np.ndarray, logits: np.ndarray) -> Agreement:
    """tokens: [prompts, gen]; logits: [prompts, gen, vocab] at the positions that predict each
    generated token, both computed on the reference's sequence (teacher forcing)."""
    same = tokens == ref_tokens
    gen = tokens.shape[1]
    first = [int(np.argmin(row)) if not row.all() else gen for row in same]
    ref_lp, lp = log_softmax(ref_logits), log_softmax(logits)
    kl = (np.exp(ref_lp) * (ref_lp - lp)).sum(axis=-1)
    return Agreement(
        float(same.mean()),
        float(np.mean(first)),
        float((lp.argmax(axis=-1) == ref_lp.argmax(axis=-1)).mean()),
        float(kl.mean()),
        float(np.abs(lp - ref_lp).max()),
    )


def agreement_prompts(tokenizer: Tokenizer, settings: QualitySettings) -> np.ndarray:
    from gpt2bench.measure.prompts import make_prompts

    return make_prompts(tokenizer, settings.agreement_prompt_len, settings.agreement_prompts).input_ids


def teacher_forced_logits(logits_fn: LogitsFn, prompts: np.ndarray, continuation: np.ndarray) -> np.ndarray:
    """Logits predicting each continuation token, with the prompt and the preceding continuation
    as context: [prompts, gen, vocab]."""
    seqs = np.concatenate([prompts, continuation], axis=1)
    p, g = prompts.shape[1], continuation.shape[1]
    return np.stack([logits_fn(seqs[i : i + 1])[0, p - 1 : p + g - 1] for i in range(len(seqs))])


def greedy_continuations(backend: Backend, prompts: np.ndarray, gen_len: int) -> np.ndarray:
    """[prompts, gen]: each prompt generated alone (batch 1), as teacher_forced_logits scores them.
    A batch of its own would make a backend that compiles per batch size compile for quality alone:
    static-kv's agreement took 84 s at batch 4 (a max-autotune decode and prefill), measured on a Zen 4."""
    return np.concatenate([np.stack(list(backend.generate(p[None], gen_len, Sampling())), axis=1) for p in prompts])


def reference_path(model: ModelRef, settings: QualitySettings) -> Path:
    key = {
        "model_hash": model.weights_hash,
        "prompts": settings.agreement_prompts,
        "prompt_len": settings.agreement_prompt_len,
        "gen_len": settings.agreement_gen_len,
        "version": 2,  # 2: each prompt generated alone (1: the prompts as one batch)
    }
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    return cache_dir() / "reference" / f"hf-eager-fp32-{digest}.npz"


def reference(model: ModelRef, tokenizer: Tokenizer, settings: QualitySettings) -> tuple[np.ndarray, np.ndarray]:
    """(tokens, logits) of hf-eager fp32: computed once per model and settings, then cached."""
    from gpt2bench.core.fsutil import atomic_write_bytes

    path = reference_path(model, settings)
    try:
        with np.load(path) as data:
            return data["tokens"], data["logits"]
    except (OSError, KeyError, ValueError):
        pass
    with phase("quality: the hf-eager reference (once per model, cached)"):
        tokens, logits = _reference_outputs(model, tokenizer, settings)
    import io

    buf = io.BytesIO()
    np.savez(buf, tokens=tokens, logits=logits)
    atomic_write_bytes(path, buf.getvalue())
    return tokens, logits


def _reference_outputs(
    model: ModelRef, tokenizer: Tokenizer, settings: QualitySettings
) -> tuple[np.ndarray, np.ndarray]:
    import torch

    from gpt2bench.backends import BackendSettings, get_backend

    ref = get_backend("hf-eager").create()
    # Keep the process's thread count: load applies its setting to torch globally, and the cells a
    # sweep worker measures after this must run with the threads they were asked for.
    ref.load(model, BackendSettings(threads=torch.get_num_threads()))
    prompts = agreement_prompts(tokenizer, settings)
    tokens = greedy_continuations(ref, prompts, settings.agreement_gen_len)
    logits = teacher_forced_logits(ref.logits, prompts, tokens).astype(np.float32)
    ref.close()
    return tokens, logits


@dataclass(frozen=True)
class QualityResult:
    perplexity: Perplexity
    agreement: Agreement
    window: int
    stride: int

    def columns(self) -> dict[str, Any]:
        p, a = self.perplexity, self.agreement
        return {
            "ppl": p.ppl,
            "ppl_window": self.window,
            "ppl_stride": self.stride,
            "bits_per_byte": p.bits_per_byte,
            "ppl_tokens": p.tokens_scored,
            "ppl_windows": p.windows,
            "agree_greedy": a.greedy_match,
            "agree_first_divergence": a.first_divergence,
            "agree_top1": a.top1_match,
            "agree_kl_mean": a.kl_mean,
            "agree_max_abs_logprob": a.max_abs_logprob_diff,
        }


def evaluate(backend: Backend, model: ModelRef, tokenizer: Tokenizer, settings: QualitySettings) -> QualityResult:
    """Perplexity and agreement of a loaded backend, through its own generate and logits paths."""
    window = settings.window_for(model.n_positions())
    ids = eval_ids(tokenizer, settings, window)
    stride = settings.stride or window
    n = sum(1 for _ in windows(len(ids), window, stride))
    n = min(n, settings.max_windows) if settings.max_windows is not None else n
    with phase(f"quality: perplexity over {n} windows of {window} tokens", total=n) as progress:
        ppl = perplexity(
            backend.token_nll, ids, token_byte_lengths(tokenizer), window, stride, settings.max_windows, progress.step
        )
    ref_tokens, ref_logits = reference(model, tokenizer, settings)
    prompts = agreement_prompts(tokenizer, settings)
    with phase(f"quality: agreement with hf-eager on {len(prompts)} prompts"):
        tokens = greedy_continuations(backend, prompts, settings.agreement_gen_len)
        logits = teacher_forced_logits(backend.logits, prompts, ref_tokens)
    return QualityResult(ppl, agreement(ref_tokens, ref_logits, tokens, logits), window, settings.stride or window)
