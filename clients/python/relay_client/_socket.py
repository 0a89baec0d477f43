"""What the peer needs of a link to the relay, whichever transport carries it.

:class:`Socket` is the seam: a WebSocket (:class:`WebSocket`, over
``websockets``) and an HTTP session (:class:`relay_client._http.HttpSocket`)
both carry protocol v1 envelopes, so the connection, the handshake and the
reconnect logic never ask which one they hold.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Literal, Protocol

from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed as WsConnectionClosed
from websockets.protocol import State as WsState

TransportName = Literal["websocket", "http"]

DROPPED = 1006
"""The close code of a link that ended without a close from either side."""


class SocketClosed(Exception):
    """The link is closed: nothing more can be sent or received on it."""


class Socket(Protocol):
    """One link to the relay carrying envelopes, until it closes."""

    @property
    def transport(self) -> TransportName:
        """Which transport carries it."""
        ...

    @property
    def open(self) -> bool:
        """True until the link starts closing."""
        ...

    @property
    def close_code(self) -> int:
        """The close code once closed (1006 when no close came), else 1006."""
        ...

    @property
    def close_reason(self) -> str:
        """The close reason once closed."""
        ...

    @property
    def drained(self) -> bool:
        """The relay closed the link with 1001: it did not act on what it left unanswered."""
        ...

    async def send(self, frame: bytes) -> None:
        """Send one envelope; raise :class:`SocketClosed` when the link is closed."""
        ...

    async def recv(self) -> bytes | str:
        """The next frame; raise :class:`SocketClosed` once the link is closed."""
        ...

    def frames(self) -> AsyncIterator[bytes | str]:
        """Every frame the relay sends, in order, until the link closes."""
        ...

    async def close(self, code: int = 1000, reason: str = "") -> None:
        """Close the link as the client (a close handshake where the transport has one)."""
        ...

    def abort(self) -> None:
        """Drop the link at once, without a close."""
        ...


class WebSocket:
    """A :class:`Socket` over a ``websockets`` client connection."""

    transport: TransportName = "websocket"

    def __init__(self, conn: ClientConnection) -> None:
        self._conn = conn

    @property
    def open(self) -> bool:
        return self._conn.state is WsState.OPEN

    @property
    def close_code(self) -> int:
        return self._conn.close_code or DROPPED

    @property
    def close_reason(self) -> str:
        return self._conn.close_reason or ""

    @property
    def drained(self) -> bool:
        # Only a close the relay began is its drain.
        return self.close_code == 1001 and self._conn.protocol.close_rcvd_then_sent is True

    async def send(self, frame: bytes) -> None:
        try:
            await self._conn.send(frame)
        except WsConnectionClosed:
            raise SocketClosed from None

    async def recv(self) -> bytes | str:
        try:
            return await self._conn.recv()
        except WsConnectionClosed:
            raise SocketClosed from None

    async def frames(self) -> AsyncIterator[bytes | str]:
        try:
            async for frame in self._conn:
                yield frame
        except WsConnectionClosed:
            return

    async def close(self, code: int = 1000, reason: str = "") -> None:
        await self._conn.close(code, reason)

    def abort(self) -> None:
        self._conn.transport.abort()
