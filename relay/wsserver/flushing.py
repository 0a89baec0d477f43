"""Flushing: what a server's connections gathered in one event-loop pass leaves from one callback.

A connection keeps the frames written to it during a pass and hands them to
its transport when the pass ends (``DirectConnection.write``). One callback
per server does that for every connection that gathered frames, rather than a
``call_soon`` per connection: a room's publish writes to thousands of
connections in one pass, and a uvloop callback for each cost about a sixth
of the fan-out's Python (docs/benchmarks.md).
"""

from __future__ import annotations

import asyncio
import logging
import weakref
from typing import Protocol

from uvicorn.server import ServerState

log = logging.getLogger("uvicorn.error")


class Gathering(Protocol):
    """What the flusher needs of a connection (``RelayWebSocketProtocol``)."""

    def flush(self) -> None:
        """Hand the frames gathered so far to the transport (nothing if there are none)."""


class Flusher:
    """Flushes, when the current pass ends, every connection that asked during it."""

    __slots__ = ("_loop", "due")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self.due: list[Gathering] = []
        """Connections to flush when the pass ends, each once (see ``flush_after_pass``)."""

    def flush_after_pass(self, connection: Gathering) -> None:
        """Flush ``connection`` when this pass ends; asked once per batch of frames."""
        due = self.due
        if not due:
            self._loop.call_soon(self._flush_due)
        due.append(connection)

    def _flush_due(self) -> None:
        due = self.due[:]
        # Emptied before flushing: a connection written to meanwhile asks
        # again, and leaves when the next pass ends.
        self.due.clear()
        for connection in due:
            try:
                connection.flush()
            except Exception:  # one connection's failure must not hold the others' frames
                log.exception("flushing a WebSocket connection failed")


_flushers: weakref.WeakKeyDictionary[ServerState, Flusher] = weakref.WeakKeyDictionary()


def flusher_of(server_state: ServerState, loop: asyncio.AbstractEventLoop) -> Flusher:
    """The flusher of ``server_state``'s server, whose connections all run on ``loop``."""
    flusher = _flushers.get(server_state)
    if flusher is None:
        flusher = _flushers[server_state] = Flusher(loop)
    return flusher
