import numpy as np
import pytest

from gpt2bench.core.errors import UsageError
from gpt2bench.measure.prompts import make_prompts


def test_bundled_tokenizer_is_gpt2(tokenizer):
    assert tokenizer.encode("Hello, my name is").ids == [15496, 11, 616, 1438, 318]


@pytest.mark.parametrize(("prompt_len", "batch"), [(1, 1), (50, 1), (7, 3), (1024, 2)])
def test_prompts_have_exact_shape_and_are_deterministic(tokenizer, prompt_len, batch):
    a = make_prompts(tokenizer, prompt_len, batch)
    b = make_prompts(tokenizer, prompt_len, batch)
    assert a.input_ids.shape == (batch, prompt_len)
    assert a.input_ids.dtype == np.int64
    np.testing.assert_array_equal(a.input_ids, b.input_ids)
    assert a.tokenize_s > 0


def test_batch_rows_are_consecutive_windows_of_one_stream(tokenizer):
    wide = make_prompts(tokenizer, 20, 3).input_ids
    long = make_prompts(tokenizer, 60, 1).input_ids
    np.testing.assert_array_equal(wide.reshape(-1), long.reshape(-1))
    assert not np.array_equal(wide[0], wide[1])


def test_too_many_tokens_is_a_usage_error(tokenizer):
    with pytest.raises(UsageError, match="fewer than"):
        make_prompts(tokenizer, 1024, 1000)
