"""Clusters of relay nodes, one fixture per broker backend.

``cluster(n)`` starts ``n`` nodes that share one backplane. The contract
tests take it and run once per backend in ``BACKENDS``. The redis backend
uses ``REDIS_URL`` when set, else a redis-server spawned for the session;
each test gets its own key prefix, so tests never see each other's nodes.
``nodes`` starts relay processes (``python -m relay serve``) over Redis, and
``own_redis`` is a redis-server of the test's own, for tests that stop it.
"""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator

import anyio
import pytest

from relay.broker import Broker, MemoryBroker, create_broker
from relay.broker.memory import MemoryCluster
from relay.settings import Settings
from tests.cluster.processes import FAST_CLUSTER, RelayProcess
from tests.conftest import RelayFactory, RunningRelay
from tests.redis_server import RedisServer

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


def redis_broker_factory(url: str) -> Callable[[], Broker]:
    settings = Settings(redis_prefix=f"test-{secrets.token_hex(6)}", **REDIS_TEST_SETTINGS)  # type: ignore[arg-type]
    return lambda: create_broker(url, settings)


@pytest.fixture(params=BACKENDS)
def make_broker(request: pytest.FixtureRequest) -> Callable[[], Broker]:
    if request.param == "memory":
        return _memory_brokers()
    if request.param == "redis":
        return redis_broker_factory(request.getfixturevalue("redis_url"))
    raise AssertionError(f"unknown backend {request.param}")


@pytest.fixture
def cluster(relay_factory: RelayFactory, make_broker: Callable[[], Broker]) -> Cluster:
    async def start(count: int, **settings: object) -> list[RunningRelay]:
        return [
            await relay_factory(broker=make_broker(), node_id=f"node-{n}", **settings)
            for n in range(count)
        ]

    return start


@pytest.fixture
def own_redis() -> Iterator[RedisServer]:
    server = RedisServer()
    server.start()
    try:
        yield server
    finally:
        server.stop()


class Nodes:
    """Relay processes started by one test, all stopped at its end."""

    def __init__(self) -> None:
        self.started: list[RelayProcess] = []
        self.prefix = f"t{secrets.token_hex(4)}"

    async def start(self, url: str, *names: str, extra: tuple[str, ...] = ()) -> list[RelayProcess]:
        common = ("--broker", url, "--redis-prefix", self.prefix, *FAST_CLUSTER, *extra)
        procs = [RelayProcess("--node-id", name, *common) for name in names]
        self.started += procs
        for proc in procs:
            await anyio.to_thread.run_sync(proc.wait_ready)
        return procs


@pytest.fixture
async def nodes() -> AsyncIterator[Nodes]:
    started = Nodes()
    yield started
    for proc in started.started:
        await anyio.to_thread.run_sync(proc.stop)
