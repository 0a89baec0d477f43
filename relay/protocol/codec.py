"""Bytes to envelopes and back, with every stateless rule of the protocol.

``decode`` walks the top-level map of a frame with msgpack's streaming
unpacker: header fields are decoded and checked, the payload ``d`` is only
skipped over and sliced out as raw bytes. Declared lengths are bounded by the
frame's own size before msgpack allocates anything, and nesting is bounded by
``max_depth`` (msgpack's own stack stops anything past 1024 first).

``encode_*`` build server envelopes. ``encode_msg`` splices the sender's raw
payload bytes into the outgoing ``msg`` so a payload is never re-encoded.
"""

from __future__ import annotations

import re
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import msgpack

from relay.exceptions import BadEnvelope, TooLarge, UnknownType
from relay.protocol.envelopes import (
    BACKEND_ID,
    ClientEnvelope,
    Hello,
    Join,
    Leave,
    PassThrough,
    Ping,
    Publish,
    Refresh,
    Send,
)
from relay.values import RequestId

DEFAULT_ID_PATTERN = r"[A-Za-z0-9_.:~-]+"
DEFAULT_ROOM_PATTERN = r"[A-Za-z0-9_.:~/#-]+"
# Ids and rooms starting with this belong to the relay itself, whatever the
# configured patterns allow: ``@server`` and the namespaces of its other
# endpoints (``@peerjs/alice``), which no client envelope can name.
RESERVED_PREFIX = "@"
_MAX_REQUEST_ID_LENGTH = 64
_MAX_TOKEN_LENGTH = 8192
_MAX_SECRET_LENGTH = 128
_INT64 = (-(2**63), 2**64 - 1)
_VALID_IDS_KEPT = 4096  # ids CodecLimits remembers as valid; forgotten all at once past it


@dataclass(frozen=True, slots=True)
class CodecLimits:
    """The bounds ``decode`` enforces; built once from the settings."""

    max_frame_bytes: int = 65536
    max_depth: int = 32
    max_targets: int = 100
    max_id_length: int = 64
    max_room_length: int = 128
    max_event_length: int = 128
    id_pattern: str = DEFAULT_ID_PATTERN
    room_pattern: str = DEFAULT_ROOM_PATTERN
    _id_re: re.Pattern[str] = field(init=False, repr=False, compare=False)
    _room_re: re.Pattern[str] = field(init=False, repr=False, compare=False)
    # Ids found valid lately: a send names the same few targets again and
    # again, and the pattern match cost a tenth of decoding it.
    _valid_ids: dict[str, None] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_id_re", re.compile(self.id_pattern))
        object.__setattr__(self, "_room_re", re.compile(self.room_pattern))
        object.__setattr__(self, "_valid_ids", {})

    def check_peer_id(self, value: object, what: str = "id") -> str:
        """Return ``value`` if it is a valid peer id, else raise BadEnvelope."""
        valid = self._valid_ids
        if type(value) is str and value in valid:
            return value
        checked = _checked_name(value, what, self.max_id_length, self._id_re)
        if len(valid) >= _VALID_IDS_KEPT:
            valid.clear()
        valid[checked] = None
        return checked

    def check_room(self, value: object) -> str:
        """Return ``value`` if it is a valid room name, else raise BadEnvelope."""
        return _checked_name(value, "room", self.max_room_length, self._room_re)


def _checked_name(value: object, what: str, max_length: int, pattern: re.Pattern[str]) -> str:
    if (
        not isinstance(value, str)
        or not 0 < len(value) <= max_length
        or not pattern.fullmatch(value)
    ):
        raise BadEnvelope(
            f"{what} must be a string of 1-{max_length} characters matching {pattern.pattern}"
        )
    if value.startswith(RESERVED_PREFIX):
        raise BadEnvelope(f"{what} may not start with {RESERVED_PREFIX}: reserved to the relay")
    return value


# --- decoding ---------------------------------------------------------------

# Bytes that can start a map or array. A payload holding no more of them than
# the depth limit cannot nest deeper than it, so most frames skip the scan.
_NOT_CONTAINER_START = bytes(b for b in range(256) if not (0x80 <= b <= 0x9F or 0xDC <= b <= 0xDF))


