"""Everything a peer waits to hear back about, settled from the relay's envelopes.

Three tables, no I/O:

* requests to the relay (an envelope with an ``id``), answered by ``ok``,
  ``err`` or ``pong``; and those a draining relay left unanswered, which it
  did not act on, waiting to be sent again on the next session;
* requests to other peers (a ``send`` with a ``rid``), answered by a ``msg``
  whose ``re`` is that ``rid`` and whose sender is the target;
* sends the relay acknowledged as ``queued`` for a resuming target, kept
  (the latest ones) so that a later ``err peer-offline`` can say what was lost.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ._wire import ERROR_EV
from .errors import (
    ConnectionLost,
    PeerOffline,
    RelayError,
    RemoteError,
    ServerError,
    error_from_code,
)
from .types import Ack, Message, Undelivered

QUEUED_MEMORY = 4096
"""How many queued sends are remembered for their :class:`Undelivered` report."""


def new_future() -> asyncio.Future[Any]:
    """A future whose exception counts as retrieved even if its caller went away."""
    future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
    future.add_done_callback(_retrieve)
    return future


def _retrieve(future: asyncio.Future[Any]) -> None:
    if not future.cancelled():
        future.exception()


@dataclass(slots=True)
class Pending:
    """A request sent with an ``id``, waiting for its ``ok``/``err``/``pong``."""

    future: asyncio.Future[Any]
    kind: str
    envelope: dict[str, Any]
    sent_at: float = 0.0
    on_ok: Callable[[], None] | None = None


@dataclass(slots=True)
class Outgoing:
    """An envelope ready to be written, with its waiter when it has an ``id``."""

    envelope: dict[str, Any]
    frame: bytes
    pending: Pending | None


@dataclass(slots=True)
class _PeerRequest:
    target: str
    future: asyncio.Future[Any]


@dataclass(slots=True)
class _Queued:
    to: Any
    ev: str | None
    data: Any
    rid: Any


class InFlight:
    """The three tables; see the module docstring."""

    def __init__(self) -> None:
        self._ids = itertools.count(1)
        self._rids = itertools.count(1)
        self._pending: dict[Any, Pending] = {}
        self.resend: deque[Pending] = deque()
        """Requests a drain left unanswered, in the order they were written."""
        self._requests: dict[Any, _PeerRequest] = {}
        self._queued: OrderedDict[Any, _Queued] = OrderedDict()

    def next_id(self) -> int:
        """A fresh ``id`` for a request to the relay."""
        return next(self._ids)

    def expect(self, pending: Pending) -> None:
        """``pending`` is being written: its answer may come from now on."""
        pending.sent_at = time.monotonic()
        self._pending[pending.envelope["id"]] = pending

    def forget(self, request_id: Any) -> None:
        """Stop waiting for the answer to ``request_id`` (its caller gave up)."""
        self._pending.pop(request_id, None)

    def open_request(self, target: str) -> tuple[int, asyncio.Future[Any]]:
        """A ``rid`` for a request to peer ``target``, and the future of its reply."""
        rid = next(self._rids)
        future = new_future()
        self._requests[rid] = _PeerRequest(target, future)
        return rid, future

    def close_request(self, rid: Any) -> None:
        """The request ``rid`` is over (answered, failed or timed out)."""
        self._requests.pop(rid, None)

    def settle_reply(self, msg: Message) -> bool:
        """Resolve the request ``msg`` answers, if it is ours; True when it was."""
        if msg.re is None:
            return False
        try:
            request = self._requests.get(msg.re)
        except TypeError:  # an unhashable re is not ours
            return False
        if request is None or request.target != msg.sender:
            return False
        del self._requests[msg.re]
        if not request.future.done():
            if msg.ev == ERROR_EV:
                request.future.set_exception(RemoteError(str(msg.data), peer=msg.sender))
            else:
                request.future.set_result(msg.data)
        return True

    def settle_ok(self, envelope: dict[str, Any]) -> None:
        """An ``ok``: resolve its request with an :class:`Ack`."""
        rid = envelope.get("id")
        pending = self._pending.pop(rid, None) if rid is not None else None
        if pending is None:
            return
        if pending.on_ok is not None:
            pending.on_ok()
        queued = bool(envelope.get("queued", False))
        if queued:
            sent = pending.envelope
            self._queued[rid] = _Queued(
                sent.get("to"), sent.get("ev"), sent.get("d"), sent.get("rid")
            )
            while len(self._queued) > QUEUED_MEMORY:
                self._queued.popitem(last=False)
        if not pending.future.done():
            pending.future.set_result(Ack(rid, queued))

    def settle_pong(self, envelope: dict[str, Any]) -> None:
        """A ``pong``: resolve its ``ping`` with the round trip in seconds."""
        rid = envelope.get("id")
        pending = self._pending.pop(rid, None) if rid is not None else None
        if pending is not None and not pending.future.done():
            pending.future.set_result(time.monotonic() - pending.sent_at)

    def settle_err(self, envelope: dict[str, Any]) -> ServerError | Undelivered | None:
        """An ``err``: fail its request; else return what no caller waits for.

        That is an :class:`Undelivered` for a queued send whose target never
        came back (any peer request it carried fails too), or the error itself.
        """
        rid = envelope.get("id")
        code = str(envelope.get("code", "internal"))
        text = str(envelope.get("msg", ""))
        to = envelope.get("to")
        exc = error_from_code(code, text, request_id=rid, to=to)
        pending = self._pending.pop(rid, None) if rid is not None else None
        if pending is not None:
            if not pending.future.done():
                pending.future.set_exception(exc)
            return None
        if rid is None or not isinstance(exc, PeerOffline):
            return exc
        queued = self._queued.pop(rid, None)
        if queued is not None and queued.rid is not None:
            request = self._requests.pop(queued.rid, None)
            if request is not None and not request.future.done():
                request.future.set_exception(exc)
        return Undelivered(
            id=rid,
            to=to if to is not None else (queued.to if queued else None),
            code=code,
            message=text,
            data=queued.data if queued else None,
            ev=queued.ev if queued else None,
        )

    def keep_for_resend(self) -> None:
        """The relay closed the socket with 1001 (a drain): it did not act on what it
        left unanswered, so those requests are sent again on the next session.

        They were written before any still waiting here from an earlier drain,
        so they go first. Those whose caller gave up are dropped.
        """
        pending, self._pending = self._pending, {}
        unanswered = [item for item in pending.values() if not item.future.done()]
        self.resend.extendleft(reversed(unanswered))

    def drop_rejoins(self) -> None:
        """A fresh session rejoins every remembered room: earlier rejoins are not sent again."""
        for item in [item for item in self.resend if item.kind == "rejoin"]:
            self.resend.remove(item)
            item.future.cancel()

    def lose(self) -> None:
        """The socket dropped: requests it carried have an unknown fate.

        Those waiting to be sent again were not on it and keep waiting.
        """
        pending, self._pending = self._pending, {}
        for item in pending.values():
            if not item.future.done():
                item.future.set_exception(
                    ConnectionLost(
                        f"connection to the relay dropped before it answered this {item.kind}"
                    )
                )

    def fail(self, exc: RelayError) -> None:
        """The peer closed for good: every waiter gets ``exc``."""
        waiting = [p.future for p in self._pending.values()]
        waiting += [p.future for p in self.resend]
        waiting += [r.future for r in self._requests.values()]
        self._pending.clear()
        self.resend.clear()
        self._requests.clear()
        for future in waiting:
            if not future.done():
                future.set_exception(exc)
