"""Sweeps for real: YAML validation, worker processes, failed cells, kill and resume, interleave."""

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import run_cli
from gpt2bench.core.errors import UsageError
from gpt2bench.measure.roofline import probed_bw_frac
from gpt2bench.measure.row import merge_rounds
from gpt2bench.report.store import ResultsStore
from gpt2bench.sweep.config import load_sweep
from gpt2bench.sweep.driver import SweepRun, plan

CONFIGS = Path(__file__).parents[1] / "configs"


def _write(tmp_path, text):
    path = tmp_path / "sweep.yaml"
    path.write_text(text)
    return path


BASE = """output: {out}
model: {model}
repeats: 2
warmup: 1
prompt_lens: [4, 8]
gen_lens: [3]
"""


@pytest.mark.parametrize("name", ["cpu.yaml", "cuda.yaml", "quick.yaml", "engines.yaml"])
def test_shipped_configs_load(name):
    spec = load_sweep(CONFIGS / name)
    assert spec.backends and spec.cells
    assert all(c.prompt_len + c.gen_len <= 1024 for c in spec.cells)


def test_output_defaults_to_a_folder_named_after_the_config(tmp_path):
    path = tmp_path / "my-study.yaml"
    path.write_text("prompt_lens: [8]\ngen_lens: [4]\nbackends:\n  - name: hf-eager\n")
    assert load_sweep(path).output == Path("results") / "my-study"
    path.write_text(path.read_text() + "output: elsewhere\n")
    assert load_sweep(path).output == Path("elsewhere")


def test_cpu_config_has_the_study_grid_and_headline():
    cells = {(c.prompt_len, c.gen_len) for c in load_sweep(CONFIGS / "cpu.yaml").cells}
    assert cells == {(p, g) for p in (1, 50, 500) for g in (1, 10, 100)}  # 50/100 is already in it
    assert {b.display() for b in load_sweep(CONFIGS / "cpu.yaml").backends} >= {"hf-eager", "onnx-int8", "static-kv"}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("output: x\nbackends: [\n", "malformed YAML"),
        (
            "output: x\nprompt_lens: [1]\ngen_lens: [1]\nbackends: [{name: hf-eager}]\ncolour: red\n",
            ":5: colour: unknown key",
        ),
        (
            "output: x\nprompt_lens: [1]\ngen_lens: [1]\nbackends:\n  - name: nope\n",
            ":5: backends[0].name: unknown backend 'nope'",
        ),
        (
            "output: x\nprompt_lens: []\ngen_lens: [1]\nbackends: [{name: hf-eager}]\n",
            ":2: prompt_lens: must not be empty",
        ),
        (
            "output: x\nprompt_lens: [1000]\ngen_lens: [100]\nbackends: [{name: hf-eager}]\n",
            "exceeds the 1024-token context",
        ),
        (
            "output: x\nprompt_lens: [1]\ngen_lens: [0]\nbackends: [{name: hf-eager}]\n",
            "gen_lens[0]: must be at least 1",
        ),
        (
            "output: x\nprompt_lens: [1]\ngen_lens: [1]\nrepeats: many\nbackends: [{name: hf-eager}]\n",
            "repeats: expected an integer, got 'many'",
        ),
        (
            "output: x\nprompt_lens: [1]\ngen_lens: [1]\ncell_timeout_s: -5\nbackends: [{name: hf-eager}]\n",
            ":4: cell_timeout_s: must be more than 0 seconds, got -5",
        ),
        ("output: x\nprompt_lens: [1]\ngen_lens: [1]\n", "missing required key 'backends'"),
        (
            "output: x\nprompt_lens: [1]\ngen_lens: [1]\nbackends: [{name: onnx, options: {colour: 1}}]\n",
            "backends[0].options.colour: unknown key",
        ),
        (
            "output: x\nprompt_lens: [1]\ngen_lens: [1]\nbackends: [{name: hf-int8-dynq, dtype: bf16}]\n",
            "does not support dtype 'bf16'",
        ),
        (
            "output: x\nprompt_lens: [1]\ngen_lens: [1]\nbackends: [{name: hf-eager}, {name: hf-eager}]\n",
            "duplicate backend",
        ),
        ("", "the config is empty"),
        (
            "output: x\nprompt_lens: [1]\ngen_lens: [1]\nbackends:\n"
            "  - {name: hf-eager}\n  - {name: vllm, dtype: fp16}\n",
            ":6: backends[1]: fp16 is for --device cuda",
        ),
        (
            "output: x\ndevice: cuda\nprobe_bandwidth: true\nprompt_lens: [1]\ngen_lens: [1]\n"
            "backends: [{name: hf-eager}]\n",
            ":3: probe_bandwidth: probes the CPU's memory",
        ),
        (
            "output: x\nprobe_bandwidth: sometimes\nprompt_lens: [1]\ngen_lens: [1]\nbackends: [{name: hf-eager}]\n",
            ":2: probe_bandwidth: expected true or false",
        ),
    ],
)
def test_config_errors_name_the_field_and_line(tmp_path, text, message):
    with pytest.raises(UsageError) as info:
        load_sweep(_write(tmp_path, text))
    assert message in str(info.value)


