"""Clusters of relay nodes, one fixture per broker backend.

``cluster(n)`` starts ``n`` nodes that share one backplane. The contract
tests take it and run once per backend in ``BACKENDS``. The redis backend
uses ``REDIS_URL`` when set, else a redis-server spawned for the session;
each test gets its own key prefix, so tests never see each other's nodes.
"""

from __future__ import annotations

import secrets
from collections.abc import Awaitable, Callable

import pytest

from relay.broker import Broker, MemoryBroker, create_broker
from relay.broker.memory import MemoryCluster
from relay.settings import Settings
from tests.conftest import RelayFactory, RunningRelay

BACKENDS = ["memory", "redis"]

Cluster = Callable[[int], Awaitable[list[RunningRelay]]]

# Short leases so node-death tests finish quickly.
REDIS_TEST_SETTINGS = {
    "node_lease_seconds": 2.0,
    "heartbeat_seconds": 0.25,
    "probe_seconds": 0.5,
    "broker_timeout_seconds": 1.0,
}


def _memory_brokers() -> Callable[[], Broker]:
    shared = MemoryCluster()
    return lambda: MemoryBroker(shared)


def _redis_brokers(url: str) -> Callable[[], Broker]:
    settings = Settings(redis_prefix=f"test-{secrets.token_hex(6)}", **REDIS_TEST_SETTINGS)  # type: ignore[arg-type]
    return lambda: create_broker(url, settings)


@pytest.fixture(params=BACKENDS)
def make_broker(request: pytest.FixtureRequest) -> Callable[[], Broker]:
    if request.param == "memory":
        return _memory_brokers()
    if request.param == "redis":
        return _redis_brokers(request.getfixturevalue("redis_url"))
    raise AssertionError(f"unknown backend {request.param}")


@pytest.fixture
def cluster(relay_factory: RelayFactory, make_broker: Callable[[], Broker]) -> Cluster:
    async def start(count: int, **settings: object) -> list[RunningRelay]:
        return [
            await relay_factory(broker=make_broker(), node_id=f"node-{n}", **settings)
            for n in range(count)
        ]

    return start
