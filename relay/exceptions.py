"""The relay's exception tree.

Every refusal the relay sends to a peer is one of these, and each maps to one
protocol error code; ``relay.session`` turns them into ``err`` envelopes (or a
close) in one place. Their messages are written for peers to read, so they
never carry internal details.

    RelayError
    ├── BadEnvelope        bad-envelope
    ├── UnknownType        unknown-type
    ├── NotRegistered      not-registered
    ├── Unauthorized       unauthorized
    ├── Forbidden          forbidden
    ├── IdTaken            id-taken
    ├── PeerOffline        peer-offline
    ├── TooLarge           too-large
    ├── RateLimited        rate-limited
    ├── Overloaded         overloaded
    ├── RoomFull           room-full
    └── Internal           internal

A dialect whose clients learn of a refusal by a close code (PeerJS) maps the
error code to one (``relay.peerjs.protocol.close_code``), so the tree stays
one tree whatever the socket speaks.
"""

from __future__ import annotations

from relay.protocol.codes import ErrorCode
from relay.values import RequestId


class RelayError(Exception):
    """A request or frame was refused; ``code`` is the protocol's error code."""

    code: ErrorCode = ErrorCode.INTERNAL

    def __init__(
        self,
        message: str,
        *,
        request_id: RequestId | None = None,
        to: str | list[str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.request_id = request_id
        self.to = to  # the unreached peers, for errors about targets


class BadEnvelope(RelayError):
    """The frame is not a valid envelope: not msgpack, not a map, a field of the wrong type."""

    code = ErrorCode.BAD_ENVELOPE


class UnknownType(RelayError):
    """The envelope's ``type`` is not one the client may send."""

    code = ErrorCode.UNKNOWN_TYPE


class NotRegistered(RelayError):
    """A request came before the session's ``hello`` was accepted."""

    code = ErrorCode.NOT_REGISTERED


class Unauthorized(RelayError):
    """The credential is missing, malformed, forged or expired."""

    code = ErrorCode.UNAUTHORIZED


class Forbidden(RelayError):
    """The credential is valid but does not allow this id or room."""

    code = ErrorCode.FORBIDDEN


class IdTaken(RelayError):
    """Another live session holds the requested peer id."""

    code = ErrorCode.ID_TAKEN


class PeerOffline(RelayError):
    """One or more targets are held by no session; ``to`` names them."""

    code = ErrorCode.PEER_OFFLINE


class TooLarge(RelayError):
    """The frame exceeds the configured size limit."""

    code = ErrorCode.TOO_LARGE


class RateLimited(RelayError):
    """The session is sending faster than its rate limit."""

    code = ErrorCode.RATE_LIMITED


class Overloaded(RelayError):
    """The target cannot take more now (its queue is full)."""

    code = ErrorCode.OVERLOADED


class RoomFull(RelayError):
    """The room has reached its member limit, or the peer its room limit."""

    code = ErrorCode.ROOM_FULL


class BackendError(RelayError):
    """The backend refused an RPC (``@backend``) or answered it with something unusable."""

    code = ErrorCode.BACKEND_ERROR


class Internal(RelayError):
    """The relay failed to handle a valid request; the details go to the log, never to the peer."""

    code = ErrorCode.INTERNAL
