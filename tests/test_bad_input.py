"""Untrusted frames: each gets the protocol's err or close, and nobody else notices."""

from __future__ import annotations

from collections.abc import AsyncIterator

import anyio
import msgpack
import pytest
from websockets.exceptions import InvalidStatus

from tests.conftest import RelayFactory, RunningRelay
from tests.peers import join_as, open_peer

pytestmark = pytest.mark.anyio

HOSTILE_FRAMES = [
    b"",
    b"\x81",  # truncated map
    b"\xc1",  # never-used byte
    msgpack.packb([1, 2, 3]),
    msgpack.packb("hello"),
    msgpack.packb({"type": "send", "to": 5, "d": 1}),
    msgpack.packb({"type": "send", "to": "bob"}),
    msgpack.packb({"type": 3}),
    b"\x83\xa4type\xa4send\xa2to\xa3bob\xa1d\xdd\xff\xff\xff\xff",  # 4 G-element array
    b"\x83\xa4type\xa4send\xa2to\xa3bob\xa1d\xdf\xff\xff\xff\xff",  # 4 G-entry map
    b"\x83\xa4type\xa4send\xa2to\xa3bob\xa1d" + b"\x91" * 60_000 + b"\x00",  # deep
    b"\x83\xa4type\xa4send\xa2to\xa3bob\xa1d" + b"\x91" * 40 + b"\x00",  # past max_depth
]


async def test_each_hostile_frame_gets_an_err_and_bystanders_see_nothing(
    relay_factory: RelayFactory,
) -> None:
    relay = await relay_factory(bad_envelope_budget=100)
    mallory = await join_as(relay.url, "mallory")
    bob = await join_as(relay.url, "bob")
    for frame in HOSTILE_FRAMES:
        await mallory.send_raw(frame)
        err = await mallory.expect(type="err", code="bad-envelope")
        assert err["msg"]
    await mallory.send({"type": "nonsense", "id": 7})
    await mallory.expect(type="err", code="unknown-type", id=7)
    # mallory's session still works, and bob was never disturbed
    await mallory.send({"type": "send", "to": "bob", "d": "fine", "id": 8})
    await mallory.expect(type="ok", id=8)
    await bob.expect(type="msg", d="fine", **{"from": "mallory"})


async def test_bad_envelope_budget_closes_4500(relay_factory: RelayFactory) -> None:
    relay = await relay_factory(bad_envelope_budget=3)
    mallory = await join_as(relay.url, "mallory")
    bob = await join_as(relay.url, "bob")
    for _ in range(4):
        await mallory.send_raw(b"\xc1")
    received, code = await mallory.drain()
    assert code == 4500
    assert len(received) >= 3
    assert {(r["type"], r["code"]) for r in received} == {("err", "bad-envelope")}
    # 4500 is terminal: mallory's id is released at once
    assert (await bob.request({"type": "send", "to": "mallory", "d": 1, "id": 1}))["type"] == "err"


async def test_text_frame_after_hello_closes_1003(relay: RunningRelay) -> None:
    alice = await join_as(relay.url, "alice")
    await alice.send_raw("a text frame")
    assert await alice.closed() == 1003


async def test_oversize_frame_closes_1009(relay_factory: RelayFactory) -> None:
    relay = await relay_factory(max_frame_bytes=1024)
    alice = await join_as(relay.url, "alice")
    bob = await join_as(relay.url, "bob")
    await alice.send({"type": "send", "to": "bob", "d": b"x" * 900, "id": 1})
    await alice.expect(type="ok", id=1)
    await alice.send({"type": "send", "to": "bob", "d": b"x" * 2000, "id": 2})
    assert await alice.closed() == 1009
    await bob.expect(type="msg", d=b"x" * 900)
    assert await bob.request({"type": "ping", "id": 1}) == {"type": "pong", "id": 1}


def pieces(envelope: dict[str, object], frames: int) -> list[bytes]:
    """What websockets sends as ``envelope`` in ``frames`` frames, most of them empty.

    websockets sends each piece of a list as a frame, then an empty final one.
    """
    packed: bytes = msgpack.packb(envelope)
    return [b""] * (frames - 2) + [packed]


