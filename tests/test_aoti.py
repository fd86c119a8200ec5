"""static-kv's AOTInductor packages: built once, loaded by later processes, keyed on everything that
decides their code, bounded on disk, built by one process at a time."""

import json
import os
import threading
import time

import numpy as np
import pytest

from conftest import greedy, load_backend, run_cli, run_python

CHILD = """
import json, sys
from pathlib import Path
import numpy as np
from gpt2bench.backends import BackendSettings, get_backend
from gpt2bench.backends.base import Sampling
from gpt2bench.measure.prompts import make_prompts
from gpt2bench.models.ref import load_tokenizer, local_model

model = local_model("tiny", Path(sys.argv[1]))
backend = get_backend("static-kv").create()
backend.load(model, BackendSettings(threads=2, options={"compile_mode": "default"}))
ids = make_prompts(load_tokenizer(model), 16, 2).input_ids
tokens = np.stack(list(backend.generate(ids, 12, Sampling())), axis=1)
logits = backend.logits(ids)
print(json.dumps({"details": backend.describe(), "tokens": tokens.tolist(), "logits": logits.tolist()}))
"""


def test_a_later_process_loads_the_packages_an_earlier_one_built(tmp_path, tiny_model_dir, tiny_model, prompts):
    from gpt2bench.backends.aoti import DIR_ENV

    env = {DIR_ENV: str(tmp_path / "aoti")}
    cold = json.loads(run_python(CHILD, str(tiny_model_dir), env=env).splitlines()[-1])
    packages = sorted(p.name for p in (tmp_path / "aoti").glob("*.pt2"))
    warm = json.loads(run_python(CHILD, str(tiny_model_dir), env=env).splitlines()[-1])
    # decode, prefill and full logits: built by the first process, loaded as they were by the second
    assert [name.split("-")[0] for name in packages] == ["decode", "logits", "prefill"]
    assert cold["details"]["aoti_packages"] == {"built": 3, "loaded": 3} and cold["details"]["compile_cache"] == "cold"
    assert warm["details"]["aoti_packages"] == {"built": 0, "loaded": 3} and warm["details"]["compile_cache"] == "warm"
    assert sorted(p.name for p in (tmp_path / "aoti").glob("*.pt2")) == packages
    hf = load_backend("hf-eager", tiny_model)
    for run in (cold, warm):  # the same tokens as hf-eager, through a KV cache the two packages share
        np.testing.assert_array_equal(np.array(run["tokens"]), greedy(hf, prompts, 12))
        assert np.abs(np.array(run["logits"]) - hf.logits(prompts)).max() < 1e-4


def test_a_package_is_named_by_everything_that_decides_its_code(tiny_model):
    import torch

    from gpt2bench.backends.aoti import Step, package_key
    from gpt2bench.backends.gpt2 import GPT2
    from gpt2bench.backends.static_kv_steps import decode_step, prefill_step

    fp32 = GPT2.from_hf(tiny_model.path, torch.float32, torch.device("cpu"))
    bf16 = GPT2.from_hf(tiny_model.path, torch.bfloat16, torch.device("cpu"))
    step = Step("decode", decode_step, {"freezing": True})
    greedy_params = (0.0, 0, 1.0)
    key = package_key(step, fp32, "w1", 1, greedy_params)
    assert key == package_key(Step("decode", decode_step, {"freezing": True}), fp32, "w1", 1, greedy_params)
    assert key.startswith("decode-b1-")
    others = [
        package_key(step, bf16, "w1", 1, greedy_params),  # dtype
        package_key(step, fp32, "w2", 1, greedy_params),  # weights
        package_key(step, fp32, "w1", 2, greedy_params),  # batch size
        package_key(step, fp32, "w1", 1, (0.8, 50, 0.9)),  # sampling, compiled into the step
        package_key(Step("decode", decode_step, {"max_autotune": True}), fp32, "w1", 1, greedy_params),
        package_key(Step("decode", prefill_step, {"freezing": True}), fp32, "w1", 1, greedy_params),
    ]
    threads = torch.get_num_threads()
    torch.set_num_threads(1 if threads > 1 else 2)  # inductor writes the count into its OpenMP loops
    try:
        others.append(package_key(step, fp32, "w1", 1, greedy_params))
    finally:
        torch.set_num_threads(threads)
    assert len({key, *others}) == len(others) + 1


