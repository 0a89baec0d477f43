"""A peer's link to the relay: its state, the socket in use, reading and writing.

The state machine::

    CONNECTING --open()--> CONNECTED <--restored-- RECONNECTING
                               |                       ^
                               +-- socket ends --------+   (retryable close, see _reconnect)
    any state --close(), terminal close, retries exhausted--> CLOSED

One socket's life is :meth:`Connection.serve`: restore the session (rejoin
rooms when the relay did not keep them, send again what a drain left
unanswered, flush the offline buffer), go CONNECTED, and read until the
socket ends. What happens between sockets is
:mod:`relay_client._reconnect`'s business; what each envelope read means is
:mod:`relay_client._dispatch`'s.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ._dispatch import Dispatcher
from ._handlers import Handlers, Inbox
from ._handshake import open_session
from ._inflight import InFlight, Outgoing, Pending, new_future
from ._options import Options
from ._pacing import TokenBucket
from ._reconnect import supervise
from ._rooms import Rooms
from ._socket import Socket, SocketClosed, TransportName
from ._wire import pack
from .errors import (
    ConnectionClosed,
    NotConnected,
    OfflineBufferFull,
    RelayError,
    RelayTimeout,
    ServerError,
    TooLarge,
)
from .types import State, Welcome

log = logging.getLogger("relay_client")


@dataclass(frozen=True, slots=True)
class SocketEnd:
    """How one socket ended: the close code and reason the relay sent (1006: none)."""

    code: int
    reason: str
    drained: bool
    """The relay closed it with 1001: the requests it did not answer were not acted on."""


class Connection:
    """The link of one peer; see the module docstring."""

    def __init__(
        self,
        options: Options,
        *,
        dispatcher: Dispatcher,
        inflight: InFlight,
        handlers: Handlers,
        inbox: Inbox,
        rooms: Rooms,
    ) -> None:
        self.options = options
        self._dispatcher = dispatcher
        self._inflight = inflight
        self._handlers = handlers
        self._inbox = inbox
        self._rooms = rooms
        self.state = State.CONNECTING
        self.welcome: Welcome | None = None
        self.close_error: RelayError | None = None
        self.sessions = 0
        self.closing = False
        # Envelopes received since the latest welcome: a resume tells the
        # relay, which replays whatever the dead socket never delivered.
        self._received = 0
        self.socket: Socket | None = None  # the current socket, even while restoring
        self._live: Socket | None = None  # set only when fully online
        self._runner: asyncio.Task[None] | None = None
        self.outbox: deque[Outgoing] = deque()
        self._write_lock = asyncio.Lock()
        self._bucket = TokenBucket(enabled=options.pace)

    @property
    def started(self) -> bool:
        """Whether :meth:`open` succeeded once (the link is kept up, or was)."""
        return self._runner is not None

    @property
    def transport(self) -> TransportName | None:
        """The transport of the link while connected, else ``None``."""
        if self.state is State.CONNECTED and self.socket is not None:
            return self.socket.transport
        return None

    @property
    def id(self) -> str | None:
        """The registered id, or the requested one before the first welcome."""
        return self.welcome.id if self.welcome else self.options.id

    # ------------------------------------------------------------------ #
    # Opening
    # ------------------------------------------------------------------ #

    async def open(self) -> None:
        """Connect for the first time (not retried), then keep the link up in a task."""
        if self._runner is not None or self.state is State.CLOSED:
            raise RuntimeError("a Peer can be opened only once")
        try:
            conn = await self.dial()
        except RelayError as exc:
            self.state = State.CLOSED
            self.close_error = exc
            self._inbox.close(exc)
            raise
        self.socket = self._live = conn
        self.set_state(State.CONNECTED)
        self._runner = asyncio.create_task(supervise(self, conn), name=f"relay-peer-{self.id}")

    async def dial(self) -> Socket:
        """Open a socket and register on it, resuming the latest session if any."""
        resume = self.welcome.resume if self.welcome else self.options.resume
        conn, welcome = await open_session(
            self.options, peer_id=self.id, resume=resume, received=self._received
        )
        self.welcome = welcome
        self._received = 0
        self.sessions += 1
        self._bucket.reset(welcome.limits)
        if not welcome.resumed:
            self._rooms.forget_members()
        log.info(
            "relay %s: registered as %r over %s (node %s, resumed=%s)",
            self.options.url,
            welcome.id,
            conn.transport,
            welcome.node,
            welcome.resumed,
        )
        return conn

    # ------------------------------------------------------------------ #
    # Writing
    # ------------------------------------------------------------------ #

    def check_open(self) -> None:
        """Raise the closing error once the peer is closed for good."""
        if self.state is State.CLOSED:
            raise self.close_error or ConnectionClosed(1000, "closed by client")

    async def submit(
        self,
        envelope: dict[str, Any],
        kind: str,
        *,
        wait: bool,
        on_ok: Callable[[], None] | None = None,
    ) -> Any:
        """Write ``envelope`` now, or hold it in the offline buffer while reconnecting.

        With ``wait`` the envelope gets an ``id`` and this returns the relay's
        answer (``on_ok`` runs when it is ``ok``); without, it returns ``None``
        once written or buffered.
        """
        self.check_open()
        pending: Pending | None = None
        if wait:
            envelope["id"] = self._inflight.next_id()
            pending = Pending(new_future(), kind, envelope, on_ok=on_ok)
        out = Outgoing(envelope, self._encode(envelope), pending)
        # One writer at a time (FIFO), so frames leave in call order, paced and
        # never overtaking what waits in the offline buffer.
        async with self._write_lock:
            self.check_open()
            conn = self._live
            live = conn is not None and not self.outbox and conn.open
            if live:
                await self._bucket.take()
                self.check_open()
                live = conn is self._live and conn is not None and conn.open
            if live and conn is not None:
                await self._transmit(conn, out)
            else:
                if len(self.outbox) >= self.options.buffer_size:
                    raise OfflineBufferFull(
                        f"offline buffer full ({self.options.buffer_size} messages) "
                        "while reconnecting"
                    )
                self.outbox.append(out)
        if pending is None:
            return None
        try:
            return await pending.future
        except asyncio.CancelledError:
            with contextlib.suppress(ValueError):
                self.outbox.remove(out)
            raise

    async def ping(self, timeout: float) -> float:  # noqa: ASYNC109
        """A ``ping``/``pong`` round trip on the live socket, in seconds."""
        self.check_open()
        conn = self._live
        if conn is None:
            raise NotConnected("not connected to the relay (reconnecting)")
        envelope = {"type": "ping", "id": self._inflight.next_id()}
        pending = Pending(new_future(), "ping", envelope)
        self._inflight.expect(pending)
        with contextlib.suppress(SocketClosed):
            await conn.send(pack(envelope))
        try:
            async with asyncio.timeout(timeout):
                rtt: float = await pending.future
                return rtt
        except TimeoutError:
            self._inflight.forget(envelope["id"])
            raise RelayTimeout(f"no pong from the relay within {timeout}s") from None

    def _encode(self, envelope: dict[str, Any]) -> bytes:
        frame = pack(envelope)
        limit = self.welcome.limits.get("max_frame_bytes") if self.welcome else None
        if isinstance(limit, int) and limit > 0 and len(frame) > limit:
            raise TooLarge(
                f"the envelope is {len(frame)} bytes, the relay accepts at most {limit}",
                code="too-large",
            )
        return frame

    async def _transmit(self, conn: Socket, out: Outgoing) -> None:
        """Write one frame; one with an ``id`` waits for its answer from now on
        (see :meth:`lose_inflight` for what happens if the socket ends first)."""
        if out.pending is not None:
            self._inflight.expect(out.pending)
        try:
            await conn.send(out.frame)
        except SocketClosed:
            if out.pending is None:
                log.debug("fire-and-forget %s lost with the socket", out.envelope["type"])

    # ------------------------------------------------------------------ #
    # One socket's session
    # ------------------------------------------------------------------ #

    async def serve(self, conn: Socket, *, restore: bool) -> SocketEnd:
        """Restore the session on ``conn``, then read until it closes; say how it ended."""
        self.socket = conn
        reader = asyncio.create_task(self._read(conn))
        restoring = asyncio.create_task(self._restore(conn, restore=restore))
        try:
            await asyncio.wait({reader, restoring}, return_when=asyncio.FIRST_COMPLETED)
            if restoring.done():
                restoring.result()
            return await reader
        finally:
            self._live = None
            for task in (restoring, reader):
                if not task.done():
                    task.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await task

    async def _read(self, conn: Socket) -> SocketEnd:
        async for frame in conn.frames():
            if isinstance(frame, bytes):
                self._received += 1
                self._dispatcher.receive(frame)
            else:
                log.warning("ignoring a text frame from the relay")
        # Every frame before the close was read above.
        return SocketEnd(conn.close_code, conn.close_reason, conn.drained)

    async def _restore(self, conn: Socket, *, restore: bool) -> None:
        """Rejoin rooms if the relay did not keep them, send again what a drain left
        unanswered, flush the offline buffer, go live."""
        if restore and self.welcome is not None and not self.welcome.resumed:
            self._inflight.drop_rejoins()
            await self._rejoin(conn)
        await self._send_again(conn)
        while self.outbox and conn.open:
            first = self.outbox[0].pending
            if first is not None and first.future.done():
                self.outbox.popleft()  # its caller gave up
                continue
            await self._bucket.take()  # before popping: a cancelled flush loses nothing
            if not self.outbox or not conn.open:
                break
            await self._transmit(conn, self.outbox.popleft())
        if conn.open and not self.closing:
            self._live = conn
            self.set_state(State.CONNECTED)

    async def _send_again(self, conn: Socket) -> None:
        """Send the requests a drain left unanswered, in order, each with a new ``id``
        (an answer meant for the old one can then never be taken for its answer)."""
        resend = self._inflight.resend
        while resend and conn.open:
            if resend[0].future.done():
                resend.popleft()  # its caller gave up
                continue
            await self._bucket.take()  # before popping: a cancelled restore loses nothing
            if not resend or not conn.open:
                break
            pending = resend.popleft()
            if pending.future.done():
                continue
            envelope = pending.envelope
            envelope["id"] = self._inflight.next_id()
            try:
                frame = self._encode(envelope)  # this relay's max_frame_bytes may be lower
            except TooLarge as exc:
                pending.future.set_exception(exc)
                continue
            await self._transmit(conn, Outgoing(envelope, frame, pending))

    async def _rejoin(self, conn: Socket) -> None:
        """Join the remembered rooms again and wait for the relay's answers, so
        that buffered publishes and the CONNECTED state come after them."""
        futures: list[asyncio.Future[Any]] = []
        for room, presence in list(self._rooms.joined.items()):
            envelope: dict[str, Any] = {"type": "join", "room": room}
            envelope["id"] = self._inflight.next_id()
            envelope["presence"] = presence or None
            future = new_future()
            future.add_done_callback(self._rejoined(room))
            futures.append(future)
            await self._bucket.take()
            await self._transmit(
                conn, Outgoing(envelope, pack(envelope), Pending(future, "rejoin", envelope))
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
                self._rooms.leave(room)
                self._handlers.error(exc)

        return done

    # ------------------------------------------------------------------ #
    # State and the end
    # ------------------------------------------------------------------ #

    def set_state(self, state: State) -> None:
        """Move to ``state`` and tell the state handlers."""
        if state is self.state:
            return
        self.state = state
        self._handlers.call_all(self._handlers.state, state)

    def lose_inflight(self, end: SocketEnd) -> None:
        """The socket ended: what it carried unanswered is sent again after a drain,
        and fails with ConnectionLost after any other end (it may have been acted on)."""
        if end.drained:
            self._inflight.keep_for_resend()
            if self._inflight.resend:
                log.info(
                    "the relay drained: %d unanswered request(s) will be sent again",
                    len(self._inflight.resend),
                )
        else:
            self._inflight.lose()

    def finish(self, error: RelayError | None) -> None:
        """Close for good: fail everything pending with ``error`` (``None``: closed by us)."""
        if self.state is State.CLOSED:
            return
        self.close_error = error
        self._live = None
        exc = error or ConnectionClosed(1000, "closed by client")
        buffered = [o.pending.future for o in self.outbox if o.pending is not None]
        self.outbox.clear()
        self._inflight.fail(exc)
        for future in buffered:
            if not future.done():
                future.set_exception(exc)
        self.set_state(State.CLOSED)
        self._inbox.close(exc)
        if error is not None:
            log.warning("relay connection closed for good: %s", error)

    async def close(self) -> None:
        """Close the socket (1000), stop reconnecting, fail what is pending."""
        if self.state is State.CLOSED and (self._runner is None or self._runner.done()):
            self._handlers.cancel_tasks()
            return
        self.closing = True
        conn = self.socket
        if conn is not None:
            with contextlib.suppress(Exception):
                await conn.close(1000, "client closing")
        runner = self._runner
        if runner is not None and runner is not asyncio.current_task() and not runner.done():
            runner.cancel()
            await asyncio.wait({runner})  # never raises; our own cancellation still does
        if self.outbox:
            log.warning("closing with %d unsent message(s) in the offline buffer", len(self.outbox))
        self.finish(None)
        self._handlers.cancel_tasks()

    async def wait_closed(self) -> RelayError | None:
        """Wait until closed for good; return :attr:`close_error`."""
        if self._runner is not None:
            await asyncio.wait({self._runner})
        return self.close_error
