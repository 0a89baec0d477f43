"""The seams later features build on: observers, outside decisions, operator commands."""

from __future__ import annotations

from typing import Any

import pytest

from relay.broker.memory import MemoryCluster
from relay.decisions import Admitted, HelloAsked
from relay.events import SessionObserver
from relay.exceptions import Overloaded, Unauthorized
from relay.operator import Operator
from relay.protocol.codes import CloseCode
from relay.values import LostNode, Rejoined
from tests.core.fakes import Gate, Node, send


class Recorder(SessionObserver):
    def __init__(self) -> None:
        self.events: list[tuple[Any, ...]] = []

    def online(self, peer_id: str, *, resumed: bool, meta: object = None) -> None:
        self.events.append(("online", peer_id, resumed))

    def offline(self, peer_id: str, reason: str, *, lost_node: str | None = None) -> None:
        self.events.append(("offline", peer_id, reason, *([lost_node] if lost_node else [])))

    def joined(self, room: str, peer_id: str) -> None:
        self.events.append(("joined", room, peer_id))

    def left(self, room: str, peer_id: str) -> None:
        self.events.append(("left", room, peer_id))

    def occupied(self, room: str) -> None:
        self.events.append(("occupied", room))

    def vacated(self, room: str) -> None:
        self.events.append(("vacated", room))

    def refused(self, peer_id: str | None, code: str, message: str) -> None:
        self.events.append(("refused", peer_id, code))

    def closed(self, peer_id: str | None, code: int, message: str, label: str) -> None:
        self.events.append(("closed", peer_id, code, label))


def test_observers_hear_each_session_event_once() -> None:
    node = Node(resume_seconds=10)
    recorder = Recorder()
    node.hub.observers.append(recorder)
    alice, _socket, welcome = node.peer("alice")
    send(alice, {"type": "join", "room": "r"})
    send(alice, {"type": "send", "to": "nobody", "d": 1, "id": 1})
    alice.connection_lost(1006)  # dropped: kept for a resume
    node.peer("alice", resume=welcome["resume"])
    intruder, _ = node.connect()
    send(intruder, {"type": "hello", "id": "alice"})
    node.run()
    node.hub.peers["alice"].session.close(4008, "slow", label="slow")  # type: ignore[union-attr]
    node.run(11)  # its window passes
    assert recorder.events == [
        ("online", "alice", False),
        ("occupied", "r"),
        ("joined", "r", "alice"),
        ("online", "alice", True),
        ("refused", "alice", "id-taken"),
        ("closed", None, CloseCode.ID_TAKEN, "hello"),
        ("closed", "alice", 4008, "slow"),
    ]
    node.hub.peers["alice"].session.connection_lost(1006)  # type: ignore[union-attr]
    node.run(11)
    assert recorder.events[-3:] == [
        ("offline", "alice", "expired"),
        ("left", "r", "alice"),
        ("vacated", "r"),
    ]


def test_a_room_is_occupied_and_vacated_on_one_node_of_the_cluster() -> None:
    cluster = MemoryCluster()
    nodes = [Node(cluster, node_id="one"), Node(cluster, node_id="two")]
    recorders = [Recorder(), Recorder()]
    for node, recorder in zip(nodes, recorders, strict=True):
        node.hub.observers.append(recorder)
    (alice, _, _), (bob, _, _) = nodes[0].peer("alice"), nodes[1].peer("bob")
    for session, node in ((alice, nodes[0]), (bob, nodes[1])):
        send(session, {"type": "join", "room": "r"})
        node.run()
    send(alice, {"type": "leave", "room": "r"})
    nodes[0].run()
    send(bob, {"type": "leave", "room": "r"})
    nodes[1].run()
    rooms = ("occupied", "joined", "left", "vacated")
    assert [e for e in recorders[0].events if e[0] in rooms] == [
        ("occupied", "r"),
        ("joined", "r", "alice"),
        ("left", "r", "alice"),
    ]
    assert [e for e in recorders[1].events if e[0] in rooms] == [
        ("joined", "r", "bob"),
        ("left", "r", "bob"),
        ("vacated", "r"),
    ]


