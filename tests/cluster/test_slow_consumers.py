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

import pytest

from relay.broker import Broker
from tests.cluster.conftest import REDIS_TEST_SETTINGS, redis_broker_factory
from tests.conftest import RelayFactory, RunningRelay
from tests.peers import RawPeer
from tests.test_slow_consumers import (
    Flood,
    accepted,
    accepted_and_the_rest_refused,
    every_unread_ok_is_reported,
    resume_gets_every_ok,
    stall_and_flood,
)

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
    acked = accepted_and_the_rest_refused(flood)
    assert 0 < took < 10
    # It resumes on the senders' node: its queue and replay window come across from b.
    welcome = await resume_gets_every_ok(a.url, stuck, flood, acked)
    assert welcome["node"] == "a"
    stuck.ws.transport.abort()


async def test_a_stalled_reader_on_another_node_that_never_returns_makes_every_unread_ok_an_err(
    relay_factory: RelayFactory, redis_brokers: Callable[[], Broker]
) -> None:
    a, b = await two_nodes(relay_factory, redis_brokers, resume_seconds=2)
    stuck, flood, _took = await stall_on_b_and_flood_from_a(a, b, flood_seconds=6)
    # The reports cross from b to a over Redis.
    await every_unread_ok_is_reported(
        stuck, flood, accepted(flood), within=b.settings.resume_seconds + 10
    )
    assert "stuck" not in b.hub.peers and "stuck" not in a.hub.peers
