"""PeerJS sockets on the hub's data path: a reader that stops is closed 4008, nobody else waits."""

from __future__ import annotations

from typing import Any

import anyio
import pytest

from relay.peerjs.protocol import NAMESPACE
from tests.conftest import RelayFactory, RunningRelay
from tests.peerjs.client import PeerJSClient, join_peerjs, until

pytestmark = pytest.mark.anyio

BLOB = "x" * 16_000
# Rates high enough that only backpressure, never the rate limit, slows the senders.
FAST = {"rate_per_second": 100_000, "rate_burst": 100_000}


async def flood(sender: PeerJSClient, dst: str) -> None:
    """Send 16 KB CANDIDATEs to ``dst`` until cancelled."""
    n = 0
    while True:
        await sender.send({"type": "CANDIDATE", "dst": dst, "payload": {"n": n, "blob": BLOB}})
        n += 1


def backlogged(relay: RunningRelay, peer_id: str) -> bool:
    """Whether frames for the PeerJS peer wait in its queue (its socket takes no more)."""
    peer = relay.hub.peers.get(NAMESPACE + peer_id)
    return peer is not None and bool(peer.queue)


async def messages_until(client: PeerJSClient, payload: dict[str, Any]) -> list[dict[str, Any]]:
    """Everything ``client`` receives up to the message carrying ``payload``."""
    received = []
    while (message := await client.recv()).get("payload") != payload:
        received.append(message)
    return received


async def test_peerjs_signalling_on_uvicorn_websockets_sansio(relay_factory: RelayFactory) -> None:
    # whichever implementation is the default, the PeerJS socket runs on this one too
    relay = await relay_factory(ws_impl="websockets-sansio")
    alice = await join_peerjs(relay, "alice")
    bob = await join_peerjs(relay, "bob")
    await alice.send({"type": "OFFER", "dst": "bob", "payload": {"sdp": "o"}})
    assert await bob.recv() == {"type": "OFFER", "src": "alice", "dst": "bob",
                                "payload": {"sdp": "o"}}  # fmt: skip
    await alice.send({"type": "CANDIDATE", "dst": "no such id!", "payload": {}})
    received, code = await alice.drain()
    assert ([m["type"] for m in received], code) == (["ERROR"], 1008)
    await bob.send_raw(b"binary")
    assert (await bob.drain())[1] == 1003


async def test_a_peerjs_peer_that_stops_reading_is_closed_4008_and_its_sender_told(
    relay_factory: RelayFactory,
) -> None:
    relay = await relay_factory(slow_consumer_seconds=1, **FAST)
    alice = await join_peerjs(relay, "alice")
    stuck = await join_peerjs(relay, "stuck")
    stuck.ws.transport.pause_reading()
    async with anyio.create_task_group() as tasks:
        tasks.start_soon(flood, alice, "stuck")
        # alice is not read while stuck's queue waits (TCP slows her down),
        # until the sweep closes stuck; its id is free at once (no resume).
        await until(lambda: NAMESPACE + "stuck" not in relay.hub.peers, seconds=30)
        tasks.cancel_scope.cancel()
    # what stuck's queue still held is reported to alice as EXPIRE, and alice
    # was never closed: her next message reaches her
    await alice.send({"type": "OFFER", "dst": "alice", "payload": {"still": "here"}})
    before = await messages_until(alice, {"still": "here"})
    assert before and all(m == {"type": "EXPIRE", "src": "stuck", "dst": "alice"} for m in before)
    assert relay.hub.metrics.disconnects.labels("slow")._value.get() == 1
    stuck.ws.transport.abort()


async def test_a_peerjs_socket_whose_answers_cannot_reach_it_is_not_read(
    relay_factory: RelayFactory,
) -> None:
    relay = await relay_factory(slow_consumer_seconds=1, inflight_per_session=4, **FAST)
    alice = await join_peerjs(relay, "alice")
    bob = await join_peerjs(relay, "bob")
    alice.ws.transport.pause_reading()
    # bob fills alice's socket: the hub's answers to alice's own sends now
    # wait behind his messages, and the relay keeps each of her messages
    # until its answer comes
    async with anyio.create_task_group() as tasks:
        tasks.start_soon(flood, bob, "alice")
        await until(lambda: backlogged(relay, "alice"), seconds=30)
        tasks.cancel_scope.cancel()
    sent = 40
    for n in range(sent):
        await alice.send({"type": "CANDIDATE", "dst": "bob", "payload": {"from_alice": n}})
    await until(lambda: NAMESPACE + "alice" not in relay.hub.peers, seconds=30)  # closed 4008
    # after 4 unanswered messages alice was not read any more
    await bob.send({"type": "OFFER", "dst": "bob", "payload": {"end": True}})
    received = await messages_until(bob, {"end": True})
    got = [m["payload"]["from_alice"] for m in received if m["type"] == "CANDIDATE"]
    assert got == [0, 1, 2, 3]
    # bob's own flood, read once alice was gone, expired: alice never came back
    assert all(m == {"type": "EXPIRE", "src": "alice", "dst": "bob"}
               for m in received if m["type"] != "CANDIDATE")  # fmt: skip
    alice.ws.transport.abort()