def test_a_lost_node_is_told_peer_by_peer_with_presence_leaves() -> None:
    node = Node()
    recorder = Recorder()
    node.hub.observers.append(recorder)
    watcher, socket, _ = node.peer("watcher")
    send(watcher, {"type": "join", "room": "r", "presence": True})
    node.run()
    socket.take()
    recorder.events.clear()
    # As the reap found it: zed's id had moved on, s is left empty.
    memberships = [("r", "alice"), ("s", "alice"), ("r", "zed"), ("s", "bob")]
    node.hub.node_lost(LostNode("dead", ["alice", "bob"], memberships, {"s"}))
    assert recorder.events == [
        ("offline", "alice", "node_lost", "dead"),
        ("left", "r", "alice"),
        ("left", "s", "alice"),
        ("offline", "bob", "node_lost", "dead"),
        ("left", "s", "bob"),
        ("vacated", "s"),
        ("left", "r", "zed"),
    ]
    assert [(e["peer"], e["event"]) for e in socket.take() if e["type"] == "presence"] == [
        ("alice", "leave"),
        ("zed", "leave"),
    ]


def test_a_node_reaped_while_cut_off_tells_its_peers_back_with_presence_elsewhere() -> None:
    cluster = MemoryCluster()
    here, there = Node(cluster, node_id="here"), Node(cluster, node_id="there")
    recorder = Recorder()
    here.hub.observers.append(recorder)
    (alice, local, _), (bob, _, _) = here.peer("alice"), here.peer("bob")
    (carol, remote, _) = there.peer("carol")
    for session, node, room in ((alice, here, "r"), (alice, here, "s"), (bob, here, "r")):
        send(session, {"type": "join", "room": room, "presence": room == "r"})
        node.run()
    send(carol, {"type": "join", "room": "r", "presence": True})
    there.run()
    here.run()
    local.take()
    remote.take()
    recorder.events.clear()
    # As the registry found it: s was empty again, and gone's t was re-joined
    # before gone left (its leave and t's vacated are told apart).
    memberships = [("s", "alice", True), ("t", "gone", True), ("r", "alice", False)]
    memberships.append(("r", "bob", False))
    here.hub.rejoined(Rejoined(["alice", "bob", "gone"], memberships))
    here.run()
    there.run()
    assert recorder.events == [
        ("online", "alice", False),
        ("online", "bob", False),
        ("occupied", "s"),
        ("joined", "s", "alice"),
        ("occupied", "t"),
        ("joined", "r", "alice"),
        ("joined", "r", "bob"),
    ]
    # The other node's members hear them join again; this node's never heard them leave.
    assert [(e["peer"], e["event"]) for e in remote.take() if e["type"] == "presence"] == [
        ("alice", "join"),
        ("bob", "join"),
    ]
    assert [e for e in local.take() if e["type"] == "presence"] == []


class Decider:
    def __init__(self) -> None:
        self.gate = Gate()
        self.asked: list[HelloAsked] = []
        self.joins: list[tuple[str, str, object]] = []
        self.refuse: Exception | None = None

    async def decide_hello(self, asked: HelloAsked) -> Admitted:
        self.asked.append(asked)
        await self.gate
        if self.refuse is not None:
            raise self.refuse
        return Admitted(meta={"plan": "pro"})

    async def decide_join(self, peer_id: str, room: str, meta: object) -> None:
        self.joins.append((peer_id, room, meta))
        if room == "secret":
            raise Unauthorized("not this room")

    def room_decided(self, peer_id: str, room: str) -> bool:
        return True


