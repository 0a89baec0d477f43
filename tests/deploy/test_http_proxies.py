"""The HTTP transport behind the proxies of the field (issue 20), raw, request by request.

Three nginx sites of tests/deploy/nginx.py in front of real relays: one that
does not pass WebSocket upgrades, one that buffers responses whatever the
relay asks (streams stall, long-polls get through), and a round-robin
balancer without stickiness over two nodes sharing a Redis.
"""

from __future__ import annotations

import uuid
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from websockets.exceptions import InvalidHandshake

from relay.httptransport.records import ENVELOPE, KEEPALIVE
from tests.cluster.processes import FAST_CLUSTER, RelayProcess
from tests.conftest import RelayFactory, RunningRelay
from tests.deploy.nginx import Nginx, proxy_site
from tests.deploy.sessions import exchange_over_a_stream, streaming
from tests.httppeer import HTTPPeer, Records, StreamReader
from tests.peers import join_as, open_peer
from tests.redis_server import free_port

pytestmark = pytest.mark.anyio

StartProxy = Callable[[str, list[str]], Nginx]


@pytest.fixture
def proxy(tmp_path: Path) -> Iterator[StartProxy]:
    """``proxy(kind, upstreams)``: one of tests/deploy/nginx.py's PROXIES, stopped at the end."""
    started: list[Nginx] = []

    def start(kind: str, upstreams: list[str]) -> Nginx:
        directory = tmp_path / f"nginx-{len(started)}"
        directory.mkdir()
        port = free_port()
        started.append(Nginx(directory, proxy_site(kind, port, upstreams), port))
        return started[-1]

    yield start
    for nginx in started:
        nginx.stop()


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=10) as client:
        yield client


def upstream(relay: RunningRelay) -> str:
    return f"127.0.0.1:{relay.port}"


# --- a proxy that does not pass WebSocket upgrades -----------------------------------


async def test_no_websocket_opens_through_the_upgrade_refusing_proxy(
    relay: RunningRelay, proxy: StartProxy
) -> None:
    nginx = proxy("upgrade-refusing", [upstream(relay)])
    with pytest.raises(InvalidHandshake):
        await open_peer(nginx.url.replace("http", "ws") + relay.settings.path)
    await join_as(relay.url, "direct")  # the relay itself takes WebSockets


async def test_an_http_session_works_through_the_upgrade_refusing_proxy(
    relay: RunningRelay, proxy: StartProxy, client: httpx.AsyncClient
) -> None:
    nginx = proxy("upgrade-refusing", [upstream(relay)])
    bob = await join_as(relay.url, "bob")
    async with anyio.create_task_group() as tasks:
        alice, stream = await streaming(
            nginx.url + relay.settings.http_path, client, tasks, "alice"
        )
        await exchange_over_a_stream(alice, stream, bob)
        # A cut stream opened again through the proxy goes on where it was.
        stream.scope.cancel()
        await bob.send({"type": "send", "to": "alice", "d": "while cut", "id": 5})
        again = StreamReader(alice)
        tasks.start_soon(again.run)
        await again.envelope(type="msg", d="while cut")
        await alice.ack()
        await bob.expect(type="ok", id=5)
        again.scope.cancel()


# --- a proxy that buffers ------------------------------------------------------------


async def first_record_within(
    client: httpx.AsyncClient, peer: HTTPPeer, seconds: float
) -> tuple[int, Any] | None:
    """The first record of a stream opened for ``peer``, if one comes within ``seconds``."""
    parser = Records()
    with anyio.move_on_after(seconds):
        async with client.stream("POST", f"{peer.base}/stream", headers=peer.headers()) as response:
            async for chunk in response.aiter_bytes():  # gunzipped, as browsers do
                records = parser.feed(chunk)
                if records:
                    return records[0]
    return None


