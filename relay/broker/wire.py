"""Messages between nodes: msgpack maps, validated like client input.

Every message a node publishes on another node's channel is one msgpack map
with a short ``t`` naming its kind. ``decode`` bounds every declared length by
the message's own size (and the whole message by ``MAX_MESSAGE_BYTES``) before
msgpack allocates anything, then checks each field's type; anything else is
``WireError``, which the receiving node logs and drops. Nothing is ever
unpickled or evaluated. ``relay.broker.redis.links`` explains numbers, epochs and
the outcome codes of acks.

    b   batch     n: sending node, i: its incarnation, l: lowest number it still
                  waits an answer for, s: number of the first delivery,
                  d: deliveries [peer, epoch, frame, undelivered or nil], numbered
                  from s; a: acks for the receiver's own frames, nil or
                  [receiver's incarnation, [[first number, codes (bytes)], ...]]
    q   status    n: sending node, i: its incarnation, u: highest number it
                  used, l: lowest number it still waits an answer for
    r   room      m: room, f: frame, x: excluded peer or nil, o: presence only
    hq  handover request   c: correlation id, p: peer, s: secret or nil,
                           v: verified, n: node to reply to
    hr  handover reply     c: correlation id, h: handover or nil
    rq  request            c: correlation id, k: kind, b: body, n: node to reply to,
                           w: how long the requester waits, in ms (the handler's bound)
    rp  reply              c: correlation id, b: body, or nil with e: why not
                           (``NO_HANDLER``, ``FAILED`` or ``BUSY``)
    pr  probe              c: nonce
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import msgpack

from relay.metrics import OUT_KINDS
from relay.values import Handover, Proof, QueueEntry, Undelivered

MAX_MESSAGE_BYTES = 64 * 1024 * 1024  # a handover carries a whole queue and replay window
_MAX_NAME = 1024  # peer ids, rooms, node ids, correlation ids, kinds
_MAX_REQUEST_ID = 256


_MAX_CODE = 7  # the highest outcome code (relay.broker.redis.link_state.GONE)

# Why a request got no reply body: the node serves no such kind, its handler
# raised, or it runs as many handlers as it may.
NO_HANDLER, FAILED, BUSY = "unknown", "failed", "busy"
_REFUSALS = frozenset({NO_HANDLER, FAILED, BUSY})


class WireError(ValueError):
    """A message from another node is malformed."""


Carried = tuple[str, int, bytes, "Undelivered | None"]  # peer, epoch, frame, who to tell
AckRuns = list[tuple[int, bytes]]  # (first number, one outcome code per frame from it)


@dataclass(frozen=True, slots=True)
class Batch:
    node: str
    incarnation: str
    low: int
    first: int
    deliveries: list[Carried]
    acks: tuple[str, AckRuns] | None


@dataclass(frozen=True, slots=True)
class Status:
    node: str
    incarnation: str
    up_to: int
    low: int


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
class Request:
    cid: str
    kind: str
    body: bytes
    reply_to: str
    wait_ms: int


@dataclass(frozen=True, slots=True)
class Reply:
    cid: str
    body: bytes | None
    refusal: str | None  # NO_HANDLER, FAILED or BUSY when body is None


@dataclass(frozen=True, slots=True)
class Probe:
    nonce: str


Message = Batch | Status | RoomFrame | HandoverRequest | HandoverReply | Request | Reply | Probe

_packb: Callable[[object], bytes] = msgpack.Packer(use_bin_type=True, autoreset=True).pack


def _undelivered_out(u: Undelivered | None) -> list[Any] | None:
    return None if u is None else list(u)


def _entries_out(entries: list[QueueEntry]) -> list[list[Any]]:
    return [[frame, kind, _undelivered_out(u)] for frame, kind, u in entries]


def encode_batch(
    node: str,
    incarnation: str,
    low: int,
    first: int,
    deliveries: list[Carried],
    acks: tuple[str, list[tuple[int, bytearray]]] | None,
) -> bytes:
    # Tuples pack as arrays and bytearrays as bin: the batch goes out as it
    # was gathered, with no copy per frame.
    return _packb(
        {"t": "b", "n": node, "i": incarnation, "l": low, "s": first, "d": deliveries,
         "a": acks}
    )  # fmt: skip


def encode_status(node: str, incarnation: str, up_to: int, low: int) -> bytes:
    return _packb({"t": "q", "n": node, "i": incarnation, "u": up_to, "l": low})


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
            "meta": handover.meta,
            "granted": handover.granted,
        }
    return _packb({"t": "hr", "c": cid, "h": h})


def encode_request(cid: str, kind: str, body: bytes, reply_to: str, wait_ms: int) -> bytes:
    return _packb({"t": "rq", "c": cid, "k": kind, "b": body, "n": reply_to, "w": wait_ms})


def encode_reply(cid: str, body: bytes | None, refusal: str | None = None) -> bytes:
    return _packb({"t": "rp", "c": cid, "b": body, "e": refusal})


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
    if kind == "b":
        return Batch(
            _name(value, "n"), _name(value, "i"), _number(value, "l"), _number(value, "s"),
            _deliveries(value.get("d")), _acks(value.get("a")),
        )  # fmt: skip
    if kind == "q":
        return Status(
            _name(value, "n"), _name(value, "i"), _number(value, "u"), _number(value, "l")
        )
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
    if kind == "rq":
        return Request(
            _name(value, "c"), _name(value, "k"), _bytes(value, "b"), _name(value, "n"),
            _number(value, "w"),
        )  # fmt: skip
    if kind == "rp":
        return _reply(value)
    if kind == "pr":
        return Probe(_name(value, "c"))
    raise WireError("unknown kind")


def _name(value: dict[str, Any], key: str) -> str:
    item = value.get(key)
    if not isinstance(item, str) or not 0 < len(item) <= _MAX_NAME:
        raise WireError(key)
    return item


def _number(value: dict[str, Any], key: str) -> int:
    item = value.get(key)
    if type(item) is not int or item < 0:
        raise WireError(key)
    return item


def _deliveries(item: object) -> list[Carried]:
    if not isinstance(item, list):
        raise WireError("d")
    out: list[Carried] = []
    # The frames of a batch mostly share a few senders: each distinct
    # ``undelivered`` is checked once.
    known: dict[tuple[object, object, object], Undelivered] = {}
    for entry in item:
        if type(entry) is not list or len(entry) != 4:
            raise WireError("d")
        peer, epoch, frame, raw = entry
        if (
            type(peer) is not str
            or not 0 < len(peer) <= _MAX_NAME
            or type(epoch) is not int
            or type(frame) is not bytes
        ):
            raise WireError("d")
        undelivered = None
        if raw is not None:
            if type(raw) is not list or len(raw) != 3:
                raise WireError("u")
            key = (raw[0], raw[1], raw[2])
            try:
                undelivered = known.get(key)
            except TypeError:  # unhashable, so not a valid field either
                raise WireError("u") from None
            if undelivered is None:
                undelivered = known[key] = _checked_undelivered(raw)
        out.append((peer, epoch, frame, undelivered))
    return out


def _acks(item: object) -> tuple[str, AckRuns] | None:
    if item is None:
        return None
    if not isinstance(item, list) or len(item) != 2:
        raise WireError("a")
    incarnation, runs = item
    if not isinstance(incarnation, str) or not 0 < len(incarnation) <= _MAX_NAME:
        raise WireError("a")
    if not isinstance(runs, list):
        raise WireError("a")
    out: AckRuns = []
    for run in runs:
        if type(run) is not list or len(run) != 2:
            raise WireError("a")
        first, codes = run
        if type(first) is not int or first < 0 or type(codes) is not bytes:
            raise WireError("a")
        if codes and max(codes) > _MAX_CODE:
            raise WireError("a")
        out.append((first, codes))
    return (incarnation, out)


def _reply(value: dict[str, Any]) -> Reply:
    body, refusal = value.get("b"), value.get("e")
    if body is None:
        if refusal not in _REFUSALS:
            raise WireError("e")
        return Reply(_name(value, "c"), None, refusal)
    if refusal is not None:
        raise WireError("e")
    return Reply(_name(value, "c"), _bytes(value, "b"), None)


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
    return None if item is None else _checked_undelivered(item)


def _checked_undelivered(item: object) -> Undelivered:
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
    granted = item.get("granted")
    if granted is not None and not (
        isinstance(granted, list | tuple) and all(isinstance(room, str) for room in granted)
    ):
        raise WireError("h.granted")
    return Handover(rooms, _entries(item.get("queue"), "h.queue"),
                    _entries(item.get("written"), "h.written"), count, item.get("meta"),
                    None if granted is None else tuple(granted))  # fmt: skip
