"""The connect and join proxies and RPC to ``@backend``, against a real HTTP backend.

The backend is a Starlette app served by uvicorn on a free port in the
test's own loop (as in tests/test_webhooks.py). It checks every request's
``Relay-Signature``, records it, and answers with whatever the test set for
its path: allow, refuse, garbage, or hang until released, so timeouts and
bounds are driven by what it saw, not by sleeps.
"""

from __future__ import annotations

import json
import struct
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import msgpack
import pytest
import relay_client
from anyio.streams.text import TextReceiveStream
from click.testing import CliRunner
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from relay.broker import MemoryBroker
from relay.broker.memory import MemoryCluster
from relay.cli import main
from relay.events import SessionObserver
from relay.proxy import RpcCaller
from relay.settings import SettingError, Settings, describe
from tests.conftest import RelayFactory, RunningRelay
from tests.docblocks import blocks
from tests.hooks import doc_script
from tests.inloop import serving_app
from tests.jwtkit import SECRET as JWT_SECRET
from tests.jwtkit import hs256
from tests.peers import join_as, open_peer
from tests.redis_server import free_port
from tests.test_webhooks import sample, verified

pytestmark = pytest.mark.anyio

ROOT = Path(__file__).resolve().parents[1]
SECRET = "whsec-" + "p" * 32
WAIT = 10.0


@dataclass
class Seen:
    """One request the backend received."""

    path: str
    body: bytes
    content_type: str
    fields: Any  # the body decoded (JSON or msgpack)


Answerer = Callable[[Seen], Awaitable[Response]]


class Backend:
    """Answers /connect, /join and /rpc as the test says; records every request."""

    def __init__(self) -> None:
        self.seen: list[Seen] = []
        self.answers: dict[str, Answerer] = {
            "connect": allow(),
            "join": allow(),
            "rpc": echo,
        }
        self.release = anyio.Event()  # ends every hang
        self._changed = anyio.Event()
        self.base = ""

    def url(self, path: str) -> str:
        return f"{self.base}/{path}"

    def asked(self, path: str) -> list[Any]:
        return [seen.fields for seen in self.seen if seen.path == path]

    async def endpoint(self, request: Request) -> Response:
        body = await request.body()
        assert verified(SECRET.encode(), request.headers.get("relay-signature", ""), body)
        content_type = request.headers["content-type"]
        if content_type == "application/msgpack":
            fields = msgpack.unpackb(body, strict_map_key=False)
        else:
            assert content_type == "application/json"
            fields = json.loads(body)
        seen = Seen(request.url.path.strip("/"), body, content_type, fields)
        self.seen.append(seen)
        self._changed.set()
        return await self.answers[seen.path](seen)

    async def until(self, done: Callable[[], bool]) -> None:
        with anyio.fail_after(WAIT):
            while not done():
                self._changed = anyio.Event()
                await self._changed.wait()

    async def hang(self, seen: Seen) -> Response:
        """Answer once released: allow, or an RPC's echo."""
        await self.release.wait()
        return await echo(seen) if seen.path == "rpc" else JSONResponse({"allow": True})


def allow(**extra: Any) -> Answerer:
    async def answer(seen: Seen) -> Response:
        return JSONResponse({"allow": True, **extra})

    return answer


def refuse(reason: str) -> Answerer:
    async def answer(seen: Seen) -> Response:
        return JSONResponse({"allow": False, "reason": reason})

    return answer


def raw(body: bytes, status: int = 200, media_type: str = "application/json") -> Answerer:
    async def answer(seen: Seen) -> Response:
        return Response(body, status_code=status, media_type=media_type)

    return answer


async def echo(seen: Seen) -> Response:
    """An RPC answer: what was asked, in the request's own format."""
    fields = seen.fields
    answer = {
        "echo": fields["d"],
        "from": fields["from"],
        "ev": fields["ev"],
        "meta": fields["meta"],
    }
    if seen.content_type == "application/json":
        return JSONResponse(answer)
    return Response(msgpack.packb(answer), media_type="application/msgpack")


@asynccontextmanager
async def serving() -> AsyncIterator[Backend]:
    backend = Backend()
    app = Starlette(routes=[Route("/{path}", backend.endpoint, methods=["POST"])])
    async with serving_app(app, WAIT) as base:
        backend.base = base
        yield backend
        backend.release.set()


@pytest.fixture
async def backend() -> AsyncIterator[Backend]:
    async with serving() as backend:
        yield backend


