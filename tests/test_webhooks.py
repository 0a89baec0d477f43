"""Webhooks against a real HTTP receiver: every event, signed, batched, retried, drained.

The receiver (``tests.hooks``) checks every request with docs/hooks.md's own
check (``verified``; a test below holds them equal), and can be told to fail
its first requests (500) or hang, so retries are driven by what it saw, not
by sleeps.
"""

from __future__ import annotations

import json
import logging
import signal
import time
from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import httpx
import pytest
from click.testing import CliRunner

from relay.broker import MemoryBroker
from relay.broker.memory import MemoryCluster
from relay.cli import main
from relay.metrics import Metrics
from relay.settings import Settings, describe
from relay.webhooks import Event, Sender, Webhooks, sign
from tests.conftest import RelayFactory, RunningRelay
from tests.docblocks import blocks
from tests.hooks import SECRET, WAIT, Receiver, doc_script, fast, serving, settled, verified
from tests.peers import RawPeer, join_as
from tests.redis_server import free_port
from tests.relay_process import relay_process

pytestmark = pytest.mark.anyio

ROOT = Path(__file__).resolve().parents[1]
HOOKS_DOC = ROOT / "docs" / "hooks.md"
OLD_SECRET = "whsec-" + "o" * 32


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    async with serving() as backend:
        yield backend


def sample(relay: RunningRelay, name: str, **labels: str) -> float:
    value = relay.hub.metrics.registry.get_sample_value(name, labels)
    return value or 0.0


# --- the events -------------------------------------------------------------------


async def test_every_event_type_in_order_numbered_and_signed(
    receiver: Receiver, relay_factory: RelayFactory
) -> None:
    relay = await relay_factory(**fast(receiver.url))
    started_ms = time.time() * 1000
    alice = await join_as(relay.url, "alice")
    bob = await join_as(relay.url, "bob")
    await alice.request({"type": "join", "room": "lobby", "id": 1})
    await bob.request({"type": "join", "room": "lobby", "id": 2})
    await alice.request({"type": "leave", "room": "lobby", "id": 3})
    await bob.close()  # a goodbye: gone for good, out of its rooms
    await receiver.until(lambda: len(receiver.events) == 9)
    assert receiver.kinds() == [
        ("peer.online", "alice"),
        ("peer.online", "bob"),
        ("room.occupied", "lobby"),
        ("room.joined", "alice", "lobby"),
        ("room.joined", "bob", "lobby"),
        ("room.left", "alice", "lobby"),
        ("peer.offline", "bob", "closed"),
        ("room.left", "bob", "lobby"),
        ("room.vacated", "lobby"),
    ]
    events = receiver.events
    assert [e["seq"] for e in events] == list(range(1, 10))
    assert len({e["id"] for e in events}) == 9
    assert {e["node"] for e in events} == {relay.hub.node_id}
    assert all(started_ms - 1000 <= e["time_ms"] <= time.time() * 1000 for e in events)
    assert all(body["dropped"] == 0 for body in receiver.accepted)
    # One key, one signature; another key's check fails.
    assert all(header.count("v1=") == 1 for header in receiver.headers)
    await settled(relay)
    assert sample(relay, "relay_webhook_events_sent_total") == 9
    assert sample(relay, "relay_webhook_delivery_seconds_count") == 9
    await alice.close()


async def test_a_resume_is_no_new_online_and_an_ended_window_is_offline_expired(
    receiver: Receiver, relay_factory: RelayFactory
) -> None:
    relay = await relay_factory(**fast(receiver.url, resume_seconds=0.3))
    carol = await join_as(relay.url, "carol")
    await carol.request({"type": "join", "room": "den", "id": 1})
    carol.ws.transport.abort()  # a dropped link: kept for a resume
    back = await join_as(relay.url, "carol", resume=carol.welcome["resume"])
    assert back.welcome["resumed"] is True
    back.ws.transport.abort()  # dropped again, and never resumed
    await receiver.until(lambda: len(receiver.events) == 6)
    assert receiver.kinds() == [
        ("peer.online", "carol"),
        ("room.occupied", "den"),
        ("room.joined", "carol", "den"),
        ("peer.offline", "carol", "expired"),
        ("room.left", "carol", "den"),
        ("room.vacated", "den"),
    ]


