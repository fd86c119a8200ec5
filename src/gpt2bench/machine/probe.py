"""The read-bandwidth probe of `--probe-bandwidth`, in a helper process of its own.

The probe is a torch microbenchmark over ~0.5 GB of buffers. Run inside the measured process it
would import torch into ONNX Runtime and vLLM runs (resident libraries in their RSS, a second
OpenMP pool beside theirs) and put its buffers in every backend's peak RSS. A helper process
measures the same memory system at the same moment and leaves the measured process as it was.
It waits on a pipe between probes, so it costs no CPU while the backend runs.

Protocol: the helper prints "ready" once torch is imported, then one GB/s figure per line it reads.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
from types import TracebackType

from gpt2bench.core.errors import BenchError

READY = "ready"


class BandwidthProbe:
    """`probe()` -> read GB/s, measured in the helper with `threads` torch threads."""

    def __init__(self, threads: int, size_mb: int = 256, repeats: int = 3) -> None:
        self.args = [sys.executable, "-m", "gpt2bench.machine.probe", str(threads), str(size_mb), str(repeats)]
        self.proc: subprocess.Popen[str] | None = None

    def __enter__(self) -> BandwidthProbe:
        # stderr to a file, not a pipe: nobody reads it until a failure, and a full pipe would stall the helper.
        self.stderr = tempfile.TemporaryFile(mode="w+")
        self.proc = subprocess.Popen(
            self.args, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.stderr, text=True
        )
        self._expect(READY)
        return self

    def __call__(self) -> float:
        assert self.proc is not None and self.proc.stdin is not None, "use BandwidthProbe as a context manager"
        try:
            self.proc.stdin.write("\n")
            self.proc.stdin.flush()
        except BrokenPipeError:
            pass  # the helper died: _expect reports why
        return float(self._expect(None))

    def _expect(self, wanted: str | None) -> str:
        assert self.proc is not None and self.proc.stdout is not None
        line = self.proc.stdout.readline().strip()
        if not line or (wanted is not None and line != wanted):
            self.proc.kill()
            self.proc.wait()
            self.stderr.seek(0)
            err = self.stderr.read().strip().splitlines()
            raise BenchError(f"the bandwidth probe's helper process failed: {err[-1] if err else line or 'no output'}")
        return line

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self.proc is None:
            return
        if self.proc.stdin:
            self.proc.stdin.close()  # EOF: the helper's loop ends
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        if self.proc.stdout:
            self.proc.stdout.close()
        self.stderr.close()


def serve(threads: int, size_mb: int, repeats: int) -> None:
    import torch  # noqa: F401  (imported before "ready", so no probe pays for it)

    from gpt2bench.machine.roofs import measure_read_bandwidth

    print(READY, flush=True)
    for _ in sys.stdin:
        print(measure_read_bandwidth(threads, size_mb=size_mb, repeats=repeats), flush=True)


if __name__ == "__main__":
    serve(*(int(arg) for arg in sys.argv[1:4]))