async def test_a_message_in_too_many_frames_closes_1009(relay_factory: RelayFactory) -> None:
    relay = await relay_factory(max_fragments=4)
    alice = await join_as(relay.url, "alice")
    bob = await join_as(relay.url, "bob")
    await alice.ws.send(pieces({"type": "send", "to": "bob", "d": "four", "id": 1}, 4))
    await alice.expect(type="ok", id=1)
    await alice.ws.send(pieces({"type": "send", "to": "bob", "d": "five", "id": 2}, 5))
    assert await alice.closed() == 1009
    await bob.expect(type="msg", d="four")
    assert await bob.request({"type": "ping", "id": 1}) == {"type": "pong", "id": 1}


async def test_a_message_not_completed_in_time_closes_1008(relay_factory: RelayFactory) -> None:
    relay = await relay_factory(message_timeout_seconds=0.3)
    alice = await join_as(relay.url, "alice")
    bob = await join_as(relay.url, "bob")

    async def never_ends() -> AsyncIterator[bytes]:
        yield msgpack.packb({"type": "send", "to": "bob", "d": "x", "id": 1})[:5]
        await anyio.sleep_forever()

    async with anyio.create_task_group() as tasks:
        tasks.start_soon(alice.ws.send, never_ends())
        assert await alice.closed() == 1008
        tasks.cancel_scope.cancel()
    assert await bob.request({"type": "ping", "id": 1}) == {"type": "pong", "id": 1}


async def test_flood_is_rate_limited_then_closed_4029(relay_factory: RelayFactory) -> None:
    relay = await relay_factory(rate_per_second=1, rate_burst=5, rate_strikes=10)
    flooder = await join_as(relay.url, "flooder")
    bob = await join_as(relay.url, "bob")
    for n in range(20):
        await flooder.send({"type": "send", "to": "bob", "d": n, "id": n})
    replies, code = await flooder.drain()
    assert code == 4029
    # An ok waits for bob's host to acknowledge the message, so the refusals
    # of later requests may come first: answers are matched by id.
    by_id = {r["id"]: r for r in replies}
    assert len(by_id) == len(replies), "each request is answered once"
    assert [by_id[n]["type"] for n in range(5)] == ["ok"] * 5
    refused = [by_id[n] for n in sorted(by_id) if n >= 5]
    assert {(r["type"], r["code"]) for r in refused} == {("err", "rate-limited")}
    assert sorted(by_id) == list(range(len(replies)))
    assert len(replies) >= 15  # 5 accepted, then 10 strikes before the close
    assert [(await bob.recv())["d"] for _ in range(5)] == [0, 1, 2, 3, 4]


async def test_foreign_origin_is_refused_before_the_upgrade(relay_factory: RelayFactory) -> None:
    relay = await relay_factory(origins=("https://app.example.com",))
    allowed = await open_peer(relay.url, origin="https://app.example.com")
    await allowed.close()
    for origin in ("https://evil.example.com", "https://app.example.com.evil.com", "null"):
        with pytest.raises(InvalidStatus) as refused:
            await open_peer(relay.url, origin=origin)
        assert refused.value.response.status_code == 403


async def test_unknown_subprotocols_are_refused_and_none_is_accepted(relay: RunningRelay) -> None:
    with pytest.raises(InvalidStatus) as refused:
        await open_peer(relay.url, subprotocols=["chat.v2"])
    assert refused.value.response.status_code == 400
    bare = await open_peer(relay.url, subprotocols=None)
    assert bare.ws.subprotocol is None
    await bare.send({"type": "hello", "id": "bare"})
    await bare.expect(type="welcome", id="bare")
    offered = await open_peer(relay.url, subprotocols=["chat.v2", "relay.v1"])
    assert offered.ws.subprotocol == "relay.v1"


async def test_an_internal_error_is_reported_without_details(relay: RunningRelay) -> None:
    alice = await join_as(relay.url, "alice")

    async def broken(*args: object) -> None:
        raise RuntimeError("secret internals")

    relay.hub.join = broken  # type: ignore[method-assign]
    await alice.send({"type": "join", "room": "r", "id": 1})
    err = await alice.expect(type="err", code="internal", id=1)
    assert "secret" not in err["msg"]
    assert await alice.request({"type": "ping", "id": 2}) == {"type": "pong", "id": 2}


async def test_other_websocket_paths_get_404(relay: RunningRelay) -> None:
    with pytest.raises(InvalidStatus) as refused:
        await open_peer(relay.url.replace("/v1/ws", "/v2/ws"))
    assert refused.value.response.status_code == 404
