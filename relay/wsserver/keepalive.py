"""Keepalive: one timer per server pings every open connection and fails the silent ones.

A connection that sent nothing for a whole round is failed with 1011 (RFC
6455 7.1.7: a close frame, then the end of TCP, bounded by the close timeout
like any close), as the ``websockets`` library does on a keepalive timeout.
"""

from __future__ import annotations

import asyncio
import weakref
from typing import Protocol

from uvicorn.config import Config
from uvicorn.server import ServerState


class KeptAlive(Protocol):
    """What the keepalive needs of a connection (``RelayWebSocketProtocol``)."""

    alive: bool
    """True once any byte arrived since the last ``keepalive_ping`` (data or pong alike)."""

    def keepalive_ping(self) -> None:
        """Set ``alive`` to False and ping the peer (if the connection is open)."""

    def keepalive_expired(self) -> None:
        """The peer sent nothing since the last ping: close it with 1011, then end TCP."""


class Keepalive:
    """One timer for every open connection of a server: ping them, fail the silent ones.

    A ping goes to every member; ``timeout`` later, a member that sent no byte
    since is told ``keepalive_expired``. The next round starts ``interval``
    after the previous one (or right after the check, when ``timeout >=
    interval``): one ping in flight per connection, as with uvicorn's own
    protocols.
    """

    __slots__ = ("_interval", "_loop", "_members", "_timeout", "_timer")

    def __init__(
        self, loop: asyncio.AbstractEventLoop, interval: float | None, timeout: float | None
    ) -> None:
        self._loop = loop
        self._interval = interval if interval and interval > 0 else None
        self._timeout = timeout if timeout and timeout > 0 else None
        self._members: set[KeptAlive] = set()
        self._timer: asyncio.TimerHandle | None = None

    def add(self, connection: KeptAlive) -> None:
        """Keep ``connection`` alive from the next round on (nothing if keepalive is off)."""
        if self._interval is None:
            return
        self._members.add(connection)
        if self._timer is None:
            self._timer = self._loop.call_later(self._interval, self._ping)

    def discard(self, connection: KeptAlive) -> None:
        """Stop pinging ``connection`` (it is closing, or gone)."""
        self._members.discard(connection)

    def _ping(self) -> None:
        self._timer = None
        if not self._members:
            return  # restarted by the next add()
        for connection in self._members:
            connection.keepalive_ping()
        assert self._interval is not None
        if self._timeout is None:
            self._timer = self._loop.call_later(self._interval, self._ping)
        else:
            self._timer = self._loop.call_later(self._timeout, self._reap)

    def _reap(self) -> None:
        silent = [connection for connection in self._members if not connection.alive]
        for connection in silent:
            connection.keepalive_expired()
        assert self._interval is not None and self._timeout is not None
        self._timer = self._loop.call_later(max(0.0, self._interval - self._timeout), self._ping)


# One keepalive per uvicorn server (tests run several servers in one process).
_keepalives: weakref.WeakKeyDictionary[ServerState, Keepalive] = weakref.WeakKeyDictionary()


def keepalive_of(
    server_state: ServerState, config: Config, loop: asyncio.AbstractEventLoop
) -> Keepalive:
    """The keepalive of ``server_state``'s server, created by its first connection."""
    keepalive = _keepalives.get(server_state)
    if keepalive is None:
        keepalive = Keepalive(loop, config.ws_ping_interval, config.ws_ping_timeout)
        _keepalives[server_state] = keepalive
    return keepalive
