"""The relay's WebSocket server protocol for uvicorn: ``ws=RelayWebSocketProtocol``.

The HTTP protocol (``relay.httpserver``, uvicorn's httptools one underneath)
parses the request, then hands the socket over: it creates this protocol,
calls ``connection_made(transport)``, makes this object the transport's
protocol, replays the request through ``data_received``, then passes on the
bytes that came after the head in the same read (uvicorn's own HTTP
protocols drop those: serve with ``http=RelayHTTPProtocol``, as
``relay.server.uvicorn_config`` does). From there on every byte goes through
``relay.rfc6455``.

Two ways to use a connection:

- **ASGI**: any app sees a standard ``websocket`` scope and messages
  (``_ASGIBridge``), including the denial-response extension.
- **Direct**: the app looks up ``scope["extensions"]["relay.direct"]["connection"]``
  and calls ``accept_direct(handler)``. Messages then reach ``handler``
  synchronously from ``data_received`` (``FrameHandler``), and the owner
  writes with ``write`` (``DirectConnection``): no ASGI dicts, no queue, no
  task per connection, and every frame written during one event-loop pass
  leaves in one ``transport.writelines``.

Closing: the close frame goes out after anything already written; then the
server half-closes TCP first (RFC 6455 7.1.1) and reads until the client's FIN;
``close_timeout`` after the close started, a peer that has not finished is
aborted. ``close_timeout`` is ``config.ws_close_timeout`` when that attribute
exists (uvicorn's ``Config`` has no such option; set it on the object), else
``DEFAULT_CLOSE_TIMEOUT``.

Keepalive: one timer per server (``_Keepalive``) pings every open connection
each ``ws_ping_interval`` and aborts those that sent nothing (no data, no pong)
within ``ws_ping_timeout`` of the ping.

Incoming messages are bounded in bytes (``ws_max_size``, 1009), in frames
(``config.ws_max_fragments``, 1009) and in time: a message (or a frame) whose
first byte arrived ``config.ws_message_timeout`` seconds ago and that is still
incomplete closes the connection with 1008. Like ``ws_close_timeout``, these
two are attributes one sets on uvicorn's ``Config``; ``DEFAULT_MAX_FRAGMENTS``
and ``DEFAULT_MESSAGE_TIMEOUT`` apply without them.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import socket
import struct
import termios
import weakref
from collections import deque
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Final, Protocol, cast
from urllib.parse import unquote

from starlette.types import Message, Scope
from uvicorn.config import Config
from uvicorn.protocols.utils import (
    ClientDisconnected,
    get_client_addr,
    get_local_addr,
    get_path_with_query_string,
    get_remote_addr,
    is_ssl,
)
from uvicorn.server import ServerState

from relay import rfc6455
from relay.rfc6455 import (
    BINARY_HEADERS,
    NEED_DATA,
    OP_BINARY,
    OP_CLOSE,
    OP_PING,
    OP_PONG,
    OP_TEXT,
    TEXT_HEADERS,
    FrameParser,
    HandshakeError,
    ProtocolError,
    frame_header,
)

if TYPE_CHECKING:
    from uvicorn._types import WebSocketScope

log = logging.getLogger("uvicorn.error")  # where uvicorn's own WebSocket protocols log

DEFAULT_CLOSE_TIMEOUT: Final = 3.0
DEFAULT_MAX_FRAGMENTS: Final = 256
DEFAULT_MESSAGE_TIMEOUT: Final = 30.0
WRITE_HIGH_WATER: Final = 65536
"""Transport buffer above which ``writing_paused`` turns True (low water: a quarter)."""
DEFAULT_SEND_BUFFER: Final = 256 * 1024
"""SO_SNDBUF of each socket (Linux doubles it) unless ``config.ws_send_buffer_bytes`` says.