def decode(frame: bytes, limits: CodecLimits) -> ClientEnvelope:
    """Decode one frame into a client envelope, or raise the codec's own error.

    Raises ``TooLarge`` for a frame over the size limit, ``UnknownType`` for a
    well-formed envelope of a type clients may not send, and ``BadEnvelope``
    for everything else. The error's ``request_id`` is set when the frame's
    ``id`` could be read, so the peer can match the refusal to its request.
    """
    if len(frame) > limits.max_frame_bytes:
        raise TooLarge(f"frame of {len(frame)} bytes exceeds {limits.max_frame_bytes}")
    fields, d_raw = _split(frame, limits)
    # In a hello, id is the peer id asked for, not a request id to echo.
    request_id = None if fields.get("type") == "hello" else _request_id(fields.get("id"))
    try:
        kind = fields.get("type")
        if not isinstance(kind, str):
            raise BadEnvelope("type must be a string")
        build = _BUILDERS.get(kind)
        if build is None:
            raise UnknownType(f"unknown envelope type {kind[:32]!r}")
        if "from" in fields:
            raise BadEnvelope("from is stamped by the relay and may not be sent")
        if d_raw is not None and _too_deep(d_raw, limits.max_depth):
            raise BadEnvelope(f"payload nests deeper than {limits.max_depth}")
        return build(fields, d_raw, request_id, limits)
    except (BadEnvelope, UnknownType) as exc:
        exc.request_id = request_id
        raise


# One streaming unpacker per size class (frames of 2^(k-1) to 2^k - 1 bytes),
# kept between frames: making one costs as much as the rest of the split.
# Every declared length is still bounded by twice the frame's own size, so a
# tiny frame cannot make msgpack allocate for a large one. An unpacker whose
# frame failed, or held trailing bytes, is dropped: its buffer is not known clean.
_UNPACKERS: dict[int, msgpack.Unpacker] = {}


def _unpacker(size_class: int) -> msgpack.Unpacker:
    unpacker = _UNPACKERS.get(size_class)
    if unpacker is None:
        bound = 1 << size_class
        unpacker = _UNPACKERS[size_class] = msgpack.Unpacker(
            raw=False,
            strict_map_key=True,
            max_buffer_size=bound,
            max_str_len=bound,
            max_bin_len=bound,
            max_array_len=bound,
            max_map_len=bound,
            max_ext_len=bound,
        )
    return unpacker


def _split(frame: bytes, limits: CodecLimits) -> tuple[dict[str, Any], bytes | None]:
    size = len(frame)
    if not frame or not (0x80 <= frame[0] <= 0x8F or frame[0] in (0xDE, 0xDF)):
        raise BadEnvelope("an envelope must be a msgpack map")
    size_class = size.bit_length()
    unpacker = _unpacker(size_class)
    base = unpacker.tell()
    unpacker.feed(frame)
    fields: dict[str, Any] = {}
    d_raw: bytes | None = None
    clean = False
    try:
        count = unpacker.read_map_header()
        for _ in range(count):
            key = unpacker.unpack()
            if not isinstance(key, str):
                raise BadEnvelope("envelope keys must be strings")
            if key == "d":
                start = unpacker.tell() - base
                unpacker.skip()
                d_raw = frame[start : unpacker.tell() - base]
            else:
                fields[key] = unpacker.unpack()
        if unpacker.tell() - base != size:
            raise BadEnvelope("trailing bytes after the envelope")
        clean = True
    except msgpack.StackError:
        raise BadEnvelope(f"nesting deeper than {limits.max_depth}") from None
    except (msgpack.UnpackException, ValueError, TypeError) as exc:
        raise BadEnvelope(_describe_unpack_failure(exc)) from None
    finally:
        if not clean:
            _UNPACKERS.pop(size_class, None)
    return fields, d_raw


