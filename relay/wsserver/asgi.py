"""The ASGI bridge: runs any ASGI app over a ``RelayWebSocketProtocol`` connection.

The app sees a standard ``websocket`` scope and messages, the denial-response
extension included. In ASGI mode the bridge is also the connection's
``FrameHandler``: messages go on a queue that ``receive()`` empties, and the
socket stops being read while ``ws_max_queue`` of them wait.

The bridge depends on its connection only through ``BridgedConnection``.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Protocol, cast
from urllib.parse import unquote

from starlette.types import Message, Scope
from uvicorn.config import Config
from uvicorn.protocols.utils import (
    ClientDisconnected,
    get_client_addr,
    get_path_with_query_string,
    is_ssl,
)

from relay import rfc6455
from relay.wsserver.addresses import local_address
from relay.wsserver.states import CONNECTING, LOST, OPEN, RESPONDING

if TYPE_CHECKING:
    from uvicorn._types import WebSocketScope

log = logging.getLogger("uvicorn.error")  # where uvicorn's own WebSocket protocols log


class BridgedConnection(Protocol):
    """What the ASGI bridge does with its connection (``RelayWebSocketProtocol``).

    It answers the upgrade (``accept``, ``respond``, or ``begin_response``
    then ``respond`` or ``drop_response``), moves messages (``write``,
    ``write_text``, ``close``), applies backpressure both ways
    (``writing_paused``, ``pause_reading``, ``resume_reading``) and reads
    where the connection is (``state``) to know what the app may send.
    """

    @property
    def state(self) -> int:
        """Where the connection is: one of ``relay.wsserver.states``."""

    @property
    def writing_paused(self) -> bool:
        """True while the transport's buffer is over its high-water mark."""

    def accept(
        self, handler: ASGIBridge, subprotocol: str | None, headers: list[tuple[bytes, bytes]]
    ) -> None:
        """Answer the upgrade with 101 (and ``headers``); messages then go to ``handler``."""

    def begin_response(self) -> None:
        """The app started a denial response: no accept can follow."""

    def respond(self, status: int, headers: list[tuple[bytes, bytes]], body: bytes) -> None:
        """Answer the upgrade with a plain HTTP response and end the connection."""

    def drop_response(self) -> None:
        """End the connection before a response is complete (or even begun)."""

    def write(self, data: bytes) -> None:
        """Send one binary message (dropped unless open)."""

    def write_text(self, text: str) -> None:
        """Send one text message (dropped unless open)."""

    def close(self, code: int, reason: str = "") -> None:
        """Start the closing handshake with ``code``."""

    def pause_reading(self) -> None:
        """Deliver no more messages until ``resume_reading``."""

    def resume_reading(self) -> None:
        """Deliver messages again."""


class TakesWebSockets(Protocol):
    """An ASGI app that may take a WebSocket connection without an ASGI cycle.

    The bridge offers every connection to ``take_websocket`` before it
    starts a task for the app: an app that can decide at once (the relay's
    own endpoint: its checks and admission never wait) answers the upgrade
    through ``answer`` (``websocket.accept``, ``websocket.close``, a denial
    response) or takes it in direct mode, and returns True. False: the app
    is run as ever.
    """

    def take_websocket(self, scope: Scope, answer: Callable[[Message], None]) -> bool:
        """Answer or take the connection now and return True, or return False."""


