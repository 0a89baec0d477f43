"""The Redis broker on its own, in this process: failure detection and prompt refusals."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import random
import secrets
from collections.abc import Callable

import anyio
import pytest
import redis.asyncio as aioredis

import relay.broker.redis.scripts as scripts
from relay.broker import BrokerUnavailable, NodeUnreachable
from relay.broker.redis import RedisBroker
from relay.values import Delivery, Joined, Rejoined
from tests.cluster.fakes import FakeNode
from tests.redis_server import RedisServer, free_port

pytestmark = pytest.mark.anyio


def _broker(url: str) -> RedisBroker:
    return RedisBroker(
        url, prefix=f"t{secrets.token_hex(4)}", lease_seconds=2, heartbeat_seconds=0.2,
        probe_seconds=0.2, timeout_seconds=0.5,
    )  # fmt: skip


async def _until(broker: RedisBroker, ready: bool) -> None:
    # Polling: readiness is a flag with no event to wait on.
    for _attempt in itertools.count():
        if broker.ready is ready:
            return
        await anyio.sleep(0.05)


async def _polled(condition: Callable[[], bool]) -> None:
    # Polling: what the broker does at a heartbeat or on a message sets no event.
    for _attempt in itertools.count():
        if condition():
            return
        await anyio.sleep(0.05)


async def test_the_probe_catches_a_subscription_that_silently_died(redis_url: str) -> None:
    broker = _broker(redis_url)
    await broker.start(FakeNode("n1"))
    try:
        assert broker.ready
        handle = broker._handle

        def deaf(message: object) -> None:
            """Messages stop arriving, and nothing raises anywhere."""

        broker._handle = deaf  # type: ignore[method-assign]
        with anyio.fail_after(3):
            await _until(broker, False)
        broker._handle = handle  # type: ignore[method-assign]
        with anyio.fail_after(5):
            await _until(broker, True)
        assert await broker.claim("alice") is None  # serving again
    finally:
        await broker.close()


async def test_an_unreachable_redis_is_refused_promptly() -> None:
    broker = _broker(f"redis://127.0.0.1:{free_port()}/0")
    with anyio.fail_after(3):
        await broker.start(FakeNode("n1"))
    try:
        assert not broker.ready
        with anyio.fail_after(0.1):
            with pytest.raises(BrokerUnavailable):
                await broker.claim("alice")
            answers: list[Delivery] = []
            broker.send("bob", b"x", None, answers.append)
            with pytest.raises(BrokerUnavailable):
                broker.publish("r", b"x", None, False)
            await broker.release("alice")  # forgetting never fails
            await broker.leave("r", "alice")
            assert answers == [Delivery.OVERLOADED]
    finally:
        with anyio.fail_after(3):
            await broker.close()


async def test_a_registry_call_always_gives_way_to_a_cancel(redis_url: str) -> None:
    # asyncio.wait_for on Python 3.11 returns its result when the operation it
    # waits on finishes as a cancel arrives: a loop of such calls never stops.
    broker = _broker(redis_url)
    await broker.start(FakeNode("n1"))

    async def lookups() -> None:
        while True:
            await broker.locate("nobody")

    try:
        for _attempt in range(100):
            task = asyncio.create_task(lookups())
            await asyncio.sleep(random.random() * 0.003)  # the cancel lands anywhere in a call
            task.cancel()
            try:
                with anyio.fail_after(2):
                    await asyncio.wait([task])
            finally:
                task.cancel()
            assert task.cancelled()
    finally:
        await broker.close()


async def test_close_ends_a_heartbeat_that_swallowed_its_cancel(redis_url: str) -> None:
    broker = _broker(redis_url)
    await broker.start(FakeNode("n1"))
    registry = broker._registry
    assert registry is not None
    renew = registry.renew
    inside = asyncio.Event()

    async def deaf_once(state: bytes) -> None:
        registry.renew = renew  # type: ignore[method-assign]
        inside.set()
        with contextlib.suppress(asyncio.CancelledError):  # as a library call may
            await asyncio.Event().wait()

    registry.renew = deaf_once  # type: ignore[method-assign]
    with anyio.fail_after(5):
        await inside.wait()
    with anyio.fail_after(5):
        await broker.close()


async def test_the_members_of_a_dead_node_are_reported_lost_once(redis_url: str) -> None:
    prefix = f"t{secrets.token_hex(4)}"
    brokers = [
        RedisBroker(redis_url, prefix=prefix, lease_seconds=2, heartbeat_seconds=0.2)
        for _ in range(2)
    ]
    nodes = [FakeNode("n1"), FakeNode("n2")]
    for broker, node in zip(brokers, nodes, strict=True):
        await broker.start(node)
    # A node that registered a member and died without a word: no lease.
    client = aioredis.Redis.from_url(redis_url)
    try:
        await client.sadd(f"{prefix}:nodes", "ghost")
        await client.set(f"{prefix}:peer:casper", "ghost")
        await client.hset(f"{prefix}:held:ghost", "casper", 1)
        for room in ("r", "s"):
            await client.hset(f"{prefix}:room:{room}", "casper", "ghost")
            await client.hset(f"{prefix}:roomnodes:{room}", "ghost", 1)
            await client.sadd(f"{prefix}:rooms:ghost", room)
        assert await brokers[0].join("s", "alice", 10) is Joined.MEMBER  # not the first
        with anyio.fail_after(3):
            await _polled(lambda: bool(nodes[0].nodes_lost or nodes[1].nodes_lost))
        await anyio.sleep(0.5)  # a few more heartbeats of both nodes
        lost = nodes[0].nodes_lost + nodes[1].nodes_lost
        assert [(n.node, n.peers, sorted(n.memberships), n.vacated) for n in lost] == [
            ("ghost", ["casper"], [("r", "casper"), ("s", "casper")], {"r"})
        ]
        assert nodes[0].lost + nodes[1].lost == []
        assert await client.hgetall(f"{prefix}:room:r") == {}
        assert await client.hgetall(f"{prefix}:room:s") == {b"alice": b"n1"}
        assert await client.exists(f"{prefix}:peer:casper", f"{prefix}:held:ghost") == 0
    finally:
        await client.aclose()
        for broker in brokers:
            await broker.close()


async def test_a_leave_redis_was_not_told_says_later_whether_it_vacated(redis_url: str) -> None:
    broker = _broker(redis_url)
    node = FakeNode("n1")
    await broker.start(node)
    try:
        assert await broker.join("r", "alice", 10) is Joined.FIRST
        assert await broker.join("r", "bob", 10) is Joined.MEMBER
        assert await broker.join("r", "bob", 10) is Joined.MEMBER  # already in
        assert await broker.join("r", "carol", 2) is Joined.FULL
        assert await broker.leave("r", "bob") is False  # alice is still in
        broker._commands.up = False  # as while the backplane is down: not told now
        assert await broker.leave("r", "alice") is False
        assert node.lost == []
        broker._commands.up = True
        with anyio.fail_after(3):
            await _polled(lambda: bool(node.lost))  # the next heartbeat puts it right
        assert node.lost == [("r", "alice", True)]
        assert await broker.join("r", "alice", 10) is Joined.FIRST
    finally:
        await broker.close()


async def test_a_node_reaped_while_its_heartbeats_were_late_registers_again_and_says_so(
    redis_url: str,
) -> None:
    broker = _broker(redis_url)
    prefix = broker._keys.prefix
    node = FakeNode("n1")
    client = aioredis.Redis.from_url(redis_url)
    # A mark left by the reap of an earlier node of this name: a fresh start has nothing to tell.
    await client.set(f"{prefix}:reaped:n1", 1)
    await broker.start(node)
    try:
        assert await client.exists(f"{prefix}:reaped:n1") == 0
        assert await broker.claim("alice") is None
        assert await broker.join("r", "alice", 10) is Joined.FIRST
        assert await broker.join("s", "alice", 10) is Joined.FIRST
        # Its lease ends and another node reaps it, before its next heartbeat.
        async with client.pipeline(transaction=True) as reap:
            reap.delete(f"{prefix}:alive:n1")
            reap.eval(scripts.REAP, 0, prefix, "other", "")
            _deleted, reaped = await reap.execute()
        assert [lost[0] for lost in reaped] == [b"n1"]
        with anyio.fail_after(5):
            await _polled(lambda: bool(node.rejoins))
        assert node.rejoins == [Rejoined(["alice"], [("r", "alice", True), ("s", "alice", True)])]
        assert await client.get(f"{prefix}:peer:alice") == b"n1"
        assert await client.hgetall(f"{prefix}:room:r") == {b"alice": b"n1"}
        await anyio.sleep(0.5)  # a few more heartbeats: told once
        assert len(node.rejoins) == 1
    finally:
        await client.aclose()
        await broker.close()


class Announcing(FakeNode):
    """Announces a lost member as a hub does: with ``publish``, to the other nodes."""

    broker: RedisBroker

    def member_lost(self, room: str, peer_id: str, vacated: bool) -> None:
        super().member_lost(room, peer_id, vacated)
        self.broker.publish(room, f"{peer_id} left".encode(), peer_id, True)


async def test_a_closing_node_announces_its_members_through_its_hub(redis_url: str) -> None:
    prefix = f"t{secrets.token_hex(4)}"
    closing, staying = (RedisBroker(redis_url, prefix=prefix) for _ in range(2))
    node = Announcing("n1")
    node.broker = closing
    other = FakeNode("n2")
    await closing.start(node)
    await staying.start(other)
    try:
        assert await closing.join("r", "alice", 10) is Joined.FIRST
        assert await staying.join("r", "bob", 10) is Joined.MEMBER
        assert await closing.join("q", "alice", 10) is Joined.FIRST
        await closing.close()
        assert sorted(node.lost) == [("q", "alice", True), ("r", "alice", False)]
        with anyio.fail_after(3):
            await _polled(lambda: b"alice left" in other.frames)
        assert await staying.members("r") == ["bob"]
    finally:
        await staying.close()


async def test_a_request_while_redis_is_down_is_refused_promptly(own_redis: RedisServer) -> None:
    prefix = f"t{secrets.token_hex(4)}"
    asking, asked = (RedisBroker(own_redis.url, prefix=prefix, timeout_seconds=0.5) for _ in "ab")
    await asking.start(FakeNode("n1"))
    await asked.start(FakeNode("n2"))

    async def silent(body: bytes) -> bytes:
        await anyio.sleep_forever()
        raise AssertionError("unreachable")

    asked.serve("silent", silent)
    try:
        waiting = asyncio.create_task(asking.request("n2", "silent", b"", 30))
        await anyio.sleep(0.2)  # on its way, its reply awaited
        own_redis.stop()
        with anyio.fail_after(3), pytest.raises(BrokerUnavailable) as failed:
            await waiting
        assert not isinstance(failed.value, NodeUnreachable)
        with anyio.fail_after(3):
            await _until(asking, False)
        with anyio.fail_after(0.1), pytest.raises(BrokerUnavailable) as refused:
            await asking.request("n2", "silent", b"", 30)
        assert not isinstance(refused.value, NodeUnreachable)
    finally:
        with anyio.fail_after(5):
            await asking.close()
            await asked.close()


async def test_losing_redis_is_logged_and_retried_soon(
    own_redis: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    broker = _broker(own_redis.url)
    await broker.start(FakeNode("n1"))
    try:
        with anyio.fail_after(5):
            await _until(broker, True)
        own_redis.kill()
        with anyio.fail_after(5):
            await _until(broker, False)
        down = [r for r in caplog.records if r.getMessage() == "backplane down"]
        assert [r.levelname for r in down] == ["WARNING"]
        own_redis.start()
        # Retried within a second of Redis being back: the backoff started
        # again from 0.1 s when the connection that had worked was lost.
        with anyio.fail_after(3):
            await _until(broker, True)
    finally:
        with anyio.fail_after(5):
            await broker.close()