async def proxied(
    factory: RelayFactory, backend: Backend, *paths: str, **settings: Any
) -> RunningRelay:
    """A relay with ``connect``, ``join`` and/or ``rpc`` pointed at ``backend``."""
    urls = {f"{path}_proxy_url": backend.url(path) for path in paths}
    return await factory(webhook_secret=SECRET, **urls, **settings)


async def refused_hello(
    relay: RunningRelay, peer_id: str, **hello: Any
) -> tuple[dict[str, Any], int]:
    peer = await open_peer(relay.url)
    await peer.send({"type": "hello", "id": peer_id, **hello})
    [err], code = await peer.drain()
    return err, code


# --- the connect proxy ----------------------------------------------------------------


async def test_the_connect_proxy_allows_with_meta_and_rooms(
    relay_factory: RelayFactory, backend: Backend
) -> None:
    backend.answers["connect"] = allow(meta={"plan": "pro", "user": 7}, rooms=["chat-*"])
    relay = await proxied(
        relay_factory, backend, "connect", proxy_headers=("Cookie", "Authorization")
    )
    alice = await open_peer(
        relay.url, additional_headers={"Cookie": "sid=s3cret", "X-Other": "not passed"}
    )
    welcome = await alice.request({"type": "hello", "id": "alice"})
    assert welcome["type"] == "welcome" and welcome["resumed"] is False
    [asked] = backend.asked("connect")
    assert asked == {
        "type": "connect",
        "id": "alice",
        "token": None,
        "address": "127.0.0.1",
        "headers": {"cookie": "sid=s3cret"},
        "node": relay.hub.node_id,
    }
    session = relay.hub.peers["alice"].session
    assert session is not None and session.meta == {"plan": "pro", "user": 7}
    # The granted rooms act as a rooms claim: in, without asking anyone; out, forbidden.
    await alice.send({"type": "join", "room": "chat-1", "id": 1})
    await alice.expect(type="ok", id=1)
    await alice.send({"type": "join", "room": "staff", "id": 2})
    refused = await alice.expect(type="err", code="forbidden", id=2)
    assert "staff" in refused["msg"]
    await alice.send({"type": "pub", "room": "staff", "d": 1, "id": 3})
    await alice.expect(type="err", code="forbidden", id=3)
    await alice.send({"type": "pub", "room": "chat-2", "d": 1, "id": 4})
    await alice.expect(type="ok", id=4)
    assert len(backend.seen) == 1  # only the hello was asked


async def test_a_refusal_is_unauthorized_and_closes_4501(
    relay_factory: RelayFactory, backend: Backend
) -> None:
    backend.answers["connect"] = refuse("banned until Monday")
    relay = await proxied(relay_factory, backend, "connect")
    err, code = await refused_hello(relay, "mallory")
    assert (err["type"], err["code"], err["msg"], code) == (
        "err", "unauthorized", "banned until Monday", 4501
    )  # fmt: skip
    assert "mallory" not in relay.hub.peers
    backend.answers["connect"] = allow()
    await join_as(relay.url, "mallory")  # the id was not kept reserved


@pytest.mark.parametrize(
    "answer",
    [
        raw(b"{not json"),
        raw(b'{"allow": "yes"}'),
        raw(b"[true]"),
        raw(b'{"allow": true}', status=500),
        raw(b'{"allow": true}', status=201),
        allow(rooms=[1, 2]),
        allow(meta="x" * 5000),
        raw(b'{"allow": true, "meta": 18446744073709551616}'),
    ],
    ids=[
        "not-json",
        "allow-not-bool",
        "not-an-object",
        "500",
        "201",
        "bad-rooms",
        "meta-too-big",
        "meta-not-msgpack",
    ],
)
async def test_an_answer_that_cannot_be_used_is_overloaded_1013(
    relay_factory: RelayFactory, backend: Backend, answer: Answerer
) -> None:
    backend.answers["connect"] = answer
    relay = await proxied(relay_factory, backend, "connect")
    err, code = await refused_hello(relay, "alice")
    assert (err["code"], code) == ("overloaded", 1013)
    assert "alice" not in relay.hub.peers
    assert sample(relay, "relay_proxy_requests_total", kind="connect", outcome="failed") == 1


async def test_a_slow_backend_is_overloaded_1013_in_time(
    relay_factory: RelayFactory, backend: Backend
) -> None:
    backend.answers["connect"] = backend.hang
    relay = await proxied(relay_factory, backend, "connect", proxy_timeout_seconds=0.3)
    start = anyio.current_time()
    err, code = await refused_hello(relay, "alice")
    assert (err["code"], code) == ("overloaded", 1013)
    assert 0.3 <= anyio.current_time() - start < 2
    assert "alice" not in relay.hub.peers


