"""The records of the HTTP transport (docs/protocol-http.md, *Records*).

A body, in either direction, is a sequence of records: a kind byte, the
payload's length (4 bytes, unsigned, big-endian), the payload. A stream
brings them in chunks cut anywhere, so :class:`RecordReader` keeps what a
chunk left unfinished until the next one completes it.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from enum import IntEnum

_HEADER = struct.Struct(">BI")
RECORD_HEADER = _HEADER.size
"""The bytes a record adds to its payload."""


class Kind(IntEnum):
    """The kind byte of a record."""

    ENVELOPE = 0
    KEEPALIVE = 1
    CLOSE = 2


@dataclass(frozen=True, slots=True)
class Record:
    """One record: its kind and its payload."""

    kind: Kind
    payload: bytes


class BadRecord(ValueError):
    """The bytes are not records: an unknown kind, or a payload over the bound."""


def encode(payload: bytes, kind: Kind = Kind.ENVELOPE) -> bytes:
    """One record carrying ``payload``."""
    return _HEADER.pack(kind, len(payload)) + payload


class RecordReader:
    """Turns chunks of a body into records, whatever the chunks' boundaries."""

    def __init__(self, max_payload: int | None = None) -> None:
        self._max = max_payload
        self._buffer = bytearray()

    @property
    def pending(self) -> int:
        """How many bytes wait for the rest of their record."""
        return len(self._buffer)

    def feed(self, chunk: bytes) -> list[Record]:
        """Take ``chunk``; return the records it completes, in order.

        Raise :class:`BadRecord` at an unknown kind or a payload longer than
        ``max_payload``: what follows cannot be framed, so the body is lost.
        """
        self._buffer += chunk
        records: list[Record] = []
        start = 0
        while len(self._buffer) - start >= _HEADER.size:
            kind, length = _HEADER.unpack_from(self._buffer, start)
            if kind not in Kind._value2member_map_:
                raise BadRecord(f"unknown record kind {kind}")
            if self._max is not None and length > self._max:
                raise BadRecord(f"a record of {length} bytes (the bound is {self._max})")
            end = start + _HEADER.size + length
            if end > len(self._buffer):
                break
            records.append(Record(Kind(kind), bytes(self._buffer[start + _HEADER.size : end])))
            start = end
        # One deletion per chunk, not per record: many small records stay linear.
        del self._buffer[:start]
        return records