def test_frames_sent_while_a_hello_is_decided_wait_and_keep_their_order() -> None:
    node = Node()
    decider = Decider()
    node.hub.decider = decider
    session, socket = node.connect()
    send(session, {"type": "hello", "id": "alice"})
    for n in range(3):
        send(session, {"type": "ping", "id": n})
    node.run(0.5)
    assert socket.frames == [] and not socket.reading  # nothing read until decided
    assert [a.peer_id for a in decider.asked] == ["alice"]
    # Another hello for the same id meanwhile is refused, not raced.
    other, other_socket = node.connect()
    send(other, {"type": "hello", "id": "alice"})
    node.run()
    assert other_socket.take()[0]["code"] == "id-taken"
    decider.gate.open()
    node.run()
    assert socket.reading
    assert session.meta == {"plan": "pro"}
    # The transport held the pings; the session read them after its welcome, in order.
    got = socket.take()
    assert got[0]["type"] == "welcome"
    assert [(e["type"], e["id"]) for e in got[1:]] == [("pong", 0), ("pong", 1), ("pong", 2)]


@pytest.mark.parametrize(
    ("refusal", "code", "close"),
    [
        (Unauthorized("no"), "unauthorized", CloseCode.UNAUTHORIZED),
        (Overloaded("backend down"), "overloaded", CloseCode.TRY_AGAIN_LATER),
        (RuntimeError("bug"), "internal", CloseCode.INTERNAL_ERROR),
    ],
)
def test_a_refused_hello_frees_the_id(refusal: Exception, code: str, close: int) -> None:
    node = Node()
    decider = Decider()
    decider.refuse = refusal
    decider.gate.open()
    node.hub.decider = decider
    session, socket = node.connect()
    send(session, {"type": "hello", "id": "alice"})
    node.run()
    [err] = socket.take()
    assert err["code"] == code
    assert socket.closed is not None and socket.closed[0] == close
    assert "alice" not in node.hub.peers
    node.peer("alice")  # the id is free again


def test_a_resume_is_not_decided_again_and_joins_are() -> None:
    node = Node()
    decider = Decider()
    decider.gate.open()
    node.hub.decider = decider
    alice, socket, welcome = node.peer("alice")
    send(alice, {"type": "join", "room": "open", "id": 1})
    send(alice, {"type": "join", "room": "secret", "id": 2})
    node.run()
    assert [(e["type"], e.get("code")) for e in socket.take()] == [
        ("ok", None),
        ("err", "unauthorized"),
    ]
    assert decider.joins == [
        ("alice", "open", {"plan": "pro"}),
        ("alice", "secret", {"plan": "pro"}),
    ]
    alice.connection_lost(1006)
    node.peer("alice", resume=welcome["resume"])
    assert len(decider.asked) == 1


def test_operator_commands() -> None:
    node = Node(resume_seconds=20)
    operator = Operator(node.hub)
    alice, socket, _ = node.peer("alice")
    node.run(3)
    bob, _, _ = node.peer("bob")
    send(alice, {"type": "join", "room": "r"})
    socket.paused = True
    send(bob, {"type": "send", "to": "alice", "d": "x" * 100})
    state = operator.inspect("alice")
    assert state is not None
    assert state.connected and state.rooms == {"r": False}
    assert state.queue_messages == 1 and state.queue_bytes > 100
    assert state.rate_tokens is not None and state.resume_seconds_left is None
    assert state.connected_seconds == pytest.approx(3)
    assert operator.inspect("nobody") is None

    node.steps.spawn(operator.remove_from_room("alice", "r"))
    assert "r" not in node.hub.peers["alice"].rooms

    node.steps.spawn(operator.disconnect("alice", 4008, "by the operator"))
    assert socket.closed == (4008, "by the operator")
    alice.connection_lost(1006)
    node.run(5)
    state = operator.inspect("alice")
    assert state is not None and not state.connected
    assert state.resume_seconds_left == pytest.approx(15)
    assert state.connected_seconds is None