async def test_a_peer_resumed_on_another_node_is_neither_offline_nor_online_again(
    receiver: Receiver, relay_factory: RelayFactory
) -> None:
    shared = MemoryCluster()
    one = await relay_factory(broker=MemoryBroker(shared), node_id="n1", **fast(receiver.url))
    two = await relay_factory(broker=MemoryBroker(shared), node_id="n2", **fast(receiver.url))
    alice = await join_as(one.url, "alice")
    await alice.request({"type": "join", "room": "lobby", "id": 1})
    alice.ws.transport.abort()  # a dropped link
    back = await join_as(two.url, "alice", resume=alice.welcome["resume"])
    assert back.welcome["resumed"] is True
    await back.close()  # gone for good, from n2, which took its rooms over
    await receiver.until(lambda: len(receiver.events) == 6)
    kinds = list(zip(receiver.kinds(), receiver.events, strict=True))
    by_node = {node: [kind for kind, e in kinds if e["node"] == node] for node in ("n1", "n2")}
    assert by_node == {
        "n1": [
            ("peer.online", "alice"),
            ("room.occupied", "lobby"),
            ("room.joined", "alice", "lobby"),
        ],
        "n2": [
            ("peer.offline", "alice", "closed"),
            ("room.left", "alice", "lobby"),
            ("room.vacated", "lobby"),
        ],
    }
    # Each node numbers its own stream.
    assert sorted((e["node"], e["seq"]) for e in receiver.events) == [
        ("n1", 1), ("n1", 2), ("n1", 3), ("n2", 1), ("n2", 2), ("n2", 3)
    ]  # fmt: skip


async def test_only_the_chosen_types_are_sent_and_numbered(
    receiver: Receiver, relay_factory: RelayFactory
) -> None:
    relay = await relay_factory(
        **fast(receiver.url, webhook_events=("room.occupied", "room.vacated"))
    )
    alice = await join_as(relay.url, "alice")
    await alice.request({"type": "join", "room": "lobby", "id": 1})
    await alice.close()
    await receiver.until(lambda: len(receiver.events) == 2)
    assert receiver.kinds() == [("room.occupied", "lobby"), ("room.vacated", "lobby")]
    assert [e["seq"] for e in receiver.events] == [1, 2]  # no gap for what is not sent


async def test_no_url_no_observer(relay: RunningRelay) -> None:
    assert relay.app.state.webhooks is None
    assert relay.hub.observers == []


# --- signatures -------------------------------------------------------------------


async def test_while_rotating_both_keys_sign(
    receiver: Receiver, relay_factory: RelayFactory
) -> None:
    relay = await relay_factory(**fast(receiver.url, webhook_previous_secret=OLD_SECRET))
    alice = await join_as(relay.url, "alice")
    await receiver.until(lambda: len(receiver.events) == 1)
    (header,) = receiver.headers
    assert header.count("v1=") == 2
    body = json.dumps(receiver.requests[0], separators=(",", ":")).encode()
    # A backend with either key accepts it; one with neither refuses it.
    assert verified(SECRET.encode(), header, body)
    assert verified(OLD_SECRET.encode(), header, body)
    assert not verified(b"another key", header, body)
    assert not verified(SECRET.encode(), header, body + b" ")
    await alice.close()


def test_the_documented_check_refuses_replays_and_forgeries() -> None:
    body = b'{"events":[],"dropped":0}'
    now = int(time.time())
    assert verified(b"k", sign(body, ["k"], now), body)
    assert not verified(b"k", sign(body, ["k"], now - 301), body)  # a replay
    assert not verified(b"k", sign(body, ["k"], now + 301), body)
    assert not verified(b"k", f"t={now}", body)  # no signature
    assert not verified(b"k", sign(body, ["k"], now) + f",t={now}", body)  # two times
    assert not verified(b"k", "", body)


