"""RFC 6455 for the server side, without I/O: handshake, frames, closing.

Nothing here imports asyncio; ``relay.wsserver`` drives it from a socket.

- ``handshake``: parse and validate the upgrade request, answer it;
- ``frames``: the incremental parser of client frames (pulled one event at a
  time, so that the caller can stop between two messages), the frame writer,
  close payloads;
- ``closing``: the closing handshake as a state machine (``ClosingHandshake``):
  events in, the close frame to send, when to stop sending and the code the
  connection's owner hears out;
- ``errors``: the close codes, and every refusal as an exception carrying what
  to answer:

    WebSocketError
    ├── HandshakeError       an HTTP status (400, 405, 426, 431) and its headers
    └── ProtocolError        close 1002: framing, masking, opcodes, control frames
        ├── InvalidUTF8      close 1007: a text message or close reason
        ├── MessageTooBig    close 1009: declared length over ``max_size``
        └── TooManyFragments close 1009: a message in more than ``max_fragments`` frames

Everything public is importable from ``relay.rfc6455`` itself.
"""

from relay.rfc6455.closing import (
    CLOSED,
    CLOSING,
    CONNECTING,
    NO_ACTIONS,
    OPEN,
    CloseActions,
    ClosingHandshake,
)
from relay.rfc6455.errors import (
    ABNORMAL_CLOSURE,
    INTERNAL_ERROR,
    INVALID_DATA,
    MESSAGE_TOO_BIG,
    NO_STATUS_RECEIVED,
    NORMAL_CLOSURE,
    POLICY_VIOLATION,
    PROTOCOL_ERROR,
    SERVICE_RESTART,
    HandshakeError,
    InvalidUTF8,
    MessageTooBig,
    ProtocolError,
    TooManyFragments,
    WebSocketError,
)
from relay.rfc6455.frames import (
    BINARY_HEADERS,
    MAX_CLOSE_REASON,
    MAX_CONTROL_PAYLOAD,
    NEED_DATA,
    OP_BINARY,
    OP_CLOSE,
    OP_CONT,
    OP_PING,
    OP_PONG,
    OP_TEXT,
    TEXT_HEADERS,
    FrameParser,
    close_payload,
    encode_frame,
    frame_header,
    is_valid_close_code,
    parse_close,
    wire_size,
)
from relay.rfc6455.handshake import (
    MAX_REQUEST_HEAD,
    NEEDS_HTTP_11,
    Handshake,
    Request,
    accept_key,
    accept_response,
    http_response,
    parse_request,
    plain_upgrade,
    validate_handshake,
)

__all__ = [
    "ABNORMAL_CLOSURE",
    "BINARY_HEADERS",
    "CLOSED",
    "CLOSING",
    "CONNECTING",
    "INTERNAL_ERROR",
    "INVALID_DATA",
    "MAX_CLOSE_REASON",
    "MAX_CONTROL_PAYLOAD",
    "MAX_REQUEST_HEAD",
    "MESSAGE_TOO_BIG",
    "NEEDS_HTTP_11",
    "NEED_DATA",
    "NORMAL_CLOSURE",
    "NO_ACTIONS",
    "NO_STATUS_RECEIVED",
    "OPEN",
    "OP_BINARY",
    "OP_CLOSE",
    "OP_CONT",
    "OP_PING",
    "OP_PONG",
    "OP_TEXT",
    "POLICY_VIOLATION",
    "PROTOCOL_ERROR",
    "SERVICE_RESTART",
    "TEXT_HEADERS",
    "CloseActions",
    "ClosingHandshake",
    "FrameParser",
    "Handshake",
    "HandshakeError",
    "InvalidUTF8",
    "MessageTooBig",
    "ProtocolError",
    "Request",
    "TooManyFragments",
    "WebSocketError",
    "accept_key",
    "accept_response",
    "close_payload",
    "encode_frame",
    "frame_header",
    "http_response",
    "is_valid_close_code",
    "parse_close",
    "parse_request",
    "plain_upgrade",
    "validate_handshake",
    "wire_size",
]
