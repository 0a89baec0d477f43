"""The opening handshake, server side, without I/O: parse and validate the request, answer it."""

from __future__ import annotations

import binascii
import functools
import hashlib
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Final

from relay.rfc6455.errors import HandshakeError

MAX_REQUEST_HEAD: Final = 16384
"""Largest handshake request (request line and headers) accepted, in bytes."""

_GUID: Final = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
_NO_VALUES: Final[list[bytes]] = []

NEEDS_HTTP_11: Final = "a WebSocket handshake needs HTTP/1.1"
"""Why an upgrade request of another HTTP version is refused (400)."""


@dataclass(frozen=True, slots=True)
class Request:
    """An HTTP request head: what the upgrade request says, not yet validated."""

    method: str
    target: bytes
    version: str
    headers: list[tuple[bytes, bytes]]  # names lower-cased, values stripped
    # The same values by name, in order: the handshake asks for eight names.
    by_name: dict[bytes, list[bytes]] = field(repr=False, compare=False)

    def values(self, name: bytes) -> list[bytes]:
        """Every value of header ``name`` (lower-case), in order (not to be changed)."""
        return self.by_name.get(name, _NO_VALUES)

    def tokens(self, name: bytes) -> list[bytes]:
        """The comma-separated tokens of every ``name`` header, ASCII lower-cased."""
        values = self.by_name.get(name)
        if values is None:
            return []
        if len(values) == 1 and b"," not in values[0]:  # one token: what clients send
            token = values[0].strip().lower()
            return [token] if token else []
        return [
            token.strip()
            for value in values
            for token in value.lower().split(b",")
            if token.strip()
        ]


@dataclass(frozen=True, slots=True)
class Handshake:
    """A valid upgrade request: the accept key to answer and the offered subprotocols."""

    accept: str
    subprotocols: list[str]


def parse_request(head: bytes) -> Request:
    """Parse a request line and headers (``head`` without the blank line that ends it)."""
    if len(head) > MAX_REQUEST_HEAD:
        raise HandshakeError(431, "request header fields too large")
    lines = head.split(b"\r\n")
    parts = lines[0].split(b" ")
    if len(parts) != 3 or not parts[0] or not parts[1]:
        raise HandshakeError(400, "malformed request line")
    method, target, version = parts
    headers: list[tuple[bytes, bytes]] = []
    for line in lines[1:]:
        name, colon, value = line.partition(b":")
        if not colon or not name or name != name.strip() or b" " in name or b"\t" in name:
            raise HandshakeError(400, "malformed header line")
        headers.append((name.lower(), value.strip(b" \t")))
    try:
        return _request(method.decode("ascii"), target, version.decode("ascii"), headers)
    except UnicodeDecodeError:
        raise HandshakeError(400, "malformed request line") from None


def _request(
    method: str, target: bytes, version: str, headers: list[tuple[bytes, bytes]]
) -> Request:
    by_name: dict[bytes, list[bytes]] = {}
    for name, value in headers:
        same = by_name.get(name)
        if same is None:
            by_name[name] = [value]
        else:
            same.append(value)
    return Request(method, target, version, headers, by_name)


# A head no HTTP/1.1 parser could read two ways: a GET of an origin-form target
# (RFC 3986 characters only) and header fields of token names and visible
# ASCII values with no whitespace after them (httptools keeps it, so uvicorn
# would not read "Upgrade: websocket " as an upgrade). Anything else
# (obs-fold, obs-text, absolute targets, bare CRs) is left to the general
# parser, strict where this is not.
_PLAIN_HEAD: Final = re.compile(
    rb"GET /[A-Za-z0-9\-._~!$&'()*+,;=:@/?%]* HTTP/1\.1"
    rb"(?:\r\n[!#$%&'*+\-.^_`|~0-9A-Za-z]+:[ \t]*(?:[\x21-\x7e](?:[\x21-\x7e \t]*[\x21-\x7e])?)?)*"
)
# A header field of a head _PLAIN_HEAD took: name, and value without the blanks before it.
_PLAIN_FIELD: Final = re.compile(rb"\r\n([^:]+):[ \t]*([^\r]*)")
# Headers after which a request is not plain: a body, or an answer to wait for.
_NOT_PLAIN: Final = frozenset((b"content-length", b"transfer-encoding", b"expect"))


def plain_upgrade(head: bytes) -> Request | None:
    """``head`` parsed, if it is a WebSocket upgrade request in the plainest form; else None.

    ``head`` is a request line and headers without the blank line that ends
    them. The plain form is what browsers and client libraries send: a GET
    of an origin-form target over HTTP/1.1, header names that are tokens,
    values of visible ASCII (no whitespace after them), no body,
    ``Connection`` listing ``upgrade`` and one ``Upgrade: websocket``. Such
    a head means the same to any HTTP parser, so the HTTP stage may hand it
    to the WebSocket protocol unparsed
    (``relay.httpserver``); None means only that the general parser decides.
    The handshake itself is still ``validate_handshake``'s to check.
    """
    if _PLAIN_HEAD.fullmatch(head) is None:
        return None
    # What parse_request would make of it, in one scan: the match has checked every line.
    first_end = head.find(b"\r\n")
    target = head[4 : first_end - 9] if first_end >= 0 else head[4:-9]
    headers = [(name.lower(), value) for name, value in _PLAIN_FIELD.findall(head)]
    request = _request("GET", target, "HTTP/1.1", headers)
    upgrades = request.values(b"upgrade")
    if len(upgrades) != 1 or upgrades[0].lower() != b"websocket":
        return None
    if b"upgrade" not in request.tokens(b"connection"):
        return None
    if not _NOT_PLAIN.isdisjoint(request.by_name):
        return None
    return request


