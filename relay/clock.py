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
from typing import Any, Generic, Protocol, TypeVar

_Item = TypeVar("_Item")


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


class Deadlines(Generic[_Item]):
    """Items that each expire ``seconds`` after they were added, on one timer.

    Every item waits as long, so they fall due in the order they were added,
    and one timer, armed for the oldest, serves them all. For the hub's hello
    deadline, a loop timer per session was made and then cancelled by almost
    every session within milliseconds (its hello came): thousands a second
    in a reconnect storm.
    """

    __slots__ = ("_due", "_expire", "_scheduler", "_seconds", "_timer")

    def __init__(
        self, scheduler: Scheduler, seconds: float, expire: Callable[[_Item], object]
    ) -> None:
        self._scheduler = scheduler
        self._seconds = seconds
        self._expire = expire
        self._due: dict[_Item, float] = {}  # in the order added, which is the order due
        self._timer: Timer | None = None

    def add(self, item: _Item) -> None:
        """``expire(item)`` ``seconds`` from now, unless discarded first (again: from now)."""
        due = self._due
        due.pop(item, None)  # a key set again would keep its place, out of order
        due[item] = self._scheduler.time() + self._seconds
        if self._timer is None:
            self._timer = self._scheduler.call_later(self._seconds, self._fire)

    def discard(self, item: _Item) -> None:
        """Forget ``item`` (nothing if it is not waiting)."""
        self._due.pop(item, None)

    def __contains__(self, item: object) -> bool:
        return item in self._due

    def _fire(self) -> None:
        self._timer = None
        now = self._scheduler.time()
        due = self._due
        expired = []
        for item, when in due.items():
            if when > now:
                break
            expired.append(item)
        for item in expired:
            del due[item]
        for item in expired:
            self._expire(item)
        if due and self._timer is None:
            oldest = next(iter(due.values()))
            self._timer = self._scheduler.call_later(max(0.0, oldest - now), self._fire)
