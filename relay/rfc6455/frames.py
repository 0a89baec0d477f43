"""Frames, server side, without I/O: the incremental parser of client frames, the writer of ours.

The parser is pulled one event at a time (``FrameParser.next_event``) so that
the caller can stop between two messages (backpressure) and the bytes not yet
parsed simply stay in the parser until it asks again.
"""

from __future__ import annotations

import codecs
import struct
from typing import Final

from relay.rfc6455.errors import (
    NO_STATUS_RECEIVED,
    InvalidUTF8,
    MessageTooBig,
    ProtocolError,
    TooManyFragments,
)

try:
    from websockets.speedups import apply_mask
except ImportError:  # pragma: no cover - only when websockets was built without its C extension
    from websockets.utils import apply_mask

OP_CONT: Final = 0x0
OP_TEXT: Final = 0x1
OP_BINARY: Final = 0x2
OP_CLOSE: Final = 0x8
OP_PING: Final = 0x9
OP_PONG: Final = 0xA
NEED_DATA: Final = -1
"""``FrameParser.next_event`` found no complete event in the bytes fed so far."""

MAX_CONTROL_PAYLOAD: Final = 125
MAX_CLOSE_REASON: Final = MAX_CONTROL_PAYLOAD - 2
_VALID_OPCODES: Final = frozenset({OP_CONT, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG})
# Codes a peer may put in a close frame: the registered ones that are not
# reserved for "no frame" (1005, 1006, 1015) or "unassigned" (1004), and the
# ranges for libraries (3000-3999) and applications (4000-4999).
_VALID_CLOSE_CODES: Final = frozenset({*range(1000, 1004), *range(1007, 1015)})