async def test_each_url_gets_every_event_whatever_the_others_do(
    receiver: Receiver, relay_factory: RelayFactory
) -> None:
    async with serving() as down:
        down.refuse = lambda body: True
        relay = await relay_factory(
            **fast(receiver.url, webhook_urls=(down.url, receiver.url), webhook_drain_seconds=0.1)
        )
        alice = await join_as(relay.url, "alice")
        await receiver.until(lambda: len(receiver.events) == 1)
        await down.until(lambda: len(down.requests) >= 2)  # retried, meanwhile
        await alice.close()
        await receiver.until(lambda: len(receiver.events) == 2)
        assert receiver.kinds() == [("peer.online", "alice"), ("peer.offline", "alice", "closed")]
        assert {e["id"] for e in down.requests[0]["events"]} == {receiver.events[0]["id"]}
        assert down.accepted == []


# --- batches ----------------------------------------------------------------------


async def test_a_full_batch_goes_at_once(receiver: Receiver, relay_factory: RelayFactory) -> None:
    # A batch delay no test would wait for: only the count can send these.
    relay = await relay_factory(
        **fast(receiver.url, webhook_batch_seconds=60.0, webhook_batch_events=3)
    )
    peers = [await join_as(relay.url, f"p{n}") for n in range(7)]
    await receiver.until(lambda: len(receiver.accepted) == 2)
    assert [[e["peer"] for e in body["events"]] for body in receiver.accepted] == [
        ["p0", "p1", "p2"],
        ["p3", "p4", "p5"],
    ]
    for peer in peers:
        await peer.close()


async def test_requests_share_a_kept_connection_unless_an_answer_is_long(
    receiver: Receiver, relay_factory: RelayFactory
) -> None:
    relay = await relay_factory(**fast(receiver.url))
    peers: list[RawPeer] = []
    for answer in [b"ok", b"ok", b"x" * 1_000_000, b"ok"]:
        receiver.answer = answer
        peers.append(await join_as(relay.url, f"p{len(peers)}"))
        await receiver.until(lambda: len(receiver.accepted) == len(peers))
    # Short answers keep the connection; a long one is not read, and closes it.
    assert receiver.ports[0] == receiver.ports[1] == receiver.ports[2] != receiver.ports[3]
    assert [e["peer"] for e in receiver.events] == ["p0", "p1", "p2", "p3"]
    await settled(relay)
    assert sample(relay, "relay_webhook_retries_total") == 0
    for peer in peers:
        await peer.close()


async def test_a_batch_waits_its_delay_for_more(
    receiver: Receiver, relay_factory: RelayFactory
) -> None:
    relay = await relay_factory(**fast(receiver.url, webhook_batch_seconds=1.0))
    start = time.monotonic()
    alice = await join_as(relay.url, "alice")
    bob = await join_as(relay.url, "bob")
    await receiver.until(lambda: len(receiver.accepted) == 1)
    waited = time.monotonic() - start
    assert [e["peer"] for e in receiver.events] == ["alice", "bob"]  # one request for both
    assert 1.0 <= waited < 5
    await alice.close()
    await bob.close()


# --- failures ---------------------------------------------------------------------


