"""ONNX Runtime backends against hf-eager, for real: export, optimize, quantize, cache."""

import importlib.util
import logging

import numpy as np
import pytest

from conftest import greedy, load_backend
from gpt2bench.backends import BackendSettings, get_backend
from gpt2bench.backends.base import Sampling
from gpt2bench.core.errors import MissingExtraError
from gpt2bench.measure.prompts import make_prompts

pytest.importorskip("onnxruntime", reason="the [onnx] extra is not installed")

N_LAYER = 2


@pytest.mark.parametrize("name", ["onnx", "onnx-opt"])
def test_fp32_onnx_matches_hf_eager_on_tiny(tiny_model, prompts, reference, name):
    tokens, logits = reference
    backend = load_backend(name, tiny_model)
    np.testing.assert_array_equal(greedy(backend, prompts, 30), tokens)  # batch 2, 30 steps of past
    assert np.abs(backend.logits(prompts) - logits).max() < 1e-4


@pytest.mark.parametrize("name", ["onnx", "onnx-int8"])
def test_generation_computes_logits_for_the_last_prompt_position_only(tiny_model, prompts, name):
    # As hf-eager's logits_to_keep=1: lm_head over every prompt position would bill the prefill
    # (TTFT) for a 50257-wide matmul per prompt token that generation never reads.
    backend = load_backend(name, tiny_model)
    past = backend._empty_past(prompts.shape[0])
    last, _ = backend._run(prompts, 0, past)
    full, _ = backend._run(prompts, 0, past, all_logits=True)
    assert last.shape == (prompts.shape[0], 1, 50257) and full.shape == (*prompts.shape, 50257)
    # int8 quantizes activations with one scale per call, taken over the rows present: lm_head's
    # input is one row instead of all 16, so its logits move slightly (0.02 of 6.4 here).
    np.testing.assert_allclose(last[:, 0], full[:, -1], atol=1e-5 if name == "onnx" else 0.1)
    np.testing.assert_array_equal(last[:, 0].argmax(-1), full[:, -1].argmax(-1))


def test_onnx_opt_reports_its_fusions(tiny_model):
    fusions = load_backend("onnx-opt", tiny_model).describe()["fusions"]
    assert fusions.get("SkipLayerNormalization", 0) > 0 and fusions.get("FastGelu", 0) == N_LAYER, fusions


def test_tied_embedding_is_stored_once(tiny_model):
    import onnx

    backend = load_backend("onnx", tiny_model)
    assert backend.describe()["tied_embedding_deduplicated"] is True
    vocab, width = 50257, 64
    graph = onnx.load(str(backend.artifact.path)).graph
    tables = [i for i in graph.initializer if sorted(i.dims) == sorted([vocab, width])]
    assert len(tables) == 1


def test_int8_runs_quantizes_every_matmul_and_reports_agreement(tiny_model, prompts, reference):
    tokens, logits = reference
    backend = load_backend("onnx-int8", tiny_model)
    info = backend.describe()
    assert info["quantized_matmuls"] == 4 * N_LAYER + 1 and info["float_matmuls_with_weights"] == 0
    assert (info["weight_type"], info["per_channel"]) == ("QInt8", True)
    out = greedy(backend, prompts, 30)
    assert out.shape == tokens.shape
    diff = np.abs(backend.logits(prompts) - logits).max()
    assert np.isfinite(diff)
    print(f"onnx-int8 vs hf-eager: greedy agreement {(out == tokens).mean():.2%}, max |dlogit| {diff:.4f}")


def test_sampling_top_k_1_is_greedy(tiny_model, prompts, reference):
    backend = load_backend("onnx", tiny_model)
    out = np.stack(list(backend.generate(prompts, 30, Sampling(temperature=0.8, top_k=1, seed=1))), axis=1)
    np.testing.assert_array_equal(out, reference[0])
    a = np.stack(list(backend.generate(prompts, 10, Sampling(temperature=1.0, seed=2))), axis=1)
    b = np.stack(list(backend.generate(prompts, 10, Sampling(temperature=1.0, seed=2))), axis=1)
    np.testing.assert_array_equal(a, b)


