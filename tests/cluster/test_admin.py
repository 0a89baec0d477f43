"""The admin page on one node sees and acts on every node, on each backend."""

from __future__ import annotations

import re

import anyio
import httpx
import pytest

from relay.protocol.codes import CloseCode
from tests.admin.helpers import PASSWORD, admin_client
from tests.cluster.conftest import Cluster, Nodes
from tests.peers import join_as, open_peer

pytestmark = pytest.mark.anyio


async def test_the_admin_page_sees_and_acts_across_the_cluster(cluster: Cluster) -> None:
    a, b = await cluster(2, admin_password=PASSWORD)
    alice = await join_as(b.url, "alice")
    await alice.request({"type": "join", "room": "lobby", "id": 1})
    taken = await open_peer(b.url)
    await taken.send({"type": "hello", "v": 1, "id": "alice"})
    assert (await taken.recv())["code"] == "id-taken"
    async with admin_client(a.http_url) as client:
        nodes = (await client.get("/admin/api/overview")).json()["nodes"]
        assert [(node["node"], node["peers"]) for node in nodes] == [("node-0", 0), ("node-1", 1)]
        assert [node["refusals"] for node in nodes] == [{}, {"id-taken": 1}]
        state = (await client.get("/admin/api/peers/alice")).json()
        assert (state["node"], state["rooms"]) == ("node-1", {"lobby": False})
        events = (await client.get("/admin/api/events")).json()["events"]
        assert {"node": "node-1", "kind": "refused", "peer": "alice", "code": "id-taken"} in [
            {key: event[key] for key in ("node", "kind", "peer", "code")} for event in events
        ]
        room = (await client.get("/admin/api/rooms/lobby")).json()
        assert room["members"] == ["alice"]
        assert room["presence"] == {
            "alice": {"state": "online", "seconds_left": None, "watching": False, "node": "node-1"}
        }
        response = await client.post("/admin/api/disconnect", json={"peer": "alice"})
        assert response.json()["disconnected"] is True
    assert await alice.closed() == CloseCode.CLOSED_BY_OPERATOR


async def test_workers_share_the_admin_listener(redis_url: str, nodes: Nodes) -> None:
    flags = ("--workers", "2", "--admin-password", PASSWORD, "--admin-listen", "127.0.0.1:0")
    (server,) = await nodes.start(redis_url, "w", extra=flags)
    found = re.search(r"admin page only on (http://\S+)/admin/", server.output())  # before ready
    assert found, server.output()
    async with httpx.AsyncClient(base_url=server.http_url) as relay:
        assert (await relay.get("/admin/")).status_code == 404
    async with admin_client(found.group(1)) as client:
        # The second worker may register with Redis just after the first says ready.
        with anyio.fail_after(10):
            overview = "/admin/api/overview"
            while len(nodes_seen := (await client.get(overview)).json()["nodes"]) < 2:  # noqa: ASYNC110 (another process: no event)
                await anyio.sleep(0.1)
    assert len(nodes_seen) == 2 and all(node["node"].startswith("w-") for node in nodes_seen)
