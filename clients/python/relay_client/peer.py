"""The relay peer: one WebSocket to the relay, kept alive across drops."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import itertools
import logging
import random
import time
from collections import OrderedDict, deque
from collections.abc import Awaitable, Callable, Generator, Sequence
from dataclasses import dataclass, field
from ssl import SSLContext
from types import TracebackType
from typing import Any, Literal, overload

from websockets.asyncio.client import ClientConnection
from websockets.asyncio.client import connect as ws_connect
from websockets.exceptions import ConnectionClosed as WsConnectionClosed
from websockets.exceptions import InvalidHandshake, InvalidStatus, InvalidURI
from websockets.protocol import State as WsState
from websockets.typing import Subprotocol
from websockets.uri import parse_uri

from ._wire import ERROR_EV, SUBPROTOCOL, pack, unpack
from .errors import (
    ConnectionClosed,
    ConnectionLost,
    NotConnected,
    OfflineBufferFull,
    PeerOffline,
    ProtocolError,
    RelayError,
    RelayTimeout,
    RelayUnavailable,
    RemoteError,
    RequestTimeout,
    ServerError,
    SessionReplaced,
    TooLarge,
    error_from_code,
    should_reconnect,
)
from .types import Ack, Message, Presence, State, Undelivered, Welcome

__all__ = ["DEFAULT_URL", "Peer", "connect"]

log = logging.getLogger("relay_client")

DEFAULT_URL = "ws://127.0.0.1:8080/v1/ws"
"""Where a relay listens by default."""

MessageHandler = Callable[[Message], Awaitable[None] | None]
"""``peer.on(ev, handler)``: called with each matching :class:`Message`; may be async."""
RequestHandler = Callable[[Message], Any]
"""``peer.on_request(ev, handler)``: returns the reply data (or an awaitable of it)."""
PresenceHandler = Callable[[Presence], Awaitable[None] | None]
UndeliveredHandler = Callable[[Undelivered], Awaitable[None] | None]
ErrorHandler = Callable[[RelayError], Awaitable[None] | None]
StateHandler = Callable[[State], Awaitable[None] | None]
TokenSource = str | Callable[[], str | Awaitable[str]] | None
"""A token, or a function (sync or async) called before every (re)connect for a fresh one."""

_TRANSIENT_CODES = frozenset({"overloaded", "internal", "rate-limited"})
_QUEUED_MEMORY = 4096


@dataclass(slots=True)
class _Pending:
    """A request sent with an ``id``, waiting for its ``ok``/``err``/``pong``."""

    future: asyncio.Future[Any]
    kind: str
    envelope: dict[str, Any]
    sent_at: float = 0.0
    on_ok: Callable[[], None] | None = None


@dataclass(slots=True)
class _Outgoing:
    envelope: dict[str, Any]
    frame: bytes
    pending: _Pending | None


@dataclass(slots=True)
class _Request:
    target: str
    future: asyncio.Future[Any]


@dataclass(slots=True)
class _Queued:
    to: Any
    ev: str | None
    data: Any
    rid: Any


@dataclass(slots=True)
class _Handlers:
    messages: dict[str | None, list[MessageHandler]] = field(default_factory=dict)
    requests: dict[str | None, RequestHandler] = field(default_factory=dict)
    presence: list[PresenceHandler] = field(default_factory=list)
    undelivered: list[UndeliveredHandler] = field(default_factory=list)
    errors: list[ErrorHandler] = field(default_factory=list)
    state: list[StateHandler] = field(default_factory=list)


def _describe(exc: BaseException) -> str:
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, TimeoutError):
        return "timed out"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror.lower()
    text = str(exc)
    return text if text else type(exc).__name__


def _is_transient(exc: RelayError) -> bool:
    """Whether a failed (re)connection attempt is worth retrying."""
    if isinstance(exc, RelayUnavailable | ProtocolError):
        return True
    if isinstance(exc, ConnectionClosed):
        return should_reconnect(exc.code)
    if isinstance(exc, ServerError):
        return exc.code in _TRANSIENT_CODES
    return False


def _new_future() -> asyncio.Future[Any]:
    """A future whose exception counts as retrieved even if its caller went away."""
    future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
    future.add_done_callback(_retrieve)
    return future


def _retrieve(future: asyncio.Future[Any]) -> None:
    if not future.cancelled():
        future.exception()


def _closed_error(code: int, reason: str) -> ConnectionClosed:
    if code == 4503:
        return SessionReplaced(code, reason)
    return ConnectionClosed(code, reason)


class Peer:
    """A peer of the relay. Create it with :func:`connect`.

    The peer owns one WebSocket to the relay and keeps it alive: after a
    dropped socket or a retryable close (1001, 1011, 1013, 4000-4499) it
    reconnects with exponential backoff and full jitter, resumes its session
    with the latest ``resume`` secret, rejoins its rooms when the relay did not
    restore them, and flushes the sends it buffered meanwhile, in order. A
    terminal close (1000 from the relay, 1003, 1008, 1009, 4500-4999) ends it:
    every pending and later operation raises :class:`ConnectionClosed`.

    Incoming messages go, in this order of preference, to a pending
    :meth:`request` (replies), a handler registered with :meth:`on_request`
    (requests), handlers registered with :meth:`on` for their ``ev``, and
    otherwise to the inbox read by :meth:`recv` / ``async for msg in peer``.
    """

    def __init__(
        self,
        url: str = DEFAULT_URL,
        *,
        id: str | None = None,
        token: TokenSource = None,
        resume: str | None = None,
        reconnect: bool = True,
        pace: bool = True,
        backoff_base: float = 0.25,
        backoff_max: float = 30.0,
        max_retries: int | None = None,
        buffer_size: int = 1000,
        inbox_size: int = 10_000,
        request_timeout: float = 30.0,
        open_timeout: float = 10.0,
        ping_interval: float | None = 20.0,
        ping_timeout: float | None = 20.0,
        close_timeout: float | None = 5.0,
        max_size: int | None = 2**24,
        ssl: SSLContext | None = None,
    ) -> None:
        """See :func:`connect` for the meaning of the arguments."""
        try:
            parse_uri(url)
        except InvalidURI as exc:
            raise ValueError(f"invalid relay URL {url!r}: {exc}") from None
        if buffer_size < 0 or inbox_size < 1:
            raise ValueError("buffer_size must be >= 0 and inbox_size >= 1")
        if backoff_base <= 0 or backoff_max < backoff_base:
            raise ValueError("need 0 < backoff_base <= backoff_max")
        self.url = url
        self._ssl = ssl
        self._requested_id = id
        self._token = token
        self._resume = resume
        self._reconnect = reconnect
        self._backoff_base = backoff_base
        self._backoff_max = backoff_max
        self._max_retries = max_retries
        self._buffer_size = buffer_size
        self._inbox_size = inbox_size
        self._request_timeout = request_timeout
        self._open_timeout = open_timeout
        self._ping_interval = ping_interval
        self._ping_timeout = ping_timeout
        self._close_timeout = close_timeout
        self._max_size = max_size

        self._state = State.CONNECTING
        self._welcome: Welcome | None = None
        # Envelopes received since the latest welcome: a resume tells the
        # relay, which replays whatever the dead socket never delivered.
        self._received = 0
        self._conn: ClientConnection | None = None  # the current socket, even while restoring
        self._ws: ClientConnection | None = None  # set only when fully online
        self._runner: asyncio.Task[None] | None = None
        self._closing = False
        self._close_error: RelayError | None = None

        self._ids = itertools.count(1)
        self._rids = itertools.count(1)
        self._pending: dict[Any, _Pending] = {}
        self._outbox: deque[_Outgoing] = deque()
        self._requests: dict[Any, _Request] = {}
        self._queued: OrderedDict[Any, _Queued] = OrderedDict()
        self._rooms: dict[str, bool] = {}
        self._members: dict[str, set[str]] = {}
        self._inbox: deque[Message] = deque()
        self._inbox_event = asyncio.Event()
        self._handlers = _Handlers()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._sessions = 0
        self._pace_writes = pace
        self._tokens = 0.0
        self._tokens_at = 0.0
        self._write_lock = asyncio.Lock()
        self.dropped = 0
        """Number of messages dropped because the inbox was full."""

    # ------------------------------------------------------------------ #
    # Properties
    # ------------------------------------------------------------------ #

    def __repr__(self) -> str:
        return f"<Peer id={self.id!r} url={self.url!r} state={self._state.value}>"

    @property
    def id(self) -> str | None:
        """The registered peer id (``None`` before the first welcome)."""
        return self._welcome.id if self._welcome else self._requested_id

    @property
    def state(self) -> State:
        """The connection state."""
        return self._state

    @property
    def connected(self) -> bool:
        """True while the socket is up and the session restored."""
        return self._state is State.CONNECTED

    @property
    def closed(self) -> bool:
        """True once the peer is closed for good."""
        return self._state is State.CLOSED

    @property
    def close_error(self) -> RelayError | None:
        """Why the peer closed, ``None`` if it is open or was closed by :meth:`close`."""
        return self._close_error

    @property
    def welcome(self) -> Welcome | None:
        """The latest ``welcome`` from the relay."""
        return self._welcome

    @property
    def resume_secret(self) -> str | None:
        """The secret (from the latest welcome) that resumes this session."""
        return self._welcome.resume if self._welcome else None

    @property
    def resumed(self) -> bool:
        """Whether the latest welcome resumed an existing session."""
        return bool(self._welcome and self._welcome.resumed)

    @property
    def limits(self) -> dict[str, Any]:
        """The relay's limits from the latest welcome."""
        return dict(self._welcome.limits) if self._welcome else {}

    @property
    def node(self) -> str | None:
        """The relay node that serves this session."""
        return self._welcome.node if self._welcome else None

    @property
    def sessions(self) -> int:
        """How many times the peer got a welcome (1 + number of reconnects)."""
        return self._sessions

    @property
    def rooms(self) -> frozenset[str]:
        """The rooms this peer is a member of (as acknowledged by the relay)."""
        return frozenset(self._rooms)

    def members(self, room: str) -> frozenset[str]:
        """Members of ``room`` as known from presence events (joined with ``presence=True``)."""
        return frozenset(self._members.get(room, ()))

    @property
    def buffered(self) -> int:
        """Number of sends waiting in the offline buffer."""
        return len(self._outbox)

    # ------------------------------------------------------------------ #
    # Lifecycle
    # ------------------------------------------------------------------ #

    async def open(self) -> Peer:
        """Connect and register; raise if the relay is unreachable or refuses.

        The first connection is not retried: :class:`RelayUnavailable` when the
        relay cannot be reached, the typed :class:`ServerError` (e.g.
        :class:`IdTaken`, :class:`Unauthorized`) when the ``hello`` is refused.
        """
        if self._runner is not None or self._state is State.CLOSED:
            raise RuntimeError("a Peer can be opened only once")
        try:
            conn, welcome = await self._handshake()
        except RelayError as exc:
            self._state = State.CLOSED
            self._close_error = exc
            raise
        self._apply_welcome(welcome)
        self._conn = self._ws = conn
        self._set_state(State.CONNECTED)
        self._runner = asyncio.create_task(self._run(conn), name=f"relay-peer-{self.id}")
        return self

    async def close(self) -> None:
        """Close the connection (code 1000) and stop reconnecting.

        Sends still in the offline buffer are dropped; their waiters, like
        every pending operation, get :class:`ConnectionClosed`. Idempotent.
        """
        current = asyncio.current_task()
        if self._state is State.CLOSED and (self._runner is None or self._runner.done()):
            for task in list(self._tasks):
                if task is not current:
                    task.cancel()
            return
        self._closing = True
        conn = self._conn
        if conn is not None:
            with contextlib.suppress(Exception):
                await conn.close(1000, "client closing")
        runner = self._runner
        if runner is not None and runner is not asyncio.current_task() and not runner.done():
            runner.cancel()
            await asyncio.wait({runner})  # never raises; our own cancellation still does
        if self._outbox:
            log.warning(
                "closing with %d unsent message(s) in the offline buffer", len(self._outbox)
            )
        self._finish(None)
        for task in list(self._tasks):
            if task is not current:
                task.cancel()

    async def wait_closed(self) -> RelayError | None:
        """Wait until the peer is closed for good; return :attr:`close_error`."""
        if self._runner is not None:
            await asyncio.wait({self._runner})
        return self._close_error

    async def __aenter__(self) -> Peer:
        if self._runner is None:
            await self.open()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    # ------------------------------------------------------------------ #
    # Sending
    # ------------------------------------------------------------------ #

    @overload
    async def send(
        self,
        to: str | Sequence[str],
        data: Any = None,
        *,
        ev: str | None = None,
        ack: Literal[True] = True,
    ) -> Ack: ...

    @overload
    async def send(
        self,
        to: str | Sequence[str],
        data: Any = None,
        *,
        ev: str | None = None,
        ack: Literal[False],
    ) -> None: ...

    @overload
    async def send(
        self,
        to: str | Sequence[str],
        data: Any = None,
        *,
        ev: str | None = None,
        ack: bool,
    ) -> Ack | None: ...

    async def send(
        self,
        to: str | Sequence[str],
        data: Any = None,
        *,
        ev: str | None = None,
        ack: bool = True,
    ) -> Ack | None:
        """Send ``data`` to one peer (``to`` a str) or several (a list of ids).

        With ``ack=True`` (the default) wait for the relay's ``ok`` and return
        an :class:`Ack`; raise the typed :class:`ServerError` on ``err`` (e.g.
        :class:`PeerOffline`, whose ``to`` lists the ids not reached: the
        others got the message). With ``ack=False`` the envelope carries no
        ``id``: return ``None`` at once; a refusal is reported to
        :meth:`on_error` handlers.

        While reconnecting, the send is held in the offline buffer and sent
        after the session is restored (raise :class:`OfflineBufferFull` when
        the buffer is full).
        """
        target: str | list[str] = to if isinstance(to, str) else list(to)
        envelope = {"type": "send", "to": target, "d": data, "ev": ev}
        result = await self._submit(envelope, "send", wait=ack)
        return result if ack else None

    @overload
    async def publish(
        self,
        room: str,
        data: Any = None,
        *,
        ev: str | None = None,
        echo: bool = False,
        ack: Literal[True] = True,
    ) -> Ack: ...

    @overload
    async def publish(
        self,
        room: str,
        data: Any = None,
        *,
        ev: str | None = None,
        echo: bool = False,
        ack: Literal[False],
    ) -> None: ...

    @overload
    async def publish(
        self,
        room: str,
        data: Any = None,
        *,
        ev: str | None = None,
        echo: bool = False,
        ack: bool,
    ) -> Ack | None: ...

    async def publish(
        self,
        room: str,
        data: Any = None,
        *,
        ev: str | None = None,
        echo: bool = False,
        ack: bool = True,
    ) -> Ack | None:
        """Deliver ``data`` to every member of ``room``.

        The sender gets its own message only with ``echo=True``. ``ack`` and
        offline buffering work as in :meth:`send`.
        """
        envelope = {"type": "pub", "room": room, "d": data, "ev": ev, "echo": echo or None}
        result = await self._submit(envelope, "pub", wait=ack)
        return result if ack else None

    async def join(self, room: str, *, presence: bool = False) -> None:
        """Become a member of ``room``; with ``presence``, receive its presence events.

        The room is remembered and rejoined automatically when a reconnect did
        not resume the session. Raise the typed error on refusal
        (:class:`RoomFull`, :class:`Forbidden`, ...).
        """
        envelope = {"type": "join", "room": room, "presence": presence or None}

        def joined() -> None:
            self._rooms[room] = presence

        await self._submit(envelope, "join", wait=True, on_ok=joined)

    async def leave(self, room: str) -> None:
        """Stop being a member of ``room``."""
        envelope: dict[str, Any] = {"type": "leave", "room": room}

        def left() -> None:
            self._rooms.pop(room, None)
            self._members.pop(room, None)

        await self._submit(envelope, "leave", wait=True, on_ok=left)

    async def ping(self, timeout: float = 10.0) -> float:  # noqa: ASYNC109
        """Measure the round trip to the relay (a ``ping``/``pong``), in seconds.

        Raise :class:`NotConnected` while reconnecting, :class:`RelayTimeout`
        when no ``pong`` comes within ``timeout``.
        """
        self._check_open()
        conn = self._ws
        if conn is None:
            raise NotConnected("not connected to the relay (reconnecting)")
        rid = next(self._ids)
        envelope = {"type": "ping", "id": rid}
        pending = _Pending(_new_future(), "ping", envelope, time.monotonic())
        self._pending[rid] = pending
        with contextlib.suppress(WsConnectionClosed):
            await conn.send(pack(envelope))
        try:
            async with asyncio.timeout(timeout):
                rtt: float = await pending.future
                return rtt
        except TimeoutError:
            self._pending.pop(rid, None)
            raise RelayTimeout(f"no pong from the relay within {timeout}s") from None

    # ------------------------------------------------------------------ #
    # Request / reply
    # ------------------------------------------------------------------ #

    async def request(
        self,
        to: str,
        data: Any = None,
        *,
        ev: str | None = None,
        timeout: float | None = None,  # noqa: ASYNC109
    ) -> Any:
        """Send a request to peer ``to`` and return the data of its reply.

        The request is a ``send`` with a ``rid``; the responder answers with a
        ``send`` whose ``re`` is that ``rid`` (see :meth:`on_request`). Raise
        :class:`PeerOffline` when the target is not connected,
        :class:`RemoteError` when its handler failed, :class:`RequestTimeout`
        when no reply arrives within ``timeout`` seconds (default: the
        peer's ``request_timeout``).
        """
        limit = self._request_timeout if timeout is None else timeout
        rid = next(self._rids)
        future: asyncio.Future[Any] = _new_future()
        self._requests[rid] = _Request(to, future)
        envelope = {"type": "send", "to": to, "d": data, "ev": ev, "rid": rid}
        try:
            async with asyncio.timeout(limit) as scope:
                # On ConnectionLost it may have arrived: the reply can still come after resuming.
                with contextlib.suppress(ConnectionLost):
                    await self._submit(envelope, "send", wait=True)
                return await future
        except TimeoutError:
            if scope.expired():
                raise RequestTimeout(
                    f"no reply from {to!r} to request (ev={ev!r}) within {limit}s"
                ) from None
            raise
        finally:
            self._requests.pop(rid, None)

    async def reply(self, request: Message, data: Any = None) -> None:
        """Answer ``request`` (a message with a ``rid``) with ``data``."""
        if request.rid is None:
            raise ValueError("this message is not a request (it has no rid)")
        envelope = {"type": "send", "to": request.sender, "d": data, "re": request.rid}
        await self._submit(envelope, "send", wait=True)

    async def reply_error(self, request: Message, message: str) -> None:
        """Answer ``request`` with a failure: the requester raises :class:`RemoteError`."""
        if request.rid is None:
            raise ValueError("this message is not a request (it has no rid)")
        envelope = {
            "type": "send",
            "to": request.sender,
            "d": message,
            "ev": ERROR_EV,
            "re": request.rid,
        }
        await self._submit(envelope, "send", wait=True)

    # ------------------------------------------------------------------ #
    # Receiving
    # ------------------------------------------------------------------ #

    async def recv(self) -> Message:
        """Return the next message from the inbox.

        Raise :class:`ConnectionClosed` (or the error that closed the peer)
        once the peer is closed and the inbox is empty.
        """
        while True:
            if self._inbox:
                return self._inbox.popleft()
            if self._state is State.CLOSED:
                raise self._close_error or ConnectionClosed(1000, "closed by client")
            self._inbox_event.clear()
            await self._inbox_event.wait()

    def __aiter__(self) -> Peer:
        return self

    async def __anext__(self) -> Message:
        """Next message; the iteration ends when the peer is closed with :meth:`close`,
        and raises the terminal error when the relay closed it for good."""
        try:
            return await self.recv()
        except RelayError:
            if self._close_error is None:
                raise StopAsyncIteration from None
            raise

    def on(self, ev: str | None, handler: MessageHandler) -> Callable[[], None]:
        """Call ``handler(message)`` for every message whose ``ev`` equals ``ev``
        (``None``: messages without ``ev``). Such messages skip the inbox.

        The handler may be a coroutine function (run as a task). Return a
        function that removes the handler.
        """
        self._handlers.messages.setdefault(ev, []).append(handler)

        def remove() -> None:
            handlers = self._handlers.messages.get(ev, [])
            if handler in handlers:
                handlers.remove(handler)
            if not handlers:
                self._handlers.messages.pop(ev, None)

        return remove

    def on_request(self, ev: str | None, handler: RequestHandler) -> Callable[[], None]:
        """Answer requests whose ``ev`` equals ``ev`` with ``handler(message)``.

        The handler (sync or async) returns the reply data. If it raises, the
        requester gets :class:`RemoteError` with the exception's message (the
        reply is sent with ``ev: "relay.error"`` and ``d`` the message). One
        handler per ``ev``; a new one replaces the old. Return a remover.
        """
        self._handlers.requests[ev] = handler

        def remove() -> None:
            if self._handlers.requests.get(ev) is handler:
                del self._handlers.requests[ev]

        return remove

    def on_presence(self, handler: PresenceHandler) -> Callable[[], None]:
        """Call ``handler(presence)`` for every :class:`Presence` event."""
        return self._add(self._handlers.presence, handler)

    def on_undelivered(self, handler: UndeliveredHandler) -> Callable[[], None]:
        """Call ``handler(undelivered)`` when a message acknowledged as queued was dropped.

        That happens when its target was resuming and never came back within
        its resume window. Without a handler the event is logged.
        """
        return self._add(self._handlers.undelivered, handler)

    def on_error(self, handler: ErrorHandler) -> Callable[[], None]:
        """Call ``handler(error)`` for errors not tied to an awaited call.

        These are ``err`` replies to envelopes sent without ``id`` (``ack=False``)
        and rooms that could not be rejoined after a reconnect. Without a
        handler they are logged.
        """
        return self._add(self._handlers.errors, handler)

    def on_state(self, handler: StateHandler) -> Callable[[], None]:
        """Call ``handler(state)`` on every :class:`State` change."""
        return self._add(self._handlers.state, handler)

    @staticmethod
    def _add(handlers: list[Any], handler: Any) -> Callable[[], None]:
        handlers.append(handler)

        def remove() -> None:
            if handler in handlers:
                handlers.remove(handler)

        return remove

    # ------------------------------------------------------------------ #
    # Internals: submitting
    # ------------------------------------------------------------------ #

    def _check_open(self) -> None:
        if self._state is State.CLOSED:
            raise self._close_error or ConnectionClosed(1000, "closed by client")

    def _encode(self, envelope: dict[str, Any]) -> bytes:
        frame = pack(envelope)
        limit = self._welcome.limits.get("max_frame_bytes") if self._welcome else None
        if isinstance(limit, int) and limit > 0 and len(frame) > limit:
            raise TooLarge(
                f"the envelope is {len(frame)} bytes, the relay accepts at most {limit}",
                code="too-large",
            )
        return frame

    async def _submit(
        self,
        envelope: dict[str, Any],
        kind: str,
        *,
        wait: bool,
        on_ok: Callable[[], None] | None = None,
    ) -> Any:
        self._check_open()
        pending: _Pending | None = None
        if wait:
            envelope["id"] = next(self._ids)
            future = _new_future()
            pending = _Pending(future, kind, envelope, on_ok=on_ok)
        out = _Outgoing(envelope, self._encode(envelope), pending)
        # One writer at a time (FIFO), so frames leave in call order, paced and
        # never overtaking what waits in the offline buffer.
        async with self._write_lock:
            self._check_open()
            conn = self._ws
            live = conn is not None and not self._outbox and conn.state is WsState.OPEN
            if live:
                await self._pace()
                self._check_open()
                live = conn is self._ws and conn is not None and conn.state is WsState.OPEN
            if live and conn is not None:
                await self._transmit(conn, out)
            else:
                if len(self._outbox) >= self._buffer_size:
                    raise OfflineBufferFull(
                        f"offline buffer full ({self._buffer_size} messages) while reconnecting"
                    )
                self._outbox.append(out)
        if pending is None:
            return None
        try:
            return await pending.future
        except asyncio.CancelledError:
            with contextlib.suppress(ValueError):
                self._outbox.remove(out)
            raise

    async def _pace(self) -> None:
        """Wait for a token of the client-side bucket: 90% of the relay's
        advertised rate, a burst one below its own, so that a flushed buffer
        does not earn ``rate-limited`` errors (or a 4029 close)."""
        limits = self._welcome.limits if (self._pace_writes and self._welcome) else {}
        rate, burst = limits.get("rate_per_second"), limits.get("rate_burst")
        if not isinstance(rate, int | float) or rate <= 0 or not isinstance(burst, int):
            return
        rate, capacity = rate * 0.9, max(1.0, burst - 1.0)
        now = time.monotonic()
        self._tokens = min(capacity, self._tokens + (now - self._tokens_at) * rate)
        self._tokens_at = now
        if self._tokens < 1:
            await asyncio.sleep((1 - self._tokens) / rate)
            now = time.monotonic()
            self._tokens = min(capacity, self._tokens + (now - self._tokens_at) * rate)
            self._tokens_at = now
        self._tokens -= 1

    async def _transmit(self, conn: ClientConnection, out: _Outgoing) -> None:
        """Write one frame; an unacknowledged frame lost with the socket fails
        with ConnectionLost when the session ends."""
        if out.pending is not None:
            out.pending.sent_at = time.monotonic()
            self._pending[out.envelope["id"]] = out.pending
        try:
            await conn.send(out.frame)
        except WsConnectionClosed:
            if out.pending is None:
                log.debug("fire-and-forget %s lost with the socket", out.envelope["type"])

    # ------------------------------------------------------------------ #
    # Internals: connection
    # ------------------------------------------------------------------ #

    async def _handshake(self) -> tuple[ClientConnection, Welcome]:
        try:
            token = await self._current_token()
        except Exception as exc:
            raise RelayUnavailable(f"the token function failed: {_describe(exc)}") from exc
        resume = self.resume_secret or self._resume
        hello: dict[str, Any] = {"type": "hello", "id": self.id, "token": token, "resume": resume}
        if resume:
            hello["received"] = self._received
        tls: dict[str, Any] = {} if self._ssl is None else {"ssl": self._ssl}
        try:
            conn = await ws_connect(
                self.url,
                subprotocols=[Subprotocol(SUBPROTOCOL)],
                open_timeout=self._open_timeout,
                ping_interval=self._ping_interval,
                ping_timeout=self._ping_timeout,
                close_timeout=self._close_timeout,
                max_size=self._max_size,
                **tls,
            )
        except InvalidStatus as exc:
            raise RelayUnavailable(
                f"relay at {self.url} refused the WebSocket upgrade "
                f"(HTTP {exc.response.status_code})"
            ) from None
        except (OSError, TimeoutError, EOFError, InvalidHandshake, WsConnectionClosed) as exc:
            raise RelayUnavailable(f"cannot reach relay at {self.url}: {_describe(exc)}") from None
        except Exception as exc:  # anything else the opening handshake may raise
            log.debug("handshake failed", exc_info=True)
            raise RelayUnavailable(f"cannot reach relay at {self.url}: {_describe(exc)}") from None
        try:
            return conn, await self._register(conn, hello)
        except BaseException:
            conn.transport.abort()  # never leak the socket (refusal, timeout, cancellation)
            raise

    async def _register(self, conn: ClientConnection, hello: dict[str, Any]) -> Welcome:
        """Send ``hello`` on a fresh socket and return the ``welcome``."""
        try:
            await conn.send(pack(hello))
            async with asyncio.timeout(self._open_timeout):
                frame = await conn.recv()
        except WsConnectionClosed:
            raise _closed_error(conn.close_code or 1006, conn.close_reason or "") from None
        except TimeoutError:
            raise RelayUnavailable(f"relay at {self.url} sent no welcome") from None
        envelope = unpack(frame) if isinstance(frame, bytes) else None
        if envelope is None or envelope["type"] not in ("welcome", "err"):
            raise ProtocolError(f"relay at {self.url} answered hello with something unexpected")
        if envelope["type"] == "err":
            raise error_from_code(
                str(envelope.get("code", "internal")), str(envelope.get("msg", ""))
            )
        limits = envelope.get("limits")
        return Welcome(
            id=str(envelope.get("id", "")),
            resume=str(envelope.get("resume", "")),
            limits=dict(limits) if isinstance(limits, dict) else {},
            node=str(envelope.get("node", "")),
            resumed=bool(envelope.get("resumed", False)),
        )

    async def _current_token(self) -> str | None:
        source = self._token
        if source is None or isinstance(source, str):
            return source
        value = source()
        if inspect.isawaitable(value):
            value = await value
        return value

    def _apply_welcome(self, welcome: Welcome) -> None:
        self._welcome = welcome
        self._received = 0
        self._sessions += 1
        burst = welcome.limits.get("rate_burst")
        self._tokens = max(1.0, burst - 2.0) if isinstance(burst, int) else 1.0
        self._tokens_at = time.monotonic()
        if not welcome.resumed:
            self._members.clear()
        log.info(
            "relay %s: registered as %r (node %s, resumed=%s)",
            self.url,
            welcome.id,
            welcome.node,
            welcome.resumed,
        )

    async def _run(self, conn: ClientConnection) -> None:
        """Serve connections until closed for good, reconnecting in between."""
        restore = False  # the first session has nothing to restore
        try:
            while True:
                code, reason = await self._serve(conn, restore=restore)
                restore = True
                if self._closing:
                    return
                if not self._reconnect or not should_reconnect(code):
                    self._finish(_closed_error(code, reason))
                    return
                log.info("connection lost (code %s %s), reconnecting", code, reason)
                self._fail_inflight()
                result = await self._reconnect_loop()
                if result is None:
                    return
                conn = result
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a bug here must not leave callers hanging
            log.exception("relay peer supervisor failed")
            self._finish(ProtocolError(f"internal client failure: {exc!r}"))
            if self._conn is not None:
                await self._conn.close()

    async def _serve(self, conn: ClientConnection, *, restore: bool) -> tuple[int, str]:
        """Restore the session on ``conn``, then read until it closes."""
        self._conn = conn
        reader = asyncio.create_task(self._read(conn))
        restoring = asyncio.create_task(self._restore(conn, restore=restore))
        try:
            await asyncio.wait({reader, restoring}, return_when=asyncio.FIRST_COMPLETED)
            if restoring.done():
                restoring.result()
            return await reader
        finally:
            self._ws = None
            for task in (restoring, reader):
                if not task.done():
                    task.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await task

    async def _restore(self, conn: ClientConnection, *, restore: bool) -> None:
        """Rejoin rooms if the relay did not keep them, flush the offline buffer, go live."""
        welcome = self._welcome
        if restore and welcome is not None and not welcome.resumed:
            await self._rejoin(conn)
        while self._outbox and conn.state is WsState.OPEN:
            if self._outbox[0].pending is not None and self._outbox[0].pending.future.done():
                self._outbox.popleft()  # its caller gave up
                continue
            await self._pace()  # before popping: a cancelled flush loses nothing
            if not self._outbox or conn.state is not WsState.OPEN:
                break
            await self._transmit(conn, self._outbox.popleft())
        if conn.state is WsState.OPEN and not self._closing:
            self._ws = conn
            self._set_state(State.CONNECTED)

    async def _rejoin(self, conn: ClientConnection) -> None:
        """Join the remembered rooms again and wait for the relay's answers, so
        that buffered publishes and the CONNECTED state come after them."""
        futures: list[asyncio.Future[Any]] = []
        for room, presence in list(self._rooms.items()):
            envelope: dict[str, Any] = {"type": "join", "room": room, "id": next(self._ids)}
            envelope["presence"] = presence or None
            future: asyncio.Future[Any] = _new_future()
            future.add_done_callback(self._rejoined(room))
            futures.append(future)
            await self._pace()
            await self._transmit(
                conn, _Outgoing(envelope, pack(envelope), _Pending(future, "join", envelope))
            )
        if futures:
            await asyncio.gather(*futures, return_exceptions=True)

    def _rejoined(self, room: str) -> Callable[[asyncio.Future[Any]], None]:
        def done(future: asyncio.Future[Any]) -> None:
            if future.cancelled():
                return
            exc = future.exception()
            if isinstance(exc, ServerError):
                log.warning("could not rejoin room %r: %s", room, exc)
                self._rooms.pop(room, None)
                self._emit_error(exc)

        return done

    async def _read(self, conn: ClientConnection) -> tuple[int, str]:
        try:
            async for frame in conn:
                if isinstance(frame, bytes):
                    self._dispatch(frame)
                else:
                    log.warning("ignoring a text frame from the relay")
        except WsConnectionClosed:
            pass
        return conn.close_code or 1006, conn.close_reason or ""

    async def _reconnect_loop(self) -> ClientConnection | None:
        self._set_state(State.RECONNECTING)
        attempt = 0
        while True:
            ceiling = min(self._backoff_max, self._backoff_base * 2 ** min(attempt, 32))
            attempt += 1
            await asyncio.sleep(random.uniform(0, ceiling))
            if self._closing:
                return None
            try:
                conn, welcome = await self._handshake()
            except RelayError as exc:
                if not _is_transient(exc):
                    log.warning("reconnecting failed for good: %s", exc)
                    self._finish(exc)
                    return None
                if self._max_retries is not None and attempt >= self._max_retries:
                    self._finish(
                        RelayUnavailable(f"gave up reconnecting after {attempt} attempts: {exc}")
                    )
                    return None
                log.info("reconnect attempt %d failed: %s", attempt, exc)
                continue
            self._apply_welcome(welcome)
            return conn

    def _fail_inflight(self) -> None:
        """The socket dropped: requests it carried have an unknown fate."""
        pending, self._pending = self._pending, {}
        for item in pending.values():
            if not item.future.done():
                item.future.set_exception(
                    ConnectionLost(
                        f"connection to the relay dropped before it answered this {item.kind}"
                    )
                )

    def _finish(self, error: RelayError | None) -> None:
        """Close for good: fail everything pending with ``error``."""
        if self._state is State.CLOSED:
            return
        self._close_error = error
        self._ws = None
        exc = error or ConnectionClosed(1000, "closed by client")
        waiting = [p.future for p in self._pending.values()]
        waiting += [o.pending.future for o in self._outbox if o.pending is not None]
        waiting += [r.future for r in self._requests.values()]
        self._pending.clear()
        self._outbox.clear()
        self._requests.clear()
        for future in waiting:
            if not future.done():
                future.set_exception(exc)
        self._set_state(State.CLOSED)
        self._inbox_event.set()
        if error is not None:
            log.warning("relay connection closed for good: %s", error)

    def _set_state(self, state: State) -> None:
        if state is self._state:
            return
        self._state = state
        for handler in list(self._handlers.state):
            self._invoke(handler, state)

    # ------------------------------------------------------------------ #
    # Internals: dispatching
    # ------------------------------------------------------------------ #

    def _invoke(self, handler: Callable[[Any], Any], arg: Any) -> None:
        try:
            result = handler(arg)
        except Exception:
            log.exception("relay handler %r failed", handler)
            return
        if inspect.isawaitable(result):
            self._spawn(result)

    def _spawn(self, awaitable: Awaitable[Any]) -> None:
        task = asyncio.ensure_future(awaitable)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("relay handler task failed", exc_info=task.exception())

    def _emit_error(self, exc: RelayError) -> None:
        if not self._handlers.errors:
            log.warning("relay error: %s", exc)
        for handler in list(self._handlers.errors):
            self._invoke(handler, exc)

    def _dispatch(self, frame: bytes) -> None:
        self._received += 1
        envelope = unpack(frame)
        if envelope is None:
            log.warning("ignoring an undecodable frame from the relay")
            return
        kind = envelope["type"]
        if kind == "msg":
            self._on_msg(envelope)
        elif kind == "ok":
            self._on_ok(envelope)
        elif kind == "err":
            self._on_err(envelope)
        elif kind == "pong":
            self._on_pong(envelope)
        elif kind == "presence":
            self._on_presence(envelope)
        else:
            log.debug("ignoring a %r envelope", kind)

    def _on_ok(self, envelope: dict[str, Any]) -> None:
        rid = envelope.get("id")
        pending = self._pending.pop(rid, None) if rid is not None else None
        if pending is None:
            return
        if pending.on_ok is not None:
            pending.on_ok()
        queued = bool(envelope.get("queued", False))
        if queued:
            sent = pending.envelope
            self._queued[rid] = _Queued(
                sent.get("to"), sent.get("ev"), sent.get("d"), sent.get("rid")
            )
            while len(self._queued) > _QUEUED_MEMORY:
                self._queued.popitem(last=False)
        if not pending.future.done():
            pending.future.set_result(Ack(rid, queued))

    def _on_err(self, envelope: dict[str, Any]) -> None:
        rid = envelope.get("id")
        code = str(envelope.get("code", "internal"))
        text = str(envelope.get("msg", ""))
        to = envelope.get("to")
        exc = error_from_code(code, text, request_id=rid, to=to)
        pending = self._pending.pop(rid, None) if rid is not None else None
        if pending is not None:
            if not pending.future.done():
                pending.future.set_exception(exc)
            return
        if rid is not None and isinstance(exc, PeerOffline):
            queued = self._queued.pop(rid, None)
            undelivered = Undelivered(
                id=rid,
                to=to if to is not None else (queued.to if queued else None),
                code=code,
                message=text,
                data=queued.data if queued else None,
                ev=queued.ev if queued else None,
            )
            if queued is not None and queued.rid is not None:
                request = self._requests.pop(queued.rid, None)
                if request is not None and not request.future.done():
                    request.future.set_exception(exc)
            if not self._handlers.undelivered:
                log.warning("message %r to %r was not delivered: %s", rid, undelivered.to, text)
            for handler in list(self._handlers.undelivered):
                self._invoke(handler, undelivered)
            return
        self._emit_error(exc)

    def _on_pong(self, envelope: dict[str, Any]) -> None:
        rid = envelope.get("id")
        pending = self._pending.pop(rid, None) if rid is not None else None
        if pending is not None and not pending.future.done():
            pending.future.set_result(time.monotonic() - pending.sent_at)

    def _on_presence(self, envelope: dict[str, Any]) -> None:
        room, peer, event = envelope.get("room"), envelope.get("peer"), envelope.get("event")
        if not isinstance(room, str) or not isinstance(peer, str) or not isinstance(event, str):
            log.warning("ignoring a malformed presence envelope")
            return
        raw = envelope.get("members")
        members = tuple(str(m) for m in raw) if isinstance(raw, list) else None
        known = self._members.setdefault(room, set())
        if members is not None:
            known.clear()
            known.update(members)
        if event == "join":
            known.add(peer)
        elif event == "leave":
            known.discard(peer)
        presence = Presence(room, peer, event, members)
        for handler in list(self._handlers.presence):
            self._invoke(handler, presence)

    def _on_msg(self, envelope: dict[str, Any]) -> None:
        sender = envelope.get("from")
        if not isinstance(sender, str):
            log.warning("ignoring a msg without from")
            return
        ev, room = envelope.get("ev"), envelope.get("room")
        msg = Message(
            sender=sender,
            data=envelope.get("d"),
            ev=ev if isinstance(ev, str) else None,
            room=room if isinstance(room, str) else None,
            rid=envelope.get("rid"),
            re=envelope.get("re"),
        )
        if msg.re is not None:
            try:
                request = self._requests.get(msg.re)
            except TypeError:  # an unhashable re is not ours
                request = None
            if request is not None and request.target == sender:
                del self._requests[msg.re]
                if not request.future.done():
                    if msg.ev == ERROR_EV:
                        request.future.set_exception(RemoteError(str(msg.data), peer=sender))
                    else:
                        request.future.set_result(msg.data)
                return
        if msg.rid is not None:
            responder = self._handlers.requests.get(msg.ev)
            if responder is not None:
                self._spawn(self._answer(responder, msg))
                return
        handlers = self._handlers.messages.get(msg.ev)
        if handlers:
            for handler in list(handlers):
                self._invoke(handler, msg)
            return
        if len(self._inbox) >= self._inbox_size:
            self._inbox.popleft()
            self.dropped += 1
            if self.dropped == 1 or self.dropped % 1000 == 0:
                log.warning(
                    "inbox full (%d): dropped %d message(s)", self._inbox_size, self.dropped
                )
        self._inbox.append(msg)
        self._inbox_event.set()

    async def _answer(self, handler: RequestHandler, request: Message) -> None:
        try:
            result = handler(request)
            if inspect.isawaitable(result):
                result = await result
            pack({"d": result})  # fail here, as the handler's error, if not encodable
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            message = str(exc) or type(exc).__name__
            try:
                await self.reply_error(request, message)
            except RelayError as send_exc:
                log.warning("could not send error reply to %r: %s", request.sender, send_exc)
            return
        try:
            await self.reply(request, result)
        except RelayError as exc:
            log.warning("could not reply to %r: %s", request.sender, exc)