async def test_failures_are_retried_until_every_event_arrives_in_order(
    receiver: Receiver, relay_factory: RelayFactory
) -> None:
    receiver.fail_first = 4  # 500 to each of the first four tries
    relay = await relay_factory(**fast(receiver.url, webhook_batch_events=2))
    peers = [await join_as(relay.url, f"p{n}") for n in range(5)]
    for peer in peers:
        await peer.close()
    await receiver.until(lambda: len(receiver.events) == 10)
    seqs = [e["seq"] for e in receiver.events]
    assert seqs == list(range(1, 11)), "lost, duplicated or out of order"
    # A retry is the same batch: the same ids, in the same order.
    by_id = {e["id"]: e for e in receiver.events}
    for body in receiver.requests:
        for event in body["events"]:
            assert by_id[event["id"]] == event
    assert len(receiver.requests) == len(receiver.accepted) + 4
    await settled(relay)
    assert sample(relay, "relay_webhook_retries_total") == 4
    assert sample(relay, "relay_webhook_events_sent_total") == 10
    assert sample(relay, "relay_webhook_events_dropped_total", reason="expired") == 0


async def test_a_backend_that_hangs_is_timed_out_and_retried(
    receiver: Receiver, relay_factory: RelayFactory
) -> None:
    receiver.hang_first = 1
    relay = await relay_factory(**fast(receiver.url, webhook_timeout_seconds=0.3))
    alice = await join_as(relay.url, "alice")
    await receiver.until(lambda: len(receiver.requests) == 1)
    # The data path does not wait for the backend.
    bob = await join_as(relay.url, "bob")
    await alice.send({"type": "send", "to": "bob", "d": "hi"})
    assert (await bob.expect(type="msg"))["d"] == "hi"
    await receiver.until(lambda: len(receiver.events) == 2)
    assert [e["peer"] for e in receiver.events] == ["alice", "bob"]
    assert receiver.requests[0]["events"][0]["id"] == receiver.events[0]["id"]
    await settled(relay)
    assert sample(relay, "relay_webhook_retries_total") == 1
    await alice.close()
    await bob.close()


async def test_a_backend_down_past_the_retry_time_loses_events_and_is_told(
    receiver: Receiver, relay_factory: RelayFactory, caplog: pytest.LogCaptureFixture
) -> None:
    # Alice's peer.online fails whenever it is tried; the others are taken.
    receiver.refuse = lambda body: body["events"][0]["seq"] == 1
    relay = await relay_factory(
        **fast(
            receiver.url,
            webhook_batch_seconds=0.0,
            webhook_retry_seconds=0.3,
            webhook_backoff_base_seconds=0.02,
        )
    )
    alice = await join_as(relay.url, "alice")
    await receiver.until(lambda: len(receiver.requests) == 1)  # alice's batch is failing
    bob = await join_as(relay.url, "bob")  # waits behind it
    # Alice's batch is only given up when its time is over: then bob's is sent.
    await receiver.until(lambda: len(receiver.accepted) == 1)
    (body,) = receiver.accepted
    assert [e["peer"] for e in body["events"]] == ["bob"]
    assert body["events"][0]["seq"] == 2  # the gap: seq 1 was lost
    assert body["dropped"] == 1
    await settled(relay)
    assert sample(relay, "relay_webhook_events_dropped_total", reason="expired") == 1
    assert sample(relay, "relay_webhook_events_sent_total") == 1
    assert sample(relay, "relay_webhook_retries_total") == len(receiver.requests) - 2 > 0
    (line,) = [
        r.getMessage()
        for r in caplog.records
        if r.name == "relay.webhooks" and r.levelno >= logging.WARNING
    ]
    assert "1 event dropped (expired: 1)" in line and receiver.url in line
    # The count was told once: the next batch starts again from 0.
    await alice.close()
    await receiver.until(lambda: len(receiver.accepted) == 2)
    assert receiver.accepted[1]["dropped"] == 0
    await bob.close()


