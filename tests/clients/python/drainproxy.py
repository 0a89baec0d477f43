"""A WebSocket proxy in front of a real relay that can end a socket the way a draining relay does.

Every client socket gets its own socket to the relay, and frames pass both
ways. ``hold()`` makes the proxy stop passing on what the current client
sends: those frames are read (the client has written them) but never reach
the relay, as requests a draining relay has read without acting on. ``end()``
then closes the client's socket with a chosen code (1001 for the drain; none:
the TCP connection is reset, a 1006 for the client) and drops the socket to
the relay, which keeps the session for a resume as after any lost link.

``sessions`` records, per client socket, every envelope the client sent
(the held ones too), and ``held`` the ones held, so a test can say what the
relay was asked.
"""

from __future__ import annotations

import asyncio
import contextlib
from http import HTTPStatus
from typing import Any

import msgpack
from websockets.asyncio.client import ClientConnection, connect
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response
from websockets.typing import Subprotocol

SUBPROTOCOL = Subprotocol("relay.v1")


class DrainProxy:
    """See the module docstring."""

    def __init__(self, relay_url: str) -> None:
        self.relay_url = relay_url
        """Where new sockets go: a test may point it at another relay."""
        self.refusing = False
        """While true, new sockets are refused (HTTP 503), as by a relay that is down."""
        self.hold_after_hello = False
        """While true, every new socket passes its hello on and holds the rest."""
        self.sessions: list[list[dict[str, Any]]] = []
        self.held: list[list[dict[str, Any]]] = []
        self._holding: ServerConnection | None = None
        self._client: ServerConnection | None = None
        self._upstream: ClientConnection | None = None
        self._ended: set[ServerConnection] = set()
        self._arrived = asyncio.Event()
        self._server: Server | None = None

    @property
    def url(self) -> str:
        assert self._server is not None
        port = self._server.sockets[0].getsockname()[1]
        return f"ws://127.0.0.1:{port}/v1/ws"

    async def start(self) -> None:
        self._server = await serve(
            self._serve,
            "127.0.0.1",
            0,
            subprotocols=[SUBPROTOCOL],
            process_request=self._admit,
            close_timeout=1,
        )

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    def hold(self) -> None:
        """From now on, what the current client sends stays here."""
        self._holding = self._client

    async def wait_held(self, count: int, *, session: int = 0, seconds: float = 5) -> None:
        """Wait until ``count`` frames of client socket number ``session`` (from 0) are held."""
        async with asyncio.timeout(seconds):
            while len(self.held) <= session or len(self.held[session]) < count:
                self._arrived.clear()
                await self._arrived.wait()

    async def end(self, code: int | None, reason: str = "") -> None:
        """Drop the relay's socket, then close the client's with ``code`` (``None``: reset)."""
        client, upstream = self._client, self._upstream
        assert client is not None and upstream is not None
        self._ended.add(client)
        upstream.transport.abort()
        if code is None:
            client.transport.abort()
        else:
            await client.close(code, reason)

    def _admit(self, connection: ServerConnection, request: Request) -> Response | None:
        if self.refusing:
            return connection.respond(HTTPStatus.SERVICE_UNAVAILABLE, "refusing\n")
        return None

    async def _serve(self, client: ServerConnection) -> None:
        seen: list[dict[str, Any]] = []
        held: list[dict[str, Any]] = []
        self.sessions.append(seen)
        self.held.append(held)
        self._arrived.set()
        self._client = client
        try:
            upstream = await connect(self.relay_url, subprotocols=[SUBPROTOCOL])
        except OSError:
            await client.close(1011, "relay unreachable")
            return
        self._upstream = upstream
        down = asyncio.create_task(self._down(upstream, client))
        try:
            async for frame in client:
                assert isinstance(frame, bytes)
                envelope = msgpack.unpackb(frame)
                seen.append(envelope)
                if self.hold_after_hello and envelope.get("type") == "hello":
                    self._holding = client
                elif self._holding is client:
                    held.append(envelope)
                    self._arrived.set()
                    continue
                with contextlib.suppress(ConnectionClosed):
                    await upstream.send(frame)
        except ConnectionClosed:
            pass
        finally:
            down.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await down
            upstream.transport.abort()

    async def _down(self, upstream: ClientConnection, client: ServerConnection) -> None:
        """Pass the relay's frames on, and its close when the test did not end the socket."""
        with contextlib.suppress(ConnectionClosed):
            async for frame in upstream:
                await client.send(frame)
        if client in self._ended:
            return
        code = upstream.close_code or 1006
        if code == 1006:
            client.transport.abort()
        else:
            await client.close(code, upstream.close_reason or "")
