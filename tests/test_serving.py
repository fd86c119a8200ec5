"""Many users at once: the metric definitions on synthetic timestamps, the client against a scripted
server with known delays, the real server (engine queue, batching, disconnects, 4xx), and
`gpt2bench load` end to end on the tiny model. Every server binds 127.0.0.1."""

from __future__ import annotations

import asyncio
import json
import math
import shutil
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import numpy as np
import pytest

from conftest import run_cli
from gpt2bench.backends.base import Backend, Sampling
from gpt2bench.serving.client import LoadPlan, arrival_offsets, run_rate
from gpt2bench.serving.engine import Engine, Job
from gpt2bench.serving.load import LoadSpec, meets_slo, next_rate, rates_to_run
from gpt2bench.serving.metrics import RequestRecord, Slo, peak_concurrency, summarize
from gpt2bench.serving.nowork import NoWork
from gpt2bench.serving.serve import BackgroundServer
from gpt2bench.serving.server import ModelFacts

FACTS = ModelFacts("test-model", 128, 50257)


# --- metric definitions on synthetic timestamps -------------------------------------------------


def test_request_metrics_follow_vllms_definitions_and_count_every_token_of_a_chunk():
    # Sent at 10.0; tokens at +0.1 (1), +0.3 (2 in one chunk), +0.4 (1); ended at +0.45.
    r = RequestRecord(sent=10.0, chunks=[(10.05, 0), (10.1, 1), (10.3, 2), (10.4, 1)], ended=10.45, expected_tokens=4)
    assert r.ok and r.output_tokens == 4
    assert math.isclose(r.ttft_s(), 0.1) and math.isclose(r.e2e_s(), 0.45)
    assert math.isclose(r.tpot_s(), (0.45 - 0.1) / 3)
    assert np.allclose(r.itl_s(), [0.2, 0.0, 0.1])  # one gap per token after the first; the pair's second is 0


def test_rate_figures_goodput_and_peak_concurrency():
    def req(sent, ttft, tokens, gap):
        chunks = [(sent + ttft + i * gap, 1) for i in range(tokens)]
        return RequestRecord(sent=sent, chunks=chunks, ended=chunks[-1][0], expected_tokens=tokens)

    records = [req(0.0, 0.1, 5, 0.01), req(0.5, 0.3, 5, 0.05), req(1.0, 0.1, 5, 0.01)]
    records.append(RequestRecord(sent=1.2, chunks=[(1.3, 1)], ended=1.3, error="HTTP 500", expected_tokens=5))
    figures = summarize(records, Slo(ttft_ms=200, tpot_ms=20))
    duration = 1.3 - 0.0  # the first send to the last end
    assert figures["completed"] == 3 and figures["failed"] == 1 and math.isclose(figures["duration_s"], duration)
    assert math.isclose(figures["request_throughput"], 3 / duration)
    assert math.isclose(figures["output_tps"], 15 / duration)
    assert math.isclose(figures["goodput"], 2 / duration)  # the second request's TTFT (300 ms) misses its SLO
    assert math.isclose(figures["ttft_ms_median"], 100.0) and math.isclose(figures["tpot_ms_median"], 10.0)
    assert figures["errors"] == ["HTTP 500"] and math.isclose(figures["slo_attainment"], 2 / 4)
    assert meets_slo(figures, 0.5) and not meets_slo(figures, 0.9)
    # In flight: [0, 0.14], [0.5, 1.0], [1.0, 1.14], [1.2, 1.3]: an end and a send at 1.0 are not two at once.
    assert peak_concurrency(records) == 1
    assert peak_concurrency([RequestRecord(0.0, ended=2.0), RequestRecord(1.0, ended=3.0)]) == 2


