"""The PeerJS endpoint on one node: REST, OPEN, relaying, ID-TAKEN, the pre-connect queue."""

from __future__ import annotations

import time
import uuid

import httpx
import pytest
from websockets.exceptions import InvalidStatus
from websockets.typing import Origin

from relay.peerjs.protocol import DISCOVERY_ROOM, NAMESPACE
from tests.conftest import RelayFactory, RunningRelay
from tests.jwtkit import SECRET, hs256
from tests.peerjs.client import join_peerjs, open_peerjs, peerjs_url, until
from tests.peers import join_as, open_peer

pytestmark = pytest.mark.anyio

OFFER = {"sdp": {"type": "offer", "sdp": "v=0"}, "type": "data", "connectionId": "dc_1"}


async def test_two_peers_signal_through_the_relay_with_src_stamped(relay: RunningRelay) -> None:
    alice = await join_peerjs(relay, "alice")
    bob = await join_peerjs(relay, "bob")
    await alice.send({"type": "OFFER", "dst": "bob", "payload": OFFER, "extra": "dropped"})
    assert await bob.recv() == {"type": "OFFER", "src": "alice", "dst": "bob", "payload": OFFER}
    await bob.send({"type": "ANSWER", "dst": "alice", "payload": {"connectionId": "dc_1"}})
    await alice.expect(type="ANSWER", src="bob", dst="alice", payload={"connectionId": "dc_1"})
    await bob.send({"type": "CANDIDATE", "dst": "alice", "payload": {"candidate": "c"}})
    await alice.expect(type="CANDIDATE", src="bob")
    await alice.send({"type": "LEAVE", "dst": "bob"})
    assert await bob.recv() == {"type": "LEAVE", "src": "alice", "dst": "bob"}
    # heartbeats are answered by nothing, and keep the socket open
    await alice.send({"type": "HEARTBEAT"})
    await alice.send({"type": "OFFER", "dst": "bob", "payload": {"n": 2}})
    await bob.expect(type="OFFER", payload={"n": 2})


async def test_peerjs_peers_are_hub_peers_in_their_own_namespace(
    relay_factory: RelayFactory,
) -> None:
    # even patterns that allow "@" and "/" leave the namespace to the relay
    relay = await relay_factory(id_pattern=r"@peerjs/[a-z]+|[a-z]+", room_pattern=r"[@/A-Za-z0-9]+")
    await join_peerjs(relay, "alice")
    native = await join_as(relay.url, "alice")  # the same id, natively: no clash
    assert NAMESPACE + "alice" in relay.hub.peers and "alice" in relay.hub.peers
    # a native peer can neither claim nor reach the namespace
    intruder = await open_peer(relay.url)
    reply = await intruder.request({"type": "hello", "id": NAMESPACE + "bob"})
    assert reply["code"] == "bad-envelope" and "reserved" in reply["msg"]
    await native.send({"type": "send", "to": NAMESPACE + "alice", "d": 1, "id": 1})
    await native.expect(type="err", code="bad-envelope", id=1)
    for kind in ("join", "pub"):
        await native.send({"type": kind, "room": DISCOVERY_ROOM, "d": 1, "id": 2})
        assert "reserved" in (await native.expect(type="err", code="bad-envelope", id=2))["msg"]
    async with httpx.AsyncClient(base_url=relay.http_url) as http:
        metrics = (await http.get("/metrics")).text
    assert "relay_peers 2.0" in metrics


async def test_a_held_id_gets_id_taken_and_the_holder_keeps_working(relay: RunningRelay) -> None:
    bob = await join_peerjs(relay, "bob", token="bobs-token")
    thief = await open_peerjs(peerjs_url(relay, id="bob", token="other"))
    received, code = await thief.drain()
    assert received == [{"type": "ID-TAKEN", "payload": {"msg": "ID is taken"}}]
    assert code == 4502
    alice = await join_peerjs(relay, "alice")
    await alice.send({"type": "OFFER", "dst": "bob", "payload": OFFER})
    await bob.expect(type="OFFER", src="alice")


async def test_the_same_token_takes_over_a_half_open_socket(relay: RunningRelay) -> None:
    old = await join_peerjs(relay, "bob", token="bobs-token")
    new = await join_peerjs(relay, "bob", token="bobs-token")
    assert (await old.drain())[1] == 4503
    alice = await join_peerjs(relay, "alice")
    await alice.send({"type": "OFFER", "dst": "bob", "payload": OFFER})
    await new.expect(type="OFFER", src="alice")