@pytest.fixture
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("GPT2BENCH_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def test_second_prepare_is_a_cache_hit(tiny_model, private_cache):
    settings = BackendSettings(threads=1)
    first = get_backend("onnx-opt").create().prepare(tiny_model, settings)
    assert first["onnx_cache_hit"] == 0 and first["export_s"] > 0 and first["optimize_s"] > 0
    second = get_backend("onnx-opt").create().prepare(tiny_model, settings)
    assert second["onnx-opt_cache_hit"] == 1
    assert "export_s" not in second and "optimize_s" not in second and "onnx_verify_s" not in second


def test_corrupt_cache_is_detected_and_rebuilt(tiny_model, private_cache, prompts, reference, caplog):
    settings = BackendSettings(threads=1)
    backend = get_backend("onnx").create()
    backend.prepare(tiny_model, settings)
    path = backend.artifact.path
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])  # truncated, as by a crash or full disk
    rebuilt = get_backend("onnx").create()
    with caplog.at_level(logging.WARNING, logger="gpt2bench"):
        phases = rebuilt.prepare(tiny_model, settings)
    assert "corrupt" in caplog.text and "bytes, expected" in caplog.text
    assert phases["onnx_cache_hit"] == 0 and phases["export_s"] > 0
    rebuilt.load(tiny_model, settings)
    np.testing.assert_array_equal(greedy(rebuilt, prompts, 30), reference[0])


def test_rebuild_option_forces_a_new_export(tiny_model, private_cache):
    get_backend("onnx").create().prepare(tiny_model, BackendSettings(threads=1))
    phases = get_backend("onnx").create().prepare(tiny_model, BackendSettings(threads=1, options={"rebuild": True}))
    assert phases["onnx_cache_hit"] == 0 and "export_s" in phases


def test_missing_onnxruntime_names_the_extra(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "onnxruntime" else real(name, *a))
    info = get_backend("onnx-int8")
    assert info.unavailable_reason() == "needs 'onnxruntime': pip install 'gpt2bench[onnx]'"
    with pytest.raises(MissingExtraError, match=r"pip install 'gpt2bench\[onnx\]'"):
        info.create()


@pytest.mark.slow
@pytest.mark.parametrize("name", ["onnx", "onnx-opt"])
def test_fp32_onnx_matches_hf_eager_on_random_124m(name, tokenizer):
    from gpt2bench.models.resolve import resolve_model

    model = resolve_model("random")
    ids = make_prompts(tokenizer, 24, 1).input_ids
    eager = load_backend("hf-eager", model)
    backend = load_backend(name, model)
    np.testing.assert_array_equal(greedy(backend, ids, 20), greedy(eager, ids, 20))
    assert np.abs(backend.logits(ids) - eager.logits(ids)).max() < 1e-4


@pytest.mark.cuda
def test_onnx_cuda_io_binding_matches_hf_eager(tiny_model, prompts, reference):
    import onnxruntime as ort

    if "CUDAExecutionProvider" not in ort.get_available_providers():
        pytest.skip("onnxruntime has no CUDA provider here")
    backend = load_backend("onnx", tiny_model, device="cuda")
    np.testing.assert_array_equal(greedy(backend, prompts, 30), reference[0])
    assert np.abs(backend.logits(prompts) - reference[1]).max() < 1e-3


def test_fp32_on_the_cuda_provider_asks_for_true_fp32_not_tf32():
    from gpt2bench.backends.onnx import execution_providers

    assert execution_providers("cpu") == ["CPUExecutionProvider"]
    (cuda, options), cpu = execution_providers("cuda")
    assert cuda == "CUDAExecutionProvider" and options == {"use_tf32": "0"} and cpu == "CPUExecutionProvider"


@pytest.mark.cuda
def test_the_cuda_session_runs_without_tf32(tiny_model):
    import onnxruntime as ort

    if "CUDAExecutionProvider" not in ort.get_available_providers():
        pytest.skip("onnxruntime has no CUDA provider here (install onnxruntime-gpu)")
    backend = load_backend("onnx", tiny_model, device="cuda")
    assert backend.describe()["cuda_use_tf32"] == "0"


def test_the_gpu_graph_is_optimized_for_the_gpu_in_an_artifact_of_its_own(tiny_model):
    from gpt2bench.backends.artifacts import fields_key as _key
    from gpt2bench.backends.onnx_export import _fields

    cpu, gpu = (_fields(tiny_model, "onnx-opt", {"use_gpu": flag}) for flag in (False, True))
    assert gpu["use_gpu"] is True and "use_gpu" not in cpu  # the CPU graph keeps the key it had
    assert _key(cpu) != _key(gpu) and _key(cpu) == _key(_fields(tiny_model, "onnx-opt", {}))