def test_bad_config_from_the_cli_is_one_line(tmp_path):
    proc = run_cli(
        "sweep", str(_write(tmp_path, "output: x\nprompt_lens: [1]\ngen_lens: [1]\nbackends: [{name: x}]\n"))
    )
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().count("\n") == 0 and "unknown backend 'x'" in proc.stderr


def _run(spec, store, model=None, threads=None):
    """A SweepRun over `store`, as the CLI builds it (the model resolved here unless given)."""
    from gpt2bench.measure.spec import default_threads
    from gpt2bench.models.resolve import resolve_model

    model = model or resolve_model(spec.model)
    return SweepRun(spec, model, store, "r", threads or spec.threads or default_threads(), print, print)


def _rows(out):
    return json.loads((out / "results.json").read_text())["rows"]


@pytest.mark.parametrize("interleave", [False, True])
def test_quick_sweep_writes_every_cell_and_a_failing_backend_stays_contained(tmp_path, tiny_model_dir, interleave):
    # A broken onnxruntime install: the package is there (so the backend is listed as available)
    # but importing it fails, inside the worker's load.
    shim = tmp_path / "shim"
    (shim / "onnxruntime").mkdir(parents=True)
    (shim / "onnxruntime" / "__init__.py").write_text('raise ImportError("simulated broken onnxruntime")\n')
    out = tmp_path / "out"
    config = _write(
        tmp_path,
        BASE.format(out=out, model=tiny_model_dir)
        + "backends:\n  - name: hf-eager\n  - name: onnx-opt\n  - name: static-kv-eager\n",
    )
    pythonpath = os.pathsep.join(p for p in (str(shim), os.environ.get("PYTHONPATH", "")) if p)
    args = ("sweep", str(config), *(["--interleave"] if interleave else []))
    proc = run_cli(*args, env={"PYTHONPATH": pythonpath})
    assert proc.returncode == 1, proc.stderr
    assert "2 of 6 cells failed" in proc.stderr
    rows = _rows(out)
    assert len(rows) == 6 and len({r["cell_key"] for r in rows}) == 6
    ok = [r for r in rows if r["status"] == "ok"]
    assert {(r["label"], r["prompt_len"]) for r in ok} == {
        (b, p) for b in ("hf-eager", "static-kv-eager") for p in (4, 8)
    }
    assert all(r["tokens_per_run"] == 3 and r["repeats"] == 2 for r in ok)
    failed = [r for r in rows if r["status"] == "failed"]
    assert all(r["label"] == "onnx-opt" and "simulated broken onnxruntime" in r["error"] for r in failed)
    with (out / "results.csv").open() as fh:
        assert len(fh.readlines()) == 7


