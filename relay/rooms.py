"""Which of this node's peers are in which room.

The cluster-wide view (member counts, member lists) belongs to the broker;
this index only answers "whom on this node does a room frame go to".
"""

from __future__ import annotations

from collections.abc import Iterator

from relay.peer import Peer


class Rooms:
    """Local room membership: room name -> {peer id: peer}, and which of them watch presence.

    The watchers are kept apart so that a presence event costs what its
    watchers do: a 10,000-member room nobody watches would otherwise be
    walked whole on every join and leave.
    """

    def __init__(self) -> None:
        self._members: dict[str, dict[str, Peer]] = {}
        self._watchers: dict[str, dict[str, Peer]] = {}

    def __len__(self) -> int:
        return len(self._members)

    def add(self, room: str, peer: Peer, *, watching: bool) -> None:
        """Make ``peer`` a local member of ``room``; ``watching``: it receives presence."""
        self._members.setdefault(room, {})[peer.id] = peer
        if watching:
            self._watchers.setdefault(room, {})[peer.id] = peer
        else:
            _pop(self._watchers, room, peer)

    def discard(self, room: str, peer: Peer) -> None:
        """Remove ``peer`` from ``room``, forgetting rooms that become empty."""
        _pop(self._members, room, peer)
        _pop(self._watchers, room, peer)

    def names(self) -> list[str]:
        """The rooms with a member on this node (a snapshot)."""
        return list(self._members)

    def members(self, room: str) -> Iterator[Peer]:
        """The local members of ``room`` (a snapshot, safe to mutate rooms meanwhile)."""
        return iter(list(self._members.get(room, {}).values()))

    def watchers(self, room: str) -> Iterator[Peer]:
        """The local members of ``room`` that receive presence (a snapshot)."""
        return iter(list(self._watchers.get(room, {}).values()))


def _pop(index: dict[str, dict[str, Peer]], room: str, peer: Peer) -> None:
    peers = index.get(room)
    if peers is not None and peers.pop(peer.id, None) is not None and not peers:
        del index[room]
