"""The callbacks registered on a peer, the tasks their coroutines run in, and the inbox."""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any

from .errors import RelayError
from .types import Message, Presence, State, Undelivered

log = logging.getLogger("relay_client")

MessageHandler = Callable[[Message], Awaitable[None] | None]
"""``peer.on(ev, handler)``: called with each matching :class:`Message`; may be async."""
RequestHandler = Callable[[Message], Any]
"""``peer.on_request(ev, handler)``: returns the reply data (or an awaitable of it)."""
PresenceHandler = Callable[[Presence], Awaitable[None] | None]
UndeliveredHandler = Callable[[Undelivered], Awaitable[None] | None]
ErrorHandler = Callable[[RelayError], Awaitable[None] | None]
StateHandler = Callable[[State], Awaitable[None] | None]


class Handlers:
    """Registered callbacks. Sync ones run inline, async ones as tasks; a
    callback that raises is logged and disturbs nothing else."""

    def __init__(self) -> None:
        self.messages: dict[str | None, list[MessageHandler]] = {}
        self.requests: dict[str | None, RequestHandler] = {}
        self.presence: list[PresenceHandler] = []
        self.undelivered: list[UndeliveredHandler] = []
        self.errors: list[ErrorHandler] = []
        self.state: list[StateHandler] = []
        self._tasks: set[asyncio.Task[Any]] = set()

    @staticmethod
    def add(handlers: list[Any], handler: Any) -> Callable[[], None]:
        """Append ``handler`` to ``handlers``; return a function that removes it."""
        handlers.append(handler)

        def remove() -> None:
            if handler in handlers:
                handlers.remove(handler)

        return remove

    def add_message(self, ev: str | None, handler: MessageHandler) -> Callable[[], None]:
        """Register ``handler`` for messages whose ``ev`` is ``ev``; return a remover."""
        self.messages.setdefault(ev, []).append(handler)

        def remove() -> None:
            handlers = self.messages.get(ev, [])
            if handler in handlers:
                handlers.remove(handler)
            if not handlers:
                self.messages.pop(ev, None)

        return remove

    def set_request(self, ev: str | None, handler: RequestHandler) -> Callable[[], None]:
        """Make ``handler`` the one that answers requests with ``ev``; return a remover."""
        self.requests[ev] = handler

        def remove() -> None:
            if self.requests.get(ev) is handler:
                del self.requests[ev]

        return remove

    def call(self, handler: Callable[[Any], Any], arg: Any) -> None:
        """Run one callback."""
        try:
            result = handler(arg)
        except Exception:
            log.exception("relay handler %r failed", handler)
            return
        if inspect.isawaitable(result):
            self.spawn(result)

    def call_all(self, handlers: list[Any], arg: Any) -> None:
        """Run every callback of ``handlers`` (a copy: they may remove themselves)."""
        for handler in list(handlers):
            self.call(handler, arg)

    def spawn(self, awaitable: Awaitable[Any]) -> None:
        """Run ``awaitable`` as a task that :meth:`cancel_tasks` will cancel."""
        task = asyncio.ensure_future(awaitable)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def cancel_tasks(self) -> None:
        """Cancel the callbacks' tasks (not the one calling this)."""
        current = asyncio.current_task()
        for task in list(self._tasks):
            if task is not current:
                task.cancel()

    def error(self, exc: RelayError) -> None:
        """Report an error no caller waits for; logged when nobody listens."""
        if not self.errors:
            log.warning("relay error: %s", exc)
        self.call_all(self.errors, exc)

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("relay handler task failed", exc_info=task.exception())


class Inbox:
    """Messages no handler took, for ``recv()``; bounded, dropping the oldest."""

    def __init__(self, size: int) -> None:
        self._size = size
        self._messages: deque[Message] = deque()
        self._arrived = asyncio.Event()
        self._closed: RelayError | None = None
        self.dropped = 0

    def put(self, msg: Message) -> None:
        """Keep ``msg``; when full, drop (and count) the oldest."""
        if len(self._messages) >= self._size:
            self._messages.popleft()
            self.dropped += 1
            if self.dropped == 1 or self.dropped % 1000 == 0:
                log.warning("inbox full (%d): dropped %d message(s)", self._size, self.dropped)
        self._messages.append(msg)
        self._arrived.set()

    async def get(self) -> Message:
        """The oldest message; once closed and empty, raise the closing error."""
        while True:
            if self._messages:
                return self._messages.popleft()
            if self._closed is not None:
                raise self._closed
            self._arrived.clear()
            await self._arrived.wait()

    def close(self, error: RelayError) -> None:
        """No more messages will come: readers get ``error`` once it is empty."""
        self._closed = error
        self._arrived.set()