def test_arrivals_are_poisson_at_the_rate_and_all_at_once_for_inf():
    offsets = arrival_offsets(4001, 10.0, 1.0, seed=0)
    gaps = np.diff(offsets)
    assert offsets[0] == 0.0 and abs(gaps.mean() - 0.1) < 0.005 and abs(gaps.std() - 0.1) < 0.01  # exponential
    even = np.diff(arrival_offsets(4001, 10.0, 50.0, seed=0))
    assert abs(even.mean() - 0.1) < 0.005 and even.std() < 0.03  # a high gamma shape: nearly even gaps
    assert arrival_offsets(3, math.inf, 1.0, 0) == [0.0, 0.0, 0.0]


def test_max_rate_search_bisects_between_the_best_good_and_the_first_bad_rate():
    assert next_rate({1.0: 1.0, 2.0: 0.95, 4.0: 0.3}, 0.9) == 3.0
    assert next_rate({1.0: 1.0, 2.0: 0.95}, 0.9) is None and next_rate({1.0: 0.5}, 0.9) == 0.5
    assert next_rate({1.0: 1.0, math.inf: 0.0}, 0.9) == 2.0
    assert next_rate({0.5: 0.6, 1.0: 0.4}, 0.9) == 0.25  # halving helps: load is the cause
    assert next_rate({0.5: 0.4, 1.0: 0.5}, 0.9) is None  # it did not: no lower rate will meet the SLOs

    def measure(rate):  # a server that keeps up to 5 requests/s
        return {"slo_attainment": 1.0 if rate <= 5 else 0.5}

    spec = LoadSpec([2.0, 8.0], 10, 4, 4, Slo(), find_max_rate=True)
    tried = [f.get("searched", False) for f in rates_to_run(spec, measure)]
    assert tried[:2] == [False, False] and len(tried) == 2 + 5  # 5.0, 3.5?, ... bounded by SEARCH_STEPS


# --- the client against a scripted server with known delays -------------------------------------


class Scripted(BaseHTTPRequestHandler):
    """Streams 4 tokens: the first after 80 ms, then a chunk of two after 40 ms, then one after 40 ms."""

    def log_message(self, *args):
        pass

    def do_GET(self):
        body = json.dumps({"object": "list", "data": [{"id": "scripted"}]}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self):
        self.rfile.read(int(self.headers["Content-Length"]))
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.end_headers()
        for delay, ids in ((0.08, [1]), (0.04, [2, 3]), (0.04, [4])):
            time.sleep(delay)
            chunk = {"choices": [{"text": "x", "token_ids": ids}]}
            self.wfile.write(f"data: {json.dumps(chunk)}\n\n".encode())
            self.wfile.flush()
        self.wfile.write(b"data: [DONE]\n\n")
        self.close_connection = True


@pytest.fixture
def scripted_url():
    server = ThreadingHTTPServer(("127.0.0.1", 0), Scripted)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def test_the_client_timestamps_each_chunk_and_counts_its_token_ids(scripted_url):
    plan = LoadPlan(scripted_url, "scripted", [[1, 2]] * 3, gen_len=4, rate=math.inf)
    records = asyncio.run(run_rate(plan))
    assert all(r.ok and r.output_tokens == 4 for r in records), [r.error for r in records]
    for r in records:
        assert 0.08 <= r.ttft_s() < 0.08 + 0.15
        gaps = r.itl_s()
        # 40 ms between writes; a chunk read a little late shortens the gap after it (39.96 ms seen in CI).
        assert len(gaps) == 3 and gaps[1] == 0.0 and all(g >= 0.03 for g in (gaps[0], gaps[2]))
    assert summarize(records, Slo(ttft_ms=50))["goodput"] == 0.0  # every TTFT is over 80 ms
    assert summarize(records, Slo(ttft_ms=1000))["goodput"] > 0


def test_a_server_that_gives_fewer_tokens_than_asked_fails_those_requests(scripted_url):
    plan = LoadPlan(scripted_url, "scripted", [[1, 2]], gen_len=5, rate=math.inf)
    (record,) = asyncio.run(run_rate(plan))
    assert not record.ok and "4 tokens came back, 5 were asked for" in record.error


