"""Requests to a named node and their replies, over the node channels.

A request goes out on the asked node's channel with a correlation id, the
node to reply to and how long its sender waits; that node runs the handler
served for its kind, cancelled once the sender has stopped waiting, and
publishes the reply (a body, or why there is none) on the sender's channel.
A ``PUBLISH`` that reached nobody means the node is not alive: the sender is
told at once. Replies a node waits for are bounded by
``MAX_PENDING_REQUESTS``, handlers it runs for requests by
``MAX_HANDLERS_RUNNING``, and every wait ends when the backplane goes down.
Handovers wait for their replies with the same ``Pending``.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import Callable, Coroutine, Iterator
from contextlib import contextmanager
from typing import Any, Generic, TypeVar

from relay.broker import wire
from relay.broker.base import (
    MAX_PENDING_REQUESTS,
    BrokerUnavailable,
    NodeUnreachable,
    RequestFailed,
    RequestHandler,
)
from relay.broker.redis.commands import Commands
from relay.broker.redis.scripts import Keys

log = logging.getLogger("relay.broker.redis")

# Handlers one node runs at once for requests; past it a request is refused
# (BUSY: the sender gets NodeUnreachable) rather than pile up tasks.
MAX_HANDLERS_RUNNING = 1024

R = TypeVar("R")


class Failed:
    """What a wait for a reply ends with when the backplane went down."""


FAILED = Failed()


class Pending(Generic[R]):
    """Replies this node waits for, by correlation id."""

    def __init__(self, limit: int | None = None) -> None:
        self._limit = limit
        self._waiting: dict[str, asyncio.Future[R | Failed]] = {}

    @contextmanager
    def expect(self) -> Iterator[tuple[str, asyncio.Future[R | Failed]]]:
        """A correlation id and the future its reply settles, while the block runs."""
        if self._limit is not None and len(self._waiting) >= self._limit:
            raise BrokerUnavailable("too many requests wait for a reply")
        cid = secrets.token_hex(8)
        future: asyncio.Future[R | Failed] = asyncio.get_running_loop().create_future()
        self._waiting[cid] = future
        try:
            yield cid, future
        finally:
            self._waiting.pop(cid, None)

    def settle(self, cid: str, reply: R) -> None:
        future = self._waiting.get(cid)
        if future is not None and not future.done():
            future.set_result(reply)

    def fail(self) -> None:
        """The backplane went down: no reply will come to what waits for one."""
        for future in self._waiting.values():
            if not future.done():
                future.set_result(FAILED)


class Requests:
    """The requests this node sends, and those it answers with the handlers it serves."""

    def __init__(
        self,
        node_id: str,
        keys: Keys,
        commands: Commands,
        handlers: dict[str, RequestHandler],
        spawn: Callable[[Coroutine[Any, Any, Any]], None],
    ) -> None:
        self._node_id = node_id
        self._keys = keys
        self._commands = commands
        self._handlers = handlers
        self._spawn = spawn
        self._pending: Pending[wire.Reply] = Pending(MAX_PENDING_REQUESTS)
        self._running = 0  # handlers running for requests

    async def request(self, node_id: str, kind: str, body: bytes, wait: float) -> bytes:
        if not self._commands.up:
            raise BrokerUnavailable("the backplane is down")
        with self._pending.expect() as (cid, future):
            wait_ms = max(1, int(wait * 1000))
            message = wire.encode_request(cid, kind, body, self._node_id, wait_ms)
            try:
                async with asyncio.timeout(wait):
                    heard = await self._commands.write(
                        "PUBLISH", self._keys.channel(node_id), message
                    )
                    if not heard:
                        raise NodeUnreachable(f"node {node_id} is not alive")
                    reply = await future
            except TimeoutError:
                raise NodeUnreachable(f"node {node_id} did not answer in {wait} s") from None
        if isinstance(reply, Failed):
            raise BrokerUnavailable("the backplane went down during a request")
        if reply.body is not None:
            return reply.body
        if reply.refusal == wire.NO_HANDLER:
            raise RequestFailed(f"node {node_id} serves no {kind!r} requests")
        if reply.refusal == wire.BUSY:
            raise NodeUnreachable(f"node {node_id} runs as many handlers as it may")
        raise RequestFailed(f"node {node_id} failed to answer a {kind!r} request")

    def replied(self, reply: wire.Reply) -> None:
        self._pending.settle(reply.cid, reply)

    def fail(self) -> None:
        self._pending.fail()

    def received(self, request: wire.Request) -> None:
        """A request from a node (this one too): answer it."""
        handler = self._handlers.get(request.kind)
        if handler is None:
            self._reply(request, None, wire.NO_HANDLER)
        elif self._running >= MAX_HANDLERS_RUNNING:
            self._reply(request, None, wire.BUSY)
        else:
            self._running += 1
            self._spawn(self._answer(handler, request))

    async def _answer(self, handler: RequestHandler, request: wire.Request) -> None:
        deadline = asyncio.timeout(request.wait_ms / 1000)
        try:
            async with deadline:
                body = await handler(request.body)
        except Exception:
            if deadline.expired():
                return  # its sender has stopped waiting: nobody to tell
            log.exception("a %r request from node %s failed", request.kind, request.reply_to)
            self._reply(request, None, wire.FAILED)
            return
        finally:
            self._running -= 1
        self._reply(request, body, None)

    def _reply(self, request: wire.Request, body: bytes | None, refusal: str | None) -> None:
        self._commands.post(
            "PUBLISH",
            self._keys.channel(request.reply_to),
            wire.encode_reply(request.cid, body, refusal),
        )
