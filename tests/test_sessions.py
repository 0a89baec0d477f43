"""hello, id ownership, takeover and resume against a real relay."""

from __future__ import annotations

import msgpack
import pytest

from tests.conftest import RelayFactory, RunningRelay
from tests.peers import join_as, open_peer, replay_window_after_a_busy_reader

pytestmark = pytest.mark.anyio


async def test_first_envelope_must_be_hello(relay: RunningRelay) -> None:
    peer = await open_peer(relay.url)
    await peer.send({"type": "send", "to": "bob", "d": 1})
    await peer.expect(type="err", code="not-registered")
    assert await peer.closed() == 1008


async def test_a_bad_hello_is_refused_and_closed(relay: RunningRelay) -> None:
    peer = await open_peer(relay.url)
    await peer.send({"type": "hello", "id": "not valid!"})
    await peer.expect(type="err", code="bad-envelope")
    assert await peer.closed() == 1008


async def test_no_hello_in_time_closes_1008(relay_factory: RelayFactory) -> None:
    relay = await relay_factory(hello_timeout_seconds=0.2)
    peer = await open_peer(relay.url)
    assert await peer.closed() == 1008


async def test_text_frame_as_hello_closes_1003(relay: RunningRelay) -> None:
    peer = await open_peer(relay.url)
    await peer.send_raw('{"type": "hello"}')
    assert await peer.closed() == 1003


async def test_a_second_hello_is_a_bad_envelope(relay: RunningRelay) -> None:
    alice = await join_as(relay.url, "alice")
    await alice.send({"type": "hello", "id": "other"})
    await alice.expect(type="err", code="bad-envelope")


async def test_held_id_is_refused_with_id_taken_and_4502(relay: RunningRelay) -> None:
    alice = await join_as(relay.url, "alice")
    impostor = await open_peer(relay.url)
    await impostor.send({"type": "hello", "id": "alice"})
    await impostor.expect(type="err", code="id-taken")
    assert await impostor.closed() == 4502
    wrong_secret = await open_peer(relay.url)
    await wrong_secret.send({"type": "hello", "id": "alice", "resume": "guess"})
    await wrong_secret.expect(type="err", code="id-taken")
    assert await wrong_secret.closed() == 4502
    assert await alice.request({"type": "ping", "id": 1}) == {"type": "pong", "id": 1}


async def test_resume_secret_takes_over_a_live_session(relay: RunningRelay) -> None:
    alice = await join_as(relay.url, "alice")
    await alice.request({"type": "join", "room": "r", "id": 1})
    again = await join_as(relay.url, "alice", resume=alice.welcome["resume"])
    assert again.welcome["resumed"] is True
    assert again.welcome["resume"] != alice.welcome["resume"]
    assert await alice.closed() == 4503
    bob = await join_as(relay.url, "bob")
    await bob.request({"type": "pub", "room": "r", "d": "still a member", "id": 1})
    await again.expect(type="msg", d="still a member", room="r")
    # the old secret is spent
    stale = await open_peer(relay.url)
    await stale.send({"type": "hello", "id": "alice", "resume": alice.welcome["resume"]})
    await stale.expect(type="err", code="id-taken")


async def test_resume_after_a_drop_delivers_what_was_queued_in_order(relay: RunningRelay) -> None:
    bob = await join_as(relay.url, "bob")
    await bob.request({"type": "join", "room": "r", "id": 1})
    alice = await join_as(relay.url, "alice")
    await relay.hub.disconnect("bob", 1001, "test drop")
    assert await bob.closed() == 1001
    for n in range(5):
        await alice.send({"type": "send", "to": "bob", "d": n, "id": n})
        await alice.expect(type="ok", id=n, queued=True)
    await alice.request({"type": "pub", "room": "r", "d": "room", "id": "p"})
    back = await join_as(relay.url, "bob", resume=bob.welcome["resume"])
    assert back.welcome["resumed"] is True
    assert [(await back.recv())["d"] for _ in range(6)] == [0, 1, 2, 3, 4, "room"]
    await alice.send({"type": "send", "to": "bob", "d": "live", "id": "l"})
    await alice.expect(type="ok", id="l")
    await back.expect(type="msg", d="live")
    assert "queued" not in (await alice.request({"type": "send", "to": "bob", "d": 1, "id": 9}))


async def test_an_abrupt_disconnect_keeps_the_session_resumable(relay: RunningRelay) -> None:
    bob = await join_as(relay.url, "bob")
    alice = await join_as(relay.url, "alice")
    bob.ws.transport.abort()
    # Whether the relay had noticed the drop yet or wrote into the dead socket,
    # the message reaches bob once he resumes saying he received nothing.
    await alice.send({"type": "send", "to": "bob", "d": 1, "id": 1})
    await alice.expect(type="ok", id=1)
    back = await join_as(relay.url, "bob", resume=bob.welcome["resume"], received=0)
    assert back.welcome["resumed"] is True
    await back.expect(type="msg", d=1)


async def test_resume_replays_exactly_what_the_client_did_not_receive(
    relay: RunningRelay,
) -> None:
    bob = await join_as(relay.url, "bob")
    alice = await join_as(relay.url, "alice")
    for n in range(5):
        await alice.send({"type": "send", "to": "bob", "d": n})
    assert [(await bob.recv())["d"] for _ in range(2)] == [0, 1]
    # bob's socket "dies" having handed only two envelopes to the application
    back = await join_as(relay.url, "bob", resume=bob.welcome["resume"], received=2)
    await alice.send({"type": "send", "to": "bob", "d": 5})
    assert [(await back.recv())["d"] for _ in range(4)] == [2, 3, 4, 5]
    # the count starts again at each welcome
    again = await join_as(relay.url, "bob", resume=back.welcome["resume"], received=4)
    await alice.send({"type": "send", "to": "bob", "d": 6})
    assert (await again.recv())["d"] == 6