async def test_a_backend_that_is_down_is_overloaded_1013(relay_factory: RelayFactory) -> None:
    relay = await relay_factory(
        webhook_secret=SECRET, connect_proxy_url=f"http://127.0.0.1:{free_port()}/connect"
    )
    err, code = await refused_hello(relay, "alice")
    assert (err["code"], code) == ("overloaded", 1013)


async def test_the_python_client_retries_until_the_backend_allows(
    relay_factory: RelayFactory, backend: Backend
) -> None:
    relay = await proxied(relay_factory, backend, "connect")
    async with relay_client.connect(relay.url, id="alice", backoff_base=0.01) as alice:
        tries = 0

        async def down_twice(seen: Seen) -> Response:
            nonlocal tries
            tries += 1
            return Response(status_code=503) if tries <= 2 else JSONResponse({"allow": True})

        backend.answers["connect"] = down_twice
        # Closed 1013 for good: the client comes back with a fresh hello, which is asked.
        assert await relay.hub.disconnect("alice", 1013, "try again")
        await backend.until(lambda: len(backend.asked("connect")) == 4)
        with anyio.fail_after(WAIT):
            await alice.join("lobby")  # on the new session
        assert tries == 3
        assert relay.hub.peers["alice"].rooms == {"lobby": False}


async def test_the_js_client_retries_until_the_backend_allows(
    relay_factory: RelayFactory, backend: Backend
) -> None:
    relay = await proxied(relay_factory, backend, "connect")
    script = """
import WebSocket from "ws";
import { connect } from "relay-client";
import { createInterface } from "node:readline";
const peer = await connect(process.argv[1], { id: "js", WebSocket, backoff: { base: 10 } });
console.log("connected");
const input = createInterface({ input: process.stdin });
await new Promise((resolve) => input.once("line", resolve));
input.close();
await peer.join("lobby"); // sent once registered again
console.log("joined");
await peer.close();
"""
    tries = 0

    async def down_twice(seen: Seen) -> Response:
        nonlocal tries
        tries += 1
        return Response(status_code=503) if tries <= 2 else JSONResponse({"allow": True})

    async with await anyio.open_process(
        ["node", "--input-type=module", "-e", script, relay.url], cwd=ROOT / "clients" / "js"
    ) as node:
        assert node.stdout is not None and node.stdin is not None
        lines = TextReceiveStream(node.stdout)
        printed = ""
        with anyio.fail_after(WAIT):
            while "connected" not in printed:
                printed += await lines.receive()
        backend.answers["connect"] = down_twice
        # Closed 1013 for good: the client comes back with a fresh hello, which is asked.
        assert await relay.hub.disconnect("js", 1013, "try again")
        await backend.until(lambda: len(backend.asked("connect")) == 4)
        assert tries == 3
        await node.stdin.send(b"go\n")
        with anyio.fail_after(WAIT):
            while "joined" not in printed:
                printed += await lines.receive()
            assert await node.wait() == 0
    assert printed.splitlines() == ["connected", "joined"]


async def test_with_jwt_the_proxy_sees_the_token_and_cannot_change_the_id(
    relay_factory: RelayFactory, backend: Backend
) -> None:
    relay = await proxied(relay_factory, backend, "connect", jwt_secret=JWT_SECRET)
    token = hs256("alice")
    alice = await join_as(relay.url, token=token)
    assert alice.welcome["id"] == "alice"
    [asked] = backend.asked("connect")
    assert (asked["id"], asked["token"]) == ("alice", token)
    # A forged token is refused before the backend is asked.
    err, code = await refused_hello(relay, "bob", token=hs256("bob", secret="x" * 40))
    assert (err["code"], code) == ("unauthorized", 4501)
    assert len(backend.asked("connect")) == 1
    # An answer naming another id is not obeyed.
    backend.answers["connect"] = allow(id="mallory")
    err, code = await refused_hello(relay, "bob", token=hs256("bob"))
    assert (err["code"], code) == ("overloaded", 1013)
    assert "bob" not in relay.hub.peers and "mallory" not in relay.hub.peers


