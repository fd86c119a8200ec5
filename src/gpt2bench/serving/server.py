"""`gpt2bench serve`: an OpenAI-compatible `/v1/completions` endpoint (streaming and not, token ids
in every chunk), `/health` and `/v1/models`, for any gpt2bench backend, on Starlette and uvicorn.
The backend runs on the engine's thread (serving/engine.py); the event loop only parses, queues
and streams. Every output is exactly `max_tokens` long (EOS is never a stop: gpt2bench's backends
generate fixed lengths), so `ignore_eos` and `min_tokens` are accepted and change nothing.
A malformed request gets a 4xx with a JSON error; an engine failure a 500; the server goes on.
"""

from __future__ import annotations

import json
import math
import secrets
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from gpt2bench.backends.base import Sampling
from gpt2bench.serving.engine import DONE, Engine, Job

if TYPE_CHECKING:
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import Response
    from tokenizers import Tokenizer


class BadRequest(Exception):
    """A request the server refuses, with the reason for the client (HTTP 400)."""


@dataclass(frozen=True)
class Completion:
    prompt: list[int]
    max_tokens: int
    stream: bool
    sampling: Sampling


@dataclass(frozen=True)
class ModelFacts:
    name: str
    n_positions: int
    vocab_size: int


def parse_completion(body: Any, tokenizer: Tokenizer, model: ModelFacts) -> Completion:
    """The request's prompt (text, tokenized here, or token ids), length and sampling, checked."""
    if not isinstance(body, dict):
        raise BadRequest("the body must be a JSON object")
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str | list):
        prompt = prompt[0]  # OpenAI's batch form with one prompt
    if isinstance(prompt, str) and prompt:
        ids = tokenizer.encode(prompt).ids
    elif isinstance(prompt, list) and prompt and all(isinstance(t, int) and not isinstance(t, bool) for t in prompt):
        ids = prompt
    else:
        raise BadRequest("'prompt' must be a non-empty string or a non-empty list of token ids (one prompt)")
    if any(not 0 <= t < model.vocab_size for t in ids):
        raise BadRequest(f"'prompt' holds token ids outside the vocabulary (0..{model.vocab_size - 1})")
    max_tokens = body.get("max_tokens", 16)
    if not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens < 1:
        raise BadRequest("'max_tokens' must be a positive integer")
    if len(ids) + max_tokens > model.n_positions:
        raise BadRequest(
            f"prompt ({len(ids)} tokens) + max_tokens ({max_tokens}) exceeds the model's "
            f"{model.n_positions}-token context"
        )
    if body.get("n", 1) != 1 or body.get("best_of", 1) != 1:
        raise BadRequest("only n = 1 and best_of = 1 are served")
    temperature = body.get("temperature", 0.0)
    top_p = body.get("top_p", 1.0)
    seed = body.get("seed", 0) or 0
    numbers = (temperature, top_p)
    if not all(isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) for v in numbers):
        raise BadRequest("'temperature' and 'top_p' must be finite numbers")
    if temperature < 0 or not 0 < top_p <= 1 or not isinstance(seed, int):
        raise BadRequest("'temperature' must be >= 0, 'top_p' in (0, 1], 'seed' an integer")
    sampling = Sampling(float(temperature), 0, float(top_p), seed)
    return Completion(list(ids), max_tokens, bool(body.get("stream", False)), sampling)


def _error(status: int, message: str, kind: str = "invalid_request_error") -> Response:
    from starlette.responses import JSONResponse

    return JSONResponse({"error": {"message": message, "type": kind, "code": status}}, status_code=status)


def _choice(text: str, ids: list[int], finish: str | None) -> dict[str, Any]:
    return {"index": 0, "text": text, "token_ids": ids, "logprobs": None, "finish_reason": finish}


def create_app(engine: Engine, tokenizer: Tokenizer, model: ModelFacts) -> Starlette:
    from starlette.applications import Starlette
    from starlette.responses import JSONResponse, StreamingResponse
    from starlette.routing import Route

    async def health(_request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def models(_request: Request) -> Response:
        entry = {"id": model.name, "object": "model", "created": 0, "owned_by": "gpt2bench"}
        return JSONResponse({"object": "list", "data": [entry]})

    async def completions(request: Request) -> Response:
        import asyncio

        try:
            body = json.loads(await request.body())
            completion = parse_completion(body, tokenizer, model)
        except ValueError:
            return _error(400, "the body is not JSON")
        except BadRequest as exc:
            return _error(400, str(exc))
        job = Job(completion.prompt, completion.max_tokens, completion.sampling, asyncio.get_running_loop())
        engine.submit(job)
        head = {"id": f"cmpl-{secrets.token_hex(8)}", "object": "text_completion", "created": int(time.time())}
        head["model"] = model.name
        if completion.stream:
            return StreamingResponse(_stream(job, head, tokenizer), media_type="text/event-stream")
        return await _whole(job, head, tokenizer)

    routes = [
        Route("/health", health, methods=["GET"]),
        Route("/v1/models", models, methods=["GET"]),
        Route("/v1/completions", completions, methods=["POST"]),
    ]
    return Starlette(routes=routes)


async def _stream(job: Job, head: dict[str, Any], tokenizer: Tokenizer) -> AsyncIterator[str]:
    """One server-sent event a token; the last names why it stopped. A client that goes away
    cancels this generator, and the engine drops the request at its next step."""
    count = 0
    try:
        while (item := await job.out.get()) is not DONE:
            if isinstance(item, Exception):
                error = {"error": {"message": f"the engine failed: {item}", "type": "server_error", "code": 500}}
                yield f"data: {json.dumps(error)}\n\n"
                return
            count += 1
            finish = "length" if count == job.max_tokens else None
            chunk = {**head, "choices": [_choice(tokenizer.decode([item]), [item], finish)]}
            yield f"data: {json.dumps(chunk)}\n\n"
        yield "data: [DONE]\n\n"
    finally:
        job.cancelled.set()


async def _whole(job: Job, head: dict[str, Any], tokenizer: Tokenizer) -> Response:
    from starlette.responses import JSONResponse

    ids: list[int] = []
    try:
        while (item := await job.out.get()) is not DONE:
            if isinstance(item, Exception):
                return _error(500, f"the engine failed: {item}", "server_error")
            ids.append(item)
    finally:
        job.cancelled.set()
    n_in, n_out = len(job.prompt), len(ids)
    usage = {"prompt_tokens": n_in, "completion_tokens": n_out, "total_tokens": n_in + n_out}
    body = {**head, "choices": [_choice(tokenizer.decode(ids), ids, "length")], "usage": usage}
    return JSONResponse(body)
