"""How long work looks on a terminal: each open phase (core/progress.py) a row of the command's rich
progress display, with a spinner, its name, a bar and an ETA when its length is known, and the
sub-step it is in. Off a terminal (CI logs, a pipe) the plain lines of core/progress.py stay."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from gpt2bench.core.progress import Event, listening

if TYPE_CHECKING:
    from rich.console import Console
    from rich.progress import Progress, TaskID

TICK_S = 0.1


def columns() -> tuple[Any, ...]:
    """A spinner, the phase, its bar, done/total, elapsed, ETA and the sub-step: one row per phase."""
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        SpinnerColumn,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )
    from rich.text import Text

    class CountColumn(MofNCompleteColumn):
        """done/total, and nothing for a phase of unknown length (not "0/?")."""

        def render(self, task: Any) -> Text:
            return Text("") if task.total is None else super().render(task)

    return (
        SpinnerColumn(),
        TextColumn("{task.description}"),
        BarColumn(),
        CountColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        TextColumn("{task.fields[detail]}"),
    )


class TerminalPhases:
    """Phases as rows of `progress`. A command that times repetitions in its own process builds its
    display with auto_refresh=False, so no refresh thread runs while it measures; this listener then
    refreshes it from a thread of its own only while a phase is open (loading, building, quality)."""

    def __init__(self, progress: Progress) -> None:
        self.progress = progress
        self.tasks: dict[str, TaskID] = {}
        self._stop = threading.Event()
        self._ticker: threading.Thread | None = None

    def __call__(self, event: Event) -> None:
        if event.kind == "start":
            self.tasks[event.name] = self.progress.add_task(event.name, total=event.total, detail="")
            self._tick()
        elif event.kind == "step" and event.name in self.tasks:
            self.progress.update(self.tasks[event.name], completed=event.done, detail=event.detail)
        elif event.kind == "end" and event.name in self.tasks:
            self.progress.remove_task(self.tasks.pop(event.name))
            if not self.tasks:
                self.close()
        self.progress.refresh()

    def _tick(self) -> None:
        if self._ticker is None:
            self._stop.clear()
            self._ticker = threading.Thread(target=self._run, daemon=True)
            self._ticker.start()

    def _run(self) -> None:
        while not self._stop.wait(TICK_S):
            self.progress.refresh()

    def close(self) -> None:
        if self._ticker is not None:
            self._stop.set()
            self._ticker.join()
            self._ticker = None


@contextlib.contextmanager
def phases_on(progress: Progress) -> Iterator[None]:
    """Show the phases opened inside this block on `progress` when it draws on a terminal."""
    if not progress.console.is_terminal:
        yield
        return
    listener = TerminalPhases(progress)
    try:
        with listening(listener):
            yield
    finally:
        listener.close()


@contextlib.contextmanager
def phases_shown(console: Console) -> Iterator[None]:
    """A display of its own for a command whose only long work is phases (env, make-tiny)."""
    from rich.progress import Progress

    if not console.is_terminal:
        yield
        return
    with Progress(*columns(), console=console, transient=True, auto_refresh=False) as progress, phases_on(progress):
        yield
