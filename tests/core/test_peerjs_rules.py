"""The PeerJS dialect on the shared session rules: registration, expiry, heartbeat; no loop."""

from __future__ import annotations

import json
from typing import Any

from relay.peerjs.session import PeerJSSession
from tests.core.fakes import FakeTransport, Node


class TextTransport(FakeTransport):
    """Turns each frame into the PeerJS texts as it is written, as the endpoint does."""

    def __init__(self) -> None:
        super().__init__()
        self.texts: list[str] = []

    def write(self, data: bytes) -> None:
        super().write(data)
        assert isinstance(self.session, PeerJSSession)
        self.texts += self.session.translate(data)


def peerjs(node: Node, peer_id: str) -> tuple[PeerJSSession, TextTransport]:
    transport = TextTransport()
    session = PeerJSSession(node.hub, transport, peer_id)
    transport.session = session
    node.hub.opened(session)
    node.steps.spawn(session.open(None, None))
    return session, transport


def texts(_session: PeerJSSession, transport: TextTransport) -> list[dict[str, Any]]:
    """What the PeerJS client received since the last call, as JSON."""
    got, transport.texts = transport.texts, []
    return [json.loads(text) for text in got]


def offer(dst: str) -> str:
    return json.dumps({"type": "OFFER", "dst": dst, "payload": {"sdp": "x"}})


def test_registration_opens_and_a_taken_id_is_refused() -> None:
    node = Node()
    alice, transport = peerjs(node, "alice")
    assert texts(alice, transport) == [{"type": "OPEN"}]
    assert "@peerjs/alice" in node.hub.peers
    again, transport2 = peerjs(node, "alice")
    assert [t["type"] for t in texts(again, transport2)] == ["ID-TAKEN"]
    assert transport2.closed is not None and transport2.closed[0] == 4502


def test_a_message_for_a_peer_not_there_yet_waits_then_expires() -> None:
    node = Node(peerjs_expire_seconds=5)
    alice, transport = peerjs(node, "alice")
    texts(alice, transport)
    alice.text_received(offer("bob"))
    node.run(4)
    assert texts(alice, transport) == []  # held in the pre-connect queue
    node.run(1.5)
    assert texts(alice, transport) == [{"type": "EXPIRE", "src": "bob", "dst": "alice"}]


def test_a_held_message_reaches_a_peer_that_arrives_in_time() -> None:
    node = Node(peerjs_expire_seconds=5)
    alice, transport = peerjs(node, "alice")
    alice.text_received(offer("bob"))
    node.run(2)
    bob, bob_transport = peerjs(node, "bob")
    node.run(0.5)  # held messages are tried again every 250 ms
    got = texts(bob, bob_transport)
    assert got[0] == {"type": "OPEN"}
    assert got[1] == {"type": "OFFER", "src": "alice", "dst": "bob", "payload": {"sdp": "x"}}
    node.run(10)
    assert [t["type"] for t in texts(alice, transport)] == ["OPEN"]  # no EXPIRE


def test_a_silent_client_is_closed_and_its_id_freed() -> None:
    node = Node(peerjs_heartbeat_timeout_seconds=60)
    alice, transport = peerjs(node, "alice")
    node.run(59)
    alice.text_received(json.dumps({"type": "HEARTBEAT"}))
    node.run(59)
    assert transport.closed is None
    node.run(2)
    assert transport.closed == (1008, "no heartbeat in time")
    alice.connection_lost(1006)
    assert "@peerjs/alice" not in node.hub.peers  # PeerJS peers are never kept