async def test_a_resume_is_not_asked_again_and_keeps_its_meta(
    relay_factory: RelayFactory, backend: Backend
) -> None:
    backend.answers["connect"] = allow(meta={"n": 1})
    relay = await proxied(relay_factory, backend, "connect")
    alice = await join_as(relay.url, "alice")
    backend.answers["connect"] = refuse("would refuse a fresh hello")
    again = await join_as(relay.url, "alice", resume=alice.welcome["resume"], received=0)
    assert again.welcome["resumed"] is True
    assert len(backend.asked("connect")) == 1
    session = relay.hub.peers["alice"].session
    assert session is not None and session.meta == {"n": 1}


async def test_a_resume_on_another_node_keeps_meta_and_granted_rooms(
    relay_factory: RelayFactory, backend: Backend
) -> None:
    backend.answers["connect"] = allow(meta={"n": 1}, rooms=["chat-*"])
    shared = MemoryCluster()
    one = await proxied(relay_factory, backend, "connect", broker=MemoryBroker(shared))
    two = await proxied(relay_factory, backend, "connect", broker=MemoryBroker(shared))
    alice = await join_as(one.url, "alice")
    moved = await join_as(two.url, "alice", resume=alice.welcome["resume"], received=0)
    assert moved.welcome["resumed"] is True and moved.welcome["node"] == two.hub.node_id
    assert len(backend.asked("connect")) == 1
    session = two.hub.peers["alice"].session
    assert session is not None and session.meta == {"n": 1}
    await moved.send({"type": "join", "room": "staff", "id": 1})
    await moved.expect(type="err", code="forbidden", id=1)
    await moved.send({"type": "join", "room": "chat-1", "id": 2})
    await moved.expect(type="ok", id=2)


async def test_meta_goes_with_the_peers_webhook_events(
    relay_factory: RelayFactory, backend: Backend
) -> None:
    hooks: list[dict[str, Any]] = []

    async def record(seen: Seen) -> Response:
        hooks.extend(seen.fields["events"])
        return Response(status_code=204)

    backend.answers["hooks"] = record
    backend.answers["connect"] = allow(meta={"user": 7})
    relay = await proxied(
        relay_factory, backend, "connect", webhook_urls=(backend.url("hooks"),),
        webhook_batch_seconds=0,
    )  # fmt: skip
    alice = await join_as(relay.url, "alice")
    await alice.send({"type": "join", "room": "lobby", "id": 1})
    await alice.expect(type="ok", id=1)
    await backend.until(lambda: len(hooks) >= 3)
    by_type = {event["type"]: event for event in hooks}
    assert by_type["peer.online"]["meta"] == {"user": 7}
    assert by_type["room.joined"]["meta"] == {"user": 7}
    assert "meta" not in by_type["room.occupied"]


# --- the join proxy --------------------------------------------------------------------


async def test_the_join_proxy_decides_joins_and_pubs_once_per_room(
    relay_factory: RelayFactory, backend: Backend
) -> None:
    async def rooms_a_to_c(seen: Seen) -> Response:
        allowed = seen.fields["room"] in ("a", "b", "c")
        return JSONResponse({"allow": allowed, "reason": "not for you"})

    backend.answers["join"] = rooms_a_to_c
    backend.answers["connect"] = allow(meta={"user": 7})
    relay = await proxied(relay_factory, backend, "connect", "join")
    alice = await join_as(relay.url, "alice")
    bob = await join_as(relay.url, "bob")
    await bob.send({"type": "join", "room": "a", "id": 1})
    await bob.expect(type="ok", id=1)
    assert backend.asked("join") == [
        {"type": "join", "id": "bob", "room": "a", "meta": {"user": 7}, "node": relay.hub.node_id}
    ]
    await alice.send({"type": "join", "room": "x", "id": 1})
    await alice.expect(type="err", code="forbidden", id=1, msg="not for you")
    # A pub to a room not decided yet is asked (the pub waits), then remembered.
    for n in (2, 3):
        await alice.send({"type": "pub", "room": "a", "d": n, "id": n})
        await alice.expect(type="ok", id=n)
        await bob.expect(type="msg", room="a", d=n)
    await alice.send({"type": "join", "room": "a", "id": 4})
    await alice.expect(type="ok", id=4)
    await alice.send({"type": "pub", "room": "y", "d": 0, "id": 5})
    await alice.expect(type="err", code="forbidden", id=5)
    asked = [(fields["id"], fields["room"]) for fields in backend.asked("join")]
    assert asked == [("bob", "a"), ("alice", "x"), ("alice", "a"), ("alice", "y")]


