"""Exact answers across nodes through faults: Redis paused or restarted, a node killed or drained.

Every test streams numbered sends (each with an ``id``) from a peer on one
relay process to a peer on another, injects a fault, and then checks what the
protocol promises on one node: each send got exactly one answer, every send
answered ``ok`` reached its target, no send answered with an ``err`` did, and
what arrived arrived once and in order.
"""

from __future__ import annotations

import signal
import time
from collections import Counter, defaultdict
from typing import Any

import anyio
import msgpack
import pytest
from websockets.exceptions import ConnectionClosed

from tests.cluster.conftest import Nodes
from tests.cluster.processes import RelayProcess
from tests.peers import RawPeer, join_as
from tests.redis_server import RedisServer

pytestmark = pytest.mark.anyio

UNLIMITED = ("--rate-per-second", "100000", "--rate-burst", "100000")


class Stream:
    """Numbered sends from one peer to another, with every answer and arrival recorded."""

    def __init__(self, sender: RawPeer, target: RawPeer) -> None:
        self.sender = sender
        self.target = target
        self.sent = 0
        self.done_sending = False
        self.answers: dict[int, list[dict[str, Any]]] = defaultdict(list)
        self.arrived: list[int] = []
        self._changed = anyio.Event()

    async def send(self, count: int, per_second: float) -> None:
        """Send ``count`` messages (``per_second`` of them, 0: as fast as the socket takes them)."""
        start = time.monotonic()
        with _until_closed():
            for n in range(count):
                ahead = n / per_second - (time.monotonic() - start) if per_second else 0
                if ahead > 0:
                    await anyio.sleep(ahead)  # pacing, not synchronisation
                await self.sender.send({"type": "send", "to": self.target.id, "d": n, "id": n})
                self.sent = n + 1
        self.done_sending = True

    async def collect_answers(self, peer: RawPeer | None = None) -> None:
        """Record answers arriving on ``peer`` (the sender's socket by default)."""
        ws = (peer or self.sender).ws
        with _until_closed():
            while True:
                reply = msgpack.unpackb(await ws.recv())
                if reply.get("type") in ("ok", "err") and "id" in reply:
                    self.answers[reply["id"]].append(reply)
                    self._wake()

    async def collect_arrivals(self) -> None:
        with _until_closed():
            while True:
                envelope = msgpack.unpackb(await self.target.ws.recv())
                if envelope.get("type") == "msg":
                    self.arrived.append(envelope["d"])
                    self._wake()

    def _wake(self) -> None:
        self._changed.set()
        self._changed = anyio.Event()

    async def until(self, done: Any) -> None:
        while not done():
            await self._changed.wait()

    def all_answered(self) -> bool:
        return self.done_sending and all(n in self.answers for n in range(self.sent))

    def oks_arrived(self) -> bool:
        return self.oks() <= set(self.arrived)

    def oks(self) -> set[int]:
        return {n for n, replies in self.answers.items() if replies[0]["type"] == "ok"}

    def check(self) -> Counter[str]:
        """The promises; returns how many answers of each kind there were."""
        for n, replies in self.answers.items():
            assert len(replies) == 1, f"send {n} answered {len(replies)} times: {replies}"
        arrived = set(self.arrived)
        assert len(arrived) == len(self.arrived), "a message arrived twice"
        assert self.arrived == sorted(self.arrived), "messages arrived out of order"
        errs = set(self.answers) - self.oks()
        assert not errs & arrived, f"answered err but delivered: {sorted(errs & arrived)}"
        assert self.oks() <= arrived, f"answered ok, never arrived: {sorted(self.oks() - arrived)}"
        return Counter(
            r[0]["type"] if r[0]["type"] == "ok" else r[0]["code"] for r in self.answers.values()
        )


class _until_closed:
    """Stop collecting quietly when the socket closes."""

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: type[BaseException] | None, *_: object) -> bool:
        return kind is not None and issubclass(kind, ConnectionClosed)


def clean_logs(*procs: RelayProcess) -> None:
    for proc in procs:
        output = proc.output()
        assert "never retrieved" not in output, output
        assert "Traceback" not in output, output


async def _stream_through(stream: Stream, fault: Any, count: int, per_second: float) -> None:
    async with anyio.create_task_group() as tasks:
        tasks.start_soon(stream.collect_answers)
        tasks.start_soon(stream.collect_arrivals)
        async with anyio.create_task_group() as sending:
            sending.start_soon(stream.send, count, per_second)
            await fault()
        with anyio.fail_after(20):
            await stream.until(stream.all_answered)
        with anyio.fail_after(10):
            await stream.until(stream.oks_arrived)
        tasks.cancel_scope.cancel()


