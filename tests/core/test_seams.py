"""The seams later features build on: observers, outside decisions, operator commands."""

from __future__ import annotations

from typing import Any

import pytest

from relay.decisions import HelloAsked
from relay.events import SessionObserver
from relay.exceptions import Overloaded, Unauthorized
from relay.operator import Operator
from relay.protocol.codes import CloseCode
from tests.core.fakes import Gate, Node, send


class Recorder(SessionObserver):
    def __init__(self) -> None:
        self.events: list[tuple[Any, ...]] = []

    def online(self, peer_id: str, *, resumed: bool) -> None:
        self.events.append(("online", peer_id, resumed))

    def offline(self, peer_id: str, reason: str) -> None:
        self.events.append(("offline", peer_id, reason))

    def joined(self, room: str, peer_id: str) -> None:
        self.events.append(("joined", room, peer_id))

    def left(self, room: str, peer_id: str) -> None:
        self.events.append(("left", room, peer_id))

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
        ("joined", "r", "alice"),
        ("online", "alice", True),
        ("refused", "alice", "id-taken"),
        ("closed", None, CloseCode.ID_TAKEN, "hello"),
        ("closed", "alice", 4008, "slow"),
    ]
    node.hub.peers["alice"].session.connection_lost(1006)  # type: ignore[union-attr]
    node.run(11)
    assert recorder.events[-2:] == [("offline", "alice", "expired"), ("left", "r", "alice")]


class Decider:
    def __init__(self) -> None:
        self.gate = Gate()
        self.asked: list[HelloAsked] = []
        self.joins: list[tuple[str, str, object]] = []
        self.refuse: Exception | None = None

    async def decide_hello(self, asked: HelloAsked) -> object:
        self.asked.append(asked)
        await self.gate
        if self.refuse is not None:
            raise self.refuse
        return {"plan": "pro"}

    async def decide_join(self, peer_id: str, room: str, meta: object) -> None:
        self.joins.append((peer_id, room, meta))
        if room == "secret":
            raise Unauthorized("not this room")


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