async def test_a_pub_waiting_for_its_decision_keeps_the_order(
    relay_factory: RelayFactory, backend: Backend
) -> None:
    backend.answers["join"] = backend.hang
    relay = await proxied(relay_factory, backend, "join")
    alice = await join_as(relay.url, "alice")
    bob = await join_as(relay.url, "bob")
    await alice.send({"type": "pub", "room": "a", "d": 1, "echo": True, "id": 1})
    await alice.send({"type": "send", "to": "bob", "d": 2, "id": 2})
    await backend.until(lambda: len(backend.asked("join")) == 1)
    backend.release.set()
    await alice.expect(type="ok", id=1)  # the send after the pub waited for it
    await alice.expect(type="ok", id=2)
    await bob.expect(type="msg", d=2)


async def test_a_token_listing_the_room_is_not_asked(
    relay_factory: RelayFactory, backend: Backend
) -> None:
    backend.answers["join"] = refuse("no")
    relay = await proxied(relay_factory, backend, "join", jwt_secret=JWT_SECRET)
    alice = await join_as(relay.url, token=hs256("alice", rooms=["team-*"]))
    await alice.send({"type": "join", "room": "team-1", "id": 1})
    await alice.expect(type="ok", id=1)
    await alice.send({"type": "pub", "room": "team-2", "d": 1, "id": 2})
    await alice.expect(type="ok", id=2)
    await alice.send({"type": "join", "room": "other", "id": 3})
    await alice.expect(type="err", code="forbidden", id=3)  # the token's own refusal
    bob = await join_as(relay.url, token=hs256("bob"))  # no rooms claim: the proxy decides
    await bob.send({"type": "join", "room": "team-1", "id": 1})
    await bob.expect(type="err", code="forbidden", id=1, msg="no")
    assert [fields["id"] for fields in backend.asked("join")] == ["bob"]


async def test_a_join_proxy_that_fails_is_overloaded_without_a_close(
    relay_factory: RelayFactory, backend: Backend
) -> None:
    backend.answers["join"] = raw(b"oops", status=502)
    relay = await proxied(relay_factory, backend, "join")
    alice = await join_as(relay.url, "alice")
    await alice.send({"type": "join", "room": "a", "id": 1})
    await alice.expect(type="err", code="overloaded", id=1)
    assert "a" not in relay.hub.peers["alice"].rooms
    await alice.send({"type": "ping", "id": 2})
    await alice.expect(type="pong", id=2)


# --- RPC -------------------------------------------------------------------------------


async def test_rpc_from_the_python_client_in_msgpack(
    relay_factory: RelayFactory, backend: Backend
) -> None:
    backend.answers["connect"] = allow(meta={"user": 7})
    relay = await proxied(relay_factory, backend, "connect", "rpc")
    async with relay_client.connect(relay.url, id="alice") as alice:
        with anyio.fail_after(WAIT):
            got = await alice.request("@backend", {"n": 1, "b": b"\x00\xff", 5: [1.5]}, ev="sum")
    assert got == {
        "echo": {"n": 1, "b": b"\x00\xff", 5: [1.5]}, "from": "alice", "ev": "sum",
        "meta": {"user": 7},
    }  # fmt: skip
    [seen] = [seen for seen in backend.seen if seen.path == "rpc"]
    assert seen.content_type == "application/msgpack"
    assert seen.fields["node"] == relay.hub.node_id


async def test_rpc_in_msgpack_is_exact_both_ways(
    relay_factory: RelayFactory, backend: Backend
) -> None:
    float32 = b"\xca" + struct.pack(">f", 0.1)
    backend.answers["rpc"] = raw(float32, media_type="application/msgpack")
    relay = await proxied(relay_factory, backend, "rpc")
    alice = await join_as(relay.url, "alice")
    packb = msgpack.packb
    frame = (
        b"\x85"
        + b"".join(
            packb(key) + packb(value)
            for key, value in {"type": "send", "to": "@backend", "rid": 7, "id": 1}.items()
        )
        + packb("d")
        + float32
    )
    await alice.send_raw(frame)
    with anyio.fail_after(WAIT):
        answer = await alice.ws.recv()
    assert isinstance(answer, bytes) and float32 in answer  # not widened to a float64
    msg = msgpack.unpackb(answer)
    assert (msg["type"], msg["from"], msg["re"]) == ("msg", "@backend", 7)
    await alice.expect(type="ok", id=1)
    [seen] = backend.seen
    assert seen.body.endswith(packb("d") + float32)


