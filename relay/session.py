"""Sessions: one connection attached (after ``hello``) to a peer, and its rules.

The connection drives a ``Session`` with plain calls (``message_received``,
``writable``, ``connection_lost``) and the session answers through its
``Transport`` with plain calls too (``write``, ``pause_reading``, ``close``):
no task per connection, no queue between the socket and the rules. Refusals
become an ``err`` or a close code in ``_refuse``, the one place that maps them.

The session asks everything else of ``Routing`` (the hub), a narrow interface
this module defines, and keeps time with the injected ``relay.clock``
scheduler: it imports no hub, no asyncio, and can be created and driven in a
plain unit test with a fake transport and a fake clock.

Frames for a peer are written straight to its socket while the socket takes
them; only while its transport is paused (the kernel buffer is full) do they
wait in the peer's queue, and whoever sent them stops being read until the
queue has drained: TCP then pushes back on the sender, and a reader that is
merely slower than the offered load is never cut. A peer whose queue has not
moved for ``slow_consumer_seconds`` has stopped reading: it is closed 4008 and
its queue waits for a resume.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable, Coroutine
from typing import Any, Protocol

from relay.auth import Claims, TokenVerifier
from relay.broker.base import BrokerUnavailable
from relay.clock import Deadlines, Scheduler, Timer
from relay.decisions import ConnectInfo
from relay.delivery import AckWatch
from relay.exceptions import (
    BadEnvelope,
    Internal,
    NotRegistered,
    Overloaded,
    RateLimited,
    RelayError,
    TooLarge,
    Unauthorized,
    UnknownType,
)
from relay.limits import Strikes, TokenBucket
from relay.metrics import Metrics
from relay.peer import REPLAY_OVERHEAD, Peer
from relay.protocol import codec
from relay.protocol.codec import CodecLimits
from relay.protocol.codes import CloseCode, ErrorCode
from relay.protocol.envelopes import Hello, Join, Leave, Ping, Publish, Refresh, Send
from relay.settings import Settings
from relay.transport import Transport
from relay.values import Answer, RequestId, Undelivered

log = logging.getLogger("relay.session")


class Routing(Protocol):
    """What a session asks of the node it runs on (``relay.hub.Hub``).

    The asynchronous steps (``register``, ``join``, ``leave``, ``refresh``)
    are run through ``spawn``; the session reads nothing while one runs, so
    a peer's requests are handled in the order it sent them.
    """

    settings: Settings
    metrics: Metrics
    codec_limits: CodecLimits
    scheduler: Scheduler
    hello_deadlines: Deadlines[Session]  # sessions that sent no hello yet
    acks: AckWatch
    auth: TokenVerifier | None
    backlogged: set[Peer]  # live peers whose queue is not empty

    def spawn(self, work: Coroutine[Any, Any, None]) -> None:
        """Run an asynchronous step: at once, up to its first wait (the hub's are eager)."""
        ...

    async def register(self, session: Session, hello: Hello) -> bytes:
        """Attach ``session`` to the peer ``hello`` asks for; the ``welcome`` frame."""
        ...

    def send(self, session: Session, request: Send) -> None:
        """Route a ``send``; its answer comes back through the peer's queue."""
        ...

    def publish(self, session: Session, request: Publish) -> None:
        """Route a ``pub``."""
        ...

    async def join(self, session: Session, request: Join) -> None:
        """Add the session's peer to a room."""
        ...

    async def leave(self, session: Session, request: Leave) -> None:
        """Remove the session's peer from a room."""
        ...

    async def refresh(self, session: Session, request: Refresh) -> None:
        """Adopt a fresh token."""
        ...

    def session_closing(self, session: Session, code: int, message: str, label: str) -> None:
        """The relay decided to close ``session`` (``label``: for the metrics)."""
        ...

    def refused(self, peer_id: str | None, code: ErrorCode, message: str) -> None:
        """A request of ``peer_id`` (None: an unnamed hello) was refused with ``code``."""
        ...

    def session_ended(self, session: Session, client_code: int) -> None:
        """The connection is gone; the peer waits for a resume or is removed."""
        ...


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
        "connect_info",
        "draining",
        "ended",
        "errors_sent",
        "inflight",
        "meta",
        "opened",
        "peer",
        "read_stopped",
        "received_envelopes",
        "routing",
        "transport",
        "transport_closed",
    )
    resumable = True  # False: its peer is removed when the socket ends, never kept for a resume

    def __init__(
        self,
        routing: Routing,
        transport: Transport,
        *,
        on_end: Callable[[], None] | None = None,
    ) -> None:
        settings = routing.settings
        self.routing = routing
        clock = routing.scheduler.time
        self.opened = clock()  # when the socket was accepted (the scheduler's clock)
        # Plain counts for the admin page, which makes rates of them when it looks.
        self.received_envelopes = 0
        self.errors_sent = 0
        self.transport = transport
        self.peer: Peer | None = None
        self.claims: Claims | None = None  # the current token's, when auth is on
        self.meta: object = None  # what the decider (relay.decisions) said of this session
        # Set by the endpoint only when a decider is configured (it costs memory).
        self.connect_info: ConnectInfo | None = None
        self.close_code: int | None = None  # set once the relay decided to close
        self.close_reason = ""
        self.transport_closed = False
        self.ended = False
        self.inflight = 0  # sends waiting for another node's answer
        self.draining = False  # the node drains: read on, whatever the targets' queues
        self.read_stopped = False  # the drain read what the peer had sent: nothing more is read
        self.ack_due = False  # relay.delivery.AckWatch's bookkeeping
        self.ack_timer: Timer | None = None
        self.ack_delay = 0.0
        self._holds = 0  # reasons not to read now (a pending step, a full target)
        self._held_since = 0.0
        self._rate = TokenBucket(settings.rate_per_second, settings.rate_burst, clock)
        self._rate_strikes = Strikes(settings.rate_strikes, consecutive=True)
        self._bad_envelopes = Strikes(settings.bad_envelope_budget, consecutive=False)
        self._limits = routing.codec_limits
        self._metrics = routing.metrics
        self._on_end = on_end
        self._close_timer: Timer | None = None
        routing.hello_deadlines.add(self)
        self._expiry_timer: Timer | None = None

    # --- what the connection calls --------------------------------------------

    def message_received(self, frame: bytes) -> None:
        """Handle one binary message from the peer."""
        self.received_envelopes += 1
        if self.peer is None:
            self._hello(frame)
        elif self.close_code is not None:
            self._answer_closing(frame)
        else:
            self._receive(frame)

    def text_received(self, text: str) -> None:
        """Text frames are not part of the protocol: close 1003."""
        self.close(CloseCode.UNSUPPORTED_DATA, "text frames are not accepted", label="text")

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
            peer.backlog_since = self.routing.scheduler.time()
        if peer.acks:
            self.routing.acks.watch(self)  # the kernel took bytes: some may be acknowledged
        if not queue:
            self.routing.backlogged.discard(peer)
            peer.release_waiters()
            if self.close_code is not None and not peer.owed:
                self._close_transport()

    def connection_lost(self, code: int, reason: str = "") -> None:
        """The connection is gone; ``code`` is the peer's close code (1006 if none)."""
        if self.ended:
            return
        self.ended = True
        self.routing.hello_deadlines.discard(self)
        for timer in (self._close_timer, self._expiry_timer, self.ack_timer):
            if timer is not None:
                timer.cancel()
        self._close_timer = self._expiry_timer = self.ack_timer = None
        peer = self.peer
        if peer is not None and peer.session is self:
            self.routing.backlogged.discard(peer)
            peer.release_waiters()
            peer.count_unsent(self.transport.unsent_bytes())
            peer.acknowledged(self.transport.acked_bytes())
        self.routing.session_ended(self, code)
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
        transport = self.transport
        transport.write(frame)
        if kind == "err":
            self.errors_sent += 1
        if peer.written_bytes > peer.trim_at:
            acked = transport.acked_bytes() if transport.acks_known else None
            if acked is not None:
                peer.acknowledged(acked)
            peer.trim_written(None if acked is None else transport.written_bytes - acked)
        tally = self._metrics.sent[kind]  # Tally.add inlined: every frame written passes here
        tally.messages += 1
        tally.bytes += size
        if answer is not None:
            acks = peer.acks
            if acks is None:
                acks = peer.acks = deque()
            acks.append((transport.written_bytes, answer, entry))
            self.routing.acks.watch(self)

    def queue_started(self, peer: Peer) -> None:
        """``peer``'s queue holds a frame now: the slow-consumer sweep watches it."""
        peer.backlog_since = self.routing.scheduler.time()
        self.routing.backlogged.add(peer)

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

    def rate_tokens(self) -> float:
        """How many requests the rate limit would take now (for operators)."""
        return self._rate.tokens()

    # --- backpressure --------------------------------------------------------

    def hold(self) -> None:
        """Stop reading this socket until a matching ``resume``."""
        self._holds += 1
        if self._holds == 1:
            self._held_since = self.routing.scheduler.time()
            self.transport.pause_reading()

    def resume(self) -> None:
        """Drop one reason not to read; read again when none is left."""
        self._holds -= 1
        if self._holds == 0 and not self.ended:
            # What the client sent while it was not read arrives in a burst:
            # the rate limit judges it by when it was sent.
            self._rate.credit(self.routing.scheduler.time() - self._held_since)
            self.transport.resume_reading()

    def sent_elsewhere(self) -> None:
        """A send went to another node; with ``inflight_per_session`` out, read no more."""
        self.inflight += 1
        if self.inflight == self.routing.settings.inflight_per_session:
            self.hold()

    def answered_from_elsewhere(self) -> None:
        """Another node answered one of this session's sends."""
        self.inflight -= 1
        if self.inflight == self.routing.settings.inflight_per_session - 1:
            self.resume()

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

    def close(self, code: int, message: str, *, label: str, flush_seconds: float = 0.0) -> None:
        """Close the socket with ``code``, after up to ``flush_seconds`` of flushing.

        From now on frames for the peer are queued for a resume, not written.
        The transport bounds the close itself, so the session is over within
        ``flush_seconds`` plus the close timeout whether or not the peer reads.
        """
        if self.close_code is not None or self.ended:
            return
        self.close_code = code
        self.close_reason = message
        self._metrics.disconnects.labels(label).inc()
        log.info(
            "closing %s: %d %s",
            self.peer.id if self.peer is not None else "an unregistered socket",
            code,
            message,
        )
        self.routing.session_closing(self, code, message, label)
        self.routing.hello_deadlines.discard(self)
        if self._close_timer is not None:
            self._close_timer.cancel()
            self._close_timer = None
        peer = self.peer
        if flush_seconds > 0 and peer is not None and (peer.queue or peer.owed):
            # The peer's queue and the answers it is owed go out first.
            self._close_timer = self.routing.scheduler.call_later(
                flush_seconds, self._close_transport
            )
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

    def hello_timed_out(self) -> None:
        """No hello came within ``hello_timeout_seconds`` (``Routing.hello_deadlines``)."""
        if self.peer is None:
            self.close(CloseCode.POLICY_VIOLATION, "no hello in time", label="hello")

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
        auth = self.routing.auth
        if auth is None or self.claims is None or self.close_code is not None:
            return
        left = auth.seconds_left(self.claims)
        if left <= 0:
            self._expiry_timer = None
            self.reply(codec.encode_err("unauthorized", "token expired"), "err")
            self.close(CloseCode.UNAUTHORIZED, "token expired", label="expired", flush_seconds=1.0)
            return
        # At least daily: a timer far in the future gains nothing.
        self._expiry_timer = self.routing.scheduler.call_later(
            min(left, 86400.0) + 0.001, self._watch_expiry
        )

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
        self._metrics.received[envelope.kind].add(len(frame))
        if not isinstance(envelope, Hello):
            self._refuse_hello(NotRegistered("the first envelope must be hello"))
            return
        self.routing.hello_deadlines.discard(self)
        self.run(self.register(envelope))

    async def register(self, hello: Hello) -> bool:
        """Attach to the peer ``hello`` asks for; True once the ``welcome`` is written.

        The one registration path of every dialect. A refusal writes the
        ``err`` that explains it and closes: 4502 id taken, 4501 bad token,
        1013 cluster unavailable, 1011 an internal error (logged), 1008
        otherwise.
        """
        try:
            welcome = await self.routing.register(self, hello)
        except BrokerUnavailable:
            self._refuse_hello(Overloaded("the cluster backplane is unavailable"), hello.peer_id)
            return False
        except RelayError as exc:
            self._refuse_hello(exc, hello.peer_id)
            return False
        except Exception:
            log.exception("internal error registering %s", hello.peer_id or "a peer")
            self._refuse_hello(Internal("internal error"), hello.peer_id)
            return False
        peer = self.peer
        assert peer is not None
        if self.ended:  # the socket died while the hello was being checked
            self.routing.session_ended(self, 1006)
            return False
        # A dialect whose hello is no frame (PeerJS's URL) is timed until here.
        self.routing.hello_deadlines.discard(self)
        # Nothing awaited since the hub attached the peer: the welcome goes
        # out before any frame for it.
        self.transport.write(welcome)
        self._metrics.sent["welcome"].add(len(welcome))
        self.writable()  # what waited for a resume
        return True

    def _refuse_hello(self, exc: RelayError, peer_id: str | None = None) -> None:
        self._metrics.errors.labels(exc.code.value).inc()
        self.routing.refused(peer_id, exc.code, exc.message)
        err = codec.encode_err(exc.code.value, exc.message)
        self.transport.write(err)
        self._metrics.sent["err"].add(len(err))
        code = _HELLO_CLOSE_CODES.get(exc.code, CloseCode.POLICY_VIOLATION)
        self.close(code, exc.message, label="hello")

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
                    label="bad",
                    flush_seconds=EXPLAIN_SECONDS,
                )
            return
        kind = envelope.kind
        tally = self._metrics.received[kind]  # Tally.add inlined: every envelope passes here
        tally.messages += 1
        tally.bytes += len(frame)
        if not self._rate.take():
            self._refuse(RateLimited("slow down", request_id=envelope_id(envelope)))
            if self._rate_strikes.hit():
                self.close(
                    CloseCode.RATE_LIMITED,
                    "rate limit exceeded",
                    label="flood",
                    flush_seconds=EXPLAIN_SECONDS,
                )
            return
        self._rate_strikes.forgive()
        routing = self.routing
        try:
            if isinstance(envelope, Send):
                routing.send(self, envelope)
                self._metrics.routing.observe(time.perf_counter() - started)
            elif isinstance(envelope, Publish):
                routing.publish(self, envelope)
                self._metrics.routing.observe(time.perf_counter() - started)
            elif isinstance(envelope, Ping):
                pong: dict[str, object] = {"type": "pong"}
                if envelope.id is not None:
                    pong["id"] = envelope.id
                self.reply(codec.encode(pong), "pong")
            elif isinstance(envelope, Join):
                self.run(routing.join(self, envelope), envelope)
            elif isinstance(envelope, Leave):
                self.run(routing.leave(self, envelope), envelope)
            elif isinstance(envelope, Refresh):
                self.run(routing.refresh(self, envelope), envelope)
            else:
                raise BadEnvelope("hello was already accepted")
        except Exception as exc:
            self._fail(exc, envelope)

    def run(self, step: Coroutine[Any, Any, object], envelope: object = None) -> None:
        """Run a step that waits (the backplane, a registration), reading nothing meanwhile.

        Frames that arrive in the meantime stay with the transport, so the
        peer's requests are still handled in the order it sent them.
        """
        ended = held = False

        async def run_step() -> None:
            nonlocal ended
            try:
                await step
            except Exception as exc:
                self._fail(exc, envelope)
            finally:
                ended = True
                if held:
                    self.resume()

        # Steps are eager: most end inside spawn, having read nothing meanwhile.
        # Only one that waits holds the socket (before the loop can read it).
        self.routing.spawn(run_step())
        if not ended:
            held = True
            self.hold()

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
            self._refuse(Internal("internal error", request_id=request_id))

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
        self.routing.refused(self.peer.id if self.peer is not None else None, exc.code, exc.message)
        self.reply(
            codec.encode_err(exc.code.value, exc.message, request_id=exc.request_id, to=exc.to),
            "err",
        )