async def test_drops_are_logged_at_most_once_a_minute(caplog: pytest.LogCaptureFixture) -> None:
    settings = Settings(webhook_urls=("http://127.0.0.1:9/h",), webhook_secret=SECRET)
    sender = Sender(settings.webhook_urls[0], settings.replace(webhook_buffer_events=1), Metrics())
    event = Event({"type": "peer.online"}, time.monotonic())

    def lines() -> list[str]:
        return [r.getMessage() for r in caplog.records if r.name == "relay.webhooks"]

    for _ in range(4):
        sender.put(event)  # the first is kept, the others dropped
    assert lines() == [
        "webhook http://127.0.0.1:9/h: 1 event dropped (buffer: 1); the next batch says how many"
    ]
    sender._logged_at -= 60  # a minute later: what was dropped since is logged, once
    sender.put(event)
    assert lines()[1:] == [
        "webhook http://127.0.0.1:9/h: 3 events dropped (buffer: 3); the next batch says how many"
    ]


async def test_a_full_buffer_drops_the_newest_and_the_next_batch_says_so(
    receiver: Receiver, relay_factory: RelayFactory
) -> None:
    receiver.hang_first = 1
    relay = await relay_factory(
        **fast(receiver.url, webhook_batch_events=1, webhook_buffer_events=2)
    )
    first = await join_as(relay.url, "p0")
    await receiver.until(lambda: len(receiver.requests) == 1)  # p0's batch in flight
    peers = [first] + [await join_as(relay.url, f"p{n}") for n in range(1, 5)]
    assert sample(relay, "relay_webhook_events_dropped_total", reason="buffer") == 2
    receiver.released.set()
    await receiver.until(lambda: len(receiver.events) == 3)
    assert [e["peer"] for e in receiver.events] == ["p0", "p1", "p2"]
    assert [body["dropped"] for body in receiver.accepted] == [0, 2, 0]
    for peer in peers:
        await peer.close()


# --- shutdown -----------------------------------------------------------------------


async def test_sigterm_sends_what_the_relay_holds_before_it_exits(receiver: Receiver) -> None:
    flags = [
        "--webhook-urls", receiver.url, "--webhook-secret", SECRET,
        "--webhook-batch-seconds", "60", "--drain-seconds", "1",
    ]  # fmt: skip
    with relay_process(*flags) as (process, url):
        alice = await join_as(url, "alice")
        await alice.request({"type": "join", "room": "lobby", "id": 1})
        process.send_signal(signal.SIGTERM)
        await receiver.until(lambda: len(receiver.events) == 6)
        await anyio.to_thread.run_sync(process.wait, WAIT)
        assert process.returncode == 0
    reason = receiver.events[3].get("reason")
    assert receiver.kinds() == [
        ("peer.online", "alice"),
        ("room.occupied", "lobby"),
        ("room.joined", "alice", "lobby"),
        ("peer.offline", "alice", reason),
        ("room.left", "alice", "lobby"),
        ("room.vacated", "lobby"),
    ]
    # Closed 1001 by the drain, removed as it closed or at the drain's end.
    assert reason in ("closed", "drained")


async def test_the_drain_bound_drops_what_cannot_be_sent_in_time(
    receiver: Receiver, relay_factory: RelayFactory, caplog: pytest.LogCaptureFixture
) -> None:
    receiver.refuse = lambda body: True
    relay = await relay_factory(**fast(receiver.url, webhook_drain_seconds=0.2))
    alice = await join_as(relay.url, "alice")
    await receiver.until(lambda: len(receiver.requests) == 1)  # in flight, failing
    bob = await join_as(relay.url, "bob")  # buffered behind it
    webhooks = relay.app.state.webhooks
    assert isinstance(webhooks, Webhooks)
    start = time.monotonic()
    await webhooks.drain(relay.settings.webhook_drain_seconds)
    assert 0.2 <= time.monotonic() - start < 1
    assert sample(relay, "relay_webhook_events_dropped_total", reason="shutdown") == 2
    assert any("2 events dropped (shutdown: 2)" in r.getMessage() for r in caplog.records)
    await alice.close()
    await bob.close()


# --- settings and docs --------------------------------------------------------------


