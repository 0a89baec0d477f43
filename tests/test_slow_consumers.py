"""A peer that stops reading: closed within a bound, and nothing answered ``ok`` is lost.

The stalled peer is a real client whose socket is never read (its TCP receive
window fills), while two senders flood it with 16 KB frames under the rate
limit. Every ``send`` carries an id; the tests check that each got exactly
one answer, and that every message answered ``ok`` either reached the peer
(through its old socket or a resume) or was later reported ``peer-offline``
to its sender, never both.
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from typing import Any

import anyio
import msgpack
import pytest
from websockets.exceptions import ConnectionClosed

from relay.hub import Hub
from relay.session import Session
from tests.conftest import RelayFactory, RunningRelay
from tests.jwtkit import SECRET, hs256
from tests.peers import RawPeer, join_as

pytestmark = pytest.mark.anyio

BLOB = b"x" * 16_000
RATE = 150  # frames per second per sender, under the default rate limit (200/s)


class Flood:
    """Two senders flooding one target; every answer is recorded by (sender, n)."""

    def __init__(self, senders: dict[str, RawPeer], target: str) -> None:
        self.senders = senders
        self.target = target
        self.sent: dict[str, int] = dict.fromkeys(senders, 0)
        self.answers: dict[tuple[str, int], list[dict[str, Any]]] = defaultdict(list)
        self.all_answered = anyio.Event()
        self.done_sending = False

    async def send(self, name: str, seconds: float) -> None:
        peer = self.senders[name]
        start = time.monotonic()
        n = 0
        while (elapsed := time.monotonic() - start) < seconds:
            if n > elapsed * RATE:
                await anyio.sleep(1 / RATE)  # pacing, not synchronisation
                continue
            await peer.send({"type": "send", "to": self.target, "d": [name, n, BLOB], "id": n})
            n += 1
            self.sent[name] = n

    async def collect(self, name: str) -> None:
        peer = self.senders[name]
        while True:
            reply = msgpack.unpackb(await peer.ws.recv())
            self.answers[(name, reply["id"])].append(reply)
            self.check()

    def check(self) -> None:
        """Set ``all_answered`` once sending is over and every send has an answer."""
        if self.done_sending and self._complete():
            self.all_answered.set()

    def _complete(self) -> bool:
        return all(
            len(self.answers.get((name, n), ())) >= 1
            for name, count in self.sent.items()
            for n in range(count)
        )

    def first_answers(self) -> dict[tuple[str, int], dict[str, Any]]:
        for key, replies in self.answers.items():
            assert len(replies) == 1, f"{key} answered {len(replies)} times: {replies}"
        return {key: replies[0] for key, replies in self.answers.items()}


def ended_event(hub: Hub, peer_id: str) -> anyio.Event:
    """An event set when the hub ends ``peer_id``'s session."""
    ended = anyio.Event()
    original = hub.session_ended

    def session_ended(session: Session, code: int) -> None:
        if session.peer is not None and session.peer.id == peer_id:
            ended.set()
        original(session, code)

    hub.session_ended = session_ended  # type: ignore[method-assign]
    return ended


async def stall_and_flood(
    relay: RunningRelay,
    flood_seconds: float,
    *,
    senders_on: RunningRelay | None = None,
    names: tuple[str, str] = ("a", "b"),
) -> tuple[RawPeer, Flood, float]:
    """Register ``stuck`` on ``relay``, stop reading it, flood it from two senders.

    The senders join ``senders_on`` (``relay`` itself by default). Returns
    when every send is answered, with how long the relay took to end the
    stalled session (bounded: the watch fails otherwise).
    """
    stuck = await join_as(relay.url, "stuck")
    stuck.ws.transport.pause_reading()
    origin = senders_on or relay
    flood = Flood({name: await join_as(origin.url, name) for name in names}, "stuck")
    ended = ended_event(relay.hub, "stuck")
    settings = relay.settings
    bound = settings.slow_consumer_seconds + settings.close_timeout_seconds + 2
    started = time.monotonic()
    took = 0.0

    async def watch() -> None:
        nonlocal took
        with anyio.fail_after(bound):
            await ended.wait()
        took = time.monotonic() - started

    async with anyio.create_task_group() as tasks:
        for name in flood.senders:
            tasks.start_soon(flood.collect, name)
        async with anyio.create_task_group() as senders:
            senders.start_soon(watch)
            for name in flood.senders:
                senders.start_soon(flood.send, name, flood_seconds)
        flood.done_sending = True
        flood.check()
        with anyio.fail_after(10):
            await flood.all_answered.wait()
        tasks.cancel_scope.cancel()
    return stuck, flood, took


