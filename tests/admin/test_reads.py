"""What /admin shows: nodes, a peer on any node, closes and refusals, rooms, the stream."""

from __future__ import annotations

import json
from typing import Any

import anyio
import httpx
import pytest

from relay.broker import MemoryBroker
from relay.broker.memory import MemoryCluster
from tests.admin.helpers import PASSWORD, admin_client
from tests.conftest import RelayFactory, RunningRelay
from tests.peers import join_as, open_peer

pytestmark = pytest.mark.anyio


async def two_nodes(relay_factory: RelayFactory) -> tuple[RunningRelay, RunningRelay]:
    shared = MemoryCluster()
    one = await relay_factory(broker=MemoryBroker(shared), node_id="n1", admin_password=PASSWORD)
    two = await relay_factory(broker=MemoryBroker(shared), node_id="n2", admin_password=PASSWORD)
    return one, two


async def test_the_overview_shows_every_node(relay_factory: RelayFactory) -> None:
    one, two = await two_nodes(relay_factory)
    alice = await join_as(two.url, "alice")
    await alice.request({"type": "join", "room": "r", "id": 1})
    async with admin_client(one.http_url) as client:
        nodes = (await client.get("/admin/api/overview")).json()["nodes"]
    assert [node["node"] for node in nodes] == ["n1", "n2"]
    n1, n2 = nodes
    assert (n1["connections"], n1["peers"], n1["rooms"]) == (0, 0, 0)
    assert (n2["connections"], n2["peers"], n2["rooms"]) == (1, 1, 1)
    assert n2["messages_in"] >= 2 and n2["messages_out"] >= 2  # hello, join; welcome, ok
    assert n2["backplane_up"] is True and n2["version"]


async def test_a_peer_on_another_node_is_inspected_with_its_refusals(
    relay_factory: RelayFactory,
) -> None:
    one, two = await two_nodes(relay_factory)
    alice = await join_as(two.url, "alice")
    await alice.request({"type": "join", "room": "r", "id": 1})
    refused = await alice.request({"type": "join", "room": "bad room!", "id": 2})
    assert refused["type"] == "err"
    async with admin_client(one.http_url) as client:
        state = (await client.get("/admin/api/peers/alice")).json()
        missing = await client.get("/admin/api/peers/nobody")
        bad = await client.get("/admin/api/peers/" + "x" * 500)
    assert state["node"] == "n2" and state["connected"] is True
    assert 0 <= state["connected_seconds"] < 10
    # Totals, which the page turns into rates: hello and two joins in (one refused), one err out.
    assert (state["received_envelopes"], state["errors_sent"]) == (3, 1)
    assert state["rooms"] == {"r": False}
    assert [entry["code"] for entry in state["refusals"]] == [refused["code"]]
    assert set(state["refusals"][0]) == {"at", "code"}  # never a payload or a message
    assert missing.status_code == 404
    assert bad.status_code == 400


async def test_recent_events_include_refused_hellos_cluster_wide(
    relay_factory: RelayFactory,
) -> None:
    one, two = await two_nodes(relay_factory)
    await join_as(two.url, "alice")
    taken = await open_peer(two.url)
    await taken.send({"type": "hello", "v": 1, "id": "alice"})
    assert (await taken.recv())["code"] == "id-taken"
    async with admin_client(one.http_url) as client:
        events = (await client.get("/admin/api/events")).json()["events"]
    kinds = {(event["node"], event["kind"], event["peer"], event["code"]) for event in events}
    assert ("n2", "refused", "alice", "id-taken") in kinds
    assert ("n2", "closed", None, 4502) in kinds
    times = [event["at"] for event in events]
    assert times == sorted(times, reverse=True)


async def test_room_members_come_in_bounded_pages(relay_factory: RelayFactory) -> None:
    relay = await relay_factory(admin_password=PASSWORD)
    for name in ["c", "a", "b"]:
        peer = await join_as(relay.url, name)
        await peer.request({"type": "join", "room": "r", "id": 1})
    async with admin_client(relay.http_url) as client:
        first = (await client.get("/admin/api/rooms/r?limit=2")).json()
        rest = (await client.get("/admin/api/rooms/r?offset=2&limit=2")).json()
        huge = (await client.get("/admin/api/rooms/r?limit=100000")).json()
        bad = await client.get("/admin/api/rooms/r?offset=x")
    assert (first["count"], first["members"]) == (3, ["a", "b"])
    assert rest["members"] == ["c"]
    assert huge["members"] == ["a", "b", "c"]
    assert bad.status_code == 400