def test_a_hook_url_without_a_secret_stops_the_relay() -> None:
    result = CliRunner().invoke(main, ["serve", "--webhook-urls", "https://api.example.com/h"])
    assert result.exit_code == 2, result.output
    assert result.stderr.strip() == (
        "Error: --webhook-urls https://api.example.com/h: webhook URLs need webhook_secret "
        "(it signs every request)"
    )
    result = CliRunner().invoke(
        main, ["check"], env={"RELAY_WEBHOOK_URLS": "ftp://x/h", "RELAY_WEBHOOK_SECRET": SECRET}
    )
    assert result.exit_code == 2
    assert result.stderr.strip() == (
        "Error: RELAY_WEBHOOK_URLS=ftp://x/h: expected an http:// or https:// URL"
    )
    result = CliRunner().invoke(
        main, ["check", "--webhook-urls", "https://h/", "--webhook-secret", "short"]
    )
    assert result.exit_code == 2
    assert result.stderr.strip() == (
        "Error: --webhook-secret (hidden): expected empty, or at least 32 bytes"
    )


def test_the_docs_show_the_check_the_tests_use() -> None:
    import inspect

    assert inspect.getsource(verified) in HOOKS_DOC.read_text()


def test_the_docs_list_every_webhook_setting_with_its_default() -> None:
    rows = {
        line.split("|")[1].strip(" `"): line.split("|")[2].strip()
        for line in HOOKS_DOC.read_text().splitlines()
        if line.startswith("| `webhook_")
    }
    names = [info.name for info in describe() if info.name.startswith("webhook_")]
    assert sorted(rows) == sorted(names)
    for info in describe():
        if info.name in rows and isinstance(info.default, int | float):
            assert float(rows[info.name]) == info.default, info.name


def doc_block(lang: str, containing: str) -> str:
    (text,) = [b.text for b in blocks(HOOKS_DOC) if b.lang == lang and containing in b.text]
    return text


async def test_the_docs_receiver_runs_and_refuses_a_bad_signature(
    relay_factory: RelayFactory, tmp_path: Path
) -> None:
    port = free_port()
    code = doc_block("python", "class Hooks(").replace("8000", str(port))
    async with doc_script(code, tmp_path) as printed:
        await printed.until("receiving webhooks")
        hook = f"http://127.0.0.1:{port}/hooks"
        async with httpx.AsyncClient() as http:
            forged = await http.post(hook, content=b'{"events":[]}', headers={
                "Relay-Signature": sign(b'{"events":[]}', ["not the secret"], int(time.time()))
            })  # fmt: skip
            assert forged.status_code == 401
        relay = await relay_factory(**fast(hook, webhook_drain_seconds=0.1))
        alice = await join_as(relay.url, "alice")
        await printed.until("peer.online alice")
        await settled(relay)
        assert sample(relay, "relay_webhook_events_sent_total") == 1
        await alice.close()


async def test_the_docs_node_check_accepts_the_relays_signature(tmp_path: Path) -> None:
    (tmp_path / "check.mjs").write_text(doc_block("js", "createHmac"))
    runner = tmp_path / "run.mjs"
    runner.write_text(
        "import { readFileSync } from 'node:fs';\n"
        "import { verified } from './check.mjs';\n"
        "const [secret, header, file] = process.argv.slice(2);\n"
        "console.log(verified(secret, header, readFileSync(file)));\n"
    )
    body = b'{"events":[{"id":"x-1","type":"peer.online"}],"dropped":0}'
    (tmp_path / "body.json").write_bytes(body)
    now = int(time.time())
    cases = {
        sign(body, [SECRET, OLD_SECRET], now): ("true", "true", "false"),
        sign(body, [SECRET], now - 600): ("false", "false", "false"),  # a replay
    }
    for header, expected in cases.items():
        answers = []
        for key in (SECRET, OLD_SECRET, "another key"):
            result = await anyio.run_process(
                ["node", str(runner), key, header, str(tmp_path / "body.json")]
            )
            answers.append(result.stdout.decode().strip())
        assert tuple(answers) == expected, header