def test_a_worker_that_dies_while_loading_fails_only_its_backend_when_interleaved(tmp_path, tiny_model_dir):
    # A native library that takes the process down at import (a segfault, an abort): no
    # load_failed message ever comes, only the worker's death.
    shim = tmp_path / "shim"
    (shim / "onnxruntime").mkdir(parents=True)
    (shim / "onnxruntime" / "__init__.py").write_text("import os\nos._exit(3)\n")
    out = tmp_path / "out"
    config = _write(
        tmp_path, BASE.format(out=out, model=tiny_model_dir) + "backends:\n  - name: onnx\n  - name: hf-eager\n"
    )
    pythonpath = os.pathsep.join(p for p in (str(shim), os.environ.get("PYTHONPATH", "")) if p)
    proc = run_cli("sweep", str(config), "--interleave", env={"PYTHONPATH": pythonpath})
    assert proc.returncode == 1 and "internal error" not in proc.stderr, proc.stderr
    rows = _rows(out)
    assert {(r["label"], r["status"]) for r in rows} == {("onnx", "failed"), ("hf-eager", "ok")}
    assert all("worker exited with code 3" in r["error"] for r in rows if r["status"] == "failed")


def test_a_model_that_cannot_be_had_fails_the_sweep_once_before_any_worker(tmp_path):
    out = tmp_path / "out"
    config = _write(
        tmp_path,
        BASE.format(out=out, model=tmp_path / "no-such-model") + "backends: [{name: hf-eager}, {name: onnx}]\n",
    )
    proc = run_cli("sweep", str(config), timeout=60)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().count("\n") == 0 and "no-such-model' does not exist" in proc.stderr
    assert not (out / "results.json").exists()


def test_cells_beyond_the_models_context_fail_the_sweep_before_any_load(tmp_path):
    from gpt2bench.models.resolve import build_random_model

    model = build_random_model(tmp_path / "short", n_layer=1, n_head=2, n_embd=32, n_positions=10)
    out = tmp_path / "out"
    config = _write(tmp_path, BASE.format(out=out, model=model) + "backends: [{name: hf-eager}]\n")
    proc = run_cli("sweep", str(config), timeout=60)
    assert proc.returncode == 2 and proc.stderr.strip().count("\n") == 0
    assert "prompt 8 + gen 3 = 11 exceeds this model's 10-token context" in proc.stderr
    assert not (out / "results.json").exists()


def test_load_warnings_from_the_workers_reach_the_user_once(tmp_path, tiny_model_dir):
    import torch

    from gpt2bench.measure.spec import default_threads

    out = tmp_path / "out"
    threads = default_threads() + 1
    config = _write(
        tmp_path,
        BASE.format(out=out, model=tiny_model_dir)
        + f"threads: {threads}\nbackends:\n"
        + "  - {name: hf-eager, dtype: bf16}\n  - {name: static-kv-eager, dtype: bf16}\n",
    )
    proc = run_cli("sweep", str(config))
    assert proc.returncode == 0, proc.stderr
    # Said by the parent and by each worker, shown once.
    assert proc.stderr.count(f"warning: {threads} threads on the") == 1
    # Said by both backends' workers, recorded with every row, shown once.
    emulated = not torch.ops.mkldnn._is_mkldnn_bf16_supported()
    assert proc.stderr.count("warning: this CPU has no bfloat16 instructions") == int(emulated)
    samples = json.loads((out / "results.json").read_text())["samples"]
    assert [bool(s["warnings"]) for s in samples] == [emulated] * 4


def test_killed_sweep_resumes_with_every_cell_exactly_once(tmp_path, tiny_model_dir):
    out = tmp_path / "out"
    config = _write(
        tmp_path,
        BASE.format(out=out, model=tiny_model_dir).replace("[4, 8]", "[4, 8, 12, 16]")
        + "backends:\n  - name: hf-eager\n  - name: static-kv-eager\n",
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "gpt2bench", "sweep", str(config)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        try:
            if len(_rows(out)) >= 2:
                break
        except (OSError, ValueError):
            pass
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)  # the parent and its worker, mid-sweep
    proc.wait()
    before = _rows(out)
    assert 2 <= len(before) < 8
    resumed = run_cli("sweep", str(config), "--resume")
    assert resumed.returncode == 0, resumed.stderr
    rows = _rows(out)
    assert len(rows) == 8 and len({r["cell_key"] for r in rows}) == 8 and all(r["status"] == "ok" for r in rows)
    # Finished rows survived the kill untouched.
    assert [r for r in rows if r["cell_key"] in {b["cell_key"] for b in before}] == before


