"""relay_client over the HTTP transport (docs/protocol-http.md) against a real relay:
the same API and guarantees as on a WebSocket, a cut stream, long-poll behind a
buffering proxy, and the fallback from a WebSocket that never opens."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING

import anyio
import pytest
import relay_client
from relay_client import Ack, State

from tests.clients.python.conftest import ProxyFactory, RelayProcess, started_proxies
from tests.clients.python.httpproxy import HttpProxy
from tests.clients.python.reconnecting import FAST, States, recv, wait
from tests.cluster.conftest import redis_broker_factory

if TYPE_CHECKING:
    from tests.conftest import RelayFactory, RunningRelay

pytestmark = pytest.mark.anyio

HTTP = {"transports": ["http"]}

HttpProxyFactory = Callable[["RunningRelay"], Awaitable[HttpProxy]]


@pytest.fixture
async def http_proxy_factory() -> AsyncIterator[HttpProxyFactory]:
    async with started_proxies(lambda relay: HttpProxy(relay.port)) as start:
        yield start


async def test_an_http_peer_registers_and_talks_with_a_websocket_peer(
    relay: RunningRelay,
) -> None:
    async with (
        relay_client.connect(relay.url, id="alice") as alice,
        relay_client.connect(relay.url, id="bob", **HTTP) as bob,
    ):
        assert (alice.transport, bob.transport) == ("websocket", "http")
        assert bob.id == "bob" and bob.connected and bob.welcome is not None
        assert bob.limits["max_frame_bytes"] == relay.settings.max_frame_bytes
        ack = await alice.send("bob", "to http", ev="chat")  # ok: bob reported it received
        assert ack == Ack(ack.id, queued=False)
        msg = await recv(bob)
        assert (msg.sender, msg.data, msg.ev) == ("alice", "to http", "chat")
        assert (await bob.send("alice", b"\x00to ws")).queued is False
        assert (await recv(alice)).data == b"\x00to ws"


async def test_rooms_ok_and_err_over_http(relay: RunningRelay) -> None:
    async with (
        relay_client.connect(relay.url, id="alice") as alice,
        relay_client.connect(relay.url, id="bob", **HTTP) as bob,
    ):
        await bob.join("lobby")
        await alice.join("lobby")
        assert bob.rooms == {"lobby"}
        await alice.publish("lobby", "hi room")
        assert (await recv(bob)).room == "lobby"
        await bob.publish("lobby", "from http")
        assert (await recv(alice)).data == "from http"
        with pytest.raises(relay_client.PeerOffline):
            await bob.send("ghost", "x")
        with pytest.raises(relay_client.BadEnvelope):
            await bob.join("")
        alice.on_request("time", lambda msg: "noon")
        assert await bob.request("alice", ev="time") == "noon"
        assert await bob.ping() > 0


async def test_many_sends_keep_their_order_across_batches(relay: RunningRelay) -> None:
    async with (
        relay_client.connect(relay.url, id="alice") as alice,
        relay_client.connect(relay.url, id="bob", pace=False, **HTTP) as bob,
    ):
        # Sent without waiting: they leave in batches while a POST is in flight.
        for n in range(200):
            await bob.send("alice", n, ack=False)
        await bob.send("alice", "end")
        got = [(await recv(alice)).data for _ in range(201)]
        assert got == [*range(200), "end"]


async def test_sends_over_a_batch_s_bound_are_split_in_order(
    relay: RunningRelay, http_proxy_factory: HttpProxyFactory
) -> None:
    proxy = await http_proxy_factory(relay)
    async with (
        relay_client.connect(relay.url, id="alice") as alice,
        relay_client.connect(proxy.url(), id="bob", pace=False, **HTTP) as bob,
    ):
        for n in range(30):  # 30 x 30 kB: more than 3 batches of 256 KiB
            await bob.send("alice", bytes([n]) * 30_000, ack=False)
        await bob.send("alice", "end")
        got = [(await recv(alice)).data for _ in range(31)]
        assert got == [bytes([n]) * 30_000 for n in range(30)] + ["end"]
        assert proxy.count("send") >= 5  # hello, >= 4 for the burst


async def test_a_cut_stream_is_reopened_and_nothing_is_lost(
    relay: RunningRelay, http_proxy_factory: HttpProxyFactory
) -> None:
    proxy = await http_proxy_factory(relay)
    async with (
        relay_client.connect(relay.url, id="alice") as alice,
        relay_client.connect(proxy.url(), id="bob", **HTTP) as bob,
    ):
        expected: list[object] = []
        with anyio.fail_after(20):
            await _cut_three_times(alice, proxy, expected)
        received = [(await recv(bob)).data for _ in expected]
        assert received == expected
        assert proxy.count("stream") >= 4 and proxy.count("open") == 1
        assert bob.sessions == 1 and bob.state is State.CONNECTED  # the session never ended
        await alice.send("bob", "last")
        assert (await recv(bob)).data == "last"  # no copy of an earlier one came before it
        await bob.send("alice", "still here")
        assert (await recv(alice)).data == "still here"


async def _cut_three_times(
    alice: relay_client.Peer, proxy: HttpProxy, expected: list[object]
) -> None:
    for cut in range(3):
        for n in range(20 * cut, 20 * cut + 20):
            await alice.send("bob", n, ack=False)
        proxy.sever()  # the stream (records on their way in it) and any POST in flight
        await alice.send("bob", f"cut {cut}")  # ok once bob's reopened stream passed it
        expected += [*range(20 * cut, 20 * cut + 20), f"cut {cut}"]


async def test_long_poll_takes_over_behind_a_buffering_proxy(
    relay: RunningRelay, http_proxy_factory: HttpProxyFactory
) -> None:
    proxy = await http_proxy_factory(relay)
    proxy.buffer_streams = True
    async with (
        relay_client.connect(relay.url, id="alice") as alice,
        relay_client.connect(proxy.url(), id="bob", **HTTP) as bob,
    ):
        # The welcome itself came by poll, once the stream stayed silent for 3 s.
        assert bob.connected and proxy.count("poll") >= 1
        await alice.send("bob", "polled")
        assert (await recv(bob)).data == "polled"
        await bob.join("lobby")
        await alice.join("lobby")
        await alice.publish("lobby", "room via poll")
        assert (await recv(bob)).data == "room via poll"
        await bob.send("alice", "from a poller")
        assert (await recv(alice)).data == "from a poller"
        assert proxy.count("stream") == 1


async def test_default_options_fall_back_when_the_upgrade_is_stripped(
    relay: RunningRelay, http_proxy_factory: HttpProxyFactory
) -> None:
    proxy = await http_proxy_factory(relay)
    proxy.strip_upgrade = True
    async with (
        relay_client.connect(relay.url, id="alice") as alice,
        relay_client.connect(proxy.url(), id="bob", **FAST) as bob,
    ):
        assert bob.transport == "http" and proxy.count("ws") == 1
        await alice.send("bob", "over the fallback")
        assert (await recv(bob)).data == "over the fallback"
        await bob.join("lobby")
        # The next full reconnect tries the WebSocket first again.
        proxy.strip_upgrade = False
        states = States(bob)
        back = states.expect(State.CONNECTED)
        await relay.hub.disconnect("bob", code=1001, reason="test")
        await wait(back)
        assert bob.transport == "websocket" and bob.resumed and proxy.count("ws") == 2
        await alice.join("lobby")
        await alice.publish("lobby", "over the websocket")
        assert (await recv(bob)).data == "over the websocket"


async def test_falls_back_to_the_given_http_url_when_the_upgrade_is_refused(
    relay: RunningRelay,
) -> None:
    http_url = relay.http_url + relay.settings.http_path
    url = relay.url.replace("/v1/ws", "/nowhere")
    async with relay_client.connect(url, id="bob", http_url=http_url) as bob:
        assert bob.transport == "http"
        assert await bob.ping() > 0


async def test_resumes_over_http_after_the_relay_closes_the_session(relay: RunningRelay) -> None:
    async with (
        relay_client.connect(relay.url, id="alice") as alice,
        relay_client.connect(relay.url, id="bob", **HTTP, **FAST) as bob,
    ):
        await bob.join("lobby")
        states = States(bob)
        back = states.expect(State.CONNECTED)
        await relay.hub.disconnect("bob", code=1001, reason="test")
        await wait(back)
        assert states.seen == [State.RECONNECTING, State.CONNECTED]
        assert bob.resumed and bob.sessions == 2 and bob.transport == "http"
        await alice.publish("lobby", "after")
        assert (await recv(bob)).data == "after"


async def test_a_terminal_close_record_closes_the_peer(relay: RunningRelay) -> None:
    async with relay_client.connect(relay.url, id="bob", **HTTP) as bob:
        await relay.hub.disconnect("bob", code=4503, reason="replaced")
        with anyio.fail_after(5):
            error = await bob.wait_closed()
        assert isinstance(error, relay_client.SessionReplaced)
        assert (error.code, error.reason) == (4503, "replaced")
        assert bob.transport is None


async def test_close_ends_the_http_session_at_once(relay: RunningRelay) -> None:
    bob = await relay_client.connect(relay.url, id="bob", **HTTP)
    await bob.close()
    assert bob.closed and bob.close_error is None
    # The relay forgot bob at once, as after a WebSocket close with 1000.
    async with relay_client.connect(relay.url, id="bob", **HTTP) as again:
        assert again.id == "bob" and not again.resumed


@pytest.mark.parametrize("opened_on", ["the stream's node", "the POSTs' node"])
async def test_two_nodes_over_redis_the_stream_on_one_every_post_on_the_other(
    redis_url: str,
    relay_factory: RelayFactory,
    http_proxy_factory: HttpProxyFactory,
    opened_on: str,
) -> None:
    brokers = redis_broker_factory(redis_url)
    reads = await relay_factory(broker=brokers(), node_id="node-reads")
    posts = await relay_factory(broker=brokers(), node_id="node-posts")
    proxy = await http_proxy_factory(reads)
    opener = reads if opened_on == "the stream's node" else posts

    def route(path: str) -> int:
        if path.endswith("/open"):
            return opener.port
        return (reads if path.endswith(("/stream", "/poll")) else posts).port

    proxy.route = route
    async with (
        relay_client.connect(reads.url, id="alice") as alice,
        relay_client.connect(posts.url, id="carol") as carol,
        relay_client.connect(proxy.url(), id="bob", **HTTP) as bob,
    ):
        assert bob.transport == "http" and bob.node == opener.hub.node_id
        with anyio.fail_after(20):
            # A burst each way: one answer per request, in order.
            acks = await asyncio.gather(*(bob.send("alice", n) for n in range(100)))
            assert sorted(ack.id for ack in acks) == list(range(1, 101))
            assert [(await recv(alice)).data for _ in range(100)] == list(range(100))
            acks = await asyncio.gather(*(carol.send("bob", n) for n in range(100)))
            assert len({ack.id for ack in acks}) == 100
            assert [(await recv(bob)).data for _ in range(100)] == list(range(100))
            await bob.join("lobby")
            await alice.join("lobby")
            await carol.publish("lobby", "to both nodes")
            assert (await recv(bob)).data == (await recv(alice)).data == "to both nodes"
            with pytest.raises(relay_client.PeerOffline):
                await bob.send("ghost", "x")
        assert proxy.count("send") >= 2 and proxy.count("stream") >= 1
        assert proxy.connections == proxy.requests.total()  # each request routed on its own


async def test_a_black_holed_session_is_lost_after_the_idle_time_and_resumed(
    relay_factory: RelayFactory, proxy_factory: ProxyFactory
) -> None:
    relay = await relay_factory(
        http_keepalive_seconds=0.3, http_poll_seconds=0.3, http_idle_seconds=1.0
    )
    proxy = await proxy_factory(relay)
    async with (
        relay_client.connect(relay.url, id="alice") as alice,
        relay_client.connect(proxy.url, id="bob", open_timeout=1, **HTTP, **FAST) as bob,
    ):
        states = States(bob)
        lost = states.expect(State.RECONNECTING)
        proxy.freeze()  # no answer, no error: only the missing keepalives tell
        await wait(lost)
        back = states.expect(State.CONNECTED)
        proxy.sever()
        proxy.thaw()
        await wait(back)
        assert bob.transport == "http" and bob.sessions == 2
        await alice.send("bob", "after the black hole")
        assert (await recv(bob)).data == "after the black hole"


@pytest.mark.parametrize("node_id", [(), ("--node-id", "same")], ids=["new-id", "same-id"])
async def test_a_restarted_relay_answers_404_and_the_peer_starts_afresh(
    relay_process: Callable[..., Awaitable[RelayProcess]], node_id: tuple[str, ...]
) -> None:
    # A new node id: the session's node is gone; the same: the node no longer knows it.
    relay = await relay_process(*node_id)
    async with relay_client.connect(relay.url, id="bob", **HTTP, **FAST) as bob:
        await bob.join("lobby")
        states = States(bob)
        back = states.expect(State.CONNECTED)
        await relay.kill()
        await relay.start()  # it knows no HTTP session: the next request is answered 404
        await wait(back, 20)
        assert bob.transport == "http" and bob.sessions == 2 and not bob.resumed
        async with relay_client.connect(relay.url, id="alice") as alice:
            await alice.join("lobby")
            await alice.publish("lobby", "rejoined")
            assert (await recv(bob)).data == "rejoined"