async def test_window_expiry_reports_each_queued_message(relay_factory: RelayFactory) -> None:
    relay = await relay_factory(resume_seconds=0.3)
    bob = await join_as(relay.url, "bob")
    await bob.request({"type": "join", "room": "r", "presence": True, "id": 1})
    await bob.recv()
    alice = await join_as(relay.url, "alice")
    await alice.request({"type": "join", "room": "r", "presence": True, "id": 1})
    await alice.recv()  # snapshot
    await relay.hub.disconnect("bob", 4008, "test drop")
    await alice.send({"type": "send", "to": "bob", "d": 1, "id": "a"})
    await alice.expect(type="ok", id="a", queued=True)
    await alice.send({"type": "send", "to": ["bob"], "d": 2, "id": "b"})
    await alice.expect(type="ok", id="b", queued=True)
    await alice.send({"type": "send", "to": "bob", "d": 3})
    # after the window: a presence leave, then one err per queued message
    got = [await alice.recv() for _ in range(4)]
    assert {"type": "presence", "room": "r", "peer": "bob", "event": "leave"} in got
    errs = [g for g in got if g["type"] == "err"]
    assert [(e["code"], e.get("id"), e["to"]) for e in errs] == [
        ("peer-offline", "a", "bob"),
        ("peer-offline", "b", ["bob"]),
        ("peer-offline", None, "bob"),
    ]
    late = await join_as(relay.url, "bob", resume=bob.welcome["resume"])
    assert late.welcome["resumed"] is False  # a fresh session: rooms are gone
    await alice.send({"type": "pub", "room": "r", "d": "x", "id": 2})
    await alice.expect(type="ok", id=2)
    assert await late.request({"type": "ping", "id": 1}) == {"type": "pong", "id": 1}


async def test_a_clean_close_frees_the_id_at_once(relay: RunningRelay) -> None:
    alice = await join_as(relay.url, "alice")
    bob = await join_as(relay.url, "bob")
    await bob.close(1000)
    reply = await alice.request({"type": "send", "to": "bob", "d": 1, "id": 1})
    assert reply["type"] == "err" and reply["code"] == "peer-offline"
    again = await join_as(relay.url, "bob")
    assert again.welcome["resumed"] is False


async def test_resume_queue_is_bounded(relay_factory: RelayFactory) -> None:
    relay = await relay_factory(queue_messages=3)
    bob = await join_as(relay.url, "bob")
    alice = await join_as(relay.url, "alice")
    await relay.hub.disconnect("bob", 1001)
    await bob.closed()
    for n in range(3):
        await alice.request({"type": "send", "to": "bob", "d": n, "id": n})
    reply = await alice.request({"type": "send", "to": "bob", "d": 3, "id": 3})
    assert (reply["type"], reply["code"], reply["to"]) == ("err", "overloaded", "bob")
    back = await join_as(relay.url, "bob", resume=bob.welcome["resume"])
    assert [(await back.recv())["d"] for _ in range(3)] == [0, 1, 2]


async def test_welcome_precedes_queued_messages(relay: RunningRelay) -> None:
    bob = await join_as(relay.url, "bob")
    alice = await join_as(relay.url, "alice")
    await relay.hub.disconnect("bob")
    await alice.request({"type": "send", "to": "bob", "d": "q", "id": 1})
    back = await open_peer(relay.url)
    await back.send({"type": "hello", "id": "bob", "resume": bob.welcome["resume"]})
    frames = [msgpack.unpackb(await back.ws.recv()) for _ in range(2)]
    assert [f["type"] for f in frames] == ["welcome", "msg"]


async def test_permessage_deflate_is_not_negotiated(relay: RunningRelay) -> None:
    peer = await open_peer(relay.url)  # the websockets client offers it by default
    assert peer.ws.response is not None
    assert "Sec-WebSocket-Extensions" not in peer.ws.response.headers


async def test_a_peer_that_stops_answering_pings_is_reaped(relay_factory: RelayFactory) -> None:
    relay = await relay_factory(
        ping_interval_seconds=0.1, ping_timeout_seconds=0.1, resume_seconds=0.1
    )
    watcher = await join_as(relay.url, "watcher")
    await watcher.send({"type": "join", "room": "r", "presence": True, "id": 1})
    await watcher.expect(type="presence", members=["watcher"])
    await watcher.expect(type="ok", id=1)
    alice = await join_as(relay.url, "alice")
    await alice.request({"type": "join", "room": "r", "id": 1})
    await watcher.expect(type="presence", peer="alice", event="join")
    alice.ws.transport.pause_reading()  # pings go unanswered from now on
    # reaped, then not resumed within the window: the room hears she left
    await watcher.expect(type="presence", peer="alice", event="leave")
    assert "alice" not in relay.hub.peers
    alice.ws.transport.abort()


async def test_a_reader_that_keeps_up_leaves_only_a_little_for_replay(
    relay: RunningRelay,
) -> None:
    # 1.6 MB sent: the size bound alone would keep replay_bytes (1 MiB).
    kept = await replay_window_after_a_busy_reader(relay.url, relay.hub)
    assert kept <= 128 * 1024
