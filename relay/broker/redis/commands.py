"""The command pipeline: how a node's commands reach Redis, in order and bounded.

Everything that is published goes, in order, through one connection of its
own (the *writer*, a ``resp.Connection``): what one event-loop pass gathered
is written at its end, in one write, behind the frames ``links`` gathered in
that pass, so frames from one sender to one target stay in order. Registry
commands use redis-py's pool. Every call is bounded by the operation timeout;
while the backplane is down (``up`` is false) every call raises
``BrokerUnavailable`` at once.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import hiredis
import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from relay.broker.base import BrokerUnavailable
from relay.broker.redis.links import Links
from relay.broker.redis.resp import NOT_SENT, Connection, Done, Fate
from relay.broker.redis.scripts import Keys

log = logging.getLogger("relay.broker.redis")

# What a failed call to Redis may raise.
ERRORS = (RedisError, OSError, TimeoutError, asyncio.TimeoutError, BrokerUnavailable)

Command = tuple[tuple[Any, ...], "Done | None"]

# Commands gathered while a write waits for its replies, at most: beyond,
# they are written without waiting.
HOLD_COMMANDS = 256


class Commands:
    """The pool for registry commands and the ordered writer for everything published."""

    def __init__(self, url: str, keys: Keys, timeout_seconds: float) -> None:
        self._url = url
        self._keys = keys
        self.timeout = timeout_seconds
        self.up = False  # connected, registered and serving: commands may be sent
        self.pool: aioredis.Redis | None = None
        self.writer: Connection | None = None  # the ordered connection, while open
        self.links: Links | None = None  # its frames go out ahead of each command
        self._outbox: list[Command] = []  # gathered this pass, written at its end
        self._pass_scheduled = False
        self._held = False  # gathered, waiting for the replies to the last write

    def open_pool(self) -> None:
        options: dict[str, Any] = {
            # Every command is bounded by call's own timeout. redis-py's
            # socket_timeout would wrap each write in asyncio.wait_for, which on
            # Python 3.11 can swallow a cancellation (the write finishes as the
            # cancel arrives), and a heartbeat that goes on hangs the node's stop.
            "socket_timeout": None,
            "socket_connect_timeout": self.timeout,
            "retry": Retry(NoBackoff(), 0),
            "decode_responses": False,
        }
        self.pool = aioredis.Redis.from_url(self._url, **options)

    @property
    def backlog(self) -> int:
        """Commands written or gathered and not answered yet."""
        writer = self.writer
        return 0 if writer is None else writer.unanswered + len(self._outbox)

    async def call(self, *args: Any) -> Any:
        """One registry command on the pool, bounded; BrokerUnavailable when down."""
        if not self.up or self.pool is None:
            raise BrokerUnavailable("the backplane is down")
        try:
            async with asyncio.timeout(self.timeout):
                return await self.pool.execute_command(*args)  # type: ignore[no-untyped-call]
        except ERRORS as exc:
            raise BrokerUnavailable("the backplane did not answer") from exc

    async def raw(self, *args: Any) -> Any:
        """One command on the pool, bounded, whether the node serves or not (the supervisor's)."""
        assert self.pool is not None
        async with asyncio.timeout(self.timeout):
            return await self.pool.execute_command(*args)  # type: ignore[no-untyped-call]

    async def write(self, *args: Any) -> Any:
        """One command through the ordered writer; waits for its reply, bounded."""
        if not self.up:
            raise BrokerUnavailable("the backplane is down")
        return await self.submit(args)

    async def submit(self, args: tuple[Any, ...]) -> Any:
        """``write`` without the check: the supervisor's probe goes out before the node serves."""
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()

        def done(reply: Any) -> None:
            # Only ever a result, so no exception is left unretrieved if the
            # caller has stopped waiting.
            if not future.done():
                future.set_result(reply)

        self._command(args, done)
        try:
            async with asyncio.timeout(self.timeout):
                reply = await future
        except TimeoutError:
            raise BrokerUnavailable("the backplane did not answer") from None
        if isinstance(reply, Fate | hiredis.ReplyError):
            raise BrokerUnavailable("the backplane did not take it")
        return reply

    def post(self, *args: Any) -> None:
        """Queue a command on the writer without waiting (room frames, replies)."""
        self._command(args, None)

    def _command(self, args: tuple[Any, ...], done: Done | None) -> None:
        """Queue a command behind everything sent before it (frames gathered too)."""
        assert self.links is not None
        self.links.flush()
        self._enqueue(args, done)

    def publish_to(self, node_id: str, payload: bytes, done: Done) -> None:
        """Publish a message of ``links`` to a node (its frames are already gathered)."""
        self._enqueue(("PUBLISH", self._keys.channel(node_id), payload), done)

    def _enqueue(self, args: tuple[Any, ...], done: Done | None) -> None:
        if self.writer is None:
            log.debug("backplane down: dropped %s", args[0])
            if done is not None:
                done(NOT_SENT)
            return
        self._outbox.append((args, done))
        self.end_pass_soon()

    def end_pass_soon(self) -> None:
        if not self._pass_scheduled:
            self._pass_scheduled = True
            asyncio.get_running_loop().call_soon(self._end_pass)

    def _end_pass(self) -> None:
        """Write what this event-loop pass gathered, in order, in one write.

        While an earlier write waits for its replies, what is gathered waits
        with it (up to ``HOLD_COMMANDS``): under load the passes' frames then
        go out together, one write and one ``PUBLISH`` per node for many
        passes, which is what Redis and both nodes pay for per message; when
        idle every pass is written at once, as its replies came back.
        """
        self._pass_scheduled = False
        writer = self.writer
        if writer is not None and writer.unanswered and len(self._outbox) < HOLD_COMMANDS:
            self._held = True
            return
        self._held = False
        assert self.links is not None
        self.links.flush()
        outbox, self._outbox = self._outbox, []
        if outbox and self.writer is not None:
            self.writer.write(outbox)
        else:
            _fail_unsent(outbox)

    def attach(self, writer: Connection) -> None:
        """Write through ``writer`` from now on."""
        self.writer = writer
        writer.on_answered = self._answered

    def _answered(self) -> None:
        if self._held:
            self.end_pass_soon()

    def detach(self) -> None:
        """The writer is gone: what waits to be written is answered as not sent."""
        self._held = False
        self.writer = None
        outbox, self._outbox = self._outbox, []
        _fail_unsent(outbox)
        if self.links is not None:
            self.links.flush()  # frames held with them: not sent either (the writer is gone)


def _fail_unsent(commands: list[Command]) -> None:
    for _args, done in commands:
        if done is not None:
            done(NOT_SENT)


def text(value: object) -> str:
    """A reply item as text."""
    return value.decode() if isinstance(value, bytes) else str(value)


def pairs(flat: object) -> list[tuple[str, str]]:
    """A flat reply ``a, b, c, d...`` as text pairs ``(a, b), (c, d)...``."""
    items = [text(item) for item in flat] if isinstance(flat, list) else []
    return list(zip(items[::2], items[1::2], strict=True))


def pairs_raw(reply: object) -> list[tuple[object, object]]:
    """A map reply (a dict under RESP3, a flat list under RESP2) as pairs."""
    if isinstance(reply, dict):
        return list(reply.items())
    items = list(reply) if isinstance(reply, list | tuple) else []
    return list(zip(items[::2], items[1::2], strict=True))
