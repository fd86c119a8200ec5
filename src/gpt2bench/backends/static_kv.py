"""`static-kv`: our GPT-2 (gpt2.py) with a preallocated KV cache, compiled by inductor.

On the CPU the decode step is compiled in "max-autotune-no-cudagraphs" mode with weight freezing,
as an AOTInductor package kept on disk, so the next process loads it in seconds instead of compiling
it again (aoti.py; `compiler: dynamo` compiles in-process with torch.compile instead). On CUDA it is
torch.compile'd with "reduce-overhead" (CUDA graphs), fullgraph. Prefill and the one-token decode
step are compiled separately: prefill with a dynamic length, decode with the fixed shapes the static
cache gives it, so one graph serves every token. The cache is allocated once per batch size for the
model's whole context; each cell's attention reads a window of it sized for the cell (prompt +
generation, rounded up to 64 slots), and that window's length is the one dynamic size of the decode
graph, so one graph serves every cell of a sweep. `setup` sizes the window and compiles (or loads)
before warm-up; the harness reports that time as setup_s, never in TTFT.

No host sync inside a step (static_kv_steps.py): the next token stays on the device and feeds the
next step and the position is a device tensor advanced in place. The only sync is the copy of each
step's ids to the host, which the harness needs to timestamp tokens.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from gpt2bench.backends.aoti import PackagedStep, package_dir
from gpt2bench.backends.base import Backend, BackendSettings, register
from gpt2bench.backends.static_kv_steps import (
    COMPILE_MODES,
    COMPILERS,
    DEFAULT_MODE,
    MODE_OPTIONS,
    aoti_steps,
    cudagraph_skips,
    dynamo_steps,
    eager_steps,
)
from gpt2bench.backends.torch_common import (
    TorchDevice,
    compile_cache_state,
    emulated_on_cpu,
    inductor_cache_state,
    torch_device,
    torch_dtype,
)
from gpt2bench.core import progress
from gpt2bench.core.errors import UsageError

if TYPE_CHECKING:
    import torch

    from gpt2bench.backends.base import Sampling
    from gpt2bench.models.ref import ModelRef

CACHE_ROUND = 64  # the attention window, rounded up: the slots a cell's decode step reads
RECOMPILE_LIMIT = 64  # graphs kept per step function (dynamo's default: 8)
# Where bf16/fp16 is emulated, calls with at least this many rows (batch x tokens) run their GEMMs
# in fp32 from widened weights. Measured on a Zen 3, 124M bf16: widening costs ~40 ms a call and
# the templated bf16 GEMMs ~4 ms a row, so below ~10-16 rows the template wins (prompt 8: 37 ms
# against ~80), above it widening does (prompt 50: 215 -> ~140 ms; prompt 900: 3.6 -> 1.4 s).
WIDEN_ROWS = 16


class _StaticKV(TorchDevice, Backend):
    compiled: ClassVar[bool]
    resets: ClassVar[int] = 0  # dynamo resets by static-kv instances in this process

    @classmethod
    def check_options(cls, options: dict[str, Any]) -> None:
        mode = options.get("compile_mode")
        if mode is not None and mode not in COMPILE_MODES:
            raise UsageError(f"compile_mode must be one of {', '.join(COMPILE_MODES)}, got '{mode}'")
        compiler = options.get("compiler")
        if compiler is not None and compiler not in COMPILERS["cpu"]:
            raise UsageError(f"compiler must be one of {', '.join(COMPILERS['cpu'])}, got '{compiler}'")

    def load(self, model: ModelRef, settings: BackendSettings) -> dict[str, float]:
        from gpt2bench.backends.gpt2 import GPT2

        self.check_options(settings.options)
        self.device = torch_device(settings.device, settings.threads)
        self.dtype = torch_dtype(settings.dtype)
        self.model = GPT2.from_hf(model.path, self.dtype, self.device)
        self.mode = settings.options.get("compile_mode", DEFAULT_MODE[self.device.type]) if self.compiled else None
        self.compiler = settings.options.get("compiler", COMPILERS[self.device.type][0]) if self.compiled else None
        if self.compiler is not None and self.compiler not in COMPILERS[self.device.type]:
            raise UsageError(f"compiler {self.compiler} is CPU-only: CUDA takes torch.compile (compiler: dynamo)")
        self.weights_hash = model.weights_hash
        self.emulated = emulated_on_cpu(self.dtype, self.device)
        self.wants_graphs = MODE_OPTIONS.get(self.mode or "default", {}).get("triton.cudagraphs", False)
        self.cudagraphs = self.device.type == "cuda" and self.wants_graphs
        self._skips_at_compile = cudagraph_skips()
        self.shape: tuple[int, int] | None = None  # (batch, window)
        self._slots: torch.Tensor | None = None  # arange(window)
        self._compiled = False
        self._caches: dict[int, list[torch.Tensor]] = {}  # batch size: k, v of every layer
        cache = compile_cache_state(package_dir()) if self.compiler == "aoti" else inductor_cache_state()
        self.compile_cache = cache if self.mode is not None else "none"
        return {}

    def _compile(self) -> None:
        """Build the step functions, once per instance. Packaged steps load (or build) on first use;
        torch.compile'd ones compile then and are kept for the instance's life: one decode graph per
        batch size and sampling setting, whatever the window."""
        import torch

        self._compiled = True
        self._warm: set[tuple[tuple[int, int], float, int, float]] = set()  # (batch, window, sampling) decoded
        if self.mode is None:
            self._steps = eager_steps(self.emulated)
            return
        # This instance's graphs only: graphs left by another instance in the process (a test's, a
        # profile's) would share the step functions' dynamo cache and its recompile limit, and were
        # measured to slow a tiny model's decode ~17% through guard checks.
        torch._dynamo.reset()
        _StaticKV.resets += 1
        self._epoch = _StaticKV.resets
        # Graphs are kept per batch size, sampling setting and prompt-length class: a long-lived
        # process must not hit the default limit of 8 (fullgraph makes that an error).
        torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, RECOMPILE_LIMIT)
        self._skips_at_compile = cudagraph_skips()
        if self.compiler == "aoti":
            self._steps = aoti_steps(self.mode, self.emulated, self.weights_hash)
        else:
            self._steps = dynamo_steps(self.device.type, self.mode, self.emulated)

    def _ensure_cache(self, batch: int, length: int) -> None:
        """Size the attention window for this call (prompt + generation, rounded up), since attention
        reads every slot of it: a window left large by an earlier, longer cell would slow a short
        cell and make a sweep's numbers depend on its order. The window is the decode graph's
        dynamic size, so changing it compiles nothing (a new batch size does)."""
        import torch

        window = min(self.model.cfg.n_positions, -(-length // CACHE_ROUND) * CACHE_ROUND)
        if self.shape == (batch, window):
            return
        if self.shape is None or self.shape[0] != batch:
            self._use_cache(batch)
        self.shape = (batch, window)
        self._slots = torch.arange(window, device=self.device)
        if not self._compiled:
            self._compile()
        if self.mode is not None:
            # Without this dynamo would specialize the first window it sees and compile anew for each
            # other one (45-57 s a window for 124M at max-autotune, measured on a Zen 4).
            torch._dynamo.mark_dynamic(self._slots, 0)

    def _use_cache(self, batch: int) -> None:
        """Point the model at this batch size's cache, allocated on first use and then kept. Compiled
        graphs are guarded on the identity of the cache tensors (frozen graphs take them as inputs by
        identity), so a batch size seen before finds its graphs again. It holds the model's context
        and one round more: a window as long as the cache would be a slice of all of it, which dynamo
        specializes (a second graph) instead of reading it as the one dynamic length."""
        kept = self._caches.get(batch)
        if kept is None:
            self.model.setup_caches(batch, self.model.cfg.n_positions + CACHE_ROUND)
            self._caches[batch] = [t for c in self._kv_modules() for t in (c.k, c.v)]
            return
        for cache, k, v in zip(self._kv_modules(), kept[::2], kept[1::2], strict=True):
            cache.k, cache.v = k, v

    def _kv_modules(self) -> list[Any]:
        return [block.attn.kv_cache for block in self.model.h]

    def setup(self, batch_size: int, prompt_len: int, max_new_tokens: int, sampling: Sampling) -> dict[str, float]:
        """Allocate the cache for this cell and compile by generating once with its shapes."""
        self._ensure_cache(batch_size, prompt_len + max_new_tokens)
        dummy = np.zeros((batch_size, prompt_len), dtype=np.int64)
        # A short generation on the cell's cache, not `generate`: that would size the cache (and
        # compile) for the short generation, leaving the cell's compile to its first timed call.
        what = "a first generation at"
        if self.mode is not None:
            what = f"{'packages' if self.compiler == 'aoti' else 'compiling'} (mode {self.mode}) for"
        with progress.phase(f"static-kv: {what} batch {batch_size}, window {self.shape[1]}"):
            for _ in self._generate(dummy, min(max_new_tokens, 3), sampling):
                pass
        return {}

    def _params(self, sampling: Sampling) -> tuple[float, int, float]:
        return float(sampling.temperature), int(sampling.top_k), float(sampling.top_p)

    def generate(self, input_ids: np.ndarray, max_new_tokens: int, sampling: Sampling) -> Iterator[np.ndarray]:
        batch, seq = input_ids.shape
        self._ensure_cache(batch, seq + max_new_tokens)
        return self._generate(input_ids, max_new_tokens, sampling)

    def _generate(self, input_ids: np.ndarray, max_new_tokens: int, sampling: Sampling) -> Iterator[np.ndarray]:
        import torch

        batch, seq = input_ids.shape
        params = self._params(sampling)
        with torch.inference_mode():
            if not sampling.greedy:
                torch.manual_seed(sampling.seed)
            idx = self.ids(input_ids)
            positions = torch.arange(seq, device=self.device)
            wide = self._steps.wide_prefill is not None and batch * seq >= WIDEN_ROWS
            if seq == 1 and not wide:
                # A one-token prompt is a decode step at position 0, so the decode graph serves it: a
                # prefill graph of its own (dynamo specializes length 1) cost a 32 s compile at 124M.
                token = self._step(idx, positions, params)
            else:
                prefill = self._steps.wide_prefill if wide else self._steps.prefill
                token = prefill(self.model, idx, positions, self._slots, *params)
            pos = torch.tensor([seq], device=self.device)  # advanced in place on the device
        yield token.cpu().numpy()
        # Once these sampling parameters have run a decode step on the current graphs, dynamo's guards
        # (~600 of them, mostly over the module tree: ~0.4 ms a token, 4% of a bf16 step here) can
        # only pick the graph we already know, so only the guards that tell our graphs apart run.
        # Parameters not seen yet take the full guards, which compile them a graph of their own.
        seen = (self.shape, *params)
        trusted = self._trusted(seen)
        for _ in range(max_new_tokens - 1):
            with torch.inference_mode(), torch.compiler.set_stance(skip_guard_eval_unsafe=trusted):
                token = self._step(token.view(batch, 1), pos, params)
                pos += 1
            self._warm.add(seen)
            yield token.cpu().numpy()

    def _step(self, token: torch.Tensor, pos: torch.Tensor, params: tuple[float, int, float]) -> torch.Tensor:
        """One decode step: [batch, 1] ids at position pos [1] -> the next [batch] ids."""
        import torch

        if self.cudagraphs:
            torch.compiler.cudagraph_mark_step_begin()
        token = self._steps.decode(self.model, token, pos, self._slots, *params)
        return token.clone() if self.cudagraphs else token  # a graph's output is overwritten on replay

    def _trusted(self, seen: tuple[Any, ...]) -> bool:
        """Whether decoding `seen` (shape and sampling) may skip dynamo's guards: only on graphs this
        instance has run. Another instance's first compile resets dynamo, and with it ours: they
        compile again, under full guards (skipped, dynamo refuses to recompile and raises)."""
        if self.mode is None:
            return False
        if self._epoch != _StaticKV.resets:
            self._warm.clear()
            self._epoch = _StaticKV.resets
        return seen in self._warm

    def logits(self, input_ids: np.ndarray) -> np.ndarray:
        import torch

        batch, seq = input_ids.shape
        self._ensure_cache(batch, seq)
        with torch.inference_mode():
            idx = self.ids(input_ids)
            pos = torch.arange(seq, device=self.device)
            return self._steps.full(self.model, idx, pos, self._slots).float().cpu().numpy()

    def cache_tensors(self) -> list[torch.Tensor]:
        return [t for block in self.model.h for t in (block.attn.kv_cache.k, block.attn.kv_cache.v)]

    def describe(self) -> dict[str, Any]:
        info: dict[str, Any] = {
            "compile_mode": self.mode or "eager",
            "compiler": self.compiler or "eager",
            "cuda_graphs": False,
            "compile_cache": self.compile_cache,
        }
        packaged = self._packaged()
        if packaged:
            built, loaded = sum(s.built for s in packaged), sum(s.loaded for s in packaged)
            info["aoti_packages"] = {"built": built, "loaded": loaded}
            # What this process did: built a package (cold) or only loaded what an earlier one built.
            info["compile_cache"] = "cold" if built else "warm" if loaded else self.compile_cache
        elif self.wants_graphs:
            # What happened, not what was asked: inductor falls back to plain kernels, with only a log
            # line, when a graph cannot be captured (a CPU tensor in the step, a mutated input, ...).
            # Packages never capture CUDA graphs (they serve the CPU only).
            skipped = cudagraph_skips() - self._skips_at_compile
            info["cuda_graphs"] = self.cudagraphs and skipped == 0
            info["cuda_graph_skips"] = skipped
        if self.shape:
            caches = self.cache_tensors()
            info["cache_shape"] = list(caches[0].shape)  # allocated: the context and a round more
            info["cache_len"] = self.shape[1]  # the window attention reads, a column of the row
            info["cache_mb"] = round(sum(t.numel() * t.element_size() for t in caches) / 2**20, 1)
        return info

    def _packaged(self) -> list[PackagedStep]:
        steps = vars(self._steps).values() if self._compiled else []
        return [step for step in steps if isinstance(step, PackagedStep)]

    def close(self) -> None:
        self.model = None


@register(
    "static-kv",
    imports=("torch", "safetensors"),
    description="our GPT-2, static KV cache, compiled (CPU: AOTInductor packages kept on disk; CUDA: CUDA graphs)",
    devices=("cpu", "cuda"),
    dtypes=("fp32", "bf16", "fp16"),
    options=("compile_mode", "compiler"),
    kv_reads="allocated",  # attention reads every slot of the preallocated cache
    kv_slot_round=CACHE_ROUND,
)
class StaticKVCompiled(_StaticKV):
    compiled = True


@register(
    "static-kv-eager",
    imports=("torch", "safetensors"),
    description="static-kv without torch.compile (the same model, eager PyTorch)",
    devices=("cpu", "cuda"),
    dtypes=("fp32", "bf16", "fp16"),
    kv_reads="allocated",  # attention reads every slot of the preallocated cache
    kv_slot_round=CACHE_ROUND,
)
class StaticKVEager(_StaticKV):
    compiled = False
