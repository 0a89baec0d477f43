"""send, pub, join/leave, presence and ping against a real relay."""

from __future__ import annotations

from typing import Any

import anyio
import msgpack
import pytest

from relay.broker.memory import MemoryBroker
from relay.session import Session
from relay.values import Answer, Delivery, Undelivered
from tests.conftest import RelayFactory, RunningRelay
from tests.peers import join_as

pytestmark = pytest.mark.anyio


async def test_welcome_tells_id_node_limits_and_a_resume_secret(relay: RunningRelay) -> None:
    alice = await join_as(relay.url, "alice")
    assert alice.welcome["id"] == "alice"
    assert alice.welcome["node"] == relay.hub.node_id
    assert alice.welcome["resumed"] is False
    assert len(alice.welcome["resume"]) >= 32
    assert alice.welcome["limits"]["max_frame_bytes"] == relay.settings.max_frame_bytes
    assert alice.welcome["limits"]["resume_seconds"] == relay.settings.resume_seconds
    assert alice.welcome["limits"]["max_fragments"] == relay.settings.max_fragments
    limits = alice.welcome["limits"]
    assert limits["message_timeout_seconds"] == relay.settings.message_timeout_seconds


async def test_hello_without_id_gets_a_random_one(relay: RunningRelay) -> None:
    first = await join_as(relay.url)
    second = await join_as(relay.url)
    assert first.id and second.id and first.id != second.id
    await first.send({"type": "send", "to": second.id, "d": "x"})
    await second.expect(type="msg", d="x", **{"from": first.id})


async def test_send_to_one_stamps_from_and_passes_fields_through(relay: RunningRelay) -> None:
    alice = await join_as(relay.url, "alice")
    bob = await join_as(relay.url, "bob")
    await alice.send(
        {"type": "send", "to": "bob", "d": {"k": [1, 2]}, "ev": "e", "rid": 9, "id": 1}
    )
    await alice.expect(type="ok", id=1)
    assert await bob.recv() == {
        "type": "msg",
        "from": "alice",
        "d": {"k": [1, 2]},
        "ev": "e",
        "rid": 9,
    }
    await bob.send({"type": "send", "to": "alice", "d": "pong", "re": 9})
    assert await alice.recv() == {"type": "msg", "from": "bob", "d": "pong", "re": 9}


async def test_payload_types_arrive_unchanged(relay: RunningRelay) -> None:
    alice = await join_as(relay.url, "alice")
    bob = await join_as(relay.url, "bob")
    # float32 1.0, an ext type, a map with int keys: byte for byte
    payload = b"\x83\xca\x3f\x80\x00\x00\x01\xd4\x05\x01\x02\xc4\x02\x00\xff\xcd\x00\x01"
    frame = b"\x83\xa4type\xa4send\xa2to\xa3bob\xa1d" + payload
    await alice.send_raw(frame)
    with anyio.fail_after(5):
        raw = await bob.ws.recv()
    assert isinstance(raw, bytes)
    assert payload in raw
    assert msgpack.unpackb(raw, strict_map_key=False)["d"] == msgpack.unpackb(
        payload, strict_map_key=False
    )


async def test_spoofed_from_is_refused_and_never_delivered(relay: RunningRelay) -> None:
    alice = await join_as(relay.url, "alice")
    bob = await join_as(relay.url, "bob")
    await alice.send({"type": "send", "to": "bob", "d": 1, "from": "carol", "id": 1})
    await alice.expect(type="err", code="bad-envelope", id=1)
    await alice.send({"type": "send", "to": "bob", "d": 2})
    assert await bob.recv() == {"type": "msg", "from": "alice", "d": 2}


async def test_send_to_several_reports_the_unreached(relay: RunningRelay) -> None:
    alice = await join_as(relay.url, "alice")
    bob = await join_as(relay.url, "bob")
    carol = await join_as(relay.url, "carol")
    await alice.send({"type": "send", "to": ["bob", "carol"], "d": 1, "id": 1})
    await alice.expect(type="ok", id=1)
    await bob.expect(type="msg", d=1)
    await carol.expect(type="msg", d=1)
    await alice.send({"type": "send", "to": ["bob", "zed", "yan"], "d": 2, "id": 2})
    err = await alice.expect(type="err", code="peer-offline", id=2)
    assert err["to"] == ["zed", "yan"]
    await bob.expect(type="msg", d=2)


async def test_send_to_offline_peer_without_id_still_reports(relay: RunningRelay) -> None:
    alice = await join_as(relay.url, "alice")
    await alice.send({"type": "send", "to": "nobody", "d": 1})
    err = await alice.expect(type="err", code="peer-offline", to="nobody")
    assert "id" not in err


