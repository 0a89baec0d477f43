"""Shared fixtures: real relays on free ports, in this test's event loop.

``relay_factory(**settings)`` starts a relay node (uvicorn, the real app) and
returns a ``RunningRelay``; every relay it started is shut down at the end of
the test. ``relay`` is one with default settings.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import Any

import anyio
import pytest
import uvicorn
from starlette.applications import Starlette

from relay.app import create_app
from relay.broker import Broker
from relay.hub import Hub
from relay.server import uvicorn_config
from relay.settings import Settings
from tests.inloop import InLoopServer
from tests.redis_server import RedisServer, redis_url_from_env


@dataclass
class RunningRelay:
    """A relay node serving on 127.0.0.1 for one test."""

    url: str  # ws://127.0.0.1:PORT/v1/ws
    http_url: str  # http://127.0.0.1:PORT
    port: int
    app: Starlette
    hub: Hub
    settings: Settings
    server: uvicorn.Server


RelayFactory = Callable[..., Awaitable[RunningRelay]]


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """``REDIS_URL`` if set, else a redis-server spawned for the session (missing: a failure)."""
    url = redis_url_from_env()
    if url is not None:
        yield url
        return
    server = RedisServer()
    server.start()
    try:
        yield server.url
    finally:
        server.stop()


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
async def relay_factory() -> AsyncIterator[RelayFactory]:
    servers: list[InLoopServer] = []
    async with anyio.create_task_group() as tasks:

        async def start(*, broker: Broker | None = None, **overrides: Any) -> RunningRelay:
            settings = Settings(**{"port": 0, "log_level": "warning", **overrides})
            app = create_app(settings, broker=broker)
            server = InLoopServer(uvicorn_config(app, settings))
            servers.append(server)
            tasks.start_soon(server.serve)
            with anyio.fail_after(10):
                await server.ready.wait()
            port = server.servers[0].sockets[0].getsockname()[1]
            return RunningRelay(
                url=f"ws://127.0.0.1:{port}{settings.path}",
                http_url=f"http://127.0.0.1:{port}",
                port=port,
                app=app,
                hub=app.state.hub,
                settings=settings,
                server=server,
            )

        yield start
        for server in servers:
            server.should_exit = True


@pytest.fixture
async def relay(relay_factory: RelayFactory) -> RunningRelay:
    return await relay_factory()
