"""Peers and their sessions.

A ``Peer`` is a registered id: its rooms, its resume secret and its outbound
queue. It outlives any one WebSocket for the resume window, so a peer that
reconnects finds its rooms and everything sent to it meanwhile.

A ``Session`` is one WebSocket attached (after ``hello``) to a peer. The
connection drives it with plain calls (``message_received``, ``writable``,
``connection_lost``) and it answers through a ``Transport`` with plain calls
too (``write``, ``pause_reading``, ``close``): no task per connection, no
queue between the socket and the rules. Refusals become an ``err`` or a close
code in ``_refuse``, the one place that maps them.

Frames for a peer are written straight to its socket while the socket takes
them; only while its transport is paused (the kernel buffer is full) do they
wait in the peer's queue, and whoever sent them stops being read until the
queue has drained: TCP then pushes back on the sender, and a reader that is
merely slower than the offered load is never cut. A peer whose queue has not
moved for ``slow_consumer_seconds`` has stopped reading: it is closed 4008 and
its queue waits for a resume.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any, Protocol

from relay.broker.base import BrokerUnavailable
from relay.exceptions import (
    BadEnvelope,
    NotRegistered,
    Overloaded,
    RateLimited,
    RelayError,
    TooLarge,
    Unauthorized,
    UnknownType,
)
from relay.limits import Strikes, TokenBucket
from relay.protocol import codec
from relay.protocol.codes import CloseCode, ErrorCode
from relay.protocol.envelopes import Hello, Join, Leave, Ping, Publish, Refresh, Send
from relay.rfc6455 import wire_size
from relay.values import Answer, Delivery, Handover, Queued, QueueEntry, RequestId, Undelivered

if TYPE_CHECKING:
    from relay.auth import Claims
    from relay.hub import Hub

log = logging.getLogger("relay.session")


class Transport(Protocol):
    """What a session drives: one WebSocket connection.

    Every call returns at once. ``close`` bounds the closing handshake: the
    connection is gone (``Session.connection_lost`` called) within the close
    timeout even if the peer never reads again.
    """

    @property
    def writing_paused(self) -> bool:
        """True while the socket takes no more (its buffers are full)."""
        ...

    def write(self, data: bytes) -> None:
        """Send one binary message."""
        ...

    def pause_reading(self) -> None:
        """Deliver no more messages until ``resume_reading``."""
        ...

    def resume_reading(self) -> None:
        """Deliver messages again, the held ones first."""
        ...

    def close(self, code: int, reason: str = "") -> None:
        """Close the connection with ``code`` (aborting it if the close cannot complete)."""
        ...

    def abort(self) -> None:
        """Reset the connection now; the session hears ``connection_lost`` soon after."""
        ...

    def unsent_bytes(self) -> int:
        """Once the connection is lost: how many written bytes never reached the peer's host.

        Bytes its TCP stack acknowledged count as delivered (a living peer
        reads them even after a reset); 0 when the transport cannot tell.
        """
        ...

    @property
    def written_bytes(self) -> int:
        """Bytes written to the connection so far, counted as they go on the wire."""
        ...

    def acked_bytes(self) -> int:
        """How many of ``written_bytes`` the peer's host has acknowledged.

        A transport that cannot tell answers ``written_bytes``: written
        counts as delivered there.
        """
        ...

    def received_bytes(self) -> int:
        """Bytes the peer sent that wait to be read: in the kernel, or read but not yet handled."""
        ...


# A frame waiting in a peer's queue: frame, kind for metrics, who to tell if
# it is never delivered, and who waits for its acknowledgement (or None).


class Peer:
    """A registered peer id and the state that survives its reconnects."""

    __slots__ = (
        "acks",
        "backlog_since",
        "expiry",
        "id",
        "max_queue_bytes",
        "max_queue_messages",
        "owed",
        "queue",
        "queued_bytes",
        "replay_bytes",
        "rooms",
        "secret",
        "session",
        "unsent",
        "waiters",
        "written",
        "written_bytes",
        "written_count",
    )

    def __init__(
        self,
        peer_id: str,
        *,
        max_queue_messages: int,
        max_queue_bytes: int,
        replay_bytes: int,
    ) -> None:
        self.id = peer_id
        self.secret = ""
        self.rooms: dict[str, bool] = {}  # room -> receives presence
        # Both deques are made on first use: an empty deque holds a 700-byte
        # block, which is most of what an idle peer would cost.
        self.queue: deque[Queued] | None = None
        self.queued_bytes = 0
        self.max_queue_messages = max_queue_messages
        self.max_queue_bytes = max_queue_bytes
        self.session: Session | None = None
        self.expiry: asyncio.TimerHandle | None = None
        # Senders not read until this peer's queue drains (backpressure).
        self.waiters: list[Session] = []
        self.backlog_since = 0.0  # when the queue last moved while it was not empty
        # The last frames written to the current socket. A socket that dies
        # takes what sat in its buffers with it; a resume that says how many
        # frames it received gets the rest again from here. It holds up to
        # ``replay_bytes`` (each frame counted with REPLAY_OVERHEAD more), and
        # the frame layer keeps the kernel's send buffer well below that, so
        # it covers everything a socket can have swallowed.
        self.written: deque[QueueEntry] | None = None
        self.written_bytes = 0
        self.written_count = 0
        self.replay_bytes = replay_bytes
        # How many of the newest frames in ``written`` never left this host
        # when the last socket was lost: reported if the peer never resumes.
        self.unsent = 0
        # Frames written to the current socket whose senders wait for the
        # acknowledgement: (end of the frame in the socket's byte count, who
        # waits, the frame's entry in ``written``).
        self.acks: deque[tuple[int, Answer, QueueEntry]] | None = None
        # Requests of this peer answered later (an acknowledgement, another
        # node): a drain closes the peer's socket only once they are answered.
        self.owed = 0

    def take_over(self, handover: Handover) -> None:
        """Start from the rooms, queue and replay window another node handed over."""
        self.rooms.update(handover.rooms)
        if handover.queue:
            self.queue = deque((frame, kind, undelivered, None)
                               for frame, kind, undelivered in handover.queue)  # fmt: skip
            self.queued_bytes = sum(len(entry[0]) for entry in handover.queue)
        if handover.written:
            self.written = deque(handover.written)
            self.written_bytes = sum(len(entry[0]) + REPLAY_OVERHEAD for entry in handover.written)
        self.written_count = handover.written_count

    def hand_over(self) -> Handover:
        """The state another node takes over (``take_over``); the queue moves with it.

        Senders still waiting for this peer are answered ``ok queued`` first.
        """
        self.answer_queued()
        queue = [(frame, kind, undelivered) for frame, kind, undelivered, _ in self.queue or ()]
        handover = Handover(dict(self.rooms), queue, list(self.written or ()), self.written_count)
        self.queue = None
        self.queued_bytes = 0
        return handover

    def replay(self, received: int | None) -> int:
        """Start a new session's count; requeue frames the last socket never delivered.

        ``received`` is the client's count of envelopes since its last
        welcome; None means the client does not count, and nothing is
        replayed. Returns how many frames were lost beyond the replay window.
        """
        lost = 0
        written = self.written or ()
        if received is not None and received < self.written_count:
            oldest = self.written_count - len(written)
            lost = max(0, oldest - received)
            missed = list(written)[max(0, received - oldest) :]
            if missed:
                self._open_queue().extendleft(
                    (frame, kind, sender, None) for frame, kind, sender in reversed(missed)
                )
                self.queued_bytes += sum(len(entry[0]) for entry in missed)
        self.written = None
        self.written_bytes = 0
        self.written_count = 0
        self.unsent = 0
        return lost

    def count_unsent(self, unsent_bytes: int) -> None:
        """Mark the newest frames covering ``unsent_bytes`` on the wire as never sent."""
        count = 0
        for frame, _kind, _undelivered in reversed(self.written or ()):
            if unsent_bytes <= 0:
                break
            unsent_bytes -= wire_size(len(frame))
            count += 1
        self.unsent = count

    def acknowledged(self, acked_bytes: int) -> None:
        """The socket's first ``acked_bytes`` reached the peer's host: answer their senders."""
        acks = self.acks
        while acks and acks[0][0] <= acked_bytes:
            acks.popleft()[1](Delivery.DELIVERED)

    def answer_queued(self) -> None:
        """The peer is kept for a resume: senders still waiting are answered ``ok queued``."""
        acks, self.acks = self.acks, None
        for _end, answer, _entry in acks or ():
            answer(Delivery.QUEUED)
        answers = [entry[3] for entry in self.queue or () if entry[3] is not None]
        if answers:
            self.queue = deque((frame, kind, undelivered, None)
                               for frame, kind, undelivered, _ in self.queue or ())  # fmt: skip
            for answer in answers:
                answer(Delivery.QUEUED)

    def take_undelivered(self) -> list[tuple[Undelivered | None, Answer | None]]:
        """Everything the peer provably never got: its unsent frames and its queue.

        For each, who to tell: the sender still waiting for its answer, or
        (already answered) the sender to report it to.
        """
        waiting = {id(entry): answer for _end, answer, entry in self.acks or ()}
        self.acks = None
        written = self.written or ()
        unsent = list(written)[len(written) - self.unsent :] if self.unsent else []
        pending = [(entry[2], waiting.pop(id(entry), None)) for entry in unsent]
        # Waiting but not counted unsent: never acknowledged all the same.
        pending += [(None, answer) for answer in waiting.values()]
        pending += [(undelivered, answer) for _, _, undelivered, answer in self.queue or ()]
        self.queue = None
        self.queued_bytes = 0
        self.unsent = 0
        return pending

    def enqueue(
        self, frame: bytes, kind: str, undelivered: Undelivered | None, answer: Answer | None = None
    ) -> Delivery:
        """Write ``frame`` to the live socket, or queue it.

        Written at once while the session is open, its socket takes more and
        nothing is queued ahead; queued otherwise, up to the queue's bounds
        (``OVERLOADED`` beyond). ``QUEUED`` means kept for a peer without a
        live session (resuming, or being closed). With ``answer``, a frame
        for a live session is ``PENDING``: ``answer`` is told later, once,
        when the peer's host has acknowledged it (or what became of it).
        """
        session = self.session
        if session is not None and session.close_code is None:
            if not self.queue and not session.transport.writing_paused:
                session.write(frame, kind, undelivered, answer)
                return Delivery.DELIVERED if answer is None else Delivery.PENDING
            delivered = Delivery.DELIVERED if answer is None else Delivery.PENDING
        else:
            delivered = Delivery.QUEUED
            answer = None
        size = len(frame)
        queue = self._open_queue()
        if len(queue) >= self.max_queue_messages or self.queued_bytes + size > self.max_queue_bytes:
            return Delivery.OVERLOADED
        if not queue:
            self.backlog_since = time.monotonic()
            if session is not None:
                session.hub.backlogged.add(self)
        queue.append((frame, kind, undelivered, answer))
        self.queued_bytes += size
        if session is not None and session.flushing:
            session.writable()  # a closing session flushes what comes meanwhile, answers too
        return delivered

    def _open_queue(self) -> deque[Queued]:
        if self.queue is None:
            self.queue = deque()
        return self.queue

    def release_waiters(self) -> None:
        """Read again from every sender that waited for this peer's queue."""
        waiters, self.waiters = self.waiters, []
        for waiter in waiters:
            waiter.resume()


