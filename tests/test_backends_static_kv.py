"""static-kv (our GPT-2 with a static KV cache) against hf-eager: eager, compiled, long, batched."""

import numpy as np
import pytest

from conftest import compile_events, greedy, load_backend
from gpt2bench.backends.base import Sampling
from gpt2bench.measure.prompts import make_prompts

# Tests compile in inductor's "default" mode: the same graphs, minutes less autotuning. The
# production default (max-autotune-no-cudagraphs) gets one test of its own below.
FAST_COMPILE = {"compile_mode": "default"}
# static-kv on the CPU builds AOTInductor packages by default; `compiler: dynamo` is torch.compile
# in-process, which guards (strides, dynamo resets) only that path has.
DYNAMO = {**FAST_COMPILE, "compiler": "dynamo"}


@pytest.fixture(scope="module")
def compiled(tiny_model):
    return load_backend("static-kv", tiny_model, options=FAST_COMPILE)


@pytest.fixture(scope="module")
def dynamo(tiny_model):
    return load_backend("static-kv", tiny_model, options=DYNAMO)


@pytest.fixture(scope="module")
def eager(tiny_model):
    return load_backend("static-kv-eager", tiny_model)


@pytest.mark.parametrize("variant", ["eager", "compiled"])
def test_matches_hf_eager(request, variant, prompts, reference):
    backend = request.getfixturevalue(variant)
    tokens, logits = reference
    np.testing.assert_array_equal(greedy(backend, prompts, 30), tokens)
    assert np.abs(backend.logits(prompts) - logits).max() < 1e-4


def test_cache_is_allocated_once_and_written_in_place(compiled, prompts):
    compiled.setup(2, 16, 30, Sampling())
    caches = compiled.cache_tensors()
    before = [(t.data_ptr(), tuple(t.shape)) for t in caches]
    assert before[0][1] == (2, 2, 1024 + 64, 32)  # [batch, heads, the model's context + a round, head_dim]
    assert compiled.describe()["cache_len"] == 64  # the window read: 16 + 30, rounded up to 64
    steps = compiled.generate(prompts, 30, Sampling())
    for i, _ in enumerate(steps):
        if i == 10:  # mid-decode: same storage, nothing grew
            assert [(t.data_ptr(), tuple(t.shape)) for t in compiled.cache_tensors()] == before
    after = compiled.cache_tensors()
    assert [(t.data_ptr(), tuple(t.shape)) for t in after] == before
    assert all(a is b for a, b in zip(caches, after, strict=True))
    # Positions 0..44 hold keys (prompt 16 + 29 fed-back tokens); the rest was never written.
    assert after[0][:, :, :45].abs().sum() > 0 and after[0][:, :, 45:].abs().sum() == 0


@pytest.mark.parametrize("variant", ["compiled", "dynamo"])
def test_setup_compiles_the_cell_frozen_so_timed_generation_compiles_nothing(
    request, variant, prompts, tmp_path, monkeypatch
):
    import torch
    from torch._dynamo.utils import counters

    from gpt2bench.backends.aoti import DIR_ENV

    backend = request.getfixturevalue(variant)
    monkeypatch.setenv(DIR_ENV, str(tmp_path))  # an empty package folder: the packages are built here
    packed = counters["inductor"]["mkldnn_linear_weight_pack_matcher_count"]
    backend.setup(1, 16, 60, Sampling())  # batch 1: no test before uses it, so it compiles
    # Freezing made the weights constants, so inductor prepacked them for its CPU GEMMs (without it
    # every weight stays a graph input and nothing is packed); and the setting did not leak out.
    assert counters["inductor"]["mkldnn_linear_weight_pack_matcher_count"] > packed
    assert torch._inductor.config.freezing is False
    events = compile_events()
    assert greedy(backend, prompts[:1], 60).shape == (1, 60)
    assert compile_events() == events  # compile time stays in setup_s


def test_decode_attention_matches_sdpa():
    import torch
    import torch.nn.functional as F

    from gpt2bench.backends.gpt2 import decode_attention

    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 3, n, 16, generator=gen) for n in (1, 40, 40))
    mask = torch.zeros(1, 1, 1, 40, dtype=torch.bool)
    mask[..., :25] = True  # slots past the current position hold stale keys: they must not count
    k[..., 25:, :], v[..., 25:, :] = 1e4, 1e4
    expected = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    torch.testing.assert_close(decode_attention(q, k, v, mask), expected, atol=1e-6, rtol=1e-5)
    low = decode_attention(q.bfloat16(), k.bfloat16(), v.bfloat16(), mask)
    assert low.dtype == torch.bfloat16
    torch.testing.assert_close(low.float(), expected, atol=2e-2, rtol=2e-2)


