"""The WebSocket endpoint: handshake checks, then one session per socket.

A raw ASGI app. The upgrade goes through ``relay.upgrade.Gate``, as the
PeerJS socket's does (503 draining, 403 foreign Origin, admission's 503 and
429), with one check of this endpoint's own: 400 for a client that offers
subprotocols but not ``relay.v1``.

On the relay's own frame layer (``relay.wsserver``, the default) the socket
is then handed over in *direct mode*: the connection calls the session for
each message and the session writes straight to it, with no ASGI message, no
queue and no task per frame; the upgrade itself is answered synchronously
(``take_websocket``), with no task either. On uvicorn's own WebSocket implementations an
``ASGITransport`` runs the same session over ASGI messages, so there is one
code path for the rules whichever implementation serves the socket.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections import deque
from collections.abc import Callable
from typing import Any

import anyio
from starlette.responses import PlainTextResponse
from starlette.types import Message, Receive, Scope, Send
from starlette.websockets import WebSocket

from relay.admission import Admission
from relay.hub import Hub
from relay.protocol.codes import CloseCode
from relay.session import Session
from relay.upgrade import Gate, Refusal, direct_connection, refusal_messages

log = logging.getLogger("relay.ws")

SUBPROTOCOL = "relay.v1"

# Past this many bytes waiting for uvicorn's send, the ASGI transport reports
# itself paused (the same role as the frame layer's write-buffer high mark).
_HIGH_WATER = 64 * 1024
_LOW_WATER = 16 * 1024


class RelayEndpoint:
    """ASGI app serving the relay's WebSocket path."""

    def __init__(self, hub: Hub) -> None:
        self.hub = hub
        self.settings = hub.settings
        self.gate = Gate(hub, Admission(hub.settings), _check_subprotocol)
        self.admission = self.gate.admission  # shared with the PeerJS endpoint

    def take_websocket(self, scope: Scope, answer: Callable[[Message], None]) -> bool:
        """Take a socket of the relay's frame layer at once (``wsserver.asgi.TakesWebSockets``).

        The gate's checks and admission never wait, and in direct mode
        nothing else is asked of ASGI: no task, no message for the upgrade.
        """
        connection = direct_connection(scope)
        if connection is None:
            return False
        decided = self.gate.decide(scope)
        if isinstance(decided, Refusal):
            for message in refusal_messages(scope, decided):
                answer(message)
        else:
            self._open_direct(scope, connection, decided)
        return True

    def _open_direct(self, scope: Scope, connection: Any, ip: str) -> None:
        subprotocol = SUBPROTOCOL if SUBPROTOCOL in (scope.get("subprotocols") or ()) else None
        session = Session(self.hub, connection, on_end=functools.partial(self.gate.release, ip))
        session.connect_info = self.gate.connect_info(scope, ip)
        self.hub.opened(session)
        connection.accept_direct(session, subprotocol)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        ip = await self.gate.admit(scope, receive, send)
        if ip is None:
            return
        connection = direct_connection(scope)
        if connection is not None:
            self._open_direct(scope, connection, ip)
            return
        subprotocol = SUBPROTOCOL if SUBPROTOCOL in (scope.get("subprotocols") or ()) else None
        release = functools.partial(self.gate.release, ip)
        accept: dict[str, Any] = {"type": "websocket.accept"}
        if subprotocol is not None:
            accept["subprotocol"] = subprotocol
        await send(accept)
        transport = ASGITransport(send, self.settings.close_timeout_seconds)
        session = Session(self.hub, transport, on_end=release)
        session.connect_info = self.gate.connect_info(scope, ip)
        self.hub.opened(session)
        await transport.run(session, receive)


def _check_subprotocol(scope: Scope) -> tuple[int, str] | None:
    offered = scope.get("subprotocols") or []
    if offered and SUBPROTOCOL not in offered:
        return 400, f"unsupported subprotocol: offer {SUBPROTOCOL}"
    return None


