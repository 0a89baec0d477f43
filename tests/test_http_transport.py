"""The HTTP transport on one node (docs/protocol-http.md): the same session, over requests."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

import anyio
import httpx
import pytest

from relay.httptransport.records import CLOSE, ENVELOPE, KEEPALIVE, record
from tests.conftest import RelayFactory, RunningRelay
from tests.httppeer import HTTPPeer, SessionEnd, StreamReader, envelope_body
from tests.jwtkit import SECRET, hs256
from tests.peers import join_as, open_peer

pytestmark = pytest.mark.anyio


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=10) as client:
        yield client


async def registered(
    relay: RunningRelay, client: httpx.AsyncClient, tasks: anyio.abc.TaskGroup, peer_id: str
) -> tuple[HTTPPeer, StreamReader]:
    peer = HTTPPeer(client, relay.http_url + relay.settings.http_path)
    assert (await peer.open()).status_code == 200
    reader = StreamReader(peer)
    tasks.start_soon(reader.run)
    assert (await peer.send({"type": "hello", "id": peer_id})).status_code == 204
    await reader.envelope(type="welcome", id=peer_id)
    return peer, reader


async def test_a_peer_over_http_talks_with_a_websocket_peer(
    relay: RunningRelay, client: httpx.AsyncClient
) -> None:
    ws = await join_as(relay.url, "bob")
    async with anyio.create_task_group() as tasks:
        alice, stream = await registered(relay, client, tasks, "alice")
        await alice.send({"type": "send", "to": "bob", "d": b"\x00hi", "id": 1})
        await ws.expect(type="msg", **{"from": "alice", "d": b"\x00hi"})
        await stream.envelope(type="ok", id=1)

        await ws.send({"type": "send", "to": "alice", "d": {"n": 1}, "id": 2})
        await stream.envelope(type="msg", **{"from": "bob", "d": {"n": 1}})
        await alice.ack()
        await ws.expect(type="ok", id=2)

        await alice.send({"type": "join", "room": "r", "id": 3})
        await stream.envelope(type="ok", id=3)
        await ws.send({"type": "pub", "room": "r", "d": 7})
        await stream.envelope(type="msg", room="r", d=7)
        await alice.send({"type": "send", "to": "nobody", "d": 1, "id": 4})
        await stream.envelope(type="err", code="peer-offline", id=4)
        stream.scope.cancel()


async def test_ok_waits_until_the_http_reader_reports_the_message(
    relay: RunningRelay, client: httpx.AsyncClient
) -> None:
    ws = await join_as(relay.url, "bob")
    async with anyio.create_task_group() as tasks:
        alice, stream = await registered(relay, client, tasks, "alice")
        await alice.ack()  # the welcome
        await ws.send({"type": "send", "to": "alice", "d": 1, "id": 9})
        await stream.envelope(type="msg", d=1)
        await ws.send({"type": "ping", "id": "p"})
        await ws.expect(type="pong", id="p")  # no ok before it: alice has not reported
        await alice.ack()
        await ws.expect(type="ok", id=9)
        stream.scope.cancel()


async def test_a_batch_sent_again_is_answered_not_read_again(
    relay: RunningRelay, client: httpx.AsyncClient
) -> None:
    async with anyio.create_task_group() as tasks:
        alice, stream = await registered(relay, client, tasks, "alice")
        assert (await alice.send({"type": "ping", "id": 1})).status_code == 204
        assert (await alice.send({"type": "ping", "id": 1}, seq=2)).status_code == 204
        assert (await alice.send({"type": "ping", "id": 2})).status_code == 204
        await stream.envelope(type="pong", id=1)
        await stream.envelope(type="pong", id=2)  # the batch sent twice was read once

        replayed = await alice.send({"type": "ping", "id": 3}, seq=1)
        assert replayed.status_code == 409
        skipped = await alice.send({"type": "ping", "id": 3}, seq=5)
        assert skipped.status_code == 409
        assert b"expected batch 4" in skipped.content
        assert (await alice.send({"type": "ping", "id": 4})).status_code == 204
        await stream.envelope(type="pong", id=4)
        stream.scope.cancel()


async def test_a_cut_stream_opened_again_loses_nothing(
    relay: RunningRelay, client: httpx.AsyncClient
) -> None:
    ws = await join_as(relay.url, "bob")
    async with anyio.create_task_group() as tasks:
        alice, stream = await registered(relay, client, tasks, "alice")
        stream.scope.cancel()  # cut, having read only the welcome
        for n in range(5):
            await ws.send({"type": "send", "to": "alice", "d": n, "id": n})
        await ws.send({"type": "ping", "id": "p"})
        await ws.expect(type="pong", id="p")
        again = StreamReader(alice)
        tasks.start_soon(again.run)
        assert [(await again.envelope(type="msg"))["d"] for _ in range(5)] == list(range(5))
        await alice.ack()
        assert sorted([(await ws.expect(type="ok"))["id"] for _ in range(5)]) == list(range(5))
        # An envelope received but not reported comes again on the next stream.
        await ws.send({"type": "send", "to": "alice", "d": "x"})
        await again.envelope(type="msg", d="x")
        again.scope.cancel()
        alice.received -= 1
        third = StreamReader(alice)
        tasks.start_soon(third.run)
        await third.envelope(type="msg", d="x")
        third.scope.cancel()


async def test_a_new_stream_ends_the_one_before(
    relay: RunningRelay, client: httpx.AsyncClient
) -> None:
    async with anyio.create_task_group() as tasks:
        alice, first = await registered(relay, client, tasks, "alice")
        second = StreamReader(alice)
        tasks.start_soon(second.run)
        assert await first.next() == (-1, None)  # ended, without a close record
        await alice.send({"type": "ping", "id": 1})
        await second.envelope(type="pong", id=1)
        second.scope.cancel()


async def test_long_poll_answers_what_waits_or_a_keepalive(
    relay_factory: RelayFactory, client: httpx.AsyncClient
) -> None:
    relay = await relay_factory(http_poll_seconds=0.3)
    alice = HTTPPeer(client, relay.http_url + relay.settings.http_path)
    await alice.open()
    await alice.send({"type": "hello", "id": "alice"})
    records = await alice.poll()
    assert records[0][0] == ENVELOPE and records[0][1]["type"] == "welcome"
    with anyio.fail_after(5):
        assert await alice.poll() == [(KEEPALIVE, None)]  # held, then nothing came

    async def ping_soon() -> None:
        await alice.send({"type": "ping", "id": 5})

    async with anyio.create_task_group() as tasks:
        tasks.start_soon(ping_soon)
        answered: list[Any] = []
        while not answered:
            answered = [value for kind, value in await alice.poll() if kind == ENVELOPE]
    assert answered[0] == {"type": "pong", "id": 5}
    assert alice.received == 2


async def test_an_idle_session_ends_resumable_and_replays_what_was_not_reported(
    relay_factory: RelayFactory, client: httpx.AsyncClient
) -> None:
    relay = await relay_factory(http_idle_seconds=1.0, http_keepalive_seconds=0.2,
                                http_poll_seconds=0.2)  # fmt: skip
    ws = await join_as(relay.url, "bob")
    alice = HTTPPeer(client, relay.http_url + relay.settings.http_path)
    await alice.open()
    await alice.send({"type": "hello", "id": "alice"})
    welcome = (await alice.poll())[0][1]
    ended = SessionEnd(relay.app.state.http.sessions, alice.secret)
    await ws.send({"type": "send", "to": "alice", "d": "lost", "id": 1})
    await ws.send({"type": "ping", "id": "p"})
    await ws.expect(type="pong", id="p")
    # alice goes silent: after http_idle_seconds its session ends like a dropped socket.
    await ended.wait()
    assert (await alice.ack()).status_code == 404
    back = await open_peer(relay.url)
    await back.send({"type": "hello", "id": "alice", "resume": welcome["resume"], "received": 0})
    await back.expect(type="welcome", resumed=True)
    await back.expect(type="msg", d="lost")
    assert (await ws.recv())["type"] in ("ok", "err")


async def test_the_relay_closing_sends_a_close_record(
    relay_factory: RelayFactory, client: httpx.AsyncClient
) -> None:
    relay = await relay_factory(hello_timeout_seconds=0.3)
    alice = HTTPPeer(client, relay.http_url + relay.settings.http_path)
    await alice.open()
    with anyio.fail_after(5):
        records = await alice.poll()
    assert records == [(CLOSE, {"code": 1008, "reason": "no hello in time"})]
    await alice.ack()
    assert alice.secret not in relay.app.state.http.sessions


async def test_bad_requests_are_refused_and_disturb_nobody(
    relay: RunningRelay, client: httpx.AsyncClient
) -> None:
    base = relay.http_url + relay.settings.http_path
    async with anyio.create_task_group() as tasks:
        alice, stream = await registered(relay, client, tasks, "alice")
        bad = [
            ("send", {"relay-seq": "2"}, b"\x00\x00\x00\x00\x09ab"),  # cut short
            ("send", {"relay-seq": "2"}, record(KEEPALIVE)),  # not an envelope
            ("send", {"relay-seq": "x"}, b""),
            ("send", {"relay-seq": "0"}, b""),
            ("ack", {"relay-received": "99"}, b""),  # more than was sent
            ("ack", {"relay-received": "-1"}, b""),
        ]
        for operation, extra, body in bad:
            response = await client.post(
                f"{base}/{operation}", headers=alice.headers(**extra), content=body
            )
            assert response.status_code == 400, (operation, extra, response.text)
        for secret in ("", "nonsense", "bm9kZQ.unknown", alice.secret + "x"):
            response = await client.post(
                f"{base}/ack", headers={"relay-session": secret, "relay-received": "0"}
            )
            assert response.status_code == 404, secret
        assert (await client.post(f"{base}/other")).status_code == 404
        assert (await client.post(f"{base}/send/more")).status_code == 404
        wrong_method = await client.get(f"{base}/open")
        assert (wrong_method.status_code, wrong_method.headers["allow"]) == (405, "POST")
        huge = {"relay-seq": "2"}
        too_big = b"\x00" * (relay.settings.http_body_bytes + 1)
        response = await client.post(f"{base}/send", headers=alice.headers(**huge),
                                     content=too_big)  # fmt: skip
        assert response.status_code == 413
        # alice's session took none of it as a batch, and goes on.
        assert (await alice.send({"type": "ping", "id": 1})).status_code == 204
        await stream.envelope(type="pong", id=1)

        oversized = {"type": "send", "to": "alice", "d": b"x" * relay.settings.max_frame_bytes}
        response = await client.post(
            f"{base}/send", headers=alice.headers(**{"relay-seq": "3"}),
            content=envelope_body(oversized),
        )  # fmt: skip
        assert response.status_code == 413
        kind, value = await stream.next()
        assert (kind, value["code"]) == (CLOSE, 1009)
        stream.scope.cancel()


async def test_an_http_session_holds_a_connection_of_the_admission_caps(
    relay_factory: RelayFactory, client: httpx.AsyncClient
) -> None:
    relay = await relay_factory(max_connections=1)
    base = relay.http_url + relay.settings.http_path
    first = HTTPPeer(client, base)
    assert (await first.open()).status_code == 200
    refused = await HTTPPeer(client, base).open()
    assert refused.status_code == 503
    assert refused.headers["retry-after"]
    ws_refused = await client.get(
        relay.http_url + relay.settings.path,
        headers={"connection": "upgrade", "upgrade": "websocket",
                 "sec-websocket-version": "13", "sec-websocket-key": "dGhlIHNhbXBsZSBub25jZQ=="},
    )  # fmt: skip
    assert ws_refused.status_code == 503
    await first.close()
    assert (await HTTPPeer(client, base).open()).status_code == 200


async def test_origins_and_cors(relay_factory: RelayFactory, client: httpx.AsyncClient) -> None:
    relay = await relay_factory(origins=("https://app.example",))
    base = relay.http_url + relay.settings.http_path
    assert (await HTTPPeer(client, base).open(origin="https://evil.example")).status_code == 403
    allowed = await HTTPPeer(client, base).open(origin="https://app.example")
    assert allowed.status_code == 200
    assert allowed.headers["access-control-allow-origin"] == "https://app.example"
    preflight = await client.options(
        f"{base}/send",
        headers={
            "origin": "https://app.example",
            "access-control-request-method": "POST",
            "access-control-request-headers": "relay-session, relay-received, relay-seq",
        },
    )
    assert preflight.status_code == 200
    assert "relay-seq" in preflight.headers["access-control-allow-headers"].lower()


async def test_a_stream_nobody_reads_is_closed_4008_and_its_messages_wait_for_a_resume(
    relay_factory: RelayFactory, client: httpx.AsyncClient
) -> None:
    relay = await relay_factory(slow_consumer_seconds=0.5, http_buffer_bytes=4096)
    ws = await join_as(relay.url, "bob")
    alice = HTTPPeer(client, relay.http_url + relay.settings.http_path)
    await alice.open()
    await alice.send({"type": "hello", "id": "alice"})
    welcome = (await alice.poll())[0][1]
    ended = SessionEnd(relay.app.state.http.sessions, alice.secret)
    for n in range(40):  # 40 KiB, ten times what alice may leave unreported
        await ws.send({"type": "send", "to": "alice", "d": b"x" * 1000, "id": n})
    await ended.wait()
    assert relay.hub.peers["alice"].session is None  # kept for a resume
    back = await open_peer(relay.url)
    await back.send({"type": "hello", "id": "alice", "resume": welcome["resume"], "received": 0})
    await back.expect(type="welcome", resumed=True)
    got = [(await back.expect(type="msg"))["d"] for _ in range(40)]
    assert got == [b"x" * 1000] * 40
    answers = [await ws.recv() for _ in range(40)]  # exactly one each, and every one ok
    assert sorted(answer["id"] for answer in answers) == list(range(40))
    assert {answer["type"] for answer in answers} == {"ok"}
    await back.close()
    await ws.close()


async def test_held_streams_leave_the_pending_connection_counts(
    relay_factory: RelayFactory,
) -> None:
    # Three streams held open on a node that lets two connections wait for a request:
    # each stream's session counts toward admission's caps, not its connection.
    relay = await relay_factory(max_pending_connections=2)
    base = relay.http_url + relay.settings.http_path
    async with contextlib.AsyncExitStack() as stack, anyio.create_task_group() as tasks:
        streams = []
        for n in range(3):
            # One connection each for the stream, and one for the requests.
            limits = httpx.Limits(max_connections=2)
            client = await stack.enter_async_context(httpx.AsyncClient(limits=limits, timeout=10))
            peer = HTTPPeer(client, base)
            assert (await peer.open()).status_code == 200
            stream = StreamReader(peer)
            tasks.start_soon(stream.run)
            assert (await peer.send({"type": "hello", "id": f"p{n}"})).status_code == 204
            await stream.envelope(type="welcome")
            streams.append(stream)
        for stream in streams:
            stream.scope.cancel()


async def test_a_flood_of_polls_holds_one_and_answers_the_rest_at_once(
    relay: RunningRelay, client: httpx.AsyncClient
) -> None:
    alice = HTTPPeer(client, relay.http_url + relay.settings.http_path)
    await alice.open()
    await alice.send({"type": "hello", "id": "alice"})
    await alice.poll()  # the welcome
    answers: list[list[tuple[int, Any]]] = []
    all_but_one = anyio.Event()

    async def poll() -> None:
        answers.append(await alice.poll())
        if len(answers) == 49:
            all_but_one.set()

    async with anyio.create_task_group() as tasks:
        for _ in range(50):
            tasks.start_soon(poll)
        with anyio.fail_after(5):  # each new poll ends the one before: 49 come back at once
            await all_but_one.wait()
        assert all(answer == [(KEEPALIVE, None)] for answer in answers)
        await alice.send({"type": "ping", "id": 1})
    assert answers[-1] == [(ENVELOPE, {"type": "pong", "id": 1})]
    assert len(relay.app.state.http.sessions) == 1


async def test_a_drain_closes_http_sessions_with_1001_after_answering(
    relay: RunningRelay, client: httpx.AsyncClient
) -> None:
    async with anyio.create_task_group() as tasks:
        alice, stream = await registered(relay, client, tasks, "alice")
        await alice.send({"type": "ping", "id": 1})
        tasks.start_soon(relay.hub.drain, 2.0)
        await stream.envelope(type="pong", id=1)
        kind, value = await stream.next()
        assert kind == CLOSE and value["code"] == 1001
        assert "not acted on" in value["reason"]
        await alice.ack()
        assert alice.secret not in relay.app.state.http.sessions


async def test_tokens_and_the_rate_limit_hold_over_http(
    relay_factory: RelayFactory, client: httpx.AsyncClient
) -> None:
    relay = await relay_factory(jwt_secret=SECRET, rate_per_second=1, rate_burst=2)
    base = relay.http_url + relay.settings.http_path
    forged = HTTPPeer(client, base)
    await forged.open()
    await forged.send({"type": "hello", "id": "alice", "token": hs256("alice", secret="x" * 40)})
    records = await forged.poll()
    assert records[0][0] == ENVELOPE and records[0][1]["code"] == "unauthorized"
    if len(records) == 1:  # the close record may come in the next answer
        records += await forged.poll()
    assert records[-1][0] == CLOSE and records[-1][1]["code"] == 4501

    alice = HTTPPeer(client, base)
    await alice.open()
    await alice.send({"type": "hello", "id": "alice", "token": hs256("alice")})
    assert (await alice.poll())[0][1]["type"] == "welcome"
    await alice.send(*({"type": "ping", "id": n} for n in range(4)))
    answers: list[dict[str, Any]] = []
    while len(answers) < 4:
        answers += [value for kind, value in await alice.poll() if kind == ENVELOPE]
    assert [a["type"] for a in answers] == ["pong", "pong", "err", "err"]
    assert {a["code"] for a in answers[2:]} == {"rate-limited"}


async def test_a_body_of_empty_envelopes_is_read_one_at_a_time_and_closes_4500(
    relay: RunningRelay, client: httpx.AsyncClient
) -> None:
    async with anyio.create_task_group() as tasks:
        alice, stream = await registered(relay, client, tasks, "alice")
        empty = record(ENVELOPE) * (relay.settings.http_body_bytes // 5)  # 209,715 of them
        response = await client.post(
            relay.http_url + relay.settings.http_path + "/send",
            headers=alice.headers(**{"relay-seq": "2"}), content=empty,
        )  # fmt: skip
        assert response.status_code == 204
        records = [await stream.next()]
        while records[-1][0] == ENVELOPE:
            records.append(await stream.next())
        # Past the budget of bad envelopes the session closes; the rest is not answered.
        budget = relay.settings.bad_envelope_budget
        assert [value["code"] for _, value in records[:-1]] == ["bad-envelope"] * (budget + 1)
        assert (records[-1][0], records[-1][1]["code"]) == (CLOSE, 4500)
        stream.scope.cancel()