def validate_handshake(request: Request) -> Handshake:
    """Check ``request`` against RFC 6455 section 4.2.1; raise ``HandshakeError`` if not.

    Not HTTP/1.1, or not exactly one non-empty ``Host``: 400, the status RFC
    6455 4.2.1 names for a request that is not a handshake (505 would say the
    server does not speak HTTP/1.x at all; RFC 7230 5.4 answers a missing or
    repeated ``Host`` with 400).
    """
    if request.method != "GET":
        raise HandshakeError(405, "a WebSocket handshake uses GET", ((b"allow", b"GET"),))
    if request.version != "HTTP/1.1":
        raise HandshakeError(400, NEEDS_HTTP_11)
    hosts = request.values(b"host")
    if len(hosts) != 1 or not hosts[0]:
        raise HandshakeError(400, "a WebSocket handshake needs exactly one Host header")
    upgrading = b"upgrade" in request.tokens(b"connection")
    if not upgrading or b"websocket" not in request.tokens(b"upgrade"):
        message = "this is a WebSocket endpoint: use a WebSocket client"
        raise HandshakeError(426, message, ((b"upgrade", b"websocket"),))
    if request.values(b"sec-websocket-version") != [b"13"]:
        raise HandshakeError(
            426, "Sec-WebSocket-Version must be 13", ((b"sec-websocket-version", b"13"),)
        )
    keys = request.values(b"sec-websocket-key")
    if len(keys) != 1:
        raise HandshakeError(400, "exactly one Sec-WebSocket-Key is required")
    try:
        raw_key = binascii.a2b_base64(keys[0], strict_mode=True)
    except binascii.Error:
        raw_key = b""
    if len(raw_key) != 16:
        raise HandshakeError(400, "Sec-WebSocket-Key must be 16 bytes in base64")
    subprotocols = [
        token.strip().decode("latin-1")
        for value in request.values(b"sec-websocket-protocol")
        for token in value.split(b",")
        if token.strip()
    ]
    return Handshake(accept_key(keys[0]), subprotocols)


def accept_key(key: bytes) -> str:
    """The ``Sec-WebSocket-Accept`` value answering ``Sec-WebSocket-Key: key``."""
    return binascii.b2a_base64(hashlib.sha1(key + _GUID).digest(), newline=False).decode("ascii")


_BAD_NAME: Final = re.compile(rb"[\r\n\0: \t]")
_BAD_VALUE: Final = re.compile(rb"[\r\n\0]")


@functools.cache
def _status_line(status: int) -> bytes:
    try:
        phrase = HTTPStatus(status).phrase.encode("ascii")
    except ValueError:
        phrase = b""
    return b"HTTP/1.1 %d %s\r\n" % (status, phrase)


# Checked once per distinct header: the same few (date, the subprotocol) recur
# on every handshake of a storm.
@functools.lru_cache(maxsize=256)
def _header_line(name: bytes, value: bytes) -> bytes:
    if not name or _BAD_NAME.search(name) or _BAD_VALUE.search(value):
        raise ValueError(f"invalid HTTP header {name!r}: {value!r}")
    return b"%s: %s\r\n" % (name, value)


def _head(status: int, headers: Iterable[tuple[bytes, bytes]]) -> list[bytes]:
    lines = [_status_line(status)]
    lines += [_header_line(name, value) for name, value in headers]
    lines.append(b"\r\n")
    return lines


_ACCEPTED: Final = (
    b"HTTP/1.1 101 Switching Protocols\r\n"
    b"upgrade: websocket\r\nconnection: Upgrade\r\nsec-websocket-accept: "
)


def accept_response(accept: str, headers: Iterable[tuple[bytes, bytes]] = ()) -> bytes:
    """The ``101 Switching Protocols`` response; ``headers`` are added after the required ones.

    ``accept`` is what ``accept_key`` gave. Raises ``ValueError`` for a
    header that would break the response (CR, LF, NUL).
    """
    lines = [_ACCEPTED, accept.encode("ascii"), b"\r\n"]
    lines += [_header_line(name, value) for name, value in headers]
    lines.append(b"\r\n")
    return b"".join(lines)


def http_response(status: int, headers: Iterable[tuple[bytes, bytes]], body: bytes) -> bytes:
    """A complete response that ends the connection (a refused upgrade).

    ``content-length``, ``content-type`` (plain text) and ``connection: close``
    are added unless ``headers`` has them.
    """
    given = list(headers)
    names = {name.lower() for name, _ in given}
    defaults = [
        (b"content-type", b"text/plain; charset=utf-8"),
        (b"content-length", str(len(body)).encode("ascii")),
        (b"connection", b"close"),
    ]
    given += [(name, value) for name, value in defaults if name not in names]
    return b"".join(_head(status, given)) + body