Fixed rather than autotuned, so that the relay's replay window always covers
what a socket can hold."""

_PING_FRAME: Final = rfc6455.encode_frame(OP_PING, b"")

# Connection states, in the order a connection goes through them.
_HANDSHAKE: Final = 0  # reading the HTTP request
_CONNECTING: Final = 1  # the app decides: accept, deny or fail
_RESPONDING: Final = 2  # the app is sending a denial response
_OPEN: Final = 3
_CLOSING: Final = 4  # our close frame is out; waiting for the peer's
_CLOSED: Final = 5  # nothing more to send; waiting for TCP to end
_LOST: Final = 6


class FrameHandler(Protocol):
    """What a direct-mode connection calls; implemented by the connection's owner.

    Every method is called synchronously from the event loop; none may block.
    """

    def message_received(self, data: bytes) -> None:
        """One complete binary message."""

    def text_received(self, text: str) -> None:
        """One complete text message."""

    def writable(self) -> None:
        """The transport's buffer went under its low-water mark (``writing_paused`` is False)."""

    def connection_lost(self, code: int, reason: str) -> None:
        """The connection ended; called exactly once.

        ``code`` is the peer's close code (1005 if its close frame had none),
        the code the connection was failed with when the peer broke the
        protocol (1002, 1007, 1009) or did not complete a message in time
        (1008), or 1006 when it ended without a close frame (dropped,
        aborted, keepalive or close timeout).
        """


class DirectConnection(Protocol):
    """What a direct-mode owner may do with its connection (``RelayWebSocketProtocol``)."""

    def write(self, data: bytes) -> None:
        """Send one binary message.

        Never blocks and never raises on a dead connection (the message is
        dropped). Frames written during one event-loop pass leave together.
        """

    def write_text(self, text: str) -> None:
        """Send one text message, like ``write``."""

    @property
    def writing_paused(self) -> bool:
        """True while the transport's buffer is over its high-water mark (64 KiB)."""

    def write_buffer_size(self) -> int:
        """Bytes written but not yet handed to the kernel, pending frames included."""

    def pause_reading(self) -> None:
        """Deliver no more messages until ``resume_reading``; TCP then pushes back.

        Takes effect at once, even from inside ``message_received``: messages
        already read stay held and are delivered, in order, after ``resume_reading``.
        """

    def resume_reading(self) -> None:
        """Deliver messages again (held ones first, from the next loop pass)."""

    def close(self, code: int, reason: str = "") -> None:
        """Start the closing handshake: the close frame follows what is already written.

        No message is delivered after this. The connection is gone within
        ``close_timeout`` seconds whatever the peer does. ``ValueError`` for a
        code one cannot send or a reason over 123 bytes.
        """

    def abort(self) -> None:
        """Reset the connection now (the handler gets ``connection_lost(1006, ...)``)."""

    def unsent_bytes(self) -> int:
        """From ``connection_lost`` on: bytes written that never reached the peer's host.

        Frames not yet handed to the kernel, and what the kernel had not seen
        acknowledged (``SIOCOUTQ``) when the end was seen; 0 before that. Over
        TLS the kernel's share counts ciphertext, a little more than was written.
        """

    @property
    def written_bytes(self) -> int:
        """Every frame written so far (ours too: pongs, pings, close), in wire bytes."""

    def acked_bytes(self) -> int:
        """How many of ``written_bytes`` the peer's host has acknowledged.

        One ``SIOCOUTQ`` system call; after the end was seen, the count taken
        then. Over TLS the kernel counts ciphertext, so this errs low.
        """

    def received_bytes(self) -> int:
        """Bytes received and not yet delivered as messages: the parser's and the kernel's."""

    @property
    def peer_address(self) -> tuple[str, int] | None:
        """The TCP peer's (host, port); a proxy's address behind one."""


