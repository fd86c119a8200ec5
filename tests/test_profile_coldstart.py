"""Profiling writes real, non-empty traces; cold-start parts come from a real fresh process."""

import json
import os

import pytest

from conftest import run_cli
from gpt2bench.core.errors import BenchError
from gpt2bench.measure.coldstart import PARTS, ChildSpec, ColdStart, measure


def test_cold_start_parts_add_up_and_fit_inside_the_process_lifetime(tiny_model_dir):
    result = measure(ChildSpec("hf-eager", str(tiny_model_dir), "cpu", "fp32", 1, 4))
    values = [getattr(result, part) for part in PARTS]
    assert all(v > 0 for v in values), values
    assert result.total_s == pytest.approx(sum(values))
    assert result.total_s < result.process_s  # the child exits after its first token
    assert result.imports_s > result.interpreter_s  # importing torch + transformers is not free


def test_coldstart_command_prints_and_records_every_process(tmp_path, tiny_model_dir):
    proc = run_cli("coldstart", "--backend", "static-kv-eager", "--model", str(tiny_model_dir), "--repeats", "2",
                   "--output", str(tmp_path))  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert all(part in proc.stdout for part in (*PARTS, "total_s"))
    (folder,) = tmp_path.iterdir()
    doc = json.loads((folder / "coldstart.json").read_text())
    assert str(folder / "coldstart.json") in proc.stdout
    assert len(doc["per_process"]) == 2 and doc["spec"]["backend"] == "static-kv-eager"
    for part in (*PARTS, "total_s"):
        values = sorted(p[part] for p in doc["per_process"])
        assert doc["summary"][part] == pytest.approx({"median": sum(values) / 2, "min": values[0], "max": values[1]})
    assert doc["model"]["weights"] == "random" and doc["model"]["path"] == str(tiny_model_dir)
    env = doc["environment"]
    assert env["git"]["commit"] and env["cpu"]["isa"] is not None  # recorded like every result


@pytest.mark.parametrize(
    ("stop", "code", "message"),
    [
        (BenchError("cold-start child failed: killed"), 1, "cold-start child failed: killed; the 2 finished"),
        (KeyboardInterrupt(), 130, "interrupted; the 2 finished process(es) are saved in"),
    ],
)
def test_a_coldstart_stopped_midway_keeps_the_processes_it_timed(
    tmp_path, tiny_model_dir, monkeypatch, capsys, stop, code, message
):
    import sys

    import gpt2bench.measure.coldstart
    from gpt2bench.cli.main import main

    started = []

    def measure_or_stop(*_args):  # the third fresh process fails, or Ctrl-C arrives while it runs
        started.append(1)
        if len(started) == 3:
            raise stop
        return ColdStart(0.05, 1.0 + len(started), 0.5, 0.01, 2.0 + len(started))

    monkeypatch.setattr(gpt2bench.measure.coldstart, "measure", measure_or_stop)
    args = ["coldstart", "--backend", "hf-eager", "--model", str(tiny_model_dir), "--repeats", "5"]
    monkeypatch.setattr(sys, "argv", ["gpt2bench", *args, "--output", str(tmp_path)])
    with pytest.raises(SystemExit) as exit_info:
        main()
    assert exit_info.value.code == code and message in capsys.readouterr().err and len(started) == 3
    (folder,) = tmp_path.iterdir()
    doc = json.loads((folder / "coldstart.json").read_text())
    assert [p["imports_s"] for p in doc["per_process"]] == [2.0, 3.0] and doc["spec"]["repeats"] == 5
    assert doc["summary"]["imports_s"] == {"median": 2.5, "min": 2.0, "max": 3.0}
    assert doc["stopped"] == ("interrupted (Ctrl-C)" if code == 130 else "cold-start child failed: killed")


