"""The exception tree of the relay client.

Every exception the client raises on purpose derives from :class:`RelayError`:

* :class:`ServerError` and its subclasses are the relay's ``err`` replies, one
  class per protocol error code (``peer-offline`` -> :class:`PeerOffline`, ...).
* :class:`ConnectionClosed` means the connection ended for good (a terminal
  close code such as 4503, or :meth:`Peer.close`); the client does not reconnect.
* :class:`RelayUnavailable` means the relay could not be reached at all.
* :class:`ConnectionLost` means the socket dropped while a request was in flight;
  the client is reconnecting, but that request's fate is unknown (after a
  drain, 1001, such requests are sent again instead).
* :class:`OfflineBufferFull`, :class:`RequestTimeout`, :class:`RemoteError` and
  :class:`NotConnected` are raised by the client itself.
"""

from __future__ import annotations

from typing import Any, ClassVar

__all__ = [
    "CLOSE_REASONS",
    "BackendError",
    "BadEnvelope",
    "ConnectionClosed",
    "ConnectionLost",
    "Forbidden",
    "IdTaken",
    "InternalError",
    "NotConnected",
    "NotRegistered",
    "OfflineBufferFull",
    "Overloaded",
    "PeerOffline",
    "ProtocolError",
    "RateLimited",
    "RelayError",
    "RelayTimeout",
    "RelayUnavailable",
    "RemoteError",
    "RequestTimeout",
    "RoomFull",
    "ServerError",
    "SessionReplaced",
    "TooLarge",
    "Unauthorized",
    "UnknownType",
    "error_from_code",
    "should_reconnect",
]


class RelayError(Exception):
    """Base class of every error the relay client raises on purpose."""


# --------------------------------------------------------------------------- #
# `err` replies from the relay
# --------------------------------------------------------------------------- #


class ServerError(RelayError):
    """The relay answered a request (or refused something sent) with ``err``.

    Attributes:
        code: the protocol error code, e.g. ``"peer-offline"``.
        message: the human-readable ``msg`` of the ``err`` envelope.
        request_id: the ``id`` of the request this answers, ``None`` when the
            refused envelope was sent without one.
        to: the ``to`` field of the ``err`` if present (for ``peer-offline``:
            the target id a str send did not reach, or the list of the ids a
            list send did not reach).
    """

    CODE: ClassVar[str | None] = None

    def __init__(
        self,
        message: str = "",
        *,
        code: str | None = None,
        request_id: Any = None,
        to: str | list[str] | None = None,
    ) -> None:
        self.code: str = code or self.CODE or "unknown"
        self.message = message
        self.request_id = request_id
        self.to = to
        super().__init__(f"{self.code}: {message}" if message else self.code)


class BadEnvelope(ServerError):
    """``bad-envelope``: the relay could not make sense of an envelope."""

    CODE = "bad-envelope"


class UnknownType(ServerError):
    """``unknown-type``: the envelope's ``type`` is not part of the protocol."""

    CODE = "unknown-type"


class NotRegistered(ServerError):
    """``not-registered``: something other than ``hello`` came first."""

    CODE = "not-registered"


class Unauthorized(ServerError):
    """``unauthorized``: the token is missing, invalid or expired."""

    CODE = "unauthorized"


class Forbidden(ServerError):
    """``forbidden``: the token does not allow this id or room."""

    CODE = "forbidden"


class IdTaken(ServerError):
    """``id-taken``: another live session holds this peer id."""

    CODE = "id-taken"


class PeerOffline(ServerError):
    """``peer-offline``: one or more targets are not connected.

    :attr:`to` has the shape of the send's ``to``, as on the wire: for a
    send to a list of ids it is the list of those *not* reached (the others
    got the message); for a send to one id (a str) it is that id.
    """

    CODE = "peer-offline"


class TooLarge(ServerError):
    """``too-large``: the frame exceeds the relay's ``max_frame_bytes``.

    Also raised locally, before sending, when the encoded envelope is larger
    than the limit announced in ``welcome``.
    """

    CODE = "too-large"


class RateLimited(ServerError):
    """``rate-limited``: this peer sends faster than its rate limit allows."""

    CODE = "rate-limited"


class Overloaded(ServerError):
    """``overloaded``: the target cannot take more messages right now."""

    CODE = "overloaded"


class RoomFull(ServerError):
    """``room-full``: the room has reached its member limit (or this peer its room limit)."""

    CODE = "room-full"


class BackendError(ServerError):
    """``backend-error``: the backend refused a request to ``@backend``, or answered garbage."""

    CODE = "backend-error"


