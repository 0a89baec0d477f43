"""The PeerJS server protocol as pure functions: text in, checked messages out.

PeerJS clients (the ``peerjs`` npm package, 1.5.x) send JSON text frames such
as ``{"type": "OFFER", "dst": "bob", "payload": {...}}``. This module checks
them, builds what the server sends (``OPEN``, ``ERROR``, ``ID-TAKEN``,
``EXPIRE`` and the relayed messages, ``src`` stamped), and translates between
PeerJS messages and the hub's frames: a relayed message crosses the hub (and
the cluster) as a ``send`` to the namespaced id ``@peerjs/<dst>`` whose
``ev`` is the PeerJS type and whose ``d`` is the payload as JSON text; what
the hub writes to a PeerJS socket (``welcome``, ``msg``, ``err``) becomes
PeerJS JSON in ``from_relay``. A payload is converted once: ``parse`` reads
it (to check it) and writes it as compact JSON, and ``from_relay`` splices
that text into the destination's message without reading it again.

No I/O here: ``relay.peerjs.session`` drives it.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import msgpack

from relay.exceptions import BadEnvelope, TooLarge
from relay.protocol import codec
from relay.protocol.codes import CloseCode, ErrorCode

NAMESPACE = "@peerjs/"  # hub ids of PeerJS peers; no native hello may start with "@"
DISCOVERY_ROOM = "@peerjs"  # the room PeerJS peers join when discovery is on
MAX_TOKEN_LENGTH = 4096  # a JWT or PeerJS's random token, in a URL (servers cap those near 8 KiB)

# The PeerJS client's own rule for ids (its validateId): letters and digits,
# single " ", "_" or "-" between them.
_ID_RE = re.compile(r"[A-Za-z0-9]+(?:[ _-][A-Za-z0-9]+)*")


class MessageType(StrEnum):
    """The ``type`` of a PeerJS message."""

    OPEN = "OPEN"
    ERROR = "ERROR"
    ID_TAKEN = "ID-TAKEN"
    EXPIRE = "EXPIRE"
    HEARTBEAT = "HEARTBEAT"
    OFFER = "OFFER"
    ANSWER = "ANSWER"
    CANDIDATE = "CANDIDATE"
    LEAVE = "LEAVE"


RELAYED = frozenset({MessageType.OFFER, MessageType.ANSWER, MessageType.CANDIDATE,
                     MessageType.LEAVE})  # fmt: skip
# Held for a peer that has not connected yet; a LEAVE for an absent peer is
# dropped, as peerjs-server does.
HELD = frozenset({MessageType.OFFER, MessageType.ANSWER, MessageType.CANDIDATE})
_NEEDS_PAYLOAD = HELD  # the client ignores these without a payload object

# peerjs-server's own words, which PeerJS apps may match on.
MISSING_PARAMETERS = "No id, token, or key supplied to websocket server"
INVALID_KEY = "Invalid key provided"


# The close that follows the ``ERROR`` for a refused message, by the error
# code; any other: 1008. (A refused registration closes as a refused native
# hello does, ``Session.register``.) PeerJS clients do not read close codes,
# but a code tells logs, metrics and proxies what went wrong.
_CLOSE_CODES = {
    ErrorCode.TOO_LARGE: CloseCode.MESSAGE_TOO_BIG,
    ErrorCode.RATE_LIMITED: CloseCode.RATE_LIMITED,
    ErrorCode.INTERNAL: CloseCode.INTERNAL_ERROR,
}


def close_code(code: ErrorCode) -> CloseCode:
    """The close code a PeerJS socket gets after a message refused with ``code``."""
    return _CLOSE_CODES.get(code, CloseCode.POLICY_VIOLATION)


@dataclass(frozen=True, slots=True)
class Heartbeat:
    """The client is alive (it sends one every 5 s by default)."""


@dataclass(frozen=True, slots=True)
class Relayed:
    """A message for another PeerJS peer; ``payload`` is JSON text (None: none)."""

    type: MessageType
    dst: str
    payload: str | None


@dataclass(frozen=True, slots=True)
class Limits:
    """The bounds ``parse`` enforces."""

    max_frame_bytes: int
    max_depth: int
    max_id_length: int


def valid_id(value: object, max_length: int) -> bool:
    """Whether ``value`` is a PeerJS id the relay accepts."""
    return isinstance(value, str) and 0 < len(value) <= max_length and bool(_ID_RE.fullmatch(value))


def parse(text: str, own_id: str, limits: Limits) -> Heartbeat | Relayed:
    """Check one text frame from the PeerJS peer ``own_id``.

    A bad frame raises ``TooLarge`` (over ``max_frame_bytes``) or
    ``BadEnvelope`` (anything else), whose message is the ``ERROR`` text.

    A ``src`` other than the sender's own id is refused, not overwritten:
    a client that believes it can set ``src`` has a bug worth hearing about.
    So is a ``dst`` no peer can hold (outside the id rule, ``valid_id``), and
    a payload JSON can parse but the relay cannot pass on as JSON (a number
    out of a double's range such as ``1e400``, a lone surrogate such as
    ``"\\ud800"``). Fields other than ``type``, ``dst``, ``src`` and
    ``payload`` are ignored and never relayed.
    """
    size = len(text.encode())
    if size > limits.max_frame_bytes:
        raise TooLarge(f"message of {size} bytes exceeds {limits.max_frame_bytes}")
    try:
        message = json.loads(text, parse_constant=_no_constant)
    except (ValueError, RecursionError):
        raise BadEnvelope("malformed JSON") from None
    if not isinstance(message, dict):
        raise BadEnvelope("a message must be a JSON object")
    kind = message.get("type")
    if kind == MessageType.HEARTBEAT:
        return Heartbeat()
    if not isinstance(kind, str) or kind not in RELAYED:
        raise BadEnvelope("unknown message type")
    src = message.get("src")
    if src is not None and src != own_id:
        raise BadEnvelope("src is stamped by the server and may not be set")
    dst = message.get("dst")
    if not isinstance(dst, str) or not dst:
        raise BadEnvelope("dst is required")
    if not valid_id(dst, limits.max_id_length):
        raise BadEnvelope(
            "dst is not an id any peer can have: letters and digits, with single spaces, "
            f"_ or - between them, at most {limits.max_id_length} characters"
        )
    if "payload" not in message or message["payload"] is None:
        if kind in _NEEDS_PAYLOAD:
            raise BadEnvelope(f"{kind} needs a payload object")
        return Relayed(MessageType(kind), dst, None)
    payload = message["payload"]
    if kind in _NEEDS_PAYLOAD and not isinstance(payload, dict):
        raise BadEnvelope(f"{kind} needs a payload object")
    if _depth(payload) > limits.max_depth:
        raise BadEnvelope(f"payload nests deeper than {limits.max_depth}")
    try:
        relayed = _dumps(payload)  # ValueError: a float out of range (1e400 parses as inf)
        relayed.encode()  # UnicodeEncodeError (a ValueError): a lone surrogate
    except ValueError:
        raise BadEnvelope(
            "payload holds a value JSON cannot carry (a number out of range, a lone surrogate)"
        ) from None
    return Relayed(MessageType(kind), dst, relayed)


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _depth(value: object) -> int:
    """Nesting depth of a parsed JSON value (a flat object or array is 1)."""
    deepest = 0
    pending: list[tuple[object, int]] = [(value, 1)]
    while pending:
        item, level = pending.pop()
        if isinstance(item, dict):
            children: Any = item.values()
        elif isinstance(item, list):
            children = item
        else:
            continue
        deepest = max(deepest, level)
        pending.extend((child, level + 1) for child in children)
    return deepest


def _dumps(value: object) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


# A str as ``_dumps`` writes it, without building an encoder per call.
_string: Callable[[str], str] = json.encoder.encode_basestring


# --- what the server sends -----------------------------------------------------


def server_message(
    kind: MessageType, *, msg: str | None = None, src: str | None = None, dst: str | None = None
) -> str:
    """A message of the server's own: ``OPEN``, ``ERROR`` or ``ID-TAKEN`` (``msg``), ``EXPIRE``.

    ``EXPIRE`` names the absent peer in ``src`` and the one told in ``dst``.
    """
    message: dict[str, object] = {"type": kind.value}
    if src is not None:
        message["src"] = src
    if dst is not None:
        message["dst"] = dst
    if msg is not None:
        message["payload"] = {"msg": msg}
    return _dumps(message)


def relayed_text(kind: str, src: str, dst: str, payload: str | None) -> str:
    """A relayed message as the destination's client reads it.

    ``payload`` is JSON text as ``parse`` wrote it (``Relayed.payload``):
    spliced in as it is, never parsed again. The text is the one ``json.dumps``
    would write for the same message (compact, keys in this order).
    """
    head = f'{{"type":{_string(kind)},"src":{_string(src)},"dst":{_string(dst)}'
    return head + "}" if payload is None else f'{head},"payload":{payload}}}'


# --- through the hub -------------------------------------------------------------


def to_relay(message: Relayed) -> bytes:
    """The ``d`` of the hub ``send`` carrying ``message`` (msgpack: the payload's JSON text)."""
    return codec.pack_value(message.payload)


def unpack(frame: bytes) -> dict[str, Any] | None:
    """One frame the hub wrote for a PeerJS socket as a map (None if it is not one)."""
    try:
        envelope = msgpack.unpackb(frame, raw=False)
    except (ValueError, msgpack.UnpackException):
        return None
    return envelope if isinstance(envelope, dict) else None


def from_relay(envelope: dict[str, Any], own_id: str) -> list[str]:
    """The PeerJS messages for one hub frame (``unpack``) written for ``own_id``.

    ``welcome`` becomes ``OPEN``. ``msg`` from another PeerJS peer becomes the
    relayed message. An ``err`` naming peers (``to``: a message the hub
    accepted but could not deliver after all, or that the relay gave up on)
    becomes one ``EXPIRE`` per peer, PeerJS's "peer-unavailable"; ``id-taken``
    becomes ``ID-TAKEN``; any other ``err`` (a bad message, a token that
    expired) becomes ``ERROR``. Frames of no meaning to PeerJS give nothing.
    """
    kind = envelope.get("type")
    if kind == "welcome":
        return [server_message(MessageType.OPEN)]
    if kind == "msg":
        sender, ev, data = envelope.get("from"), envelope.get("ev"), envelope.get("d")
        if (
            not isinstance(sender, str)
            or not sender.startswith(NAMESPACE)
            or ev not in RELAYED
            or "room" in envelope
            or not (data is None or isinstance(data, str))
        ):
            return []
        # Only a PeerJS session sends from the namespace (no client envelope
        # can name it), and ``d`` is the payload its ``parse`` checked and
        # wrote: it goes on as it is.
        return [relayed_text(ev, sender.removeprefix(NAMESPACE), own_id, data)]
    if kind == "err":
        unreached = envelope.get("to")
        targets = [unreached] if isinstance(unreached, str) else unreached
        if isinstance(targets, list):
            return [
                server_message(MessageType.EXPIRE, src=target.removeprefix(NAMESPACE), dst=own_id)
                for target in targets
                if isinstance(target, str) and target.startswith(NAMESPACE)
            ]
        if envelope.get("code") == "id-taken":
            return [server_message(MessageType.ID_TAKEN, msg="ID is taken")]
        text = envelope.get("msg")
        return [server_message(MessageType.ERROR, msg=text if isinstance(text, str) else "error")]
    return []
