"""Time for the session and hub rules: a clock and timers, injected.

The rules never call asyncio or the ``time`` module for their own timing;
they are given a ``Scheduler``. The relay gives them ``LoopScheduler`` (the
running asyncio loop's timers and ``time.monotonic``); unit tests give them a
fake whose time moves only when the test says, so the rules run in a plain
function call, without a loop or a socket.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any, Protocol


class Timer(Protocol):
    """A callback scheduled for later."""

    def cancel(self) -> None:
        """Do not call it (a no-op once it ran)."""
        ...

    def when(self) -> float:
        """When it is due, on the scheduler's clock."""
        ...


class Scheduler(Protocol):
    """A clock in seconds and callbacks run later, all on one thread."""

    def time(self) -> float:
        """Now, in seconds on a monotonic clock."""
        ...

    def call_later(self, delay: float, callback: Callable[..., object], *args: Any) -> Timer:
        """Call ``callback(*args)`` once ``delay`` seconds have passed."""
        ...

    def call_soon(self, callback: Callable[..., object], *args: Any) -> None:
        """Call ``callback(*args)`` once the current work is done (this event-loop pass)."""
        ...


class LoopScheduler:
    """The running asyncio loop's timers; ``time.monotonic``, the loop's own clock on Linux."""

    __slots__ = ()

    time = staticmethod(time.monotonic)  # no Python frame: read once per message by rate limits

    def call_later(self, delay: float, callback: Callable[..., object], *args: Any) -> Timer:
        """``loop.call_later`` on the running loop."""
        return asyncio.get_running_loop().call_later(delay, callback, *args)

    def call_soon(self, callback: Callable[..., object], *args: Any) -> None:
        """``loop.call_soon`` on the running loop."""
        asyncio.get_running_loop().call_soon(callback, *args)
