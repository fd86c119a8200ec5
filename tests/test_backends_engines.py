"""The engines a user would pick instead of ours, for real: CTranslate2, OpenVINO and llama.cpp
against hf-eager on the trained tiny model (tokens, logits, exact counts, batches, caches, threads)."""

import importlib.util
import logging
import os
from pathlib import Path

import numpy as np
import pytest

from conftest import greedy, load_backend, run_cli
from gpt2bench.backends import BackendSettings, get_backend
from gpt2bench.backends.base import Sampling

FP32 = ["ct2", "openvino", "llamacpp", "onnx-genai"]
QUANTIZED = ["ct2-int8", "openvino-int8", "llamacpp-f16", "llamacpp-q8_0", "llamacpp-q4_0", "onnx-genai-int8"]
# Largest |logit - hf-eager's| of an fp32 engine on the trained model's 2 x 16 prompt tokens: its
# own fp32 GEMMs and reduction orders (measured here: ct2 2.4e-6, openvino 2.1e-6 on a 4-layer
# model; llama.cpp's ggml kernels accumulate in other orders), far below any token flip.
FP32_LOGIT_TOL = {"ct2": 1e-3, "openvino": 1e-3, "llamacpp": 1e-2, "onnx-genai": 1e-4}


def engine_module(name):
    """(the engine's module, the extra that installs it) of backend `name`."""
    return get_backend(name).requires[0]


def _needs(name):
    module = engine_module(name)[0]
    return pytest.mark.skipif(importlib.util.find_spec(module) is None, reason=f"{module} is not installed")


def engines(names):
    return [pytest.param(n, marks=_needs(n)) for n in names]


@pytest.fixture(scope="module")
def trained_reference(trained_model, prompts):
    eager = load_backend("hf-eager", trained_model)
    return greedy(eager, prompts, 30), eager.logits(prompts)


@pytest.mark.parametrize("name", engines(FP32))
def test_fp32_engine_matches_hf_eager_tokens_and_logits(trained_model, prompts, trained_reference, name):
    tokens, logits = trained_reference
    backend = load_backend(name, trained_model)
    np.testing.assert_array_equal(greedy(backend, prompts, 30), tokens)  # batch 2, 30 steps of cache
    diff = np.abs(backend.logits(prompts) - logits).max()
    assert diff < FP32_LOGIT_TOL[name], diff
    backend.close()


@pytest.mark.parametrize("name", engines(QUANTIZED))
def test_quantized_engine_runs_and_reports_agreement(trained_model, tokenizer, name):
    from gpt2bench.measure.quality import evaluate
    from gpt2bench.measure.spec import QualitySettings

    backend = load_backend(name, trained_model)
    settings = QualitySettings(window=64, max_windows=4, agreement_prompts=2, agreement_gen_len=16)
    columns = evaluate(backend, trained_model, tokenizer, settings).columns()
    assert 0.5 < columns["agree_top1"] <= 1.0 and np.isfinite(columns["ppl"]), columns  # close, not equal
    assert columns["agree_kl_mean"] > 0  # a quantized model is another model
    backend.close()


@pytest.mark.parametrize("name", engines([*FP32, "ct2-int8", "llamacpp-q4_0", "onnx-genai-int8"]))
def test_exact_token_count_with_eos_in_the_prompt_and_batch_rows_like_alone(trained_model, prompts, name):
    backend = load_backend(name, trained_model)
    eos_prompts = prompts.copy()
    eos_prompts[:, -1] = 50256  # <|endoftext|> last: the first step is the likeliest to pick it again
    steps = list(backend.generate(eos_prompts, 12, Sampling()))
    assert len(steps) == 12 and all(s.shape == (2,) and s.dtype == np.int64 for s in steps)
    both = np.stack(steps, axis=1)
    alone = np.concatenate([greedy(backend, eos_prompts[i : i + 1], 12) for i in range(2)])
    agree = (both == alone).mean()  # int8 engines quantize activations per row: a batch may differ
    assert agree == 1.0 or (name in ("ct2-int8", "llamacpp-q4_0", "onnx-genai-int8") and agree > 0.8), (both, alone)
    backend.close()