def _file(path, size: int, age_s: float):
    path.write_bytes(b"\0" * size)
    then = time.time() - age_s
    os.utime(path, (then, then))
    return path


def test_the_package_folder_keeps_the_most_recently_loaded_within_its_size(tmp_path):
    from gpt2bench.backends.aoti import STALE_BUILD_S, evict, locked

    old, mid, new = (_file(tmp_path / f"{n}.pt2", 100, age) for n, age in (("old", 300), ("mid", 200), ("new", 100)))
    just_built = _file(tmp_path / "built.pt2", 250, 0)
    stale, live = tmp_path / "build-stale", tmp_path / "build-live"
    for folder, age in ((stale, STALE_BUILD_S + 60), (live, 10)):
        folder.mkdir()
        os.utime(folder, (time.time() - age, time.time() - age))
    assert evict(tmp_path, 400, keep=just_built) == [old, mid]  # oldest first, until 100 + 250 <= 400
    assert new.exists() and just_built.exists() and not old.exists() and not mid.exists()
    assert not stale.exists() and live.exists()  # a killed build's folder goes; one in progress stays
    with locked(new):  # another process loading it: passed by
        assert evict(tmp_path, 10, keep=just_built) == []
    assert evict(tmp_path, 10, keep=just_built) == [new]  # the package just built stays whatever its size


def test_the_size_limit_is_read_from_the_environment(monkeypatch):
    from gpt2bench.backends.aoti import MAX_GB_ENV, max_bytes
    from gpt2bench.core.errors import UsageError

    monkeypatch.delenv(MAX_GB_ENV, raising=False)
    assert max_bytes() == 10 * 2**30
    monkeypatch.setenv(MAX_GB_ENV, "0.5")
    assert max_bytes() == 2**29
    for bad in ("lots", "0", "-2"):
        monkeypatch.setenv(MAX_GB_ENV, bad)
        with pytest.raises(UsageError, match=f"AOTI_MAX_GB must be a positive number of gigabytes, got '{bad}'"):
            max_bytes()


def test_one_process_at_a_time_builds_a_package(tmp_path):
    from gpt2bench.backends.aoti import locked

    path = tmp_path / "decode-b1-x.pt2"
    order = []
    holding, release = threading.Event(), threading.Event()

    def first():
        with locked(path):
            order.append("first in")
            holding.set()
            release.wait(10)
            order.append("first out")

    thread = threading.Thread(target=first)
    thread.start()
    holding.wait(10)

    def later():
        with locked(path):
            order.append("second in")

    second = threading.Thread(target=later)
    second.start()
    second.join(0.3)
    assert order == ["first in"]  # the second waits while the first builds
    release.set()
    thread.join(10)
    second.join(10)
    assert order == ["first in", "first out", "second in"]


def test_a_compiler_that_does_not_exist_is_one_line(tiny_model_dir):
    proc = run_cli(
        "run", "-b", "static-kv", "--model", str(tiny_model_dir), "--option", "compiler=tvm",
        "--prompt-len", "4", "--gen-len", "2",
    )  # fmt: skip
    assert proc.returncode != 0
    assert "compiler must be one of aoti, dynamo, got 'tvm'" in proc.stderr and "Traceback" not in proc.stderr


def test_a_bad_size_limit_stops_before_a_build(tiny_model, tmp_path, monkeypatch):
    import torch

    from gpt2bench.backends.aoti import COUNTS, DIR_ENV, MAX_GB_ENV, PackagedStep, Step
    from gpt2bench.backends.gpt2 import GPT2
    from gpt2bench.backends.static_kv_steps import decode_step
    from gpt2bench.core.errors import UsageError

    monkeypatch.setenv(DIR_ENV, str(tmp_path))
    monkeypatch.setenv(MAX_GB_ENV, "lots")
    model = GPT2.from_hf(tiny_model.path, torch.float32, torch.device("cpu"))
    model.setup_caches(1, 128)
    step = PackagedStep(Step("decode", decode_step, {"freezing": True}), tiny_model.weights_hash)
    built = COUNTS["built"]
    with pytest.raises(UsageError, match="GPT2BENCH_AOTI_MAX_GB"):
        step(model, torch.zeros(1, 1, dtype=torch.long), torch.tensor([0]), torch.arange(64), 0.0, 0, 1.0)
    assert COUNTS["built"] == built and not list(tmp_path.glob("*.pt2"))  # nothing built, then refused
