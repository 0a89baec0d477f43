"""Fakes that run the session and hub rules without a loop: a clock, a transport, a node.

``FakeScheduler`` moves time only in ``advance``; ``FakeTransport`` keeps what
a session writes and lets the test decide what the peer's host acknowledged;
``Node`` is a real ``Hub`` on the memory broker whose asynchronous steps run
to completion at once (the memory broker never waits), so a whole exchange is
a few plain calls.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Callable, Coroutine
from typing import Any

import msgpack

from relay.broker import MemoryBroker
from relay.broker.memory import MemoryCluster
from relay.hub import Hub
from relay.metrics import Metrics
from relay.protocol import codec
from relay.session import Session
from relay.settings import Settings


class FakeTimer:
    """A callback due at ``when``; cancelled ones are skipped."""

    def __init__(self, when: float, callback: Callable[..., object], args: tuple[Any, ...]) -> None:
        self.due = when
        self.callback = callback
        self.args = args
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True

    def when(self) -> float:
        return self.due


class FakeScheduler:
    """A ``relay.clock.Scheduler`` whose time moves only when the test says."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now
        self._soon: list[tuple[Callable[..., object], tuple[Any, ...]]] = []
        self._timers: list[tuple[float, int, FakeTimer]] = []
        self._order = itertools.count()

    def time(self) -> float:
        return self.now

    def call_later(self, delay: float, callback: Callable[..., object], *args: Any) -> FakeTimer:
        timer = FakeTimer(self.now + delay, callback, args)
        heapq.heappush(self._timers, (timer.due, next(self._order), timer))
        return timer

    def call_soon(self, callback: Callable[..., object], *args: Any) -> None:
        self._soon.append((callback, args))

    def run_soon(self) -> None:
        """Run what was scheduled for the end of this pass (and what that schedules)."""
        while self._soon:
            soon, self._soon = self._soon, []
            for callback, args in soon:
                callback(*args)

    def advance(self, seconds: float = 0.0) -> None:
        """Let ``seconds`` pass, running every timer that falls due, in order."""
        self.run_soon()
        end = self.now + seconds
        while self._timers and self._timers[0][0] <= end:
            when, _, timer = heapq.heappop(self._timers)
            if timer.cancelled:
                continue
            self.now = max(self.now, when)
            timer.callback(*timer.args)
            self.run_soon()
        self.now = end


class FakeTransport:
    """A ``relay.transport.Transport`` that keeps what it is given.

    Written frames count as acknowledged by the peer's host unless the test
    stops that (``acking = False``); ``paused`` makes the socket full;
    ``acks_known = False`` makes it a transport that cannot tell (ASGI's).
    """

    def __init__(self) -> None:
        self.frames: list[bytes] = []
        self.paused = False
        self.reading = True
        self.pauses = 0  # calls of pause_reading: on a real socket, each costs the loop work
        self.closed: tuple[int, str] | None = None
        self.aborted = False
        self.acking = True
        self.acks_known = True
        self.acks_asked = 0  # calls of acked_bytes: each is a system call for real
        self.written_bytes = 0
        self._acked = 0
        self.unsent = 0
        self.session: Session | None = None  # whom it delivers to
        self._held: list[bytes] = []  # sent by the peer while not read

    def feed(self, frame: bytes) -> None:
        """The peer sent ``frame``: delivered now, or once reading resumes."""
        assert self.session is not None
        if self.reading and not self._held:
            self.session.message_received(frame)
        else:
            self._held.append(frame)

    @property
    def writing_paused(self) -> bool:
        return self.paused

    def write(self, data: bytes) -> None:
        if self.closed is not None or self.aborted:
            return
        self.frames.append(data)
        self.written_bytes += len(data) + 2
        if self.acking:
            self._acked = self.written_bytes

    def ack_all(self) -> None:
        self._acked = self.written_bytes

    def pause_reading(self) -> None:
        self.pauses += 1
        self.reading = False

    def resume_reading(self) -> None:
        self.reading = True
        while self.reading and self._held and self.session is not None:
            self.session.message_received(self._held.pop(0))

    def close(self, code: int, reason: str = "") -> None:
        if self.closed is None:
            self.closed = (code, reason)

    def abort(self) -> None:
        self.aborted = True

    def unsent_bytes(self) -> int:
        return self.unsent

    def acked_bytes(self) -> int:
        self.acks_asked += 1
        return self._acked

    def received_bytes(self) -> int:
        return 0

    def envelopes(self) -> list[dict[str, Any]]:
        """Everything written, decoded."""
        return [msgpack.unpackb(frame) for frame in self.frames]

    def take(self) -> list[dict[str, Any]]:
        """What was written since the last ``take``, decoded."""
        envelopes = self.envelopes()
        self.frames.clear()
        return envelopes


class Gate:
    """Something a step can await that is opened by the test (an outside decision)."""

    def __init__(self) -> None:
        self.opened = False

    def open(self) -> None:
        self.opened = True

    def __await__(self) -> Any:
        while not self.opened:
            yield None


class Steps:
    """Runs the hub's asynchronous steps without a loop.

    A step runs until it ends or awaits a closed ``Gate``; ``run`` takes the
    waiting ones on again. The memory broker never waits, so most steps end
    inside ``spawn``.
    """

    def __init__(self) -> None:
        self.waiting: list[Coroutine[Any, Any, None]] = []

    def spawn(self, work: Coroutine[Any, Any, None], *, eager: bool = True) -> None:
        self._step(work)

    def run(self) -> None:
        waiting, self.waiting = self.waiting, []
        for work in waiting:
            self._step(work)

    def _step(self, work: Coroutine[Any, Any, None]) -> None:
        try:
            work.send(None)
        except StopIteration:
            return
        self.waiting.append(work)


class Node:
    """A hub on the memory broker, driven without a loop."""

    def __init__(self, cluster: MemoryCluster | None = None, **settings: Any) -> None:
        self.clock = FakeScheduler()
        self.settings = Settings(**settings)
        self.hub = Hub(self.settings, MemoryBroker(cluster), Metrics(), scheduler=self.clock)
        self.steps = Steps()
        self.hub.spawn = self.steps.spawn  # type: ignore[method-assign]
        self.steps.spawn(self.hub.broker.start(self.hub))
        self.hub.sweep_slow_consumers()  # as Hub.running starts it

    def run(self, seconds: float = 0.0) -> None:
        """Take waiting steps on, then let ``seconds`` pass."""
        self.steps.run()
        self.clock.advance(seconds)

    def connect(self) -> tuple[Session, FakeTransport]:
        """A new connection, before its hello."""
        transport = FakeTransport()
        session = Session(self.hub, transport)
        transport.session = session
        self.hub.opened(session)
        return session, transport

    def peer(self, peer_id: str, **hello: Any) -> tuple[Session, FakeTransport, dict[str, Any]]:
        """A connection registered as ``peer_id``; only its welcome is taken from the transport."""
        session, transport = self.connect()
        send(session, {"type": "hello", "id": peer_id, **hello})
        self.run()
        welcome: dict[str, Any] = msgpack.unpackb(transport.frames.pop(0))
        return session, transport, welcome


def send(session: Session, envelope: dict[str, Any]) -> None:
    """The peer sends ``envelope`` (encoded as a client would) over its connection."""
    transport = session.transport
    assert isinstance(transport, FakeTransport)
    transport.feed(codec.encode(envelope))
