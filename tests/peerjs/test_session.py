"""PeerJSSession driven by plain calls: a fake socket and an injected clock, no network."""

from __future__ import annotations

import asyncio
import json
import logging

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from relay.broker import MemoryBroker
from relay.clock import LoopScheduler
from relay.hub import Hub
from relay.metrics import Metrics
from relay.peerjs.session import PeerJSSession
from relay.settings import Settings
from tests.peerjs.test_protocol import FIELDS, JSON, TEXT, json_text

pytestmark = pytest.mark.anyio

HEARTBEAT = json.dumps({"type": "HEARTBEAT"})


class Clock(LoopScheduler):
    """The loop's timers, with a clock the test moves."""

    def __init__(self) -> None:
        self.now = 100.0

    def time(self) -> float:  # type: ignore[override]
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

    @property
    def written_bytes(self) -> int:
        return sum(len(data) + 2 for data in self.written)

    def acked_bytes(self) -> int:
        return self.written_bytes

    def received_bytes(self) -> int:
        return 0

    def abort(self) -> None:
        self.closed = (1006, "")


async def test_time_the_socket_was_not_read_is_credited_to_its_rate() -> None:
    settings = Settings(rate_per_second=10, rate_burst=10)
    clock, socket = Clock(), Socket()
    hub = Hub(settings, MemoryBroker(), Metrics(), scheduler=clock)
    async with hub.running():
        session = PeerJSSession(hub, socket, "alice")
        hub.opened(session)
        assert await session.open(None, None)
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


async def test_an_internal_error_at_registration_is_error_and_1011_not_a_traceback(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    hub = Hub(Settings(), MemoryBroker(), Metrics())
    async with hub.running():

        async def broken(session: object, hello: object) -> bytes:
            raise RuntimeError("secret detail")

        monkeypatch.setattr(hub, "register", broken)
        socket = Socket()
        session = PeerJSSession(hub, socket, "alice")
        hub.opened(session)
        assert not await session.open(None, None)
        texts = [text for frame in socket.written for text in session.translate(frame)]
        assert [json.loads(text) for text in texts] == [
            {"type": "ERROR", "payload": {"msg": "internal error"}}
        ]
        assert socket.closed == (1011, "internal error")
        assert "secret detail" in caplog.text  # in the log, never on the wire
        session.connection_lost(1006)
        assert not hub.sessions and not hub.peers


PEERJS_TEXTS = st.lists(
    st.builds(json_text, st.dictionaries(FIELDS, JSON) | JSON)
    | st.builds(
        lambda kind, dst, payload: json_text({"type": kind, "dst": dst, "payload": payload}),
        st.sampled_from(["OFFER", "ANSWER", "CANDIDATE", "LEAVE", "HEARTBEAT"]),
        st.sampled_from(["bob", "nobody", "x" * 65]) | JSON,
        st.dictionaries(TEXT, JSON, min_size=1) | st.just({"n": "__huge__"}) | JSON,
    )
    | st.text(max_size=30),
    min_size=1,
    max_size=6,
)


async def deliver(texts: list[str]) -> tuple[Socket, list[str], list[logging.LogRecord]]:
    """Mallory's texts to a PeerJS session beside bob's: what each socket got, what was logged."""
    records: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    handler = Keep(logging.ERROR)
    logging.getLogger().addHandler(handler)
    try:
        hub = Hub(Settings(), MemoryBroker(), Metrics())
        async with hub.running():
            sockets = {name: Socket() for name in ("mallory", "bob")}
            sessions = {}
            for name, socket in sockets.items():
                sessions[name] = PeerJSSession(hub, socket, name)
                hub.opened(sessions[name])
                assert await sessions[name].open(None, None)
            for text in texts:
                sessions["mallory"].text_received(text)
            await asyncio.sleep(0)  # what the hub answers at once, it has answered
            to_bob = [t for f in sockets["bob"].written for t in sessions["bob"].translate(f)]
            for session in sessions.values():
                session.connection_lost(1000)
    finally:
        logging.getLogger().removeHandler(handler)
    return sockets["mallory"], to_bob, records


@settings(max_examples=150, deadline=None)
@given(PEERJS_TEXTS)
def test_any_text_is_relayed_or_refused_with_no_error_logged(texts: list[str]) -> None:
    mallory, to_bob, records = asyncio.run(deliver(texts))
    assert [record.getMessage() for record in records] == []
    if mallory.closed is not None:  # refused: ERROR and a close that says "do not retry"
        assert mallory.closed[0] in (1003, 1008, 1009, 4029)
    for text in to_bob:
        assert json.loads(text)["type"] in ("OPEN", "OFFER", "ANSWER", "CANDIDATE", "LEAVE")