def accepted(flood: Flood) -> set[tuple[str, int]]:
    """The ``(sender, id)`` of every send answered ``ok``."""
    return {key for key, reply in flood.first_answers().items() if reply["type"] == "ok"}


def accepted_and_the_rest_refused(flood: Flood) -> set[tuple[str, int]]:
    """``accepted``, asserting it is not empty and every other send was refused for load."""
    for reply in flood.first_answers().values():
        assert reply["type"] == "ok" or reply["code"] in ("overloaded", "rate-limited"), reply
    acked = accepted(flood)
    assert acked, "nothing was accepted"
    return acked


async def read_to_the_end(stuck: RawPeer) -> list[dict[str, Any]]:
    """Read what the stalled peer's old socket still holds, until it closes.

    That is what TCP delivered to the peer's host: a client reads it before
    it resumes, and says how much it read (protocol.md, "Resume and replay").
    """
    stuck.ws.transport.resume_reading()
    read: list[dict[str, Any]] = []
    with anyio.fail_after(10):
        try:
            while True:
                read.append(msgpack.unpackb(await stuck.ws.recv()))
        except ConnectionClosed:
            pass
    return read


async def resume_gets_every_ok(
    url: str, stuck: RawPeer, flood: Flood, acked: set[tuple[str, int]]
) -> dict[str, Any]:
    """Read ``stuck``'s old socket to its end, then resume it at ``url`` with that count.

    Asserts that the old socket and the new session together deliver every
    message answered ``ok``, once and in order per sender; returns the
    new session's welcome.
    """
    old = await read_to_the_end(stuck)
    peer = await join_as(url, "stuck", resume=stuck.welcome["resume"], received=len(old))
    assert peer.welcome["resumed"] is True
    received: list[list[Any]] = [envelope["d"] for envelope in old]
    with anyio.fail_after(20):
        while len(received) < len(acked):
            received.append((await peer.expect(type="msg"))["d"])
    per_sender: dict[str, list[int]] = defaultdict(list)
    for name, n, _blob in received:
        per_sender[name].append(n)
    for name in flood.senders:
        assert per_sender[name] == sorted(n for sender, n in acked if sender == name)
    return peer.welcome


async def every_unread_ok_is_reported(
    stuck: RawPeer, flood: Flood, acked: set[tuple[str, int]], within: float
) -> None:
    """Assert that each ``ok`` the stalled peer never read is reported once, within ``within`` s.

    What the old socket holds is what TCP delivered to the peer: it is read
    first, and nothing read may also be reported ``peer-offline``.
    """
    read = [envelope["d"] for envelope in await read_to_the_end(stuck)]
    read_keys = {(name, n) for name, n, _blob in read}
    reports: dict[tuple[str, int], dict[str, Any]] = {}
    accounted = anyio.Event()

    async def late_errs(name: str) -> None:
        while True:
            reply = msgpack.unpackb(await flood.senders[name].ws.recv())
            assert reply["type"] == "err" and reply["code"] == "peer-offline", reply
            key = (name, reply["id"])
            assert key not in reports, f"{key} reported twice"
            reports[key] = reply
            if read_keys | set(reports) == acked:
                accounted.set()

    async with anyio.create_task_group() as tasks:
        for name in flood.senders:
            tasks.start_soon(late_errs, name)
        with anyio.fail_after(within):
            await accounted.wait()
        tasks.cancel_scope.cancel()
    assert not read_keys & set(reports), "a message was both delivered and reported"


