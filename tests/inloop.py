"""A uvicorn server for running inside the test's own event loop."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Iterator
from typing import Any

import anyio
import uvicorn
from starlette.applications import Starlette

from relay.server import uvicorn_config
from relay.settings import Settings


class InLoopServer(uvicorn.Server):
    """``uvicorn.Server`` that signals readiness and leaves signal handling to pytest."""

    def __init__(self, config: uvicorn.Config) -> None:
        super().__init__(config)
        self.ready = anyio.Event()

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield  # leave pytest's signal handling alone

    async def startup(self, sockets: Any = None) -> None:
        await super().startup(sockets)
        self.ready.set()


@contextlib.asynccontextmanager
async def serving_app(app: Starlette, ready_within: float = 10.0) -> AsyncIterator[str]:
    """Serve ``app`` on a free port of 127.0.0.1 in this loop; yields its base URL."""
    server = InLoopServer(uvicorn_config(app, Settings(port=0, log_level="warning")))
    async with anyio.create_task_group() as tasks:
        tasks.start_soon(server.serve)
        with anyio.fail_after(ready_within):
            await server.ready.wait()
        try:
            yield f"http://127.0.0.1:{server.servers[0].sockets[0].getsockname()[1]}"
        finally:
            server.should_exit = True
