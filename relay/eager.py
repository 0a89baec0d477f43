"""Eager tasks: a coroutine runs at once up to its first wait, then on in its task.

Python 3.12 has this built in (``eager_start``); the relay supports 3.11,
which has not. A session's step (a ``hello``, a ``join``) mostly never waits
on one node, since the memory broker answers at once; run eagerly, its
answer is written in the same event-loop pass as the read that brought the
request, instead of a pass or two later when a new task would first run. In
a reconnect storm that cut the wait for the ``welcome`` by a third to a
half (docs/benchmarks.md).

The first part runs as the task's own, as 3.12 does it: code that asks for
the current task (anyio's cancel scopes, ``asyncio.timeout``) sees the task
that will run the rest.
"""

from __future__ import annotations

import asyncio
import types
from collections.abc import Coroutine, Generator
from typing import Any

_enter_task = asyncio.tasks._enter_task
_leave_task = asyncio.tasks._leave_task


def start_eagerly(
    work: Coroutine[Any, Any, None], loop: asyncio.AbstractEventLoop | None = None
) -> asyncio.Task[None] | None:
    """Run ``work`` now up to its first wait, inside the task returned, which runs the rest.

    An exception the first part raises is the task's, as if it had run there.
    None when ``work`` ended in its first part without one: its task (the
    current task meanwhile) ends in the next pass with nothing left to do,
    and nobody need track it. ``loop``: the running loop, if the caller knows
    it (asking costs a system call).
    """
    loop = loop or asyncio.get_running_loop()
    rest = _Rest(work)
    task = loop.create_task(rest.finish())
    current = asyncio.current_task(loop)
    if current is not None:  # called from a task: it is not the one running now
        _leave_task(loop, current)
    _enter_task(loop, task)
    try:
        rest.begin()
    finally:
        _leave_task(loop, task)
        if current is not None:
            _enter_task(loop, current)
    return None if rest.ended_cleanly else task


class _Rest:
    """``work`` after its first part: what it waits on, or how it ended."""

    __slots__ = ("_error", "_waiting", "_work")

    def __init__(self, work: Coroutine[Any, Any, None]) -> None:
        self._work: Coroutine[Any, Any, None] | None = work
        self._waiting: Any = None
        self._error: BaseException | None = None

    @property
    def ended_cleanly(self) -> bool:
        """``work`` ended, and raised nothing."""
        return self._work is None and self._error is None

    def begin(self) -> None:
        assert self._work is not None
        try:
            self._waiting = self._work.send(None)
        except StopIteration:
            self._work = None
        except BaseException as exc:
            self._work = None
            self._error = exc

    async def finish(self) -> None:
        if self._error is not None:
            error, self._error = self._error, None
            raise error
        if self._work is not None:
            await _continue(self._work, self._waiting)


@types.coroutine
def _continue(work: Coroutine[Any, Any, None], waiting: Any) -> Generator[Any, Any, None]:
    """Drive ``work``, which yielded ``waiting`` last, on behalf of the task running this."""
    while True:
        try:
            sent = yield waiting
        except BaseException as exc:  # thrown in by the task: a cancellation, mostly
            try:
                waiting = work.throw(exc)
            except StopIteration:
                return
        else:
            try:
                waiting = work.send(sent)
            except StopIteration:
                return