# --- the real server -----------------------------------------------------------------------------


class Slow(Backend):
    """Zeros after `step_s` a step, and which batch sizes it was asked to generate."""

    name = "slow"

    def __init__(self, step_s: float = 0.0) -> None:
        self.step_s, self.batches = step_s, []

    def load(self, model, settings):
        return {}

    def generate(self, input_ids, max_new_tokens, sampling):
        self.batches.append(input_ids.shape[0])
        for _ in range(max_new_tokens):
            time.sleep(self.step_s)
            yield np.arange(input_ids.shape[0], dtype=np.int64) + 7

    def logits(self, input_ids):
        raise NotImplementedError


@pytest.fixture
def tokenizer_():
    from gpt2bench.models.ref import load_tokenizer

    return load_tokenizer()


def test_the_engine_batches_waiting_requests_of_one_shape(tokenizer_):
    backend = Slow(step_s=0.05)
    engine = Engine(backend, max_batch=3)

    async def main():
        loop = asyncio.get_running_loop()
        jobs = [Job([1, 2, 3], 4, Sampling(), loop) for _ in range(4)] + [Job([1, 2], 4, Sampling(), loop)]
        for job in jobs:
            engine.submit(job)
        outs = []
        for job in jobs:
            tokens = []
            while (item := await job.out.get()) is not None:
                tokens.append(item)
            outs.append(tokens)
        return outs

    outs = asyncio.run(main())
    engine.stop()
    assert all(len(t) == 4 for t in outs)
    # The first request runs alone (nothing waited yet), then up to 3 of its shape, the other shape last.
    assert sum(backend.batches) == 5 and max(backend.batches) <= 3 and len(backend.batches) >= 2
    assert outs[0] == [7] * 4


def test_a_client_that_goes_away_frees_the_engine(tokenizer_):
    backend = Slow(step_s=0.05)  # 200 tokens would take 10 s
    with BackgroundServer(backend, tokenizer_, FACTS) as server:
        body = {"prompt": [1, 2, 3], "max_tokens": 100, "stream": True}
        with httpx.stream("POST", f"{server.url}/v1/completions", json=body, timeout=10) as response:
            next(response.iter_lines())  # one token, then hang up
        t0 = time.monotonic()
        done = httpx.post(f"{server.url}/v1/completions", json={"prompt": [1], "max_tokens": 2}, timeout=10)
        waited = time.monotonic() - t0
    assert done.status_code == 200 and done.json()["choices"][0]["token_ids"] == [7, 7]
    assert waited < 2.0, f"the next request waited {waited:.1f} s behind a request nobody reads"


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("not json", "the body is not JSON"),
        (json.dumps([1, 2]), "the body must be a JSON object"),
        (json.dumps({"prompt": [], "max_tokens": 2}), "'prompt' must be a non-empty"),
        (json.dumps({"prompt": [99999999], "max_tokens": 2}), "outside the vocabulary"),
        (json.dumps({"prompt": [1], "max_tokens": 0}), "'max_tokens' must be a positive integer"),
        (json.dumps({"prompt": [1] * 100, "max_tokens": 100}), "exceeds the model's 128-token context"),
        (json.dumps({"prompt": [1], "temperature": -1}), "'temperature' must be >= 0"),
        (json.dumps({"prompt": [1], "n": 2}), "only n = 1"),
    ],
)
def test_a_malformed_request_gets_a_400_with_a_json_error(tokenizer_, body, message):
    with BackgroundServer(NoWork(), tokenizer_, FACTS) as server:
        response = httpx.post(f"{server.url}/v1/completions", content=body, timeout=10)
        after = httpx.get(f"{server.url}/health", timeout=10)
    assert response.status_code == 400 and message in response.json()["error"]["message"]
    assert after.status_code == 200  # and the server goes on


