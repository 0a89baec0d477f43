"""A uvicorn server for running inside the test's own event loop."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import anyio
import uvicorn


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
