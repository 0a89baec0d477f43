"""What a killed node's webhooks never sent is counted when the node starts again.

A node with a fixed name over Redis notes, per webhook URL, how many events
it made and how many it settled (``relay.webhook_ledger``). Killed with
events unsent, it leaves the difference in Redis; started again under the
same name, it counts them as dropped (``reason="killed"``) and tells the
backend in its first batch's ``dropped``. A node that drained leaves nothing
to count.
"""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator

import anyio
import httpx
import pytest
import redis.asyncio as aioredis

from tests.cluster.conftest import Nodes
from tests.cluster.processes import RelayProcess
from tests.hooks import SECRET, Receiver, serving
from tests.peers import join_as

pytestmark = pytest.mark.anyio


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    async with serving() as backend:
        yield backend


def hooks(url: str) -> tuple[str, ...]:
    return (
        "--webhook-urls", url, "--webhook-secret", SECRET,
        "--webhook-batch-seconds", "0.02", "--webhook-backoff-base-seconds", "0.01",
        "--webhook-backoff-cap-seconds", "0.05", "--webhook-drain-seconds", "2",
    )  # fmt: skip


async def noted(redis_url: str, nodes: Nodes, node: str, url: str) -> tuple[int, int] | None:
    """The ledger's note for ``url`` of ``node``, as (made, settled)."""
    key = f"{nodes.prefix}:webhooks:{node}:{hashlib.sha256(url.encode()).hexdigest()[:32]}"
    client = aioredis.Redis.from_url(redis_url)
    try:
        value = await client.get(key)
    finally:
        await client.aclose()
    if value is None:
        return None
    made, settled = value.decode().split(",")
    return int(made), int(settled)


async def until_noted(
    redis_url: str, nodes: Nodes, node: str, url: str, expected: tuple[int, int]
) -> None:
    """Wait (10 s at most) until the ledger's note is ``expected``; it is written once a second."""
    with anyio.fail_after(10):
        while await noted(redis_url, nodes, node, url) != expected:  # noqa: ASYNC110 (Redis offers no event)
            await anyio.sleep(0.1)


async def killed_drops(relay: RelayProcess) -> float:
    async with httpx.AsyncClient() as http:
        text = (await http.get(f"{relay.http_url}/metrics")).text
    for line in text.splitlines():
        if line.startswith('relay_webhook_events_dropped_total{reason="killed"}'):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


async def six_events_then(receiver: Receiver, relay: RelayProcess) -> None:
    """Three peers come and go on ``relay``: six events."""
    peers = [await join_as(relay.url, name) for name in ("ann", "ben", "cat")]
    for peer in peers:
        await peer.close()
    await receiver.until(lambda: sum(len(r["events"]) for r in receiver.requests) >= 6)


async def test_events_a_killed_node_never_sent_are_counted_when_it_starts_again(
    receiver: Receiver, redis_url: str, nodes: Nodes
) -> None:
    receiver.refuse = lambda body: True  # the backend is down: nothing is delivered
    (a,) = await nodes.start(redis_url, "a", extra=hooks(receiver.url))
    await six_events_then(receiver, a)
    await until_noted(redis_url, nodes, "a", receiver.url, (6, 0))
    a.kill()

    receiver.refuse = lambda body: False
    (again,) = await nodes.start(redis_url, "a", extra=hooks(receiver.url))
    peer = await join_as(again.url, "dan")  # an event, so that a batch goes out
    await receiver.until(lambda: bool(receiver.accepted))
    first = receiver.accepted[0]
    assert first["dropped"] == 6
    assert [e["type"] for e in first["events"]] == ["peer.online"]
    assert await killed_drops(again) == 6
    # Taken once: the note now follows this run.
    await peer.close()
    await receiver.until(lambda: len(receiver.events) == 2)
    await until_noted(redis_url, nodes, "a", receiver.url, (2, 2))


async def test_a_node_that_drained_leaves_nothing_to_count(
    receiver: Receiver, redis_url: str, nodes: Nodes
) -> None:
    (a,) = await nodes.start(redis_url, "a", extra=hooks(receiver.url))
    await six_events_then(receiver, a)
    await receiver.until(lambda: len(receiver.events) == 6)
    assert a.terminate() == 0  # SIGTERM: drained, its last note says all settled
    assert await noted(redis_url, nodes, "a", receiver.url) == (6, 6)

    (again,) = await nodes.start(redis_url, "a", extra=hooks(receiver.url))
    await join_as(again.url, "dan")
    await receiver.until(lambda: len(receiver.events) == 7)
    assert all(batch["dropped"] == 0 for batch in receiver.accepted)
    assert await killed_drops(again) == 0
