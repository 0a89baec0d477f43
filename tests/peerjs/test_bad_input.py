"""Untrusted PeerJS input: each bad frame gets ERROR and a close, and nobody else notices."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator

import pytest

from tests.conftest import RelayFactory, RunningRelay
from tests.peerjs.client import PeerJSClient, join_peerjs, open_peerjs, peerjs_url
from tests.peers import RawPeer, join_as

pytestmark = pytest.mark.anyio

DEEP: object = 1
for _ in range(40):
    DEEP = [DEEP]
OFFER = {"type": "data", "connectionId": "dc_1", "sdp": {"type": "offer", "sdp": "v=0"}}

# (frame, words of the ERROR, close code)
BAD_FRAMES: list[tuple[str | bytes, str, int]] = [
    ("{not json", "malformed JSON", 1008),
    ("", "malformed JSON", 1008),
    ('{"type": "OFFER", "dst": "bob", "payload": {"x": Infinity}}', "malformed JSON", 1008),
    ("[" * 50_000, "malformed JSON", 1008),
    ('["OFFER", "bob"]', "JSON object", 1008),
    ('{"type": "HELLO"}', "unknown message type", 1008),
    ('{"dst": "bob", "payload": {}}', "unknown message type", 1008),
    ('{"type": "EXPIRE", "dst": "bob"}', "unknown message type", 1008),
    ('{"type": "ID-TAKEN", "dst": "bob"}', "unknown message type", 1008),
    (json.dumps({"type": "OFFER", "payload": OFFER}), "dst is required", 1008),
    (json.dumps({"type": "OFFER", "dst": ["bob"], "payload": OFFER}), "dst is required", 1008),
    (json.dumps({"type": "OFFER", "dst": "bob", "src": "alice", "payload": OFFER}), "src", 1008),
    (json.dumps({"type": "OFFER", "dst": "bob", "payload": "sdp"}), "payload object", 1008),
    (json.dumps({"type": "OFFER", "dst": "bob", "payload": {"a": DEEP}}), "deeper", 1008),
    (b'{"type": "HEARTBEAT"}', "binary frames", 1003),
    # valid JSON holding what JSON cannot pass on: a double out of range, a lone surrogate
    ('{"type": "OFFER", "dst": "bob", "payload": {"a": 1e400}}', "cannot carry", 1008),
    ('{"type": "OFFER", "dst": "bob", "payload": {"a": -1e400}}', "cannot carry", 1008),
    ('{"type": "ANSWER", "dst": "bob", "payload": {"s": "\\ud800"}}', "cannot carry", 1008),
    ('{"type": "LEAVE", "dst": "bob", "payload": ["\\udfff"]}', "cannot carry", 1008),
    ('{"type": "CANDIDATE", "dst": "bob", "payload": {"\\ud83d": 1}}', "cannot carry", 1008),
    # a dst no peer can ever hold: too long, outside the id charset
    (
        json.dumps({"type": "OFFER", "dst": "x" * 50_000, "payload": OFFER}),
        "dst is not an id",
        1008,
    ),
    (json.dumps({"type": "OFFER", "dst": "x" * 65, "payload": OFFER}), "dst is not an id", 1008),
    (json.dumps({"type": "OFFER", "dst": "bad id!", "payload": OFFER}), "dst is not an id", 1008),
    (json.dumps({"type": "LEAVE", "dst": "@peerjs/bob"}), "dst is not an id", 1008),
    ('{"type": "OFFER", "dst": "b\\ud800", "payload": {}}', "dst is not an id", 1008),
]


@pytest.fixture
def errors_logged() -> Iterator[list[logging.LogRecord]]:
    """Records at ERROR or above from the relay's loggers and uvicorn's (which do not propagate)."""
    records: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    handler = Keep(logging.ERROR)
    loggers = [logging.getLogger(), logging.getLogger("uvicorn")]
    for logger in loggers:
        logger.addHandler(handler)
    yield records
    for logger in loggers:
        logger.removeHandler(handler)


async def bystanders(relay: RunningRelay) -> tuple[PeerJSClient, PeerJSClient, RawPeer]:
    return (
        await join_peerjs(relay, "alice"),
        await join_peerjs(relay, "bob"),
        await join_as(relay.url, "carol"),
    )


async def nobody_noticed(relay: RunningRelay, alice: PeerJSClient, bob: PeerJSClient) -> None:
    """The next thing alice and bob get is what is sent now: nothing came before it."""
    await alice.send({"type": "OFFER", "dst": "bob", "payload": {"check": 1}})
    assert await bob.recv() == {"type": "OFFER", "src": "alice", "dst": "bob",
                                "payload": {"check": 1}}  # fmt: skip
    await bob.send({"type": "ANSWER", "dst": "alice", "payload": {"check": 2}})
    await alice.expect(type="ANSWER", src="bob", payload={"check": 2})


async def test_each_bad_frame_gets_error_then_a_close(
    relay: RunningRelay, errors_logged: list[logging.LogRecord]
) -> None:
    alice, bob, carol = await bystanders(relay)
    for n, (frame, words, code) in enumerate(BAD_FRAMES):
        mallory = await join_peerjs(relay, f"mallory{n}")
        await mallory.send_raw(frame)
        received, closed = await mallory.drain()
        assert [m["type"] for m in received] == ["ERROR"], (frame, received)
        assert words in received[0]["payload"]["msg"], (frame, received)
        assert closed == code, frame
    await nobody_noticed(relay, alice, bob)
    await carol.send({"type": "ping", "id": 1})
    await carol.expect(type="pong", id=1)  # the native bystander got nothing else either
    assert [record.getMessage() for record in errors_logged] == []


async def test_a_spoofed_src_reaches_no_one(relay: RunningRelay) -> None:
    alice, bob, _carol = await bystanders(relay)
    mallory = await join_peerjs(relay, "mallory")
    await mallory.send({"type": "OFFER", "src": "alice", "dst": "bob", "payload": OFFER})
    received, closed = await mallory.drain()
    assert received == [{"type": "ERROR", "payload": {"msg": "src is stamped by the server "
                                                              "and may not be set"}}]  # fmt: skip
    assert closed == 1008
    await nobody_noticed(relay, alice, bob)


async def test_an_oversize_frame_closes_1009(relay_factory: RelayFactory) -> None:
    relay = await relay_factory(max_frame_bytes=4096)
    alice, bob, _carol = await bystanders(relay)
    mallory = await join_peerjs(relay, "mallory")
    await mallory.send({"type": "OFFER", "dst": "bob", "payload": {"sdp": "x" * 5000}})
    _received, closed = await mallory.drain()
    assert closed == 1009
    await nobody_noticed(relay, alice, bob)


async def test_a_flood_gets_error_and_4029(relay_factory: RelayFactory) -> None:
    relay = await relay_factory(rate_per_second=5, rate_burst=10)
    alice, bob, _carol = await bystanders(relay)
    mallory = await join_peerjs(relay, "mallory")
    for n in range(30):
        await mallory.send({"type": "CANDIDATE", "dst": "alice", "payload": {"n": n}})
    received, closed = await mallory.drain()
    assert received[-1] == {"type": "ERROR", "payload": {"msg": "rate limit exceeded"}}
    assert closed == 4029
    # what got through before the limit reached alice, in order, from mallory
    flood = [await alice.recv() for _ in range(10)]
    assert [m["payload"]["n"] for m in flood] == list(range(10))
    await nobody_noticed(relay, alice, bob)


async def test_a_pre_connect_queue_cannot_grow_past_its_bytes(relay_factory: RelayFactory) -> None:
    relay = await relay_factory(peerjs_queue_bytes=2000, peerjs_expire_seconds=30)
    alice, bob, _carol = await bystanders(relay)
    mallory = await join_peerjs(relay, "mallory")
    for n in range(3):
        await mallory.send({"type": "OFFER", "dst": f"absent{n}", "payload": {"x": "y" * 900}})
    await mallory.expect(type="EXPIRE", src="absent2")
    await nobody_noticed(relay, alice, bob)


@pytest.mark.parametrize(
    "peer_id", ["bad id!", "a__b", " lead", "trail-", "@peerjs/x", "é", "x" * 65, "a/b"]
)
async def test_ids_outside_the_charset_are_refused(relay: RunningRelay, peer_id: str) -> None:
    client = await open_peerjs(peerjs_url(relay, id=peer_id, token="t"))
    received, closed = await client.drain()
    assert [m["type"] for m in received] == ["ERROR"]
    assert received[0]["payload"]["msg"].startswith("invalid id")
    assert closed == 1008


@pytest.mark.parametrize(
    ("query", "words"),
    [
        ({"id": "alice", "token": "t", "key": "wrong"}, "Invalid key provided"),
        ({"id": "alice", "key": "peerjs"}, "No id, token, or key supplied to websocket server"),
        ({"token": "t", "key": "peerjs"}, "No id, token, or key supplied to websocket server"),
        ({"id": "alice", "token": "t" * 5000, "key": "peerjs"}, "token exceeds"),
    ],
)
async def test_missing_or_wrong_parameters_get_peerjs_server_errors(
    relay: RunningRelay, query: dict[str, str], words: str
) -> None:
    url = peerjs_url(relay).split("?")[0] + "?" + "&".join(f"{k}={v}" for k, v in query.items())
    client = await open_peerjs(url)
    received, closed = await client.drain()
    assert received == [{"type": "ERROR", "payload": {"msg": received[0]["payload"]["msg"]}}]
    assert words in received[0]["payload"]["msg"]
    assert closed == 1008
