"""The server-side HTTP API (/v1): Bearer keys, bounded bodies, messages from @server."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import anyio
import httpx
import msgpack
import pytest
from hypothesis import HealthCheck, example, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from relay.api import APIAccess, _APIError
from relay.broker import BrokerUnavailable, MemoryBroker
from relay.broker.memory import MemoryCluster
from relay.settings import Settings
from tests.conftest import RelayFactory, RunningRelay
from tests.peers import join_as

pytestmark = pytest.mark.anyio

KEY = "k-0123456789abcdef"
AUTH = {"Authorization": f"Bearer {KEY}"}


@pytest.fixture
async def relay(relay_factory: RelayFactory) -> RunningRelay:
    return await relay_factory(api_keys=("other-key", KEY), api_max_body_bytes=4096)


@pytest.fixture
async def http(relay: RunningRelay) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=relay.http_url) as client:
        yield client


def assert_error(response: httpx.Response, status: int, code: str) -> None:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert body["error"] == code
    assert body["message"]


# --- keys --------------------------------------------------------------------


async def test_without_configured_keys_the_api_is_disabled(relay_factory: RelayFactory) -> None:
    bare = await relay_factory()
    async with httpx.AsyncClient(base_url=bare.http_url) as client:
        for response in [
            await client.post("/v1/send", json={"to": "a", "d": 1}, headers=AUTH),
            await client.get("/v1/peers/alice"),
            await client.get("/v1/rooms/r", headers=AUTH),
            await client.post("/v1/rooms/r/publish", json={"d": 1}, headers=AUTH),
        ]:
            assert_error(response, 404, "api-disabled")
        # not part of the backends' API: WebRTC pages fetch it without a key (docs/security.md)
        assert (await client.get("/v1/ice-servers")).status_code == 200


async def test_a_request_without_a_key_is_401(http: httpx.AsyncClient) -> None:
    response = await http.post("/v1/send", json={"to": "alice", "d": 1})
    assert_error(response, 401, "unauthorized")
    assert response.headers["www-authenticate"].startswith("Bearer")


@pytest.mark.parametrize(
    "header",
    ["Basic dXNlcjpwYXNz", "Bearer", f"Token {KEY}", KEY, f"Bearer {KEY} extra"],
)
async def test_a_malformed_authorization_header_is_401(
    http: httpx.AsyncClient, header: str
) -> None:
    response = await http.get("/v1/peers/alice", headers={"Authorization": header})
    assert_error(response, 401, "unauthorized")


@pytest.mark.parametrize("key", ["wrong", KEY[:-1], KEY + "x", KEY.upper(), "ünïcode"])
async def test_a_wrong_key_is_403(http: httpx.AsyncClient, key: str) -> None:
    response = await http.post(
        "/v1/send",
        content=b'{"to": "alice", "d": 1}',
        headers={"Authorization": f"Bearer {key}".encode(), "Content-Type": "application/json"},
    )
    assert_error(response, 403, "forbidden")


async def test_a_non_ascii_key_matches_its_utf8_bytes(relay_factory: RelayFactory) -> None:
    relay = await relay_factory(api_keys=("clé-ünïcode",))
    async with httpx.AsyncClient(base_url=relay.http_url) as client:
        good = {"Authorization": "Bearer clé-ünïcode".encode()}
        assert (await client.get("/v1/rooms/r", headers=good)).status_code == 200
        latin = {"Authorization": "Bearer clé-ünïcode".encode("latin-1")}
        assert_error(await client.get("/v1/rooms/r", headers=latin), 403, "forbidden")


async def test_every_configured_key_works(http: httpx.AsyncClient) -> None:
    for key in ("other-key", KEY):
        response = await http.get("/v1/rooms/r", headers={"Authorization": f"bearer {key}"})
        assert response.status_code == 200


# --- bodies ------------------------------------------------------------------


async def test_an_oversized_body_is_413(http: httpx.AsyncClient) -> None:
    response = await http.post("/v1/send", json={"to": "alice", "d": "x" * 5000}, headers=AUTH)
    assert_error(response, 413, "too-large")


async def test_an_oversized_streamed_body_without_length_is_413(
    http: httpx.AsyncClient,
) -> None:
    sent = 0

    async def chunks() -> AsyncIterator[bytes]:
        nonlocal sent
        for _ in range(1000):
            sent += 1024
            yield b" " * 1024

    response = await http.post(
        "/v1/send",
        content=chunks(),
        headers={**AUTH, "Content-Type": "application/json"},
    )
    assert_error(response, 413, "too-large")


async def test_a_body_over_the_frame_limit_is_413(relay_factory: RelayFactory) -> None:
    relay = await relay_factory(api_keys=(KEY,), max_frame_bytes=1024)
    async with httpx.AsyncClient(base_url=relay.http_url) as client:
        response = await client.post("/v1/send", json={"to": "a", "d": "x" * 2000}, headers=AUTH)
    assert_error(response, 413, "too-large")


@pytest.mark.parametrize(
    "content_type", [None, "text/plain", "application/x-www-form-urlencoded", "application/xml"]
)
async def test_a_wrong_content_type_is_415(
    http: httpx.AsyncClient, content_type: str | None
) -> None:
    headers = dict(AUTH)
    if content_type is not None:
        headers["Content-Type"] = content_type
    response = await http.post("/v1/send", content=b'{"to": "alice", "d": 1}', headers=headers)
    assert_error(response, 415, "unsupported-media-type")


@pytest.mark.parametrize(
    ("content_type", "body"),
    [
        ("application/json", b"{not json"),
        ("application/json", b"[1, 2]"),
        ("application/json", b'{"d": 1}'),
        ("application/json", b'{"to": "@server", "d": 1}'),
        ("application/json", b'{"to": "bad id!", "d": 1}'),
        ("application/json", b'{"to": [], "d": 1}'),
        ("application/json", b'{"to": "alice"}'),
        ("application/json", b'{"to": "alice", "d": 1, "from": "bob"}'),
        ("application/json", b'{"to": "alice", "d": 1, "type": "hello"}'),
        ("application/json", b'{"to": "alice", "d": 1, "type": "send"}'),
        ("application/json", b"[" * 2000 + b"]" * 2000),
        ("application/msgpack", b"\xc1"),
        ("application/msgpack", msgpack.packb([1, 2])),
        ("application/msgpack", msgpack.packb({"to": "alice", "d": 1, "type": "hello"})),
        ("application/msgpack", b"\x82\xa2to\xa5alice\xa1d"),
    ],
)
async def test_a_bad_body_is_400(http: httpx.AsyncClient, content_type: str, body: bytes) -> None:
    response = await http.post(
        "/v1/send", content=body, headers={**AUTH, "Content-Type": content_type}
    )
    assert_error(response, 400, "bad-request")


@pytest.mark.parametrize(
    "body",
    [
        b"\xdf\xff\xff\xff\xff",  # a map of 2**32 - 1 entries, declared in 5 bytes
        b"\xdf\xff\xff\xff\xff\xa2to\xa5alice",
        b"\xdf\x00\x00",  # a truncated map32 header
        b"\xde\xff\xff",
        b"\xde",
        b"\x8f",  # 15 entries, none there
        b"\x81\xa1d\xdb\xff\xff\xff\xff",  # a str32 of 4 GiB, declared
        b"\x82\xa2to\xa5alice\xa1d\xdd\x7f\xff\xff\xff",  # an array of 2**31 items
        b"\x82\xa2to\xa5alice\xa1d" + b"\x91" * 2000 + b"\xc0",  # deep nesting
        b"\x82\xa2ev\xcf\xff\xff\xff\xff\xff\xff\xff\xff\xa1d\x01",  # a huge number
        b"\x82\x01\xa5alice\xa1d\x01",  # an integer key
        b"\x82\xa2to\xa2\xff\xfe\xa1d\x01",  # invalid UTF-8
        b"\x82\xa2to\xa5alice\xa1d\x01\x00",  # a trailing byte
    ],
)
@pytest.mark.parametrize("path", ["/v1/send", "/v1/rooms/r/publish"])
async def test_a_malformed_msgpack_body_is_400(
    http: httpx.AsyncClient, path: str, body: bytes
) -> None:
    response = await http.post(
        path, content=body, headers={**AUTH, "Content-Type": "application/msgpack"}
    )
    assert_error(response, 400, "bad-request")


@pytest.mark.parametrize(
    "body",
    [
        b'{"to": "alice", "d": 1',
        b'{"to": "alice", "d": 123456789012345678901234567890}',
        b'{"to": "alice", "d": "\\ud800"}',
        b'{"to": "alice", "d": 1, "ev": 7}',
        b'{"to": "alice", "d": 1, "ev": 1e999}',
        b'{"to": "alice", "d": 1, "id": [1]}',
        b"\xff\xfe{}",
        b"null",
        b'"a string"',
        b"",
    ],
)
@pytest.mark.parametrize("path", ["/v1/send", "/v1/rooms/r/publish"])
async def test_a_malformed_json_body_is_400(
    http: httpx.AsyncClient, path: str, body: bytes
) -> None:
    response = await http.post(
        path, content=body, headers={**AUTH, "Content-Type": "application/json"}
    )
    assert_error(response, 400, "bad-request")


@pytest.mark.parametrize(
    "body", [b'{"to": 5, "d": 1}', b'{"to": {"a": 1}, "d": 1}', b'{"to": [], "d": 1}']
)
async def test_a_send_body_with_a_bad_target_is_400(http: httpx.AsyncClient, body: bytes) -> None:
    response = await http.post(
        "/v1/send", content=body, headers={**AUTH, "Content-Type": "application/json"}
    )
    assert_error(response, 400, "bad-request")


async def test_a_number_too_long_to_parse_is_400(relay_factory: RelayFactory) -> None:
    relay = await relay_factory(api_keys=(KEY,))
    body = b'{"to": "alice", "d": -' + b"9" * 5000 + b"}"  # past Python's int digit limit
    async with httpx.AsyncClient(base_url=relay.http_url) as client:
        response = await client.post(
            "/v1/send", content=body, headers={**AUTH, "Content-Type": "application/json"}
        )
    assert_error(response, 400, "bad-request")


_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=5), inner),
    max_leaves=20,
)
_msgpack = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats()
    | st.text(max_size=20)
    | st.binary(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(st.text(max_size=5) | st.integers(0, 9), inner, max_size=4)
    ),
    max_leaves=20,
)


def _envelopes(values: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """Maps with the API's own keys (some right, mostly wrong) or any value at all."""
    targets = st.sampled_from(["alice", ["alice", "bob"], "bad id", "@server"]) | values
    optional = {"to": targets, "d": values, "ev": values, "room": values, "id": values}
    return st.fixed_dictionaries({}, optional=optional) | values


