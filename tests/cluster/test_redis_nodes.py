"""Several relay processes over a real redis-server: what a deployment sees.

Each test starts its nodes as ``python -m relay serve`` processes with a key
prefix of its own; the tests that kill Redis get a redis-server of their own.
"""

from __future__ import annotations

import itertools
import secrets
import time
from collections.abc import AsyncIterator, Iterator

import anyio
import httpx
import msgpack
import pytest
import redis.asyncio as aioredis

from tests.cluster.processes import FAST_CLUSTER, RelayProcess
from tests.peers import RawPeer, join_as, open_peer
from tests.redis_server import RedisServer

pytestmark = pytest.mark.anyio

LEASE = 2.0  # --node-lease-seconds in FAST_CLUSTER
HEARTBEAT = 0.25


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


async def readyz(node: RelayProcess) -> int:
    async with httpx.AsyncClient() as client:
        response = await client.get(f"{node.http_url}/readyz", timeout=2)
        return response.status_code


async def _is_status(node: RelayProcess, status: int) -> bool:
    return await readyz(node) == status


async def test_send_pub_presence_and_order_across_processes(redis_url: str, nodes: Nodes) -> None:
    a, b, c = await nodes.start(redis_url, "a", "b", "c")
    alice = await join_as(a.url, "alice")
    bob = await join_as(b.url, "bob")
    carol = await join_as(c.url, "carol")
    assert bob.welcome["node"] == "b"
    for n in range(300):
        await alice.send({"type": "send", "to": "bob", "d": n, "id": n})
    assert [(await alice.recv())["type"] for _ in range(300)] == ["ok"] * 300
    assert [(await bob.recv())["d"] for _ in range(300)] == list(range(300))

    await alice.send({"type": "send", "to": ["bob", "carol", "nobody"], "d": b"\x00", "id": "m"})
    err = await alice.expect(type="err", code="peer-offline", id="m")
    assert err["to"] == ["nobody"]
    await bob.expect(type="msg", d=b"\x00", **{"from": "alice"})
    await carol.expect(type="msg", d=b"\x00", **{"from": "alice"})

    for peer in (alice, bob):
        await peer.send({"type": "join", "room": "lobby", "presence": True, "id": 1})
        await peer.expect(type="presence", room="lobby")
        await peer.expect(type="ok", id=1)
    await alice.expect(type="presence", peer="bob", event="join")
    await carol.request({"type": "join", "room": "lobby", "id": 2})
    await alice.expect(type="presence", peer="carol", event="join")
    await bob.expect(type="presence", peer="carol", event="join")
    await carol.send({"type": "pub", "room": "lobby", "d": {"hi": 1}, "id": 3})
    await carol.expect(type="ok", id=3)
    await alice.expect(type="msg", d={"hi": 1}, room="lobby", **{"from": "carol"})
    await bob.expect(type="msg", d={"hi": 1}, room="lobby", **{"from": "carol"})
    await carol.close()
    await alice.expect(type="presence", peer="carol", event="leave")
    await bob.expect(type="presence", peer="carol", event="leave")


async def test_ids_takeover_and_resume_across_processes(redis_url: str, nodes: Nodes) -> None:
    a, b = await nodes.start(redis_url, "a", "b")
    bob = await join_as(a.url, "bob")
    await bob.request({"type": "join", "room": "r", "id": 1})
    impostor = await open_peer(b.url)
    await impostor.send({"type": "hello", "id": "bob"})
    await impostor.expect(type="err", code="id-taken")
    assert await impostor.closed() == 4502

    alice = await join_as(a.url, "alice")
    secret = bob.welcome["resume"]
    await bob.close(4000)  # the link drops: bob stays resumable
    await alice.send({"type": "send", "to": "bob", "d": "queued", "id": 1})
    # queued, or written to bob's dying socket if a's hub has not seen the
    # close yet: either way the resume below brings it (queue or replay).
    await alice.expect(type="ok", id=1)
    moved = await join_as(b.url, "bob", resume=secret, received=1)
    assert moved.welcome["resumed"] is True and moved.welcome["node"] == "b"
    await moved.expect(type="msg", d="queued")
    await alice.request({"type": "pub", "room": "r", "d": "room", "id": 2})
    await moved.expect(type="msg", d="room", room="r")

    # takeover while connected: the session on b is replaced
    back = await join_as(a.url, "bob", resume=moved.welcome["resume"], received=2)
    assert back.welcome["node"] == "a"
    assert await moved.closed() == 4503
    await alice.request({"type": "send", "to": "bob", "d": "home", "id": 3})
    await back.expect(type="msg", d="home")


