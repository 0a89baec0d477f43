"""Peers: a registered id and what outlives its connections.

A ``Peer`` is a registered id: its rooms, its resume secret, its outbound
queue and its replay window. It outlives any one connection for the resume
window, so a peer that reconnects finds its rooms and everything sent to it
meanwhile. While connected it is attached to a session (``Attached``, which
``relay.session.Session`` satisfies); this module depends on no session, hub
or transport code.
"""

from __future__ import annotations

from collections import deque
from typing import Protocol

from relay.auth import Claims
from relay.clock import Timer
from relay.rfc6455 import wire_size
from relay.transport import Transport
from relay.values import (
    DELIVERED,
    OVERLOADED,
    PENDING,
    QUEUED,
    Answer,
    Delivery,
    Handover,
    Queued,
    QueueEntry,
    Undelivered,
)

# What one kept frame costs beyond its bytes (the deque slot, the tuple, the
# bytes object's header): tiny frames cannot make the replay ring unbounded.
REPLAY_OVERHEAD = 64

# How much the replay window of a transport that knows acknowledgements grows
# before the kernel is asked what it still holds: one system call per this
# many bytes written, never one per frame.
TRIM_STEP = 32 * 1024


class Attached(Protocol):
    """The session a peer is attached to, as the peer and the routing that finds it see it."""

    close_code: int | None  # set once the relay decided to close it
    transport: Transport
    claims: Claims | None  # the current token's, when auth is on

    def close(self, code: int, message: str, *, label: str, flush_seconds: float = 0.0) -> None:
        """Close the connection with ``code`` and ``message`` (``label``: for the metrics)."""
        ...

    @property
    def flushing(self) -> bool:
        """Closing, with time left to send what the peer is owed."""
        ...

    def write(
        self, frame: bytes, kind: str, undelivered: Undelivered | None, answer: Answer | None
    ) -> None:
        """Write one frame to the connection, keeping it for replay."""
        ...

    def writable(self) -> None:
        """Send what waits in the peer's queue, as far as the connection takes it."""
        ...

    def queue_started(self, peer: Peer) -> None:
        """The peer's queue was empty and holds a frame now (the slow-consumer clock starts)."""
        ...

    def resume(self) -> None:
        """Drop one reason not to read this session's own connection."""
        ...


class Peer:
    """A registered peer id and the state that survives its reconnects."""

    __slots__ = (
        "acks",
        "backlog_since",
        "expiry",
        "granted",
        "id",
        "max_queue_bytes",
        "max_queue_messages",
        "meta",
        "owed",
        "queue",
        "queued_bytes",
        "replay_bytes",
        "rooms",
        "secret",
        "session",
        "trim_at",
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
        # What a decider said at registration (relay.decisions.Admitted): kept
        # across resumes, on this node or another.
        self.meta: object = None
        self.granted: tuple[str, ...] | None = None  # rooms allowed (patterns); None: any
        # Both deques are made on first use: an empty deque holds a 700-byte
        # block, which is most of what an idle peer would cost.
        self.queue: deque[Queued] | None = None
        self.queued_bytes = 0
        self.max_queue_messages = max_queue_messages
        self.max_queue_bytes = max_queue_bytes
        self.session: Attached | None = None
        self.expiry: Timer | None = None
        # Senders not read until this peer's queue drains (backpressure).
        self.waiters: list[Attached] = []
        self.backlog_since = 0.0  # when the queue last moved while it was not empty
        # The last frames written to the current socket. A socket that dies
        # takes what sat in its buffers with it; a resume that says how many
        # frames it received gets the rest again from here. It holds up to
        # ``replay_bytes`` (each frame counted with REPLAY_OVERHEAD more), and
        # the frame layer keeps the kernel's send buffer well below that, so
        # it covers everything a socket can have swallowed. Over a transport
        # that knows what the peer's host acknowledged, acknowledged frames
        # are dropped whenever the window reaches ``trim_at``.
        self.written: deque[QueueEntry] | None = None
        self.written_bytes = 0
        self.trim_at = min(TRIM_STEP, replay_bytes)
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
        self.meta = handover.meta
        self.granted = handover.granted

    def hand_over(self) -> Handover:
        """The state another node takes over (``take_over``); the queue moves with it.

        Senders still waiting for this peer are answered ``ok queued`` first.
        """
        self.answer_queued()
        queue = [(frame, kind, undelivered) for frame, kind, undelivered, _ in self.queue or ()]
        handover = Handover(
            dict(self.rooms),
            queue,
            list(self.written or ()),
            self.written_count,
            self.meta,
            self.granted,
        )
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
        self.trim_at = min(TRIM_STEP, self.replay_bytes)
        self.written_count = 0
        self.unsent = 0
        return lost

    def trim_written(self, unacked_bytes: int | None) -> None:
        """Bound the replay window; called once it holds ``trim_at`` bytes.

        ``unacked_bytes`` is how many of the socket's written bytes its peer's
        host has not acknowledged (None when the transport cannot tell): the
        oldest frames not needed to cover them were delivered and are
        dropped. What is left is held to ``replay_bytes`` either way.
        """
        written = self.written
        if written is None:
            return
        if unacked_bytes is not None:
            keep = self._newest_covering(unacked_bytes)
            while len(written) > keep:
                self.written_bytes -= len(written.popleft()[0]) + REPLAY_OVERHEAD
        while self.written_bytes > self.replay_bytes:
            self.written_bytes -= len(written.popleft()[0]) + REPLAY_OVERHEAD
        if unacked_bytes is None:
            self.trim_at = self.replay_bytes
        else:
            self.trim_at = min(self.replay_bytes, self.written_bytes + TRIM_STEP)

    def _newest_covering(self, wire_bytes: int) -> int:
        """How many of the newest frames in ``written`` cover ``wire_bytes`` on the wire."""
        count = 0
        for frame, _kind, _undelivered in reversed(self.written or ()):
            if wire_bytes <= 0:
                break
            wire_bytes -= wire_size(len(frame))
            count += 1
        return count

    def count_unsent(self, unsent_bytes: int) -> None:
        """Mark the newest frames covering ``unsent_bytes`` on the wire as never sent."""
        self.unsent = self._newest_covering(unsent_bytes)

    def acknowledged(self, acked_bytes: int) -> None:
        """The socket's first ``acked_bytes`` reached the peer's host: answer their senders."""
        acks = self.acks
        while acks and acks[0][0] <= acked_bytes:
            acks.popleft()[1](DELIVERED)

    def answer_queued(self) -> None:
        """The peer is kept for a resume: senders still waiting are answered ``ok queued``."""
        acks, self.acks = self.acks, None
        for _end, answer, _entry in acks or ():
            answer(QUEUED)
        answers = [entry[3] for entry in self.queue or () if entry[3] is not None]
        if answers:
            self.queue = deque((frame, kind, undelivered, None)
                               for frame, kind, undelivered, _ in self.queue or ())  # fmt: skip
            for answer in answers:
                answer(QUEUED)

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
                return DELIVERED if answer is None else PENDING
            delivered = DELIVERED if answer is None else PENDING
        else:
            delivered = QUEUED
            answer = None
        size = len(frame)
        queue = self._open_queue()
        if len(queue) >= self.max_queue_messages or self.queued_bytes + size > self.max_queue_bytes:
            return OVERLOADED
        if not queue and session is not None:
            session.queue_started(self)
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