def test_the_server_speaks_openai_completions(tokenizer_):
    with BackgroundServer(NoWork(), tokenizer_, FACTS) as server:
        models = httpx.get(f"{server.url}/v1/models", timeout=10).json()
        whole = httpx.post(f"{server.url}/v1/completions", json={"prompt": "Hello", "max_tokens": 3}, timeout=10)
    assert models["data"][0]["id"] == "test-model"
    body = whole.json()
    assert body["object"] == "text_completion" and body["choices"][0]["token_ids"] == [0, 0, 0]
    assert body["usage"]["completion_tokens"] == 3 and body["choices"][0]["finish_reason"] == "length"


# --- gpt2bench load end to end ---------------------------------------------------------------------


@pytest.mark.parametrize("backend", ["hf-eager", "onnx-int8"])
def test_load_against_a_server_it_starts_counts_every_token(tmp_path, tiny_model_dir, backend):
    done = run_cli(
        "load", "--backend", backend, "--model", str(tiny_model_dir), "--request-rate", "8,inf",
        "--num-requests", "12", "--prompt-len", "8", "--gen-len", "6", "--threads", "1",
        "--slo", "ttft=5000,tpot=1000", "--output", str(tmp_path), timeout=400,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    (folder,) = [p for p in tmp_path.iterdir() if p.is_dir()]
    rows = json.loads((folder / "results.json").read_text())["rows"]
    assert [r["request_rate"] for r in rows] == [8.0, "inf"] and len({r["cell_key"] for r in rows}) == 2
    for row in rows:
        assert row["scenario"] == "serve" and row["completed"] == 12 and row["failed"] == 0
        assert math.isclose(row["output_tps"] * row["duration_s"], 12 * 6)  # exact token counts
        assert row["client_overhead_ttft_ms_median"] > 0 and row["backend"] == backend
    assert "highest rate within the SLOs (ttft=5000,tpot=1000, 90% of requests): 8 requests/s" in done.stdout
    plotted = run_cli("plot", str(folder))
    assert plotted.returncode == 0, plotted.stderr
    assert (folder / "goodput_vs_rate.png").is_file() and "Load tests" in (folder / "summary.md").read_text()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--url", "http://127.0.0.1:1"], "cannot reach 'http://127.0.0.1:1'"),
        (["--backend", "hf-eager", "--request-rate", "0"], "every rate must be > 0"),
        (["--backend", "hf-eager", "--request-rate", "-1,2"], "every rate must be > 0"),
        (["--backend", "hf-eager", "--request-rate", "fast"], "is not a list of numbers"),
        (["--backend", "hf-eager", "--prompt-len", "1000", "--gen-len", "100"], "exceeds the model's 1024-token"),
        (["--backend", "hf-eager", "--slo", "ttft=abc"], "expected ttft=MS,tpot=MS"),
        ([], "give --backend"),
        (["--backend", "hf-eager", "--url", "http://127.0.0.1:1"], "not both"),
        (["--backend", "nope"], "unknown backend"),
    ],
)
def test_bad_load_input_is_one_line(tmp_path, tiny_model_dir, args, message):
    done = run_cli("load", "--model", str(tiny_model_dir), *args, "--output", str(tmp_path), timeout=120)
    assert done.returncode != 0 and message in done.stderr, done.stderr
    assert "Traceback" not in done.stderr and len(done.stderr.strip().splitlines()) <= 2