async def test_an_id_is_free_as_soon_as_its_socket_closes(relay: RunningRelay) -> None:
    bob = await join_peerjs(relay, "bob", token="first")
    await bob.close()
    await until(lambda: NAMESPACE + "bob" not in relay.hub.peers)
    await join_peerjs(relay, "bob", token="second")


async def test_messages_wait_for_a_peer_that_has_not_connected_yet(relay: RunningRelay) -> None:
    alice = await join_peerjs(relay, "alice")
    await alice.send({"type": "OFFER", "dst": "late", "payload": OFFER})
    await alice.send({"type": "CANDIDATE", "dst": "late", "payload": {"candidate": "c1"}})
    late = await join_peerjs(relay, "late")
    await late.expect(type="OFFER", src="alice", payload=OFFER)
    await late.expect(type="CANDIDATE", src="alice", payload={"candidate": "c1"})
    # once it is there, messages go straight through, in order
    await alice.send({"type": "CANDIDATE", "dst": "late", "payload": {"candidate": "c2"}})
    await late.expect(type="CANDIDATE", payload={"candidate": "c2"})


async def test_expire_when_the_peer_never_comes(relay_factory: RelayFactory) -> None:
    relay = await relay_factory(peerjs_expire_seconds=0.5)
    alice = await join_peerjs(relay, "alice")
    started = time.monotonic()
    await alice.send({"type": "LEAVE", "dst": "ghost"})  # dropped, never expires
    await alice.send({"type": "OFFER", "dst": "nobody", "payload": OFFER})
    await alice.send({"type": "CANDIDATE", "dst": "nobody", "payload": {"candidate": "c"}})
    assert await alice.recv() == {"type": "EXPIRE", "src": "nobody", "dst": "alice"}
    assert time.monotonic() - started >= 0.5
    # one EXPIRE per absent peer; the socket stays usable
    await alice.send({"type": "OFFER", "dst": "alice", "payload": {"to": "myself"}})
    await alice.expect(type="OFFER", src="alice", payload={"to": "myself"})


async def test_a_full_pre_connect_queue_expires_that_peer_at_once(
    relay_factory: RelayFactory,
) -> None:
    relay = await relay_factory(peerjs_queue_messages=3, peerjs_expire_seconds=30)
    alice = await join_peerjs(relay, "alice")
    for n in range(4):
        await alice.send({"type": "CANDIDATE", "dst": "absent", "payload": {"n": n}})
    await alice.expect(type="EXPIRE", src="absent")
    # what was held for it is dropped: a later arrival gets only newer messages
    await alice.send({"type": "CANDIDATE", "dst": "absent", "payload": {"n": 4}})
    absent = await join_peerjs(relay, "absent")
    await absent.expect(type="CANDIDATE", payload={"n": 4})


async def test_a_destination_no_peer_can_hold_is_refused_not_held(relay: RunningRelay) -> None:
    alice = await join_peerjs(relay, "alice")
    await alice.send({"type": "OFFER", "dst": "no such id!", "payload": OFFER})
    received, code = await alice.drain()
    assert received == [{"type": "ERROR", "payload": {"msg": "dst is not an id any peer can "
                         "have: letters and digits, with single spaces, _ or - between them, "
                         "at most 64 characters"}}]  # fmt: skip
    assert code == 1008


async def test_a_silent_socket_is_closed_after_the_heartbeat_timeout(
    relay_factory: RelayFactory,
) -> None:
    relay = await relay_factory(peerjs_heartbeat_timeout_seconds=0.3)
    silent = await join_peerjs(relay, "silent")
    started = time.monotonic()
    assert (await silent.drain())[1] == 1008
    assert time.monotonic() - started >= 0.3
    await until(lambda: NAMESPACE + "silent" not in relay.hub.peers)


async def test_rest_id_gives_fresh_ids_and_checks_the_key(relay: RunningRelay) -> None:
    async with httpx.AsyncClient(base_url=relay.http_url) as http:
        first = await http.get("/peerjs/peerjs/id", params={"ts": "1", "version": "1.5.5"})
        second = await http.get("/peerjs/peerjs/id")
        assert first.status_code == 200 and first.headers["cache-control"] == "no-store"
        assert first.text != second.text
        uuid.UUID(first.text)
        await join_peerjs(relay, first.text)
        wrong = await http.get("/peerjs/other-key/id")
        assert wrong.status_code == 404 and wrong.json()["error"] == "invalid-key"
        assert (await http.post("/peerjs/peerjs/id")).status_code == 405


