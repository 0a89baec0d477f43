"""Webhooks across nodes: each room transition and each dead node told once in the cluster.

``room.occupied`` and ``room.vacated`` come from the node whose join or leave
the registry found the room empty for (Redis scripts run one at a time); the
peers and memberships of a node that died come from the one node whose reap
removed it. A real HTTP receiver (``tests.hooks``) gets every node's events.
"""

from __future__ import annotations

import itertools
import secrets
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any

import anyio
import pytest
import redis.asyncio as aioredis

from relay.broker import create_broker
from relay.settings import Settings
from tests.cluster.conftest import REDIS_TEST_SETTINGS, Cluster, Nodes
from tests.cluster.test_faults import clean_logs
from tests.conftest import RelayFactory, RunningRelay
from tests.hooks import SECRET, Receiver, fast, serving, settled
from tests.peers import RawPeer, join_as
from tests.redis_server import Cable

pytestmark = pytest.mark.anyio

ROUNDS = 25
PEERS_PER_NODE = 3
HEARTBEAT = 0.25  # --heartbeat-seconds in FAST_CLUSTER


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    async with serving() as backend:
        yield backend


def count(receiver: Receiver, kind: str) -> int:
    return sum(event["type"] == kind for event in receiver.events)


async def until_counted(receiver: Receiver, counts: dict[str, int]) -> None:
    """Wait until the receiver has at least ``counts`` events of each type."""
    await receiver.until(lambda: all(count(receiver, k) >= n for k, n in counts.items()))


def streams(receiver: Receiver) -> dict[str, list[tuple[str, ...]]]:
    """Each node's events in ``seq`` order, as (type, peer, room, reason...)."""
    by_node: dict[str, list[tuple[int, tuple[str, ...]]]] = {}
    for event, kind in zip(receiver.events, receiver.kinds(), strict=True):
        if "lost_node" in event:
            kind = (*kind, event["lost_node"])
        by_node.setdefault(event["node"], []).append((event["seq"], kind))
    for node, events in by_node.items():
        assert [seq for seq, _ in sorted(events)] == list(range(1, len(events) + 1)), node
    return {node: [kind for _, kind in sorted(events)] for node, events in by_node.items()}


async def requests(peers: list[RawPeer], envelope: dict[str, Any]) -> None:
    """Send ``envelope`` from every peer at once; return once each has its ``ok``."""

    async def one(peer: RawPeer) -> None:
        assert (await peer.request(envelope))["type"] == "ok"

    async with anyio.create_task_group() as tasks:
        for peer in peers:
            tasks.start_soon(one, peer)


async def test_occupied_and_vacated_once_per_transition_while_both_nodes_join_and_leave(
    receiver: Receiver, cluster: Cluster
) -> None:
    relays = await cluster(2, **fast(receiver.url))
    peers = [
        await join_as(relay.url, f"p{n}-{k}")
        for n, relay in enumerate(relays)
        for k in range(PEERS_PER_NODE)
    ]
    total = len(peers)
    for done in range(1, ROUNDS + 1):
        # Every member on both nodes joins at once, then leaves at once: one
        # transition each way per round, which each node alone would see too.
        await requests(peers, {"type": "join", "room": "lobby", "id": 1})
        await requests(peers, {"type": "leave", "room": "lobby", "id": 2})
        await until_counted(receiver, {"room.vacated": done, "room.left": done * total})
    for relay in relays:
        await settled(relay)
    assert count(receiver, "room.occupied") == ROUNDS
    assert count(receiver, "room.vacated") == ROUNDS
    assert count(receiver, "room.joined") == ROUNDS * total
    # In each node's stream an occupied comes just before a join, a vacated
    # just after a leave.
    occupied_by: Counter[str] = Counter()
    for node, events in streams(receiver).items():
        padded = [("",), *events, ("",)]
        for before, event, after in zip(padded, padded[1:], padded[2:], strict=False):
            if event[0] == "room.occupied":
                assert after[0] == "room.joined", (node, events)
                occupied_by[node] += 1
            if event[0] == "room.vacated":
                assert before[0] == "room.left", (node, events)
    assert occupied_by.total() == ROUNDS
    for peer in peers:
        await peer.close()


async def test_a_peer_moving_between_nodes_neither_vacates_nor_occupies(
    receiver: Receiver, cluster: Cluster
) -> None:
    one, two = await cluster(2, **fast(receiver.url))
    alice = await join_as(one.url, "alice")
    await alice.request({"type": "join", "room": "lobby", "id": 1})
    for there in (two, one, two):  # the only member, moved three times
        alice.ws.transport.abort()  # a dropped link: kept for a resume
        alice = await join_as(there.url, "alice", resume=alice.welcome["resume"])
        assert alice.welcome["resumed"] is True
    bob = await join_as(one.url, "bob")
    await bob.request({"type": "join", "room": "lobby", "id": 1})
    await alice.close()  # on node-1, bob still in on node-0
    await bob.close()  # the last member
    await receiver.until(lambda: count(receiver, "room.vacated") == 1)
    await settled(one)
    await settled(two)
    assert streams(receiver) == {
        "node-0": [
            ("peer.online", "alice"),
            ("room.occupied", "lobby"),
            ("room.joined", "alice", "lobby"),
            ("peer.online", "bob"),
            ("room.joined", "bob", "lobby"),
            ("peer.offline", "bob", "closed"),
            ("room.left", "bob", "lobby"),
            ("room.vacated", "lobby"),
        ],
        "node-1": [("peer.offline", "alice", "closed"), ("room.left", "alice", "lobby")],
    }