class RelayWebSocketProtocol(asyncio.Protocol):
    """One WebSocket connection, from the upgrade request to the end of TCP."""

    __slots__ = (
        "_acked_at_end",
        "_alive",
        "_app_state",
        "_bridge",
        "_close_timeout",
        "_config",
        "_connections",
        "_deadline",
        "_dropped",
        "_end_mark",
        "_fin_sent",
        "_handler",
        "_head",
        "_incomplete",
        "_keepalive",
        "_loop",
        "_message_timer",
        "_out",
        "_out_size",
        "_parser",
        "_peer",
        "_peer_close",
        "_reading_paused",
        "_reported",
        "_send_buffer",
        "_server_state",
        "_state",
        "_transport",
        "_transport_paused",
        "_unsent",
        "_writing_paused",
        "written_bytes",
    )

    def __init__(
        self,
        config: Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        if not config.loaded:
            config.load()  # pragma: no cover - uvicorn loads it before creating protocols
        self._loop = _loop or asyncio.get_running_loop()
        self._config = config
        self._app_state = app_state
        self._server_state = server_state
        self._connections: set[Any] = server_state.connections
        self._close_timeout: float = getattr(config, "ws_close_timeout", DEFAULT_CLOSE_TIMEOUT)
        self._send_buffer: int = getattr(config, "ws_send_buffer_bytes", DEFAULT_SEND_BUFFER)
        self._keepalive = _keepalive_of(server_state, config, self._loop)
        self._state = _HANDSHAKE
        self._head = b""
        self._transport: asyncio.Transport = None  # type: ignore[assignment]
        self._peer: tuple[str, int] | None = None
        self._parser: FrameParser = None  # type: ignore[assignment]
        self._handler: FrameHandler | None = None
        self._bridge: _ASGIBridge | None = None
        self._out: list[bytes] | None = None  # frames of this loop pass, not yet written
        self._out_size = 0
        self._reading_paused = False  # the owner's wish
        self._transport_paused = False  # what we told the transport
        self._writing_paused = False
        self._alive = True  # data arrived since the last keepalive ping
        self._reported = False  # handler.connection_lost was called
        self._deadline: asyncio.TimerHandle | None = None
        self._unsent: int | None = None  # bytes that never left, counted when the end is seen
        self._acked_at_end = 0  # written_bytes less _unsent, at that moment
        self._dropped = 0  # bytes of messages written once the connection was ending
        self._end_mark: int | None = None  # written_bytes when the peer's close arrived
        self._peer_close: tuple[int, str] | None = None  # told to the owner when TCP ends
        self._fin_sent = False
        self.written_bytes = 0
        # The incomplete message being timed: (its stream offset, when it was first seen).
        self._incomplete: tuple[int, float] | None = None
        self._message_timer: asyncio.TimerHandle | None = None

    # --- asyncio.Protocol -----------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)
        self._transport.set_write_buffer_limits(high=WRITE_HIGH_WATER)
        sock = self._transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, self._send_buffer)
        self._peer = get_remote_addr(self._transport)
        self._connections.add(self)

    def data_received(self, data: bytes) -> None:
        self._alive = True
        state = self._state
        if state >= _OPEN:
            if state < _CLOSED:
                self._parser.feed(data)
                if not self._reading_paused or state == _CLOSING:
                    self._process()
        elif state == _HANDSHAKE:
            self._handshake(data)
        else:
            # Frames sent before our answer wait in the parser, those that came in
            # the read of the request head too (RFC 6455 lets a client wait for
            # the 101; taking what comes early is our choice).
            self._parser.feed(data)

    def eof_received(self) -> bool | None:
        # The client will send nothing more: flush, then the transport closes.
        self._flush()
        if self._state < _CLOSED:
            self._state = _CLOSED
            self._keepalive.discard(self)
            self._arm_deadline()
        if self._peer_close is not None:
            self._count_unsent_once()  # the socket is still open: the kernel can tell
            self._report(*self._peer_close)
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self._count_unsent_once()
        self._state = _LOST
        self._out = None
        self._out_size = 0
        self._connections.discard(self)
        self._keepalive.discard(self)
        for timer in (self._deadline, self._message_timer):
            if timer is not None:
                timer.cancel()
        self._deadline = self._message_timer = None
        self._report(*(self._peer_close or (rfc6455.ABNORMAL_CLOSURE, "")))
        # The handler points back at us: let refcounting free both (and the
        # peer state they hold) now, not at the next full collection.
        self._handler = None
        self._bridge = None

    def pause_writing(self) -> None:
        self._writing_paused = True

    def resume_writing(self) -> None:
        self._writing_paused = False
        handler = self._handler
        if handler is not None and self._state < _LOST:
            try:
                handler.writable()
            except Exception:
                log.exception("WebSocket handler failed in writable()")
                self._fail(rfc6455.INTERNAL_ERROR, "internal error")

    def shutdown(self) -> None:
        """uvicorn is exiting: close with 1012 (service restart), or refuse with 500."""
        state = self._state
        if state == _OPEN:
            if self._bridge is not None and self._handler is self._bridge:
                self._bridge.disconnected(rfc6455.SERVICE_RESTART, "")
            self.close(rfc6455.SERVICE_RESTART)
        elif state == _CONNECTING:
            self._respond(500, [], b"the server is shutting down")
        elif state < _OPEN:
            self._drop_response()

    # --- DirectConnection -----------------------------------------------------------

    def accept_direct(self, handler: FrameHandler, subprotocol: str | None = None) -> None:
        """Accept the upgrade and give the connection to ``handler`` (see the module doc).

        Sends the 101 response now. From then on the connection produces no ASGI
        message, and the ASGI app may return without closing anything.
        """
        if self._bridge is None or self._state not in (_CONNECTING, _CLOSED, _LOST):
            raise RuntimeError("accept_direct() needs a connection the app has not answered")
        self._bridge.direct = True
        if self._state != _CONNECTING:
            # The client left (or the server shut down) while the app decided:
            # the handler still hears of the end, once.
            self._handler = handler
            if self._state == _LOST:
                self._reported = False
                self._loop.call_soon(self._report, rfc6455.ABNORMAL_CLOSURE, "")
            return
        self._accept(handler, subprotocol, [])
        self._bridge = None  # the app holds the scope as long as it wants; we don't

    def write(self, data: bytes) -> None:
        if self._state != _OPEN:
            self._drop(len(data))
            return
        size = len(data)
        header = BINARY_HEADERS[size] if size < 126 else frame_header(OP_BINARY, size)
        self._queue(header, data, size + len(header))

    def write_text(self, text: str) -> None:
        if self._state != _OPEN:
            self._drop(len(text.encode()))
            return
        data = text.encode()
        size = len(data)
        header = TEXT_HEADERS[size] if size < 126 else frame_header(OP_TEXT, size)
        self._queue(header, data, size + len(header))

    @property
    def writing_paused(self) -> bool:
        return self._writing_paused

    def write_buffer_size(self) -> int:
        if self._state == _LOST:
            return 0
        return self._transport.get_write_buffer_size() + self._out_size

    def pause_reading(self) -> None:
        self._reading_paused = True
        self._sync_reading()

    def resume_reading(self) -> None:
        if not self._reading_paused:
            return
        self._reading_paused = False
        self._sync_reading()
        if self._state == _OPEN and self._parser.buffered:
            self._loop.call_soon(self._process)

    def close(self, code: int, reason: str = "") -> None:
        payload = rfc6455.close_payload(code, reason)
        if self._state != _OPEN:
            return
        self._send_frame(OP_CLOSE, payload)
        self._flush()
        self._state = _CLOSING
        self._keepalive.discard(self)
        self._sync_reading()
        self._arm_deadline()
        if self._parser.buffered:
            self._loop.call_soon(self._process)

    def unsent_bytes(self) -> int:
        return self._unsent or 0

    def acked_bytes(self) -> int:
        if self._unsent is not None:
            return self._acked_at_end
        return self.written_bytes - self._count_unsent()

    def received_bytes(self) -> int:
        if self._state >= _CLOSED or self._parser is None:
            return 0
        return self._parser.buffered + _socket_count(self._transport, termios.FIONREAD)

    def _count_unsent_once(self) -> None:
        """Count the unsent bytes once, when the end is seen.

        Usually before a close frame or FIN of ours joins the queue. When the
        peer closed first, at the end of TCP instead: a peer may read what was
        sent before its close arrived, so it is counted lost only if the peer's
        host never acknowledged it; what we sent after (our close frame, the
        FIN) is not the peer's to read. What is not acknowledged then is taken
        as lost: a sender hears of it rather than never.
        """
        if self._unsent is not None:
            return
        unacked = self._count_unsent()
        if unacked and self._fin_sent:
            unacked -= 1  # the FIN takes a sequence number, and comes last
        acked = self.written_bytes - unacked
        self._acked_at_end = acked
        mark = self._end_mark
        self._unsent = unacked if mark is None else max(0, mark - acked) + self._dropped

    def _drop(self, size: int) -> None:
        """A message written after the end began: counted written, and never sent."""
        wire = rfc6455.wire_size(size)
        self.written_bytes += wire
        self._dropped += wire
        if self._unsent is not None:
            self._unsent += wire

    def _count_unsent(self) -> int:
        """Bytes written that have not reached the peer's host: ours, and the kernel's unacked."""
        pending = self._out_size + self._dropped
        transport = self._transport
        if transport is None:
            return pending
        with contextlib.suppress(Exception):
            pending += transport.get_write_buffer_size()
        return pending + _socket_count(transport, termios.TIOCOUTQ)

    def abort(self) -> None:
        if self._state == _LOST:
            return
        self._count_unsent_once()
        sock = self._transport.get_extra_info("socket")
        if sock is not None:
            # A reset, not a close: the kernel would otherwise go on sending
            # what it holds after we have given up (and counted it unsent).
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self._state = _CLOSED
        self._out = None
        self._out_size = 0
        self._keepalive.discard(self)
        self._transport.abort()

    @property
    def peer_address(self) -> tuple[str, int] | None:
        return self._peer

    # --- the handshake --------------------------------------------------------------

    def _handshake(self, data: bytes) -> None:
        buffered = self._head + data
        end = buffered.find(b"\r\n\r\n")
        if end < 0:
            self._head = buffered
            if len(buffered) > rfc6455.MAX_REQUEST_HEAD:
                self._respond(431, [], b"request header fields too large")
            return
        self._head = b""
        try:
            request = rfc6455.parse_request(buffered[:end])
            handshake = rfc6455.validate_handshake(request)
        except HandshakeError as exc:
            self._respond(exc.status, list(exc.headers), exc.message.encode())
            return
        self._parser = FrameParser(
            self._config.ws_max_size,
            getattr(self._config, "ws_max_fragments", DEFAULT_MAX_FRAGMENTS),
        )
        self._parser.feed(buffered[end + 4 :])
        self._state = _CONNECTING
        self._sync_reading()
        self._bridge = _ASGIBridge(self, self._scope(request, handshake), handshake.accept)
        task = self._loop.create_task(self._bridge.run())
        self._server_state.tasks.add(task)
        task.add_done_callback(self._server_state.tasks.discard)

    def _scope(self, request: rfc6455.Request, handshake: rfc6455.Handshake) -> Scope:
        config = self._config
        root_path = config.root_path
        raw_path, _, query_string = request.target.partition(b"?")
        return {
            "type": "websocket",
            "asgi": {"version": config.asgi_version, "spec_version": "2.4"},
            "http_version": "1.1",
            "scheme": "wss" if is_ssl(self._transport) else "ws",
            "server": get_local_addr(self._transport),
            "client": self._peer,
            "root_path": root_path,
            "path": root_path + unquote(raw_path.decode("latin-1")),
            "raw_path": root_path.encode("ascii") + raw_path,
            "query_string": query_string,
            "headers": request.headers,
            "subprotocols": handshake.subprotocols,
            "state": self._app_state.copy(),
            "extensions": {"websocket.http.response": {}, "relay.direct": {"connection": self}},
        }

    def _accept(
        self, handler: FrameHandler, subprotocol: str | None, headers: list[tuple[bytes, bytes]]
    ) -> None:
        assert self._bridge is not None
        extra = list(self._server_state.default_headers) + headers
        if subprotocol:
            extra.append((b"sec-websocket-protocol", subprotocol.encode()))
        response = rfc6455.accept_response(self._bridge.accept_key, extra)
        scope = self._bridge.scope
        log.info("%s [accepted]", _request_line(scope))
        self._handler = handler
        self._state = _OPEN
        self._transport.write(response)
        self._keepalive.add(self)
        self._sync_reading()
        if self._parser.buffered:
            self._loop.call_soon(self._process)

    def _begin_response(self) -> None:
        self._state = _RESPONDING

    def _respond(self, status: int, headers: list[tuple[bytes, bytes]], body: bytes) -> None:
        """Answer the upgrade with a plain HTTP response and end the connection."""
        headers = list(self._server_state.default_headers) + headers
        self._transport.write(rfc6455.http_response(status, headers, body))
        self._state = _CLOSED
        self._transport.close()
        self._arm_deadline()

    def _drop_response(self) -> None:
        """End the connection before a response is complete (or even begun)."""
        self._state = _CLOSED
        self._transport.close()
        self._arm_deadline()

    # --- reading --------------------------------------------------------------------

    def _sync_reading(self) -> None:
        state = self._state
        paused = state == _CONNECTING or (state == _OPEN and self._reading_paused)
        if paused != self._transport_paused and state < _LOST:
            self._transport_paused = paused
            if paused:
                self._transport.pause_reading()
            else:
                self._transport.resume_reading()

    def _process(self) -> None:
        """Deliver what the parser holds, until it needs data or the owner pauses."""
        parser = self._parser
        handler = self._handler
        assert handler is not None
        try:
            while self._state == _OPEN and not self._reading_paused:
                opcode = parser.next_event()
                if opcode == OP_BINARY:
                    handler.message_received(parser.payload)
                elif opcode == NEED_DATA:
                    offset = parser.incomplete_offset
                    if offset is not None:
                        self._time_incomplete(offset)
                    return
                elif opcode == OP_TEXT:
                    handler.text_received(parser.text)
                elif opcode == OP_PING and not self._writing_paused:
                    # A peer that pings but does not read gets no pongs piling up:
                    # answering only some pings is allowed (RFC 6455 5.5.3).
                    self._send_frame(OP_PONG, parser.payload)
                elif opcode == OP_CLOSE:
                    self._close_received(parser.close_code, parser.close_reason, parser.payload)
                    return
                # A pong needs nothing: any data marks the connection alive.
            while self._state == _CLOSING:
                # Our close frame is out: messages are dropped until the peer's close.
                opcode = parser.next_event()
                if opcode == NEED_DATA:
                    return
                if opcode == OP_CLOSE:
                    self._close_received(parser.close_code, parser.close_reason, parser.payload)
        except ProtocolError as exc:
            self._fail(exc.code, exc.reason)
        except Exception:
            log.exception("WebSocket handler failed")
            self._fail(rfc6455.INTERNAL_ERROR, "internal error")

    def _time_incomplete(self, offset: int) -> None:
        """After a read, a message (or frame) is incomplete: time it from now if it is new.

        One timer per connection, armed only while something is incomplete:
        a read that ends on a frame boundary between messages costs nothing.
        """
        noted = self._incomplete
        if noted is None or noted[0] != offset:
            self._incomplete = (offset, self._loop.time())
        if self._message_timer is None:
            self._message_timer = self._loop.call_later(
                self._message_timeout(), self._check_incomplete
            )

    def _check_incomplete(self) -> None:
        """The message timer: fail the connection 1008 if the same message is still incomplete."""
        self._message_timer = None
        offset = self._parser.incomplete_offset if self._state == _OPEN else None
        noted = self._incomplete
        if offset is None or noted is None:
            self._incomplete = None  # complete now: the next one arms the timer again
            return
        timeout = self._message_timeout()
        now = self._loop.time()
        if self._reading_paused or noted[0] != offset:
            # While we do not read, the peer cannot finish: its time starts again.
            self._incomplete = (offset, now)
            delay = timeout
        else:
            delay = noted[1] + timeout - now
            if delay <= 0:
                self._fail(rfc6455.POLICY_VIOLATION, f"message not completed in {timeout:g} s")
                return
        self._message_timer = self._loop.call_later(delay, self._check_incomplete)

    def _message_timeout(self) -> float:
        return float(getattr(self._config, "ws_message_timeout", DEFAULT_MESSAGE_TIMEOUT))

    def _close_received(self, code: int, reason: str, payload: bytes) -> None:
        if self._state == _OPEN and self._transport.can_write_eof():
            # The peer closed first, and may still read what we wrote before:
            # its owner hears of the end, and of what never arrived, when TCP
            # ends (the FIN, or the close timeout). Without half-close (TLS)
            # the socket is gone by then, and the count is taken now.
            self._end_mark = self.written_bytes
            self._peer_close = (code, reason)
            self._send_frame(OP_CLOSE, payload)  # echo it (RFC 6455 5.5.1)
            self._finish()
            return
        self._count_unsent_once()
        if self._state == _OPEN:
            self._send_frame(OP_CLOSE, payload)  # echo it (RFC 6455 5.5.1)
        self._finish()
        self._report(code, reason)

    def _fail(self, code: int, reason: str) -> None:
        """Fail the connection (RFC 6455 7.1.7): close frame, then end TCP."""
        self._count_unsent_once()
        if self._state == _OPEN:
            self._send_frame(OP_CLOSE, rfc6455.close_payload(code, reason))
        if self._state < _CLOSED:
            self._finish()
        self._report(code, reason)

    def _finish(self) -> None:
        """Nothing more to send: flush, half-close, and read until the client's FIN."""
        self._flush()
        self._state = _CLOSED
        self._keepalive.discard(self)
        self._sync_reading()
        if self._transport.can_write_eof():
            self._transport.write_eof()
            self._fin_sent = True
        else:
            self._transport.close()
        self._arm_deadline()

    def _report(self, code: int, reason: str) -> None:
        """Tell the handler (or, before any accept, the ASGI app) that the connection ended."""
        handler = self._handler if self._handler is not None else self._bridge
        if self._reported or handler is None:
            return
        self._reported = True
        self._count_unsent_once()
        try:
            handler.connection_lost(code, reason)
        except Exception:
            log.exception("WebSocket handler failed in connection_lost()")

    def _arm_deadline(self) -> None:
        if self._deadline is None and self._state != _LOST:
            self._deadline = self._loop.call_later(self._close_timeout, self._expire)

    def _expire(self) -> None:
        """The peer did not finish the close (or never read it) in time."""
        self._deadline = None
        self.abort()

    # --- writing --------------------------------------------------------------------

    def _queue(self, header: bytes, data: bytes, size: int) -> None:
        self.written_bytes += size
        out = self._out
        if out is None:
            self._out = [header, data]
            self._out_size = size
            self._loop.call_soon(self._flush)
        else:
            out.append(header)
            out.append(data)
            self._out_size += size
            if self._out_size >= WRITE_HIGH_WATER:
                self._flush()  # let the transport see it now, and pause us if it must

    def _send_frame(self, opcode: int, payload: bytes) -> None:
        header = frame_header(opcode, len(payload))
        self._queue(header, payload, len(header) + len(payload))

    def _flush(self) -> None:
        out = self._out
        if out is None:
            return
        self._out = None
        self._out_size = 0
        if self._state != _LOST:
            self._transport.writelines(out)

    def _keepalive_ping(self) -> None:
        self._alive = False
        if self._state == _OPEN:
            self._queue(_PING_FRAME, b"", len(_PING_FRAME))