async def test_peer_listing_is_off_unless_enabled(relay_factory: RelayFactory) -> None:
    closed = await relay_factory()
    async with httpx.AsyncClient(base_url=closed.http_url) as http:
        assert (await http.get("/peerjs/peerjs/peers")).status_code == 401
    relay = await relay_factory(peerjs_discovery=True)
    await join_peerjs(relay, "alice")
    bob = await join_peerjs(relay, "bob")
    await join_as(relay.url, "native")
    async with httpx.AsyncClient(base_url=relay.http_url) as http:
        assert (await http.get("/peerjs/peerjs/peers")).json() == ["alice", "bob"]
        await bob.close()
        await until(lambda: NAMESPACE + "bob" not in relay.hub.peers)
        assert (await http.get("/peerjs/peerjs/peers")).json() == ["alice"]


async def test_cors_follows_the_origin_allow_list(relay_factory: RelayFactory) -> None:
    relay = await relay_factory(origins=("https://app.example",))
    async with httpx.AsyncClient(base_url=relay.http_url) as http:
        allowed = await http.get("/peerjs/peerjs/id", headers={"Origin": "https://app.example"})
        assert allowed.headers["access-control-allow-origin"] == "https://app.example"
        foreign = await http.get("/peerjs/peerjs/id", headers={"Origin": "https://evil.example"})
        assert "access-control-allow-origin" not in foreign.headers
    with pytest.raises(InvalidStatus) as refused:
        await open_peerjs(
            peerjs_url(relay, id="a", token="t"), origin=Origin("https://evil.example")
        )
    assert refused.value.response.status_code == 403
    await open_peerjs(peerjs_url(relay, id="a", token="t"), origin=Origin("https://app.example"))
    open_relay = await relay_factory()
    async with httpx.AsyncClient(base_url=open_relay.http_url) as http:
        anyone = await http.get("/peerjs/peerjs/id", headers={"Origin": "https://any.example"})
        assert anyone.headers["access-control-allow-origin"] == "*"


async def test_the_path_and_key_are_settings_and_an_empty_path_turns_it_off(
    relay_factory: RelayFactory,
) -> None:
    custom = await relay_factory(peerjs_path="/signal", peerjs_key="app-key")
    client = await open_peerjs(
        peerjs_url(custom, path="/signal", key="app-key", id="alice", token="t")
    )
    await client.expect(type="OPEN")
    off = await relay_factory(peerjs_path="")
    with pytest.raises(InvalidStatus) as refused:
        await open_peerjs(peerjs_url(off, id="alice", token="t"))
    assert refused.value.response.status_code == 404
    async with httpx.AsyncClient(base_url=off.http_url) as http:
        assert (await http.get("/peerjs/peerjs/id")).status_code == 404


@pytest.mark.parametrize("path", ["peerjs", "/peerjs/", "/"])
def test_a_peerjs_path_the_routes_cannot_use_is_refused(path: str) -> None:
    from relay.app import create_app
    from relay.settings import Settings

    with pytest.raises(ValueError, match="peerjs_path"):
        create_app(Settings(peerjs_path=path))


async def test_with_auth_the_token_is_a_jwt_for_the_peerjs_id(relay_factory: RelayFactory) -> None:
    relay = await relay_factory(jwt_secret=SECRET)
    alice = await join_peerjs(relay, "alice", token=hs256("alice"))
    # the same token also lets alice in natively: one user, two namespaces
    await join_as(relay.url, "alice", token=hs256("alice"))
    for token, words, code in [
        ("peerjs-random-token", "malformed token", 4501),
        (hs256("alice", ttl=-10), "token expired", 4501),
        (hs256("mallory"), "does not allow this id", 1008),
    ]:
        refused = await open_peerjs(peerjs_url(relay, id="alice2", token=token))
        received, closed = await refused.drain()
        assert [m["type"] for m in received] == ["ERROR"] and words in received[0]["payload"]["msg"]
        assert closed == code
    # a valid token for the id takes over wherever the old socket is
    again = await join_peerjs(relay, "alice", token=hs256("alice"))
    assert (await alice.drain())[1] == 4503
    await again.send({"type": "OFFER", "dst": "alice", "payload": {"self": True}})
    await again.expect(type="OFFER", src="alice")


async def test_the_socket_closes_when_its_token_expires(relay_factory: RelayFactory) -> None:
    relay = await relay_factory(jwt_secret=SECRET)
    short = await join_peerjs(relay, "alice", token=hs256("alice", ttl=1))
    received, code = await short.drain()
    assert received == [{"type": "ERROR", "payload": {"msg": "token expired"}}]
    assert code == 4501
