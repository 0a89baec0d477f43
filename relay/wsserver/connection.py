"""One WebSocket connection, from the upgrade request to the end of TCP: ``RelayWebSocketProtocol``.

The asyncio side of the frame layer: it reads the socket into ``relay.rfc6455``
(the handshake, the frame parser, the closing handshake) and writes what they
decide. The app answers the upgrade through the ASGI bridge (``asgi``) or
takes the connection in direct mode (``direct``); ``keepalive`` pings it.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import socket
import struct
import termios
from typing import Any, Final, cast

from uvicorn.config import Config
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
    CloseActions,
    ClosingHandshake,
    FrameParser,
    HandshakeError,
    ProtocolError,
    frame_header,
)
from relay.wsserver.addresses import remote_address
from relay.wsserver.asgi import ASGIBridge, request_line, websocket_scope
from relay.wsserver.direct import FrameHandler
from relay.wsserver.flushing import flusher_of
from relay.wsserver.keepalive import keepalive_of
from relay.wsserver.message_timer import MessageTimer
from relay.wsserver.states import CLOSED, CLOSING, CONNECTING, HANDSHAKE, LOST, OPEN, RESPONDING

log = logging.getLogger("uvicorn.error")  # where uvicorn's own WebSocket protocols log

DEFAULT_CLOSE_TIMEOUT: Final = 3.0
DEFAULT_MAX_FRAGMENTS: Final = 256
DEFAULT_MESSAGE_TIMEOUT: Final = 30.0
WRITE_HIGH_WATER: Final = 65536
"""Transport buffer above which ``writing_paused`` turns True (low water: a quarter)."""
DEFAULT_SEND_BUFFER: Final = 256 * 1024
"""SO_SNDBUF of each socket (Linux doubles it) unless ``config.ws_send_buffer_bytes`` says.

