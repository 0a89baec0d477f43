"""The relay peer: the public face of one WebSocket to the relay, kept alive across drops.

:class:`Peer` is the API; the work is done by the modules it assembles, one
concern each (as ``websockets`` keeps its connection apart from its protocol):

* ``_connection``: the state machine, the socket in use, reading and the
  write path (pacing, offline buffer, ``max_frame_bytes``);
* ``_reconnect``: what follows a socket's end (backoff, retry policy, resume);
* ``_handshake``: opening one link (the transports in order), ``hello`` and ``welcome``;
* ``_socket``, ``_http``, ``_records``: a link whatever its transport, the
  HTTP transport, its records;
* ``_dispatch``: where each envelope from the relay goes;
* ``_inflight``: what waits for an answer (``ok``/``err``/``pong``, replies,
  queued sends);
* ``_handlers``, ``_rooms``, ``_pacing``, ``_options``: callbacks and the
  inbox, joined rooms and members, the token bucket, the settings.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Generator, Sequence
from ssl import SSLContext
from types import TracebackType
from typing import Any, Literal, overload

from ._connection import Connection
from ._dispatch import Dispatcher
from ._handlers import (
    ErrorHandler,
    Handlers,
    Inbox,
    MessageHandler,
    PresenceHandler,
    RequestHandler,
    StateHandler,
    UndeliveredHandler,
)
from ._inflight import InFlight
from ._options import TRANSPORTS, Options, TokenSource
from ._rooms import Rooms
from ._socket import TransportName
from ._wire import ERROR_EV
from .errors import ConnectionLost, RelayError, RequestTimeout
from .types import Ack, Message, State, Welcome

__all__ = ["DEFAULT_URL", "Peer", "connect"]

DEFAULT_URL = "ws://127.0.0.1:8080/v1/ws"
"""Where a relay listens by default."""


class Peer:
    """A peer of the relay. Create it with :func:`connect`.

    The peer owns one WebSocket to the relay and keeps it alive: after a
    dropped socket or a retryable close (1001, 1011, 1013, 4000-4499) it
    reconnects with exponential backoff and full jitter, resumes its session
    with the latest ``resume`` secret, rejoins its rooms when the relay did not
    restore them, sends again the requests a draining relay (1001) left
    unanswered (it did not act on them), and flushes the sends it buffered
    meanwhile, in order. A terminal close (1000 from the relay, 1003, 1008,
    1009, 4500-4999) ends it: every pending and later operation raises
    :class:`ConnectionClosed`.

    Where the WebSocket cannot open, the link is an HTTP session instead
    (``transports`` in :func:`connect`, :attr:`transport`), with the same API
    and guarantees.

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
        transports: Sequence[str] = TRANSPORTS,
        http_url: str | None = None,
        fallback_timeout: float = 5.0,
    ) -> None:
        """See :func:`connect` for the meaning of the arguments."""
        self.url = url
        self._rooms = Rooms()
        self._handlers = Handlers()
        self._inbox = Inbox(inbox_size)
        self._inflight = InFlight()
        options = Options(
            url=url, id=id, token=token, resume=resume, reconnect=reconnect, pace=pace,
            backoff_base=backoff_base, backoff_max=backoff_max, max_retries=max_retries,
            buffer_size=buffer_size, inbox_size=inbox_size, request_timeout=request_timeout,
            open_timeout=open_timeout, ping_interval=ping_interval, ping_timeout=ping_timeout,
            close_timeout=close_timeout, max_size=max_size, ssl=ssl,
            transports=tuple(transports), http_url=http_url, fallback_timeout=fallback_timeout,
        )  # fmt: skip
        self._link = Connection(
            options,
            dispatcher=Dispatcher(
                self._inflight, self._handlers, self._inbox, self._rooms, responder=self
            ),
            inflight=self._inflight,
            handlers=self._handlers,
            inbox=self._inbox,
            rooms=self._rooms,
        )

    # ------------------------------------------------------------------ #
    # Properties
    # ------------------------------------------------------------------ #

    def __repr__(self) -> str:
        return f"<Peer id={self.id!r} url={self.url!r} state={self.state.value}>"

    @property
    def id(self) -> str | None:
        """The registered peer id (``None`` before the first welcome)."""
        return self._link.id

    @property
    def state(self) -> State:
        """The connection state."""
        return self._link.state

    @property
    def transport(self) -> TransportName | None:
        """Which transport carries the session while connected: ``"websocket"``
        or ``"http"`` (the fallback, see ``transports`` in :func:`connect`);
        ``None`` while not connected (before :meth:`open`, while reconnecting,
        once closed). Each reconnect tries the WebSocket first again."""
        return self._link.transport

    @property
    def connected(self) -> bool:
        """True while the socket is up and the session restored."""
        return self.state is State.CONNECTED

    @property
    def closed(self) -> bool:
        """True once the peer is closed for good."""
        return self.state is State.CLOSED

    @property
    def close_error(self) -> RelayError | None:
        """Why the peer closed, ``None`` if it is open or was closed by :meth:`close`."""
        return self._link.close_error

    @property
    def welcome(self) -> Welcome | None:
        """The latest ``welcome`` from the relay."""
        return self._link.welcome

    @property
    def resume_secret(self) -> str | None:
        """The secret (from the latest welcome) that resumes this session."""
        return self.welcome.resume if self.welcome else None

    @property
    def resumed(self) -> bool:
        """Whether the latest welcome resumed an existing session."""
        return bool(self.welcome and self.welcome.resumed)

    @property
    def limits(self) -> dict[str, Any]:
        """The relay's limits from the latest welcome."""
        return dict(self.welcome.limits) if self.welcome else {}

    @property
    def node(self) -> str | None:
        """The relay node that serves this session."""
        return self.welcome.node if self.welcome else None

    @property
    def sessions(self) -> int:
        """How many times the peer got a welcome (1 + number of reconnects)."""
        return self._link.sessions

    @property
    def rooms(self) -> frozenset[str]:
        """The rooms this peer is a member of (as acknowledged by the relay)."""
        return frozenset(self._rooms.joined)

    def members(self, room: str) -> frozenset[str]:
        """Members of ``room`` as known from presence events (joined with ``presence=True``)."""
        return self._rooms.members(room)

    @property
    def buffered(self) -> int:
        """Number of sends waiting in the offline buffer."""
        return len(self._link.outbox)

    @property
    def dropped(self) -> int:
        """Number of messages dropped because the inbox was full."""
        return self._inbox.dropped

    # ------------------------------------------------------------------ #
    # Lifecycle
    # ------------------------------------------------------------------ #

    async def open(self) -> Peer:
        """Connect and register; raise if the relay is unreachable or refuses.

        The first connection is not retried: :class:`RelayUnavailable` when the
        relay cannot be reached, the typed :class:`ServerError` (e.g.
        :class:`IdTaken`, :class:`Unauthorized`) when the ``hello`` is refused.
        """
        await self._link.open()
        return self

    async def close(self) -> None:
        """Close the connection (code 1000) and stop reconnecting.

        Sends still in the offline buffer are dropped; their waiters, like
        every pending operation, get :class:`ConnectionClosed`. Idempotent.
        """
        await self._link.close()

    async def wait_closed(self) -> RelayError | None:
        """Wait until the peer is closed for good; return :attr:`close_error`."""
        return await self._link.wait_closed()

    async def __aenter__(self) -> Peer:
        if not self._link.started:
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
        :class:`PeerOffline`: for a list ``to``, its ``to`` is the list of the
        ids not reached, and the others got the message; for a str ``to``, it
        is that id). With ``ack=False`` the envelope carries no
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
        await self._submit(
            envelope, "join", wait=True, on_ok=lambda: self._rooms.join(room, presence)
        )

    async def leave(self, room: str) -> None:
        """Stop being a member of ``room``."""
        envelope: dict[str, Any] = {"type": "leave", "room": room}
        await self._submit(envelope, "leave", wait=True, on_ok=lambda: self._rooms.leave(room))

    async def ping(self, timeout: float = 10.0) -> float:  # noqa: ASYNC109
        """Measure the round trip to the relay (a ``ping``/``pong``), in seconds.

        Raise :class:`NotConnected` while reconnecting, :class:`RelayTimeout`
        when no ``pong`` comes within ``timeout``.
        """
        return await self._link.ping(timeout)

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
        limit = self._link.options.request_timeout if timeout is None else timeout
        rid, future = self._inflight.open_request(to)
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
            self._inflight.close_request(rid)

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
        return await self._inbox.get()

    def __aiter__(self) -> Peer:
        return self

    async def __anext__(self) -> Message:
        """Next message; the iteration ends when the peer is closed with :meth:`close`,
        and raises the terminal error when the relay closed it for good."""
        try:
            return await self.recv()
        except RelayError:
            if self.close_error is None:
                raise StopAsyncIteration from None
            raise

    def on(self, ev: str | None, handler: MessageHandler) -> Callable[[], None]:
        """Call ``handler(message)`` for every message whose ``ev`` equals ``ev``
        (``None``: messages without ``ev``). Such messages skip the inbox.

        The handler may be a coroutine function (run as a task). Return a
        function that removes the handler.
        """
        return self._handlers.add_message(ev, handler)

    def on_request(self, ev: str | None, handler: RequestHandler) -> Callable[[], None]:
        """Answer requests whose ``ev`` equals ``ev`` with ``handler(message)``.

        The handler (sync or async) returns the reply data. If it raises, the
        requester gets :class:`RemoteError` with the exception's message (the
        reply is sent with ``ev: "relay.error"`` and ``d`` the message). One
        handler per ``ev``; a new one replaces the old. Return a remover.
        """
        return self._handlers.set_request(ev, handler)

    def on_presence(self, handler: PresenceHandler) -> Callable[[], None]:
        """Call ``handler(presence)`` for every :class:`Presence` event."""
        return self._handlers.add(self._handlers.presence, handler)

    def on_undelivered(self, handler: UndeliveredHandler) -> Callable[[], None]:
        """Call ``handler(undelivered)`` when a message acknowledged as queued was dropped.

        That happens when its target was resuming and never came back within
        its resume window. Without a handler the event is logged.
        """
        return self._handlers.add(self._handlers.undelivered, handler)

    def on_error(self, handler: ErrorHandler) -> Callable[[], None]:
        """Call ``handler(error)`` for errors not tied to an awaited call.

        These are ``err`` replies to envelopes sent without ``id`` (``ack=False``)
        and rooms that could not be rejoined after a reconnect. Without a
        handler they are logged.
        """
        return self._handlers.add(self._handlers.errors, handler)

    def on_state(self, handler: StateHandler) -> Callable[[], None]:
        """Call ``handler(state)`` on every :class:`State` change."""
        return self._handlers.add(self._handlers.state, handler)

    async def _submit(
        self,
        envelope: dict[str, Any],
        kind: str,
        *,
        wait: bool,
        on_ok: Callable[[], None] | None = None,
    ) -> Any:
        """Write ``envelope`` (or buffer it while reconnecting); see :meth:`Connection.submit`."""
        return await self._link.submit(envelope, kind, wait=wait, on_ok=on_ok)


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
    transports: Sequence[str] = TRANSPORTS,
    http_url: str | None = None,
    fallback_timeout: float = 5.0,
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
        transports: the transports to try, in order, on every (re)connect:
            ``"websocket"`` and ``"http"`` (protocol v1 over HTTP requests,
            docs/protocol-http.md). The next one is tried only when the one
            before never opened (upgrade refused, closed before it opened, no
            open within ``fallback_timeout``); :attr:`Peer.transport` says
            which one is in use.
        http_url: where the HTTP transport is; ``None`` derives it from
            ``url`` (``ws://h/v1/ws`` -> ``http://h/v1/http``, ``wss`` ->
            ``https``).
        fallback_timeout: seconds the WebSocket has to open before the next
            transport is tried (when there is one).

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
            transports=transports,
            http_url=http_url,
            fallback_timeout=fallback_timeout,
        )
    )