async def test_thousand_messages_arrive_in_order(relay_factory: RelayFactory) -> None:
    relay = await relay_factory(rate_burst=2000)
    alice = await join_as(relay.url, "alice")
    bob = await join_as(relay.url, "bob")
    for n in range(1000):
        await alice.send({"type": "send", "to": "bob", "d": n})
    received = [(await bob.recv())["d"] for _ in range(1000)]
    assert received == list(range(1000))


async def test_pub_reaches_members_but_not_the_sender_unless_echo(relay: RunningRelay) -> None:
    alice = await join_as(relay.url, "alice")
    bob = await join_as(relay.url, "bob")
    outsider = await join_as(relay.url, "outsider")
    for peer in (alice, bob):
        await peer.send({"type": "join", "room": "lobby", "id": "j"})
        await peer.expect(type="ok", id="j")
    await alice.send({"type": "pub", "room": "lobby", "d": "hi", "ev": "chat", "id": 1})
    await alice.expect(type="ok", id=1)
    assert await bob.recv() == {
        "type": "msg",
        "from": "alice",
        "d": "hi",
        "ev": "chat",
        "room": "lobby",
    }
    await alice.send({"type": "pub", "room": "lobby", "d": "again", "echo": True, "id": 2})
    await alice.expect(type="msg", d="again", room="lobby")
    await alice.expect(type="ok", id=2)
    await bob.expect(type="msg", d="again")
    await outsider.send({"type": "ping", "id": "p"})
    await outsider.expect(type="pong", id="p")  # nothing from the room came first


async def test_leave_stops_delivery_and_is_idempotent(relay: RunningRelay) -> None:
    alice = await join_as(relay.url, "alice")
    bob = await join_as(relay.url, "bob")
    await bob.request({"type": "join", "room": "r", "id": 1})
    await bob.request({"type": "leave", "room": "r", "id": 2})
    await bob.send({"type": "leave", "room": "r", "id": 3})
    await bob.expect(type="ok", id=3)
    await alice.send({"type": "pub", "room": "r", "d": 1, "id": 4})
    await alice.expect(type="ok", id=4)
    await bob.send({"type": "ping", "id": 5})
    await bob.expect(type="pong", id=5)


async def test_presence_snapshot_then_join_and_leave_events(relay: RunningRelay) -> None:
    alice = await join_as(relay.url, "alice")
    await alice.send({"type": "join", "room": "r", "presence": True, "id": 1})
    snapshot = await alice.expect(type="presence", room="r", peer="alice", event="join")
    assert snapshot["members"] == ["alice"]
    await alice.expect(type="ok", id=1)
    bob = await join_as(relay.url, "bob")
    await bob.request({"type": "join", "room": "r", "id": 1})
    event = await alice.expect(type="presence", room="r", peer="bob", event="join")
    assert "members" not in event
    await bob.close()
    await alice.expect(type="presence", room="r", peer="bob", event="leave")


async def test_members_without_presence_get_no_presence_events(relay: RunningRelay) -> None:
    alice = await join_as(relay.url, "alice")
    await alice.request({"type": "join", "room": "r", "id": 1})
    bob = await join_as(relay.url, "bob")
    await bob.request({"type": "join", "room": "r", "id": 1})
    await alice.send({"type": "ping", "id": 2})
    await alice.expect(type="pong", id=2)


async def test_joining_again_turns_presence_on_and_off(relay: RunningRelay) -> None:
    alice = await join_as(relay.url, "alice")
    await alice.request({"type": "join", "room": "r", "id": 1})
    await alice.send({"type": "join", "room": "r", "presence": True, "id": 2})
    snapshot = await alice.expect(type="presence", room="r", peer="alice", event="join")
    assert snapshot["members"] == ["alice"]
    await alice.expect(type="ok", id=2)
    bob = await join_as(relay.url, "bob")
    await bob.request({"type": "join", "room": "r", "id": 1})
    await alice.expect(type="presence", room="r", peer="bob", event="join")
    await alice.request({"type": "join", "room": "r", "presence": False, "id": 3})
    carol = await join_as(relay.url, "carol")
    await carol.request({"type": "join", "room": "r", "id": 1})
    await bob.close()
    # Presence off: the next frame alice gets is the pong, not carol's join or bob's leave.
    await alice.send({"type": "ping", "id": 4})
    assert await alice.recv() == {"type": "pong", "id": 4}


async def test_ping_pong_with_and_without_id(relay: RunningRelay) -> None:
    alice = await join_as(relay.url, "alice")
    assert await alice.request({"type": "ping", "id": "x"}) == {"type": "pong", "id": "x"}
    assert await alice.request({"type": "ping"}) == {"type": "pong"}