Fixed rather than autotuned, so that the relay's replay window always covers
what a socket can hold. ``ws_send_buffer_bytes`` None: the listening socket
has it, and each accepted socket inherits it (``relay.listen.bind``)."""

_PING_FRAME: Final = rfc6455.encode_frame(OP_PING, b"")
KEEPALIVE_TIMEOUT: Final = "keepalive ping timeout"
"""The reason of the 1011 that ends a connection silent for a whole keepalive round."""


class RelayWebSocketProtocol(asyncio.Protocol):
    """One WebSocket connection, from the upgrade request to the end of TCP.

    Besides asyncio's protocol and ``DirectConnection``, two attributes are read
    from outside: ``state`` (one of ``relay.wsserver.states``, by the ASGI
    bridge) and ``alive`` (True once any byte arrived since the last keepalive
    ping, by the keepalive). ``DirectConnection.writing_paused`` is a plain
    attribute here, not a property: every frame a room's publish writes reads it.
    """

    __slots__ = (
        "_acked_at_end",
        "_app_state",
        "_bridge",
        "_close_timeout",
        "_closing",
        "_config",
        "_connections",
        "_deadline",
        "_dropped",
        "_end_mark",
        "_fin_sent",
        "_flusher",
        "_handler",
        "_head",
        "_keepalive",
        "_loop",
        "_message_timer",
        "_out",
        "_out_size",
        "_parser",
        "_peer",
        "_reading_paused",
        "_send_buffer",
        "_server_state",
        "_transport",
        "_transport_paused",
        "_unsent",
        "alive",
        "state",
        "writing_paused",
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
        self._send_buffer: int | None = getattr(config, "ws_send_buffer_bytes", DEFAULT_SEND_BUFFER)
        self._keepalive = keepalive_of(server_state, config, self._loop)
        self._flusher = flusher_of(server_state, self._loop)
        self.state = HANDSHAKE
        self._head = b""
        self._transport: asyncio.Transport = None  # type: ignore[assignment]
        self._peer: tuple[str, int] | None = None
        self._parser: FrameParser = None  # type: ignore[assignment]
        self._handler: FrameHandler | None = None
        self._bridge: ASGIBridge | None = None
        # Frames of this loop pass, not yet written: the first as a tuple, more
        # as a list (``_queue``).
        self._out: tuple[bytes, bytes] | list[bytes] | None = None
        self._out_size = 0
        self._reading_paused = False  # the owner's wish
        self._transport_paused = False  # what we told the transport
        self.writing_paused = False
        self.alive = True  # data arrived since the last keepalive ping
        self._deadline: asyncio.TimerHandle | None = None
        self._unsent: int | None = None  # bytes that never left, counted when the end is seen
        self._acked_at_end = 0  # written_bytes less _unsent, at that moment
        self._dropped = 0  # bytes of messages written once the connection was ending
        self._end_mark: int | None = None  # written_bytes when the peer's close arrived
        self._closing: ClosingHandshake | None = None  # made when the end begins
        self._fin_sent = False
        self.written_bytes = 0
        # The incomplete message being timed: (its stream offset, when it was first seen).
        self._message_timer: MessageTimer | None = None  # made on the first incomplete read

    # --- asyncio.Protocol -----------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)
        self._transport.set_write_buffer_limits(high=WRITE_HIGH_WATER)
        if self._send_buffer is not None:
            sock = self._transport.get_extra_info("socket")
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, self._send_buffer)
        self._peer = remote_address(self._transport)
        self._connections.add(self)

    def data_received(self, data: bytes) -> None:
        self.alive = True
        state = self.state
        if state >= OPEN:
            if state < CLOSED:
                self._parser.feed(data)
                if not self._reading_paused or state == CLOSING:
                    self._process()
        elif state == HANDSHAKE:
            self._handshake(data)
        else:
            # Frames sent before our answer wait in the parser, those that came in
            # the read of the request head too (RFC 6455 lets a client wait for
            # the 101; taking what comes early is our choice).
            self._parser.feed(data)

    def eof_received(self) -> bool | None:
        # The client will send nothing more: flush, then the transport closes.
        self.flush()
        if self.state < CLOSED:
            self.state = CLOSED
            self._keepalive.discard(self)
            self._arm_deadline()
        ended = self._closing_handshake().eof_received()
        if ended is not None:  # the peer's close, told now that TCP ends
            self._count_unsent_once()  # the socket is still open: the kernel can tell
            self._report(*ended)
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self._count_unsent_once()
        self.state = LOST
        self._out = None
        self._out_size = 0
        self._connections.discard(self)
        self._keepalive.discard(self)
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None
        if self._message_timer is not None:
            self._message_timer.cancel()
        ended = self._closing_handshake().connection_lost()
        if ended is not None:
            self._report(*ended)
        # The handler points back at us: let refcounting free both (and the
        # peer state they hold) now, not at the next full collection.
        self._handler = None
        self._bridge = None

    def pause_writing(self) -> None:
        self.writing_paused = True

    def resume_writing(self) -> None:
        self.writing_paused = False
        handler = self._handler
        if handler is not None and self.state < LOST:
            try:
                handler.writable()
            except Exception:
                log.exception("WebSocket handler failed in writable()")
                self._fail(rfc6455.INTERNAL_ERROR, "internal error")

    def shutdown(self) -> None:
        """uvicorn is exiting: close with 1012 (service restart), or refuse with 500."""
        state = self.state
        if state == OPEN:
            if self._bridge is not None and self._handler is self._bridge:
                self._bridge.disconnected(rfc6455.SERVICE_RESTART, "")
            self.close(rfc6455.SERVICE_RESTART)
        elif state == CONNECTING:
            self.respond(500, [], b"the server is shutting down")
        elif state < OPEN:
            self.drop_response()

    # --- DirectConnection -----------------------------------------------------------

    def accept_direct(self, handler: FrameHandler, subprotocol: str | None = None) -> None:
        """Accept the upgrade and give the connection to ``handler`` (see the module doc).

        Sends the 101 response now. From then on the connection produces no ASGI
        message, and the ASGI app may return without closing anything.
        """
        # Once the socket is gone the bridge is too: a lost connection raises here.
        if self._bridge is None or self.state not in (CONNECTING, CLOSED):
            raise RuntimeError("accept_direct() needs a connection the app has not answered")
        self._bridge.direct = True
        if self.state == CLOSED:
            # The client left (or the server shut down) while the app decided:
            # the handler hears of the end, once, when TCP ends.
            self._handler = handler
            return
        self.accept(handler, subprotocol, [])
        self._bridge = None  # the app holds the scope as long as it wants; we don't

    def write(self, data: bytes) -> None:
        if self.state != OPEN:
            self._drop(len(data))
            return
        size = len(data)
        header = BINARY_HEADERS[size] if size < 126 else frame_header(OP_BINARY, size)
        self._queue(header, data, size + len(header))

    def write_text(self, text: str) -> None:
        if self.state != OPEN:
            self._drop(len(text.encode()))
            return
        data = text.encode()
        size = len(data)
        header = TEXT_HEADERS[size] if size < 126 else frame_header(OP_TEXT, size)
        self._queue(header, data, size + len(header))

    def write_buffer_size(self) -> int:
        if self.state == LOST:
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
        if self.state == OPEN and self._parser.buffered:
            self._loop.call_soon(self._process)

    def close(self, code: int, reason: str = "") -> None:
        frame = self._closing_handshake().close(code, reason)
        if not frame:
            return  # not open: not yet, closing already, or closed
        self._queue(frame, b"", len(frame))
        self.flush()
        self.state = CLOSING
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

    @property
    def acks_known(self) -> bool:
        return self._transport.get_extra_info("sslcontext") is None

    def received_bytes(self) -> int:
        if self.state >= CLOSED or self._parser is None:
            return 0
        return self._parser.buffered + _socket_count(self._transport, termios.FIONREAD)

    def _count_unsent_once(self) -> None:
        """Count the unsent bytes once, when the end is seen.

        Usually before a close frame or FIN of ours joins the queue. When the
        peer closed first (or went silent: the keepalive), at the end of TCP
        instead: a peer may read what was sent before its close arrived (or
        before ours left), so it is counted lost only if the peer's host never
        acknowledged it; what we sent after (our close frame, the FIN) is not
        the peer's to read. What is not acknowledged then is taken
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
        if self.state == LOST:
            return
        self._count_unsent_once()
        sock = self._transport.get_extra_info("socket")
        if sock is not None:
            # A reset, not a close: the kernel would otherwise go on sending
            # what it holds after we have given up (and counted it unsent).
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.state = CLOSED
        self._closing_handshake().abort()
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
                self.respond(431, [], b"request header fields too large")
            return
        self._head = b""
        try:
            request = rfc6455.parse_request(buffered[:end])
        except HandshakeError as exc:
            self.respond(exc.status, list(exc.headers), exc.message.encode())
            return
        self.take_request(request, buffered[end + 4 :])

    def take_request(self, request: rfc6455.Request, rest: bytes) -> None:
        """The upgrade request, parsed already, and the bytes read after its head.

        For a new connection, instead of ``data_received``: the HTTP stage
        hands over a plain upgrade request (``rfc6455.plain_upgrade``) so.
        """
        try:
            handshake = rfc6455.validate_handshake(request)
        except HandshakeError as exc:
            self.respond(exc.status, list(exc.headers), exc.message.encode())
            return
        self._parser = FrameParser(
            self._config.ws_max_size,
            getattr(self._config, "ws_max_fragments", DEFAULT_MAX_FRAGMENTS),
        )
        self._parser.feed(rest)
        self.state = CONNECTING
        self._sync_reading()
        self._bridge = bridge = ASGIBridge(
            self,
            websocket_scope(
                self._config,
                self._transport,
                request,
                handshake,
                client=self._peer,
                app_state=self._app_state,
                connection=self,
            ),
            handshake.accept,
            app=self._config.loaded_app,
            max_queue=self._config.ws_max_queue,
            loop=self._loop,
        )
        if bridge.offer():
            return
        task = self._loop.create_task(bridge.run())
        self._server_state.tasks.add(task)
        task.add_done_callback(self._server_state.tasks.discard)

    # --- answering the upgrade: for the ASGI bridge (asgi.BridgedConnection) ---------

    def accept(
        self, handler: FrameHandler, subprotocol: str | None, headers: list[tuple[bytes, bytes]]
    ) -> None:
        """Answer the upgrade with 101 (and ``headers``); messages then go to ``handler``."""
        assert self._bridge is not None
        extra = list(self._server_state.default_headers) + headers
        if subprotocol:
            extra.append((b"sec-websocket-protocol", subprotocol.encode()))
        response = rfc6455.accept_response(self._bridge.accept_key, extra)
        if log.isEnabledFor(logging.INFO):  # formatting the line costs a storm's handshakes
            log.info("%s [accepted]", request_line(self._bridge.scope))
        self._handler = handler
        self.state = OPEN
        self._transport.write(response)
        self._keepalive.add(self)
        self._sync_reading()
        if self._parser.buffered:
            self._loop.call_soon(self._process)

    def begin_response(self) -> None:
        """The app started a denial response: no accept can follow."""
        self.state = RESPONDING

    def respond(self, status: int, headers: list[tuple[bytes, bytes]], body: bytes) -> None:
        """Answer the upgrade with a plain HTTP response and end the connection."""
        headers = list(self._server_state.default_headers) + headers
        self._transport.write(rfc6455.http_response(status, headers, body))
        self.state = CLOSED
        self._transport.close()
        self._arm_deadline()

    def drop_response(self) -> None:
        """End the connection before a response is complete (or even begun)."""
        self.state = CLOSED
        self._transport.close()
        self._arm_deadline()

    # --- reading --------------------------------------------------------------------

    def _sync_reading(self) -> None:
        state = self.state
        paused = state == CONNECTING or (state == OPEN and self._reading_paused)
        if paused != self._transport_paused and state < LOST:
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
            while self.state == OPEN and not self._reading_paused:
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
                elif opcode == OP_PING and not self.writing_paused:
                    # A peer that pings but does not read gets no pongs piling up:
                    # answering only some pings is allowed (RFC 6455 5.5.3).
                    self._send_frame(OP_PONG, parser.payload)
                elif opcode == OP_CLOSE:
                    code, reason = parser.close_code, parser.close_reason
                    self._carry_out(self._closing_handshake().close_received(code, reason))
                    return
                # A pong needs nothing: any data marks the connection alive.
            if self.state == CLOSING:
                # Our close frame is out: messages are dropped until the peer's close.
                ending = self._closing_handshake().read_until_close(parser)
                if ending is not None:
                    self._carry_out(ending)
        except ProtocolError as exc:
            self._fail(exc.code, exc.reason)
        except Exception:
            log.exception("WebSocket handler failed")
            self._fail(rfc6455.INTERNAL_ERROR, "internal error")

    def _time_incomplete(self, offset: int) -> None:
        timer = self._message_timer
        if timer is None:
            timeout = getattr(self._config, "ws_message_timeout", DEFAULT_MESSAGE_TIMEOUT)
            timer = self._message_timer = MessageTimer(
                self._loop,
                float(timeout),
                self._incomplete_offset,
                lambda: self._reading_paused,
                lambda reason: self._fail(rfc6455.POLICY_VIOLATION, reason),
            )
        timer.incomplete(offset)

    def _incomplete_offset(self) -> int | None:
        return self._parser.incomplete_offset if self.state == OPEN else None

    def _fail(self, code: int, reason: str) -> None:
        """Fail the connection (RFC 6455 7.1.7): close frame, then end TCP."""
        self._carry_out(self._closing_handshake().fail(code, reason))

    def _closing_handshake(self) -> ClosingHandshake:
        """The closing handshake, made when the end begins: an open connection holds none.

        Until then every closing event went through it, so ``state`` tells
        where it starts: open, or ended before it opened (a refused upgrade).
        """
        closing = self._closing
        if closing is None:
            closing = self._closing = ClosingHandshake()
            if self.state == OPEN:
                closing.opened(half_close=self._transport.can_write_eof())
            elif self.state >= CLOSED:
                closing.abort()
        return closing

    def _carry_out(self, closing: CloseActions) -> None:
        """Do what the closing handshake decided: count what never left, send, finish, report."""
        if self._closing_handshake().reports_at_end:
            # The peer closed first (or went silent), and may still read what
            # we wrote before: the owner hears of the end, and of what never
            # arrived, when TCP ends (the FIN, or the close timeout). Without
            # half-close (TLS) the socket is gone by then, and the count is
            # taken now.
            if self._end_mark is None:
                self._end_mark = self.written_bytes
        else:
            self._count_unsent_once()  # before a close frame or FIN of ours is queued
        if closing.send:
            self._queue(closing.send, b"", len(closing.send))
        if closing.finish:
            self._finish()
        if closing.report is not None:
            self._report(*closing.report)

    def _finish(self) -> None:
        """Nothing more to send: flush, half-close, and read until the client's FIN."""
        self.flush()
        self.state = CLOSED
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
        if handler is None:
            return
        self._count_unsent_once()
        try:
            handler.connection_lost(code, reason)
        except Exception:
            log.exception("WebSocket handler failed in connection_lost()")

    def _arm_deadline(self) -> None:
        if self._deadline is None and self.state != LOST:
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
            # A tuple, not a list: one frame a pass is the common case, and the
            # collector untracks a tuple of bytes the first time it sees it. A
            # room's fan-out left a list on every member to outlive the pass's
            # collections, which brought full collections on sooner (at 10,000
            # members each stalls the loop for 80-250 ms).
            self._out = (header, data)
            self._out_size = size
            self._flusher.flush_after_pass(self)
            return
        if isinstance(out, list):
            out.append(header)
            out.append(data)
        else:
            self._out = [*out, header, data]
        self._out_size += size
        if self._out_size >= WRITE_HIGH_WATER:
            self.flush()  # let the transport see it now, and pause us if it must

    def _send_frame(self, opcode: int, payload: bytes) -> None:
        header = frame_header(opcode, len(payload))
        self._queue(header, payload, len(header) + len(payload))

    def flush(self) -> None:
        """Hand the frames gathered in this pass to the transport (``relay.wsserver.flushing``)."""
        out = self._out
        if out is None:
            return
        self._out = None
        self._out_size = 0
        if self.state != LOST:
            self._transport.writelines(out)

    def keepalive_ping(self) -> None:
        """For the keepalive: clear ``alive`` and ping the peer (if open)."""
        self.alive = False
        if self.state == OPEN:
            self._queue(_PING_FRAME, b"", len(_PING_FRAME))

    def keepalive_expired(self) -> None:
        """For the keepalive: the peer sent nothing for a whole round.

        Failed with 1011 (RFC 6455 7.1.7): the close frame goes out after what
        was written, TCP is half-closed, and a peer that does not finish the
        close (or cannot even read it) is aborted ``close_timeout`` later. The
        owner hears 1011 when TCP ends, as when the peer closes first: a peer
        that wakes up meanwhile still reads what was on its way, and what never
        reached it is counted then (over TLS, which cannot half-close: now).
        """
        if self.state == OPEN:
            closing = self._closing_handshake()
            self._carry_out(closing.peer_silent(rfc6455.INTERNAL_ERROR, KEEPALIVE_TIMEOUT))


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