def _socket_count(transport: asyncio.Transport, request: int) -> int:
    """A byte count the kernel keeps for the socket (FIONREAD: unread; TIOCOUTQ: unacked).

    0 once the socket is closed, or where there is none.
    """
    sock = transport.get_extra_info("socket")
    if sock is None:
        return 0
    try:
        raw = fcntl.ioctl(sock.fileno(), request, b"\0\0\0\0")
    except (OSError, ValueError):
        return 0
    count: int = struct.unpack("i", raw)[0]
    return count


class _Keepalive:
    """One timer for every open connection of a server: ping them, abort the silent ones.

    A ping goes to every member; ``timeout`` later, a member that sent no byte
    since is aborted. The next round starts ``interval`` after the previous
    one (or right after the check, when ``timeout >= interval``): one ping in
    flight per connection, as with uvicorn's own protocols.
    """

    __slots__ = ("_interval", "_loop", "_members", "_timeout", "_timer")

    def __init__(
        self, loop: asyncio.AbstractEventLoop, interval: float | None, timeout: float | None
    ) -> None:
        self._loop = loop
        self._interval = interval if interval and interval > 0 else None
        self._timeout = timeout if timeout and timeout > 0 else None
        self._members: set[RelayWebSocketProtocol] = set()
        self._timer: asyncio.TimerHandle | None = None

    def add(self, connection: RelayWebSocketProtocol) -> None:
        if self._interval is None:
            return
        self._members.add(connection)
        if self._timer is None:
            self._timer = self._loop.call_later(self._interval, self._ping)

    def discard(self, connection: RelayWebSocketProtocol) -> None:
        self._members.discard(connection)

    def _ping(self) -> None:
        self._timer = None
        if not self._members:
            return  # restarted by the next add()
        for connection in self._members:
            connection._keepalive_ping()
        assert self._interval is not None
        if self._timeout is None:
            self._timer = self._loop.call_later(self._interval, self._ping)
        else:
            self._timer = self._loop.call_later(self._timeout, self._reap)

    def _reap(self) -> None:
        silent = [connection for connection in self._members if not connection._alive]
        for connection in silent:
            connection.abort()
        assert self._interval is not None and self._timeout is not None
        self._timer = self._loop.call_later(max(0.0, self._interval - self._timeout), self._ping)