async def test_room_limits(relay_factory: RelayFactory) -> None:
    relay = await relay_factory(rooms_per_peer=2, peers_per_room=2)
    alice = await join_as(relay.url, "alice")
    for room in ("a", "b"):
        await alice.request({"type": "join", "room": room, "id": room})
    await alice.send({"type": "join", "room": "c", "id": "c"})
    await alice.expect(type="err", code="room-full", id="c")
    await alice.send({"type": "join", "room": "a", "id": "again"})
    await alice.expect(type="ok", id="again")  # re-joining is not a new room
    bob = await join_as(relay.url, "bob")
    await bob.request({"type": "join", "room": "a", "id": 1})
    carol = await join_as(relay.url, "carol")
    await carol.send({"type": "join", "room": "a", "id": 1})
    await carol.expect(type="err", code="room-full", id=1)


async def test_a_peer_that_never_reads_holds_its_senders_only_until_it_is_closed(
    relay_factory: RelayFactory,
) -> None:
    relay = await relay_factory(
        slow_consumer_seconds=1.0, rate_per_second=1e6, rate_burst=10**6, resume_seconds=0
    )
    sender = await join_as(relay.url, "sender")
    other = await join_as(relay.url, "other")
    reader = await join_as(relay.url, "reader")
    stuck = await join_as(relay.url, "stuck")
    # The stuck peer stops reading: its TCP buffers fill, then the relay
    # stops reading the sender (backpressure) instead of buffering more.
    stuck.ws.transport.pause_reading()
    blob = b"x" * 16_000
    answers: list[dict[str, Any]] = []

    async def flood() -> None:
        for n in range(1000):
            await sender.send({"type": "send", "to": "stuck", "d": blob, "id": n})

    async with anyio.create_task_group() as tasks:
        tasks.start_soon(flood)
        # Held or not, the sender's earlier requests were all answered ok...
        answers.append(await sender.expect(type="ok", id=0))
        # ...and the rest of the relay flows while the sender waits.
        for n in range(20):
            await other.send({"type": "send", "to": "reader", "d": n})
            await reader.expect(type="msg", d=n)
        # Once the stuck peer is cut (4008, no resume window) every frame
        # for it is refused, so the sender is read again.
        with anyio.fail_after(10):
            while True:
                reply = await sender.recv()
                if reply["type"] == "err":
                    assert reply["code"] == "peer-offline"
                    break
        tasks.cancel_scope.cancel()
    assert "stuck" not in relay.hub.peers
    await sender.send({"type": "send", "to": "reader", "d": "still here"})
    await reader.expect(type="msg", d="still here")
    stuck.ws.transport.abort()
    for peer in (sender, other, reader):
        await peer.close()


class AnswerLaterBroker(MemoryBroker):
    """Every peer it is asked for is on another node, which answers when the test says."""

    def __init__(self) -> None:
        super().__init__()
        self.sends: list[tuple[str, bytes, Answer]] = []
        self.changed = anyio.Event()

    def send(
        self, peer_id: str, frame: bytes, undelivered: Undelivered | None, answer: Answer
    ) -> None:
        self.sends.append((peer_id, frame, answer))
        self.changed.set()
        self.changed = anyio.Event()

    async def sent(self, count: int) -> None:
        with anyio.fail_after(10):
            while len(self.sends) < count:
                await self.changed.wait()


async def test_sends_without_id_to_another_node_hold_the_sender_and_report_failures(
    relay_factory: RelayFactory,
) -> None:
    broker = AnswerLaterBroker()
    relay = await relay_factory(broker=broker, inflight_per_session=2)
    alice = await join_as(relay.url, "alice")
    bob = await join_as(relay.url, "bob")
    for n in range(3):
        await alice.send({"type": "send", "to": "faraway", "d": n})
    await alice.send({"type": "ping", "id": "p"})
    await broker.sent(2)
    # bob's round trip passes while alice is not read: two sends are in flight.
    await bob.request({"type": "ping", "id": 1})
    assert len(broker.sends) == 2
    session = relay.hub.peers["alice"].session
    assert isinstance(session, Session) and session.inflight == 2
    assert relay.hub.peers["alice"].owed == 2
    broker.sends[0][2](Delivery.DELIVERED)  # delivered: nothing to say
    await broker.sent(3)
    assert session.inflight == 2  # the ping waits again
    broker.sends[1][2](Delivery.OFFLINE)
    err = await alice.expect(type="err", code="peer-offline", to="faraway")
    assert "id" not in err
    await alice.expect(type="pong", id="p")
    broker.sends[2][2](Delivery.OVERLOADED)
    await alice.expect(type="err", code="overloaded", to="faraway")
    assert [msgpack.unpackb(frame)["d"] for _to, frame, _answer in broker.sends] == [0, 1, 2]
    assert session.inflight == 0 and relay.hub.peers["alice"].owed == 0
