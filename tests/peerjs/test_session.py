"""PeerJSSession driven by plain calls: a fake socket and an injected clock, no network."""

from __future__ import annotations

import json

import pytest

from relay.broker import MemoryBroker
from relay.hub import Hub
from relay.metrics import Metrics
from relay.peerjs.session import PeerJSSession
from relay.settings import Settings

pytestmark = pytest.mark.anyio

HEARTBEAT = json.dumps({"type": "HEARTBEAT"})


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class Socket:
    """A ``Transport`` that keeps what the session does to it."""

    def __init__(self) -> None:
        self.written: list[bytes] = []
        self.closed: tuple[int, str] | None = None
        self.reading = True

    @property
    def writing_paused(self) -> bool:
        return False

    def write(self, data: bytes) -> None:
        self.written.append(data)

    def pause_reading(self) -> None:
        self.reading = False

    def resume_reading(self) -> None:
        self.reading = True

    def close(self, code: int, reason: str = "") -> None:
        self.closed = (code, reason)

    def unsent_bytes(self) -> int:
        return 0


async def test_time_the_socket_was_not_read_is_credited_to_its_rate() -> None:
    settings = Settings(rate_per_second=10, rate_burst=10)
    hub = Hub(settings, MemoryBroker(), Metrics())
    async with hub.running():
        clock, socket = Clock(), Socket()
        session = PeerJSSession(hub, socket, "alice", clock=clock)
        hub.opened(session)
        assert await session.register(None, None)
        session.hold()
        session.hold()  # two reasons not to read (a full target, unanswered sends)
        clock.now += 2
        session.resume()
        assert not socket.reading
        clock.now += 1
        session.resume()
        assert socket.reading
        # 3 s not read earned 30 messages beyond the burst of 10: they are
        # what the client sent meanwhile, not a flood
        for _ in range(40):
            session.text_received(HEARTBEAT)
        assert socket.closed is None
        session.text_received(HEARTBEAT)
        assert socket.closed == (4029, "rate limit exceeded")
        session.connection_lost(4029)
