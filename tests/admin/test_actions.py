"""What /admin does: disconnect (4504), remove from a room, publish as @server; logged."""

from __future__ import annotations

import logging

import anyio
import pytest

from relay.events import SessionObserver
from relay.protocol.codes import CloseCode
from tests.admin.helpers import PASSWORD, admin_client
from tests.admin.test_reads import two_nodes
from tests.conftest import RelayFactory
from tests.peers import join_as

pytestmark = pytest.mark.anyio


class Offline(SessionObserver):
    """Hears a peer go offline for good."""

    def __init__(self) -> None:
        self.event = anyio.Event()
        self.reason = ""

    def offline(self, peer_id: str, reason: str) -> None:
        self.reason = reason
        self.event.set()


async def test_disconnect_closes_a_peer_on_another_node_with_4504(
    relay_factory: RelayFactory, caplog: pytest.LogCaptureFixture
) -> None:
    one, two = await two_nodes(relay_factory)
    alice = await join_as(two.url, "alice")
    gone = Offline()
    two.hub.observers.append(gone)
    caplog.set_level(logging.INFO, "relay.admin")
    async with admin_client(one.http_url) as client:
        response = await client.post("/admin/api/disconnect", json={"peer": "alice"})
        assert response.json() == {"peer": "alice", "disconnected": True}
        assert await alice.closed() == CloseCode.CLOSED_BY_OPERATOR == 4504
        # a kick: gone at once (not kept for a resume), and free to come back
        with anyio.fail_after(3):
            await gone.event.wait()
        assert gone.reason == "closed"
        await join_as(one.url, "alice")
        again = await client.post("/admin/api/disconnect", json={"peer": "nobody"})
        assert again.json()["disconnected"] is False
    assert any(
        "disconnected alice" in record.getMessage() and "admin (session" in record.getMessage()
        for record in caplog.records
    )


async def test_remove_from_room(relay_factory: RelayFactory) -> None:
    one, two = await two_nodes(relay_factory)
    alice = await join_as(two.url, "alice")
    await alice.request({"type": "join", "room": "r", "id": 1})
    async with admin_client(one.http_url) as client:
        response = await client.post("/admin/api/remove", json={"peer": "alice", "room": "r"})
        assert response.json()["removed"] is True
        assert two.hub.peers["alice"].rooms == {}
        response = await client.post("/admin/api/remove", json={"peer": "alice", "room": "r"})
        assert response.json()["removed"] is False
        bad = await client.post("/admin/api/remove", json={"peer": "alice", "room": 3})
        assert bad.status_code == 400


async def test_publish_to_a_peer_and_a_room_as_server(relay_factory: RelayFactory) -> None:
    one, two = await two_nodes(relay_factory)
    alice = await join_as(two.url, "alice")
    await alice.request({"type": "join", "room": "r", "id": 1})
    async with admin_client(one.http_url) as client:
        sent = await client.post("/admin/api/publish", json={"to": "alice", "d": {"n": 1}})
        assert sent.json()["delivered"] == ["alice"]
        await alice.expect(type="msg", d={"n": 1}, **{"from": "@server"})
        published = await client.post(
            "/admin/api/publish", json={"room": "r", "d": "hi", "ev": "notice"}
        )
        assert published.json() == {"room": "r", "published": True}
        await alice.expect(type="msg", d="hi", ev="notice", room="r", **{"from": "@server"})
        for body in [{"d": 1}, {"to": "alice", "room": "r", "d": 1}, {"to": "alice"}]:
            response = await client.post("/admin/api/publish", json=body)
            assert response.status_code == 400, body


async def test_an_action_wants_a_json_body(relay_factory: RelayFactory) -> None:
    relay = await relay_factory(admin_password=PASSWORD)
    async with admin_client(relay.http_url) as client:
        form = await client.post("/admin/api/disconnect", data={"peer": "alice"})
        assert form.status_code == 415