async def test_a_redis_pause_answers_every_send_for_what_became_of_it(
    own_redis: RedisServer, nodes: Nodes
) -> None:
    a, b = await nodes.start(own_redis.url, "a", "b", extra=UNLIMITED)
    stream = Stream(await join_as(a.url, "alice"), await join_as(b.url, "bob"))

    async def pause() -> None:
        await anyio.sleep(1)  # traffic flows first (the fault's timing, not a wait for state)
        own_redis.pause()
        await anyio.sleep(2.5)  # longer than the lease: leases expire, nodes reconnect
        own_redis.resume()

    await _stream_through(stream, pause, count=4800, per_second=400)
    kinds = stream.check()
    # Refused while the backplane was away, served before and after; never
    # peer-offline: bob was online throughout.
    assert kinds["ok"] > 800 and kinds["overloaded"] > 0, kinds
    assert set(kinds) == {"ok", "overloaded"}, kinds
    assert stream.answers[stream.sent - 1][0]["type"] == "ok"  # recovered
    clean_logs(a, b)


async def test_a_redis_restart_answers_every_send_for_what_became_of_it(
    own_redis: RedisServer, nodes: Nodes
) -> None:
    a, b = await nodes.start(own_redis.url, "a", "b", extra=UNLIMITED)
    stream = Stream(await join_as(a.url, "alice"), await join_as(b.url, "bob"))

    async def restart() -> None:
        await anyio.sleep(1)
        own_redis.kill()  # everything Redis held is gone, and what was in flight
        await anyio.sleep(1)
        own_redis.start()

    await _stream_through(stream, restart, count=4400, per_second=400)
    kinds = stream.check()
    # Until b has registered bob again, a cannot tell him from a peer that
    # left: overloaded (try again), not peer-offline.
    assert set(kinds) == {"ok", "overloaded"}, kinds
    assert stream.answers[stream.sent - 1][0]["type"] == "ok"
    clean_logs(a, b)


async def test_pipelined_sends_both_ways_are_answered_once_and_arrive_in_order(
    redis_url: str, nodes: Nodes
) -> None:
    a, b = await nodes.start(redis_url, "a", "b", extra=UNLIMITED)
    streams = [
        Stream(await join_as(a.url, f"s{n}"), await join_as(b.url, f"t{n}")) for n in range(3)
    ]
    streams.append(Stream(await join_as(b.url, "back"), await join_as(a.url, "front")))
    async with anyio.create_task_group() as tasks:
        for stream in streams:
            tasks.start_soon(stream.collect_answers)
            tasks.start_soon(stream.collect_arrivals)
            tasks.start_soon(stream.send, 3000, 0)  # as fast as the socket takes them
        with anyio.fail_after(60):
            for stream in streams:
                await stream.until(stream.all_answered)
                await stream.until(stream.oks_arrived)
        tasks.cancel_scope.cancel()
    for stream in streams:
        assert stream.check() == {"ok": 3000}
    clean_logs(a, b)


async def test_a_killed_nodes_peers_register_elsewhere_at_once(
    redis_url: str, nodes: Nodes
) -> None:
    a, b = await nodes.start(redis_url, "a", "b")
    alice = await join_as(a.url, "alice")
    bob = await join_as(b.url, "bob")
    await alice.request({"type": "send", "to": "bob", "d": "before", "id": 1})
    await bob.expect(type="msg", d="before")
    b.kill()
    killed = time.monotonic()
    # Nobody listens on b's channel: b is dead, though its lease runs on.
    again = await join_as(a.url, "bob", resume=bob.welcome["resume"], received=1)
    assert time.monotonic() - killed < 1.0
    assert again.welcome["resumed"] is False  # its queue died with its node
    await alice.request({"type": "send", "to": "bob", "d": "after", "id": 2})
    await again.expect(type="msg", d="after")
    clean_logs(a)


async def test_a_draining_node_answers_every_send_it_read(redis_url: str, nodes: Nodes) -> None:
    a, b = await nodes.start(redis_url, "a", "b", extra=UNLIMITED)
    alice = await join_as(a.url, "alice")
    stream = Stream(alice, await join_as(b.url, "bob"))
    received = 0  # envelopes alice got on her first socket, for the resume

    async def first_socket() -> None:
        nonlocal received
        with _until_closed():
            while True:
                reply = msgpack.unpackb(await alice.ws.recv())
                received += 1
                if "id" in reply:
                    stream.answers[reply["id"]].append(reply)

    async with anyio.create_task_group() as tasks:
        tasks.start_soon(stream.collect_arrivals)
        async with anyio.create_task_group() as first:
            first.start_soon(first_socket)
            first.start_soon(stream.send, 3000, 0)
            await stream.until(lambda: len(stream.answers) > 100)  # traffic is flowing
            a.process.send_signal(signal.SIGTERM)
        assert alice.ws.close_code == 1001
        moved = await join_as(b.url, "alice", resume=alice.welcome["resume"], received=received)
        assert moved.welcome["resumed"] is True
        tasks.start_soon(stream.collect_answers, moved)
        assert await anyio.to_thread.run_sync(a.process.wait, 20) == 0  # the drain is over
        # Every send a read is answered, before or after the move: the
        # answered ids are every id up to the last one it read.
        with anyio.fail_after(10):
            await stream.until(lambda: set(stream.answers) == set(range(max(stream.answers) + 1)))
            await stream.until(stream.oks_arrived)
        tasks.cancel_scope.cancel()
    kinds = stream.check()
    assert kinds["ok"] > 100, kinds
    clean_logs(a, b)
