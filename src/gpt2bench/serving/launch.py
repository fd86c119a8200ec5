"""Servers `gpt2bench load --backend X` starts and stops: `gpt2bench serve` for any backend, and
vLLM's own OpenAI-compatible server for `vllm` (continuous batching). Each is a child process on
127.0.0.1 in a session of its own, waited for until it answers /health (bounded), and stopped on
exit, on Ctrl-C and when the load test fails: SIGTERM, then SIGKILL after a grace period."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections import deque
from collections.abc import Iterator
from pathlib import Path
from threading import Thread

from gpt2bench.core.errors import BenchError
from gpt2bench.serving.serve import LISTENING

START_TIMEOUT_S = 600.0  # vLLM on 2 CPU cores compiles its graphs first: ~1-2 min here
STOP_GRACE_S = 20.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _terminate_with_parent() -> None:
    """In the server's process, before it starts: SIGTERM when the load test that started it dies,
    however it dies (a SIGKILL has no cleanup), so no server is left serving nobody. Linux only."""
    if sys.platform.startswith("linux"):
        import ctypes

        ctypes.CDLL(None).prctl(1, signal.SIGTERM)  # 1 = PR_SET_PDEATHSIG


class ServerProcess:
    """A server child process; `url` once it answers /health. `died()` says why it is gone."""

    def __init__(self, command: list[str], env: dict[str, str] | None = None, url: str | None = None) -> None:
        self.url = url or ""
        self.ready = False
        self.tail: deque[str] = deque(maxlen=30)
        self.proc = subprocess.Popen(
            command,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env={**os.environ, **(env or {})},
            start_new_session=True,  # a Ctrl-C reaches us, and we stop it: never half of its processes
            preexec_fn=_terminate_with_parent,
        )
        self.reader = Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        """Its output: kept for the message if it dies, and shown until it is ready (an export or
        an engine's compile takes minutes the first time, and says so)."""
        for line in self.proc.stdout:  # type: ignore[union-attr]
            if line.startswith(LISTENING) and not self.url:
                self.url = line[len(LISTENING) :].strip()
            elif not self.ready and line.strip():
                print(f"  server: {line.rstrip()}", file=sys.stderr, flush=True)
            self.tail.append(line.rstrip())

    def died(self) -> str | None:
        code = self.proc.poll()
        if code is None:
            return None
        last = next((line for line in reversed(self.tail) if line.strip()), "")
        return f"the server exited with code {code}" + (f": {last[:300]}" if last else "")

    def wait_ready(self, timeout: float = START_TIMEOUT_S) -> str:
        import httpx

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if why := self.died():
                raise BenchError(why)
            if self.url:
                with contextlib.suppress(httpx.HTTPError):
                    if httpx.get(f"{self.url}/health", timeout=2).status_code == 200:
                        self.ready = True
                        return self.url
            time.sleep(0.5)
        self.stop()
        raise BenchError(f"the server did not answer /health within {timeout:g} s")

    def stop(self) -> None:
        if self.proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout=STOP_GRACE_S)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()


def gpt2bench_server(args: list[str]) -> ServerProcess:
    """`gpt2bench serve ARGS --host 127.0.0.1 --port 0`: it prints the port it got."""
    return ServerProcess([sys.executable, "-m", "gpt2bench", "serve", *args, "--host", "127.0.0.1", "--port", "0"])


def vllm_server(model_dir: Path, name: str, dtype: str, threads: int, max_len: int) -> ServerProcess:
    """vLLM's OpenAI server on the model folder: the engine settings of the vllm backend
    (backends/vllm.py) where the server has them, one API process, continuous batching."""
    from gpt2bench.backends.vllm import VLLM_DTYPES
    from gpt2bench.core.paths import cache_dir

    port = free_port()
    command = [
        sys.executable, "-m", "vllm.entrypoints.openai.api_server",
        "--model", str(model_dir), "--served-model-name", name,
        "--host", "127.0.0.1", "--port", str(port),
        "--dtype", VLLM_DTYPES[dtype], "--max-model-len", str(max_len),
        "--kv-cache-memory-bytes", str(2 * 2**30),  # the vllm backend's default kv_cache_gb: 2
        "--uvicorn-log-level", "warning", "--disable-uvicorn-access-log",
    ]  # fmt: skip
    env = {
        "OMP_NUM_THREADS": str(threads),
        "VLLM_CACHE_ROOT": str(cache_dir() / "vllm"),  # its compiled graphs, shared with the vllm backend
        "VLLM_LOGGING_LEVEL": "WARNING",
    }
    return ServerProcess(command, env, url=f"http://127.0.0.1:{port}")


@contextlib.contextmanager
def running(server: ServerProcess) -> Iterator[str]:
    """The server's URL while it runs; stopped afterwards, whatever happened."""
    try:
        yield server.wait_ready()
    finally:
        server.stop()