def _mangled(data: bytes, cut: int, flip: int) -> bytes:
    """``data`` cut to ``cut`` bytes (-1: whole) and one byte inverted at ``flip`` (-1: none)."""
    mangled = bytearray(data if cut < 0 else data[:cut])
    if mangled and flip >= 0:
        mangled[flip % len(mangled)] ^= 0xFF
    return bytes(mangled)


_cut = st.integers(-1, 80)
_bodies = st.one_of(
    st.binary(max_size=64),
    st.builds(
        lambda value, cut, flip: _mangled(msgpack.packb(value), cut, flip),
        _envelopes(_msgpack), _cut, _cut,
    ),
    st.builds(
        lambda value, cut, flip: _mangled(json.dumps(value).encode(), cut, flip),
        _envelopes(_json), _cut, _cut,
    ),
    st.builds(
        lambda head, rest: head + rest,
        st.sampled_from([b"\xde", b"\xdf", b"\x8f", b"\xdc", b"\xdd", b"\xc6", b"\xdb"]),
        st.binary(max_size=8),
    ),
)  # fmt: skip


async def test_no_body_is_a_server_error(relay_factory: RelayFactory) -> None:
    relay = await relay_factory(api_keys=(KEY,), api_rate_per_second=0)
    alice = await join_as(relay.url, "alice")  # a real target for the valid bodies

    @hypothesis_settings(
        max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow]
    )
    @given(
        body=_bodies,
        media=st.sampled_from(["application/json", "application/msgpack"]),
        path=st.sampled_from(["/v1/send", "/v1/rooms/r/publish"]),
    )
    @example(body=b"\xdf\xff\xff\xff\xff", media="application/msgpack", path="/v1/send")
    def check(client: httpx.Client, body: bytes, media: str, path: str) -> None:
        response = client.post(path, content=body, headers={**AUTH, "Content-Type": media})
        assert response.status_code in (200, 400, 413), (body, response.text)
        if response.status_code != 200:
            assert set(response.json()) == {"error", "message"}

    def run() -> None:
        # Synchronous requests from a worker thread, while the relay serves
        # in this test's event loop.
        with httpx.Client(base_url=relay.http_url) as client:
            check(client)

    await anyio.to_thread.run_sync(run)
    await alice.close()


