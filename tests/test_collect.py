"""A folder of results folders (one per `run`) read as one document, for plot and compare."""

import json

import pytest

from conftest import run_cli
from gpt2bench.core.errors import BenchError
from gpt2bench.measure.row import COLUMNS
from gpt2bench.report.collect import read_results

ZEN3 = {"cpu_model": "AMD EPYC", "cpu": {"family": "25", "model": "1", "isa": ["avx2"]}, "git": {"commit": "abc"}}


def write_run(folder, backend, tpot, when, options="{}", model="random", weights="r0", env=ZEN3, threads=2):
    row = dict.fromkeys(COLUMNS)
    row.update(
        label=backend,
        backend=backend,
        status="ok",
        dtype="fp32",
        options=options,
        device="cpu",
        prompt_len=50,
        gen_len=100,
        batch_size=1,
        model=model,
        model_hash=weights,
        weights="random",
        threads=threads,
        sampling="greedy",
        ttft_ms_median=20.0,
        tpot_ms_median=tpot,
        e2e_ms_median=20 + 99 * tpot,
        e2e_ms_mean=20 + 99 * tpot,
        decode_tps_median=1000 / tpot,
        timestamp_utc=when,
    )
    folder.mkdir(parents=True)
    doc = {"schema_version": 1, "run_id": folder.name, "environment": env, "rows": [row], "samples": [{}]}
    (folder / "results.json").write_text(json.dumps(doc))


def test_every_run_in_a_folder_is_read_and_a_repeated_measurement_replaces_the_older(tmp_path):
    write_run(tmp_path / "a", "onnx", 20.0, "2026-12-01T10:00:00")
    write_run(tmp_path / "b", "hf-eager", 40.0, "2026-12-01T10:05:00")
    write_run(tmp_path / "c", "onnx", 22.0, "2026-12-01T10:10:00")  # onnx again, later
    doc = read_results(tmp_path)
    assert sorted((r["label"], r["tpot_ms_median"]) for r in doc["rows"]) == [("hf-eager", 40.0), ("onnx", 22.0)]
    assert doc["combined"]["folders"] == 3 and doc["combined"]["superseded"] == 1
    assert read_results(tmp_path / "a")["rows"][0]["tpot_ms_median"] == 20.0  # one run folder: as it is


def test_one_label_over_two_configurations_is_told_apart(tmp_path):
    write_run(tmp_path / "a", "onnx-int8", 8.0, "2026-12-01T10:00:00")
    write_run(tmp_path / "b", "onnx-int8", 9.0, "2026-12-01T10:05:00", options='{"per_channel": false}')
    write_run(tmp_path / "c", "hf-eager", 40.0, "2026-12-01T10:06:00", threads=1)
    labels = sorted(r["label"] for r in read_results(tmp_path)["rows"])
    assert labels == ["hf-eager", "onnx-int8 (default options)", "onnx-int8 (per_channel=False)"]


def test_rebuilding_the_artifacts_is_the_same_configuration(tmp_path):
    # rebuild=true only exported the ONNX files again: its run replaces the older one, unlabelled.
    write_run(tmp_path / "a", "onnx", 20.0, "2026-12-01T10:00:00")
    write_run(tmp_path / "b", "onnx", 21.0, "2026-12-01T10:05:00", options='{"rebuild": true}')
    basic = '{"ort_opt_level": "basic", "rebuild": true}'
    write_run(tmp_path / "c", "onnx", 23.0, "2026-12-01T10:06:00", options=basic)
    doc = read_results(tmp_path)
    rows = sorted((r["label"], r["tpot_ms_median"]) for r in doc["rows"])
    assert rows == [("onnx (default options)", 21.0), ("onnx (ort_opt_level=basic)", 23.0)]
    assert doc["combined"]["superseded"] == 1


def test_two_models_need_a_choice_and_two_cpus_are_refused(tmp_path):
    write_run(tmp_path / "a", "onnx", 20.0, "2026-12-01T10:00:00")
    write_run(tmp_path / "b", "onnx", 2.0, "2026-12-01T10:05:00", model="tiny", weights="t1")
    write_run(tmp_path / "c", "onnx", 2.0, "2026-12-01T10:06:00", model="/cache/models/tiny", weights="t1")
    with pytest.raises(BenchError, match=r"2 models .*choose one with --model"):
        read_results(tmp_path)
    # The same weights under two names are one model; the newer measurement stands.
    (row,) = read_results(tmp_path, model="t1")["rows"]
    assert row["model"] == "/cache/models/tiny"
    zen4 = {**ZEN3, "cpu": {"family": "25", "model": "17", "isa": ["avx2", "avx512_bf16"]}}
    write_run(tmp_path / "d", "hf-eager", 30.0, "2026-12-01T10:07:00", model="tiny", weights="t1", env=zen4)
    with pytest.raises(BenchError, match="2 CPUs"):
        read_results(tmp_path, model="tiny")


def test_plot_and_compare_take_a_folder_of_runs(tmp_path):
    runs = tmp_path / "results"
    write_run(runs / "a", "onnx", 20.0, "2026-12-01T10:00:00")
    write_run(runs / "b", "hf-eager", 40.0, "2026-12-01T10:05:00")
    proc = run_cli("plot", str(runs))
    assert proc.returncode == 0, proc.stderr
    summary = (runs / "summary.md").read_text()
    assert "Combined from 2 results folders" in summary and "| onnx | 20.0 | 20.00 |" in summary
    compared = run_cli("compare", str(runs), str(runs))
    assert compared.returncode == 0 and "0 regression(s), 0 missing" in compared.stdout
    empty = tmp_path / "empty"
    empty.mkdir()
    bad = run_cli("plot", str(empty))
    assert bad.returncode == 1 and "no folder in it does" in bad.stderr
