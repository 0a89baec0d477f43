"""PeerJS peers on different nodes of a cluster, once per broker (memory, and Redis)."""

from __future__ import annotations

from collections.abc import Iterator

import anyio
import httpx
import pytest

from relay.broker import create_broker
from relay.peerjs.protocol import NAMESPACE
from relay.settings import Settings
from tests.cluster.conftest import REDIS_TEST_SETTINGS, Cluster
from tests.conftest import RelayFactory
from tests.peerjs.client import join_peerjs, open_peerjs, peerjs_url, until
from tests.redis_server import RedisServer

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
    # another token, or the same one from another node: ID-TAKEN either way
    for token in ("second", "first"):
        thief = await open_peerjs(peerjs_url(two, id="bob", token=token))
        received, code = await thief.drain()
        assert [m["type"] for m in received] == ["ID-TAKEN"] and code == 4502


async def test_discovery_lists_the_peers_of_every_node(cluster: Cluster) -> None:
    one, two = await cluster(2, peerjs_discovery=True)
    await join_peerjs(one, "alice")
    await join_peerjs(two, "bob")
    for node in (one, two):
        async with httpx.AsyncClient(base_url=node.http_url) as http:
            assert (await http.get("/peerjs/peerjs/peers")).json() == ["alice", "bob"]


async def test_a_draining_node_frees_its_peerjs_ids_for_the_others(cluster: Cluster) -> None:
    one, two = await cluster(2)
    alice = await join_peerjs(one, "alice", token="alices")
    async with anyio.create_task_group() as tasks:
        tasks.start_soon(one.hub.drain, 5.0)
        assert (await alice.drain())[1] == 1001
        # the draining node frees the id one backplane round trip after the
        # socket closed, not to be raced by a reconnect (no event announces it)
        with anyio.fail_after(5):
            while await two.hub.broker.locate(NAMESPACE + "alice") is not None:  # noqa: ASYNC110
                await anyio.sleep(0.01)
    # what peer.reconnect() does: the same id and token, to a node still serving
    again = await join_peerjs(two, "alice", token="alices")
    await again.send({"type": "OFFER", "dst": "alice", "payload": OFFER})
    await again.expect(type="OFFER", src="alice")


@pytest.fixture
def own_redis() -> Iterator[RedisServer]:
    server = RedisServer()
    server.start()
    try:
        yield server
    finally:
        server.stop()


async def test_messages_wait_out_a_backplane_outage(
    relay_factory: RelayFactory, own_redis: RedisServer
) -> None:
    settings = Settings(redis_prefix="peerjs", **REDIS_TEST_SETTINGS)  # type: ignore[arg-type]
    one, two = [
        await relay_factory(
            broker=create_broker(own_redis.url, settings),
            node_id=name,
            peerjs_expire_seconds=30,
            **REDIS_TEST_SETTINGS,
        )
        for name in ("one", "two")
    ]
    alice = await join_peerjs(one, "alice")
    bob = await join_peerjs(two, "bob")
    own_redis.kill()
    await until(lambda: not one.hub.broker.ready and not two.hub.broker.ready)
    await alice.send({"type": "OFFER", "dst": "bob", "payload": OFFER})
    newcomer = await open_peerjs(peerjs_url(two, id="carol", token="t"))
    received, code = await newcomer.drain()
    assert [m["type"] for m in received] == ["ERROR"] and code == 1013
    own_redis.start()  # same port, empty: the nodes register everything again
    with anyio.fail_after(15):
        await bob.expect(type="OFFER", src="alice", payload=OFFER)