async def test_rpc_in_json(relay_factory: RelayFactory, backend: Backend) -> None:
    relay = await proxied(relay_factory, backend, "rpc", rpc_format="json")
    async with relay_client.connect(relay.url, id="alice") as alice:
        with anyio.fail_after(WAIT):
            got = await alice.request("@backend", {"n": [1, 2.5, None, True]})
        assert got == {
            "echo": {"n": [1, 2.5, None, True]},
            "from": "alice",
            "ev": None,
            "meta": None,
        }
        assert backend.seen[0].content_type == "application/json"
        # What JSON cannot carry is refused, saying why, and never sent.
        for payload in (b"\x00", {1: "int key"}):
            with anyio.fail_after(WAIT), pytest.raises(relay_client.BadEnvelope, match="JSON"):
                await alice.request("@backend", payload)
    assert len(backend.seen) == 1


async def test_rpc_failures_are_errs_on_the_send(
    relay_factory: RelayFactory, backend: Backend
) -> None:
    relay = await proxied(relay_factory, backend, "rpc", proxy_timeout_seconds=0.3)
    async with relay_client.connect(relay.url, id="alice") as alice:
        backend.answers["rpc"] = raw(b"no such method", status=404, media_type="text/plain")
        with anyio.fail_after(WAIT), pytest.raises(relay_client.BackendError) as refused:
            await alice.request("@backend", 1)
        assert str(refused.value.message) == "the backend answered 404: no such method"
        backend.answers["rpc"] = raw(b"\xc1", media_type="application/msgpack")  # never valid
        with anyio.fail_after(WAIT), pytest.raises(relay_client.BackendError, match="not msgpack"):
            await alice.request("@backend", 1)
        backend.answers["rpc"] = backend.hang
        with anyio.fail_after(WAIT), pytest.raises(relay_client.Overloaded, match="in time"):
            await alice.request("@backend", 1)
    counted = {
        outcome: sample(relay, "relay_proxy_requests_total", kind="rpc", outcome=outcome)
        for outcome in ("ok", "refused", "failed", "busy")
    }
    assert counted == {"ok": 0, "refused": 1, "failed": 2, "busy": 0}


async def test_rpc_needs_a_url_and_a_rid_and_goes_alone(
    relay_factory: RelayFactory, backend: Backend
) -> None:
    plain = await relay_factory()
    alice = await join_as(plain.url, "alice")
    await alice.send({"type": "send", "to": "@backend", "d": 1, "rid": 1, "id": 1})
    err = await alice.expect(type="err", code="bad-envelope", id=1)
    assert err["msg"] == "@backend is not served here: the relay has no rpc_proxy_url"
    relay = await proxied(relay_factory, backend, "rpc")
    bob = await join_as(relay.url, "bob")
    await bob.send({"type": "send", "to": "@backend", "d": 1, "id": 1})
    err = await bob.expect(type="err", code="bad-envelope", id=1)
    assert err["msg"] == "a send to @backend needs a rid: its answer is a msg with that re"
    await bob.send({"type": "send", "to": ["@backend", "alice"], "d": 1, "rid": 1, "id": 2})
    err = await bob.expect(type="err", code="bad-envelope", id=2)
    assert err["msg"] == "@backend may only be addressed alone, not in a list"
    await bob.send({"type": "send", "to": "@server", "d": 1, "rid": 1, "id": 3})
    await bob.expect(type="err", code="bad-envelope", id=3)  # the other @ ids stay closed
    assert backend.seen == []


@pytest.mark.parametrize("rpc_format", ["msgpack", "json"])
async def test_rpc_from_the_js_client(
    relay_factory: RelayFactory, backend: Backend, rpc_format: str
) -> None:
    relay = await proxied(
        relay_factory, backend, "rpc", proxy_timeout_seconds=0.3, rpc_format=rpc_format
    )
    backend.answers["rpc"] = rpc_by_ev
    script = """
import WebSocket from "ws";
import { connect, BackendError, Overloaded } from "relay-client";
const peer = await connect(process.argv[1], { id: "js", WebSocket });
const got = await peer.request("@backend", { a: 2, b: 3 }, { ev: "add" });
console.log(JSON.stringify(got));
for (const ev of ["fail", "busy"]) {
  try {
    await peer.request("@backend", null, { ev });
  } catch (err) {
    console.log(err.name, err.code, err.message,
                err instanceof BackendError || err instanceof Overloaded);
  }
}
await peer.close();
"""
    with anyio.fail_after(30):
        ran = await anyio.run_process(
            ["node", "--input-type=module", "-e", script, relay.url],
            cwd=ROOT / "clients" / "js",
            check=False,
        )
    assert (ran.returncode, ran.stderr.decode()) == (0, "")
    assert ran.stdout.decode().splitlines() == [
        "5",
        "BackendError backend-error the backend answered 400: bad input true",
        "Overloaded overloaded the backend did not answer in time: try again later true",
    ]
    assert {seen.content_type for seen in backend.seen} == {f"application/{rpc_format}"}
    assert backend.seen[0].fields["d"] == {"a": 2, "b": 3}