async def test_the_buffering_proxy_holds_the_stream_back(
    relay: RunningRelay, proxy: StartProxy, client: httpx.AsyncClient
) -> None:
    buffering = proxy("buffering", [upstream(relay)])
    passing = proxy("upgrade-refusing", [upstream(relay)])
    held = HTTPPeer(client, buffering.url + relay.settings.http_path)
    assert (await held.open()).status_code == 200
    # Clients give a stream 3 s for its first record (the keepalive sent at once).
    assert await first_record_within(client, held, 3.0) is None
    passed = HTTPPeer(client, passing.url + relay.settings.http_path)
    assert (await passed.open()).status_code == 200
    assert await first_record_within(client, passed, 3.0) == (KEEPALIVE, None)


async def polled_envelopes(peer: HTTPPeer, count: int) -> list[dict[str, Any]]:
    """The next ``count`` envelopes, by long-polls, reporting each poll's as received."""
    envelopes: list[dict[str, Any]] = []
    with anyio.fail_after(10):
        while len(envelopes) < count:
            envelopes += [value for kind, value in await peer.poll() if kind == ENVELOPE]
    assert len(envelopes) == count, envelopes
    return envelopes


async def test_long_poll_works_through_the_buffering_proxy(
    relay_factory: RelayFactory, proxy: StartProxy, client: httpx.AsyncClient
) -> None:
    relay = await relay_factory(http_poll_seconds=1.0)
    nginx = proxy("buffering", [upstream(relay)])
    bob = await join_as(relay.url, "bob")
    alice = HTTPPeer(client, nginx.url + relay.settings.http_path)
    assert (await alice.open()).status_code == 200
    assert (await alice.send({"type": "hello", "id": "alice"})).status_code == 204
    [welcome] = await polled_envelopes(alice, 1)
    assert welcome["type"] == "welcome"

    await alice.send({"type": "send", "to": "bob", "d": b"\x00hi", "id": 1})
    await bob.expect(type="msg", **{"from": "alice", "d": b"\x00hi"})
    assert await polled_envelopes(alice, 1) == [{"type": "ok", "id": 1}]
    await bob.send({"type": "send", "to": "alice", "d": {"n": 1}, "id": 2})
    [message] = await polled_envelopes(alice, 1)
    assert (message["type"], message["from"], message["d"]) == ("msg", "bob", {"n": 1})
    await alice.ack()
    await bob.expect(type="ok", id=2)
    await alice.send({"type": "join", "room": "r", "id": 3})
    assert await polled_envelopes(alice, 1) == [{"type": "ok", "id": 3}]
    await bob.send({"type": "pub", "room": "r", "d": 7})
    [published] = await polled_envelopes(alice, 1)
    assert (published["room"], published["d"]) == ("r", 7)
    await alice.send({"type": "send", "to": "nobody", "d": 1, "id": 4})
    [refused] = await polled_envelopes(alice, 1)
    assert (refused["type"], refused["code"], refused["id"]) == ("err", "peer-offline", 4)
    polls = [r for r in nginx.requests() if r[1] == relay.settings.http_path + "/poll"]
    assert len(polls) >= 6 and all(r[2] == "200" for r in polls)


# --- two nodes over Redis, round-robin without stickiness ----------------------------


@pytest.fixture
def two_nodes(redis_url: str) -> Iterator[list[RelayProcess]]:
    common = ("--broker", redis_url, "--redis-prefix", f"proxies-{uuid.uuid4().hex[:8]}")
    nodes = [RelayProcess(*common, "--node-id", f"node-{n}", *FAST_CLUSTER) for n in (1, 2)]
    try:
        for node in nodes:
            node.wait_ready()
        yield nodes
    finally:
        for node in nodes:
            node.stop()


def address(node: RelayProcess) -> str:
    return node.url.split("/")[2]


