"""Peers and their sessions.

A ``Peer`` is a registered id: its rooms, its resume secret and its outbound
queue. It outlives any one WebSocket for the resume window, so a peer that
reconnects finds its rooms and everything sent to it meanwhile.

A ``Session`` is one WebSocket attached to a peer. It turns frames into hub
calls, maps every refusal to an ``err`` or a close code (in ``receive``, the
one place that does), and runs the writer that drains the peer's queue. It
writes through a ``Transport``, so it knows nothing of ASGI.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

import anyio

from relay.broker.base import BrokerUnavailable, Delivery, QueueEntry, Undelivered
from relay.exceptions import (
    BadEnvelope,
    NotRegistered,
    Overloaded,
    RateLimited,
    RelayError,
    RequestId,
    UnknownType,
)
from relay.limits import Strikes, TokenBucket
from relay.protocol import codec
from relay.protocol.codes import CloseCode, ErrorCode
from relay.protocol.envelopes import Hello, Join, Leave, Ping, Publish, Refresh, Send

if TYPE_CHECKING:
    from relay.auth import Claims
    from relay.hub import Hub

log = logging.getLogger("relay.session")


class Transport(Protocol):
    """What a session writes through (a WebSocket, or a fake in tests)."""

    async def send_bytes(self, data: bytes) -> None:
        """Send one binary frame."""
        ...

    async def close(self, code: int, reason: str) -> None:
        """Close the connection with ``code``."""
        ...


class Peer:
    """A registered peer id and the state that survives its reconnects."""

    __slots__ = (
        "expiry",
        "id",
        "max_queue_bytes",
        "max_queue_messages",
        "queue",
        "queued_bytes",
        "rooms",
        "secret",
        "session",
        "written",
        "written_count",
    )

    def __init__(
        self, peer_id: str, *, max_queue_messages: int, max_queue_bytes: int, replay_messages: int
    ) -> None:
        self.id = peer_id
        self.secret = ""
        self.rooms: dict[str, bool] = {}  # room -> receives presence
        self.queue: deque[QueueEntry] = deque()
        self.queued_bytes = 0
        self.max_queue_messages = max_queue_messages
        self.max_queue_bytes = max_queue_bytes
        self.session: Session | None = None
        self.expiry: anyio.CancelScope | None = None
        # The last frames written to the current socket. A socket that dies
        # takes what sat in its buffers with it; a resume that says how many
        # frames it received gets the rest again from here.
        self.written: deque[QueueEntry] = deque(maxlen=replay_messages)
        self.written_count = 0

    def replay(self, received: int | None) -> int:
        """Start a new session's count; requeue frames the last socket never delivered.

        ``received`` is the client's count of envelopes since its last
        welcome; None means the client does not count, and nothing is
        replayed. Returns how many frames were lost beyond the replay window.
        """
        lost = 0
        if received is not None and received < self.written_count:
            oldest = self.written_count - len(self.written)
            lost = max(0, oldest - received)
            missed = list(self.written)[max(0, received - oldest) :]
            self.queue.extendleft(reversed(missed))
            self.queued_bytes += sum(len(entry[0]) for entry in missed)
        self.written.clear()
        self.written_count = 0
        return lost

    def enqueue(self, frame: bytes, kind: str, undelivered: Undelivered | None) -> Delivery:
        """Queue ``frame``; a live session is woken to send it.

        A full queue means the peer is not reading: its session is closed with
        4008 (what is queued stays for a resume) and the frame is refused.
        """
        size = len(frame)
        if (
            len(self.queue) >= self.max_queue_messages
            or self.queued_bytes + size > self.max_queue_bytes
        ):
            if self.session is not None:
                self.session.close(CloseCode.SLOW_CONSUMER, "outbound queue full", reason="slow")
            return Delivery.OVERLOADED
        self.queue.append((frame, kind, undelivered))
        self.queued_bytes += size
        session = self.session
        if session is None or session.close_code is not None:
            return Delivery.QUEUED
        session.wakeup.set()
        return Delivery.DELIVERED


class Session:
    """One WebSocket attached (after ``hello``) to a peer."""

    def __init__(self, hub: Hub, transport: Transport, clock: Callable[[], float]) -> None:
        settings = hub.settings
        self.hub = hub
        self.transport = transport
        self.peer: Peer | None = None
        self.claims: Claims | None = None  # the current token's, when auth is on
        self.claims_changed = asyncio.Event()  # a refresh replaced them
        self.close_code: int | None = None
        self.close_reason = ""
        self.wakeup = asyncio.Event()
        self._flush_until = 0.0
        self._writer_scope: anyio.CancelScope | None = None
        self._rate = TokenBucket(settings.rate_per_second, settings.rate_burst, clock)
        self._rate_strikes = Strikes(settings.rate_strikes, consecutive=True)
        self._bad_envelopes = Strikes(settings.bad_envelope_budget, consecutive=False)
        self._limits = hub.codec_limits
        self._metrics = hub.metrics

    # --- closing -------------------------------------------------------------

    def close(self, code: int, message: str, *, reason: str, flush_seconds: float = 0.0) -> None:
        """Ask the writer to close the socket with ``code``.

        The writer first sends what is queued for up to ``flush_seconds``
        (a drain, or the ``err`` that explains a policy close); a send still
        in progress then is abandoned, and a resume replays it.
        """
        if self.close_code is not None:
            return
        self.close_code = code
        self.close_reason = message
        self._flush_until = anyio.current_time() + flush_seconds
        self._metrics.disconnects.labels(reason).inc()
        self.wakeup.set()
        if self._writer_scope is not None:
            self._writer_scope.deadline = self._flush_until

    # --- writing -------------------------------------------------------------

    async def send_now(self, frame: bytes, kind: str) -> None:
        """Send a frame before the writer runs (``welcome``, a refused ``hello``)."""
        await self.transport.send_bytes(frame)
        self._metrics.sent[kind].add(len(frame))

    async def write(self) -> None:
        """Drain the peer's queue into the socket until the session closes."""
        # One cancel scope for the writer's life, not one per frame: close()
        # moves its deadline, which abandons a send stuck on a full socket.
        with anyio.CancelScope() as scope:
            self._writer_scope = scope
            if self.close_code is not None:
                scope.deadline = self._flush_until
            await self._send_queued()
        self._writer_scope = None
        with anyio.move_on_after(5):
            await self.transport.close(self.close_code or CloseCode.NORMAL, self.close_reason)

    async def _send_queued(self) -> None:
        peer = self.peer
        assert peer is not None, "write() runs only after hello"
        queue = peer.queue
        written = peer.written
        send_bytes = self.transport.send_bytes
        sent = self._metrics.sent
        while True:
            if not queue:
                if self.close_code is not None:
                    return
                self.wakeup.clear()
                await self.wakeup.wait()
                continue
            if peer.session is not self:
                return
            entry = queue.popleft()
            frame = entry[0]
            peer.queued_bytes -= len(frame)
            # Recorded before sending: if the send is abandoned or the socket
            # dies with it in its buffers, a resume replays it from here.
            written.append(entry)
            peer.written_count += 1
            await send_bytes(frame)
            sent[entry[1]].add(len(frame))

    def reply(self, frame: bytes, kind: str) -> None:
        """Queue a reply to this session's own peer."""
        if self.peer is not None:
            self.peer.enqueue(frame, kind, None)

    # --- reading -------------------------------------------------------------

    def decode_hello(self, frame: bytes) -> Hello:
        """Decode the first frame, which must be a ``hello``."""
        envelope = codec.decode(frame, self._limits)
        self._metrics.received[_KINDS[type(envelope)]].add(len(frame))
        if not isinstance(envelope, Hello):
            raise NotRegistered("the first envelope must be hello")
        return envelope

    async def receive(self, frame: bytes) -> None:
        """Handle one binary frame after ``hello``; refusals become ``err`` or a close."""
        started = time.perf_counter()
        try:
            envelope = codec.decode(frame, self._limits)
        except RelayError as exc:
            self._metrics.received["invalid"].add(len(frame))
            self._refuse(exc)
            if isinstance(exc, BadEnvelope | UnknownType) and self._bad_envelopes.hit():
                self.close(
                    CloseCode.TOO_MANY_BAD_ENVELOPES,
                    "too many bad envelopes",
                    reason="bad",
                    flush_seconds=_EXPLAIN_SECONDS,
                )
            return
        kind = _KINDS[type(envelope)]
        self._metrics.received[kind].add(len(frame))
        if not self._rate.take():
            self._refuse(RateLimited("slow down", request_id=envelope_id(envelope)))
            if self._rate_strikes.hit():
                self.close(
                    CloseCode.RATE_LIMITED,
                    "rate limit exceeded",
                    reason="flood",
                    flush_seconds=_EXPLAIN_SECONDS,
                )
            return
        self._rate_strikes.forgive()
        peer = self.peer
        assert peer is not None, "receive() runs only after hello"
        try:
            if isinstance(envelope, Send):
                await self.hub.send(peer, envelope)
                self._metrics.routing.observe(time.perf_counter() - started)
            elif isinstance(envelope, Publish):
                await self.hub.publish(peer, envelope)
                self._metrics.routing.observe(time.perf_counter() - started)
            elif isinstance(envelope, Join):
                await self.hub.join(peer, envelope)
            elif isinstance(envelope, Leave):
                await self.hub.leave(peer, envelope)
            elif isinstance(envelope, Ping):
                pong: dict[str, object] = {"type": "pong"}
                if envelope.id is not None:
                    pong["id"] = envelope.id
                self.reply(codec.encode(pong), "pong")
            elif isinstance(envelope, Refresh):
                await self.hub.refresh(self, envelope)
            else:
                raise BadEnvelope("hello was already accepted")
        except RelayError as exc:
            if exc.request_id is None:
                exc.request_id = envelope_id(envelope)
            self._refuse(exc)
        except BrokerUnavailable:
            self._refuse(
                Overloaded("the cluster backplane is unavailable", request_id=envelope_id(envelope))
            )
        except Exception:
            log.exception("internal error handling %s from %s", kind, peer.id)
            self._refuse(_Internal("internal error", request_id=envelope_id(envelope)))

    def _refuse(self, exc: RelayError) -> None:
        self._metrics.errors.labels(exc.code.value).inc()
        self.reply(
            codec.encode_err(exc.code.value, exc.message, request_id=exc.request_id, to=exc.to),
            "err",
        )


_EXPLAIN_SECONDS = 1.0  # how long a policy close waits to deliver the errs that explain it


def envelope_id(envelope: object) -> RequestId | None:
    """The request id of an envelope (None for those that carry none)."""
    request_id: RequestId | None = getattr(envelope, "id", None)
    return request_id


class _Internal(RelayError):
    code = ErrorCode.INTERNAL


_KINDS = {
    Hello: "hello",
    Refresh: "refresh",
    Send: "send",
    Publish: "pub",
    Join: "join",
    Leave: "leave",
    Ping: "ping",
}
