"""The close codes of RFC 6455 and every refusal the ``relay.rfc6455`` layer raises.

WebSocketError
├── HandshakeError       an HTTP status (400, 405, 426, 431) and its headers
└── ProtocolError        close 1002: framing, masking, opcodes, control frames
    ├── InvalidUTF8      close 1007: a text message or close reason
    ├── MessageTooBig    close 1009: declared length over ``max_size``
    └── TooManyFragments close 1009: a message in more than ``max_fragments`` frames
"""

from __future__ import annotations

from typing import Final

NORMAL_CLOSURE: Final = 1000
PROTOCOL_ERROR: Final = 1002
NO_STATUS_RECEIVED: Final = 1005
ABNORMAL_CLOSURE: Final = 1006
INVALID_DATA: Final = 1007
POLICY_VIOLATION: Final = 1008
MESSAGE_TOO_BIG: Final = 1009
INTERNAL_ERROR: Final = 1011
SERVICE_RESTART: Final = 1012


class WebSocketError(Exception):
    """Base of every refusal of the ``relay.rfc6455`` layer."""


class HandshakeError(WebSocketError):
    """The upgrade request is not a valid WebSocket handshake.

    Answer it with ``http_response(status, headers, message)``.
    """

    def __init__(
        self, status: int, message: str, headers: tuple[tuple[bytes, bytes], ...] = ()
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers


class ProtocolError(WebSocketError):
    """The peer broke the framing rules; fail the connection with ``code``."""

    code: int = PROTOCOL_ERROR

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class InvalidUTF8(ProtocolError):
    """A text message or a close reason is not valid UTF-8."""

    code = INVALID_DATA


class MessageTooBig(ProtocolError):
    """A message declares more bytes than ``max_size``; refused before they arrive."""

    code = MESSAGE_TOO_BIG


class TooManyFragments(ProtocolError):
    """A message goes on past ``max_fragments`` frames; refused from the frame's header.

    Empty fragments cost no payload bytes, so ``max_size`` alone would let a
    message grow without end; 1009 because it is too big for the server to process.
    """

    code = MESSAGE_TOO_BIG
