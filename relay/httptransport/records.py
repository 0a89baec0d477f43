"""Records: how envelopes, keepalives and the close travel in HTTP bodies.

Each record is a kind byte, a 4-byte big-endian payload length and the
payload (docs/protocol-http.md, "Records").
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Iterator
from typing import Final

import msgpack

ENVELOPE: Final = 0
KEEPALIVE: Final = 1
CLOSE: Final = 2

_HEAD: Final = struct.Struct(">BI")
HEAD_BYTES: Final = _HEAD.size


class BadRecords(ValueError):
    """A body that is not a sequence of envelope records (400)."""


class RecordTooLarge(ValueError):
    """An envelope record longer than the session's frame limit (413, and a 1009 close)."""


def record(kind: int, payload: bytes = b"") -> bytes:
    """One record of ``kind`` carrying ``payload``."""
    return _HEAD.pack(kind, len(payload)) + payload


KEEPALIVE_RECORD: Final = record(KEEPALIVE)


def envelope_records(frames: Iterable[bytes]) -> bytes:
    """The envelope records of ``frames``, in order, as one body."""
    pack = _HEAD.pack
    return b"".join(pack(ENVELOPE, len(frame)) + frame for frame in frames)


def close_record(code: int, reason: str) -> bytes:
    """The record that ends a session with a WebSocket close's ``code`` and ``reason``."""
    return record(CLOSE, msgpack.packb({"code": code, "reason": reason}))


def check_envelopes(body: bytes, max_frame_bytes: int) -> None:
    """Check that a client's body holds only envelope records, each within ``max_frame_bytes``.

    It allocates nothing: a 1 MiB body of empty records would otherwise be
    200,000 objects before the first is read (``envelopes`` then takes them
    one at a time).
    """
    at = 0
    end = len(body)
    unpack_from = _HEAD.unpack_from
    while at < end:
        if end - at < HEAD_BYTES:
            raise BadRecords("a record is cut short")
        kind, length = unpack_from(body, at)
        if kind != ENVELOPE:
            raise BadRecords(f"a client sends only envelope records (kind 0), not kind {kind}")
        if length > max_frame_bytes:
            raise RecordTooLarge(f"an envelope exceeds max_frame_bytes ({max_frame_bytes})")
        at += HEAD_BYTES + length
        if at > end:
            raise BadRecords("a record is cut short")


def envelopes(body: bytes) -> Iterator[bytes]:
    """The envelopes of a body ``check_envelopes`` accepted, one at a time."""
    at = 0
    end = len(body)
    while at < end:
        _kind, length = _HEAD.unpack_from(body, at)
        at += HEAD_BYTES
        yield body[at : at + length]
        at += length