async def test_json_nested_deeper_than_the_limit_is_400(http: httpx.AsyncClient) -> None:
    deep: Any = 1
    for _ in range(40):
        deep = [deep]
    response = await http.post("/v1/send", json={"to": "alice", "d": deep}, headers=AUTH)
    assert_error(response, 400, "bad-request")


# --- send and publish ----------------------------------------------------------


async def test_send_delivers_from_server(relay: RunningRelay, http: httpx.AsyncClient) -> None:
    alice = await join_as(relay.url, "alice")
    bob = await join_as(relay.url, "bob")
    await relay.hub.disconnect("bob", 1001, "drop")  # bob waits for a resume: queued
    response = await http.post(
        "/v1/send",
        json={"to": ["alice", "bob", "nobody"], "d": {"n": 1}, "ev": "notice"},
        headers=AUTH,
    )
    assert response.status_code == 200
    assert response.json() == {
        "delivered": ["alice"],
        "queued": ["bob"],
        "offline": ["nobody"],
        "overloaded": [],
    }
    await alice.expect(type="msg", d={"n": 1}, ev="notice", **{"from": "@server"})
    del bob


async def test_send_with_a_msgpack_body_keeps_the_payload_bytes(
    relay: RunningRelay, http: httpx.AsyncClient
) -> None:
    alice = await join_as(relay.url, "alice")
    payload = msgpack.ExtType(5, b"\x00\x01")
    body = msgpack.packb({"to": "alice", "d": [b"\xff\x00", payload, 1.5]})
    response = await http.post(
        "/v1/send", content=body, headers={**AUTH, "Content-Type": "application/msgpack"}
    )
    assert response.json()["delivered"] == ["alice"]
    message = await alice.expect(type="msg", **{"from": "@server"})
    assert message["d"] == [b"\xff\x00", payload, 1.5]


