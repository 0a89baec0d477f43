"""relay_client against a real relay: sending, rooms, presence, ping, handlers."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import anyio
import msgpack
import pytest
import relay_client
from relay_client import Ack, Message, Presence

if TYPE_CHECKING:
    from tests.conftest import RunningRelay

pytestmark = pytest.mark.anyio


async def recv(peer: relay_client.Peer, seconds: float = 5) -> Message:
    with anyio.fail_after(seconds):
        return await peer.recv()


async def test_send_to_one_peer_delivers_with_from_and_ev(relay: RunningRelay) -> None:
    async with (
        relay_client.connect(relay.url, id="alice") as alice,
        relay_client.connect(relay.url, id="bob") as bob,
    ):
        assert alice.id == "alice" and alice.connected
        assert alice.welcome is not None and alice.welcome.resumed is False
        assert alice.limits["max_frame_bytes"] == relay.settings.max_frame_bytes
        ack = await alice.send("bob", "hello", ev="chat")
        assert ack == Ack(ack.id, queued=False)
        msg = await recv(bob)
        assert (msg.sender, msg.data, msg.ev, msg.room) == ("alice", "hello", "chat", None)
        assert not msg.from_server and not msg.is_request


async def test_payload_types_round_trip_unchanged(relay: RunningRelay) -> None:
    payloads: list[Any] = [
        None,
        True,
        -7,
        2**63 - 1,
        1.5,
        "text é",
        b"\x00\xffbytes",
        [1, "two", b"3"],
        {"nested": {"list": [1, 2, {"k": None}]}},
        {1: "int key", b"b": "bytes key"},
        msgpack.ExtType(5, b"\x01\x02"),
    ]
    async with (
        relay_client.connect(relay.url, id="alice") as alice,
        relay_client.connect(relay.url, id="bob") as bob,
    ):
        for payload in payloads:
            await alice.send("bob", payload)
        for payload in payloads:
            msg = await recv(bob)
            assert msg.data == payload
            assert type(msg.data) is type(payload)


async def test_send_to_several_peers(relay: RunningRelay) -> None:
    async with (
        relay_client.connect(relay.url, id="alice") as alice,
        relay_client.connect(relay.url, id="bob") as bob,
        relay_client.connect(relay.url, id="carol") as carol,
    ):
        await alice.send(["bob", "carol"], {"n": 1})
        assert (await recv(bob)).data == {"n": 1}
        assert (await recv(carol)).data == {"n": 1}


async def test_send_to_partly_offline_list_raises_peer_offline_with_the_missing(
    relay: RunningRelay,
) -> None:
    async with (
        relay_client.connect(relay.url, id="alice") as alice,
        relay_client.connect(relay.url, id="bob") as bob,
    ):
        with pytest.raises(relay_client.PeerOffline) as caught:
            await alice.send(["bob", "ghost"], "x")
        assert caught.value.to == ["ghost"]
        assert caught.value.code == "peer-offline"
        assert isinstance(caught.value, relay_client.RelayError)
        assert (await recv(bob)).data == "x"  # the reachable one got it
        with pytest.raises(relay_client.PeerOffline) as single:
            await alice.send("ghost", "x")
        assert single.value.to == "ghost"


async def test_server_picks_an_id_when_none_is_given(relay: RunningRelay) -> None:
    async with relay_client.connect(relay.url) as anon:
        assert anon.id
        await anon.send(anon.id, "self")
        assert (await recv(anon)).sender == anon.id


async def test_publish_reaches_members_and_echo_is_opt_in(relay: RunningRelay) -> None:
    async with (
        relay_client.connect(relay.url, id="alice") as alice,
        relay_client.connect(relay.url, id="bob") as bob,
    ):
        await alice.join("lobby")
        await bob.join("lobby")
        assert alice.rooms == {"lobby"}
        await alice.publish("lobby", "one", ev="say")
        msg = await recv(bob)
        assert (msg.sender, msg.room, msg.ev, msg.data) == ("alice", "lobby", "say", "one")
        await alice.publish("lobby", "two", echo=True)
        assert (await recv(alice)).data == "two"
        assert (await recv(bob)).data == "two"
        await bob.leave("lobby")
        assert bob.rooms == frozenset()
        await alice.publish("lobby", "three")
        await alice.send("bob", "marker")
        assert (await recv(bob)).data == "marker"  # "three" never came


async def test_presence_events_and_member_tracking(relay: RunningRelay) -> None:
    async with relay_client.connect(relay.url, id="alice") as alice:
        events: list[Presence] = []
        joined, changed = anyio.Event(), anyio.Event()

        def seen(p: Presence) -> None:
            events.append(p)
            if p.peer == "bob":
                (joined if p.event == "join" else changed).set()

        alice.on_presence(seen)
        await alice.join("lobby", presence=True)
        async with relay_client.connect(relay.url, id="bob") as bob:
            await bob.join("lobby")
            with anyio.fail_after(5):
                await joined.wait()
            assert alice.members("lobby") == {"alice", "bob"}
            await bob.leave("lobby")
        with anyio.fail_after(5):
            await changed.wait()
        assert alice.members("lobby") == {"alice"}
        assert events[0].members is not None and "alice" in events[0].members
        assert ("bob", "join") in [(p.peer, p.event) for p in events]


async def test_ping_returns_round_trip_seconds(relay: RunningRelay) -> None:
    async with relay_client.connect(relay.url, id="alice") as alice:
        rtt = await alice.ping()
        assert 0 < rtt < 5


async def test_on_handlers_sync_and_async_take_their_ev(relay: RunningRelay) -> None:
    async with (
        relay_client.connect(relay.url, id="alice") as alice,
        relay_client.connect(relay.url, id="bob") as bob,
    ):
        got_sync: list[Message] = []
        got_async = anyio.Event()
        seen: list[Any] = []

        async def on_async(msg: Message) -> None:
            seen.append(msg.data)
            got_async.set()

        bob.on("sync", got_sync.append)
        remove = bob.on("async", on_async)
        await alice.send("bob", 1, ev="sync")
        await alice.send("bob", 2, ev="async")
        await alice.send("bob", 3, ev="other")
        assert (await recv(bob)).data == 3  # only unhandled messages reach the inbox
        with anyio.fail_after(5):
            await got_async.wait()
        assert [m.data for m in got_sync] == [1] and seen == [2]
        remove()
        await alice.send("bob", 4, ev="async")
        assert (await recv(bob)).data == 4


async def test_fire_and_forget_returns_none_and_reports_refusals(relay: RunningRelay) -> None:
    async with (
        relay_client.connect(relay.url, id="alice") as alice,
        relay_client.connect(relay.url, id="bob") as bob,
    ):
        errors: list[relay_client.RelayError] = []
        refused = anyio.Event()

        def on_error(exc: relay_client.RelayError) -> None:
            errors.append(exc)
            refused.set()

        alice.on_error(on_error)
        assert await alice.send("bob", "ff", ack=False) is None
        assert (await recv(bob)).data == "ff"
        assert await alice.publish("nowhere", "x", ack=False) is None
        assert await alice.send("ghost", "x", ack=False) is None
        with anyio.fail_after(5):
            await refused.wait()
        assert isinstance(errors[0], relay_client.PeerOffline)
        assert errors[0].request_id is None


async def test_iteration_ends_when_closed_by_the_client(relay: RunningRelay) -> None:
    async with (
        relay_client.connect(relay.url, id="alice") as alice,
        relay_client.connect(relay.url, id="bob") as bob,
    ):
        for i in range(3):
            await alice.send("bob", i)
        got: list[Any] = []
        with anyio.fail_after(5):
            async for msg in bob:
                got.append(msg.data)
                if len(got) == 3:
                    await bob.close()
        assert got == [0, 1, 2]
        assert bob.closed and bob.close_error is None
        with pytest.raises(relay_client.ConnectionClosed) as caught:
            await bob.send("alice", "late")
        assert caught.value.code == 1000


async def test_await_connect_form(relay: RunningRelay) -> None:
    peer = await relay_client.connect(relay.url, id="solo")
    try:
        assert peer.connected
        assert repr(peer).startswith("<Peer id='solo'")
    finally:
        await peer.close()
    await peer.close()  # idempotent


async def test_full_inbox_drops_the_oldest(relay: RunningRelay) -> None:
    async with (
        relay_client.connect(relay.url, id="alice") as alice,
        relay_client.connect(relay.url, id="bob", inbox_size=2) as bob,
    ):
        for i in range(5):
            await alice.send("bob", i)
        await bob.send("bob", "last")  # after alice's five (they were acknowledged)
        await bob.ping()  # the pong comes after everything queued for bob
        assert bob.dropped == 4
        assert [(await recv(bob)).data for _ in range(2)] == [4, "last"]