def _describe_unpack_failure(exc: Exception) -> str:
    if isinstance(exc, msgpack.OutOfData):
        return "truncated msgpack"
    if isinstance(exc, UnicodeDecodeError):
        return "a header field holds invalid UTF-8"
    if isinstance(exc, ValueError) and "exceeds" in str(exc):
        return "a declared length exceeds the frame"
    return "malformed msgpack"


def _too_deep(raw: bytes, max_depth: int) -> bool:
    first = raw[0]
    if not (0x80 <= first <= 0x9F or 0xDC <= first <= 0xDF):
        return max_depth < 1  # a scalar, string, bin or ext: nothing nests in it
    if len(raw.translate(None, _NOT_CONTAINER_START)) <= max_depth:
        return False
    return _depth(raw) > max_depth


_FIXED_SKIP = {
    0xC0: 0, 0xC2: 0, 0xC3: 0, 0xCA: 4, 0xCB: 8, 0xCC: 1, 0xCD: 2, 0xCE: 4, 0xCF: 8,
    0xD0: 1, 0xD1: 2, 0xD2: 4, 0xD3: 8, 0xD4: 2, 0xD5: 3, 0xD6: 5, 0xD7: 9, 0xD8: 17,
}  # fmt: skip
_SIZED = {  # header byte -> (width of the length field, extra bytes after it)
    0xC4: (1, 0), 0xC5: (2, 0), 0xC6: (4, 0), 0xC7: (1, 1), 0xC8: (2, 1), 0xC9: (4, 1),
    0xD9: (1, 0), 0xDA: (2, 0), 0xDB: (4, 0),
}  # fmt: skip
_CONTAINER = {0xDC: (2, 1), 0xDD: (4, 1), 0xDE: (2, 2), 0xDF: (4, 2)}
_WIDTH = {1: ">B", 2: ">H", 4: ">I"}


def _depth(raw: bytes) -> int:
    """Nesting depth of one well-formed msgpack value (msgpack has validated it)."""
    pos = 0
    deepest = 0
    pending = [1]  # values still to read at each open level
    while pending:
        if pending[-1] == 0:
            pending.pop()
            continue
        pending[-1] -= 1
        byte = raw[pos]
        pos += 1
        children = 0
        if byte <= 0x7F or byte >= 0xE0:
            pass
        elif byte <= 0x8F:
            children = (byte & 0x0F) * 2
        elif byte <= 0x9F:
            children = byte & 0x0F
        elif byte <= 0xBF:
            pos += byte & 0x1F
        elif byte in _FIXED_SKIP:
            pos += _FIXED_SKIP[byte]
        elif byte in _SIZED:
            width, extra = _SIZED[byte]
            (length,) = struct.unpack_from(_WIDTH[width], raw, pos)
            pos += width + extra + length
        else:
            width, per_entry = _CONTAINER[byte]
            (length,) = struct.unpack_from(_WIDTH[width], raw, pos)
            pos += width
            children = length * per_entry
        if 0x80 <= byte <= 0x9F or byte in _CONTAINER:
            pending.append(children)
            deepest = max(deepest, len(pending) - 1)
    return deepest


def _request_id(value: object) -> RequestId | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int) and _INT64[0] <= value <= _INT64[1]:
        return value
    if isinstance(value, str) and len(value) <= _MAX_REQUEST_ID_LENGTH:
        return value
    return None


def _checked_request_id(fields: dict[str, Any], request_id: RequestId | None) -> RequestId | None:
    if "id" in fields and fields["id"] is not None and request_id is None:
        raise BadEnvelope(f"id must be an integer or a string of at most {_MAX_REQUEST_ID_LENGTH}")
    return request_id


def _optional_str(fields: dict[str, Any], name: str, max_length: int) -> str | None:
    value = fields.get(name)
    if value is None:
        return None
    if not isinstance(value, str) or len(value) > max_length:
        raise BadEnvelope(f"{name} must be a string of at most {max_length} characters")
    return value


def _optional_count(fields: dict[str, Any], name: str) -> int | None:
    value = fields.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 2**63:
        raise BadEnvelope(f"{name} must be a non-negative integer")
    return value