class ASGIBridge:
    """Runs the ASGI app of one connection; in ASGI mode, its ``FrameHandler`` too."""

    __slots__ = (
        "_app",
        "_app_closed",
        "_conn",
        "_disconnect",
        "_drain",
        "_loop",
        "_max_queue",
        "_queue",
        "_response",
        "_waiter",
        "accept_key",
        "direct",
        "scope",
    )

    def __init__(
        self,
        conn: BridgedConnection,
        scope: Scope,
        accept_key: str,
        *,
        app: Any,
        max_queue: int,
        loop: asyncio.AbstractEventLoop,
    ) -> None:
        self._conn = conn
        self._app: Callable[..., Awaitable[Any]] = app
        self._max_queue = max(1, max_queue)
        self._loop = loop
        self.scope = scope
        self.accept_key = accept_key
        self.direct = False
        self._app_closed = False
        self._queue: deque[Message] = deque([{"type": "websocket.connect"}])
        self._waiter: asyncio.Future[None] | None = None
        self._drain: asyncio.Future[None] | None = None
        self._disconnect: Message | None = None
        self._response: tuple[int, list[tuple[bytes, bytes]], list[bytes]] | None = None

    def offer(self) -> bool:
        """Let the app take the connection at once, if it can (``TakesWebSockets``).

        True when it did (it accepted or answered the upgrade, or failed):
        nothing is left to run. False: run the app (``run``) in a task.
        """
        take = getattr(self._app, "take_websocket", None)
        if take is None:
            return False
        try:
            if not take(self.scope, self.answer):
                return False
        except Exception:
            log.exception("Exception in ASGI application\n")
            self._fail()
            return True
        self._app_returned()
        return True

    async def run(self) -> None:
        try:
            result = await self._app(self.scope, self.receive, self.send)
        except ClientDisconnected:
            return
        except Exception:
            log.exception("Exception in ASGI application\n")
            self._fail()
            return
        if result is not None:
            log.error("ASGI callable should return None, but returned '%s'.", result)
        self._app_returned()

    def _app_returned(self) -> None:
        conn = self._conn
        state = conn.state
        if state == CONNECTING:
            # Not an error worth ERROR: the client gets a 500, as from uvicorn.
            log.warning("%s 500: the app returned without accepting", request_line(self.scope))
            conn.respond(500, [], b"Internal Server Error")
        elif state == RESPONDING:
            conn.drop_response()
        elif state == OPEN and not self.direct:
            conn.close(rfc6455.NORMAL_CLOSURE)

    def _fail(self) -> None:
        conn = self._conn
        if conn.state == CONNECTING:
            conn.respond(500, [], b"Internal Server Error")
        elif conn.state == RESPONDING:
            conn.drop_response()
        elif conn.state == OPEN:
            if not self.direct:
                self.disconnected(rfc6455.INTERNAL_ERROR, "")
            conn.close(rfc6455.INTERNAL_ERROR)

    # FrameHandler, in ASGI mode

    def message_received(self, data: bytes) -> None:
        self._put({"type": "websocket.receive", "bytes": data})

    def text_received(self, text: str) -> None:
        self._put({"type": "websocket.receive", "text": text})

    def writable(self) -> None:
        drain = self._drain
        if drain is not None and not drain.done():
            drain.set_result(None)

    def connection_lost(self, code: int, reason: str) -> None:
        self.disconnected(code, reason)
        self.writable()

    def disconnected(self, code: int, reason: str) -> None:
        """Tell the app the connection ended; only the first call counts."""
        if self._disconnect is None:
            self._disconnect = {"type": "websocket.disconnect", "code": code, "reason": reason}
            self._put(self._disconnect)

    def _put(self, message: Message) -> None:
        self._queue.append(message)
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)
        if len(self._queue) >= self._max_queue:
            self._conn.pause_reading()

    # ASGI receive and send

    async def receive(self) -> Message:
        if self.direct:
            raise RuntimeError("the connection was accepted in direct mode: no ASGI messages")
        queue = self._queue
        while not queue:
            if self._disconnect is not None:
                return self._disconnect  # asked again after the end: the same answer
            self._waiter = self._loop.create_future()
            await self._waiter
            self._waiter = None
        message = queue.popleft()
        if not queue:
            self._conn.resume_reading()
        return message

    async def send(self, message: Message) -> None:
        conn = self._conn
        kind = message["type"]
        if self.direct:
            raise RuntimeError("the connection was accepted in direct mode: no ASGI messages")
        state = conn.state
        if state == OPEN:
            if kind == "websocket.send":
                if conn.writing_paused:
                    await self._wait_writable()
                    if conn.state != OPEN:
                        raise ClientDisconnected
                data = message.get("bytes")
                if data is not None:
                    conn.write(data)
                elif (text := message.get("text")) is not None:
                    conn.write_text(text)
            elif kind == "websocket.close":
                code = message.get("code") or rfc6455.NORMAL_CLOSURE
                reason = message.get("reason") or ""
                conn.close(code, reason)
                self._app_closed = True
                self.disconnected(code, reason)  # as uvicorn does, without waiting for the echo
            else:
                raise RuntimeError(
                    "Expected ASGI message 'websocket.send' or 'websocket.close', "
                    f"but got {kind!r}."
                )
        elif state in (CONNECTING, RESPONDING):
            self.answer(message)
        elif self._app_closed and state != LOST:
            raise RuntimeError(f"Unexpected ASGI message {kind!r} after sending 'websocket.close'.")
        else:
            raise ClientDisconnected

    def answer(self, message: Message) -> None:
        """Send a message that answers the upgrade (accept, close, denial response); never waits.

        ``send`` for these; what ``TakesWebSockets.take_websocket`` is given.
        """
        conn = self._conn
        kind = message["type"]
        state = conn.state
        if self.direct:
            raise RuntimeError("the connection was accepted in direct mode: no ASGI messages")
        if state == CONNECTING:
            if kind == "websocket.accept":
                conn.accept(self, message.get("subprotocol"), list(message.get("headers", [])))
            elif kind == "websocket.close":
                self._log_status(403)
                self.disconnected(rfc6455.ABNORMAL_CLOSURE, "")
                conn.respond(403, [], b"")
            elif kind == "websocket.http.response.start":
                status = message["status"]
                if not 100 <= status < 600:
                    raise RuntimeError(f"Invalid HTTP status code '{status}' in response.")
                self._log_status(status)
                self._response = (status, list(message.get("headers", [])), [])
                conn.begin_response()
            else:
                raise RuntimeError(
                    "Expected ASGI message 'websocket.accept', 'websocket.close' or "
                    f"'websocket.http.response.start' but got {kind!r}."
                )
        elif state == RESPONDING:
            if kind != "websocket.http.response.body":
                raise RuntimeError(f"Expected 'websocket.http.response.body' but got {kind!r}.")
            assert self._response is not None
            status, headers, body = self._response
            body.append(message.get("body", b""))
            if not message.get("more_body", False):
                self.disconnected(rfc6455.ABNORMAL_CLOSURE, "")
                conn.respond(status, headers, b"".join(body))
        else:
            raise ClientDisconnected

    async def _wait_writable(self) -> None:
        if self._drain is None or self._drain.done():
            self._drain = self._loop.create_future()
        await self._drain

    def _log_status(self, status: int) -> None:
        log.info("%s %d", request_line(self.scope), status)