def test_widened_linear_is_the_bf16_product_computed_in_fp32():
    import torch
    import torch.nn.functional as F

    from gpt2bench.backends.gpt2 import linear

    gen = torch.Generator().manual_seed(0)
    x, w, b = (torch.randn(*shape, generator=gen) for shape in ((3, 5, 64), (32, 64), (32,)))
    wide = linear(x.bfloat16(), w.bfloat16(), b.bfloat16(), widen=True)
    assert wide.dtype == torch.bfloat16 and wide.shape == (3, 5, 32)
    # aten's bf16 GEMM also accumulates in fp32: the two differ by the output's bf16 rounding at most
    torch.testing.assert_close(wide, F.linear(x.bfloat16(), w.bfloat16(), b.bfloat16()), atol=2e-2, rtol=2**-7)
    # ... and near the fp32 product, off by the rounding of its inputs to bf16
    torch.testing.assert_close(wide.float(), F.linear(x, w, b), atol=0.3, rtol=0.05)
    assert torch.equal(linear(x, w, b, widen=True), F.linear(x, w, b))  # fp32 weights: nothing to widen


def test_full_context_prompt_plus_generation_of_1024(eager, tiny_model, tokenizer):
    ids = make_prompts(tokenizer, 1000, 1).input_ids
    hf = load_backend("hf-eager", tiny_model)
    np.testing.assert_array_equal(greedy(eager, ids, 24), greedy(hf, ids, 24))
    assert eager.describe()["cache_len"] == 1024


def test_batch_change_reallocates_between_cells(compiled, tokenizer, prompts, reference):
    # From the batch of two the tests above compiled, to three and back: one new decode graph.
    three = make_prompts(tokenizer, 16, 3).input_ids
    out = greedy(compiled, three, 5)
    assert out.shape == (3, 5) and compiled.describe()["cache_shape"][0] == 3
    np.testing.assert_array_equal(out[:2], reference[0][:, :5])
    np.testing.assert_array_equal(greedy(compiled, prompts, 5), reference[0][:, :5])
    assert compiled.describe()["cache_shape"][0] == 2


def test_sampling_without_host_sync_is_seeded_and_top_k_1_is_greedy(compiled, prompts, reference):
    def sample(**kw):
        return np.stack(list(compiled.generate(prompts, 30, Sampling(**kw))), axis=1)

    a = sample(temperature=1.0, seed=7)
    np.testing.assert_array_equal(a, sample(temperature=1.0, seed=7))
    assert not np.array_equal(a, sample(temperature=1.0, seed=8))
    np.testing.assert_array_equal(sample(temperature=0.9, top_k=1, seed=1), reference[0])


def test_trusted_guards_still_tell_greedy_and_sampled_graphs_apart(compiled, prompts, reference):
    # Each sampling setting's second run skips the guards that do not tell the graphs apart: the
    # greedy graph must still serve greedy calls and the sampled graph sampled ones.
    def run(**kw):
        return np.stack(list(compiled.generate(prompts, 30, Sampling(**kw))), axis=1)

    first = [run(), run(temperature=1.0, seed=3)]
    for _ in range(2):
        np.testing.assert_array_equal(run(), reference[0])
        np.testing.assert_array_equal(run(temperature=1.0, seed=3), first[1])
    np.testing.assert_array_equal(first[0], reference[0])
    assert not np.array_equal(first[1], reference[0])


def test_bf16_runs_and_reports_agreement(tiny_model, prompts, reference):
    bf16 = load_backend("static-kv-eager", tiny_model, dtype="bf16")
    tokens = greedy(bf16, prompts, 30)
    assert tokens.shape == reference[0].shape
    print(f"static-kv bf16 greedy agreement with hf-eager fp32: {(tokens == reference[0]).mean():.2%}")


