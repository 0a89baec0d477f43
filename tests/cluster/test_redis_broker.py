"""The Redis broker on its own, in this process: failure detection and prompt refusals."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import random
import secrets

import anyio
import pytest

from relay.broker import BrokerUnavailable
from relay.broker.redis import RedisBroker
from relay.values import Delivery, Handover, Proof, Undelivered
from tests.redis_server import free_port

pytestmark = pytest.mark.anyio


class FakeNode:
    def __init__(self, node_id: str) -> None:
        self.node_id = node_id
        self.frames: list[bytes] = []

    def deliver(self, peer_id: str, frame: bytes, undelivered: Undelivered | None) -> Delivery:
        self.frames.append(frame)
        return Delivery.DELIVERED

    def deliver_room(
        self, room: str, frame: bytes, exclude: str | None, presence_only: bool
    ) -> None:
        self.frames.append(frame)

    async def hand_over(self, peer_id: str, proof: Proof) -> Handover | None:
        return None


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
