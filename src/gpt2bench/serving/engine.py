"""The serving engine: one thread owns the backend and runs the requests waiting in its queue, FIFO
one at a time, or with max_batch > 1 as a static batch of the requests waiting with the same prompt
length and output length (a backend's batch has one shape). Tokens go to each request's asyncio
queue as the backend yields them; a request whose client went away is dropped from its batch, and
a batch with no client left stops at the next step. The engine reads no clock: timing is the
client's.
"""

from __future__ import annotations

import asyncio
import queue
import threading
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from gpt2bench.backends.base import Backend, Sampling

DONE = None  # the end of a request's token stream


@dataclass
class Job:
    prompt: list[int]
    max_tokens: int
    sampling: Sampling
    loop: asyncio.AbstractEventLoop
    out: asyncio.Queue = field(default_factory=asyncio.Queue)
    cancelled: threading.Event = field(default_factory=threading.Event)

    def shape(self) -> tuple[int, int, Sampling]:
        return len(self.prompt), self.max_tokens, self.sampling

    def send(self, item: Any) -> None:
        self.loop.call_soon_threadsafe(self.out.put_nowait, item)


class Engine:
    """The backend behind a request queue, on a thread of its own."""

    def __init__(self, backend: Backend, max_batch: int = 1) -> None:
        self.backend, self.max_batch = backend, max_batch
        self.jobs: queue.Queue[Job | None] = queue.Queue()
        self.waiting: list[Job] = []  # taken from the queue, not yet run (another shape's batch went first)
        self.shape: tuple[int, int, int, Sampling] | None = None
        self.thread = threading.Thread(target=self._run, name="gpt2bench-engine", daemon=True)
        self.thread.start()

    def submit(self, job: Job) -> None:
        self.jobs.put(job)

    def stop(self) -> None:
        self.jobs.put(None)
        self.thread.join(timeout=30)

    def _next_batch(self) -> list[Job] | None:
        """The oldest waiting request and, up to max_batch, the others waiting with its shape."""
        if not self.waiting:
            job = self.jobs.get()
            if job is None:
                return None
            self.waiting.append(job)
        while self.max_batch > 1:  # everything queued now, so a batch sees every waiting request
            try:
                job = self.jobs.get_nowait()
            except queue.Empty:
                break
            if job is None:
                self.jobs.put(None)
                break
            self.waiting.append(job)
        live = [j for j in self.waiting if not j.cancelled.is_set()]
        for gone in (j for j in self.waiting if j.cancelled.is_set()):
            gone.send(DONE)
        if not live:
            self.waiting = []
            return []
        batch = [j for j in live if j.shape() == live[0].shape()][: self.max_batch]
        self.waiting = [j for j in live if j not in batch]
        return batch

    def _run(self) -> None:
        while (batch := self._next_batch()) is not None:
            if batch:
                self._generate(batch)

    def _generate(self, batch: list[Job]) -> None:
        prompt_len, max_tokens, sampling = batch[0].shape()
        shape = (len(batch), prompt_len, max_tokens, sampling)
        try:
            if shape != self.shape:  # a compiled backend (static-kv) sets up for each new shape once
                self.backend.setup(len(batch), prompt_len, max_tokens, sampling)
                self.shape = shape
            ids = np.asarray([j.prompt for j in batch], dtype=np.int64)
            steps = self.backend.generate(ids, max_tokens, sampling)
            for step in steps:
                tokens = np.asarray(step, dtype=np.int64).reshape(-1)
                for job, token in zip(batch, tokens, strict=True):
                    if not job.cancelled.is_set():
                        job.send(int(token))
                if all(j.cancelled.is_set() for j in batch):
                    close = getattr(steps, "close", None)
                    if close is not None:
                        close()
                    break
        except Exception as exc:  # the request's client gets a 500 with the reason; the engine goes on
            for job in batch:
                job.send(exc)
            self.shape = None
            return
        for job in batch:
            job.send(DONE)
