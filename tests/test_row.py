"""The result row's one owner (measure/row.py): the identity every reader of results shares, the
failed row that carries it, and the RunSpec wire format between a sweep and its workers."""

import json
from pathlib import Path

from conftest import run_cli
from gpt2bench.backends.base import Sampling
from gpt2bench.measure.row import config_key, failed_row, identity, label, spec_fields
from gpt2bench.measure.spec import QualitySettings, RunSpec
from gpt2bench.models.ref import ModelRef
from gpt2bench.report.collect import read_results
from gpt2bench.report.compare import compare

MODEL = ModelRef("random", Path("/models/random"), "random", "0123456789abcdef")


def test_a_failed_row_has_the_identity_of_the_ok_row_it_stands_for():
    spec = RunSpec(backend="onnx", threads=2, options={"ort_opt_level": "basic"})
    failed = failed_row(spec, MODEL, "run-1", "worker killed by signal 9")
    ok = spec_fields(spec, MODEL, "run-2")
    assert identity(failed) == identity(ok) and config_key(failed) == config_key(ok) == failed["cell_key"]
    assert failed["threads"] == 2 and failed["model_hash"] == MODEL.weights_hash and failed["sampling"] == "greedy"
    assert failed["status"] == "failed" and failed["timestamp_utc"]


def test_identity_is_what_was_measured_not_how_it_was_prepared_or_how_long():
    spec = RunSpec(backend="onnx", threads=2)
    key = config_key(spec_fields(spec, MODEL, "r"))
    same = [
        RunSpec(backend="onnx", threads=2, options={"rebuild": True}),  # exported again: same configuration
        RunSpec(backend="onnx", threads=2, repeats=50, warmup=0),
    ]
    other = [
        RunSpec(backend="onnx", threads=1),
        RunSpec(backend="onnx", threads=2, sampling=Sampling(temperature=0.7)),
        RunSpec(backend="onnx", threads=2, dtype="fp32", prompt_len=51),
        RunSpec(backend="onnx-opt", threads=2),
    ]
    assert all(config_key(spec_fields(s, MODEL, "r")) == key for s in same)
    assert len({key, *(config_key(spec_fields(s, MODEL, "r")) for s in other)}) == 1 + len(other)
    assert label("static-kv", "bf16") == "static-kv@bf16" and label("onnx", "fp32") == "onnx"


def test_the_run_spec_is_its_own_wire_format():
    spec = RunSpec(
        backend="onnx-int8",
        threads=2,
        options={"per_channel": False, "weight_type": "QUInt8"},
        sampling=Sampling(temperature=0.8, top_k=40, top_p=0.9, seed=7),
        quality=QualitySettings(window=128, stride=64, max_windows=2, text=Path("/data/eval.txt")),
        probe_bandwidth=True,
    )
    assert RunSpec.from_json(spec.to_json()) == spec
    json.dumps(spec.as_record())  # JSON-safe as it is: the eval text's path is a string
    assert spec.as_record()["quality"]["text"] == "/data/eval.txt"
    assert RunSpec.from_json(RunSpec(backend="hf-eager").to_json()).quality is None


def _doc(options: str, status: str = "ok", stamp: str = "2026-12-02T10:00:00Z") -> dict:
    row = {
        **spec_fields(RunSpec(backend="onnx", threads=2, prompt_len=8, gen_len=16), MODEL, "r"),
        "options": options,
        "status": status,
        "timestamp_utc": stamp,
        "tpot_ms_median": 10.0,
    }
    return {"schema_version": 1, "rows": [row], "samples": [{"per_run": {"tpot_ms": [10.0, 10.1, 9.9]}}]}


def test_a_rebuild_run_compared_with_a_plain_baseline_is_compared_not_missing():
    verdicts = compare(_doc("{}"), _doc('{"rebuild": true}'), metrics=("tpot_ms",))
    assert [(v.metric, v.verdict) for v in verdicts] == [("tpot_ms", "same")]


def _write_run(folder: Path, doc: dict) -> None:
    folder.mkdir(parents=True)
    (folder / "results.json").write_text(json.dumps(doc))


def test_a_failed_cell_is_not_listed_once_a_later_run_of_it_succeeded(tmp_path):
    _write_run(tmp_path / "a-failed", _doc("{}", "failed", "2026-12-02T09:00:00Z"))
    _write_run(tmp_path / "b-ok", _doc("{}", "ok", "2026-12-02T10:00:00Z"))
    _write_run(tmp_path / "c-failed-again", _doc("{}", "failed", "2026-12-02T11:00:00Z"))
    rows = read_results(tmp_path)["rows"]
    assert [r["status"] for r in rows] == ["ok"]  # the success stands; no failure of it is listed


def test_a_sweeps_failed_cell_is_superseded_by_a_later_run_end_to_end(tmp_path, tiny_model_dir):
    results = tmp_path / "results"
    config = tmp_path / "sweep.yaml"
    config.write_text(
        f"output: {results / 'sweep'}\nmodel: {tiny_model_dir}\nrepeats: 1\nwarmup: 0\nprompt_lens: [4]\n"
        "gen_lens: [3]\ncell_timeout_s: 0.3\nbackends: [{name: hf-eager}]\n"
    )
    assert run_cli("sweep", str(config)).returncode == 1  # the cell timed out: a failed row
    run = run_cli(
        "run", "-b", "hf-eager", "--model", str(tiny_model_dir), "--prompt-len", "4", "--gen-len", "3",
        "--repeats", "2", "--warmup", "0", "--output", str(results),
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    proc = run_cli("plot", str(results))
    assert proc.returncode == 0, proc.stderr
    summary = (results / "summary.md").read_text()
    assert "## Failed cells" not in summary and "| hf-eager | 4 | 3 | 1 |" in summary


def test_each_node_placement_keys_a_cell_by_machine_type_and_leaves_other_keys_alone():
    from gpt2bench.measure.row import on_machine

    fields = spec_fields(RunSpec(backend="onnx", threads=2), MODEL, "r")
    assert on_machine(fields, None) is fields  # one machine, or spread: the key it always had
    zen, xeon = on_machine(fields, "zen3zen3zen3"), on_machine(fields, "xeonxeonxeon")
    assert len({fields["cell_key"], zen["cell_key"], xeon["cell_key"]}) == 3
    assert zen["cell_key"] == config_key(zen) and identity(zen)["node_type"] == "zen3zen3zen3"
    assert config_key({**fields, "node_type": None}) == fields["cell_key"]