@pytest.mark.parametrize("name", engines(["ct2", "openvino-int8", "llamacpp-q8_0", "onnx-genai"]))
def test_artifact_cached_then_a_corrupt_one_rebuilt(tmp_path, monkeypatch, caplog, tiny_model, name):
    monkeypatch.setenv("GPT2BENCH_CACHE", str(tmp_path))
    settings = BackendSettings(threads=2)
    first = get_backend(name).create().prepare(tiny_model, settings)
    variant = name
    assert first[f"{variant}_cache_hit"] == 0.0 and first[f"{variant}_build_s"] > 0
    backend = get_backend(name).create()
    assert backend.prepare(tiny_model, settings)[f"{variant}_cache_hit"] == 1.0
    biggest = max(
        (p for p in backend.artifact.folder.iterdir() if p.name != "manifest.json"), key=lambda p: p.stat().st_size
    )
    biggest.write_bytes(biggest.read_bytes()[: biggest.stat().st_size // 2])  # an interrupted write
    with caplog.at_level(logging.WARNING):
        again = get_backend(name).create().prepare(tiny_model, settings)
    assert again[f"{variant}_cache_hit"] == 0.0 and "corrupt" in caplog.text and "building it again" in caplog.text
    rebuilt = get_backend(name).create()
    rebuilt.load(tiny_model, settings)  # loads what was rebuilt
    assert len(list(rebuilt.generate(np.array([[464, 318]]), 3, Sampling()))) == 3


@pytest.mark.parametrize("name", ["ct2", "openvino", "llamacpp-q4_0", "onnx-genai"])
def test_a_missing_engine_is_one_line_naming_its_extra(tmp_path, name):
    module, extra = engine_module(name)
    code = (
        "import importlib.util, sys; real = importlib.util.find_spec; "
        f"importlib.util.find_spec = lambda m, *a: None if m == {module!r} else real(m, *a); "
        "sys.argv = ['gpt2bench', 'run', '-b', " + repr(name) + f", '--output', {str(tmp_path / 'o')!r}]; "
        "from gpt2bench.cli.main import main; main()"
    )
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert proc.returncode == 1 and len(lines) == 1, proc.stderr
    assert f"pip install 'gpt2bench[{extra}]'" in lines[0] and module in lines[0]


def _threads_busy(work) -> int:
    """How many of this process's OS threads each used at least a fifth of the busiest one's CPU
    time while `work` ran: the threads that really computed."""

    def cpu_by_thread():
        out = {}
        for tid in os.listdir("/proc/self/task"):
            try:
                fields = Path(f"/proc/self/task/{tid}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            out[tid] = int(fields[11]) + int(fields[12])  # utime + stime, clock ticks
        return out

    before = cpu_by_thread()
    work()
    after = cpu_by_thread()
    used = [after[t] - before.get(t, 0) for t in after]
    top = max(used)
    return sum(1 for u in used if u >= max(1, top / 5))


@pytest.mark.skipif(not os.path.isdir("/proc/self/task") or (os.cpu_count() or 1) < 2, reason="needs Linux, 2 cores")
@pytest.mark.parametrize("name", engines(["ct2", "openvino", "llamacpp", "onnx-genai"]))
def test_the_engine_computes_on_as_many_threads_as_asked(tmp_path, monkeypatch, name):
    """The setting alone proves nothing (an engine may keep a pool of its own): count the threads
    that used CPU time during generation, on a model wide enough that the GEMMs split."""
    from gpt2bench.models.resolve import build_random_model, resolve_model

    folder = build_random_model(tmp_path / "wide", n_layer=2, n_embd=768, n_head=12, n_positions=256)
    model = resolve_model(str(folder))
    ids = np.arange(100, 164)[None, :]
    for threads in (1, 2):
        backend = load_backend(name, model, threads=threads)
        list(backend.generate(ids, 4, Sampling()))  # warm up
        busy = _threads_busy(lambda b=backend: [list(b.generate(ids, 24, Sampling())) for _ in range(3)])
        backend.close()
        assert busy == threads, (threads, busy)


def test_engine_rows_count_the_engine_build_as_prepare(tmp_path, tiny_model_dir):
    pytest.importorskip("ctranslate2")
    proc = run_cli("run", "-b", "ct2-int8", "--model", str(tiny_model_dir), "--repeats", "2", "--gen-len", "4",
                   "--output", str(tmp_path / "o"))  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    import json

    (doc,) = [json.loads(p.read_text()) for p in (tmp_path / "o").rglob("results.json")]
    row = doc["rows"][0]
    assert row["tokens_per_run"] == 4 and row["prepare_s"] > 0 and row["compute_dtype"] == "int8"
    assert row["weight_bytes_per_token"] < row["decode_bytes_per_token"]