def test_compiled_bf16_where_emulated_templates_short_prefills_and_widens_long_ones(
    tiny_model, prompts, reference, tmp_path, monkeypatch
):
    import torch
    from torch._dynamo.utils import counters
    from torch.profiler import profile

    from gpt2bench.backends.aoti import DIR_ENV
    from gpt2bench.backends.static_kv import WIDEN_ROWS

    monkeypatch.setenv(DIR_ENV, str(tmp_path))  # packages built here, so their GEMMs are counted

    bf16 = load_backend("static-kv", tiny_model, dtype="bf16")  # max-autotune-no-cudagraphs
    emulated = not torch.ops.mkldnn._is_mkldnn_bf16_supported()
    templated = counters["inductor"]["cpp_templated_kernel_counter"]
    assert 2 * 4 < WIDEN_ROWS <= prompts.size
    bf16.setup(2, 4, 30, Sampling())  # 8 rows: a short prefill, on the cache the long prompts use too
    layers = bf16.model.cfg.n_layer
    gemms = layers * 4 + 1  # four linears per block and lm_head
    # Without native bf16 (AVX2), a short prefill's GEMMs come from the template too, not aten's fallback loop.
    assert counters["inductor"]["cpp_templated_kernel_counter"] - templated == (2 if emulated else 1) * gemms
    tokens = greedy(bf16, prompts, 30)  # 2 x 16 rows: a long prefill
    with profile(record_shapes=True) as prof:
        np.testing.assert_array_equal(greedy(bf16, prompts, 30), tokens)
    fp32_gemms = [e for e in prof.events() if e.name in ("aten::mm", "aten::addmm") and e.input_dtypes[1] == "float"]
    # ... and a long one runs its projections as fp32 GEMMs on weights widened for the call (lm_head,
    # one row per sequence, stays bf16); where bf16 is native, oneDNN does them all.
    assert len(fp32_gemms) == (layers * 4 if emulated else 0)
    assert tokens.shape == reference[0].shape
    print(f"compiled static-kv bf16 greedy agreement with hf-eager fp32: {(tokens == reference[0]).mean():.2%}")


@pytest.mark.slow
def test_production_compile_mode_matches_hf_eager(tiny_model, tokenizer):
    ids = make_prompts(tokenizer, 12, 1).input_ids
    backend = load_backend("static-kv", tiny_model)  # max-autotune-no-cudagraphs + freezing
    assert backend.describe()["compile_mode"] == "max-autotune-no-cudagraphs"
    hf = load_backend("hf-eager", tiny_model)
    np.testing.assert_array_equal(greedy(backend, ids, 12), greedy(hf, ids, 12))


@pytest.mark.slow
@pytest.mark.parametrize(("name", "options"), [("static-kv-eager", {}), ("static-kv", FAST_COMPILE)])
def test_random_124m_matches_hf_eager(name, options, tokenizer):
    from gpt2bench.models.resolve import resolve_model

    model = resolve_model("random")
    ids = make_prompts(tokenizer, 24, 1).input_ids
    hf = load_backend("hf-eager", model)
    backend = load_backend(name, model, options=options)
    np.testing.assert_array_equal(greedy(backend, ids, 20), greedy(hf, ids, 20))
    assert np.abs(backend.logits(ids) - hf.logits(ids)).max() < 1e-4


@pytest.mark.cuda
def test_cuda_graphs_match_hf_eager(tiny_model, prompts, reference):
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    backend = load_backend("static-kv", tiny_model, device="cuda")  # reduce-overhead: CUDA graphs
    backend.setup(2, 16, 30, Sampling())
    before = [t.data_ptr() for t in backend.cache_tensors()]
    np.testing.assert_array_equal(greedy(backend, prompts, 30), reference[0])
    assert [t.data_ptr() for t in backend.cache_tensors()] == before
    # Captured and replayed, not silently run as plain kernels.
    assert backend.describe()["cuda_graphs"] is True and backend.describe()["cuda_graph_skips"] == 0
    assert np.abs(backend.logits(prompts) - reference[1]).max() < 1e-3


def test_cuda_graphs_are_reported_as_used_only_when_inductor_captured_them(tiny_model, prompts, reference):
    # On the CPU inductor cannot capture CUDA graphs: a mode that asks for them must say they were skipped.
    options = {"compile_mode": "reduce-overhead", "compiler": "dynamo"}
    backend = load_backend("static-kv", tiny_model, options=options)
    np.testing.assert_array_equal(greedy(backend, prompts, 10), reference[0][:, :10])
    details = backend.describe()
    assert details["compile_mode"] == "reduce-overhead" and details["compiler"] == "dynamo"
    assert details["cuda_graphs"] is False and details["cuda_graph_skips"] >= 1
    assert details["compile_cache"] in ("cold", "warm")  # read before it compiled
    eager = load_backend("static-kv-eager", tiny_model).describe()
    assert "cuda_graph_skips" not in eager and eager["compile_cache"] == "none"


