"""Typed client-to-server envelopes of protocol v1.

Payloads travel as ``d_raw``: the exact msgpack bytes the sender wrote, never
decoded, so the relay delivers them unchanged type for type (float32 stays
float32, a str with odd bytes stays as it was) and spends no time on them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from relay.values import RequestId

SERVER_ID = "@server"  # ``from`` of server-originated messages; no peer id can start with @
# The one ``@`` id a client may address: a ``send`` to it is an RPC to the backend
# (``relay.proxy``), and its answer comes ``from`` it.
BACKEND_ID = "@backend"

PassThrough = int | str  # the types accepted for ``rid`` and ``re``


@dataclass(slots=True)
class Hello:
    """Register as ``peer_id`` (or a server-chosen id), optionally resuming."""

    kind: ClassVar[str] = "hello"  # its name in the metrics
    peer_id: str | None = None
    token: str | None = None
    resume: str | None = None
    received: int | None = None  # envelopes the client got since its last welcome


@dataclass(slots=True)
class Refresh:
    """Replace the session's token with a fresh one before it expires."""

    kind: ClassVar[str] = "refresh"  # its name in the metrics
    token: str
    id: RequestId | None = None


@dataclass(slots=True)
class Send:
    """Deliver ``d_raw`` to one peer (``to`` a str) or several (a tuple)."""

    kind: ClassVar[str] = "send"  # its name in the metrics
    to: str | tuple[str, ...]
    d_raw: bytes
    ev: str | None = None
    id: RequestId | None = None
    rid: PassThrough | None = None
    re: PassThrough | None = None


@dataclass(slots=True)
class Publish:
    """Deliver ``d_raw`` to every member of ``room``."""

    kind: ClassVar[str] = "pub"  # its name in the metrics
    room: str
    d_raw: bytes
    ev: str | None = None
    id: RequestId | None = None
    echo: bool = False


@dataclass(slots=True)
class Join:
    """Become a member of ``room``."""

    kind: ClassVar[str] = "join"  # its name in the metrics
    room: str
    id: RequestId | None = None
    presence: bool = False


@dataclass(slots=True)
class Leave:
    """Stop being a member of ``room``."""

    kind: ClassVar[str] = "leave"  # its name in the metrics
    room: str
    id: RequestId | None = None


@dataclass(slots=True)
class Ping:
    """Ask for a ``pong``; browsers cannot send WebSocket pings."""

    kind: ClassVar[str] = "ping"  # its name in the metrics
    id: RequestId | None = None


ClientEnvelope = Hello | Refresh | Send | Publish | Join | Leave | Ping
