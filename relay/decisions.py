"""Outside decisions: something other than the relay admits a ``hello`` or a ``join``.

A ``Decider`` is asked, asynchronously, before a fresh registration (after
the token, if any, was verified; a resume of a session this node holds is
not asked again) and before a ``join``. While it decides, the session reads
nothing more, so the peer's later frames are handled after the decision and
in the order sent. Refusing is raising a ``relay.exceptions.RelayError``
(``Unauthorized`` closes the socket as a bad token does, ``Overloaded`` with
1013, which clients retry). Admitting a hello is returning ``Admitted``: its
``meta`` is kept with the session (and its peer, across resumes and nodes)
and handed to later decisions; its ``rooms``, when given, restrict the
session's rooms as a token's rooms claim does.

A ``pub`` to a room may need the same decision as a ``join``: the hub asks
``room_decided`` first (it does not wait), and ``decide_join`` only when the
answer is no. A room that a token's rooms claim lists is decided already:
neither is asked for it, nor for one the hello's ``Admitted.rooms`` lists.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from relay.auth import Claims


@dataclass(frozen=True, slots=True)
class ConnectInfo:
    """What the connection said about itself before the upgrade."""

    address: str | None  # the client's address, as admission saw it
    headers: tuple[tuple[str, str], ...]  # the request headers, lower-case names


@dataclass(frozen=True, slots=True)
class HelloAsked:
    """A registration waiting for a decision."""

    peer_id: str  # the id it will hold (the token's ``sub`` when auth is on)
    token: str | None
    claims: Claims | None
    connection: ConnectInfo | None
    node: str


@dataclass(frozen=True, slots=True)
class Admitted:
    """A hello admitted: what the session keeps of the decision."""

    meta: object = None  # a small JSON value, handed to later decisions and to observers
    rooms: tuple[str, ...] | None = None  # names or fnmatch patterns; None: no restriction


class Decider(Protocol):
    """Admits or refuses registrations and joins."""

    async def decide_hello(self, asked: HelloAsked) -> Admitted:
        """Admit (return what the session keeps) or refuse (raise ``RelayError``)."""
        ...

    async def decide_join(self, peer_id: str, room: str, meta: object) -> None:
        """Admit the join (return) or refuse it (raise ``RelayError``)."""
        ...

    def room_decided(self, peer_id: str, room: str) -> bool:
        """Whether a ``pub`` of ``peer_id`` to ``room`` may go without asking ``decide_join``."""
        ...