async def test_a_killed_node_leaves_the_cluster_within_the_lease(
    redis_url: str, nodes: Nodes
) -> None:
    a, b, c = await nodes.start(redis_url, "a", "b", "c")
    alice = await join_as(a.url, "alice")
    carol = await join_as(c.url, "carol")
    bob = await join_as(b.url, "bob")
    for peer in (alice, carol, bob):
        await peer.request({"type": "join", "room": "r", "presence": True})
    await alice.expect(type="presence", peer="carol", event="join")
    await alice.expect(type="presence", peer="bob", event="join")
    await carol.expect(type="presence", peer="bob", event="join")

    b.kill()
    killed = time.monotonic()
    # A send to a peer of the dead node is refused, not lost.
    await alice.send({"type": "send", "to": "bob", "d": "x", "id": 1})
    await alice.expect(type="err", code="peer-offline", id=1)
    # Presence leave reaches both survivors within the lease (plus a heartbeat).
    bound = LEASE + 2 * HEARTBEAT + 1.0
    with anyio.fail_after(bound):
        await _until_presence(alice, "bob", "leave")
        await _until_presence(carol, "bob", "leave")
    assert time.monotonic() - killed < bound
    # And the id is free again anywhere.
    again = await join_as(c.url, "bob")
    assert again.welcome["node"] == "c"
    await alice.request({"type": "send", "to": "bob", "d": "y", "id": 2})
    await again.expect(type="msg", d="y")


async def _until_presence(peer: RawPeer, who: str, event: str) -> None:
    while True:
        envelope = await peer.recv()
        if envelope.get("type") == "presence" and (envelope["peer"], envelope["event"]) == (
            who,
            event,
        ):
            return


async def test_redis_restart_mid_traffic(own_redis: RedisServer, nodes: Nodes) -> None:
    a, b = await nodes.start(own_redis.url, "a", "b")
    alice = await join_as(a.url, "alice")
    amy = await join_as(a.url, "amy")
    bob = await join_as(b.url, "bob")
    await bob.request({"type": "join", "room": "r", "id": 0})
    await alice.request({"type": "send", "to": "bob", "d": "before", "id": 1})
    await bob.expect(type="msg", d="before")
    assert await readyz(a) == 200

    own_redis.kill()
    # Cross-node: a clear err, promptly; same node: still routed.
    started = time.monotonic()
    await alice.send({"type": "send", "to": "bob", "d": "during", "id": 2})
    await alice.expect(type="err", code="overloaded", id=2)
    assert time.monotonic() - started < 2.0
    await alice.request({"type": "send", "to": "amy", "d": "local", "id": 3})
    await amy.expect(type="msg", d="local")
    with anyio.fail_after(5):
        # Polling: readiness has no event to wait on from outside.
        for _attempt in itertools.count():
            if await _is_status(a, 503):
                break
            await anyio.sleep(0.1)
    newcomer = await open_peer(b.url)
    await newcomer.send({"type": "hello", "id": "nina"})
    await newcomer.expect(type="err", code="overloaded")
    assert await newcomer.closed() == 1013

    own_redis.start()  # same port, empty: the nodes must register everything again
    restarted = time.monotonic()
    recovery = 10.0
    with anyio.fail_after(recovery):
        # Polling: keep sending until the backplane carries it again.
        n = 100
        while True:
            n += 1
            await alice.send({"type": "send", "to": "bob", "d": n, "id": n})
            reply = await alice.recv()
            if reply["type"] == "ok":
                break
            await anyio.sleep(0.2)
    assert time.monotonic() - restarted < recovery
    assert (await bob.recv())["d"] == n
    assert await readyz(a) == 200 and await readyz(b) == 200
    # bob's room membership was registered again too
    await alice.request({"type": "pub", "room": "r", "d": "room", "id": 9})
    await bob.expect(type="msg", d="room", room="r")
    # and the id is still held once in the cluster
    impostor = await open_peer(a.url)
    await impostor.send({"type": "hello", "id": "bob"})
    await impostor.expect(type="err", code="id-taken")