async def rpc_by_ev(seen: Seen) -> Response:
    """Add, refuse, or take longer than the relay waits, by ``ev``."""
    fields = seen.fields
    if fields["ev"] == "add":
        total = fields["d"]["a"] + fields["d"]["b"]
        if seen.content_type == "application/json":
            return JSONResponse(total)
        return Response(msgpack.packb(total), media_type="application/msgpack")
    if fields["ev"] == "fail":
        return Response(b"bad input", status_code=400, media_type="text/plain")
    await anyio.sleep(WAIT)  # "busy": the relay gives up after proxy_timeout_seconds
    return Response(status_code=204)


# --- bounds, and who waits for whom ------------------------------------------------------


async def test_calls_in_flight_are_bounded_per_session_and_per_node(
    relay_factory: RelayFactory, backend: Backend
) -> None:
    backend.answers["rpc"] = backend.hang
    relay = await proxied(
        relay_factory, backend, "rpc", "join", proxy_inflight=3, proxy_inflight_per_session=2,
        proxy_timeout_seconds=WAIT,
    )  # fmt: skip
    alice = await join_as(relay.url, "alice")
    bob = await join_as(relay.url, "bob")
    for n in (1, 2, 3):
        await alice.send({"type": "send", "to": "@backend", "d": n, "rid": n, "id": n})
    err = await alice.expect(type="err", code="overloaded", id=3)  # at once, not queued
    assert "proxy_inflight_per_session" in err["msg"]
    await bob.send({"type": "send", "to": "@backend", "d": 4, "rid": 4, "id": 4})
    await bob.send({"type": "send", "to": "@backend", "d": 5, "rid": 5, "id": 5})
    err = await bob.expect(type="err", code="overloaded", id=5)
    assert "in flight" in err["msg"]
    # A decision needs one of the node's slots too: refused at once, not queued.
    await bob.send({"type": "join", "room": "a", "id": 6})
    await bob.expect(type="err", code="overloaded", id=6)
    assert sample(relay, "relay_proxy_requests_total", kind="rpc", outcome="busy") == 2
    assert sample(relay, "relay_proxy_requests_total", kind="join", outcome="busy") == 1
    await backend.until(lambda: len(backend.seen) == 3)
    backend.release.set()
    for peer, rids in ((alice, {1, 2}), (bob, {4})):
        got = [await peer.recv() for _ in range(2 * len(rids))]
        assert {m["re"] for m in got if m["type"] == "msg"} == rids
        assert {m["id"] for m in got if m["type"] == "ok"} == rids


async def test_a_hanging_backend_stalls_nobody_else(
    relay_factory: RelayFactory, backend: Backend
) -> None:
    backend.answers["rpc"] = backend.hang
    relay = await proxied(relay_factory, backend, "rpc", proxy_timeout_seconds=WAIT)
    alice = await join_as(relay.url, "alice")
    bob = await join_as(relay.url, "bob")
    carol = await join_as(relay.url, "carol")
    await alice.send({"type": "send", "to": "@backend", "d": 0, "rid": 1, "id": 1})
    await backend.until(lambda: len(backend.seen) == 1)
    # The caller itself is read on, and nobody else waits.
    await alice.send({"type": "send", "to": "bob", "d": "from alice", "id": 2})
    await bob.expect(type="msg", d="from alice")
    await alice.expect(type="ok", id=2)
    for n in range(20):
        await carol.send({"type": "send", "to": "bob", "d": n, "id": n})
        await bob.expect(type="msg", d=n)
        await carol.expect(type="ok", id=n)
    backend.release.set()
    await alice.expect(type="msg", re=1)
    await alice.expect(type="ok", id=1)


