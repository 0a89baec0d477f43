"""An outside decision on a real relay: what it is told of the connection, and its refusal."""

from __future__ import annotations

import pytest

from relay.decisions import Admitted, HelloAsked
from relay.exceptions import Unauthorized
from tests.conftest import RunningRelay
from tests.peers import join_as, open_peer

pytestmark = pytest.mark.anyio


class Decider:
    def __init__(self) -> None:
        self.asked: list[HelloAsked] = []

    async def decide_hello(self, asked: HelloAsked) -> Admitted:
        self.asked.append(asked)
        if asked.peer_id == "mallory":
            raise Unauthorized("not you")
        return Admitted(meta={"seen": True})

    async def decide_join(self, peer_id: str, room: str, meta: object) -> None:
        if room == "staff":
            raise Unauthorized("staff only")

    def room_decided(self, peer_id: str, room: str) -> bool:
        return room != "staff"


async def test_the_decider_hears_the_connection_and_can_refuse(relay: RunningRelay) -> None:
    decider = Decider()
    relay.hub.decider = decider
    alice = await open_peer(relay.url, additional_headers={"X-App": "demo"})
    welcome = await alice.request({"type": "hello", "id": "alice"})
    assert welcome["type"] == "welcome"
    [asked] = decider.asked
    assert asked.peer_id == "alice" and asked.node == relay.hub.node_id
    assert asked.connection is not None and asked.connection.address == "127.0.0.1"
    assert ("x-app", "demo") in asked.connection.headers
    assert relay.hub.peers["alice"].session.meta == {"seen": True}  # type: ignore[union-attr]
    await alice.send({"type": "join", "room": "staff", "id": 1})
    await alice.expect(type="err", code="unauthorized", id=1)

    mallory = await open_peer(relay.url)
    await mallory.send({"type": "hello", "id": "mallory"})
    await mallory.expect(type="err", code="unauthorized")
    assert "mallory" not in relay.hub.peers


async def test_without_a_decider_no_connection_details_are_kept(relay: RunningRelay) -> None:
    await join_as(relay.url, "alice")
    assert relay.hub.peers["alice"].session.connect_info is None  # type: ignore[union-attr]
