"""Which of this node's peers are in which room.

The cluster-wide view (member counts, member lists) belongs to the broker;
this index only answers "whom on this node does a room frame go to".
"""

from __future__ import annotations

from collections.abc import Iterator

from relay.peer import Peer


class Rooms:
    """Local room membership: room name -> {peer id: peer}."""

    def __init__(self) -> None:
        self._members: dict[str, dict[str, Peer]] = {}

    def __len__(self) -> int:
        return len(self._members)

    def add(self, room: str, peer: Peer) -> None:
        """Make ``peer`` a local member of ``room``."""
        self._members.setdefault(room, {})[peer.id] = peer

    def discard(self, room: str, peer: Peer) -> None:
        """Remove ``peer`` from ``room``, forgetting rooms that become empty."""
        members = self._members.get(room)
        if members is not None and members.pop(peer.id, None) is not None and not members:
            del self._members[room]

    def names(self) -> list[str]:
        """The rooms with a member on this node (a snapshot)."""
        return list(self._members)

    def members(self, room: str) -> Iterator[Peer]:
        """The local members of ``room`` (a snapshot, safe to mutate rooms meanwhile)."""
        return iter(list(self._members.get(room, {}).values()))