async def test_stream_on_one_node_every_post_on_the_other_under_a_burst(
    two_nodes: list[RelayProcess], client: httpx.AsyncClient
) -> None:
    one, other = two_nodes
    bob = await join_as(other.url, "bob")
    async with anyio.create_task_group() as tasks:
        alice, stream = await streaming(one.http_url + "/v1/http", client, tasks, "alice")
        alice.base = other.http_url + "/v1/http"  # the stream stays on node 1

        async def bob_bursts() -> None:
            for n in range(100):
                await bob.send({"type": "send", "to": "alice", "d": n, "id": f"b{n}"})

        tasks.start_soon(bob_bursts)
        requests: dict[int, str] = {}  # id -> the answer expected
        n = 0
        for size in [1, 5, 2, 7, 3, 1, 10, 4] * 5:  # batches of several sizes, back to back
            batch = []
            for _ in range(size):
                if n % 10 == 9:
                    batch.append({"type": "send", "to": "nobody", "d": n, "id": n})
                    requests[n] = "err"
                else:
                    batch.append({"type": "send", "to": "bob", "d": n, "id": n})
                    requests[n] = "ok"
                n += 1
            assert (await alice.send(*batch)).status_code == 204

        answers: Counter[tuple[str, int]] = Counter()
        from_bob: list[int] = []
        while sum(answers.values()) < len(requests) or len(from_bob) < 100:
            envelope = await stream.envelope()
            if envelope["type"] == "msg":
                from_bob.append(envelope["d"])
            else:
                answers[envelope["type"], envelope["id"]] += 1
        assert answers == Counter({(kind, i): 1 for i, kind in requests.items()})
        assert from_bob == list(range(100)), "in order, each once"

        await alice.ack()
        bob_answers: Counter[str] = Counter()
        received: list[int] = []
        while len(bob_answers) < 100 or len(received) < len(requests) - len(requests) // 10:
            envelope = await bob.recv()
            if envelope["type"] == "msg":
                received.append(envelope["d"])
            else:
                assert envelope["type"] == "ok", envelope
                bob_answers[envelope["id"]] += 1
        assert received == [i for i, kind in requests.items() if kind == "ok"]
        assert bob_answers == Counter({f"b{n}": 1 for n in range(100)})

        # Nothing more: a ping answered after it all finds no late second answer before it.
        await alice.send({"type": "ping", "id": "last"})
        assert await stream.envelope() == {"type": "pong", "id": "last"}
        await bob.send({"type": "ping", "id": "last"})
        await bob.expect(type="pong", id="last")
        stream.scope.cancel()
    await bob.close()


async def test_a_session_through_a_round_robin_proxy(
    two_nodes: list[RelayProcess], proxy: StartProxy, client: httpx.AsyncClient
) -> None:
    nginx = proxy("round-robin", [address(node) for node in two_nodes])
    bob = await join_as(two_nodes[0].url, "bob")
    async with anyio.create_task_group() as tasks:
        alice, stream = await streaming(nginx.url + "/v1/http", client, tasks, "alice")
        await exchange_over_a_stream(alice, stream, bob)
        stream.scope.cancel()
    await bob.close()
    posts = [r for r in nginx.requests() if r[1] in ("/v1/http/send", "/v1/http/ack")]
    assert len(posts) == 5 and all(r[2] == "204" for r in posts)
    assert {r[3] for r in posts} == {address(node) for node in two_nodes}, "both nodes answered"


# --- what a proxy's address costs the HTTP transport ---------------------------------


async def test_http_sessions_through_a_proxy_are_not_capped_as_pending_connections(
    relay_factory: RelayFactory, proxy: StartProxy
) -> None:
    # Every request comes from the proxy's address; here it is not exempt, as nginx's in a
    # container network is not (deploy/compose.yaml). WebSockets from one address get past
    # max_pending_per_ip, since an upgraded socket leaves the pending count...
    relay = await relay_factory(admission_exempt=(), max_pending_per_ip=4)
    sockets = [await join_as(relay.url, f"ws{n}") for n in range(6)]
    # ... and so should HTTP sessions, each one connection toward the admission caps.
    nginx = proxy("upgrade-refusing", [upstream(relay)])
    async with httpx.AsyncClient(timeout=10) as client, anyio.create_task_group() as tasks:
        for n in range(6):
            await streaming(nginx.url + relay.settings.http_path, client, tasks, f"http{n}")
        tasks.cancel_scope.cancel()
    for socket in sockets:
        await socket.close()