def test_a_server_that_is_not_openai_is_named(tmp_path):
    class NotOpenAI(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_GET(self):
            self.send_response(404)
            self.end_headers()
            self.wfile.write(b"<html>no</html>")

    server = ThreadingHTTPServer(("127.0.0.1", 0), NotOpenAI)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        done = run_cli("load", "--url", f"http://127.0.0.1:{server.server_address[1]}", "--output", str(tmp_path))
    finally:
        server.shutdown()
    assert done.returncode == 2 and "is not an OpenAI-compatible server" in done.stderr


def test_load_against_vllms_own_server(tmp_path, tiny_model_dir):
    """vLLM's OpenAI server (continuous batching) started, loaded and stopped by `load`: ~1-2 min,
    most of it vLLM compiling its graphs."""
    pytest.importorskip("vllm")
    done = run_cli(
        "load", "--backend", "vllm", "--model", str(tiny_model_dir), "--request-rate", "inf",
        "--num-requests", "8", "--prompt-len", "8", "--gen-len", "6", "--threads", "1", "--output", str(tmp_path),
        timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    (folder,) = [p for p in tmp_path.iterdir() if p.is_dir()]
    (row,) = json.loads((folder / "results.json").read_text())["rows"]
    assert row["completed"] == 8 and row["batch_size"] == 0 and row["peak_concurrency"] == 8
    assert math.isclose(row["output_tps"] * row["duration_s"], 8 * 6)  # vLLM's token_ids, counted exactly
    assert row["tpot_ms_median"] is not None


def _load_in_background(tmp_path, model_dir, *more):
    import subprocess
    import sys

    return subprocess.Popen(
        [sys.executable, "-m", "gpt2bench", "load", "--backend", "hf-eager", "--model", str(model_dir),
         "--prompt-len", "8", "--gen-len", "6", "--threads", "1", "--output", str(tmp_path), *more],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip


def _servers_of(model_dir) -> list[int]:
    import subprocess

    found = subprocess.run(["pgrep", "-f", f"gpt2bench serve .*{model_dir}"], capture_output=True, text=True)
    return [int(pid) for pid in found.stdout.split()]


def _kill(proc, model_dir) -> None:
    """Whatever a failed test left running: the load process and its server."""
    import os
    import signal

    if proc.poll() is None:
        proc.kill()
        proc.wait()
    for pid in _servers_of(model_dir):
        os.kill(pid, signal.SIGKILL)


def _wait_for(condition, timeout=120.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := condition():
            return value
        time.sleep(0.2)
    raise AssertionError("timed out")


def test_ctrl_c_stops_the_server_load_started(tmp_path, tiny_model_dir):
    import signal

    model = tmp_path / "model-ctrl-c"  # a path of its own: pgrep finds this test's server only
    shutil.copytree(tiny_model_dir, model)
    proc = _load_in_background(tmp_path, model, "--request-rate", "1", "--num-requests", "200")
    try:
        _wait_for(lambda: _servers_of(model))
        time.sleep(3)  # inside the rate
        proc.send_signal(signal.SIGINT)
        _, stderr = proc.communicate(timeout=60)
        assert proc.returncode == 130 and "interrupted; 0 finished rate(s) are saved" in stderr
        _wait_for(lambda: not _servers_of(model), timeout=30)
    finally:
        _kill(proc, model)


def test_a_server_that_dies_mid_run_ends_the_test_with_a_clear_error_and_keeps_the_rates_before(
    tmp_path, tiny_model_dir
):
    import os
    import signal

    model = tmp_path / "model-dies"
    shutil.copytree(tiny_model_dir, model)
    proc = _load_in_background(tmp_path, model, "--request-rate", "20,2", "--num-requests", "12")
    results = lambda: next(tmp_path.glob("*/results.json"), None)  # noqa: E731
    try:
        _wait_for(lambda: results() and json.loads(results().read_text())["rows"])  # the first rate is saved
        for pid in _servers_of(model):
            os.kill(pid, signal.SIGKILL)
        _, stderr = proc.communicate(timeout=120)
    finally:
        _kill(proc, model)
    assert proc.returncode == 1 and "the server exited with code -9" in stderr, stderr
    rows = json.loads(results().read_text())["rows"]
    assert rows[0]["status"] == "ok" and rows[0]["completed"] == 12
    assert rows[1]["status"] == "failed" and "exited" in rows[1]["error"]
