"""Redis connections for the data path, driven by the event loop's callbacks.

The broker's two busy connections (the ordered writer and the subscription)
have no task of their own: commands are written when the broker flushes what
one event-loop pass gathered, and replies and pub/sub messages are parsed by
hiredis (in C) and handed to callbacks as soon as they arrive. Registry
commands stay on redis-py's pool, where a task per call costs nothing that
matters.

The URL is read by redis-py's own parser: host and port or a unix socket,
``db``, user and password, and ``rediss://`` (TLS, verified against the
system's or ``ssl_ca_certs``' authorities unless ``ssl_cert_reqs=none``).
"""

from __future__ import annotations

import asyncio
import ssl
from collections import deque
from collections.abc import Callable, Iterable
from typing import Any, cast

import hiredis
from redis.asyncio.connection import SSLConnection, parse_url

Done = Callable[[Any], None]  # told a command's reply (a ReplyError instance if refused)


class Fate:
    """What a command's ``done`` is told instead of a reply."""

    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return self.name


NOT_SENT = Fate("not sent")  # never written: Redis never saw it
UNKNOWN = Fate("unknown")  # written, but the connection failed before the reply came


def pack(args: Iterable[Any]) -> bytes:
    """One command in RESP: an array of bulk strings."""
    items = [a if isinstance(a, bytes) else str(a).encode() for a in args]
    parts = [b"*%d\r\n" % len(items)]
    for item in items:
        parts += (b"$%d\r\n" % len(item), item, b"\r\n")
    return b"".join(parts)


class Connection(asyncio.Protocol):
    """One Redis connection: commands out in order, each reply to its command's ``done``."""

    def __init__(self, on_message: Callable[[bytes], None] | None = None) -> None:
        self._parser = hiredis.Reader()
        self._transport: asyncio.Transport | None = None
        self._waiting: deque[tuple[float, Done | None]] = deque()
        self._on_message = on_message
        # Called when the last reply awaited has come (the writer sends more then).
        self.on_answered: Callable[[], None] | None = None
        self.closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    @classmethod
    async def open(cls, url: str, on_message: Callable[[bytes], None] | None = None) -> Connection:
        """Connect, authenticate and select the database ``url`` names."""
        options: dict[str, Any] = dict(parse_url(url))
        loop = asyncio.get_running_loop()
        protocol = cls(on_message)
        if "path" in options:
            await loop.create_unix_connection(lambda: protocol, options["path"])
        else:
            context = _tls(options) if options.get("connection_class") is SSLConnection else None
            await loop.create_connection(
                lambda: protocol, options.get("host", "localhost"), options.get("port", 6379),
                ssl=context,
            )  # fmt: skip
        if options.get("password"):
            user = (options["username"],) if options.get("username") else ()
            await protocol.call("AUTH", *user, options["password"])
        if options.get("db"):
            await protocol.call("SELECT", options["db"])
        return protocol

    # --- asyncio.Protocol ------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports do not subclass asyncio's, but have the same methods.
        self._transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        parser = self._parser
        parser.feed(data)
        on_message = self._on_message
        while (reply := parser.gets()) is not False:
            if (
                on_message is not None
                and type(reply) is list
                and len(reply) == 3
                and reply[0] == b"message"
            ):
                on_message(reply[2])
                continue
            if not self._waiting:
                continue  # an unsolicited reply (a push this connection did not ask for)
            _at, done = self._waiting.popleft()
            if done is not None:
                done(reply)
        if not self._waiting and self.on_answered is not None:
            self.on_answered()

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None
        waiting, self._waiting = self._waiting, deque()
        for _at, done in waiting:
            if done is not None:
                done(UNKNOWN)
        if not self.closed.done():
            self.closed.set_result(None)

    # --- commands --------------------------------------------------------------

    @property
    def unanswered(self) -> int:
        """Commands written whose replies have not come yet."""
        return len(self._waiting)

    @property
    def oldest(self) -> float | None:
        """When the oldest unanswered command was written (loop time), if any."""
        return self._waiting[0][0] if self._waiting else None

    def write(self, commands: list[tuple[tuple[Any, ...], Done | None]]) -> None:
        """Write ``commands`` in order, in one write; each ``done`` gets its reply."""
        transport = self._transport
        if transport is None or transport.is_closing():
            for _args, done in commands:
                if done is not None:
                    done(NOT_SENT)
            return
        now = asyncio.get_running_loop().time()
        self._waiting.extend((now, done) for _args, done in commands)
        transport.write(b"".join(pack(args) for args, _done in commands))

    async def call(self, *args: Any) -> Any:
        """One command, waiting for its reply; a refusal raises ``hiredis.ReplyError``."""
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()

        def done(reply: Any) -> None:
            if not future.done():
                future.set_result(reply)

        self.write([(args, done)])
        reply = await future
        if reply is UNKNOWN:
            raise ConnectionError("the connection to Redis closed")
        if isinstance(reply, hiredis.ReplyError):
            raise reply
        return reply

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()


def _tls(options: dict[str, Any]) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=options.get("ssl_ca_certs"))
    if options.get("ssl_certfile"):
        context.load_cert_chain(options["ssl_certfile"], options.get("ssl_keyfile"))
    if str(options.get("ssl_cert_reqs", "required")).lower() == "none":
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context
