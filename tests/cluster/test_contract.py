"""What every broker backend must give the hub: a cluster that behaves as one node."""

from __future__ import annotations

import pytest

from tests.cluster.conftest import Cluster
from tests.peers import join_as, open_peer

pytestmark = pytest.mark.anyio


async def test_send_crosses_nodes_in_order(cluster: Cluster) -> None:
    a, b = await cluster(2)
    alice = await join_as(a.url, "alice")
    bob = await join_as(b.url, "bob")
    for n in range(200):
        await alice.send({"type": "send", "to": "bob", "d": n, "id": n})
    replies = [await alice.recv() for _ in range(200)]
    assert [r["type"] for r in replies] == ["ok"] * 200
    assert [(await bob.recv())["d"] for _ in range(200)] == list(range(200))


async def test_send_to_several_nodes_and_offline(cluster: Cluster) -> None:
    a, b, c = await cluster(3)
    alice = await join_as(a.url, "alice")
    bob = await join_as(b.url, "bob")
    carol = await join_as(c.url, "carol")
    await alice.send({"type": "send", "to": ["bob", "carol", "zed"], "d": "x", "id": 1})
    err = await alice.expect(type="err", code="peer-offline", id=1)
    assert err["to"] == ["zed"]
    await bob.expect(type="msg", d="x", **{"from": "alice"})
    await carol.expect(type="msg", d="x", **{"from": "alice"})


async def test_rooms_and_presence_span_nodes(cluster: Cluster) -> None:
    a, b = await cluster(2)
    alice = await join_as(a.url, "alice")
    await alice.send({"type": "join", "room": "r", "presence": True, "id": 1})
    await alice.expect(type="presence", members=["alice"])
    await alice.expect(type="ok", id=1)
    bob = await join_as(b.url, "bob")
    await bob.send({"type": "join", "room": "r", "presence": True, "id": 1})
    snapshot = await bob.expect(type="presence", room="r")
    assert sorted(snapshot["members"]) == ["alice", "bob"]
    await bob.expect(type="ok", id=1)
    await alice.expect(type="presence", peer="bob", event="join")
    await bob.send({"type": "pub", "room": "r", "d": "hello", "id": 2})
    await bob.expect(type="ok", id=2)
    await alice.expect(type="msg", d="hello", room="r", **{"from": "bob"})
    await bob.close()
    await alice.expect(type="presence", peer="bob", event="leave")


async def test_an_id_is_held_once_in_the_whole_cluster(cluster: Cluster) -> None:
    a, b = await cluster(2)
    await join_as(a.url, "alice")
    impostor = await open_peer(b.url)
    await impostor.send({"type": "hello", "id": "alice"})
    await impostor.expect(type="err", code="id-taken")
    assert await impostor.closed() == 4502


async def test_takeover_and_resume_on_another_node(cluster: Cluster) -> None:
    a, b = await cluster(2)
    bob = await join_as(a.url, "bob")
    await bob.request({"type": "join", "room": "r", "id": 1})
    alice = await join_as(a.url, "alice")
    await a.hub.disconnect("bob", 1001)
    assert await bob.closed() == 1001
    await alice.send({"type": "send", "to": "bob", "d": "queued", "id": 1})
    await alice.expect(type="ok", id=1, queued=True)
    moved = await join_as(b.url, "bob", resume=bob.welcome["resume"], received=1)
    assert moved.welcome["resumed"] is True
    assert moved.welcome["node"] == b.hub.node_id
    await moved.expect(type="msg", d="queued")
    await alice.request({"type": "pub", "room": "r", "d": "room", "id": 2})
    await moved.expect(type="msg", d="room", room="r")
    await alice.send({"type": "send", "to": "bob", "d": "live", "id": 3})
    await alice.expect(type="ok", id=3)
    await moved.expect(type="msg", d="live")
    # and back again while connected: the old socket is replaced
    back = await join_as(a.url, "bob", resume=moved.welcome["resume"], received=3)
    assert await moved.closed() == 4503
    await alice.request({"type": "send", "to": "bob", "d": "home", "id": 4})
    await back.expect(type="msg", d="home")


async def test_a_draining_node_hands_its_peers_to_another(cluster: Cluster) -> None:
    import anyio

    a, b = await cluster(2)
    alice = await join_as(a.url, "alice")
    bob = await join_as(b.url, "bob")
    async with anyio.create_task_group() as tasks:
        drained = anyio.Event()

        async def drain() -> None:
            await a.hub.drain(10)
            drained.set()

        tasks.start_soon(drain)
        assert await alice.closed() == 1001
        await bob.send({"type": "send", "to": "alice", "d": "while moving", "id": 1})
        await bob.expect(type="ok", id=1, queued=True)
        moved = await join_as(b.url, "alice", resume=alice.welcome["resume"], received=0)
        assert moved.welcome["resumed"] is True
        await moved.expect(type="msg", d="while moving")
        with anyio.fail_after(5):
            await drained.wait()  # nothing left to wait for once alice moved