async def test_a_room_page_shows_each_members_presence_on_every_node(
    relay_factory: RelayFactory,
) -> None:
    one, two = await two_nodes(relay_factory)
    alice = await join_as(one.url, "alice")
    await alice.request({"type": "join", "room": "r", "id": 1, "presence": True})
    bob = await join_as(two.url, "bob")
    await bob.request({"type": "join", "room": "r", "id": 1})
    await bob.close(4000)  # not 1000 or 1001: as a dropped link, bob may resume
    with anyio.fail_after(3):  # its node notices the link is gone and starts its window
        await two.hub._until(lambda: two.hub.peers["bob"].expiry is not None)
    async with admin_client(one.http_url) as client:
        room = (await client.get("/admin/api/rooms/r")).json()
    assert room["members"] == ["alice", "bob"]
    presence = room["presence"]
    assert presence["alice"] == {"state": "online", "seconds_left": None, "watching": True,
                                 "node": "n1"}  # fmt: skip
    assert (presence["bob"]["state"], presence["bob"]["node"]) == ("resuming", "n2")
    assert 0 < presence["bob"]["seconds_left"] <= two.settings.resume_seconds
    assert presence["bob"]["watching"] is False


async def test_reads_are_rate_limited_per_address(relay_factory: RelayFactory) -> None:
    relay = await relay_factory(admin_password=PASSWORD)
    async with admin_client(relay.http_url) as client:
        statuses = [(await client.get("/admin/api/peers/a")).status_code for _ in range(60)]
    assert 429 in statuses
    assert statuses[0] == 404


async def test_the_stream_pushes_a_new_peer_within_seconds(relay_factory: RelayFactory) -> None:
    relay = await relay_factory(admin_password=PASSWORD)
    async with (
        admin_client(relay.http_url) as client,
        client.stream("GET", "/admin/api/stream") as stream,
    ):
        assert stream.headers["content-type"].startswith("text/event-stream")
        lines = stream.aiter_lines()
        first = await anext_data(lines)
        assert first["nodes"][0]["peers"] == 0
        await join_as(relay.url, "alice")
        with anyio.fail_after(3):
            while (await anext_data(lines))["nodes"][0]["peers"] != 1:
                pass


async def test_the_stream_carries_connections_and_refusals_by_code(
    relay_factory: RelayFactory,
) -> None:
    relay = await relay_factory(admin_password=PASSWORD)
    alice = await join_as(relay.url, "alice")
    refused = await alice.request({"type": "join", "room": "bad room!", "id": 1})
    taken = await open_peer(relay.url)
    await taken.send({"type": "hello", "v": 1, "id": "alice"})
    assert (await taken.recv())["code"] == "id-taken"
    await join_as(relay.url, "bob")
    async with (
        admin_client(relay.http_url) as client,
        client.stream("GET", "/admin/api/stream") as stream,
    ):
        lines = stream.aiter_lines()
        with anyio.fail_after(3):  # the refused hello's socket is closing
            nodes: Any = (await anext_data(lines))["nodes"]
            while nodes[0]["connections"] != 2:
                nodes = (await anext_data(lines))["nodes"]
    # Totals since the node started, by code: the page plots their differences.
    assert nodes[0]["refusals"] == {refused["code"]: 1, "id-taken": 1}


async def test_the_stream_needs_credentials(relay_factory: RelayFactory) -> None:
    relay = await relay_factory(admin_password=PASSWORD)
    async with httpx.AsyncClient(base_url=relay.http_url) as client:
        assert (await client.get("/admin/api/stream")).status_code == 401


async def anext_data(lines: object) -> dict[str, object]:
    """The next ``data:`` event of a server-sent event stream."""
    async for line in lines:  # type: ignore[attr-defined]
        if line.startswith("data: "):
            data: dict[str, object] = json.loads(line.removeprefix("data: "))
            return data
    raise AssertionError("the stream ended")


async def test_the_stream_ends_when_the_node_drains(relay_factory: RelayFactory) -> None:
    relay = await relay_factory(admin_password=PASSWORD)
    async with (
        admin_client(relay.http_url) as client,
        client.stream("GET", "/admin/api/stream") as stream,
    ):
        lines = stream.aiter_lines()
        await anext_data(lines)
        await relay.hub.drain(0)
        with anyio.fail_after(3):  # an open stream would hold the node's shutdown
            async for _ in lines:
                pass


async def test_search_finds_ids_and_rooms_by_prefix_on_every_node(
    relay_factory: RelayFactory,
) -> None:
    one, two = await two_nodes(relay_factory)
    peers = []  # open till the end
    for url, name in [(one.url, "ann"), (two.url, "anna"), (two.url, "bob")]:
        peers.append(await join_as(url, name))
        await peers[-1].request({"type": "join", "room": f"an-{name}", "id": 1})
    for n in range(25):
        peers.append(await join_as(two.url, f"x{n:02}"))
    async with admin_client(one.http_url) as client:
        found = (await client.get("/admin/api/search?q=an")).json()
        bounded = (await client.get("/admin/api/search?q=x")).json()
        empty = await client.get("/admin/api/search?q=")
    assert found == {"peers": ["ann", "anna"], "rooms": ["an-ann", "an-anna", "an-bob"]}
    assert bounded["peers"] == [f"x{n:02}" for n in range(20)]
    assert empty.status_code == 400
