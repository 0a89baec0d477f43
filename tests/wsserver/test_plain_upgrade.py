"""``rfc6455.plain_upgrade`` against httptools: a head it takes means the same to both.

The HTTP stage hands a plain upgrade request to the WebSocket protocol
without httptools (``relay.httpserver``), so every head ``plain_upgrade``
takes must be one httptools reads as the same WebSocket upgrade: a GET over
HTTP/1.1, the same target, the same header fields, and an upgrade by
uvicorn's rule; and ``plain_upgrade`` reads it in one scan, which must give
what ``parse_request`` gives. Hypothesis builds heads near the plain form and off it in
the ways parsers disagree on (odd bytes in names, values and targets, folded
lines, other versions and methods, bodies).
"""

from __future__ import annotations

import httptools
from hypothesis import given, settings
from hypothesis import strategies as st

from relay.rfc6455 import parse_request, plain_upgrade
from tests.wsserver.frames import upgrade_request


class Parsed:
    """What httptools makes of a head, gathered by its callbacks."""

    def __init__(self) -> None:
        self.url = b""
        self.headers: list[tuple[bytes, bytes]] = []

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name.lower(), value))


def httptools_upgrade(head: bytes) -> tuple[httptools.HttpRequestParser, Parsed] | None:
    """The parser and what it read, if httptools takes ``head`` as an upgrade; else None."""
    parsed = Parsed()
    parser = httptools.HttpRequestParser(parsed)
    try:
        parser.feed_data(head + b"\r\n\r\n")
    except httptools.HttpParserUpgrade:
        return parser, parsed
    except httptools.HttpParserError:
        return None
    return None


def uvicorn_upgrades_to_websocket(headers: list[tuple[bytes, bytes]]) -> bool:
    """uvicorn's rule (``HttpToolsProtocol._should_upgrade``)."""
    connection: list[bytes] = []
    upgrade = None
    for name, value in headers:
        if name == b"connection":
            connection = [token.lower().strip() for token in value.split(b",")]
        if name == b"upgrade":
            upgrade = value.lower()
    return b"upgrade" in connection and upgrade == b"websocket"


def check(head: bytes) -> bool:
    """Assert the property for ``head``; True when ``plain_upgrade`` took it."""
    request = plain_upgrade(head)
    if request is None:
        return False
    general = parse_request(head)  # what plain_upgrade's own scan stands for
    assert (request, request.by_name) == (general, general.by_name)
    found = httptools_upgrade(head)
    assert found is not None, f"httptools does not read {head!r} as an upgrade"
    parser, parsed = found
    assert parser.get_method() == b"GET"
    assert parser.get_http_version() == "1.1"
    assert parsed.url == request.target
    assert [(n, v.strip(b" \t")) for n, v in parsed.headers] == request.headers
    assert uvicorn_upgrades_to_websocket(parsed.headers)
    return True


TOKEN = st.text("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.!#$%&'*+^`|~",
                min_size=1, max_size=12)  # fmt: skip
ODD_BYTES = st.sampled_from([b" ", b"\t", b"\x00", b"\x7f", b"\x80", b"\xe9", b"\r", b"\n",
                             b":", b'"', b"{", b"\\", b"<", b"\x0b", b"\x01"])  # fmt: skip