async def test_send_to_an_unknown_peer_reports_it_offline(http: httpx.AsyncClient) -> None:
    response = await http.post("/v1/send", json={"to": "nobody", "d": 1}, headers=AUTH)
    assert response.status_code == 200
    assert response.json()["offline"] == ["nobody"]


async def test_publish_reaches_every_member(relay: RunningRelay, http: httpx.AsyncClient) -> None:
    alice = await join_as(relay.url, "alice")
    bob = await join_as(relay.url, "bob")
    for peer in (alice, bob):
        await peer.request({"type": "join", "room": "team/a", "id": 1})
    response = await http.post(
        "/v1/rooms/team/a/publish",
        content=msgpack.packb({"d": "all hands", "ev": "news"}),
        headers={**AUTH, "Content-Type": "application/vnd.msgpack"},
    )
    assert response.json() == {"room": "team/a", "published": True}
    for peer in (alice, bob):
        await peer.expect(type="msg", d="all hands", room="team/a", **{"from": "@server"})


async def test_publish_refuses_a_room_in_the_body_and_bad_rooms(
    http: httpx.AsyncClient,
) -> None:
    response = await http.post(
        "/v1/rooms/a/publish",
        content=msgpack.packb({"d": 1, "room": "b"}),
        headers={**AUTH, "Content-Type": "application/msgpack"},
    )
    assert_error(response, 400, "bad-request")
    response = await http.post("/v1/rooms/bad%20room/publish", json={"d": 1}, headers=AUTH)
    assert_error(response, 400, "bad-request")


# --- lookups -------------------------------------------------------------------


