"""The load generator's client: open-loop arrivals (Poisson, or gamma with a burstiness), an async
HTTP client that streams each completion and timestamps every chunk on arrival, token ids counted
from the chunks (`token_ids`, asked for with `return_token_ids`), never re-tokenized text. Every
loop is bounded: a fixed number of requests per rate, a time limit for sending them and one for
each request."""

from __future__ import annotations

import asyncio
import json
import math
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from gpt2bench.serving.metrics import RequestRecord


@dataclass(frozen=True)
class LoadPlan:
    """What one rate sends: `num_requests` prompts of token ids, exactly `gen_len` tokens each."""

    url: str
    model: str
    prompts: list[list[int]]
    gen_len: int
    rate: float  # requests per second; inf sends them all at once
    burstiness: float = 1.0  # the gamma shape of the gaps: 1 is Poisson, < 1 burstier, > 1 more even
    max_concurrency: int | None = None
    seed: int = 0
    max_send_s: float = 600.0  # no request is sent later than this after the first
    request_timeout_s: float = 300.0


def arrival_offsets(n: int, rate: float, burstiness: float, seed: int) -> list[float]:
    """When each of `n` requests is due, in seconds from the first (which is due at 0): gaps drawn
    from a gamma distribution of mean 1/rate and shape `burstiness` (exponential when 1)."""
    if math.isinf(rate):
        return [0.0] * n
    rng = np.random.default_rng(seed)
    gaps = rng.gamma(shape=burstiness, scale=1.0 / (rate * burstiness), size=max(n - 1, 0))
    return [0.0, *np.cumsum(gaps).tolist()][:n]


def payload(plan: LoadPlan, prompt: list[int]) -> dict[str, Any]:
    """An OpenAI completion request for exactly gen_len tokens whatever the model says (EOS
    ignored where the server knows how), streamed, with the token ids of every chunk."""
    return {
        "model": plan.model,
        "prompt": prompt,
        "max_tokens": plan.gen_len,
        "min_tokens": plan.gen_len,
        "ignore_eos": True,
        "temperature": 0.0,
        "stream": True,
        "return_token_ids": True,
    }


def _chunk_tokens(data: str) -> int:
    """The token ids one streamed chunk carries; a chunk without them cannot be counted."""
    body = json.loads(data)
    if "error" in body:
        raise RuntimeError(f"the server sent an error: {body['error'].get('message', body['error'])}")
    choice = (body.get("choices") or [{}])[0]
    ids = choice.get("token_ids")
    if ids is None:
        raise RuntimeError("a streamed chunk carries no token_ids (the server ignores return_token_ids)")
    return len(ids)


async def send_one(client: Any, plan: LoadPlan, prompt: list[int], record: RequestRecord) -> None:
    """One streamed request; what happened is in `record` (never raises)."""
    clock = time.perf_counter
    record.sent = clock()
    try:
        async with client.stream("POST", f"{plan.url}/v1/completions", json=payload(plan, prompt)) as response:
            if response.status_code != 200:
                text = (await response.aread()).decode(errors="replace")[:200]
                record.error = f"HTTP {response.status_code}: {text}"
                return
            async for line in response.aiter_lines():
                if not line.startswith("data:"):
                    continue
                data = line[5:].strip()
                if data == "[DONE]":
                    break
                now = clock()  # the chunk's arrival, before it is parsed
                record.chunks.append((now, _chunk_tokens(data)))
        record.ended = clock()
        if record.output_tokens != plan.gen_len:
            record.error = f"{record.output_tokens} tokens came back, {plan.gen_len} were asked for"
    except Exception as exc:  # a refused or dropped connection, a timeout, a malformed chunk
        record.error = f"{type(exc).__name__}: {exc}"[:200] or type(exc).__name__


async def run_rate(plan: LoadPlan) -> list[RequestRecord]:
    """Send the plan's requests at their due times (open loop: a slow server does not slow the
    arrivals, only --max-concurrency holds them back) and wait for all of them, bounded in time."""
    import httpx

    offsets = arrival_offsets(len(plan.prompts), plan.rate, plan.burstiness, plan.seed)
    limit = asyncio.Semaphore(plan.max_concurrency) if plan.max_concurrency else None
    records = [RequestRecord(sent=math.nan, expected_tokens=plan.gen_len) for _ in plan.prompts]
    timeout = httpx.Timeout(plan.request_timeout_s, connect=10.0)
    limits = httpx.Limits(max_connections=None, max_keepalive_connections=None)

    async def one(i: int, client: httpx.AsyncClient) -> None:
        if limit is None:
            await send_one(client, plan, plan.prompts[i], records[i])
            return
        async with limit:
            await send_one(client, plan, plan.prompts[i], records[i])

    async with httpx.AsyncClient(timeout=timeout, limits=limits) as client:
        start = time.perf_counter()
        tasks = []
        for i, offset in enumerate(offsets):
            if offset > plan.max_send_s or time.perf_counter() - start > plan.max_send_s:
                break
            delay = start + offset - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one(i, client)))
        await asyncio.wait(tasks, timeout=plan.request_timeout_s + plan.max_send_s)
        for task in tasks:
            task.cancel()
    sent = records[: len(tasks)]
    for record in sent:
        if record.ended is None and not record.error:
            record.error = "no answer within the time limit"
    return sent