def test_coldstart_checks_the_model_before_starting_processes(tmp_path):
    from gpt2bench.models.resolve import build_random_model

    short = build_random_model(tmp_path / "short", n_layer=1, n_head=2, n_embd=32, n_positions=4)
    proc = run_cli("coldstart", "--backend", "hf-eager", "--model", str(short), "--output", str(tmp_path / "out"))
    assert proc.returncode == 2 and "prompt-len + gen-len = 9 exceeds this model's 4-token context" in proc.stderr
    missing = run_cli("coldstart", "--backend", "hf-eager", "--model", str(tmp_path / "nope"))
    assert missing.returncode == 1 and missing.stderr.strip().count("\n") == 0 and "does not exist" in missing.stderr


def test_coldstart_refuses_an_unwritable_output_before_starting_processes(tmp_path, tiny_model_dir):
    blocker = tmp_path / "file"
    blocker.write_text("")
    proc = run_cli("coldstart", "--backend", "hf-eager", "--model", str(tiny_model_dir), "--output", str(blocker / "x"))
    assert proc.returncode != 0 and proc.stderr.startswith("error: cannot write results to")
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize(("backend", "trace_name"), [("hf-eager", "torch_trace.json"), ("onnx", "ort_profile")])
def test_profile_writes_pyinstrument_and_the_backends_own_trace(tmp_path, tiny_model_dir, backend, trace_name):
    if backend == "onnx":
        pytest.importorskip("onnxruntime")
    proc = run_cli(
        "profile",
        "--backend",
        backend,
        "--model",
        str(tiny_model_dir),
        "--prompt-len",
        "6",
        "--gen-len",
        "4",
        "--output",
        str(tmp_path),
    )
    assert proc.returncode == 0, proc.stderr
    (out,) = tmp_path.iterdir()
    files = {p.name: p for p in out.iterdir()}
    assert files["profile.html"].stat().st_size > 1000
    assert "generate" in files["profile.txt"].read_text()  # the decode loop shows up in the profile
    (trace,) = [p for name, p in files.items() if name.startswith(trace_name)]
    events = json.loads(trace.read_text())
    events = events["traceEvents"] if isinstance(events, dict) else events
    assert len(events) > 10
    about = json.loads(files["profile.json"].read_text())  # what was profiled, and where
    assert about["spec"]["backend"] == backend and about["spec"]["gen_len"] == 4
    assert about["model"]["path"] == str(tiny_model_dir) and about["environment"]["git"]["commit"]


def test_a_compile_cache_is_cold_until_it_holds_entries(tmp_path, monkeypatch):
    from gpt2bench.backends.torch_common import compile_cache_state, inductor_cache_state

    assert compile_cache_state(tmp_path / "missing") == "cold" and compile_cache_state(tmp_path) == "cold"
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "inductor"))
    assert inductor_cache_state() == "cold"  # where inductor would write, as it is told
    (tmp_path / "inductor" / "fxgraph").mkdir(parents=True)
    assert inductor_cache_state() == "warm"


def test_rows_say_whether_their_compile_cache_was_warm(tiny_model_dir):
    from gpt2bench.measure.runner import run_cell
    from gpt2bench.measure.spec import RunSpec

    spec = RunSpec(backend="hf-eager", model=str(tiny_model_dir), prompt_len=4, gen_len=2, warmup=0, repeats=2)
    assert run_cell(spec, "r", lambda _msg: None).row["compile_cache"] == "none"  # eager: nothing compiled


def test_cold_cache_processes_get_private_empty_compile_caches(tmp_path, tiny_model_dir):
    from gpt2bench.measure.coldstart import cold_cache_env

    env = cold_cache_env(tmp_path / "c")
    assert env["TORCHINDUCTOR_CACHE_DIR"] == str(tmp_path / "c" / "inductor")
    assert env["GPT2BENCH_AOTI_CACHE"] == str(tmp_path / "c" / "aoti")  # static-kv's packages
    assert env["VLLM_CACHE_ROOT"] == str(tmp_path / "c" / "vllm") and env["PATH"] == os.environ["PATH"]
    out = tmp_path / "out"
    proc = run_cli(
        "coldstart", "-b", "hf-eager", "--model", str(tiny_model_dir), "--repeats", "1", "--cold-cache",
        "--output", str(out),
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    (folder,) = out.iterdir()
    assert json.loads((folder / "coldstart.json").read_text())["compile_cache"].startswith("cold")
