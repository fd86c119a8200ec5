"""Bad input that used to end in a library's exception ("internal error: ...") or do the wrong
thing, now a one-line error naming the problem (issue: every bad input a clear error)."""

import json
import re
import shutil
from pathlib import Path

import pytest

from conftest import run_cli
from gpt2bench.core.errors import BenchError, UsageError
from gpt2bench.models.ref import MARKER
from gpt2bench.models.resolve import resolve_model
from gpt2bench.report.compare import compare
from gpt2bench.sweep.config import load_sweep


def one_line_error(proc, code, needle):
    assert proc.returncode == code, (proc.returncode, proc.stderr)
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "internal error" not in lines[0] and needle in lines[0], proc.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--temperature", "nan"], "temperature must be a finite number, got nan"),
        (["--temperature", "inf"], "temperature must be a finite number, got inf"),
        (["--top-p", "nan"], "top-p must be a finite number, got nan"),
    ],
)
def test_non_finite_sampling_is_refused_before_any_load(args, message):
    one_line_error(run_cli("run", "-b", "hf-eager", *args), 2, message)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"\x89PNG\r\n\x1a\n\x00\xff\xfe", "not a text file (a sweep config is YAML)"),
        (b"- hf-eager\n- onnx\n", ":1: the config must be a mapping of keys"),
        (
            b"output: x\nrepeats: 3\nprompt_lens: [1]\ngen_lens: [1]\nrepeats: 5\nbackends: [{name: hf-eager}]\n",
            ":5: repeats: given twice (first on line 2)",
        ),
        (
            b"output: x\nprompt_lens: [1]\ngen_lens: [1]\n"
            b"backends: [{name: onnx, options: {rebuild: true, rebuild: false}}]\n",
            "backends[0].options.rebuild: given twice",
        ),
    ],
)
def test_sweep_configs_that_were_read_wrongly_or_crashed(tmp_path, content, message):
    path = tmp_path / "sweep.yaml"
    path.write_bytes(content)
    with pytest.raises(UsageError, match=re.escape(message)):
        load_sweep(path)


def test_a_binary_sweep_config_from_the_cli_is_one_line(tmp_path):
    path = tmp_path / "weights.bin"
    path.write_bytes(bytes(range(256)))
    one_line_error(run_cli("sweep", str(path)), 2, "not a text file")


def test_an_eval_text_that_is_a_folder_says_so(tmp_path):
    proc = run_cli("run", "-b", "hf-eager", "--quality", "--eval-text", str(tmp_path))
    one_line_error(proc, 2, "is a folder; give a text file")


def _corrupt(tiny_model_dir, tmp_path, change):
    folder = tmp_path / "model"
    shutil.copytree(tiny_model_dir, folder)
    change(folder)
    return folder


def _config(text):
    return lambda folder: (folder / "config.json").write_text(text)


def _truncate(size):
    def cut(folder):
        path = folder / "model.safetensors"
        data = path.read_bytes()
        path.write_bytes(data[:size])

    return cut


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (_truncate(-1000), "model.safetensors is truncated or not a safetensors file: its tensors need"),
        (_truncate(0), "model.safetensors is truncated or not a safetensors file (0 bytes)"),
        (_truncate(20), "model.safetensors is truncated or not a safetensors file (20 bytes)"),
        (_config("{not json"), "config.json is not readable JSON (JSONDecodeError)"),
        (_config("[1, 2]"), "config.json holds a JSON list, not a model config"),
        (_config("{}"), "describes model_type None; gpt2bench runs GPT-2"),
        (_config('{"model_type": "bert", "hidden_size": 768}'), "describes model_type 'bert'"),
        (_config('{"model_type": "gpt2", "n_layer": 2}'), "config.json has no n_embd, n_head, vocab_size"),
        (
            _config('{"model_type": "gpt2", "n_embd": 128, "n_layer": 2, "n_head": 2, "vocab_size": 50257}'),
            "holds a token embedding of shape [50257, 64], config.json says [50257, 128]",
        ),
    ],
)
def test_a_broken_model_folder_is_named_before_any_backend_loads_it(tiny_model_dir, tmp_path, change, message):
    folder = _corrupt(tiny_model_dir, tmp_path, change)
    with pytest.raises(BenchError, match=re.escape(message)):
        resolve_model(str(folder))


def test_a_broken_model_folder_from_the_cli_is_one_line(tiny_model_dir, tmp_path):
    folder = _corrupt(tiny_model_dir, tmp_path, _truncate(-1000))
    proc = run_cli("run", "-b", "hf-eager", "--model", str(folder), "--repeats", "1", "--output", str(tmp_path / "o"))
    one_line_error(proc, 1, "model.safetensors is truncated")


def test_a_corrupt_cached_random_model_is_built_again(tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("GPT2BENCH_CACHE", str(tmp_path))
    folder = resolve_model("random").path
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:4096])  # an interrupted copy, a full disk
    assert (folder / MARKER).is_file()
    ref = resolve_model("random")
    assert "the cached random model is corrupt" in caplog.text and "building it again" in caplog.text
    assert ref.path == folder and weights.stat().st_size > 400e6  # the whole 124M again