async def test_a_caller_that_left_gets_nothing_and_nothing_is_kept(
    relay_factory: RelayFactory, backend: Backend
) -> None:
    backend.answers["rpc"] = backend.hang
    relay = await proxied(relay_factory, backend, "rpc", proxy_timeout_seconds=WAIT)
    alice = await join_as(relay.url, "alice")
    await alice.send({"type": "send", "to": "@backend", "d": 0, "rid": 1, "id": 1})
    await backend.until(lambda: len(backend.seen) == 1)
    gone = anyio.Event()
    hub = relay.hub
    hub.observers.append(Offline("alice", gone))
    await alice.close()  # 1000: gone for good at once
    with anyio.fail_after(WAIT):
        await gone.wait()
    rpc = hub.backend
    assert isinstance(rpc, RpcCaller) and rpc.calls("alice") == 1
    backend.release.set()
    await eventually(lambda: rpc.calls("alice") == 0)
    assert "alice" not in hub.peers


class Offline(SessionObserver):
    def __init__(self, peer_id: str, event: anyio.Event) -> None:
        self.peer_id = peer_id
        self.event = event

    def offline(self, peer_id: str, reason: str, *, lost_node: str | None = None) -> None:
        if peer_id == self.peer_id:
            self.event.set()


async def eventually(done: Callable[[], bool]) -> None:
    """Poll ``done``: the end of a call's task is nothing anyone can await."""
    with anyio.fail_after(WAIT):
        while not done():  # noqa: ASYNC110
            await anyio.sleep(0.01)


# --- the docs ------------------------------------------------------------------------------


HOOKS_DOC = ROOT / "docs" / "hooks.md"


def test_the_docs_list_every_proxy_setting_with_its_default() -> None:
    text = HOOKS_DOC.read_text()
    rows = {
        line.split("|")[1].strip(" `"): line.split("|")[2].strip()
        for line in text[text.index("### Bounds") :].splitlines()
        if line.startswith("| `")
    }
    names = [info.name for info in describe() if info.group == "proxy"]
    assert sorted(rows) == sorted(names)
    for info in describe():
        if info.name in rows and isinstance(info.default, int | float):
            assert float(rows[info.name]) == info.default, info.name
        elif info.name in rows and info.default:
            assert rows[info.name] == info.default, info.name


async def test_the_docs_example_backend_decides_and_answers(
    relay_factory: RelayFactory, tmp_path: Path
) -> None:
    [code] = [
        b.text for b in blocks(HOOKS_DOC) if b.lang == "python" and "ThreadingHTTPServer" in b.text
    ]
    port = free_port()
    async with doc_script(code.replace("8001", str(port)), tmp_path, SECRET) as printed:
        await printed.until("deciding on")
        base = f"http://127.0.0.1:{port}"
        relay = await relay_factory(
            webhook_secret=SECRET, connect_proxy_url=f"{base}/connect",
            join_proxy_url=f"{base}/join", rpc_proxy_url=f"{base}/rpc", rpc_format="json",
        )  # fmt: skip
        with anyio.fail_after(WAIT):
            async with (
                relay_client.connect(relay.url, id="alice") as alice,
                relay_client.connect(relay.url, id="bob") as bob,
            ):
                await alice.join("pro-chat")
                with pytest.raises(relay_client.Forbidden, match="pro rooms are for the pro plan"):
                    await bob.join("pro-chat")
                assert await alice.request("@backend", [1, 2, 3], ev="add") == 6
                with pytest.raises(relay_client.BackendError, match="404: no method mul"):
                    await alice.request("@backend", [1, 2], ev="mul")
            with pytest.raises(relay_client.Unauthorized, match="banned"):
                async with relay_client.connect(relay.url, id="mallory"):
                    pass


# --- settings ---------------------------------------------------------------------------


def test_a_proxy_url_without_a_secret_stops_the_relay() -> None:
    for name in ("connect_proxy_url", "join_proxy_url", "rpc_proxy_url"):
        with pytest.raises(SettingError, match="need webhook_secret"):
            Settings(**{name: "https://api.example.com/x"})
    result = CliRunner().invoke(main, ["serve", "--rpc-proxy-url", "https://api.example.com/rpc"])
    assert result.exit_code == 2, result.output
    assert result.stderr.strip() == (
        "Error: --rpc-proxy-url https://api.example.com/rpc: proxy URLs need webhook_secret "
        "(it signs every request)"
    )


async def test_without_a_proxy_nothing_is_added(relay: RunningRelay) -> None:
    assert (relay.hub.decider, relay.hub.backend) == (None, None)
    alice = await join_as(relay.url, "alice")
    assert relay.hub.peers["alice"].session.connect_info is None  # type: ignore[union-attr]
    await alice.send({"type": "pub", "room": "a", "d": 1, "id": 1})
    await alice.expect(type="ok", id=1)