def websocket_scope(
    config: Config,
    transport: asyncio.Transport,
    request: rfc6455.Request,
    handshake: rfc6455.Handshake,
    *,
    client: tuple[str, int] | None,
    app_state: dict[str, Any],
    connection: object,
) -> Scope:
    """The ASGI ``websocket`` scope (spec 2.4) of a valid upgrade request.

    With the denial-response extension, and ``relay.direct`` offering ``connection``.
    """
    root_path = config.root_path
    raw_path, _, query_string = request.target.partition(b"?")
    return {
        "type": "websocket",
        "asgi": {"version": config.asgi_version, "spec_version": "2.4"},
        "http_version": "1.1",
        "scheme": "wss" if is_ssl(transport) else "ws",
        "server": local_address(transport),
        "client": client,
        "root_path": root_path,
        "path": root_path + unquote(raw_path.decode("latin-1")),
        "raw_path": root_path.encode("ascii") + raw_path,
        "query_string": query_string,
        "headers": request.headers,
        "subprotocols": handshake.subprotocols,
        "state": app_state.copy(),
        "extensions": {"websocket.http.response": {}, "relay.direct": {"connection": connection}},
    }


def request_line(scope: Scope) -> str:
    """How uvicorn names a WebSocket request in its log: ``client - "WebSocket /path"``."""
    ws_scope = cast("WebSocketScope", scope)
    return f'{get_client_addr(ws_scope)} - "WebSocket {get_path_with_query_string(ws_scope)}"'
