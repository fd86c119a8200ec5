import gc
import math
import time
from collections.abc import Iterator

import numpy as np
import pytest

from conftest import TINY, load_backend
from gpt2bench.backends.base import Backend, Sampling
from gpt2bench.core.errors import BenchError
from gpt2bench.measure.harness import measure, timed_generation
from gpt2bench.measure.metrics import burst_warning
from gpt2bench.measure.prompts import make_prompts
from gpt2bench.models.resolve import build_random_model, resolve_model

EOS = 50256


def test_exact_token_counts_and_timestamps(tiny_model, tokenizer):
    backend = load_backend("hf-eager", tiny_model)
    prompts = make_prompts(tokenizer, 9, 2)
    m = measure(backend, prompts, gen_len=7, sampling=Sampling(), warmup=2, repeats=3)
    assert len(m.runs) == 3 and len(m.generations) == 3  # warm-up runs are not in the statistics
    for g in m.generations:
        assert g.tokens.shape == (2, 7)
        assert len(g.token_ns) == 7
        assert g.start_ns < g.token_ns[0] and list(g.token_ns) == sorted(g.token_ns)
    assert m.tokens_per_run == 14
    assert m.tokens_consistent  # greedy: every repetition gives the same ids
    for r in m.runs:
        assert 0 < r.ttft_ms <= r.e2e_ms and r.tpot_ms > 0 and len(r.itl_ms) == 6
    assert m.peak_rss_mb > 0


@pytest.fixture(scope="module")
def eos_model(tmp_path_factory):
    """A tiny model rigged so that EOS is every step's argmax: generation must not stop on it."""
    import torch
    from safetensors.torch import load_file, save_file

    folder = build_random_model(tmp_path_factory.mktemp("eos") / "m", seed=1, **TINY)
    weights = folder / "model.safetensors"
    state = load_file(weights)
    direction = torch.randn(TINY["n_embd"], generator=torch.Generator().manual_seed(0))
    state["transformer.ln_f.weight"] = torch.zeros(TINY["n_embd"])  # final hidden state = ln_f bias
    state["transformer.ln_f.bias"] = direction
    wte = state["transformer.wte.weight"].clone()
    wte[EOS] = 10 * direction
    state["transformer.wte.weight"] = wte
    save_file(state, weights, metadata={"format": "pt"})
    return resolve_model(str(folder))


def test_eos_does_not_stop_generation(eos_model, tokenizer):
    backend = load_backend("hf-eager", eos_model)
    g = timed_generation(backend, make_prompts(tokenizer, 5, 1).input_ids, 12, Sampling())
    assert g.tokens.shape == (1, 12)
    assert (g.tokens == EOS).all()


class _ShortBackend(Backend):
    """Breaks the contract on purpose: one step fewer than asked."""

    def load(self, model, settings):
        return {}

    def generate(self, input_ids, max_new_tokens, sampling) -> Iterator[np.ndarray]:
        for _ in range(max_new_tokens - 1):
            yield np.zeros(input_ids.shape[0], dtype=np.int64)

    def logits(self, input_ids):
        raise NotImplementedError


def test_harness_rejects_a_backend_that_stops_early():
    _ShortBackend.name = "short"
    with pytest.raises(BenchError, match="produced 4 generation steps, expected exactly 5"):
        timed_generation(_ShortBackend(), np.zeros((1, 3), dtype=np.int64), 5, Sampling())


class _LogBackend(Backend):
    """Writes every generation into a shared log, so the probe's place between runs shows."""

    def __init__(self, log: list[str]) -> None:
        self.log = log

    def load(self, model, settings):
        return {}

    def generate(self, input_ids, max_new_tokens, sampling) -> Iterator[np.ndarray]:
        self.log.append("generate")
        for _ in range(max_new_tokens):
            yield np.zeros(input_ids.shape[0], dtype=np.int64)

    def logits(self, input_ids):
        raise NotImplementedError


def test_bandwidth_probe_runs_around_each_timed_run_and_outside_its_clock(tokenizer):
    log: list[str] = []
    _LogBackend.name = "log"

    def probe() -> float:
        log.append("probe")
        return 10.0 + log.count("probe")

    m = measure(_LogBackend(log), make_prompts(tokenizer, 4, 1), 3, Sampling(), warmup=1, repeats=3, probe=probe)
    # warm-up unprobed; then probe, run, probe, run, probe, run, probe
    assert log == ["generate"] + ["probe", "generate"] * 3 + ["probe"]
    assert m.bandwidth_gbs == [11.0, 12.0, 13.0, 14.0]
    assert measure(_LogBackend([]), make_prompts(tokenizer, 4, 1), 3, Sampling(), 0, 2).bandwidth_gbs == []


def test_peak_rss_leaves_out_the_probes_buffers(tokenizer):
    from gpt2bench.machine.probe import BandwidthProbe

    prompts = make_prompts(tokenizer, 4, 1)
    plain = measure(_LogBackend([]), prompts, 3, Sampling(), warmup=0, repeats=2)
    with BandwidthProbe(1, size_mb=200, repeats=1) as probe:  # 400 MB of buffers, in its helper
        probed = measure(_LogBackend([]), prompts, 3, Sampling(), warmup=0, repeats=2, probe=probe)
    assert all(b > 0 for b in probed.bandwidth_gbs)
    assert probed.peak_rss_mb < plain.peak_rss_mb + 100


