"""Run `gpt2bench serve`: load a backend as `run` does, put it behind the engine and the HTTP app,
serve until SIGINT/SIGTERM. The first line on stdout says where it listens (`--port 0` picks a free
port), which is how `gpt2bench load --backend X` finds the server it started."""

from __future__ import annotations

import asyncio
import sys
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING

from gpt2bench.serving.engine import Engine
from gpt2bench.serving.server import ModelFacts, create_app

if TYPE_CHECKING:
    import uvicorn

    from gpt2bench.backends.base import Backend
    from gpt2bench.measure.spec import RunSpec

LISTENING = "gpt2bench serve: listening on "


def uvicorn_server(app: object, host: str, port: int) -> uvicorn.Server:
    import uvicorn

    config = uvicorn.Config(app, host=host, port=port, log_level="warning", lifespan="off", access_log=False)
    return uvicorn.Server(config)


async def _serve(server: uvicorn.Server, host: str, on_ready: Callable[[str], None]) -> None:
    task = asyncio.create_task(server.serve())
    while not server.started and not task.done():
        await asyncio.sleep(0.05)
    if server.started:
        port = server.servers[0].sockets[0].getsockname()[1]
        on_ready(f"http://{host}:{port}")
    await task


def serve(spec: RunSpec, host: str, port: int, max_batch: int, warn: Callable[[str], None]) -> None:
    """Serve `spec`'s backend and model until interrupted."""
    from gpt2bench.measure.runner import open_session

    session = open_session(spec, warn, check_cell=False)
    config = session.model.config()
    facts = ModelFacts(session.model.reference, int(config.get("n_positions", 1024)), int(config["vocab_size"]))
    engine = Engine(session.backend, max_batch)
    server = uvicorn_server(create_app(engine, session.tokenizer, facts), host, port)

    def ready(url: str) -> None:
        print(LISTENING + url, flush=True)
        print(f"serving {spec.backend} ({session.model.reference}), max batch {max_batch}", file=sys.stderr)

    try:
        asyncio.run(_serve(server, host, ready))
    finally:
        engine.stop()
        session.close()


class BackgroundServer:
    """A server on a thread of this process (the no-work server the client's overhead is measured
    against): started on 127.0.0.1 and a free port, stopped on exit."""

    def __init__(self, backend: Backend, tokenizer: object, facts: ModelFacts, max_batch: int = 1) -> None:
        self.engine = Engine(backend, max_batch)
        self.server = uvicorn_server(create_app(self.engine, tokenizer, facts), "127.0.0.1", 0)  # type: ignore[arg-type]
        self.url = ""
        ready = threading.Event()

        def on_ready(url: str) -> None:
            self.url = url
            ready.set()

        serving = _serve(self.server, "127.0.0.1", on_ready)
        self.thread = threading.Thread(target=lambda: asyncio.run(serving), daemon=True)
        self.thread.start()
        if not ready.wait(timeout=30):
            raise RuntimeError("the in-process server did not start within 30 s")

    def __enter__(self) -> BackgroundServer:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)
        self.engine.stop()