# One keepalive per uvicorn server (tests run several servers in one process).
_keepalives: weakref.WeakKeyDictionary[ServerState, _Keepalive] = weakref.WeakKeyDictionary()


def _keepalive_of(
    server_state: ServerState, config: Config, loop: asyncio.AbstractEventLoop
) -> _Keepalive:
    keepalive = _keepalives.get(server_state)
    if keepalive is None:
        keepalive = _Keepalive(loop, config.ws_ping_interval, config.ws_ping_timeout)
        _keepalives[server_state] = keepalive
    return keepalive


class _ASGIBridge:
    """Runs the ASGI app of one connection; in ASGI mode, its ``FrameHandler`` too."""

    __slots__ = (
        "_app",
        "_app_closed",
        "_conn",
        "_disconnect",
        "_drain",
        "_max_queue",
        "_queue",
        "_response",
        "_waiter",
        "accept_key",
        "direct",
        "scope",
    )

    def __init__(self, conn: RelayWebSocketProtocol, scope: Scope, accept_key: str) -> None:
        config = conn._config
        self._conn = conn
        self._app = cast(Callable[..., Awaitable[Any]], config.loaded_app)
        self._max_queue = max(1, config.ws_max_queue)
        self.scope = scope
        self.accept_key = accept_key
        self.direct = False
        self._app_closed = False
        self._queue: deque[Message] = deque([{"type": "websocket.connect"}])
        self._waiter: asyncio.Future[None] | None = None
        self._drain: asyncio.Future[None] | None = None
        self._disconnect: Message | None = None
        self._response: tuple[int, list[tuple[bytes, bytes]], list[bytes]] | None = None

    async def run(self) -> None:
        conn = self._conn
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
        state = conn._state
        if state == _CONNECTING:
            # Not an error worth ERROR: the client gets a 500, as from uvicorn.
            log.warning("%s 500: the app returned without accepting", _request_line(self.scope))
            conn._respond(500, [], b"Internal Server Error")
        elif state == _RESPONDING:
            conn._drop_response()
        elif state == _OPEN and not self.direct:
            conn.close(rfc6455.NORMAL_CLOSURE)

    def _fail(self) -> None:
        conn = self._conn
        if conn._state == _CONNECTING:
            conn._respond(500, [], b"Internal Server Error")
        elif conn._state == _RESPONDING:
            conn._drop_response()
        elif conn._state == _OPEN:
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
            self._waiter = self._conn._loop.create_future()
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
        state = conn._state
        if state == _OPEN:
            if kind == "websocket.send":
                if conn._writing_paused:
                    await self._wait_writable()
                    if conn._state != _OPEN:
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
        elif state == _CONNECTING:
            if kind == "websocket.accept":
                conn._accept(self, message.get("subprotocol"), list(message.get("headers", [])))
            elif kind == "websocket.close":
                self._log_status(403)
                self.disconnected(rfc6455.ABNORMAL_CLOSURE, "")
                conn._respond(403, [], b"")
            elif kind == "websocket.http.response.start":
                status = message["status"]
                if not 100 <= status < 600:
                    raise RuntimeError(f"Invalid HTTP status code '{status}' in response.")
                self._log_status(status)
                self._response = (status, list(message.get("headers", [])), [])
                conn._begin_response()
            else:
                raise RuntimeError(
                    "Expected ASGI message 'websocket.accept', 'websocket.close' or "
                    f"'websocket.http.response.start' but got {kind!r}."
                )
        elif state == _RESPONDING:
            if kind != "websocket.http.response.body":
                raise RuntimeError(f"Expected 'websocket.http.response.body' but got {kind!r}.")
            assert self._response is not None
            status, headers, body = self._response
            body.append(message.get("body", b""))
            if not message.get("more_body", False):
                self.disconnected(rfc6455.ABNORMAL_CLOSURE, "")
                conn._respond(status, headers, b"".join(body))
        elif self._app_closed and state != _LOST:
            raise RuntimeError(f"Unexpected ASGI message {kind!r} after sending 'websocket.close'.")
        else:
            raise ClientDisconnected

    async def _wait_writable(self) -> None:
        if self._drain is None or self._drain.done():
            self._drain = self._conn._loop.create_future()
        await self._drain

    def _log_status(self, status: int) -> None:
        log.info("%s %d", _request_line(self.scope), status)


def _request_line(scope: Scope) -> str:
    """How uvicorn names a WebSocket request in its log: ``client - "WebSocket /path"``."""
    ws_scope = cast("WebSocketScope", scope)
    return f'{get_client_addr(ws_scope)} - "WebSocket {get_path_with_query_string(ws_scope)}"'