async def test_a_killed_nodes_peers_and_rooms_are_told_once_by_the_node_that_reaps_it(
    receiver: Receiver, redis_url: str, nodes: Nodes
) -> None:
    hooks = (
        "--webhook-urls", receiver.url, "--webhook-secret", SECRET,
        "--webhook-batch-seconds", "0.02", "--webhook-backoff-base-seconds", "0.01",
        "--webhook-backoff-cap-seconds", "0.05", "--webhook-drain-seconds", "1",
    )  # fmt: skip
    a, b, c = await nodes.start(redis_url, "a", "b", "c", extra=hooks)
    alice = await join_as(a.url, "alice")
    bob = await join_as(a.url, "bob")
    carol = await join_as(b.url, "carol")
    dave = await join_as(a.url, "dave")
    await alice.request({"type": "join", "room": "mixed", "id": 1})
    await alice.request({"type": "join", "room": "solo", "id": 2})
    await bob.request({"type": "join", "room": "solo", "id": 3})
    await carol.request({"type": "join", "room": "mixed", "id": 4})
    await dave.request({"type": "join", "room": "den", "id": 5})
    await receiver.until(lambda: count(receiver, "room.joined") == 5)
    before = len(receiver.events)

    a.kill()  # no drain: a tells nothing more
    # Dave registers again on c at once (nobody listens on a's channel): his
    # id is c's now, so the reap does not say he is offline; his room is a's.
    dave = await join_as(c.url, "dave")
    assert dave.welcome["resumed"] is False
    await until_counted(receiver, {"room.vacated": 2})
    (online,) = [e for e in receiver.events[before:] if e["type"] == "peer.online"]
    assert (online["node"], online["peer"]) == ("c", "dave")
    reaped = [e for e in receiver.events[before:] if e is not online]
    (reaper,) = {e["node"] for e in reaped}  # one node told it all
    assert reaper in ("b", "c")
    told = [k for k in streams(receiver)[reaper] if k != ("peer.online", "dave")][-len(reaped) :]
    assert Counter(told) == Counter([
        ("peer.offline", "alice", "node_lost", "a"),
        ("peer.offline", "bob", "node_lost", "a"),
        ("room.left", "alice", "mixed"),
        ("room.left", "alice", "solo"),
        ("room.left", "bob", "solo"),
        ("room.left", "dave", "den"),
        ("room.vacated", "solo"),
        ("room.vacated", "den"),
    ])  # fmt: skip
    # Each peer's offline before its leaves; each vacated after its room's last leave.
    for n, kind in enumerate(told):
        if kind[0] == "room.left" and kind[1] != "dave":
            assert ("peer.offline", kind[1], "node_lost", "a") in told[:n], told
        if kind[0] == "room.vacated":
            assert not [k for k in told[n:] if k[0] == "room.left" and k[2] == kind[1]], told

    # The other survivor's heartbeats find nothing more to tell (a is gone
    # from the registry), and the room a shared is vacated by its last leave.
    client = aioredis.Redis.from_url(redis_url)
    try:
        assert b"a" not in await client.smembers(f"{nodes.prefix}:nodes")
    finally:
        await client.aclose()
    with anyio.move_on_after(4 * HEARTBEAT):  # time for a second report, which must not come
        await receiver.until(lambda: count(receiver, "peer.offline") > 2)
    await carol.request({"type": "leave", "room": "mixed", "id": 6})
    await until_counted(receiver, {"room.vacated": 3})
    assert count(receiver, "peer.offline") == 2
    assert count(receiver, "room.vacated") == 3
    assert streams(receiver)["b"][-2:] == [
        ("room.left", "carol", "mixed"),
        ("room.vacated", "mixed"),
    ]
    clean_logs(b, c)
    await carol.close()
    await dave.close()


async def cut_off_pair(
    receiver: Receiver, relay_factory: RelayFactory, redis_url: str, cable: Cable
) -> tuple[RunningRelay, RunningRelay]:
    """Two nodes on one Redis: node-a reaches it through ``cable``, node-b directly."""
    settings = Settings(redis_prefix=f"test-{secrets.token_hex(6)}", **REDIS_TEST_SETTINGS)  # type: ignore[arg-type]
    hooks = fast(receiver.url)
    a = await relay_factory(broker=create_broker(cable.url, settings), node_id="node-a", **hooks)
    b = await relay_factory(broker=create_broker(redis_url, settings), node_id="node-b", **hooks)
    return a, b


