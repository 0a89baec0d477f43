"""The HTTP transport without sticky sessions: any node takes any request of any session.

The session lives on the node that opened it; a stream or POST that lands
on another node is forwarded there over the broker (docs/protocol-http.md).
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import anyio
import httpx
import pytest

from relay.httptransport.endpoint import MAX_FORWARDED_READERS
from tests.cluster.conftest import Cluster
from tests.conftest import RunningRelay
from tests.httppeer import HTTPPeer, StreamReader
from tests.peers import join_as

pytestmark = pytest.mark.anyio

BURST = 200


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=10) as client:
        yield client


def via(peer: HTTPPeer, relay: RunningRelay) -> HTTPPeer:
    """The same session, its requests sent to ``relay``."""
    other = HTTPPeer(peer.client, relay.http_url + relay.settings.http_path)
    other.secret = peer.secret
    return other


async def test_stream_on_one_node_posts_on_the_other_keep_order_and_one_answer_each(
    cluster: Cluster, client: httpx.AsyncClient
) -> None:
    holder, other = await cluster(2)
    bob = await join_as(holder.url, "bob")
    alice = HTTPPeer(client, holder.http_url + holder.settings.http_path)
    assert (await alice.open()).status_code == 200
    assert alice.secret in holder.app.state.http.sessions
    poster = via(alice, other)
    async with anyio.create_task_group() as tasks:
        stream = StreamReader(via(alice, other))
        tasks.start_soon(stream.run)
        assert (await poster.send({"type": "hello", "id": "alice"})).status_code == 204
        await stream.envelope(type="welcome", id="alice")
        batch = []
        for n in range(BURST):
            batch.append({"type": "send", "to": "bob", "d": n, "id": n})
            if len(batch) == 10:
                assert (await poster.send(*batch)).status_code == 204
                batch = []
        got = [(await bob.expect(type="msg", **{"from": "alice"}))["d"] for _ in range(BURST)]
        assert got == list(range(BURST))
        answers = [await stream.envelope() for _ in range(BURST)]
        assert sorted(answer["id"] for answer in answers) == list(range(BURST))
        assert {answer["type"] for answer in answers} == {"ok"}

        # And the other way: bob's burst reaches alice's forwarded stream in order,
        # each acknowledged ok once alice reports it through the other node.
        for n in range(BURST):
            await bob.send({"type": "send", "to": "alice", "d": n, "id": n})
        got = [(await stream.envelope(type="msg"))["d"] for _ in range(BURST)]
        assert got == list(range(BURST))
        poster.received = stream.peer.received
        assert (await poster.ack()).status_code == 204
        oks = [await bob.expect(type="ok") for _ in range(BURST)]
        assert sorted(ok["id"] for ok in oks) == list(range(BURST))
        stream.scope.cancel()
    await bob.close()


async def test_a_batch_resent_to_another_node_is_read_once(
    cluster: Cluster, client: httpx.AsyncClient
) -> None:
    holder, other = await cluster(2)
    alice = HTTPPeer(client, holder.http_url + holder.settings.http_path)
    await alice.open()
    async with anyio.create_task_group() as tasks:
        stream = StreamReader(alice)
        tasks.start_soon(stream.run)
        await alice.send({"type": "hello", "id": "alice"})
        await stream.envelope(type="welcome")
        assert (await alice.send({"type": "ping", "id": 1})).status_code == 204
        again = via(alice, other)
        assert (await again.send({"type": "ping", "id": 1}, seq=2)).status_code == 204
        assert (await again.send({"type": "ping", "id": 2}, seq=3)).status_code == 204
        assert (await again.send({"type": "ping", "id": 9}, seq=1)).status_code == 409
        await stream.envelope(type="pong", id=1)
        await stream.envelope(type="pong", id=2)
        stream.scope.cancel()


async def test_a_session_whose_node_is_gone_is_unknown_elsewhere(
    cluster: Cluster, client: httpx.AsyncClient
) -> None:
    holder, other = await cluster(2)
    alice = HTTPPeer(client, holder.http_url + holder.settings.http_path)
    await alice.open()
    holder.server.should_exit = True
    with anyio.fail_after(10):
        while True:  # polled: the broker says a node is gone only when asked
            status = (await via(alice, other).ack()).status_code
            if status == 404:
                break
            assert status in (204, 503)  # not gone yet, or going
            await anyio.sleep(0.1)


async def test_a_node_forwards_a_bounded_number_of_readers(
    cluster: Cluster, client: httpx.AsyncClient
) -> None:
    assert MAX_FORWARDED_READERS == 512  # as docs/protocol-http.md says
    holder, other = await cluster(2)
    alice = HTTPPeer(client, holder.http_url + holder.settings.http_path)
    await alice.open()
    endpoint = other.app.state.http
    endpoint.forwarded_readers = MAX_FORWARDED_READERS  # as if that many were held
    refused = await client.post(
        other.http_url + other.settings.http_path + "/poll", headers=alice.headers()
    )
    assert refused.status_code == 503
    assert refused.headers["retry-after"] == "1"
    endpoint.forwarded_readers = 0
    async with anyio.create_task_group() as tasks:
        stream = StreamReader(via(alice, other))
        tasks.start_soon(stream.run)
        await stream.next(skip_keepalives=False)  # the stream opened: one reader forwarded
        assert endpoint.forwarded_readers == 1
        stream.scope.cancel()