# Loaded by every Python process of the test's sweep (PYTHONPATH): each quality check marks a file
# and then blocks, so the test can press Ctrl-C while a worker is inside one.
SLOW_QUALITY = """
import importlib.abc, importlib.util, signal, sys, time

# pytest started as a background job without job control (`cmd &` in a script) hands every child
# SIGINT ignored, and Python then never raises KeyboardInterrupt: arm it, as a terminal's session has it.
signal.signal(signal.SIGINT, signal.default_int_handler)

class _Hook(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name != "gpt2bench.measure.quality":
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(name)
        run = spec.loader.exec_module

        def exec_module(module):
            run(module)

            def evaluate(*_args, **_kwargs):
                open({marker!r}, "a").close()
                time.sleep(120)

            module.evaluate = evaluate

        spec.loader.exec_module = exec_module
        return spec

sys.meta_path.insert(0, _Hook())
"""


@contextlib.contextmanager
def _sweep_inside_quality(tmp_path, model_dir, backends, *args):
    """A sweep started in a session of its own, yielded once a worker is inside its quality check."""
    shim, marker, out = tmp_path / "shim", tmp_path / "in-quality", tmp_path / "out"
    shim.mkdir()
    (shim / "sitecustomize.py").write_text(SLOW_QUALITY.format(marker=str(marker)))
    listed = "".join(f"  - name: {b}\n" for b in backends)
    config = _write(tmp_path, BASE.format(out=out, model=model_dir) + f"quality:\n  enabled: true\nbackends:\n{listed}")
    pythonpath = os.pathsep.join(p for p in (str(shim), os.environ.get("PYTHONPATH", "")) if p)
    proc = subprocess.Popen(
        [sys.executable, "-m", "gpt2bench", "sweep", str(config), *args],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": pythonpath},
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 600
        while not marker.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        assert marker.exists(), proc.stderr.read() if proc.poll() is not None else "no quality check started"
        yield proc, config, out
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


@pytest.mark.parametrize("interleave", [False, True])
def test_ctrl_c_during_a_sweeps_quality_keeps_the_cells_timed_runs(tmp_path, tiny_model_dir, interleave):
    args = ["--interleave"] if interleave else []
    with _sweep_inside_quality(tmp_path, tiny_model_dir, ["hf-eager", "hf-int8-dynq"], *args) as (proc, config, out):
        os.killpg(proc.pid, signal.SIGINT)  # a terminal's Ctrl-C: the sweep and its worker alike
        _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130 and "Traceback" not in err
    assert "interrupted; 1 finished cell(s) are saved in" in err and "--resume" in err
    # hf-eager's first cell: its timed runs, kept, and its quality marked for --resume to retry.
    # When interleaved, hf-int8-dynq had not finished its rounds of that cell: nothing of it is saved.
    (row,) = _rows(out)
    assert row["label"] == "hf-eager" and row["prompt_len"] == 4 and row["status"] == "ok"
    assert row["tokens_per_run"] == 3 and row["repeats"] == 2 and row["tpot_ms_median"] > 0
    assert row["quality_error"].startswith("interrupted") and row.get("ppl") is None
    # both hf-eager cells are still to do
    assert len(plan(_run(load_sweep(config), ResultsStore.load(out)))[0][1]) == 2


def _children(pid):
    kids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:  # the field after the state is the parent's pid
            kids.append(int(stat.parent.name))
    return kids


def _alive(pid):
    try:  # a zombie (dead, not yet reaped by whoever adopted it) counts as gone
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
def test_a_terminated_sweep_takes_its_worker_with_it(tmp_path, tiny_model_dir):
    # `timeout` or a CI cancel sends SIGTERM to the sweep alone; its worker must not go on measuring.
    with _sweep_inside_quality(tmp_path, tiny_model_dir, ["hf-eager"]) as (proc, _, _):
        (worker,) = _children(proc.pid)  # inside its quality check, for two more minutes
        proc.terminate()
        proc.wait(timeout=30)
        deadline = time.monotonic() + 10
        while _alive(worker) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not _alive(worker), "the worker outlived its sweep"


def test_interleaved_sweep_pools_rounds(tmp_path, tiny_model_dir):
    out = tmp_path / "out"
    config = _write(
        tmp_path,
        BASE.format(out=out, model=tiny_model_dir)
        + "probe_bandwidth: true\nbackends:\n  - name: hf-eager\n  - name: static-kv-eager\n",
    )
    proc = run_cli("sweep", str(config), "--interleave", "--quality")
    assert proc.returncode == 0, proc.stderr
    doc = json.loads((out / "results.json").read_text())
    assert doc["interleave"] is True and len(doc["rows"]) == 4
    for row, samples in zip(doc["rows"], doc["samples"], strict=True):
        assert row["repeats"] == 2 and samples["interleaved_rounds"] == 2
        assert len(samples["per_run"]["e2e_ms"]) == 2 and row["e2e_ms_min"] <= row["e2e_ms_median"] <= row["e2e_ms_max"]
        # Roofline figures come from the pooled rounds, each round's run paired with its own probes.
        rounds = samples["bandwidth_gbs"]
        assert row["bandwidth_source"] == "probe" and [len(r) for r in rounds] == [2, 2]
        assert row["decode_gbs"] == pytest.approx(row["decode_bytes_per_token"] / row["tpot_ms_median"] / 1e6)
        runs = [(tpot, *probes) for tpot, probes in zip(samples["per_run"]["tpot_ms"], rounds, strict=True)]
        assert row["decode_bw_frac"] == pytest.approx(probed_bw_frac(row["decode_bytes_per_token"], runs))
    # --quality overrode the config; quality is per backend, so only the first cell measures it.
    first = [r for r in doc["rows"] if r["prompt_len"] == 4]
    assert all(r["ppl"] > 1 and r["ppl_windows"] == 4 for r in first)
    assert all(r.get("ppl") is None for r in doc["rows"] if r["prompt_len"] == 8)
    # The same weights through two fp32 backends: the same perplexity.
    assert first[0]["ppl"] == pytest.approx(first[1]["ppl"], rel=1e-4)


def test_merge_rounds_recomputes_statistics_from_raw_samples():
    def round_(e2e, other):
        row = {
            "warmup": 1,
            "setup_s": 0.5,
            "other_cpu_s": other,
            "other_cpu_frac": 0.0,
            "peak_rss_mb": 100 + e2e,
            "tokens_consistent": True,
            "repeats": 1,
            "decode_bytes_per_token": 1e6,
            "prefill_gflop": 1.0,
        }
        per_run = {m: [e2e] for m in ("ttft_ms", "tpot_ms", "e2e_ms", "decode_tps", "overall_tps", "prefill_tps")}
        return row, {"per_run": per_run, "itl_ms": [[1.0, 2.0]], "contention_wall_s": 1.0}

    rows, samples = zip(*(round_(v, 0.1) for v in (10.0, 20.0, 30.0)), strict=True)
    row, merged = merge_rounds(list(rows), list(samples))
    assert row["repeats"] == 3 and row["e2e_ms_median"] == 20 and row["e2e_ms_min"] == 10
    assert row["other_cpu_s"] == pytest.approx(0.3) and row["peak_rss_mb"] == 130
    assert merged["itl_ms"] == [[1.0, 2.0]] * 3 and merged["interleaved_rounds"] == 3


def test_merge_rounds_recomputes_roofline_from_the_pooled_medians():
    def round_(ms, probes=None):
        # Each round's own roofline columns, as measure_cell wrote them (a 1 GB/s cached roof).
        row = {
            "warmup": 1,
            "setup_s": 0.5,
            "other_cpu_s": 0.0,
            "other_cpu_frac": 0.0,
            "peak_rss_mb": 100,
            "tokens_consistent": True,
            "decode_bytes_per_token": 1e6,
            "decode_gbs": 1e6 / ms / 1e6,
            "read_bandwidth_gbs": 1.0,
            "decode_bw_frac": 1e6 / ms / 1e6,
            "prefill_gflop": 2.0,
            "prefill_gflops": 2.0 / ms * 1e3,
            "peak_gflops": 100.0,
            "prefill_peak_frac": 2.0 / ms * 1e3 / 100.0,
        }
        per_run = {m: [ms] for m in ("ttft_ms", "tpot_ms", "e2e_ms", "decode_tps", "overall_tps", "prefill_tps")}
        sample = {"per_run": per_run, "itl_ms": [[ms]], "contention_wall_s": 1.0}
        if probes:
            sample["bandwidth_gbs"] = probes
        return row, sample

    # The last round alone (4 ms) must not set the row: the pooled median TPOT/TTFT is 2 ms.
    rows, samples = zip(*(round_(ms) for ms in (1.0, 2.0, 4.0)), strict=True)
    row, _ = merge_rounds(list(rows), list(samples))
    assert row["decode_gbs"] == pytest.approx(0.5) and row["decode_bw_frac"] == pytest.approx(0.5)
    assert row["prefill_gflops"] == pytest.approx(1000.0) and row["prefill_peak_frac"] == pytest.approx(10.0)

    # With probes: each round's run is set against the mean of its own two probes.
    probes = ([0.5, 1.5], [1.0, 3.0], [4.0, 4.0])  # fracs 1/1, 0.5/2, 0.25/4
    rows, samples = zip(*(round_(ms, p) for ms, p in zip((1.0, 2.0, 4.0), probes, strict=True)), strict=True)
    row, merged = merge_rounds(list(rows), list(samples))
    assert row["decode_bw_frac"] == pytest.approx(0.25) and row["read_bandwidth_gbs"] == pytest.approx(2.25)
    assert merged["bandwidth_gbs"] == list(probes)


def test_a_worker_that_times_out_is_killed_and_a_fresh_one_takes_the_next_cell(tmp_path, tiny_model_dir):
    out = tmp_path / "out"
    # 0.3 s is less than a worker needs to start: each cell's worker is killed, its row records why.
    config = _write(
        tmp_path, BASE.format(out=out, model=tiny_model_dir) + "cell_timeout_s: 0.3\nbackends:\n  - name: hf-eager\n"
    )
    proc = run_cli("sweep", str(config))
    assert proc.returncode == 1 and "2 of 2 cells failed" in proc.stderr
    rows = _rows(out)
    assert [r["prompt_len"] for r in rows] == [4, 8]
    assert all(r["status"] == "failed" and r["error"] == "timed out after 0.3 s" for r in rows)


def test_resume_retries_failed_cells_and_cells_whose_quality_failed(tmp_path):
    from gpt2bench.measure.row import failed_row, spec_fields
    from gpt2bench.models.ref import ModelRef

    spec = load_sweep(
        _write(tmp_path, BASE.format(out=tmp_path / "out", model="random") + "backends: [{name: onnx}]\n")
    )
    (backend,) = spec.backends
    small, large = spec.cells
    model = ModelRef("random", tmp_path, "random", "0123456789abcdef")
    run = _run(spec, ResultsStore(tmp_path / "out", {}), model, threads=2)
    ok = spec_fields(run.cell_spec(backend, small), model, "r")
    run.store.rows = [ok, failed_row(run.cell_spec(backend, large), model, "r", "boom")]
    assert plan(run) == [(backend, [large])]
    ok["quality_error"] = "UsageError: the eval text is 1 token(s) long"
    assert plan(run) == [(backend, [small, large])]
    # Measured with other threads, the same cell is another configuration: still to do.
    assert plan(_run(spec, run.store, model, threads=1)) == [(backend, [small, large])]


def test_interleaving_vllm_on_one_gpu_must_say_how_much_memory_it_may_take(tmp_path):
    base = "output: x\ndevice: cuda\nprompt_lens: [4]\ngen_lens: [3]\n"
    bare = base + "interleave: true\nbackends: [{name: hf-eager}, {name: vllm}]\n"
    with pytest.raises(UsageError, match=r":6: backends: interleave on cuda keeps every backend loaded on one GPU"):
        load_sweep(_write(tmp_path, bare))
    sized = (
        base + "interleave: true\nbackends: [{name: hf-eager}, {name: vllm, options: {gpu_memory_utilization: 0.3}}]\n"
    )
    assert load_sweep(_write(tmp_path, sized)).interleave_problem() is None
    # Not interleaved, vLLM has the GPU to itself; `--interleave` on the command line is checked too.
    unsized = load_sweep(_write(tmp_path, base + "backends: [{name: hf-eager}, {name: vllm}]\n"))
    assert unsized.interleave_problem() is None
    proc = run_cli("sweep", str(_write(tmp_path, base + "backends: [{name: vllm}]\n")), "--interleave")
    assert proc.returncode == 2 and "interleave on cuda keeps every backend loaded" in proc.stderr
    assert proc.stderr.strip().count("\n") == 0


def test_a_cell_listed_twice_is_measured_once_with_a_note(tmp_path):
    spec = load_sweep(_write(tmp_path, "output: x\nprompt_lens: [4, 4]\ngen_lens: [3]\nbackends: [{name: hf-eager}]\n"))
    assert len(spec.cells) == 1
    assert spec.notes == (
        f"{tmp_path / 'sweep.yaml'}:2: prompt_lens lists 4 more than once; each cell is measured once",
    )


def test_resume_refuses_a_folder_measured_with_another_config_unless_forced(tmp_path):
    from gpt2bench.sweep.driver import open_store

    text = "output: {out}\nthreads: {threads}\nrepeats: 2\nprompt_lens: [4]\ngen_lens: [3]\n"
    text += "backends: [{{name: hf-eager}}]\n"
    out = tmp_path / "out"
    first = load_sweep(_write(tmp_path, text.format(out=out, threads=2)))
    store = open_store(first, False, {}, {"sweep_spec": first.record(2)})
    store.add({"backend": "hf-eager", "status": "ok", "options": "{}"}, {})
    again = open_store(first, True, {}, {"sweep_spec": first.record(2)})  # the same config: continued
    assert len(again.rows) == 1
    changed = load_sweep(_write(tmp_path, text.format(out=out, threads=1)))
    with pytest.raises(UsageError, match=r"measured with another config \(threads 2 -> 1\).*--resume --force"):
        open_store(changed, True, {}, {"sweep_spec": changed.record(1)})
    assert len(open_store(changed, True, {}, {"sweep_spec": changed.record(1)}, force=True).rows) == 1


def test_sigterm_stops_a_sweep_as_ctrl_c_does_and_keeps_its_finished_cells(tmp_path, tiny_model_dir):
    out = tmp_path / "out"
    config = _write(
        tmp_path,
        f"output: {out}\nmodel: {tiny_model_dir}\nrepeats: 40\nwarmup: 0\nprompt_lens: [4, 8, 16]\n"
        "gen_lens: [40]\nbackends: [{name: hf-eager}]\n",
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "gpt2bench", "sweep", str(config)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 120
        while not (out / "results.json").exists() and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.2)
        assert (out / "results.json").exists(), "no cell finished in 120 s"
        proc.send_signal(signal.SIGTERM)  # to the sweep alone, as `timeout` or `kill` sends it
        _, err = proc.communicate(timeout=60)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 143 and "Traceback" not in err
    assert "terminated (SIGTERM);" in err and "finished cell(s) are saved in" in err and "--resume" in err
    rows = _rows(out)
    assert 1 <= len(rows) < 3 and all(r["status"] == "ok" for r in rows)