async def until_ready(relay: RunningRelay, ready: bool) -> None:
    with anyio.fail_after(10):
        # Polling: readiness is a flag with no event to wait on.
        for _attempt in itertools.count():
            if relay.hub.broker.ready is ready:
                return
            await anyio.sleep(0.02)


async def test_a_node_cut_off_longer_than_its_lease_tells_its_peers_back_once(
    receiver: Receiver, relay_factory: RelayFactory, redis_url: str
) -> None:
    async with Cable(redis_url) as cable:
        a, b = await cut_off_pair(receiver, relay_factory, redis_url, cable)
        alice = await join_as(a.url, "alice")
        bob = await join_as(a.url, "bob")
        carol = await join_as(b.url, "carol")
        await alice.request({"type": "join", "room": "solo", "id": 1})
        await alice.request({"type": "join", "room": "shared", "id": 2})
        await bob.request({"type": "join", "room": "shared", "id": 3})
        await carol.send({"type": "join", "room": "shared", "presence": True, "id": 4})
        await carol.expect(type="presence", event="join", peer="carol")
        await carol.expect(type="ok", id=4)
        await until_counted(receiver, {"room.joined": 4})
        told_before = {node: len(kinds) for node, kinds in streams(receiver).items()}

        cable.cut()  # node-a serves its peers on, but cannot reach Redis
        await until_counted(receiver, {"peer.offline": 2, "room.left": 3, "room.vacated": 1})
        assert Counter(streams(receiver)["node-b"][told_before["node-b"] :]) == Counter([
            ("peer.offline", "alice", "node_lost", "node-a"),
            ("peer.offline", "bob", "node_lost", "node-a"),
            ("room.left", "alice", "solo"),
            ("room.left", "alice", "shared"),
            ("room.left", "bob", "shared"),
            ("room.vacated", "solo"),
        ])  # fmt: skip
        left = [await carol.expect(type="presence", event="leave") for _ in range(2)]
        assert {event["peer"] for event in left} == {"alice", "bob"}

        cable.mend()  # node-a finds it was reaped: its peers and their rooms are back
        await until_counted(receiver, {"peer.online": 5, "room.joined": 7, "room.occupied": 3})
        back = streams(receiver)["node-a"][told_before["node-a"] :]
        assert sorted(back[:2]) == [("peer.online", "alice"), ("peer.online", "bob")]
        assert back[2:4] == [("room.occupied", "solo"), ("room.joined", "alice", "solo")]
        assert Counter(back[4:]) == Counter(
            [("room.joined", "alice", "shared"), ("room.joined", "bob", "shared")]
        )
        joined = [await carol.expect(type="presence", event="join") for _ in range(2)]
        assert {event["peer"] for event in joined} == {"alice", "bob"}
        expected = Counter(kind for kinds in streams(receiver).values() for kind in kinds)
        with anyio.move_on_after(4 * HEARTBEAT):  # time for a second report, which must not come
            await receiver.until(lambda: len(receiver.events) > expected.total())
        assert len(receiver.events) == expected.total()

        # Back for good: the room node-a's peers are in has them on every node.
        await carol.send({"type": "pub", "room": "shared", "d": "hi", "id": 5})
        await carol.expect(type="ok", id=5)
        await alice.expect(type="msg", d="hi", room="shared", **{"from": "carol"})
        for peer in (alice, bob, carol):
            await peer.close()


async def test_a_node_cut_off_shorter_than_its_lease_tells_nothing(
    receiver: Receiver, relay_factory: RelayFactory, redis_url: str
) -> None:
    async with Cable(redis_url) as cable:
        a, b = await cut_off_pair(receiver, relay_factory, redis_url, cable)
        alice = await join_as(a.url, "alice")
        carol = await join_as(b.url, "carol")
        await alice.request({"type": "join", "room": "solo", "id": 1})
        await until_counted(receiver, {"peer.online": 2, "room.joined": 1})
        told_before = {node: len(kinds) for node, kinds in streams(receiver).items()}

        cable.cut()
        await until_ready(a, False)
        cable.mend()  # well within the lease: nobody reaped node-a
        await until_ready(a, True)
        # Anything node-a told of its outage comes before this in its stream.
        await alice.request({"type": "join", "room": "after", "id": 2})
        await carol.request({"type": "join", "room": "after", "id": 2})
        await until_counted(receiver, {"room.joined": 3})
        now = streams(receiver)
        assert now["node-a"][told_before["node-a"] :] == [
            ("room.occupied", "after"),
            ("room.joined", "alice", "after"),
        ]
        assert now["node-b"][told_before["node-b"] :] == [("room.joined", "carol", "after")]
        await alice.close()
        await carol.close()