class Session:
    """One WebSocket, attached (after ``hello``) to a peer."""

    __slots__ = (
        "_bad_envelopes",
        "_close_timer",
        "_expiry_timer",
        "_held_since",
        "_holds",
        "_limits",
        "_metrics",
        "_on_end",
        "_rate",
        "_rate_strikes",
        "ack_delay",
        "ack_due",
        "ack_timer",
        "claims",
        "close_code",
        "close_reason",
        "draining",
        "ended",
        "hub",
        "inflight",
        "peer",
        "read_stopped",
        "transport",
        "transport_closed",
    )
    resumable = True  # False: its peer is removed when the socket ends, never kept for a resume

    def __init__(
        self,
        hub: Hub,
        transport: Transport,
        clock: Callable[[], float],
        *,
        on_end: Callable[[], None] | None = None,
    ) -> None:
        settings = hub.settings
        self.hub = hub
        self.transport = transport
        self.peer: Peer | None = None
        self.claims: Claims | None = None  # the current token's, when auth is on
        self.close_code: int | None = None  # set once the relay decided to close
        self.close_reason = ""
        self.transport_closed = False
        self.ended = False
        self.inflight = 0  # sends waiting for another node's answer
        self.draining = False  # the node drains: read on, whatever the targets' queues
        self.read_stopped = False  # the drain read what the peer had sent: nothing more is read
        self.ack_due = False  # relay.delivery.AckWatch's bookkeeping
        self.ack_timer: asyncio.TimerHandle | None = None
        self.ack_delay = 0.0
        self._holds = 0  # reasons not to read now (a pending step, a full target)
        self._held_since = 0.0
        self._rate = TokenBucket(settings.rate_per_second, settings.rate_burst, clock)
        self._rate_strikes = Strikes(settings.rate_strikes, consecutive=True)
        self._bad_envelopes = Strikes(settings.bad_envelope_budget, consecutive=False)
        self._limits = hub.codec_limits
        self._metrics = hub.metrics
        self._on_end = on_end
        loop = asyncio.get_running_loop()
        self._close_timer: asyncio.TimerHandle | None = loop.call_later(
            settings.hello_timeout_seconds, self._hello_timed_out
        )
        self._expiry_timer: asyncio.TimerHandle | None = None

    # --- what the connection calls --------------------------------------------

    def message_received(self, frame: bytes) -> None:
        """Handle one binary message from the peer."""
        if self.peer is None:
            self._hello(frame)
        elif self.close_code is not None:
            self._answer_closing(frame)
        else:
            self._receive(frame)

    def text_received(self, text: str) -> None:
        """Text frames are not part of the protocol: close 1003."""
        self.close(CloseCode.UNSUPPORTED_DATA, "text frames are not accepted", reason="text")

    def writable(self) -> None:
        """The socket takes frames again: send what waited in the queue."""
        peer = self.peer
        if peer is None or peer.session is not self or self.transport_closed:
            return
        queue = peer.queue
        transport = self.transport
        moved = False
        while queue and not transport.writing_paused:
            frame, kind, undelivered, answer = queue.popleft()
            peer.queued_bytes -= len(frame)
            self.write(frame, kind, undelivered, answer)
            moved = True
        if moved:
            peer.backlog_since = time.monotonic()
        if peer.acks:
            self.hub.acks.watch(self)  # the kernel took bytes: some may be acknowledged
        if not queue:
            self.hub.backlogged.discard(peer)
            peer.release_waiters()
            if self.close_code is not None and not peer.owed:
                self._close_transport()

    def connection_lost(self, code: int, reason: str = "") -> None:
        """The connection is gone; ``code`` is the peer's close code (1006 if none)."""
        if self.ended:
            return
        self.ended = True
        for timer in (self._close_timer, self._expiry_timer, self.ack_timer):
            if timer is not None:
                timer.cancel()
        self._close_timer = self._expiry_timer = self.ack_timer = None
        peer = self.peer
        if peer is not None and peer.session is self:
            self.hub.backlogged.discard(peer)
            peer.release_waiters()
            peer.count_unsent(self.transport.unsent_bytes())
            peer.acknowledged(self.transport.acked_bytes())
        self.hub.session_ended(self, code)
        if self._on_end is not None:
            self._on_end()

    # --- writing -------------------------------------------------------------

    def write(
        self, frame: bytes, kind: str, undelivered: Undelivered | None, answer: Answer | None
    ) -> None:
        """Write one frame to the socket, keeping it for replay.

        With ``answer``, its sender waits: it is told once the peer's host
        has acknowledged the frame (``relay.delivery``).
        """
        peer = self.peer
        assert peer is not None, "frames are written only after hello"
        # Kept before writing: if the socket dies with it in its buffers, a
        # resume replays it from here.
        entry = (frame, kind, undelivered)
        size = len(frame)
        written = peer.written
        if written is None:
            written = peer.written = deque()
        written.append(entry)
        peer.written_bytes += size + REPLAY_OVERHEAD
        peer.written_count += 1
        while peer.written_bytes > peer.replay_bytes:
            peer.written_bytes -= len(written.popleft()[0]) + REPLAY_OVERHEAD
        transport = self.transport
        transport.write(frame)
        self._metrics.sent[kind].add(size)
        if answer is not None:
            acks = peer.acks
            if acks is None:
                acks = peer.acks = deque()
            acks.append((transport.written_bytes, answer, entry))
            self.hub.acks.watch(self)

    def check_acks(self) -> int | None:
        """Answer the senders of what the peer's host acknowledged; how many still wait.

        None once this session no longer holds its peer (what waited was
        answered when it let go).
        """
        peer = self.peer
        if peer is None or peer.session is not self or self.ended:
            return None
        acks = peer.acks
        if acks:
            peer.acknowledged(self.transport.acked_bytes())
        return len(acks) if acks else 0

    def reply(self, frame: bytes, kind: str) -> None:
        """Send a frame to this session's own peer (queued behind what waits)."""
        if self.peer is not None:
            self.peer.enqueue(frame, kind, None)

    # --- backpressure --------------------------------------------------------

    def hold(self) -> None:
        """Stop reading this socket until a matching ``resume``."""
        self._holds += 1
        if self._holds == 1:
            self._held_since = time.monotonic()
            self.transport.pause_reading()

    def resume(self) -> None:
        """Drop one reason not to read; read again when none is left."""
        self._holds -= 1
        if self._holds == 0 and not self.ended:
            # What the client sent while it was not read arrives in a burst:
            # the rate limit judges it by when it was sent.
            self._rate.credit(time.monotonic() - self._held_since)
            self.transport.resume_reading()

    def wait_for(self, target: Peer) -> None:
        """Read nothing more from this socket until ``target``'s queue has drained."""
        if target.session is None or target.session is self or self.draining:
            # Nothing to wait for / a peer is not held up by its own replies /
            # a drain reads what was sent (a full queue refuses it overloaded).
            return
        target.waiters.append(self)
        self.hold()

    # --- draining ------------------------------------------------------------

    def stop_reading(self, *, now: bool = False) -> bool:
        """Read nothing more once everything the peer sent so far is read and handled.

        True when stopped. Without ``now`` it stops only when nothing waits
        to be read and no step is under way; with it, at once.
        """
        if not self.read_stopped and (
            now or (self._holds == 0 and not self.transport.received_bytes())
        ):
            self.read_stopped = True
            self.hold()
        return self.read_stopped

    @property
    def owes_answers(self) -> bool:
        """Some request this session read is still to be answered."""
        peer = self.peer
        return peer is not None and peer.owed > 0

    @property
    def holds_answers(self) -> bool:
        """Senders wait for this peer's host to acknowledge frames written to it."""
        peer = self.peer
        if peer is None or peer.session is not self:
            return False
        return bool(peer.acks) or any(entry[3] is not None for entry in peer.queue or ())

    def abort(self) -> None:
        """Drop the connection now: what its buffers held never reaches the peer."""
        self.transport.abort()

    # --- closing -------------------------------------------------------------

    def close(self, code: int, message: str, *, reason: str, flush_seconds: float = 0.0) -> None:
        """Close the socket with ``code``, after up to ``flush_seconds`` of flushing.

        From now on frames for the peer are queued for a resume, not written.
        The transport bounds the close itself, so the session is over within
        ``flush_seconds`` plus the close timeout whether or not the peer reads.
        """
        if self.close_code is not None or self.ended:
            return
        self.close_code = code
        self.close_reason = message
        self._metrics.disconnects.labels(reason).inc()
        log.info(
            "closing %s: %d %s",
            self.peer.id if self.peer is not None else "an unregistered socket",
            code,
            message,
        )
        if self._close_timer is not None:
            self._close_timer.cancel()
            self._close_timer = None
        peer = self.peer
        if flush_seconds > 0 and peer is not None and (peer.queue or peer.owed):
            # The peer's queue and the answers it is owed go out first.
            loop = asyncio.get_running_loop()
            self._close_timer = loop.call_later(flush_seconds, self._close_transport)
            self.writable()
        else:
            self._close_transport()

    @property
    def flushing(self) -> bool:
        """Closing, with time left to send the peer what it is owed before the close frame."""
        return self.close_code is not None and self._close_timer is not None

    def _close_transport(self) -> None:
        if self.transport_closed or self.ended:
            return
        self.transport_closed = True
        if self._close_timer is not None:
            self._close_timer.cancel()
            self._close_timer = None
        self.transport.close(self.close_code or CloseCode.NORMAL, self.close_reason[:120])

    def _hello_timed_out(self) -> None:
        self._close_timer = None
        if self.peer is None:
            self.close(CloseCode.POLICY_VIOLATION, "no hello in time", reason="hello")

    # --- the token's expiry ----------------------------------------------------

    def set_claims(self, claims: Claims | None) -> None:
        """Adopt a (fresh) token's claims and close with 4501 when it expires."""
        self.claims = claims
        if self._expiry_timer is not None:
            self._expiry_timer.cancel()
            self._expiry_timer = None
        if claims is not None and not self.ended:
            self._watch_expiry()

    def _watch_expiry(self) -> None:
        auth = self.hub.auth
        if auth is None or self.claims is None or self.close_code is not None:
            return
        left = auth.seconds_left(self.claims)
        if left <= 0:
            self._expiry_timer = None
            self.reply(codec.encode_err("unauthorized", "token expired"), "err")
            self.close(CloseCode.UNAUTHORIZED, "token expired", reason="expired", flush_seconds=1.0)
            return
        # At least daily: a timer far in the future gains nothing.
        loop = asyncio.get_running_loop()
        self._expiry_timer = loop.call_later(min(left, 86400.0) + 0.001, self._watch_expiry)

    # --- reading -------------------------------------------------------------

    def _hello(self, frame: bytes) -> None:
        if self.close_code is not None:
            return
        try:
            envelope = codec.decode(frame, self._limits)
        except RelayError as exc:
            self._metrics.received["invalid"].add(len(frame))
            self._refuse_hello(exc)
            return
        self._metrics.received[_KINDS[type(envelope)]].add(len(frame))
        if not isinstance(envelope, Hello):
            self._refuse_hello(NotRegistered("the first envelope must be hello"))
            return
        if self._close_timer is not None:
            self._close_timer.cancel()
            self._close_timer = None
        self.run(self._register(envelope))

    async def _register(self, hello: Hello) -> None:
        try:
            welcome = await self.hub.register(self, hello)
        except BrokerUnavailable:
            self._refuse_hello(Overloaded("the cluster backplane is unavailable"))
            return
        except RelayError as exc:
            self._refuse_hello(exc)
            return
        peer = self.peer
        assert peer is not None
        if self.ended:  # the socket died while the hello was being checked
            self.hub.session_ended(self, 1006)
            return
        self.transport.write(welcome)
        self._metrics.sent["welcome"].add(len(welcome))
        self.writable()  # what waited for a resume

    def _refuse_hello(self, exc: RelayError) -> None:
        self._metrics.errors.labels(exc.code.value).inc()
        err = codec.encode_err(exc.code.value, exc.message)
        self.transport.write(err)
        self._metrics.sent["err"].add(len(err))
        code = _HELLO_CLOSE_CODES.get(exc.code, CloseCode.POLICY_VIOLATION)
        self.close(code, exc.message, reason="hello")

    def _receive(self, frame: bytes) -> None:
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
        hub = self.hub
        try:
            if isinstance(envelope, Send):
                hub.send(self, envelope)
                self._metrics.routing.observe(time.perf_counter() - started)
            elif isinstance(envelope, Publish):
                hub.publish(self, envelope)
                self._metrics.routing.observe(time.perf_counter() - started)
            elif isinstance(envelope, Ping):
                pong: dict[str, object] = {"type": "pong"}
                if envelope.id is not None:
                    pong["id"] = envelope.id
                self.reply(codec.encode(pong), "pong")
            elif isinstance(envelope, Join):
                self.run(hub.join(self, envelope), envelope)
            elif isinstance(envelope, Leave):
                self.run(hub.leave(self, envelope), envelope)
            elif isinstance(envelope, Refresh):
                self.run(hub.refresh(self, envelope), envelope)
            else:
                raise BadEnvelope("hello was already accepted")
        except Exception as exc:
            self._fail(exc, envelope)

    def run(self, step: Coroutine[Any, Any, None], envelope: object = None) -> None:
        """Run a step that waits (the backplane, a registration), reading nothing meanwhile.

        Frames that arrive in the meantime stay with the transport, so the
        peer's requests are still handled in the order it sent them.
        """
        self.hold()

        async def run_step() -> None:
            try:
                await step
            except Exception as exc:
                self._fail(exc, envelope)
            finally:
                self.resume()

        self.hub.spawn(run_step())

    def _fail(self, exc: Exception, envelope: object) -> None:
        request_id = envelope_id(envelope)
        if isinstance(exc, RelayError):
            if exc.request_id is None:
                exc.request_id = request_id
            self._refuse(exc)
        elif isinstance(exc, BrokerUnavailable):
            self._refuse(Overloaded("the cluster backplane is unavailable", request_id=request_id))
        else:
            peer_id = self.peer.id if self.peer is not None else "?"
            log.error("internal error handling %s from %s", type(envelope).__name__, peer_id,
                      exc_info=exc)  # fmt: skip
            self._refuse(_Internal("internal error", request_id=request_id))

    def _answer_closing(self, frame: bytes) -> None:
        """A frame that arrived after the relay decided to close: say it was not handled."""
        try:
            envelope = codec.decode(frame, self._limits)
        except RelayError:
            return
        if self.close_code == CloseCode.GOING_AWAY:
            # After a 1001 the relay acts on nothing more: the client sends
            # again, after reconnecting, whatever was left unanswered.
            return
        error = _CLOSING_ERRORS.get(self.close_code or 0, Overloaded)
        self._refuse(error("the session is closing", request_id=envelope_id(envelope)))

    def _refuse(self, exc: RelayError) -> None:
        self._metrics.errors.labels(exc.code.value).inc()
        self.reply(
            codec.encode_err(exc.code.value, exc.message, request_id=exc.request_id, to=exc.to),
            "err",
        )


