"""SIGTERM on a real `relay serve` process: drain, answer, close 1001, exit 0.

The contract a client relies on: every request the relay read before its
1001 is answered before it; what it did not answer, it did not act on.
"""

from __future__ import annotations

import contextlib
import signal
import socket
import time
from typing import Any

import anyio
import httpx
import msgpack
import pytest
import relay_client
from websockets.exceptions import ConnectionClosed, InvalidStatus

from relay.hub import DRAIN_REASON
from tests.peers import RawPeer, join_as, open_peer
from tests.relay_process import relay_process as start_relay

pytestmark = pytest.mark.anyio


async def close_of(peer: RawPeer) -> tuple[int, str]:
    """The close code and reason the relay sent ``peer``, once it has sent its close."""
    with anyio.fail_after(30):
        await peer.ws.wait_closed()
    assert peer.ws.protocol.close_rcvd is not None, "closed without a close frame"
    return peer.ws.protocol.close_rcvd.code, peer.ws.protocol.close_rcvd.reason


class Traffic:
    """A sender's requests to one target, the answers it got, and what the target got."""

    def __init__(self, backlog: int = 0) -> None:
        self.sent = 0
        self.backlog = anyio.Event()  # set once ``backlog`` requests are sent
        self.backlog_at = backlog
        self.sent_before_signal = 0
        self.answers: dict[int, list[dict[str, Any]]] = {}
        self.received: list[int] = []

    def check(self) -> None:
        """Each request answered at most once; ok means it arrived, err that it did not."""
        received = set(self.received)
        assert len(received) == len(self.received), "a message arrived twice"
        assert self.received == sorted(self.received), "messages arrived out of order"
        for n, replies in self.answers.items():
            assert len(replies) == 1, f"request {n} answered {len(replies)} times: {replies}"
            if replies[0]["type"] == "ok":
                assert n in received, f"request {n} answered ok never arrived"
            else:
                assert n not in received, f"request {n} answered {replies[0]} arrived"
        # A request the relay did not answer was not acted on.
        unanswered = set(range(self.sent)) - set(self.answers)
        assert not unanswered & received, f"unanswered requests arrived: {unanswered & received}"


async def send_paced(peer: RawPeer, to: str, rate: float, traffic: Traffic, size: int) -> None:
    """Send ``rate`` requests a second, each carrying its number, until the socket ends."""
    blob = b"z" * size
    start = time.monotonic()
    with contextlib.suppress(ConnectionClosed):
        while True:
            if traffic.sent > (time.monotonic() - start) * rate:
                await anyio.sleep(1 / rate)  # pacing, not synchronisation
                continue
            n = traffic.sent
            await peer.send({"type": "send", "to": to, "d": [n, blob], "id": n})
            traffic.sent += 1
            if traffic.sent == traffic.backlog_at:
                traffic.backlog.set()


async def collect_answers(peer: RawPeer, traffic: Traffic) -> None:
    with contextlib.suppress(ConnectionClosed):
        while True:
            reply = msgpack.unpackb(await peer.ws.recv())
            traffic.answers.setdefault(reply["id"], []).append(reply)


async def read_paced(peer: RawPeer, rate: float, traffic: Traffic) -> None:
    with contextlib.suppress(ConnectionClosed):
        while True:
            message = msgpack.unpackb(await peer.ws.recv())
            traffic.received.append(message["d"][0])
            await anyio.sleep(1 / rate)  # a slow reader


async def test_sigterm_answers_every_request_read_and_acts_on_nothing_after() -> None:
    """A slow reader, and a sender that keeps sending through the SIGTERM."""
    with start_relay("--drain-seconds", "10") as (process, url):
        http_url = url.replace("ws://", "http://").removesuffix("/v1/ws")
        bob = await join_as(url, "bob")
        alice = await join_as(url, "alice")
        traffic = Traffic(backlog=600)  # ~2 s: a backlog waits for bob, alice is held
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(read_paced, bob, 150, traffic)
            tasks.start_soon(collect_answers, alice, traffic)
            tasks.start_soon(send_paced, alice, "bob", 300, traffic, 4000)
            with anyio.fail_after(10):
                await traffic.backlog.wait()
            traffic.sent_before_signal = traffic.sent
            process.send_signal(signal.SIGTERM)
            # While alice's last requests are answered, the node is draining:
            # not ready, and refusing newcomers.
            async with httpx.AsyncClient(base_url=http_url) as http:
                assert (await http.get("/readyz")).status_code == 503
            with pytest.raises(InvalidStatus):
                await open_peer(url)
            alice_close = await close_of(alice)
            bob_close = await close_of(bob)
        assert alice_close == bob_close == (1001, DRAIN_REASON)
        traffic.check()
        # What was sent before the SIGTERM waited on the relay's sockets: read and answered.
        early = range(traffic.sent_before_signal)
        assert all(n in traffic.answers for n in early), "a request sent before the SIGTERM"
        assert all(traffic.answers[n][0]["type"] == "ok" for n in early)
        await anyio.to_thread.run_sync(process.wait, 10)
        assert process.returncode == 0