async def test_peer_lookup(relay: RunningRelay, http: httpx.AsyncClient) -> None:
    await join_as(relay.url, "alice")
    response = await http.get("/v1/peers/alice", headers=AUTH)
    assert response.json() == {
        "id": "alice",
        "online": True,
        "node": relay.hub.node_id,
        "connected": True,
    }
    response = await http.get("/v1/peers/nobody", headers=AUTH)
    assert response.status_code == 404
    assert response.json()["error"] == "peer-offline"
    assert response.json()["online"] is False
    assert_error(await http.get("/v1/peers/bad%20id", headers=AUTH), 400, "bad-request")


async def test_peer_lookup_finds_other_nodes(relay_factory: RelayFactory) -> None:
    shared = MemoryCluster()
    one = await relay_factory(broker=MemoryBroker(shared), node_id="n1", api_keys=(KEY,))
    two = await relay_factory(broker=MemoryBroker(shared), node_id="n2", api_keys=(KEY,))
    alice = await join_as(two.url, "alice")
    await alice.request({"type": "join", "room": "r", "id": 1})
    bob = await join_as(one.url, "bob")
    await bob.request({"type": "join", "room": "r", "id": 1})
    async with httpx.AsyncClient(base_url=one.http_url) as client:
        found = (await client.get("/v1/peers/alice", headers=AUTH)).json()
        assert found == {"id": "alice", "online": True, "node": "n2"}
        room = (await client.get("/v1/rooms/r", headers=AUTH)).json()
        assert sorted(room["members"]) == ["alice", "bob"]
        assert room["count"] == 2
        sent = await client.post("/v1/send", json={"to": "alice", "d": 2}, headers=AUTH)
        assert sent.json()["delivered"] == ["alice"]
    await alice.expect(type="msg", d=2, **{"from": "@server"})


async def test_room_lookup(relay: RunningRelay, http: httpx.AsyncClient) -> None:
    response = await http.get("/v1/rooms/empty", headers=AUTH)
    assert response.json() == {"room": "empty", "members": [], "count": 0}


# --- rate and Retry-After --------------------------------------------------------


async def test_each_key_has_its_own_request_rate(relay_factory: RelayFactory) -> None:
    relay = await relay_factory(
        api_keys=(KEY, "other-key"), api_rate_per_second=0.01, api_rate_burst=3
    )
    async with httpx.AsyncClient(base_url=relay.http_url) as client:
        for _ in range(3):
            assert (await client.get("/v1/rooms/r", headers=AUTH)).status_code == 200
        limited = await client.get("/v1/rooms/r", headers=AUTH)
        assert_error(limited, 429, "rate-limited")
        assert limited.headers["retry-after"] == "100"
        other = {"Authorization": "Bearer other-key"}
        assert (await client.get("/v1/rooms/r", headers=other)).status_code == 200


def test_the_rate_refusal_says_when_a_token_is_back() -> None:
    now = [0.0]
    access = APIAccess(
        Settings(api_keys=(KEY,), api_rate_per_second=2, api_rate_burst=1),
        clock=lambda: now[0],
    )
    access.check(f"Bearer {KEY}")
    with pytest.raises(_APIError) as limited:
        access.check(f"Bearer {KEY}")
    assert (limited.value.status, limited.value.retry_after) == (429, 1)
    now[0] = 0.5
    access.check(f"Bearer {KEY}")
    unlimited = APIAccess(Settings(api_keys=(KEY,), api_rate_per_second=0, api_rate_burst=1))
    for _ in range(100):
        unlimited.check(f"Bearer {KEY}")


async def test_an_unavailable_backplane_is_503_with_retry_after(
    relay: RunningRelay, http: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def unavailable(*args: Any, **kwargs: Any) -> None:
        raise BrokerUnavailable

    monkeypatch.setattr(relay.hub, "server_send", unavailable)
    response = await http.post("/v1/send", json={"to": "alice", "d": 1}, headers=AUTH)
    assert_error(response, 503, "overloaded")
    assert response.headers["retry-after"] == "1"


async def test_a_draining_node_is_not_ready_with_retry_after(
    relay: RunningRelay, http: httpx.AsyncClient
) -> None:
    assert (await http.get("/readyz")).status_code == 200
    relay.hub.accepting = False
    response = await http.get("/readyz")
    assert (response.status_code, response.json()["status"]) == (503, "draining")
    assert response.headers["retry-after"] == "1"