def _optional_bool(fields: dict[str, Any], name: str) -> bool:
    value = fields.get(name, False)
    if value is None:
        return False
    if not isinstance(value, bool):
        raise BadEnvelope(f"{name} must be a boolean")
    return value


def _pass_through(fields: dict[str, Any], name: str) -> PassThrough | None:
    value = fields.get(name)
    if value is None:
        return None
    checked = _request_id(value)
    if checked is None:
        raise BadEnvelope(
            f"{name} must be an integer or a string of at most {_MAX_REQUEST_ID_LENGTH}"
        )
    return checked


def _payload(d_raw: bytes | None) -> bytes:
    if d_raw is None:
        raise BadEnvelope("d is required")
    return d_raw


def _build_hello(
    fields: dict[str, Any], d_raw: bytes | None, request_id: RequestId | None, limits: CodecLimits
) -> Hello:
    peer_id = fields.get("id")
    return Hello(
        peer_id=None if peer_id is None else limits.check_peer_id(peer_id),
        token=_optional_str(fields, "token", _MAX_TOKEN_LENGTH),
        resume=_optional_str(fields, "resume", _MAX_SECRET_LENGTH),
        received=_optional_count(fields, "received"),
    )


def _build_refresh(
    fields: dict[str, Any], d_raw: bytes | None, request_id: RequestId | None, limits: CodecLimits
) -> Refresh:
    token = _optional_str(fields, "token", _MAX_TOKEN_LENGTH)
    if token is None:
        raise BadEnvelope("token is required")
    return Refresh(token=token, id=_checked_request_id(fields, request_id))


def _build_send(
    fields: dict[str, Any], d_raw: bytes | None, request_id: RequestId | None, limits: CodecLimits
) -> Send:
    to = fields.get("to")
    targets: str | tuple[str, ...]
    if isinstance(to, list):
        if not 0 < len(to) <= limits.max_targets:
            raise BadEnvelope(f"to must list 1-{limits.max_targets} peer ids")
        if BACKEND_ID in to:
            raise BadEnvelope(f"{BACKEND_ID} may only be addressed alone, not in a list")
        targets = tuple(dict.fromkeys(limits.check_peer_id(t, "to") for t in to))
    elif to == BACKEND_ID:
        targets = to  # an RPC to the backend: the router decides whether it is served
    else:
        targets = limits.check_peer_id(to, "to")
    if len(fields) == 2:  # type and to alone, the common case: nothing else to check
        return Send(targets, _payload(d_raw), None, None, None, None)
    # Positional: a slotted dataclass takes keywords at twice the cost, per message.
    return Send(
        targets,
        _payload(d_raw),
        _optional_str(fields, "ev", limits.max_event_length),
        _checked_request_id(fields, request_id),
        _pass_through(fields, "rid"),
        _pass_through(fields, "re"),
    )


def _build_publish(
    fields: dict[str, Any], d_raw: bytes | None, request_id: RequestId | None, limits: CodecLimits
) -> Publish:
    return Publish(
        room=limits.check_room(fields.get("room")),
        d_raw=_payload(d_raw),
        ev=_optional_str(fields, "ev", limits.max_event_length),
        id=_checked_request_id(fields, request_id),
        echo=_optional_bool(fields, "echo"),
    )


def _build_join(
    fields: dict[str, Any], d_raw: bytes | None, request_id: RequestId | None, limits: CodecLimits
) -> Join:
    return Join(
        room=limits.check_room(fields.get("room")),
        id=_checked_request_id(fields, request_id),
        presence=_optional_bool(fields, "presence"),
    )


def _build_leave(
    fields: dict[str, Any], d_raw: bytes | None, request_id: RequestId | None, limits: CodecLimits
) -> Leave:
    return Leave(
        room=limits.check_room(fields.get("room")), id=_checked_request_id(fields, request_id)
    )


def _build_ping(
    fields: dict[str, Any], d_raw: bytes | None, request_id: RequestId | None, limits: CodecLimits
) -> Ping:
    return Ping(id=_checked_request_id(fields, request_id))