# What one kept frame costs beyond its bytes (the deque slot, the tuple, the
# bytes object's header): tiny frames cannot make the replay ring unbounded.
REPLAY_OVERHEAD = 64

_EXPLAIN_SECONDS = 1.0  # how long a policy close waits to deliver the errs that explain it


def envelope_id(envelope: object) -> RequestId | None:
    """The request id of an envelope (None for those that carry none)."""
    request_id: RequestId | None = getattr(envelope, "id", None)
    return request_id


class _Internal(RelayError):
    code = ErrorCode.INTERNAL


# How a refused hello closes the socket; any other refusal is a policy violation.
_HELLO_CLOSE_CODES = {
    ErrorCode.ID_TAKEN: CloseCode.ID_TAKEN,
    ErrorCode.UNAUTHORIZED: CloseCode.UNAUTHORIZED,
    ErrorCode.TOO_LARGE: CloseCode.MESSAGE_TOO_BIG,
    ErrorCode.OVERLOADED: CloseCode.TRY_AGAIN_LATER,
}

# The err a request gets when it arrives on a session the relay is closing.
_CLOSING_ERRORS: dict[int, type[RelayError]] = {
    CloseCode.RATE_LIMITED: RateLimited,
    CloseCode.TOO_MANY_BAD_ENVELOPES: BadEnvelope,
    CloseCode.UNAUTHORIZED: Unauthorized,
    CloseCode.MESSAGE_TOO_BIG: TooLarge,
}

_KINDS = {
    Hello: "hello",
    Refresh: "refresh",
    Send: "send",
    Publish: "pub",
    Join: "join",
    Leave: "leave",
    Ping: "ping",
}
