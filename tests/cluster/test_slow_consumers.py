"""A peer that stops reading on one node, flooded from another: the one-node promises hold.

The stalled peer registers on node b and its socket is never read again; two
senders on node a flood it with 16 KB frames (under the rate limit) over
Redis. Node b closes it within the slow-consumer bound, every send gets
exactly one answer, and every message answered ``ok`` either reaches the
peer when it resumes (here on node a: its queue moves across) or is reported
``peer-offline`` to its sender when it never does.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import anyio
import msgpack
import pytest
from websockets.exceptions import ConnectionClosed

from relay.broker import Broker
from tests.cluster.conftest import REDIS_TEST_SETTINGS, redis_broker_factory
from tests.conftest import RelayFactory, RunningRelay
from tests.peers import RawPeer, join_as
from tests.test_slow_consumers import Flood, delivered_in_order, stall_and_flood

pytestmark = pytest.mark.anyio


@pytest.fixture
def redis_brokers(redis_url: str) -> Callable[[], Broker]:
    return redis_broker_factory(redis_url)


async def two_nodes(
    relay_factory: RelayFactory, brokers: Callable[[], Broker], **settings: Any
) -> tuple[RunningRelay, RunningRelay]:
    a = await relay_factory(broker=brokers(), node_id="a", **REDIS_TEST_SETTINGS, **settings)
    b = await relay_factory(broker=brokers(), node_id="b", **REDIS_TEST_SETTINGS, **settings)
    return a, b


async def stall_on_b_and_flood_from_a(
    a: RunningRelay, b: RunningRelay, flood_seconds: float
) -> tuple[RawPeer, Flood, float]:
    """``stuck`` on b stops reading; two senders on a flood it; returns when all are answered."""
    return await stall_and_flood(b, flood_seconds, senders_on=a, names=("s1", "s2"))


async def test_a_stalled_reader_on_another_node_is_closed_and_resumes_with_every_ok(
    relay_factory: RelayFactory, redis_brokers: Callable[[], Broker]
) -> None:
    a, b = await two_nodes(relay_factory, redis_brokers)  # default limits
    stuck, flood, took = await stall_on_b_and_flood_from_a(a, b, flood_seconds=10)
    answers = flood.first_answers()
    acked = {key for key, reply in answers.items() if reply["type"] == "ok"}
    assert acked, "nothing was accepted"
    for reply in answers.values():
        assert reply["type"] == "ok" or reply["code"] in ("overloaded", "rate-limited"), reply
    assert 0 < took < 10
    # It resumes on the senders' node, having read nothing of its old socket:
    # its queue and replay window come across from b.
    peer = await join_as(a.url, "stuck", resume=stuck.welcome["resume"], received=0)
    assert peer.welcome["resumed"] is True and peer.welcome["node"] == "a"
    received: list[list[Any]] = []
    with anyio.fail_after(20):
        while len(received) < len(acked):
            received.append((await peer.expect(type="msg"))["d"])
    got = delivered_in_order(received)
    for name in flood.senders:
        assert got[name] == sorted(n for sender, n in acked if sender == name)
    stuck.ws.transport.abort()


async def test_a_stalled_reader_on_another_node_that_never_returns_makes_every_unread_ok_an_err(
    relay_factory: RelayFactory, redis_brokers: Callable[[], Broker]
) -> None:
    a, b = await two_nodes(relay_factory, redis_brokers, resume_seconds=2)
    stuck, flood, _took = await stall_on_b_and_flood_from_a(a, b, flood_seconds=6)
    answers = flood.first_answers()
    acked = {key for key, reply in answers.items() if reply["type"] == "ok"}
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

    # What the old socket holds is what TCP delivered to the peer: read it.
    stuck.ws.transport.resume_reading()
    read: list[list[Any]] = []
    with anyio.fail_after(10):
        try:
            while True:
                read.append(msgpack.unpackb(await stuck.ws.recv())["d"])
        except ConnectionClosed:
            pass
    read_keys = {(name, n) for name, n, _blob in read}
    async with anyio.create_task_group() as tasks:
        for name in flood.senders:
            tasks.start_soon(late_errs, name)
        # The reports cross from b to a over Redis.
        with anyio.fail_after(b.settings.resume_seconds + 10):
            await accounted.wait()
        tasks.cancel_scope.cancel()
    assert not read_keys & set(reports), "a message was both delivered and reported"
    assert "stuck" not in b.hub.peers and "stuck" not in a.hub.peers