class InternalError(ServerError):
    """``internal``: the relay failed while handling the request."""

    CODE = "internal"


_BY_CODE: dict[str, type[ServerError]] = {
    cls.CODE: cls
    for cls in (
        BadEnvelope,
        UnknownType,
        NotRegistered,
        Unauthorized,
        Forbidden,
        IdTaken,
        PeerOffline,
        TooLarge,
        RateLimited,
        Overloaded,
        RoomFull,
        BackendError,
        InternalError,
    )
    if cls.CODE is not None
}


def error_from_code(
    code: str,
    message: str = "",
    *,
    request_id: Any = None,
    to: str | list[str] | None = None,
) -> ServerError:
    """Build the exception for an ``err`` envelope's ``code``.

    Unknown codes (from a newer relay) give a plain :class:`ServerError`
    carrying the code.
    """
    cls = _BY_CODE.get(code, ServerError)
    return cls(message, code=code, request_id=request_id, to=to)


# --------------------------------------------------------------------------- #
# Connection state
# --------------------------------------------------------------------------- #

CLOSE_REASONS: dict[int, str] = {
    1000: "normal closure",
    1001: "relay going away",
    1003: "text frame sent (the protocol is binary msgpack)",
    1005: "closed without a status code",
    1006: "connection dropped",
    1008: "policy violation (bad handshake or hello)",
    1009: "frame too large",
    1011: "relay internal error",
    1012: "relay restarting",
    1013: "relay full, try again later",
    1014: "bad gateway",
    4008: "slow consumer (outbound queue overflowed)",
    4029: "rate limited",
    4500: "too many bad envelopes",
    4501: "unauthorized (bad or expired token)",
    4502: "id taken",
    4503: "replaced by a newer session of the same peer",
    4504: "closed by the operator",
}
"""Meaning of the close codes of protocol v1 (and a few standard ones)."""

_RECONNECT_STANDARD = frozenset({1001, 1005, 1006, 1011, 1012, 1013, 1014})


def should_reconnect(code: int) -> bool:
    """Whether a close with this code calls for reconnecting (with backoff).

    1001, 1011, 1013 (and the transient 1005, 1006, 1012, 1014) and the
    relay's 4000-4499 range are retried; 1000, 1003, 1008, 1009, the
    4500-4999 range and anything else are terminal.
    """
    return code in _RECONNECT_STANDARD or 4000 <= code < 4500


class ConnectionClosed(RelayError):
    """The connection to the relay ended for good; the client will not reconnect.

    Raised by every operation on a closed peer and by iteration after a
    terminal close. ``code`` is the WebSocket close code (1000 when the peer
    was closed by :meth:`Peer.close`), ``reason`` the close reason.
    """

    def __init__(self, code: int, reason: str = "") -> None:
        self.code = code
        self.reason = reason
        meaning = CLOSE_REASONS.get(code, "")
        text = f"connection closed with code {code}"
        if meaning:
            text += f" ({meaning})"
        if reason and reason != meaning:
            text += f": {reason}"
        super().__init__(text)


class SessionReplaced(ConnectionClosed):
    """Close code 4503: a newer session of the same peer id took over."""


class ConnectionLost(RelayError):
    """The socket dropped (or closed with a code other than 1001) before the
    relay answered this request.

    The client reconnects on its own, but whether the relay acted on the
    request is unknown: retry it if it is safe to do so. After a drain (1001)
    the relay acted on nothing it left unanswered, and the client sends such
    requests again itself instead of raising this.
    """


class RelayUnavailable(RelayError):
    """The relay could not be reached (refused, timed out, bad handshake), or
    reconnecting gave up after ``max_retries`` attempts."""


class ProtocolError(RelayError):
    """The relay sent something this client does not understand."""


class NotConnected(RelayError):
    """The operation needs a live connection (e.g. :meth:`Peer.ping`) and there is none."""


class OfflineBufferFull(RelayError):
    """A send was made while offline and the offline buffer is full."""


class RelayTimeout(RelayError, TimeoutError):
    """A relay operation (e.g. :meth:`Peer.ping`) did not complete in time."""


class RequestTimeout(RelayTimeout):
    """A :meth:`Peer.request` got no reply within its timeout."""


class RemoteError(RelayError):
    """The responder's request handler raised; ``message`` is what it reported."""

    def __init__(self, message: str, *, peer: str | None = None) -> None:
        self.message = message
        self.peer = peer
        super().__init__(message)
