"""The ``Transport`` of one HTTP session: envelopes kept until the client reports them.

A WebSocket's bytes are delivered once the peer's TCP stack acknowledged
them; an HTTP answer has no acknowledgement the relay can read, so the
client reports what it received (``Relay-Received``) and that count is the
acknowledgement here (``acks_known``). Envelopes the session writes wait in
``outbox`` until reported; readers (a stream, a poll, a stream another node
forwards) ``fetch`` them from a position, so a reader that is cut loses
nothing: the next one starts where the client says it stopped. Past
``http_buffer_bytes`` unreported, the transport reports itself paused, and
the session queues and judges the reader as it would behind a full socket.

What the client sends comes in numbered batches (``accept``): each read
once, in order, envelope by envelope, waiting while the session holds its
reading (a full target, a step on the backplane).

Byte counts are those the same envelopes would take as server WebSocket
frames (``wire_size``), the unit ``relay.peer.Peer`` counts its replay
window in.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, NamedTuple

from relay.clock import Scheduler, Timer
from relay.httptransport.records import (
    HEAD_BYTES,
    KEEPALIVE_RECORD,
    close_record,
    envelope_records,
    envelopes,
)
from relay.rfc6455 import wire_size

if TYPE_CHECKING:
    from relay.session import Session

# The close code a session ends with when its client went away without one
# (no request for http_idle_seconds): a dropped connection, resumable.
ABNORMAL = 1006


class OutOfOrder(Exception):
    """A batch number the session cannot take now (409)."""


class SessionOver(Exception):
    """The session has ended (404 for its client)."""


class Fetched(NamedTuple):
    """What a reader gets: a body of records, where the next starts, whether it ends."""

    body: bytes
    position: int  # envelopes before the next record (the reader's next ``start``)
    last: bool  # the close record is in it, or a newer reader replaced this one


class HTTPTransport:
    """One HTTP session's connection, as ``relay.session.Session`` drives it."""

    def __init__(
        self,
        scheduler: Scheduler,
        *,
        buffer_bytes: int,
        fetch_bytes: int,
        idle_seconds: float,
        close_seconds: float,
    ) -> None:
        self.session: Session | None = None  # set right after the session is made
        self.on_end: Callable[[], None] | None = None
        self._scheduler = scheduler
        self._buffer_bytes = buffer_bytes
        self._fetch_bytes = fetch_bytes
        self._idle_seconds = idle_seconds
        self._close_seconds = close_seconds
        self.outbox: deque[bytes] = deque()  # written, not reported received yet
        self._base = 0  # envelopes reported received: the number of outbox[0]
        self._outbox_bytes = 0
        self._written = 0  # wire bytes, as a WebSocket's count
        self._acked = 0
        self._paused_writing = False
        self._close: bytes | None = None  # the close record, once the session closes
        self._close_code = ABNORMAL
        self._close_fetched = False
        self._reader = 0  # the current reader's number; older ones end
        self._changed = asyncio.Event()
        self._reading = asyncio.Event()
        self._reading.set()
        self._seq = 0  # the last batch read
        self._batch: asyncio.Task[None] | None = None  # the batch being read
        self._batch_seq = 0
        self._unread_bytes = 0  # of the batch being read
        self.ended = False
        self._last_request = scheduler.time()
        self._timer: Timer | None = scheduler.call_later(idle_seconds, self._check_idle)
        self._close_timer: Timer | None = None

    # --- relay.transport.Transport --------------------------------------------------

    @property
    def writing_paused(self) -> bool:
        return self._paused_writing

    def write(self, data: bytes) -> None:
        if self.ended or self._close is not None:
            return
        self.outbox.append(data)
        self._outbox_bytes += len(data)
        self._written += wire_size(len(data))
        if self._outbox_bytes > self._buffer_bytes:
            self._paused_writing = True
        self._wake()

    def pause_reading(self) -> None:
        self._reading.clear()

    def resume_reading(self) -> None:
        self._reading.set()

    def close(self, code: int, reason: str = "") -> None:
        if self.ended or self._close is not None:
            return
        self._close = close_record(code, reason)
        self._close_code = code
        self._close_timer = self._scheduler.call_later(self._close_seconds, self._end, code)
        self._wake()

    def abort(self) -> None:
        self._end(ABNORMAL)

    def unsent_bytes(self) -> int:
        return self._written - self._acked

    @property
    def written_bytes(self) -> int:
        return self._written

    def acked_bytes(self) -> int:
        return self._acked

    @property
    def acks_known(self) -> bool:
        return True  # the client's Relay-Received is the acknowledgement

    def received_bytes(self) -> int:
        return self._unread_bytes

    # --- what the client's requests do ------------------------------------------------

    def heard(self, received: int) -> None:
        """A request of the client came, saying it received ``received`` envelopes.

        Raises ``ValueError`` for a count beyond what was sent, ``SessionOver``
        once the session has ended.
        """
        if self.ended:
            raise SessionOver
        sent = self._base + len(self.outbox)
        if received > sent:
            raise ValueError(f"Relay-Received {received} is more than the {sent} sent")
        self._last_request = self._scheduler.time()
        if received > self._base:
            outbox = self.outbox
            for _ in range(received - self._base):
                frame = outbox.popleft()
                self._outbox_bytes -= len(frame)
                self._acked += wire_size(len(frame))
            self._base = received
            if self._paused_writing and self._outbox_bytes <= self._buffer_bytes // 2:
                self._paused_writing = False
            session = self.session
            if session is not None:
                session.writable()  # the queue moves on, and the senders waiting hear
        if self._close_fetched and not self.outbox:
            self._end(self._close_code)  # the client reported the close record

    def attach(self) -> int:
        """A new reader (a stream, a poll): older ones end. Its number, for ``fetch``."""
        self._reader += 1
        self._wake()
        return self._reader

    async def fetch(self, reader: int, start: int, hold: float) -> Fetched:
        """The records after envelope number ``start``, waiting up to ``hold`` seconds for one.

        A keepalive record when nothing came in time; ``last`` once the close
        record went out, or a newer reader replaced this one.
        """
        while True:
            if reader != self._reader or self.ended:
                return Fetched(b"", start, True)
            start = max(start, self._base)
            first = start - self._base
            if first > len(self.outbox):
                raise ValueError("a reader asked past what was sent")
            if first < len(self.outbox):
                return self._records_from(first)
            if self._close is not None:
                self._close_fetched = True  # over once the client reports it, or at the timer
                return Fetched(self._close, start, True)
            if hold <= 0:
                return Fetched(KEEPALIVE_RECORD, start, False)
            waited_from = self._scheduler.time()
            changed = self._changed
            try:
                await asyncio.wait_for(changed.wait(), hold)
            except TimeoutError:
                return Fetched(KEEPALIVE_RECORD, start, False)
            hold -= self._scheduler.time() - waited_from

    def _records_from(self, first: int) -> Fetched:
        frames: list[bytes] = []
        size = 0
        outbox = self.outbox
        for index in range(first, len(outbox)):
            frame = outbox[index]
            if frames and size + len(frame) > self._fetch_bytes:
                break
            frames.append(frame)
            size += len(frame)
        return Fetched(envelope_records(frames), self._base + first + len(frames), False)

    async def accept(self, seq: int, body: bytes) -> None:
        """Read batch ``seq``, a body ``check_envelopes`` accepted: once, in order.

        Returns once every envelope of it was read. The same ``seq`` as the
        last batch read returns at once (its answer was lost); any other but
        the next raises ``OutOfOrder``.
        """
        if self.ended:
            raise SessionOver
        batch = self._batch
        if batch is not None and not batch.done():
            if seq != self._batch_seq:
                raise OutOfOrder(f"batch {self._batch_seq} is still being read")
        elif seq == self._seq and seq > 0:
            return
        elif seq != self._seq + 1:
            raise OutOfOrder(f"expected batch {self._seq + 1} (or {self._seq} again), not {seq}")
        else:
            self._batch_seq = seq
            self._unread_bytes = len(body)
            batch = self._batch = asyncio.ensure_future(self._read(seq, body))
        # Shielded: a forwarded request that times out must not cut a batch
        # in half; the client's retry of the same number waits for the rest.
        await asyncio.shield(batch)
        if self.ended and self._seq != seq:
            raise SessionOver

    async def _read(self, seq: int, body: bytes) -> None:
        for frame in envelopes(body):
            while not self._reading.is_set():
                if self.ended:
                    return
                await self._reading.wait()
            session = self.session
            if self.ended or session is None:
                return
            self._unread_bytes -= HEAD_BYTES + len(frame)
            session.message_received(frame)
        self._seq = seq
        self._unread_bytes = 0

    def close_by_client(self) -> None:
        """The client ends the session, as a WebSocket close with 1000 does."""
        self._end(1000)

    def too_large(self, message: str) -> None:
        """The client sent an envelope over ``max_frame_bytes``: close as WebSocket's 1009."""
        if self.session is not None:
            self.session.close(1009, message, label="too-large")

    # --- life -----------------------------------------------------------------------

    def _check_idle(self) -> None:
        self._timer = None
        if self.ended:
            return
        idle = self._scheduler.time() - self._last_request
        if idle >= self._idle_seconds:
            self._end(ABNORMAL)
        else:
            self._timer = self._scheduler.call_later(self._idle_seconds - idle, self._check_idle)

    def _end(self, code: int) -> None:
        if self.ended:
            return
        self.ended = True
        for timer in (self._timer, self._close_timer):
            if timer is not None:
                timer.cancel()
        self._timer = self._close_timer = None
        self._reading.set()  # a batch being read stops
        self._wake()
        if self.session is not None:
            self.session.connection_lost(code)
        if self.on_end is not None:
            self.on_end()

    def _wake(self) -> None:
        self._changed.set()  # every reader waiting looks again
        self._changed = asyncio.Event()