def test_each_cell_reads_a_window_of_its_own_length(eager, tokenizer):
    from gpt2bench.backends.base import Sampling

    eager.setup(1, 600, 10, Sampling())
    assert eager.describe()["cache_len"] == 640
    eager.setup(1, 8, 5, Sampling())  # a short cell after a long one: not the long cell's window
    assert eager.describe()["cache_len"] == 64
    ids = make_prompts(tokenizer, 8, 1).input_ids
    eager.logits(make_prompts(tokenizer, 100, 1).input_ids)  # the logits path sizes it for itself...
    assert eager.describe()["cache_len"] == 128
    greedy(eager, ids, 5)  # ...and generation sizes it back for its cell
    assert eager.describe()["cache_len"] == 64
    assert eager.describe()["cache_shape"][2] == 1024 + 64  # one allocation: the context and a round


@pytest.mark.parametrize("variant", ["compiled", "dynamo"])
def test_one_decode_graph_serves_every_window(request, variant, prompts, reference):
    compiled = request.getfixturevalue(variant)
    compiled.setup(2, 16, 14, Sampling())  # window 64
    graphs = compile_events()
    for gen, window in [(200, 256), (400, 448), (1000, 1024)]:
        compiled.setup(2, 16, gen, Sampling())
        assert compiled.describe()["cache_len"] == window
    long = greedy(compiled, prompts, 400)  # window 448, the other end of the cache from 64
    assert compile_events() == graphs  # before windows, every one compiled anew
    np.testing.assert_array_equal(long[:, :30], reference[0])


def test_rows_carry_the_window_their_decode_read(tiny_model_dir):
    from gpt2bench.measure.runner import run_cell
    from gpt2bench.measure.spec import RunSpec

    spec = RunSpec(backend="static-kv-eager", model=str(tiny_model_dir), prompt_len=60, gen_len=10, warmup=0, repeats=2)
    assert run_cell(spec, "r", lambda _msg: None).row["cache_len"] == 128  # 70 slots, rounded up to 64


def test_an_instance_survives_another_resetting_dynamo(dynamo, tiny_model, prompts, reference):
    np.testing.assert_array_equal(greedy(dynamo, prompts, 30), reference[0])  # warm: guards skipped
    other = load_backend("static-kv", tiny_model, options=DYNAMO)
    greedy(other, prompts[:1], 5)  # its first compile resets dynamo: the graphs above are gone
    np.testing.assert_array_equal(greedy(dynamo, prompts, 30), reference[0])  # compiled again


def test_a_one_token_prompt_runs_on_the_decode_graph(dynamo, tiny_model, prompts):
    # On dynamo, where a prefill call of length 1 would compile a graph of its own (packages give
    # the prompt length a range from 2 and run a shorter prompt uncompiled, which counts nothing).
    greedy(dynamo, prompts, 5)  # batch 2's decode graph, greedy
    graphs = compile_events()
    first = prompts[:, :1]
    np.testing.assert_array_equal(greedy(dynamo, first, 5), greedy(load_backend("hf-eager", tiny_model), first, 5))
    assert compile_events() == graphs  # no prefill graph for length 1


def test_a_prompt_cut_from_a_larger_array_shares_the_graphs_of_any_other(dynamo, tokenizer):
    """Quality hands the backend rows of a larger array (`prompts[i][None]` has stride 0 in its batch
    dimension, `seqs[i : i + 1]` its parent's row length): those strides must not reach dynamo, which
    guards them, or the cells after quality compile prefill and full logits again (23-31 s at 124M)."""
    rows = make_prompts(tokenizer, 40, 2).input_ids
    greedy(dynamo, rows[1][None], 3)
    dynamo.logits(rows[1:2])
    graphs = compile_events()
    fresh = make_prompts(tokenizer, 30, 1).input_ids
    greedy(dynamo, fresh, 3)
    dynamo.logits(fresh)
    assert compile_events() == graphs