@st.composite
def near_plain_heads(draw: st.DrawFn) -> bytes:
    # Mostly the plain form, so that many heads are taken and compared; off it often enough.
    method = draw(st.sampled_from([b"GET"] * 12 + [b"get", b"POST", b"HEAD", b"OPTIONS"]))
    target = b"/" + draw(st.text("abc/?=&%:@-._~!$'()*+,;09", max_size=20)).encode()
    if draw(st.integers(0, 7)) == 0:
        target = draw(st.sampled_from([b"http://relay/v1/ws", b"*", b"v1/ws", b"//x", b"/a#b"]))
    version = draw(st.sampled_from([b"HTTP/1.1"] * 12 + [b"HTTP/1.0", b"HTTP/2.0", b"http/1.1"]))
    connection = draw(st.sampled_from(
        [b"Upgrade"] * 4 + [b"upgrade", b"keep-alive, Upgrade", b"Upgrade,close", b"close", b""]
    ))  # fmt: skip
    upgrade = draw(st.sampled_from(
        [b"websocket"] * 4 + [b"WebSocket", b"h2c", b"websocket, h2c", b""]
    ))  # fmt: skip
    headers = [
        (b"Host", b"relay.example:8080"),
        (b"Connection", connection),
        (b"Upgrade", upgrade),
        (b"Sec-WebSocket-Key", b"dGhlIHNhbXBsZSBub25jZQ=="),
        (b"Sec-WebSocket-Version", b"13"),
    ]
    for _ in range(draw(st.integers(0, 3))):
        value = draw(st.text("abc XYZ09;=,/\t-", max_size=16)).encode()
        headers.insert(draw(st.integers(0, len(headers))), (draw(TOKEN).encode(), value))
    if draw(st.integers(0, 3)) == 0:
        headers.append(draw(st.sampled_from([
            (b"Content-Length", b"5"), (b"Transfer-Encoding", b"chunked"),
            (b"Expect", b"100-continue"), (b"Upgrade", b"websocket"),
        ])))  # fmt: skip
    lines = [method + b" " + target + b" " + version]
    lines += [name + b": " + value for name, value in headers]
    head = b"\r\n".join(lines)
    for _ in range(draw(st.sampled_from([0, 0, 0, 1, 2]))):  # an odd byte somewhere
        at = draw(st.integers(0, len(head)))
        head = head[:at] + draw(ODD_BYTES) + head[at:]
    if draw(st.integers(0, 9)) == 0:  # a folded line
        head = head.replace(b"\r\nSec-WebSocket-Version", b"\r\n Sec-WebSocket-Version", 1)
    return head


@settings(max_examples=3000, deadline=None)
@given(near_plain_heads())
def test_a_head_plain_upgrade_takes_is_the_same_upgrade_to_httptools(head: bytes) -> None:
    check(head)


def test_what_clients_send_is_plain() -> None:
    # The reference clients (through ``websockets`` and node ``ws``) and browsers send this form.
    chromium = (
        b"GET /v1/ws HTTP/1.1\r\nHost: localhost:8080\r\nConnection: Upgrade\r\n"
        b"Pragma: no-cache\r\nCache-Control: no-cache\r\nUser-Agent: Mozilla/5.0 (X11; Linux "
        b"x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36\r\n"
        b"Upgrade: websocket\r\nOrigin: http://localhost:8080\r\nSec-WebSocket-Version: 13\r\n"
        b"Accept-Encoding: gzip, deflate, br, zstd\r\nAccept-Language: en-US,en;q=0.9\r\n"
        b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
        b"Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n"
        b"Sec-WebSocket-Protocol: relay.v1"
    )
    assert check(chromium)
    assert check(upgrade_request(8080, "/v1/ws?token=abc%20d", subprotocols=("relay.v1",))[:-4])


def test_anything_else_is_left_to_the_general_parser() -> None:
    plain = upgrade_request(8080, "/v1/ws")[:-4]
    assert check(plain)
    for other in (
        plain.replace(b"HTTP/1.1", b"HTTP/1.0"),  # refused 400 by the general path
        plain.replace(b"GET ", b"POST "),
        plain.replace(b"Upgrade: websocket", b"Upgrade: h2c"),
        plain.replace(b"Connection: Upgrade", b"Connection: keep-alive"),
        plain + b"\r\nContent-Length: 0",
        plain + b"\r\nX-Folded: a\r\n b",
        plain + b"\r\nX-Latin: caf\xe9",
        plain.replace(b"/v1/ws", b"http://relay/v1/ws"),
        # httptools keeps whitespace after a value: not an upgrade to uvicorn (found by
        # hypothesis); declined whichever header it follows.
        plain.replace(b"Upgrade: websocket", b"Upgrade: websocket "),
        plain + b"\r\nX-Trailing: a\t",
    ):
        assert plain_upgrade(other) is None, other