class _Connector:
    """Returned by :func:`connect`: await it or use it with ``async with``."""

    def __init__(self, peer: Peer) -> None:
        self._peer = peer

    def __await__(self) -> Generator[Any, None, Peer]:
        return self._peer.open().__await__()

    async def __aenter__(self) -> Peer:
        return await self._peer.open()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self._peer.close()


def connect(
    url: str = DEFAULT_URL,
    *,
    id: str | None = None,
    token: TokenSource = None,
    resume: str | None = None,
    reconnect: bool = True,
    pace: bool = True,
    backoff_base: float = 0.25,
    backoff_max: float = 30.0,
    max_retries: int | None = None,
    buffer_size: int = 1000,
    inbox_size: int = 10_000,
    request_timeout: float = 30.0,
    open_timeout: float = 10.0,
    ping_interval: float | None = 20.0,
    ping_timeout: float | None = 20.0,
    close_timeout: float | None = 5.0,
    max_size: int | None = 2**24,
    ssl: SSLContext | None = None,
) -> _Connector:
    """Connect to the relay at ``url`` as peer ``id``.

    Use as ``async with connect(url, id="bob") as peer: ...`` (closes on exit)
    or ``peer = await connect(url, id="bob")`` (call ``await peer.close()``).

    Args:
        url: the relay's WebSocket URL, e.g. ``ws://127.0.0.1:8080/v1/ws``.
        id: the peer id to register; ``None`` lets the relay pick one.
        token: a JWT, when the relay requires authentication; or a function
            (sync or async) returning one, called before every (re)connect so
            an expiring token can be refreshed.
        resume: a resume secret from an earlier session's welcome, to take it
            over (the old connection is closed with 4503).
        reconnect: reconnect automatically after a drop or retryable close.
        pace: pace writes at 90% of the relay's advertised rate
            (``limits.rate_per_second`` / ``rate_burst``), so bursts and
            flushed buffers are not refused with ``rate-limited``.
        backoff_base: first reconnect delay ceiling, in seconds; doubles per
            attempt (each delay is uniformly random up to the ceiling).
        backoff_max: the largest delay ceiling, in seconds.
        max_retries: give up (:class:`RelayUnavailable`) after this many
            failed reconnect attempts in a row; ``None`` retries forever.
        buffer_size: how many sends to hold while reconnecting; beyond that
            they raise :class:`OfflineBufferFull`.
        inbox_size: how many unread messages to keep; beyond that the oldest
            are dropped (counted in :attr:`Peer.dropped`).
        request_timeout: default timeout of :meth:`Peer.request`.
        open_timeout: timeout for the WebSocket handshake and the welcome.
        ping_interval: seconds between WebSocket keepalive pings (``None``: off).
        ping_timeout: seconds to wait for a keepalive pong before the link is
            declared dead; after that the client waits up to ``close_timeout``
            for the closing handshake, then drops the socket and reconnects.
        close_timeout: seconds to wait for the closing handshake (``None``: no limit).
        max_size: largest incoming frame in bytes (``None``: no limit).
        ssl: the TLS context for ``wss://`` URLs, e.g. one trusting a private
            CA (``ssl.create_default_context(cafile=...)``); the default
            context (the system's CAs) when ``None``.

    Raises:
        RelayUnavailable: the relay cannot be reached.
        ServerError: the relay refused the ``hello`` (e.g. :class:`IdTaken`,
            :class:`Unauthorized`).
        ConnectionClosed: the relay closed the socket during the handshake.
    """
    return _Connector(
        Peer(
            url,
            id=id,
            token=token,
            resume=resume,
            reconnect=reconnect,
            pace=pace,
            backoff_base=backoff_base,
            backoff_max=backoff_max,
            max_retries=max_retries,
            buffer_size=buffer_size,
            inbox_size=inbox_size,
            request_timeout=request_timeout,
            open_timeout=open_timeout,
            ping_interval=ping_interval,
            ping_timeout=ping_timeout,
            close_timeout=close_timeout,
            max_size=max_size,
            ssl=ssl,
        )
    )