async def test_a_reader_that_never_reads_does_not_hold_the_drain() -> None:
    """Its senders get ok for what its host took and peer-offline for the rest, before 1001."""
    with start_relay("--drain-seconds", "2") as (process, url):
        bob = await join_as(url, "bob")
        bob.ws.transport.pause_reading()  # bob's host takes a few frames, then his window shuts
        alice = await join_as(url, "alice")
        traffic = Traffic()
        blob = b"x" * 8000
        for n in range(100):
            await alice.send({"type": "send", "to": "bob", "d": [n, blob], "id": n})
        traffic.sent = 100
        process.send_signal(signal.SIGTERM)
        await collect_answers(alice, traffic)
        assert await close_of(alice) == (1001, DRAIN_REASON)
        assert sorted(traffic.answers) == list(range(100)), "every request answered"
        bob.ws.transport.resume_reading()
        await read_paced(bob, 10_000, traffic)  # what bob's host took, then the reset
        traffic.check()
        offline = [n for n, (reply,) in traffic.answers.items() if reply["type"] == "err"]
        assert offline, "bob's host could not take 800 KB"
        assert all(traffic.answers[n][0]["code"] == "peer-offline" for n in offline)
        await anyio.to_thread.run_sync(process.wait, 10)
        assert process.returncode == 0


async def test_the_python_client_sends_again_what_a_drain_left_unanswered() -> None:
    """Through a SIGTERM and a restart: every send answered once, ok'd ones arrive once.

    The sender keeps sending through the drain; what the first relay left
    unanswered is sent again to the second, which takes over its port.
    """
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    url = f"ws://127.0.0.1:{port}/v1/ws"
    results: dict[int, str] = {}  # n -> "ok" or the error code
    received: list[int] = []
    expected: set[int] | None = None  # the oks, once every send is answered
    everything_arrived = anyio.Event()
    with contextlib.ExitStack() as processes:
        first, _ = processes.enter_context(start_relay("--drain-seconds", "10", port=port))
        async with (
            relay_client.connect(url, id="reader") as reader,
            relay_client.connect(url, id="sender") as sender,
        ):

            async def read_slowly() -> None:
                while True:
                    received.append((await reader.recv()).data)
                    if expected is not None and expected <= set(received):
                        everything_arrived.set()

            async def send_one(n: int) -> None:
                try:
                    await sender.send("reader", n)
                    results[n] = "ok"
                except relay_client.RelayError as exc:
                    results[n] = exc.code

            async def restart() -> None:
                """The first relay drains and exits; a new one takes its port."""
                first.send_signal(signal.SIGTERM)
                await anyio.to_thread.run_sync(first.wait, 30)
                assert first.returncode == 0
                await anyio.to_thread.run_sync(processes.enter_context, start_relay(port=port))

            async with anyio.create_task_group() as reading:
                reading.start_soon(read_slowly)
                async with anyio.create_task_group() as sending:
                    start = time.monotonic()
                    for n in range(1500):  # 5 s at 300/s, the SIGTERM after 2 s
                        # pacing, not synchronisation
                        await anyio.sleep(max(0.0, n / 300 - (time.monotonic() - start)))
                        sending.start_soon(send_one, n)
                        if n == 600:
                            sending.start_soon(restart)
                expected = {n for n, result in results.items() if result == "ok"}
                with anyio.fail_after(30):
                    if not expected <= set(received):
                        await everything_arrived.wait()
                reading.cancel_scope.cancel()
    assert sorted(results) == list(range(1500)), "every send was answered"
    assert len(set(received)) == len(received), "a message arrived twice"
    for n, result in results.items():
        assert (n in received) == (result == "ok"), (n, result)