_Builder = Callable[[dict[str, Any], bytes | None, RequestId | None, CodecLimits], ClientEnvelope]
_BUILDERS: dict[str, _Builder] = {
    "hello": _build_hello,
    "refresh": _build_refresh,
    "send": _build_send,
    "pub": _build_publish,
    "join": _build_join,
    "leave": _build_leave,
    "ping": _build_ping,
}


# --- encoding ---------------------------------------------------------------

_packb: Callable[[object], bytes] = msgpack.Packer(use_bin_type=True, autoreset=True).pack


def encode(envelope: dict[str, object]) -> bytes:
    """Encode a server envelope (``welcome``, ``ok``, ``err``, ``presence``, ``pong``)."""
    return _packb(envelope)


def pack_value(value: object) -> bytes:
    """Encode one msgpack value, e.g. a payload the relay itself originates."""
    return _packb(value)


_MSG_HEAD = _packb("type") + _packb("msg") + _packb("from")
_KEY_D = _packb("d")
_KEY_EV = _packb("ev")
_KEY_ROOM = _packb("room")
_KEY_RID = _packb("rid")
_KEY_RE = _packb("re")
_FIXMAP = [bytes((0x80 | n,)) for n in range(8)]


def encode_msg(
    sender: str,
    d_raw: bytes,
    *,
    ev: str | None = None,
    room: str | None = None,
    rid: PassThrough | None = None,
    re: PassThrough | None = None,
) -> bytes:
    """Encode a ``msg`` envelope around the sender's untouched payload bytes."""
    if ev is None and room is None and rid is None and re is None:
        return b"".join((_FIXMAP[3], _MSG_HEAD, _packb(sender), _KEY_D, d_raw))
    parts = [b"", _MSG_HEAD, _packb(sender), _KEY_D, d_raw]
    entries = 3  # type, from, d
    if ev is not None:
        parts += (_KEY_EV, _packb(ev))
        entries += 1
    if room is not None:
        parts += (_KEY_ROOM, _packb(room))
        entries += 1
    if rid is not None:
        parts += (_KEY_RID, _packb(rid))
        entries += 1
    if re is not None:
        parts += (_KEY_RE, _packb(re))
        entries += 1
    parts[0] = _FIXMAP[entries]
    return b"".join(parts)


_WELCOME_HEAD = _FIXMAP[6] + _packb("type") + _packb("welcome") + _packb("id")
_KEY_RESUME = _packb("resume")
_RESUMED = (_packb("resumed") + _packb(False), _packb("resumed") + _packb(True))  # by resumed


class WelcomeEncoder:
    """Encodes a node's ``welcome``s: what every one of them shares is encoded once.

    The same bytes as ``encode`` of the map ``type, id, resume, limits,
    node, resumed``; encoding the limits, a map of fourteen numbers, was a
    twentieth of a registration in a reconnect storm.
    """

    __slots__ = ("_tail",)

    def __init__(self, limits: dict[str, int | float], node: str) -> None:
        self._tail = _packb("limits") + _packb(limits) + _packb("node") + _packb(node)

    def encode(self, peer_id: str, resume: str, *, resumed: bool) -> bytes:
        """The ``welcome`` of ``peer_id``, with its resume secret."""
        return b"".join(
            (
                _WELCOME_HEAD, _packb(peer_id), _KEY_RESUME, _packb(resume), self._tail,
                _RESUMED[resumed],
            )
        )  # fmt: skip


def encode_ok(request_id: RequestId, *, queued: bool = False) -> bytes:
    """Encode an ``ok`` reply."""
    if queued:
        return _packb({"type": "ok", "id": request_id, "queued": True})
    return _packb({"type": "ok", "id": request_id})


def encode_err(
    code: str,
    message: str,
    *,
    request_id: RequestId | None = None,
    to: str | list[str] | None = None,
) -> bytes:
    """Encode an ``err`` reply or refusal."""
    envelope: dict[str, object] = {"type": "err", "code": code, "msg": message}
    if request_id is not None:
        envelope["id"] = request_id
    if to is not None:
        envelope["to"] = to
    return _packb(envelope)
