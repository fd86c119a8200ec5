"""The sweep's side of a worker process: start it, talk to it one JSON line at a time, and tell a
worker that died, hung or was interrupted from one that answered. The protocol is sweep/worker.py's."""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import json
import os
import selectors
import subprocess
import sys
import threading
import time
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from gpt2bench.core.progress import Event, from_line, replay

if TYPE_CHECKING:
    from gpt2bench.measure.spec import RunSpec


class WorkerGone(Exception):
    """The worker died or went silent; the message says which."""


class Interrupted(KeyboardInterrupt):
    """Ctrl-C while a worker measured a cell, with what the worker answered before it stopped: a
    row if it was past its timed runs (a quality check answers with its timed runs), else None."""

    def __init__(self, reply: dict[str, Any] | None) -> None:
        super().__init__()
        self.reply = reply if reply and reply.get("event") == "row" else None


# A terminal's Ctrl-C reaches the workers too (one process group). One in its quality check answers
# at once with its timed runs (runner._quality); one in its timed runs dies without answering.
LAST_WORDS_S = 10.0


def drain(lines: Iterable[str], tail: collections.deque[str]) -> None:
    """Read a worker's stderr to its end: its progress events shown as the sweep's own, every other
    line kept in `tail` for the message if it dies. A phase it died in is ended here."""
    open_phases: dict[str, Event] = {}
    for line in lines:
        event = from_line(line)
        if event is not None:
            if event.kind == "end":
                open_phases.pop(event.name, None)
            else:
                open_phases.setdefault(event.name, event)
            replay(event)
        elif line.strip():
            tail.append(line)
    for event in open_phases.values():  # no spinner left turning for a dead worker's phase
        replay(dataclasses.replace(event, kind="end"))


class Worker:
    """A worker process (sweep/worker.py) for one backend: it loads the backend of `session`, the
    RunSpec whose engine settings every later request shares, then measures request by request.
    `model_at` (reference, folder): load the model from that folder (a cluster node's copy).
    `env`: the worker's whole environment (an A/B side's: its own source first on PYTHONPATH)."""

    def __init__(
        self,
        session: RunSpec,
        run_id: str,
        model_at: tuple[str, str] | None = None,
        env: dict[str, str] | None = None,
    ) -> None:
        self.started = time.perf_counter()  # the sweep's time breakdown counts the load from here
        self.proc = subprocess.Popen(
            # -P: the current folder is not put first on the import path, so the gpt2bench it imports is
            # the installed one or the one PYTHONPATH names (an A/B side's), never a stray folder's.
            [sys.executable, "-P", "-m", "gpt2bench.sweep.worker", str(os.getpid())],  # dies with us
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            bufsize=1,
            env=env,
        )
        # A thread drains stderr all the time, so a chatty worker never blocks on a full pipe and a
        # progress bar's unterminated line never holds up reading the protocol on stdout.
        self.stderr_tail: collections.deque[str] = collections.deque(maxlen=20)
        self._drainer = threading.Thread(target=self._drain_stderr, daemon=True)
        self._drainer.start()
        self.selector = selectors.DefaultSelector()
        self.selector.register(self.proc.stdout, selectors.EVENT_READ)  # type: ignore[arg-type]
        self._send({"run_id": run_id, "spec": session.to_json(), "model_at": model_at})

    def _drain_stderr(self) -> None:
        drain(self.proc.stderr, self.stderr_tail)  # type: ignore[arg-type]

    def _send(self, message: dict[str, Any]) -> None:
        try:
            self.proc.stdin.write(json.dumps(message) + "\n")  # type: ignore[union-attr]
            self.proc.stdin.flush()  # type: ignore[union-attr]
        except BrokenPipeError:
            raise WorkerGone(self._death()) from None

    def _death(self) -> str:
        code = self.proc.poll()
        if code is not None:
            self._drainer.join(timeout=2)  # let it read the dying worker's last words
        detail = self.stderr_tail[-1].strip() if self.stderr_tail else ""
        if code is not None and code < 0:
            how = f"worker killed by signal {-code}" + (" (out of memory?)" if -code == 9 else "")
        else:
            how = f"worker exited with code {code}"
        return f"{how}: {detail}" if detail else how

    def receive(self, timeout: float) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                self.kill()
                raise WorkerGone(f"timed out after {timeout:g} s")
            if self.selector.select(timeout=min(left, 1.0)):
                line = self.proc.stdout.readline()  # type: ignore[union-attr]
                if not line:
                    self.proc.wait()
                    raise WorkerGone(self._death())
                return json.loads(line)
            if self.proc.poll() is not None and not self.selector.select(timeout=0):
                raise WorkerGone(self._death())

    def request(self, spec: RunSpec, label: str, timeout: float) -> dict[str, Any]:
        """Measure the cell `spec` names, shown as `label`: the worker's answer (a row or a failure)."""
        self._send({"spec": spec.to_json(), "label": label})
        try:
            return self.receive(timeout)
        except KeyboardInterrupt:
            reply = None
            with contextlib.suppress(WorkerGone, ValueError, KeyboardInterrupt):  # nothing more to save
                reply = self.receive(LAST_WORDS_S)
            if reply is None:  # no answer in time (it is killed then), a second Ctrl-C or a garbled line
                self.kill()
            raise Interrupted(reply) from None

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.stdin.close()  # type: ignore[union-attr]
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.kill()
