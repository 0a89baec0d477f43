"""The local room index: members, and apart from them the presence watchers."""

from __future__ import annotations

from collections.abc import Iterable

from relay.peer import Peer
from relay.rooms import Rooms


def peer(peer_id: str) -> Peer:
    return Peer(peer_id, max_queue_messages=10, max_queue_bytes=1000, replay_bytes=1000)


def ids(peers: Iterable[Peer]) -> set[str]:
    return {p.id for p in peers}


def test_presence_walks_the_watchers_only() -> None:
    rooms = Rooms()
    alice, bob, carol = peer("alice"), peer("bob"), peer("carol")
    rooms.add("r", alice, watching=True)
    rooms.add("r", bob, watching=False)
    rooms.add("r", carol, watching=False)
    assert ids(rooms.members("r")) == {"alice", "bob", "carol"}
    assert ids(rooms.watchers("r")) == {"alice"}


def test_joining_again_sets_watching_and_leaving_forgets_both() -> None:
    rooms = Rooms()
    alice, bob = peer("alice"), peer("bob")
    rooms.add("r", alice, watching=False)
    rooms.add("r", bob, watching=True)
    rooms.add("r", alice, watching=True)
    rooms.add("r", bob, watching=False)
    assert ids(rooms.members("r")) == {"alice", "bob"}
    assert ids(rooms.watchers("r")) == {"alice"}
    rooms.discard("r", alice)
    assert ids(rooms.watchers("r")) == set()
    assert ids(rooms.members("r")) == {"bob"}
    rooms.discard("r", bob)
    assert len(rooms) == 0 and rooms.names() == []
    assert ids(rooms.members("r")) == set() and ids(rooms.watchers("r")) == set()
