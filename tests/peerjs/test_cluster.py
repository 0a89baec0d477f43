"""PeerJS peers on different nodes of a cluster, once per broker (memory, and Redis)."""

from __future__ import annotations

import httpx
import pytest

from tests.cluster.conftest import Cluster
from tests.peerjs.client import join_peerjs, open_peerjs, peerjs_url

pytestmark = pytest.mark.anyio

OFFER = {"type": "data", "connectionId": "dc_1", "sdp": {"type": "offer", "sdp": "v=0"}}


async def test_peers_on_two_nodes_signal_each_other(cluster: Cluster) -> None:
    one, two = await cluster(2)
    alice = await join_peerjs(one, "alice")
    bob = await join_peerjs(two, "bob")
    await alice.send({"type": "OFFER", "dst": "bob", "payload": OFFER})
    assert await bob.recv() == {"type": "OFFER", "src": "alice", "dst": "bob", "payload": OFFER}
    for n in range(20):
        await bob.send({"type": "CANDIDATE", "dst": "alice", "payload": {"n": n}})
    assert [(await alice.recv())["payload"]["n"] for _ in range(20)] == list(range(20))


async def test_a_message_waits_for_a_peer_that_connects_to_another_node(cluster: Cluster) -> None:
    one, two = await cluster(2)
    alice = await join_peerjs(one, "alice")
    await alice.send({"type": "OFFER", "dst": "late", "payload": OFFER})
    await alice.send({"type": "CANDIDATE", "dst": "late", "payload": {"candidate": "c"}})
    late = await join_peerjs(two, "late")
    await late.expect(type="OFFER", src="alice", payload=OFFER)
    await late.expect(type="CANDIDATE", src="alice")


async def test_an_id_is_held_once_in_the_cluster(cluster: Cluster) -> None:
    one, two = await cluster(2)
    await join_peerjs(one, "bob", token="first")
    thief = await open_peerjs(peerjs_url(two, id="bob", token="second"))
    received, code = await thief.drain()
    assert [m["type"] for m in received] == ["ID-TAKEN"] and code == 4502


async def test_discovery_lists_the_peers_of_every_node(cluster: Cluster) -> None:
    one, two = await cluster(2, peerjs_discovery=True)
    await join_peerjs(one, "alice")
    await join_peerjs(two, "bob")
    for node in (one, two):
        async with httpx.AsyncClient(base_url=node.http_url) as http:
            assert (await http.get("/peerjs/peerjs/peers")).json() == ["alice", "bob"]