def test_cpu_contention_counts_the_timed_runs_not_the_probe_between_them(tokenizer):
    import subprocess
    import sys

    def probe() -> float:  # another process burning ~0.4 CPU-s, as the probe's helper does
        subprocess.run([sys.executable, "-c", "import time\nt = time.time()\nwhile time.time() - t < 0.4: pass"])
        return 1.0

    m = measure(_LogBackend([]), make_prompts(tokenizer, 4, 1), 3, Sampling(), warmup=0, repeats=2, probe=probe)
    if math.isnan(m.contention.other_cpu_s):
        pytest.skip("no /proc/stat here")
    assert m.contention.other_cpu_s < 0.3  # three probes burned ~1.2 CPU-s outside the timed runs


def test_a_session_starts_one_probe_helper_for_all_its_cells():
    from types import SimpleNamespace

    from gpt2bench.measure.runner import Session

    closed = []
    session = Session(SimpleNamespace(close=lambda: closed.append(True)), None, None, None)
    probe = session.probe(1)
    assert session.probe(1) is probe and probe() > 0  # a sweep worker's second cell reuses the helper
    helper = probe.proc
    session.close()
    assert helper.poll() == 0 and closed == [True]  # the helper ended with the session


class LazyStep:
    """A step's ids as a lazily computed array (a device array or a deferred tensor): the work
    happens when the harness converts it to host ids."""

    def __init__(self, ids, delay_s: float) -> None:
        self.ids, self.delay_s = ids, delay_s

    def __array__(self, dtype=None, copy=None):
        time.sleep(self.delay_s)
        return np.asarray(self.ids, dtype=dtype)


class Scripted(Backend):
    """A test backend (never registered) whose steps are scripted: lazy, instant or slow."""

    name = "scripted"

    def __init__(self, lazy_s: float = 0.0, step_s: float = 0.0) -> None:
        self.lazy_s, self.step_s, self.gc_enabled = lazy_s, step_s, []

    def load(self, model, settings):
        return {}

    def generate(self, input_ids, max_new_tokens, sampling):
        for _ in range(max_new_tokens):
            self.gc_enabled.append(gc.isenabled())
            if self.step_s:  # even sleep(0) yields the thread for tens of microseconds
                time.sleep(self.step_s)
            ids = np.zeros(input_ids.shape[0], dtype=np.int64)
            yield LazyStep(ids, self.lazy_s) if self.lazy_s else ids

    def logits(self, input_ids):
        raise NotImplementedError


def test_a_lazy_step_is_converted_to_host_ids_inside_its_timestamp(tokenizer):
    # Stamped before the conversion, a backend yielding lazy arrays would decode in ~0 ms a token.
    m = measure(
        Scripted(lazy_s=0.005), make_prompts(tokenizer, 4, 1), gen_len=5, sampling=Sampling(), warmup=0, repeats=2
    )
    assert all(r.tpot_ms >= 5.0 and r.ttft_ms >= 5.0 for r in m.runs), [r.tpot_ms for r in m.runs]


def test_the_garbage_collector_is_kept_out_of_timed_generations(tokenizer):
    backend = Scripted()
    assert gc.isenabled()
    measure(backend, make_prompts(tokenizer, 4, 1), gen_len=3, sampling=Sampling(), warmup=1, repeats=2)
    assert backend.gc_enabled == [True] * 3 + [False] * 6  # warm-up free to collect, timed runs not
    assert gc.isenabled() and gc.get_freeze_count() == 0  # restored afterwards


def test_the_heap_stays_frozen_across_a_cells_runs_so_each_collection_is_a_young_one(tokenizer, monkeypatch):
    # Unfrozen after every run, each run's collection walked every object of torch and transformers
    # again: 0.27 s a run, 10x the tiny model's run itself (2026-12-02).
    frozen_at_collect = []
    collect = gc.collect

    def counting_collect(*args):
        frozen_at_collect.append(gc.get_freeze_count())
        return collect(*args)

    monkeypatch.setattr(gc, "collect", counting_collect)
    measure(Scripted(), make_prompts(tokenizer, 4, 1), gen_len=3, sampling=Sampling(), warmup=0, repeats=3)
    assert len(frozen_at_collect) == 4 and frozen_at_collect[0] == 0  # one full collection, then the runs'
    assert all(n > 0 for n in frozen_at_collect[1:]), frozen_at_collect
    assert gc.get_freeze_count() == 0


def test_tokens_that_arrive_in_bursts_are_flagged(tokenizer):
    prompts = make_prompts(tokenizer, 4, 1)
    burst = measure(Scripted(), prompts, gen_len=20, sampling=Sampling(), warmup=0, repeats=2)
    assert burst.burst_fraction() > 0.9 and "arrived in bursts" in burst_warning(burst.burst_fraction())
    steady = measure(Scripted(step_s=0.001), prompts, gen_len=20, sampling=Sampling(), warmup=0, repeats=2)
    assert steady.burst_fraction() == 0.0 and burst_warning(steady.burst_fraction()) == ""
