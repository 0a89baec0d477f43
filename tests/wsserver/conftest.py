"""Serve any ASGI app with ``RelayWebSocketProtocol`` in the test's event loop.

``serve(app, **uvicorn_options)`` starts uvicorn on a free port and returns a
``Served``. The frame layer's own options (``ws_close_timeout=``,
``ws_send_buffer_bytes=``, ``ws_max_fragments=``, ``ws_message_timeout=``) are
set the way ``relay.server.uvicorn_config`` sets them (attributes of the ``Config``), and
``rcvbuf=`` is the server sockets' kernel receive buffer (so a test can fill it).
Direct-mode tests use ``Recorder``, a ``FrameHandler`` that records every call.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import anyio
import pytest
import uvicorn

from relay.wsserver import RelayWebSocketProtocol
from tests.inloop import InLoopServer

TIMEOUT = 5.0
# Options uvicorn's Config does not take; the frame layer reads them as its attributes.
FRAME_LAYER_OPTIONS = (
    "ws_close_timeout", "ws_send_buffer_bytes", "ws_max_fragments", "ws_message_timeout",
)  # fmt: skip


@dataclass
class Served:
    port: int
    server: uvicorn.Server
    config: uvicorn.Config

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"


Serve = Callable[..., Awaitable[Served]]


@pytest.fixture
async def serve() -> AsyncIterator[Serve]:
    servers: list[InLoopServer] = []
    async with anyio.create_task_group() as tasks:

        async def start(app: Any, *, rcvbuf: int | None = None, **options: Any) -> Served:
            own = {name: options.pop(name) for name in FRAME_LAYER_OPTIONS if name in options}
            options = {
                "ws": RelayWebSocketProtocol,
                "lifespan": "off",
                "log_level": "warning",
                "log_config": None,  # uvicorn's loggers then propagate: caplog sees them
                "timeout_graceful_shutdown": 2,
                **options,
            }
            config = uvicorn.Config(app, **options)
            for name, value in own.items():
                setattr(config, name, value)
            listener = socket.socket()
            if rcvbuf is not None:  # accepted sockets inherit it, and then do not autotune it
                listener.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
            listener.bind(("127.0.0.1", 0))
            server = InLoopServer(config)
            servers.append(server)
            tasks.start_soon(server.serve, [listener])
            with anyio.fail_after(TIMEOUT):
                await server.ready.wait()
            return Served(listener.getsockname()[1], server, config)

        yield start
        for server in servers:
            server.should_exit = True


class Recorder:
    """A ``FrameHandler`` that records every call; ``react`` hooks let a test act inside them."""

    def __init__(self, conn: Any) -> None:
        self.conn = conn
        self.messages: list[bytes | str] = []
        self.lost: list[tuple[int, str]] = []
        self.writable_calls = 0
        self.react: Callable[[Recorder, bytes | str], None] | None = None
        self._changed = asyncio.Event()

    def message_received(self, data: bytes) -> None:
        self._record(data)

    def text_received(self, text: str) -> None:
        self._record(text)

    def writable(self) -> None:
        self.writable_calls += 1
        self._changed.set()

    def connection_lost(self, code: int, reason: str) -> None:
        self.lost.append((code, reason))
        self._changed.set()

    def _record(self, message: bytes | str) -> None:
        self.messages.append(message)
        if self.react is not None:
            self.react(self, message)
        self._changed.set()

    async def until(self, condition: Callable[[], bool]) -> None:
        """Wait (at most TIMEOUT) until ``condition()`` holds after some callback."""
        async with asyncio.timeout(TIMEOUT):
            while not condition():
                self._changed.clear()
                await self._changed.wait()


class DirectApp:
    """An ASGI app that accepts every WebSocket in direct mode with a new ``Recorder``.

    ``setup(recorder)`` runs before the accept; ``accepted`` yields the recorders.
    """

    def __init__(
        self,
        setup: Callable[[Recorder], None] | None = None,
        subprotocol: str | None = None,
    ) -> None:
        self.setup = setup
        self.subprotocol = subprotocol
        self.accepted: asyncio.Queue[Recorder] = asyncio.Queue()

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        assert scope["type"] == "websocket"
        conn = scope["extensions"]["relay.direct"]["connection"]
        recorder = Recorder(conn)
        if self.setup is not None:
            self.setup(recorder)
        conn.accept_direct(recorder, self.subprotocol)
        self.accepted.put_nowait(recorder)

    async def next(self) -> Recorder:
        async with asyncio.timeout(TIMEOUT):
            return await self.accepted.get()


async def fill(recorder: Recorder) -> None:
    """Write 16 KiB frames until the transport's buffer is over its high-water mark."""
    async with asyncio.timeout(10):
        while not recorder.conn.writing_paused:
            recorder.conn.write(b"x" * 16384)
            await asyncio.sleep(0)  # let the pass end, so the frames are flushed
