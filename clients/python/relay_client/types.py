"""Value types the client hands to its users."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Ack", "Message", "Presence", "State", "Undelivered", "Welcome"]


@dataclass(frozen=True, slots=True)
class Message:
    """A message delivered by the relay (a ``msg`` envelope).

    Attributes:
        sender: the sender's peer id, stamped by the relay (the ``from`` field).
            Ids starting with ``@`` (e.g. ``@server``) are messages the relay
            itself originated (HTTP API); peer ids never contain ``@``.
        data: the payload, exactly as the sender encoded it (any msgpack value).
        ev: the optional event name.
        room: the room, when the message came from a ``pub``.
        rid: set when the message is a request expecting a reply.
        re: set when the message is a reply to one of our requests.
    """

    sender: str
    data: Any
    ev: str | None = None
    room: str | None = None
    rid: Any = None
    re: Any = None

    @property
    def from_server(self) -> bool:
        """True for messages originated by the relay itself (``from`` starts with ``@``)."""
        return self.sender.startswith("@")

    @property
    def is_request(self) -> bool:
        """True when the sender expects a reply (the message carries a ``rid``)."""
        return self.rid is not None


@dataclass(frozen=True, slots=True)
class Presence:
    """A membership change in a room joined with ``presence=True``.

    Attributes:
        room: the room.
        peer: the peer that joined or left.
        event: ``"join"`` or ``"leave"``.
        members: the full member list, present on the first presence after a join.
    """

    room: str
    peer: str
    event: str
    members: tuple[str, ...] | None = None


@dataclass(frozen=True, slots=True)
class Ack:
    """The relay's ``ok`` for a send or publish.

    Attributes:
        id: the request id the client put on the envelope.
        queued: True when at least one target is resuming and the message was
            queued for it rather than delivered; if that target never comes
            back, an :class:`Undelivered` is reported later with this ``id``.
    """

    id: Any
    queued: bool = False


@dataclass(frozen=True, slots=True)
class Undelivered:
    """A message the relay acknowledged as queued, then dropped.

    The target was resuming when the message was sent and its resume window
    expired before it came back. ``id`` matches :attr:`Ack.id` of the send.

    Attributes:
        id: the id of the original send (as in its :class:`Ack`).
        to: the id(s) that did not get it.
        code: the error code (``peer-offline``).
        message: the relay's explanation.
        data: the original payload, if the client still remembered it.
        ev: the original event name, if remembered.
    """

    id: Any
    to: str | list[str] | None
    code: str
    message: str
    data: Any = None
    ev: str | None = None


@dataclass(frozen=True, slots=True)
class Welcome:
    """What the relay said in its latest ``welcome``.

    Attributes:
        id: the registered peer id (chosen by the relay when none was given).
        resume: the secret to resume this session; rotates on every welcome.
        limits: the relay's limits (``max_frame_bytes``, ``rate_per_second``, ...).
        node: the name of the relay node.
        resumed: True when this welcome took over an existing session (its
            rooms were restored and its queued messages are being delivered).
    """

    id: str
    resume: str
    limits: dict[str, Any] = field(default_factory=dict)
    node: str = ""
    resumed: bool = False


class State(enum.Enum):
    """Connection state of a :class:`~relay_client.Peer`."""

    CONNECTING = "connecting"
    CONNECTED = "connected"
    RECONNECTING = "reconnecting"
    CLOSED = "closed"
