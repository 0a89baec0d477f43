"""The time bound on one message: a connection whose peer starts a message and never ends it.

A message (or a single frame) still incomplete ``timeout`` seconds after its
first byte arrived fails the connection (1008). One timer per connection, armed
only while a read ends inside a message: reads that end between messages cost
nothing. The parser keeps no clock; it tells where the incomplete message
began (a stream offset), and this timer notes when it first saw that offset.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable


class MessageTimer:
    """Fails a connection whose current message stays incomplete too long."""

    __slots__ = (
        "_fail",
        "_incomplete",
        "_loop",
        "_offset",
        "_reading_paused",
        "_timeout",
        "_timer",
    )

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        timeout: float,
        offset: Callable[[], int | None],
        reading_paused: Callable[[], bool],
        fail: Callable[[str], None],
    ) -> None:
        self._loop = loop
        self._timeout = timeout
        self._offset = offset  # where the incomplete message began, None when none is
        self._reading_paused = reading_paused
        self._fail = fail  # called with the close reason
        self._incomplete: tuple[int, float] | None = None  # (offset, first seen)
        self._timer: asyncio.TimerHandle | None = None

    def incomplete(self, offset: int) -> None:
        """A read ended inside the message that began at ``offset``: time it from now if new."""
        noted = self._incomplete
        if noted is None or noted[0] != offset:
            self._incomplete = (offset, self._loop.time())
        if self._timer is None:
            self._timer = self._loop.call_later(self._timeout, self._check)

    def cancel(self) -> None:
        """The connection is gone."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _check(self) -> None:
        self._timer = None
        offset = self._offset()
        noted = self._incomplete
        if offset is None or noted is None:
            self._incomplete = None  # complete now: the next one arms the timer again
            return
        now = self._loop.time()
        if self._reading_paused() or noted[0] != offset:
            # While we do not read, the peer cannot finish: its time starts again.
            self._incomplete = (offset, now)
            delay = self._timeout
        else:
            delay = noted[1] + self._timeout - now
            if delay <= 0:
                self._fail(f"message not completed in {self._timeout:g} s")
                return
        self._timer = self._loop.call_later(delay, self._check)
