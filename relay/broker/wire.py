"""Messages between nodes: msgpack maps, validated like client input.

Every message a node publishes on another node's channel is one msgpack map
with a short ``t`` naming its kind. ``decode`` bounds every declared length by
the message's own size (and the whole message by ``MAX_MESSAGE_BYTES``) before
msgpack allocates anything, then checks each field's type; anything else is
``WireError``, which the receiving node logs and drops. Nothing is ever
unpickled or evaluated.

    d   deliver   p: peer, f: frame, u: undelivered or nil,
                  c: correlation id, n: node to send the ack to
    a   ack       c: correlation id, r: what became of the frame (a Delivery value)
    r   room      m: room, f: frame, x: excluded peer or nil, o: presence only
    hq  handover request   c: correlation id, p: peer, s: secret or nil,
                           v: verified, n: node to reply to
    hr  handover reply     c: correlation id, h: handover or nil
    pr  probe              c: nonce
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import msgpack

from relay.broker.base import Delivery, Handover, Proof, QueueEntry, Undelivered
from relay.metrics import OUT_KINDS

MAX_MESSAGE_BYTES = 64 * 1024 * 1024  # a handover carries a whole queue and replay window
_MAX_NAME = 1024  # peer ids, rooms, node ids, correlation ids, kinds
_MAX_REQUEST_ID = 256


_DELIVERIES = {delivery.value: delivery for delivery in Delivery}


class WireError(ValueError):
    """A message from another node is malformed."""


@dataclass(frozen=True, slots=True)
class Deliver:
    peer: str
    frame: bytes
    undelivered: Undelivered | None
    cid: str
    reply_to: str


@dataclass(frozen=True, slots=True)
class Ack:
    cid: str
    result: Delivery


@dataclass(frozen=True, slots=True)
class RoomFrame:
    room: str
    frame: bytes
    exclude: str | None
    presence_only: bool


@dataclass(frozen=True, slots=True)
class HandoverRequest:
    cid: str
    peer: str
    proof: Proof
    reply_to: str


@dataclass(frozen=True, slots=True)
class HandoverReply:
    cid: str
    handover: Handover | None


@dataclass(frozen=True, slots=True)
class Probe:
    nonce: str


Message = Deliver | Ack | RoomFrame | HandoverRequest | HandoverReply | Probe

_packb: Callable[[object], bytes] = msgpack.Packer(use_bin_type=True, autoreset=True).pack


def _undelivered_out(u: Undelivered | None) -> list[Any] | None:
    return None if u is None else list(u)


def _entries_out(entries: list[QueueEntry]) -> list[list[Any]]:
    return [[frame, kind, _undelivered_out(u)] for frame, kind, u in entries]


def encode_deliver(
    peer: str, frame: bytes, undelivered: Undelivered | None, cid: str, reply_to: str
) -> bytes:
    return _packb(
        {"t": "d", "p": peer, "f": frame, "u": _undelivered_out(undelivered),
         "c": cid, "n": reply_to}
    )  # fmt: skip


def encode_ack(cid: str, result: Delivery) -> bytes:
    return _packb({"t": "a", "c": cid, "r": result.value})


def encode_room(room: str, frame: bytes, exclude: str | None, presence_only: bool) -> bytes:
    return _packb({"t": "r", "m": room, "f": frame, "x": exclude, "o": presence_only})


def encode_handover_request(cid: str, peer: str, proof: Proof, reply_to: str) -> bytes:
    return _packb(
        {"t": "hq", "c": cid, "p": peer, "s": proof.secret, "v": proof.verified, "n": reply_to}
    )


def encode_handover_reply(cid: str, handover: Handover | None) -> bytes:
    h: dict[str, Any] | None = None
    if handover is not None:
        h = {
            "rooms": handover.rooms,
            "queue": _entries_out(handover.queue),
            "written": _entries_out(handover.written),
            "count": handover.written_count,
        }
    return _packb({"t": "hr", "c": cid, "h": h})


def encode_probe(nonce: str) -> bytes:
    return _packb({"t": "pr", "c": nonce})


# --- decoding ---------------------------------------------------------------


def decode(data: bytes) -> Message:
    """Decode one inter-node message or raise ``WireError``."""
    size = len(data)
    if not 0 < size <= MAX_MESSAGE_BYTES:
        raise WireError(f"message of {size} bytes")
    try:
        value = msgpack.unpackb(
            data,
            raw=False,
            strict_map_key=True,
            use_list=True,
            max_str_len=size,
            max_bin_len=size,
            max_array_len=size,
            max_map_len=size,
            max_ext_len=0,
        )
    except Exception as exc:  # msgpack raises several unrelated types
        raise WireError(f"undecodable: {type(exc).__name__}") from None
    if not isinstance(value, dict):
        raise WireError("not a map")
    kind = value.get("t")
    if kind == "d":
        return Deliver(
            _name(value, "p"), _bytes(value, "f"), _undelivered(value.get("u")),
            _name(value, "c"), _name(value, "n"),
        )  # fmt: skip
    if kind == "a":
        result = value.get("r")
        if result not in _DELIVERIES:
            raise WireError("r")
        return Ack(_name(value, "c"), _DELIVERIES[result])
    if kind == "r":
        return RoomFrame(
            _name(value, "m"), _bytes(value, "f"), _opt_name(value, "x"), _bool(value, "o")
        )
    if kind == "hq":
        secret = value.get("s")
        if secret is not None and not (isinstance(secret, str) and len(secret) <= _MAX_NAME):
            raise WireError("s")
        proof = Proof(secret, _bool(value, "v"))
        return HandoverRequest(_name(value, "c"), _name(value, "p"), proof, _name(value, "n"))
    if kind == "hr":
        return HandoverReply(_name(value, "c"), _handover(value.get("h")))
    if kind == "pr":
        return Probe(_name(value, "c"))
    raise WireError("unknown kind")


def _name(value: dict[str, Any], key: str) -> str:
    item = value.get(key)
    if not isinstance(item, str) or not 0 < len(item) <= _MAX_NAME:
        raise WireError(key)
    return item


def _opt_name(value: dict[str, Any], key: str) -> str | None:
    return None if value.get(key) is None else _name(value, key)


def _bytes(value: dict[str, Any], key: str) -> bytes:
    item = value.get(key)
    if not isinstance(item, bytes):
        raise WireError(key)
    return item


def _bool(value: dict[str, Any], key: str) -> bool:
    item = value.get(key)
    if not isinstance(item, bool):
        raise WireError(key)
    return item


def _undelivered(item: object) -> Undelivered | None:
    if item is None:
        return None
    if not isinstance(item, list) or len(item) != 3:
        raise WireError("u")
    sender, request_id, listed = item
    if not isinstance(sender, str) or not 0 < len(sender) <= _MAX_NAME:
        raise WireError("u.sender")
    if request_id is not None and (
        isinstance(request_id, bool)
        or not isinstance(request_id, int | str)
        or (isinstance(request_id, str) and len(request_id) > _MAX_REQUEST_ID)
    ):
        raise WireError("u.request_id")
    if not isinstance(listed, bool):
        raise WireError("u.listed")
    return (sender, request_id, listed)


def _entries(item: object, what: str) -> list[QueueEntry]:
    if not isinstance(item, list):
        raise WireError(what)
    entries: list[QueueEntry] = []
    for entry in item:
        if not isinstance(entry, list) or len(entry) != 3:
            raise WireError(what)
        frame, kind, undelivered = entry
        if not isinstance(frame, bytes) or kind not in OUT_KINDS:
            raise WireError(what)
        entries.append((frame, kind, _undelivered(undelivered)))
    return entries


def _handover(item: object) -> Handover | None:
    if item is None:
        return None
    if not isinstance(item, dict):
        raise WireError("h")
    rooms = item.get("rooms")
    if not isinstance(rooms, dict) or not all(
        isinstance(room, str) and 0 < len(room) <= _MAX_NAME and isinstance(presence, bool)
        for room, presence in rooms.items()
    ):
        raise WireError("h.rooms")
    count = item.get("count")
    if not isinstance(count, int) or isinstance(count, bool) or count < 0:
        raise WireError("h.count")
    return Handover(rooms, _entries(item.get("queue"), "h.queue"),
                    _entries(item.get("written"), "h.written"), count)  # fmt: skip