class FrameParser:
    """Incremental parser of client frames: ``feed`` bytes, then pull ``next_event``.

    ``next_event`` returns an opcode and sets the matching attribute:

    - ``OP_BINARY``: a complete binary message in ``payload``;
    - ``OP_TEXT``: a complete text message in ``text``;
    - ``OP_PING`` / ``OP_PONG``: the control frame's ``payload``;
    - ``OP_CLOSE``: ``close_code`` (1005 for an empty frame), ``close_reason``,
      and the raw ``payload`` (to echo); the parser then ignores further bytes;
    - ``NEED_DATA``: nothing complete yet.

    Fragmented messages are reassembled, bounded by ``max_size`` bytes and
    ``max_fragments`` frames; control frames may come between fragments (and
    count against neither). Invalid input raises a ``ProtocolError`` subclass,
    after which the parser ignores everything. Events are not objects, so that
    the hot path (one small binary frame per read) allocates only the payload
    itself.

    The parser keeps no clock: ``incomplete_offset`` tells the caller where the
    message still incomplete began, and the caller times it.
    """

    __slots__ = (
        "_buf",
        "_decoder",
        "_done",
        "_fed",
        "_fragment_count",
        "_fragments",
        "_message_opcode",
        "_message_start",
        "_pos",
        "_size",
        "_text_parts",
        "close_code",
        "close_reason",
        "max_fragments",
        "max_size",
        "payload",
        "text",
    )

    def __init__(self, max_size: int | None, max_fragments: int | None = None) -> None:
        self.max_size = max_size if max_size is not None else 1 << 63
        self.max_fragments = max_fragments if max_fragments is not None else 1 << 63
        self.payload = b""
        self.text = ""
        self.close_code = NO_STATUS_RECEIVED
        self.close_reason = ""
        self._buf: bytes | bytearray = b""
        self._pos = 0
        self._done = False
        self._message_opcode = 0  # OP_TEXT or OP_BINARY while a fragmented message is open
        self._size = 0  # bytes of that message so far
        self._fragment_count = 0  # frames of that message so far
        self._message_start = 0  # stream offset of its first frame
        self._fed = 0  # bytes fed since the start: the stream offset of the next byte
        self._fragments: list[bytes] = []
        self._text_parts: list[str] = []
        self._decoder: codecs.IncrementalDecoder | None = None

    @property
    def buffered(self) -> int:
        """Bytes fed but not parsed yet."""
        return len(self._buf) - self._pos

    @property
    def incomplete_offset(self) -> int | None:
        """Where the earliest frame or message not yet complete began; None if there is none.

        A stream offset (bytes fed before it), so that a caller can tell one
        incomplete message from the next: the open fragmented message's first
        frame, else the partial frame in the buffer. Meaningful when
        ``next_event`` has returned ``NEED_DATA``.
        """
        if self._done:
            return None
        if self._message_opcode:
            return self._message_start
        if self._pos < len(self._buf):
            return self._fed - len(self._buf) + self._pos
        return None

    def feed(self, data: bytes) -> None:
        """Add bytes read from the client."""
        if self._done:
            return
        self._fed += len(data)
        buf = self._buf
        pos = self._pos
        if pos >= len(buf):
            # The common case: everything before was consumed; parse ``data`` in place.
            self._buf = data
            self._pos = 0
        elif isinstance(buf, bytearray):
            del buf[:pos]  # O(1): bytearray moves its start instead of copying
            buf += data
            self._pos = 0
        else:
            joined = bytearray(memoryview(buf)[pos:])
            joined += data
            self._buf = joined
            self._pos = 0

    def next_event(self) -> int:
        """Parse the next event; see the class docstring. Raises ``ProtocolError``."""
        if self._done:
            return NEED_DATA
        try:
            return self._next()
        except ProtocolError:
            self._done = True
            self._buf = b""
            self._pos = 0
            raise

    def _next(self) -> int:
        while True:
            buf = self._buf
            pos = self._pos
            available = len(buf) - pos
            if available < 2:
                if not available:
                    self._buf = b""  # don't keep the last read chunk alive
                    self._pos = 0
                return NEED_DATA
            first = buf[pos]
            second = buf[pos + 1]
            if first & 0x70:
                raise ProtocolError("reserved bits must be 0")
            opcode = first & 0x0F
            fin = first & 0x80
            if not second & 0x80:
                raise ProtocolError("client frames must be masked")
            length = second & 0x7F
            if opcode not in _VALID_OPCODES:
                raise ProtocolError(f"unknown opcode {opcode}")
            if opcode >= OP_CLOSE:
                if not fin:
                    raise ProtocolError("control frames cannot be fragmented")
                if length > MAX_CONTROL_PAYLOAD:
                    raise ProtocolError("control frame payload over 125 bytes")
                start = pos + 6
            else:
                if opcode == OP_CONT:
                    if not self._message_opcode:
                        raise ProtocolError("continuation frame without a message to continue")
                    if self._fragment_count >= self.max_fragments:
                        raise TooManyFragments(f"message in over {self.max_fragments} frames")
                elif self._message_opcode:
                    raise ProtocolError("new message before the fragmented one ended")
                if length == 126:
                    if available < 4:
                        return NEED_DATA
                    length = buf[pos + 2] << 8 | buf[pos + 3]
                    start = pos + 8
                elif length == 127:
                    if available < 10:
                        return NEED_DATA
                    length = int.from_bytes(buf[pos + 2 : pos + 10], "big")
                    if length >> 63:
                        raise ProtocolError("64-bit payload length with its top bit set")
                    start = pos + 14
                else:
                    start = pos + 6
                if self._size + length > self.max_size:
                    raise MessageTooBig(f"message over {self.max_size} bytes")
            end = start + length
            if len(buf) < end:
                return NEED_DATA
            mask = buf[start - 4 : start]
            payload = apply_mask(memoryview(buf)[start:end], mask) if length else b""
            self._pos = end

            if opcode == OP_BINARY:
                if fin:
                    self.payload = payload
                    return OP_BINARY
                self._begin(OP_BINARY, payload, self._fed - len(buf) + pos)
            elif opcode == OP_TEXT:
                if fin:
                    self.text = _decode(payload)
                    return OP_TEXT
                self._begin(OP_TEXT, payload, self._fed - len(buf) + pos)
            elif opcode == OP_CONT:
                done = self._continue(payload, fin)
                if done:
                    return done
            elif opcode == OP_CLOSE:
                self.close_code, self.close_reason = parse_close(payload)
                self.payload = payload
                self._done = True
                self._buf = b""
                self._pos = 0
                return OP_CLOSE
            else:  # OP_PING, OP_PONG
                self.payload = payload
                return opcode

    def _begin(self, opcode: int, payload: bytes, start: int) -> None:
        self._message_opcode = opcode
        self._size = len(payload)
        self._fragment_count = 1
        self._message_start = start
        if opcode == OP_TEXT:
            # Decode as fragments arrive: invalid UTF-8 fails at once (RFC 6455 8.1).
            self._decoder = codecs.getincrementaldecoder("utf-8")()
            self._text_parts = [self._decode_part(payload, final=False)]
        else:
            self._fragments = [payload]

    def _continue(self, payload: bytes, fin: int) -> int:
        """Add a continuation; the message's opcode once it is complete, else 0."""
        opcode = self._message_opcode
        self._size += len(payload)
        self._fragment_count += 1
        if opcode == OP_TEXT:
            self._text_parts.append(self._decode_part(payload, final=bool(fin)))
        else:
            self._fragments.append(payload)
        if not fin:
            return 0
        if opcode == OP_TEXT:
            self.text = "".join(self._text_parts)
            self._text_parts = []
            self._decoder = None
        else:
            self.payload = b"".join(self._fragments)
            self._fragments = []
        self._message_opcode = 0
        self._size = 0
        return opcode

    def _decode_part(self, payload: bytes, *, final: bool) -> str:
        assert self._decoder is not None
        try:
            return self._decoder.decode(payload, final)
        except UnicodeDecodeError:
            raise InvalidUTF8("text message is not valid UTF-8") from None


