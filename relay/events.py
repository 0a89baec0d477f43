"""Session events, for whoever wants to hear them (webhooks, an admin view, tests).

A ``SessionObserver`` is told when a peer id comes online or goes offline
for good, joins or leaves a room, is refused, or has its connection closed by
the relay. The hub calls every observer in ``Hub.observers`` synchronously,
from the event loop, at the moment the event happens; an observer must not
block (queue the event and send it elsewhere). Events are never per message,
so a node with no observer pays nothing for them.
"""

from __future__ import annotations


class SessionObserver:
    """Override the events you want; the others do nothing."""

    def online(self, peer_id: str, *, resumed: bool, meta: object = None) -> None:
        """``peer_id`` registered on this node (``resumed``: it took over a kept session).

        ``meta``: what the decider (``relay.decisions``) said of its session, or None.
        """

    def offline(self, peer_id: str, reason: str) -> None:
        """``peer_id`` is gone for good from this node (not kept for a resume, or its window ended).

        ``reason``: ``closed`` (the client said goodbye or the relay closed it
        for good), ``expired`` (its resume window ended), ``drained`` (the
        node shut down), or ``moved`` (another node took the session over).
        """

    def joined(self, room: str, peer_id: str) -> None:
        """``peer_id`` joined ``room`` (from this node)."""

    def left(self, room: str, peer_id: str) -> None:
        """``peer_id`` left ``room``, by a ``leave``, by going offline, or by an operator."""

    def refused(self, peer_id: str | None, code: str, message: str) -> None:
        """A request of ``peer_id`` (None: an unnamed ``hello``) was refused with ``code``."""

    def closed(self, peer_id: str | None, code: int, message: str, label: str) -> None:
        """The relay is closing a connection with ``code`` and ``message`` (``label``: metrics)."""
