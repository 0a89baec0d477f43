"""The rooms a peer is in, and their members as presence events told."""

from __future__ import annotations

from .types import Presence


class Rooms:
    """Joined rooms (to rejoin after a fresh session) and known members."""

    def __init__(self) -> None:
        self.joined: dict[str, bool] = {}
        """Room -> whether it was joined with presence."""
        self._members: dict[str, set[str]] = {}

    def join(self, room: str, presence: bool) -> None:
        """The relay acknowledged a join of ``room``."""
        self.joined[room] = presence

    def leave(self, room: str) -> None:
        """``room`` was left, or can no longer be joined."""
        self.joined.pop(room, None)
        self._members.pop(room, None)

    def members(self, room: str) -> frozenset[str]:
        """The members of ``room`` as presence events told."""
        return frozenset(self._members.get(room, ()))

    def apply(self, presence: Presence) -> None:
        """Update the members of ``presence.room``."""
        known = self._members.setdefault(presence.room, set())
        if presence.members is not None:
            known.clear()
            known.update(presence.members)
        if presence.event == "join":
            known.add(presence.peer)
        elif presence.event == "leave":
            known.discard(presence.peer)

    def forget_members(self) -> None:
        """A fresh session: what presence told about the old one no longer holds."""
        self._members.clear()
