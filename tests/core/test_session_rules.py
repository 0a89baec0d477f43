"""The session and hub rules, driven by plain calls: a fake clock, fake transports, no loop.

Every test here runs a real ``Hub`` and real ``Session`` objects on the
memory broker; time moves only when a test advances the fake scheduler.
"""

from __future__ import annotations

import base64
import string
from typing import Any

import msgpack

from relay.peer import REPLAY_OVERHEAD
from relay.protocol.codes import CloseCode
from tests.core.fakes import Node, send

URL_SAFE = set(string.ascii_letters + string.digits + "-_")


def msgs(envelopes: list[dict[str, Any]]) -> list[Any]:
    return [e["d"] for e in envelopes if e["type"] == "msg"]


def answers(envelopes: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [e for e in envelopes if e["type"] in ("ok", "err")]


def test_a_hello_registers_and_is_welcomed() -> None:
    node = Node()
    session, transport, welcome = node.peer("alice")
    assert welcome["type"] == "welcome"
    assert welcome["id"] == "alice" and welcome["resumed"] is False
    assert welcome["node"] == node.hub.node_id and welcome["resume"]
    assert node.hub.peers["alice"].session is session
    assert transport.reading


def test_resume_secrets_are_24_random_bytes_in_url_safe_base64() -> None:
    node = Node()
    secrets = [node.peer(f"p{n}")[2]["resume"] for n in range(50)]
    assert len(set(secrets)) == 50
    for secret in secrets:
        assert len(secret) == 32 and set(secret) <= URL_SAFE
        assert len(base64.urlsafe_b64decode(secret)) == 24


def test_steps_that_end_at_once_never_stop_reading() -> None:
    node = Node()
    session, transport, _ = node.peer("alice")
    send(session, {"type": "join", "room": "r", "id": 1})
    send(session, {"type": "leave", "room": "r", "id": 2})
    assert [a["id"] for a in answers(transport.take())] == [1, 2]
    assert transport.pauses == 0 and transport.reading


def test_the_first_envelope_must_be_hello() -> None:
    node = Node()
    session, transport = node.connect()
    send(session, {"type": "ping", "id": 1})
    [err] = transport.take()
    assert err["code"] == "not-registered"
    assert transport.closed is not None and transport.closed[0] == CloseCode.POLICY_VIOLATION


def test_no_hello_in_time_closes_1008() -> None:
    node = Node(hello_timeout_seconds=5)
    _session, transport = node.connect()
    node.run(4.9)
    assert transport.closed is None
    node.run(0.2)
    assert transport.closed == (CloseCode.POLICY_VIOLATION, "no hello in time")


def test_the_hello_deadline_lets_go_of_a_session_that_said_hello_ended_or_was_closed() -> None:
    node = Node(hello_timeout_seconds=5)
    waiting = node.hub.hello_deadlines
    greeted, _, _ = node.peer("alice")
    gone, _ = node.connect()
    gone.connection_lost(1006)
    refused, refused_socket = node.connect()
    send(refused, {"type": "ping"})  # not a hello: refused and closed
    silent, silent_socket = node.connect()
    assert silent in waiting
    assert not any(session in waiting for session in (greeted, gone, refused))
    node.run(6)
    assert silent_socket.closed == (CloseCode.POLICY_VIOLATION, "no hello in time")
    assert refused_socket.closed is not None and refused_socket.closed[1] != "no hello in time"


def test_a_held_id_is_refused_without_its_resume_secret() -> None:
    node = Node()
    node.peer("alice")
    session, transport = node.connect()
    send(session, {"type": "hello", "id": "alice"})
    node.run()
    [err] = transport.take()
    assert err["code"] == "id-taken"
    assert transport.closed is not None and transport.closed[0] == CloseCode.ID_TAKEN


def test_a_resume_replays_what_the_dead_socket_swallowed() -> None:
    node = Node()
    alice, alice_socket, welcome = node.peer("alice")
    bob, _bob_socket, _ = node.peer("bob")
    for n in range(3):
        send(bob, {"type": "send", "to": "alice", "d": n})
    assert msgs(alice_socket.take()) == [0, 1, 2]
    # The link drops; alice had read only the first message.
    alice.connection_lost(1006)
    assert "alice" in node.hub.peers  # kept for the resume window
    again, socket, welcome2 = node.peer("alice", resume=welcome["resume"], received=1)
    assert welcome2["resumed"] is True
    node.run()
    assert msgs(socket.take()) == [1, 2]
    assert node.hub.peers["alice"].session is again


def test_a_resume_window_that_passes_reports_what_was_never_delivered() -> None:
    node = Node(resume_seconds=30)
    alice, alice_socket, _ = node.peer("alice")
    bob, bob_socket, _ = node.peer("bob")
    alice_socket.acking = False
    send(bob, {"type": "send", "to": "alice", "d": "lost", "id": 7})
    node.run()
    assert answers(bob_socket.take()) == []  # not acknowledged yet: no answer
    alice_socket.unsent = alice_socket.written_bytes  # it never left the host
    alice.connection_lost(1006)
    node.run()
    # Kept for a resume: the sender hears "queued", exactly once.
    assert answers(bob_socket.take()) == [{"type": "ok", "id": 7, "queued": True}]
    send(bob, {"type": "send", "to": "alice", "d": "later"})  # no id: reported if lost
    node.run(29)
    assert bob_socket.take() == []
    node.run(2)
    # Both never reached alice: the one answered "queued" and the one without id.
    reports = answers(bob_socket.take())
    assert [(r["code"], r.get("id")) for r in reports] == [
        ("peer-offline", 7),
        ("peer-offline", None),
    ]
    assert "alice" not in node.hub.peers


def test_ok_waits_for_the_acknowledgement_and_comes_once() -> None:
    node = Node()
    _alice, alice_socket, _ = node.peer("alice")
    bob, bob_socket, _ = node.peer("bob")
    alice_socket.acking = False
    send(bob, {"type": "send", "to": "alice", "d": "hi", "id": 1})
    node.run(0.5)
    assert answers(bob_socket.take()) == []
    alice_socket.ack_all()
    node.run(0.2)  # the watch backs off to at most 100 ms
    assert answers(bob_socket.take()) == [{"type": "ok", "id": 1}]
    node.run(5)
    assert bob_socket.take() == []


def test_a_send_to_nobody_gets_peer_offline() -> None:
    node = Node()
    bob, bob_socket, _ = node.peer("bob")
    send(bob, {"type": "send", "to": "nobody", "d": 1, "id": 3})
    node.run()
    [err] = bob_socket.take()
    assert err["code"] == "peer-offline" and err["id"] == 3 and err["to"] == "nobody"


def test_a_reader_that_stops_holds_its_senders_then_is_closed_4008() -> None:
    node = Node(slow_consumer_seconds=10)
    alice, alice_socket, _ = node.peer("alice")
    bob, bob_socket, _ = node.peer("bob")
    alice_socket.paused = True  # its socket is full
    send(bob, {"type": "send", "to": "alice", "d": "waits"})
    assert not bob_socket.reading  # backpressure: the sender is not read
    node.run(9)
    assert alice_socket.closed is None
    node.run(3)  # the sweep runs every quarter of the limit
    assert alice_socket.closed is not None and alice_socket.closed[0] == CloseCode.SLOW_CONSUMER
    alice.connection_lost(1006)  # the transport bounds the close; it ends
    assert bob_socket.reading  # read again at once
    assert node.hub.peers["alice"].queue  # what waited is kept for a resume


def test_a_flood_is_refused_then_closed_4029() -> None:
    node = Node(rate_per_second=1, rate_burst=2, rate_strikes=3)
    alice, socket, _ = node.peer("alice")
    for n in range(5):
        send(alice, {"type": "ping", "id": n})
    node.run()
    got = socket.take()
    assert [e["type"] for e in got[:2]] == ["pong", "pong"]
    assert [e["code"] for e in got[2:]] == ["rate-limited"] * 3
    assert [e["id"] for e in got[2:]] == [2, 3, 4]  # one answer per request
    assert socket.closed is None  # three strikes are allowed
    send(alice, {"type": "ping", "id": 5})
    assert [e["code"] for e in socket.take()] == ["rate-limited"]
    node.run(1.0)  # the explanation had its time
    assert socket.closed is not None and socket.closed[0] == CloseCode.RATE_LIMITED


def test_the_rate_forgives_time_the_relay_did_not_read() -> None:
    node = Node(rate_per_second=1, rate_burst=1)
    alice, socket, _ = node.peer("alice")
    alice.hold()
    node.run(10)  # the client's frames waited in the socket meanwhile
    alice.resume()
    for n in range(3):
        send(alice, {"type": "ping", "id": n})
    assert [e["type"] for e in socket.take()] == ["pong", "pong", "pong"]


def test_bad_envelopes_past_the_budget_close_4500() -> None:
    node = Node(bad_envelope_budget=2)
    alice, socket, _ = node.peer("alice")
    for _ in range(3):
        alice.message_received(b"\xc1")  # never valid msgpack
    node.run(1.0)
    assert [e["code"] for e in answers(socket.take())] == ["bad-envelope"] * 3
    assert socket.closed is not None and socket.closed[0] == CloseCode.TOO_MANY_BAD_ENVELOPES


def test_a_clean_close_removes_the_peer_and_leaves_its_rooms() -> None:
    node = Node()
    alice, _socket, _ = node.peer("alice")
    bob, bob_socket, _ = node.peer("bob")
    send(alice, {"type": "join", "room": "r", "id": 1})
    send(bob, {"type": "join", "room": "r", "id": 1, "presence": True})
    node.run()
    bob_socket.take()
    alice.connection_lost(1000)
    node.run()
    assert "alice" not in node.hub.peers
    [presence] = bob_socket.take()
    assert presence == {"type": "presence", "room": "r", "peer": "alice", "event": "leave"}


def test_a_publish_waits_behind_a_members_full_socket_and_its_queue() -> None:
    node = Node()
    publisher, _, _ = node.peer("publisher")
    other, _, _ = node.peer("other")  # not held back by the member's queue, as publisher is
    member, socket, _ = node.peer("member")
    send(member, {"type": "join", "room": "r", "id": 1})
    node.run()
    socket.take()
    socket.paused = True  # the member's socket is full: the first publish is queued
    send(publisher, {"type": "pub", "room": "r", "d": 1})
    node.run()
    assert msgs(socket.take()) == []
    socket.paused = False  # room again, but the queue is not empty: the next one goes behind it
    send(other, {"type": "pub", "room": "r", "d": 2})
    node.run()
    assert msgs(socket.take()) == []
    member.writable()
    assert msgs(socket.take()) == [1, 2]


def test_a_publish_to_a_member_the_relay_has_closed_waits_for_its_resume() -> None:
    node = Node(bad_envelope_budget=0)
    publisher, publisher_socket, _ = node.peer("publisher")
    member, socket, _ = node.peer("member")
    send(member, {"type": "join", "room": "r", "id": 1})
    node.run()
    member.message_received(b"\xc1")  # over the budget: explained, then closed 4500
    node.run()
    assert socket.closed is not None and socket.closed[0] == CloseCode.TOO_MANY_BAD_ENVELOPES
    socket.take()
    send(publisher, {"type": "pub", "room": "r", "d": 1, "id": 5})
    node.run()
    assert msgs(socket.take()) == []  # not written to the closed socket
    assert answers(publisher_socket.take()) == [{"type": "ok", "id": 5, "queued": True}]
    queue = node.hub.peers["member"].queue
    assert queue is not None and [msgpack.unpackb(entry[0])["d"] for entry in queue] == [1]


def test_a_policy_close_flushes_for_at_most_its_explain_time() -> None:
    node = Node(bad_envelope_budget=0)
    alice, socket, _ = node.peer("alice")
    bob, _, _ = node.peer("bob")
    socket.paused = True  # alice reads nothing: what she is owed cannot go out
    send(bob, {"type": "send", "to": "alice", "d": 1})
    alice.message_received(b"\xc1")  # over the budget: closed 4500 after explaining
    node.run(0.9)
    assert socket.closed is None  # still trying to deliver the explanation
    node.run(0.2)
    assert socket.closed is not None and socket.closed[0] == CloseCode.TOO_MANY_BAD_ENVELOPES
    # Frames for her meanwhile wait for a resume; her own requests get an err.
    send(alice, {"type": "ping", "id": 9})
    queue = node.hub.peers["alice"].queue
    assert queue is not None
    last = msgpack.unpackb(queue[-1][0])
    assert (last["type"], last["code"], last["id"]) == ("err", "bad-envelope", 9)


def test_acknowledged_frames_leave_the_replay_window_and_the_rest_is_replayed() -> None:
    node = Node()
    alice, alice_socket, welcome = node.peer("alice")
    bob, _bob_socket, _ = node.peer("bob")
    peer = node.hub.peers["alice"]
    blob = b"x" * 1000
    for n in range(200):  # ~200 KB, all acknowledged by alice's host
        send(bob, {"type": "send", "to": "alice", "d": [n, blob]})
    # Trimmed by acknowledgement, not by size: far under replay_bytes (1 MiB).
    assert peer.written_bytes <= 33 * 1024
    kept = sum(len(frame) + REPLAY_OVERHEAD for frame, _kind, _sender in peer.written or ())
    assert peer.written_bytes == kept
    # One look at the kernel's count per 32 KiB written, not one per frame.
    assert alice_socket.acks_asked <= 200 * 1064 // (32 * 1024) + 1
    alice_socket.acking = False
    for n in range(200, 210):
        send(bob, {"type": "send", "to": "alice", "d": [n, blob]})
    assert [d[0] for d in msgs(alice_socket.take())] == list(range(210))
    # The link drops with the last ten never acknowledged; alice read 205.
    alice.connection_lost(1006)
    again, socket, welcome2 = node.peer("alice", resume=welcome["resume"], received=205)
    assert welcome2["resumed"] is True
    node.run()
    assert [d[0] for d in msgs(socket.take())] == [205, 206, 207, 208, 209]
    assert node.hub.peers["alice"].session is again


def test_unacknowledged_frames_are_kept_up_to_the_replay_bound() -> None:
    node = Node(replay_bytes=100_000)
    _alice, alice_socket, _ = node.peer("alice")
    bob, _bob_socket, _ = node.peer("bob")
    alice_socket.acking = False
    for n in range(300):
        send(bob, {"type": "send", "to": "alice", "d": [n, b"x" * 1000]})
    written = node.hub.peers["alice"].written_bytes
    assert 95_000 < written <= 100_000


def test_a_transport_that_cannot_tell_acknowledgements_keeps_the_size_bound() -> None:
    node = Node(replay_bytes=100_000)
    _alice, alice_socket, _ = node.peer("alice")
    bob, _bob_socket, _ = node.peer("bob")
    alice_socket.acks_known = False
    for n in range(300):
        send(bob, {"type": "send", "to": "alice", "d": [n, b"x" * 1000]})
    assert 95_000 < node.hub.peers["alice"].written_bytes <= 100_000
    assert alice_socket.acks_asked == 0


def test_a_replay_bound_under_the_trim_step_still_holds() -> None:
    node = Node(replay_bytes=4096)
    _alice, alice_socket, _ = node.peer("alice")
    bob, _bob_socket, _ = node.peer("bob")
    alice_socket.acking = False
    for n in range(20):
        send(bob, {"type": "send", "to": "alice", "d": [n, b"x" * 1000]})
    assert node.hub.peers["alice"].written_bytes <= 4096


def test_the_connection_and_peer_gauges_follow_sessions_and_resume_windows() -> None:
    node = Node(resume_seconds=30)

    def gauges() -> tuple[float | None, float | None]:
        registry = node.hub.metrics.registry
        return (
            registry.get_sample_value("relay_connections"),
            registry.get_sample_value("relay_peers"),
        )

    alice, _, _ = node.peer("alice")
    bob, _, _ = node.peer("bob")
    node.connect()  # no hello yet: a connection, not a peer
    assert gauges() == (3, 2)
    alice.connection_lost(1006)  # kept for its resume
    node.run()
    assert gauges() == (2, 2)
    bob.connection_lost(1000)  # a goodbye: removed
    node.run()
    assert gauges() == (1, 1)
    node.run(31)  # alice's window passes
    assert gauges() == (1, 0)
