"""Error codes (``err.code``) and WebSocket close codes of protocol v1.

The close codes carry the client's policy beside them: codes 4000-4499 and a
few standard ones mean "reconnect with backoff", 4500-4999 mean "do not
reconnect on your own". Keeping the policy here means clients need no table of
their own.
"""

from enum import IntEnum, StrEnum


class ErrorCode(StrEnum):
    """Values of the ``code`` field of an ``err`` envelope."""

    BAD_ENVELOPE = "bad-envelope"
    UNKNOWN_TYPE = "unknown-type"
    NOT_REGISTERED = "not-registered"
    UNAUTHORIZED = "unauthorized"
    FORBIDDEN = "forbidden"
    ID_TAKEN = "id-taken"
    PEER_OFFLINE = "peer-offline"
    TOO_LARGE = "too-large"
    RATE_LIMITED = "rate-limited"
    OVERLOADED = "overloaded"
    ROOM_FULL = "room-full"
    BACKEND_ERROR = "backend-error"
    INTERNAL = "internal"


class CloseCode(IntEnum):
    """WebSocket close codes the relay sends."""

    NORMAL = 1000
    GOING_AWAY = 1001
    UNSUPPORTED_DATA = 1003
    POLICY_VIOLATION = 1008
    MESSAGE_TOO_BIG = 1009
    INTERNAL_ERROR = 1011
    TRY_AGAIN_LATER = 1013
    SLOW_CONSUMER = 4008
    RATE_LIMITED = 4029
    TOO_MANY_BAD_ENVELOPES = 4500
    UNAUTHORIZED = 4501
    ID_TAKEN = 4502
    REPLACED = 4503
    CLOSED_BY_OPERATOR = 4504

    @property
    def should_reconnect(self) -> bool:
        """Whether a client should reconnect (with backoff) after this close."""
        return self in _RECONNECT or 4000 <= self < 4500


_RECONNECT = frozenset({CloseCode.GOING_AWAY, CloseCode.INTERNAL_ERROR, CloseCode.TRY_AGAIN_LATER})