async def test_what_changed_during_a_blip_is_put_right(
    own_redis: RedisServer, nodes: Nodes
) -> None:
    a, b = await nodes.start(own_redis.url, "a", "b")
    alice = await join_as(a.url, "alice")
    await alice.request({"type": "join", "room": "r", "presence": True, "id": 1})
    await alice.expect(type="ok", id=1)
    bob = await join_as(b.url, "bob")
    await bob.request({"type": "join", "room": "r", "id": 1})
    await alice.expect(type="presence", peer="bob", event="join")

    own_redis.pause()  # unreachable, but its data survives
    try:
        with anyio.fail_after(5):
            # Polling: readiness has no event to wait on from outside.
            for _attempt in itertools.count():
                if await _is_status(b, 503):
                    break
                await anyio.sleep(0.1)
        await bob.close()  # b cannot tell Redis that bob left
        assert await bob.closed() == 1000
    finally:
        own_redis.resume()
    with anyio.fail_after(10):
        await _until_presence(alice, "bob", "leave")
    with anyio.fail_after(5):
        # Polling: a hears the leave once subscribed, a moment before it is ready.
        for _attempt in itertools.count():
            if await _is_status(a, 200):
                break
            await anyio.sleep(0.1)
    again = await join_as(a.url, "bob")  # the id was freed too
    assert again.welcome["node"] == "a"


async def test_malformed_backplane_messages_are_dropped(redis_url: str, nodes: Nodes) -> None:
    a, b = await nodes.start(redis_url, "a", "b")
    alice = await join_as(a.url, "alice")
    bob = await join_as(b.url, "bob")
    client = aioredis.Redis.from_url(redis_url)
    try:
        channel = f"{nodes.prefix}:node:b"
        for junk in (
            b"",
            b"\xc1",
            msgpack.packb([1, 2]),
            msgpack.packb({"t": "d", "p": "bob", "f": "not bytes"}),
            msgpack.packb({"t": "d", "p": "bob", "f": b"x", "u": ["a", 1.5, True]}),
            msgpack.packb({"t": "hr", "c": "x", "h": {"rooms": {"r": 1}}}),
            msgpack.packb({"t": "zz"}),
            b"\xdd\xff\xff\xff\xff",
        ):
            assert await client.publish(channel, junk) == 1
    finally:
        await client.aclose()
    await alice.request({"type": "send", "to": "bob", "d": "still here", "id": 1})
    await bob.expect(type="msg", d="still here")
    assert "malformed" in b.output()


async def test_workers_serve_one_port_and_drain(redis_url: str, nodes: Nodes) -> None:
    (server,) = await nodes.start(redis_url, "w", extra=("--workers", "2"))
    peers = [await join_as(server.url, f"p{n}") for n in range(8)]
    served_by = {peer.welcome["node"] for peer in peers}
    assert all(node.startswith("w-") for node in served_by)
    for n, peer in enumerate(peers):
        target = peers[(n + 1) % len(peers)]
        await peer.send({"type": "send", "to": target.id, "d": n, "id": n})
    for n, peer in enumerate(peers):
        got = sorted([await peer.recv(), await peer.recv()], key=lambda e: str(e["type"]))
        assert [e["type"] for e in got] == ["msg", "ok"]
        assert got[0]["d"] == (n - 1) % len(peers)
    assert await anyio.to_thread.run_sync(server.terminate) == 0
    for peer in peers:
        assert await peer.closed() == 1001


def test_workers_refuse_the_memory_broker() -> None:
    proc = RelayProcess("--workers", "2")
    assert proc.process.wait(30) == 2
    assert "needs a shared broker" in proc.output()
    proc.stop()