async def test_a_stalled_reader_is_closed_within_the_bound_and_its_resume_gets_every_ok(
    relay_factory: RelayFactory,
) -> None:
    relay = await relay_factory()  # default settings
    stuck, flood, took = await stall_and_flood(relay, flood_seconds=10)
    acked = accepted_and_the_rest_refused(flood)
    # The session ended within the bound (watch() fails otherwise), and the
    # peer resumes more than 8 s after it stopped reading.
    assert 0 < took < 10
    await resume_gets_every_ok(relay.url, stuck, flood, acked)
    stuck.ws.transport.abort()


async def test_a_stalled_reader_that_never_returns_makes_every_unread_ok_an_err(
    relay_factory: RelayFactory,
) -> None:
    relay = await relay_factory(resume_seconds=2)
    stuck, flood, _took = await stall_and_flood(relay, flood_seconds=6)
    # After the resume window every frame the peer never got is reported.
    await every_unread_ok_is_reported(
        stuck, flood, accepted(flood), within=relay.settings.resume_seconds + 10
    )
    assert "stuck" not in relay.hub.peers


async def _flood(peer: RawPeer) -> None:
    for n in range(2000):
        await peer.send({"type": "send", "to": "nobody", "d": n, "id": n})


async def _bad_envelopes(peer: RawPeer) -> None:
    for _ in range(20):
        await peer.send_raw(b"\xc1")


async def _replaced(peer: RawPeer, relay: RunningRelay) -> None:
    await join_as(relay.url, "deaf", resume=peer.welcome["resume"])


async def _expired(peer: RawPeer) -> None:
    pass  # the token lives one second


async def _drained(peer: RawPeer, relay: RunningRelay) -> None:
    async with anyio.create_task_group() as tasks:
        tasks.start_soon(relay.hub.drain, 3.0)


CLOSE_PATHS: dict[str, tuple[int, dict[str, Any]]] = {
    "flood": (4029, {"rate_per_second": 5, "rate_burst": 5, "rate_strikes": 10}),
    "bad": (4500, {"bad_envelope_budget": 5}),
    "replaced": (4503, {}),
    "expired": (4501, {"jwt_secret": SECRET}),
    "drain": (1001, {}),
}


@pytest.mark.parametrize("path", sorted(CLOSE_PATHS))
async def test_every_relay_close_ends_a_deaf_session_within_the_bound(
    relay_factory: RelayFactory, caplog: pytest.LogCaptureFixture, path: str
) -> None:
    code, settings = CLOSE_PATHS[path]
    relay = await relay_factory(close_timeout_seconds=0.5, **settings)
    hello: dict[str, Any] = {"token": hs256("deaf", ttl=1)} if path == "expired" else {}
    deaf = await join_as(relay.url, "deaf", **hello)
    deaf.ws.transport.pause_reading()  # it will never read the close frame
    ended = ended_event(relay.hub, "deaf")
    caplog.set_level(logging.INFO, logger="relay.session")
    trigger = {
        "flood": lambda: _flood(deaf),
        "bad": lambda: _bad_envelopes(deaf),
        "replaced": lambda: _replaced(deaf, relay),
        "expired": lambda: _expired(deaf),
        "drain": lambda: _drained(deaf, relay),
    }[path]
    async with anyio.create_task_group() as tasks:
        tasks.start_soon(trigger)
        # explaining errs (up to 1 s), the token's second, then the close timeout
        with anyio.fail_after(1.0 + 1.0 + relay.settings.close_timeout_seconds + 1.5):
            await ended.wait()
        tasks.cancel_scope.cancel()
    closes = [r.getMessage() for r in caplog.records if r.getMessage().startswith("closing deaf")]
    assert len(closes) == 1 and f": {code} " in closes[0], closes
    deaf.ws.transport.abort()
