"""Requests to a named node over each broker backend: every request ends, and says how."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable

import anyio
import pytest

from relay.broker import Broker, NodeUnreachable, RequestFailed
from tests.cluster.fakes import FakeNode

pytestmark = pytest.mark.anyio

Nodes = tuple[Broker, Broker]


@pytest.fixture
async def two(make_broker: Callable[[], Broker]) -> AsyncIterator[Nodes]:
    a, b = make_broker(), make_broker()
    await a.start(FakeNode("node-a"))
    await b.start(FakeNode("node-b"))
    try:
        yield a, b
    finally:
        await a.close()
        await b.close()


async def echo(body: bytes) -> bytes:
    return b"b:" + body


async def test_a_request_gets_the_reply_of_the_named_nodes_handler(two: Nodes) -> None:
    a, b = two
    b.serve("echo", echo)
    assert await a.request("node-b", "echo", b"hi", 2) == b"b:hi"
    bodies = [str(n).encode() for n in range(50)]
    replies = await asyncio.gather(*(a.request("node-b", "echo", x, 2) for x in bodies))
    assert replies == [b"b:" + x for x in bodies]
    assert await b.request("node-b", "echo", b"", 2) == b"b:"  # its own node too


async def test_a_kind_the_node_does_not_serve_fails_at_once(two: Nodes) -> None:
    a, b = two
    b.serve("echo", echo)
    with anyio.fail_after(1), pytest.raises(RequestFailed, match="serves no 'peer'"):
        await a.request("node-b", "peer", b"", 5)


async def test_a_handler_that_raises_fails_the_request_at_once(two: Nodes) -> None:
    a, b = two

    async def broken(body: bytes) -> bytes:
        raise ValueError("a bug")

    b.serve("broken", broken)
    b.serve("echo", echo)
    with anyio.fail_after(1), pytest.raises(RequestFailed, match="failed"):
        await a.request("node-b", "broken", b"", 5)
    assert await a.request("node-b", "echo", b"still", 2) == b"b:still"


async def test_no_reply_in_time_is_unreachable_and_the_handler_is_cancelled(two: Nodes) -> None:
    a, b = two
    ended = anyio.Event()

    async def silent(body: bytes) -> bytes:
        try:
            await anyio.sleep_forever()
        finally:
            ended.set()
        raise AssertionError("unreachable")

    b.serve("silent", silent)
    started = anyio.current_time()
    with anyio.fail_after(2), pytest.raises(NodeUnreachable, match="did not answer"):
        await a.request("node-b", "silent", b"", 0.3)
    assert anyio.current_time() - started >= 0.3
    with anyio.fail_after(2):
        await ended.wait()


async def test_a_node_that_is_not_alive_is_unreachable_at_once(two: Nodes) -> None:
    a, b = two
    b.serve("echo", echo)
    with anyio.fail_after(1), pytest.raises(NodeUnreachable, match="not alive"):
        await a.request("node-zed", "echo", b"", 5)
    await b.close()
    with anyio.fail_after(1), pytest.raises(NodeUnreachable, match="not alive"):
        await a.request("node-b", "echo", b"", 5)
