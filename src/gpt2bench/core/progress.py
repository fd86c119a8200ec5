"""Long work says what it is doing. Any layer opens a `phase` ("building the onnx-int8 artifact",
"training the tiny model", 600 steps) and reports its steps; how that looks is the caller's choice.
The CLI shows a rich bar on a terminal (cli/progress.py); everywhere else (CI logs, a pipe) the
default prints plain lines: the start, a step line at most every PLAIN_EVERY_S with an ETA, the end.
A sweep's worker process turns its events into tagged stderr lines (`as_line`), and the sweep's
process replays them (`from_line`), so a worker's 60 s vLLM start shows in the sweep's own view.

No clock here is a measured one: phases wrap preparation, never the timed repetitions."""

from __future__ import annotations

import contextlib
import json
import os
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass

PLAIN_EVERY_S = 10.0


def quiet_libraries() -> None:
    """Progress bars and info logs from transformers and the Hub ("Writing model shards") would
    interleave with ours. Read when those libraries are imported: call this before."""
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


TAG = "gpt2bench-phase "


@dataclass(frozen=True)
class Event:
    """One change of a phase: `kind` is "start", "step" or "end"; `total` None for a phase of
    unknown length (a spinner); `detail` a sub-step's name or a figure worth showing."""

    kind: str
    name: str
    done: int = 0
    total: int | None = None
    elapsed_s: float = 0.0
    detail: str = ""


Listener = Callable[[Event], None]


class PlainLines:
    """Events as lines on stderr: the start, steps at most every `every_s` seconds, the end."""

    def __init__(self, every_s: float = PLAIN_EVERY_S, write: Callable[[str], None] | None = None) -> None:
        self.every_s = every_s
        self.write = write or (lambda line: print(line, file=sys.stderr, flush=True))
        self._last_line_s: dict[str, float] = {}

    def __call__(self, event: Event) -> None:
        if event.kind == "start":
            self._last_line_s[event.name] = 0.0
            self.write(f"{event.name} ...")
        elif event.kind == "end":
            self._last_line_s.pop(event.name, None)
            self.write(f"{event.name}: done in {event.elapsed_s:.1f} s")
        elif event.elapsed_s - self._last_line_s.get(event.name, 0.0) >= self.every_s:
            self._last_line_s[event.name] = event.elapsed_s
            self.write(f"{event.name}: {describe_step(event)}")


def describe_step(event: Event) -> str:
    """'loss 4.21, 120/600 (20%), 31 s, ~2 min left' or, without a total, 'bandwidth, 12 s'."""
    parts = [event.detail] if event.detail else []
    if event.total:
        parts.append(f"{event.done}/{event.total} ({100 * event.done / event.total:.0f}%)")
    parts.append(f"{event.elapsed_s:.0f} s")
    if event.total and 0 < event.done < event.total:
        parts.append(f"~{format_eta(event.elapsed_s / event.done * (event.total - event.done))} left")
    return ", ".join(parts)


def format_eta(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 90 else f"{seconds / 60:.0f} min"


_listeners: list[Listener] = []


@contextlib.contextmanager
def listening(listener: Listener) -> Iterator[None]:
    """Send every phase opened inside this block to `listener` instead of the plain lines."""
    _listeners.append(listener)
    try:
        yield
    finally:
        _listeners.remove(listener)


def _emit(event: Event) -> None:
    (_listeners[-1] if _listeners else _default)(event)


_default: Listener = PlainLines()


class Phase:
    """A phase in progress: `step` reports how far it got."""

    def __init__(self, name: str, total: int | None) -> None:
        self.name, self.total = name, total
        self.t0 = time.monotonic()
        self.done = 0

    def step(self, done: int | None = None, detail: str = "") -> None:
        """`done` steps of `total` so far (one more when None), with an optional `detail`."""
        self.done = self.done + 1 if done is None else done
        _emit(Event("step", self.name, self.done, self.total, time.monotonic() - self.t0, detail))


@contextlib.contextmanager
def phase(name: str, total: int | None = None) -> Iterator[Phase]:
    """A named piece of long work; its end is reported whether it finished or failed."""
    current = Phase(name, total)
    _emit(Event("start", name, 0, total))
    try:
        yield current
    finally:
        _emit(Event("end", name, current.done, total, time.monotonic() - current.t0))


def as_line(event: Event) -> str:
    """The event as one tagged line, for a worker process to pass to its parent through stderr."""
    return TAG + json.dumps(asdict(event))


def from_line(line: str) -> Event | None:
    """The event of a tagged line, or None for any other line (a library's own output)."""
    if not line.startswith(TAG):
        return None
    try:
        return Event(**json.loads(line[len(TAG) :]))
    except (ValueError, TypeError):
        return None


def replay(event: Event) -> None:
    """Show an event another process reported as if it happened here."""
    _emit(event)


def replay_line(line: str) -> bool:
    """Replay the event of another process's tagged line; False for any other line (a library's
    own output), which is the caller's."""
    event = from_line(line)
    if event is not None:
        _emit(event)
    return event is not None


def replay_lines(stream: Iterable[str]) -> list[str]:
    """Replay a child's tagged stderr lines to its end; the other non-empty lines, for its errors."""
    return [line for line in stream if line.strip() and not replay_line(line)]


@contextlib.contextmanager
def report_to_parent() -> Iterator[None]:
    """In a child process: every phase as a tagged stderr line, for the parent's `replay_line`."""
    with listening(lambda event: print(as_line(event), file=sys.stderr, flush=True)):
        yield
