"""Encoding and decoding of envelopes (msgpack maps with string keys)."""

from __future__ import annotations

from typing import Any

import msgpack

SUBPROTOCOL = "relay.v1"
"""The WebSocket subprotocol of protocol v1."""

ERROR_EV = "relay.error"
"""The ``ev`` of a request reply that reports the responder's failure."""


def pack(envelope: dict[str, Any]) -> bytes:
    """Encode an envelope, dropping fields whose value is ``None``.

    ``d`` is kept even when ``None`` (nil is a valid payload).
    """
    body = {k: v for k, v in envelope.items() if v is not None or k == "d"}
    data: bytes = msgpack.packb(body, use_bin_type=True)
    return data


def unpack(frame: bytes) -> dict[str, Any] | None:
    """Decode a frame; ``None`` when it is not a map with a string ``type``.

    Payloads are decoded faithfully: bytes stay bytes, str stay str, maps may
    have non-string keys, extension types come back as ``msgpack.ExtType``
    (or ``msgpack.Timestamp``), so they re-encode unchanged.
    """
    try:
        value = msgpack.unpackb(frame, raw=False, strict_map_key=False)
    except Exception:
        return None
    if not isinstance(value, dict) or not isinstance(value.get("type"), str):
        return None
    return value
