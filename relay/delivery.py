"""When a frame counts as delivered: once the peer's host has acknowledged it.

A sender's ``ok`` for a ``send`` waits for that moment. A process that dies
with unread input on a socket makes Linux reset it and throw its send queue
away, so "written" is not "delivered"; "acknowledged by the peer's TCP stack"
is, since a living client reads those bytes even after a reset.

The kernel tells how many bytes of a socket are still unacknowledged
(``SIOCOUTQ``); the frame layer turns that into ``acked_bytes()``. Asking
costs a system call, so it is never asked per message: a session whose
peer owes senders an answer is asked once at the end of the event-loop pass
that wrote the frames (on loopback the acknowledgement is usually there by
then), and after that on a timer per session that backs off from
``FIRST_RETRY_SECONDS`` to ``LAST_RETRY_SECONDS`` while nothing moves (a
delayed ACK takes up to 40 ms; a reader that stopped reading takes until it
reads again, or until its socket is given up).
"""

from __future__ import annotations

from typing import Final, Protocol

from relay.clock import Scheduler, Timer

FIRST_RETRY_SECONDS: Final = 0.001
LAST_RETRY_SECONDS: Final = 0.1


class Watched(Protocol):
    """A session whose peer's senders wait for acknowledgements (``relay.session.Session``)."""

    ack_due: bool  # in this pass's list already
    ack_timer: Timer | None
    ack_delay: float

    def check_acks(self) -> int | None:
        """Answer what the peer's host acknowledged; how many still wait (None: gone)."""
        ...


class AckWatch:
    """Asks each watched session about its acknowledgements until nothing waits."""

    __slots__ = ("_due", "_scheduler")

    def __init__(self, scheduler: Scheduler) -> None:
        self._due: list[Watched] = []
        self._scheduler = scheduler

    def watch(self, session: Watched) -> None:
        """``session`` wrote a frame whose sender waits: ask at the end of this pass."""
        if session.ack_due:
            return
        session.ack_due = True
        if not self._due:
            # After the frame layer's own end-of-pass flush, which was
            # scheduled when the frame was written.
            self._scheduler.call_soon(self._check_due)
        self._due.append(session)

    def _check_due(self) -> None:
        due, self._due = self._due, []
        for session in due:
            session.ack_due = False
            waiting = session.check_acks()
            if waiting and session.ack_timer is None:
                session.ack_delay = FIRST_RETRY_SECONDS
                self._arm(session, waiting)

    def _arm(self, session: Watched, waiting: int) -> None:
        session.ack_timer = self._scheduler.call_later(
            session.ack_delay, self._retry, session, waiting
        )

    def _retry(self, session: Watched, waiting_before: int) -> None:
        session.ack_timer = None
        waiting = session.check_acks()
        if not waiting:
            return
        # Backs off only while nothing moves: a reader that reads keeps the
        # timer short, one that stopped costs a few checks a second.
        if waiting < waiting_before:
            session.ack_delay = FIRST_RETRY_SECONDS
        else:
            session.ack_delay = min(session.ack_delay * 2, LAST_RETRY_SECONDS)
        self._arm(session, waiting)