def _doc(model_hash, name):
    row = {"status": "ok", "backend": "onnx", "model": name, "model_hash": model_hash, "prompt_len": 8}
    return {"schema_version": 1, "rows": [row], "samples": [{}]}


def test_compare_says_the_models_differ_instead_of_missing_and_new():
    with pytest.raises(
        UsageError, match=r"the runs measured different models: the baseline random \(aaaa\), the new run tiny \(bbbb\)"
    ):
        compare(_doc("aaaa", "random"), _doc("bbbb", "tiny"))
    assert compare(_doc("aaaa", "random"), _doc("aaaa", "/models/random"), metrics=("tpot_ms",)) == []


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["run", "-b", "hf-eager", "--prompt-len", "abc"], "error: Invalid value for '--prompt-len'"),
        (["run", "--nope"], "error: No such option: --nope"),
        (["run"], "error: Missing option '--backend' / '-b'; see 'gpt2bench run --help'"),
        (["nosuchcmd"], "error: No such command 'nosuchcmd'; see 'gpt2bench --help'"),
    ],
)
def test_a_bad_option_value_is_one_line_like_every_other_usage_error(args, message):
    one_line_error(run_cli(*args), 2, message)  # not click's five-line box


@pytest.mark.parametrize("target", ["file", "/dev/null"])
def test_an_output_that_is_a_file_says_so(tmp_path, target):
    path = tmp_path / "file" if target == "file" else Path(target)
    if target == "file":
        path.write_text("")
    one_line_error(run_cli("run", "-b", "hf-eager", "--output", str(path)), 1, f"'{path}' is a file, not a folder")


def test_a_cache_that_is_a_file_is_refused_before_any_work(tmp_path):
    cache = tmp_path / "cache"
    cache.write_text("")
    proc = run_cli("run", "-b", "hf-eager", "--model", "tiny", "--output", str(tmp_path / "out"),
                   env={"GPT2BENCH_CACHE": str(cache)})  # fmt: skip
    one_line_error(proc, 1, "cannot use the cache folder")  # not minutes of training first
    assert "GPT2BENCH_CACHE moves it" in proc.stderr and not (tmp_path / "out").exists()


def test_a_run_that_fails_after_the_output_check_leaves_no_empty_folder(tmp_path):
    out = tmp_path / "new" / "results"
    proc = run_cli("run", "-b", "hf-eager", "--model", str(tmp_path / "no-model"), "--output", str(out))
    one_line_error(proc, 1, "does not exist")
    assert not (tmp_path / "new").exists()
    sweep = tmp_path / "sweep.yaml"
    sweep.write_text(f"output: {out}\nmodel: {tmp_path / 'no-model'}\nprompt_lens: [4]\ngen_lens: [3]\n"
                     "backends: [{name: hf-eager}]\n")  # fmt: skip
    one_line_error(run_cli("sweep", str(sweep)), 1, "does not exist")
    assert not (tmp_path / "new").exists()


def test_a_corrupt_cached_tiny_model_is_trained_again(tmp_path, monkeypatch, caplog):
    from gpt2bench.models import tiny

    monkeypatch.setenv("GPT2BENCH_CACHE", str(tmp_path))
    quick = tiny.TinyRecipe(n_layer=1, n_positions=64, seq_len=64, steps=3)  # the real training, short
    monkeypatch.setattr(tiny.tiny_model_dir, "__defaults__", (quick, False))
    folder = resolve_model("tiny").path
    weights = folder / "model.safetensors"
    size = weights.stat().st_size
    weights.write_bytes(b"")  # an interrupted copy, a full disk
    ref = resolve_model("tiny")
    assert "the cached tiny model is corrupt" in caplog.text and "training it again" in caplog.text
    assert ref.path == folder and weights.stat().st_size == size


def _refuses_new_files(folder: Path) -> bool:
    try:
        (folder / "gpt2bench-probe").mkdir()
    except OSError:
        return True
    (folder / "gpt2bench-probe").rmdir()
    return False


# sysfs refuses new folders even to root, who writes through a chmod 0o555 regardless.
READ_ONLY = Path("/sys/kernel")


@pytest.mark.skipif(not READ_ONLY.is_dir() or not _refuses_new_files(READ_ONLY), reason="no place refuses writes")
@pytest.mark.parametrize(
    ("args", "env", "message"),
    [
        (["run", "-b", "hf-eager", "--output", f"{READ_ONLY}/results"], {}, "cannot write results to"),
        (["run", "-b", "hf-eager", "--model", "tiny"], {"GPT2BENCH_CACHE": f"{READ_ONLY}/c"}, "cannot use the cache"),
        (["plot", "{fixture}", "--out", f"{READ_ONLY}/figures"], {}, "cannot write figures to"),
    ],
)
def test_a_place_that_refuses_writes_is_one_line_before_any_work(tmp_path, monkeypatch, args, env, message):
    from test_plot import fixture_doc

    monkeypatch.chdir(tmp_path)  # the default results/ folder lands here, if anything went wrong
    (tmp_path / "results.json").write_text(json.dumps(fixture_doc()))
    one_line_error(run_cli(*[a.replace("{fixture}", str(tmp_path)) for a in args], env=env), 1, message)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results.json"]
