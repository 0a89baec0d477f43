"""Clusters of relay nodes, one fixture per broker backend.

``cluster(n)`` starts ``n`` nodes that share one backplane. The contract
tests take it and run once per backend in ``BACKENDS``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import pytest

from relay.broker import Broker, MemoryBroker
from relay.broker.memory import MemoryCluster
from tests.conftest import RelayFactory, RunningRelay

BACKENDS = ["memory"]

Cluster = Callable[[int], Awaitable[list[RunningRelay]]]


def _memory_brokers() -> Callable[[], Broker]:
    shared = MemoryCluster()
    return lambda: MemoryBroker(shared)


@pytest.fixture(params=BACKENDS)
def make_broker(request: pytest.FixtureRequest) -> Callable[[], Broker]:
    if request.param == "memory":
        return _memory_brokers()
    raise AssertionError(f"unknown backend {request.param}")


@pytest.fixture
def cluster(relay_factory: RelayFactory, make_broker: Callable[[], Broker]) -> Cluster:
    async def start(count: int, **settings: object) -> list[RunningRelay]:
        return [
            await relay_factory(broker=make_broker(), node_id=f"node-{n}", **settings)
            for n in range(count)
        ]

    return start