EXPLAIN_SECONDS = 1.0  # how long a policy close waits to deliver the errs that explain it


def envelope_id(envelope: object) -> RequestId | None:
    """The request id of an envelope (None for those that carry none)."""
    request_id: RequestId | None = getattr(envelope, "id", None)
    return request_id


# How a refused hello closes the socket; any other refusal is a policy violation.
_HELLO_CLOSE_CODES = {
    ErrorCode.ID_TAKEN: CloseCode.ID_TAKEN,
    ErrorCode.UNAUTHORIZED: CloseCode.UNAUTHORIZED,
    ErrorCode.TOO_LARGE: CloseCode.MESSAGE_TOO_BIG,
    ErrorCode.OVERLOADED: CloseCode.TRY_AGAIN_LATER,
    ErrorCode.INTERNAL: CloseCode.INTERNAL_ERROR,
}

# The err a request gets when it arrives on a session the relay is closing.
_CLOSING_ERRORS: dict[int, type[RelayError]] = {
    CloseCode.RATE_LIMITED: RateLimited,
    CloseCode.TOO_MANY_BAD_ENVELOPES: BadEnvelope,
    CloseCode.UNAUTHORIZED: Unauthorized,
    CloseCode.MESSAGE_TOO_BIG: TooLarge,
}