class ASGITransport:
    """A session's ``Transport`` over ASGI messages (uvicorn's WebSocket implementations).

    ``write`` only queues; one writer task hands frames to ASGI ``send``. A
    close is bounded like the frame layer's: if the peer has not gone within
    ``close_timeout`` the session ends anyway (ASGI cannot abort a socket, so
    with these implementations the TCP connection may linger until the
    server's own timeouts reap it).
    """

    def __init__(self, send: Send, close_timeout: float) -> None:
        self._send = send
        self._close_timeout = close_timeout
        self._out: deque[bytes] = deque()
        self._pending_bytes = 0
        self._paused = False
        self._wake = asyncio.Event()
        self._reading = asyncio.Event()
        self._reading.set()
        self._closing: tuple[int, str] | None = None
        self._scope: anyio.CancelScope | None = None
        self.written_bytes = 0

    @property
    def writing_paused(self) -> bool:
        return self._paused

    def write(self, data: bytes) -> None:
        if self._closing is not None:
            return
        self._out.append(data)
        self._pending_bytes += len(data)
        self.written_bytes += len(data) + 2
        if self._pending_bytes > _HIGH_WATER:
            self._paused = True
        self._wake.set()

    def pause_reading(self) -> None:
        self._reading.clear()

    def resume_reading(self) -> None:
        self._reading.set()

    def close(self, code: int, reason: str = "") -> None:
        if self._closing is not None:
            return
        self._closing = (code, reason)
        self._wake.set()
        if self._scope is not None:
            # Also called from loop callbacks (timers), where anyio cannot
            # tell its backend: the asyncio backend's clock is the loop's.
            self._scope.deadline = asyncio.get_running_loop().time() + self._close_timeout

    def unsent_bytes(self) -> int:
        # What never reached uvicorn; ASGI does not tell what its socket held.
        return sum(len(data) + 2 for data in self._out)

    def acked_bytes(self) -> int:
        # ASGI says nothing of acknowledgements: written counts as delivered.
        return self.written_bytes

    @property
    def acks_known(self) -> bool:
        return False

    def received_bytes(self) -> int:
        return 0  # ASGI does not say what waits unread

    def abort(self) -> None:
        # ASGI cannot reset a socket: the closest is a close the peer need not answer.
        self.close(CloseCode.GOING_AWAY)

    async def run(self, session: Session, receive: Receive) -> None:
        """Serve the socket until it is gone, then end the session."""
        code = 1006  # no close frame: the connection was lost
        reason = ""
        with anyio.CancelScope() as scope:
            self._scope = scope
            if self._closing is not None:
                scope.deadline = anyio.current_time() + self._close_timeout
            async with anyio.create_task_group() as tasks:
                tasks.start_soon(self._writer, session)
                code, reason = await self._reader(session, receive)
                tasks.cancel_scope.cancel()
        session.connection_lost(code, reason)

    async def _reader(self, session: Session, receive: Receive) -> tuple[int, str]:
        while True:
            await self._reading.wait()
            message = await receive()
            kind = message["type"]
            if kind == "websocket.receive":
                if self._closing is not None:
                    continue
                data = message.get("bytes")
                if data is not None:
                    session.message_received(data)
                else:
                    session.text_received(message.get("text") or "")
            elif kind == "websocket.disconnect":
                return int(message.get("code") or 1006), str(message.get("reason") or "")

    async def _writer(self, session: Session) -> None:
        send = self._send
        try:
            while True:
                while self._out:
                    data = self._out.popleft()
                    await send({"type": "websocket.send", "bytes": data})
                    self._pending_bytes -= len(data)
                    if self._paused and self._pending_bytes <= _LOW_WATER:
                        self._paused = False
                        session.writable()
                if self._closing is not None:
                    code, reason = self._closing
                    await send({"type": "websocket.close", "code": code, "reason": reason})
                    await anyio.sleep_forever()
                self._wake.clear()
                await self._wake.wait()
        except OSError:
            log.debug("socket gone while writing", exc_info=True)
            await anyio.sleep_forever()  # the reader sees the disconnect


async def unknown_path(websocket: WebSocket) -> None:
    """Refuse a WebSocket upgrade on any other path with a 404, not Starlette's 403."""
    await websocket.send_denial_response(
        PlainTextResponse("no WebSocket endpoint at this path", status_code=404)
    )