def _decode(payload: bytes) -> str:
    try:
        return payload.decode()
    except UnicodeDecodeError:
        raise InvalidUTF8("text message is not valid UTF-8") from None


def is_valid_close_code(code: int) -> bool:
    """Whether ``code`` may appear in a close frame (RFC 6455 7.4, IANA registry)."""
    return code in _VALID_CLOSE_CODES or 3000 <= code <= 4999


def parse_close(payload: bytes) -> tuple[int, str]:
    """The code and reason of a close frame's payload; 1005 when it is empty."""
    if not payload:
        return NO_STATUS_RECEIVED, ""
    if len(payload) < 2:
        raise ProtocolError("close frame payload of 1 byte")
    code = payload[0] << 8 | payload[1]
    if not is_valid_close_code(code):
        raise ProtocolError(f"invalid close code {code}")
    try:
        reason = payload[2:].decode()
    except UnicodeDecodeError:
        raise InvalidUTF8("close reason is not valid UTF-8") from None
    return code, reason


def close_payload(code: int, reason: str = "") -> bytes:
    """The payload of a close frame; ``ValueError`` for a code or reason one cannot send."""
    if not is_valid_close_code(code):
        raise ValueError(f"{code} is not a close code one can send")
    encoded = reason.encode()
    if len(encoded) > MAX_CLOSE_REASON:
        raise ValueError(f"close reason over {MAX_CLOSE_REASON} bytes")
    return code.to_bytes(2, "big") + encoded


_HEADER_16: Final = struct.Struct("!BBH")
_HEADER_64: Final = struct.Struct("!BBQ")

BINARY_HEADERS: Final = tuple(bytes((0x80 | OP_BINARY, n)) for n in range(126))
"""Header of an unmasked final binary frame, by payload length below 126."""
TEXT_HEADERS: Final = tuple(bytes((0x80 | OP_TEXT, n)) for n in range(126))
"""Header of an unmasked final text frame, by payload length below 126."""


def wire_size(length: int) -> int:
    """Bytes a server frame with a ``length``-byte payload takes on the wire."""
    return length + (2 if length < 126 else 4 if length < 65536 else 10)


def frame_header(opcode: int, length: int) -> bytes:
    """Header of a final, unmasked (server) frame carrying ``length`` payload bytes."""
    first = 0x80 | opcode
    if length < 126:
        return bytes((first, length))
    if length < 65536:
        return _HEADER_16.pack(first, 126, length)
    return _HEADER_64.pack(first, 127, length)


def encode_frame(opcode: int, payload: bytes) -> bytes:
    """A complete final, unmasked (server) frame."""
    return frame_header(opcode, len(payload)) + payload
