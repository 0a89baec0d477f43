"""relay.rfc6455 on plain bytes: the handshake, the frame parser and the frame writer."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from websockets.frames import Frame as WebsocketsFrame
from websockets.streams import StreamReader

from relay import rfc6455
from relay.rfc6455 import (
    NEED_DATA,
    OP_BINARY,
    OP_CLOSE,
    OP_PING,
    OP_PONG,
    OP_TEXT,
    FrameParser,
    HandshakeError,
    InvalidUTF8,
    MessageTooBig,
    ProtocolError,
    TooManyFragments,
)
from tests.wsserver.frames import client_frame, close_frame

# --- handshake -------------------------------------------------------------------------

GOOD_REQUEST = (
    b"GET /v1/ws?x=1 HTTP/1.1\r\n"
    b"Host: example.com\r\n"
    b"Upgrade: WebSocket\r\n"
    b"Connection: keep-alive, Upgrade\r\n"
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
    b"Sec-WebSocket-Version: 13\r\n"
    b"Sec-WebSocket-Protocol: relay.v1, chat\r\n"
    b"Sec-WebSocket-Protocol: other"
)


def test_accept_key_is_the_rfc_example() -> None:
    assert rfc6455.accept_key(b"dGhlIHNhbXBsZSBub25jZQ==") == "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="


def test_a_valid_request_is_parsed_and_accepted() -> None:
    request = rfc6455.parse_request(GOOD_REQUEST)
    assert (request.method, request.target, request.version) == ("GET", b"/v1/ws?x=1", "HTTP/1.1")
    assert (b"host", b"example.com") in request.headers
    handshake = rfc6455.validate_handshake(request)
    assert handshake.accept == "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
    assert handshake.subprotocols == ["relay.v1", "chat", "other"]


@pytest.mark.parametrize(
    ("lines", "tokens"),
    [
        ([b"Connection: Upgrade"], [b"upgrade"]),  # one token, the usual
        ([b"Connection:  UpGrade "], [b"upgrade"]),
        ([b"Connection:"], []),
        ([b"Connection: keep-alive, Upgrade"], [b"keep-alive", b"upgrade"]),
        ([b"Connection: ,, a ,"], [b"a"]),
        ([b"Connection: Upgrade", b"Connection: Close"], [b"upgrade", b"close"]),
        ([b"Host: x"], []),
    ],
)
def test_tokens_are_every_comma_separated_value_lower_cased(
    lines: list[bytes], tokens: list[bytes]
) -> None:
    request = rfc6455.parse_request(b"\r\n".join([b"GET / HTTP/1.1", *lines]))
    assert request.tokens(b"connection") == tokens


def _with(header: bytes, value: bytes | None) -> bytes:
    lines = [
        line for line in GOOD_REQUEST.split(b"\r\n") if not line.lower().startswith(header + b":")
    ]
    if value is not None:
        lines.append(header + b": " + value)
    return b"\r\n".join(lines)


@pytest.mark.parametrize(
    ("request_head", "status", "header"),
    [
        (GOOD_REQUEST.replace(b"GET", b"POST", 1), 405, (b"allow", b"GET")),
        (GOOD_REQUEST.replace(b"HTTP/1.1", b"HTTP/1.0", 1), 400, None),
        (_with(b"host", None), 400, None),
        (_with(b"host", b""), 400, None),
        (GOOD_REQUEST + b"\r\nHost: example.org", 400, None),
        (_with(b"upgrade", None), 426, (b"upgrade", b"websocket")),
        (_with(b"upgrade", b"h2c"), 426, (b"upgrade", b"websocket")),
        (_with(b"connection", b"keep-alive"), 426, (b"upgrade", b"websocket")),
        (_with(b"sec-websocket-version", b"8"), 426, (b"sec-websocket-version", b"13")),
        (_with(b"sec-websocket-version", None), 426, (b"sec-websocket-version", b"13")),
        (_with(b"sec-websocket-key", None), 400, None),
        (_with(b"sec-websocket-key", b"not base64!"), 400, None),
        (_with(b"sec-websocket-key", b"c2hvcnQ="), 400, None),  # 5 bytes, not 16
        (GOOD_REQUEST + b"\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==", 400, None),
    ],
)
def test_invalid_handshakes_get_the_rfc_status(
    request_head: bytes, status: int, header: tuple[bytes, bytes] | None
) -> None:
    with pytest.raises(HandshakeError) as caught:
        rfc6455.validate_handshake(rfc6455.parse_request(request_head))
    assert caught.value.status == status
    if header is not None:
        assert header in caught.value.headers


@pytest.mark.parametrize(
    "head",
    [
        b"GET /\r\nHost: x",  # two parts in the request line
        b"GET  / HTTP/1.1",  # empty part
        b"GET / HTTP/1.1\r\nno colon here",
        b"GET / HTTP/1.1\r\n folded: header",
        b"GET / HTTP/1.1\r\nbad name: x",
        b"G\xc3\xa9T / HTTP/1.1",
    ],
)
def test_malformed_requests_are_400(head: bytes) -> None:
    with pytest.raises(HandshakeError) as caught:
        rfc6455.parse_request(head)
    assert caught.value.status == 400


def test_an_oversized_request_head_is_431() -> None:
    head = GOOD_REQUEST + b"\r\nx-pad: " + b"a" * rfc6455.MAX_REQUEST_HEAD
    with pytest.raises(HandshakeError) as caught:
        rfc6455.parse_request(head)
    assert caught.value.status == 431


def test_responses() -> None:
    accepted = rfc6455.accept_response("abc=", [(b"sec-websocket-protocol", b"relay.v1")])
    assert accepted.startswith(b"HTTP/1.1 101 Switching Protocols\r\n")
    assert b"\r\nsec-websocket-accept: abc=\r\n" in accepted
    assert accepted.endswith(b"sec-websocket-protocol: relay.v1\r\n\r\n")
    refused = rfc6455.http_response(404, [(b"x-why", b"gone")], b"nothing here")
    head, body = refused.split(b"\r\n\r\n")
    assert head.split(b"\r\n")[0] == b"HTTP/1.1 404 Not Found"
    assert b"content-length: 12" in head and b"connection: close" in head
    assert body == b"nothing here"
    custom = rfc6455.http_response(200, [(b"Content-Type", b"text/html")], b"")
    assert b"text/plain" not in custom
    assert rfc6455.http_response(599, [], b"").startswith(b"HTTP/1.1 599 \r\n")


@pytest.mark.parametrize(
    "header", [(b"x-a", b"1\r\nx-injected: 1"), (b"x-a\n", b"1"), (b"", b"1"), (b"x a", b"1")]
)
def test_header_injection_is_refused(header: tuple[bytes, bytes]) -> None:
    for _ in range(2):  # headers are checked once each and remembered: never a refused one
        with pytest.raises(ValueError):
            rfc6455.accept_response("abc=", [header])
        with pytest.raises(ValueError):
            rfc6455.http_response(400, [header], b"")


# --- the parser ------------------------------------------------------------------------


def events(parser: FrameParser) -> list[tuple[int, object]]:
    """Every complete event the parser holds."""
    out: list[tuple[int, object]] = []
    while (opcode := parser.next_event()) != NEED_DATA:
        if opcode == OP_TEXT:
            out.append((opcode, parser.text))
        elif opcode == OP_CLOSE:
            out.append((opcode, (parser.close_code, parser.close_reason)))
        else:
            out.append((opcode, parser.payload))
    return out


def parse(data: bytes, max_size: int | None = 1 << 20) -> list[tuple[int, object]]:
    parser = FrameParser(max_size)
    parser.feed(data)
    return events(parser)


def test_messages_of_every_length_encoding() -> None:
    for size in (0, 1, 125, 126, 65535, 65536, 70000):
        payload = bytes(range(256)) * (size // 256) + bytes(range(size % 256))
        assert parse(client_frame(OP_BINARY, payload)) == [(OP_BINARY, payload)]
    assert parse(client_frame(OP_TEXT, "héllo ✓".encode())) == [(OP_TEXT, "héllo ✓")]
    assert parse(client_frame(OP_TEXT, b"")) == [(OP_TEXT, "")]


def test_byte_by_byte_feeding_gives_the_same_events() -> None:
    stream = (
        client_frame(OP_BINARY, b"one")
        + client_frame(OP_TEXT, "d\u00e9j\u00e0".encode(), fin=False)
        + client_frame(OP_PING, b"p")
        + client_frame(0, b" vu")
        + client_frame(OP_BINARY, b"x" * 300)
        + close_frame(1001, b"bye")
    )
    parser = FrameParser(1 << 20)
    seen: list[tuple[int, object]] = []
    for index in range(len(stream)):
        parser.feed(stream[index : index + 1])
        seen += events(parser)
    assert seen == [
        (OP_BINARY, b"one"),
        (OP_PING, b"p"),
        (OP_TEXT, "d\u00e9j\u00e0 vu"),
        (OP_BINARY, b"x" * 300),
        (OP_CLOSE, (1001, "bye")),
    ]
    assert parser.buffered == 0


def test_fragments_are_reassembled_around_control_frames() -> None:
    data = (
        client_frame(OP_BINARY, b"ab", fin=False)
        + client_frame(OP_PING, b"1")
        + client_frame(0, b"", fin=False)
        + client_frame(OP_PONG, b"2")
        + client_frame(0, b"cd")
    )
    assert parse(data) == [(OP_PING, b"1"), (OP_PONG, b"2"), (OP_BINARY, b"abcd")]


def test_a_multibyte_character_may_straddle_text_fragments() -> None:
    encoded = "€".encode()
    data = client_frame(OP_TEXT, encoded[:1], fin=False) + client_frame(0, encoded[1:])
    assert parse(data) == [(OP_TEXT, "€")]


def test_close_frames() -> None:
    assert parse(client_frame(OP_CLOSE, b"")) == [(OP_CLOSE, (1005, ""))]
    assert parse(close_frame(4000, "fin ✓".encode())) == [(OP_CLOSE, (4000, "fin ✓"))]
    parser = FrameParser(None)
    parser.feed(close_frame(1000) + client_frame(OP_BINARY, b"after"))
    assert events(parser) == [(OP_CLOSE, (1000, ""))]
    assert parser.payload == struct.pack("!H", 1000)
    parser.feed(client_frame(OP_BINARY, b"later"))
    assert parser.next_event() == NEED_DATA


def test_a_length_not_in_the_fewest_bytes_is_accepted() -> None:
    data = bytes((0x82, 0x80 | 126)) + struct.pack("!H", 3) + b"\0\0\0\0" + b"abc"
    assert parse(data) == [(OP_BINARY, b"abc")]


def test_a_partial_frame_waits_for_more() -> None:
    frame = client_frame(OP_BINARY, b"x" * 1000)
    parser = FrameParser(None)
    parser.feed(frame[:700])
    assert parser.next_event() == NEED_DATA
    assert parser.buffered == 700
    parser.feed(frame[700:] + frame[:1])
    assert events(parser) == [(OP_BINARY, b"x" * 1000)]
    assert parser.buffered == 1


def refusal(
    data: bytes, max_size: int | None = 1000, max_fragments: int | None = None
) -> ProtocolError:
    parser = FrameParser(max_size, max_fragments)
    parser.feed(data)
    with pytest.raises(ProtocolError) as caught:
        events(parser)
    # A failed parser is finished: it ignores what follows.
    parser.feed(client_frame(OP_BINARY, b"more"))
    assert parser.next_event() == NEED_DATA
    return caught.value


@pytest.mark.parametrize(
    "data",
    [
        *(client_frame(OP_BINARY, b"x", rsv=rsv) for rsv in range(1, 8)),
        *(client_frame(op, b"x") for op in (3, 4, 5, 6, 7, 11, 12, 13, 14, 15)),
        client_frame(OP_BINARY, b"x", mask=None),
        client_frame(OP_PING, b"", mask=None),
        client_frame(OP_PING, b"p" * 126),
        client_frame(OP_CLOSE, struct.pack("!H", 1000) + b"r" * 124),
        client_frame(OP_PING, b"p", fin=False),
        client_frame(0, b"orphan"),
        client_frame(OP_BINARY, b"a", fin=False) + client_frame(OP_BINARY, b"b"),
        client_frame(OP_TEXT, b"a", fin=False) + client_frame(OP_TEXT, b"b"),
        client_frame(OP_CLOSE, b"\x03"),
        bytes((0x82, 0xFF)) + struct.pack("!Q", 1 << 63) + b"mask",
    ],
)
def test_protocol_errors_close_1002(data: bytes) -> None:
    error = refusal(data, max_size=None)
    assert type(error) is ProtocolError
    assert error.code == 1002


@pytest.mark.parametrize("code", [0, 999, 1004, 1005, 1006, 1015, 1016, 2000, 2999, 5000, 65535])
def test_undefined_or_reserved_close_codes_close_1002(code: int) -> None:
    assert refusal(close_frame(code)).code == 1002


@pytest.mark.parametrize("code", [1000, 1001, 1002, 1003, 1007, 1011, 1012, 1013, 1014, 3000, 4999])
def test_defined_close_codes_are_accepted(code: int) -> None:
    assert parse(close_frame(code)) == [(OP_CLOSE, (code, ""))]


@pytest.mark.parametrize(
    "data",
    [
        client_frame(OP_TEXT, b"\xff"),
        client_frame(OP_TEXT, b"ok", fin=False) + client_frame(0, b"\xc3\x28"),
        client_frame(OP_TEXT, "€".encode()[:2]),  # truncated at the end of the message
        close_frame(1000, b"\xed\xa0\x80"),  # a surrogate
    ],
)
def test_invalid_utf8_closes_1007(data: bytes) -> None:
    error = refusal(data)
    assert isinstance(error, InvalidUTF8)
    assert error.code == 1007


def test_invalid_utf8_fails_at_the_first_bad_fragment() -> None:
    parser = FrameParser(None)
    parser.feed(client_frame(OP_TEXT, b"\xff", fin=False))
    with pytest.raises(InvalidUTF8):
        parser.next_event()


def test_a_message_over_max_size_is_refused_from_its_header_alone() -> None:
    header_only = client_frame(OP_BINARY, b"x" * 1001)[:8]  # 2 + 2 length + 4 mask
    error = refusal(header_only, max_size=1000)
    assert isinstance(error, MessageTooBig)
    assert error.code == 1009
    assert parse(client_frame(OP_BINARY, b"x" * 1000), max_size=1000) == [(OP_BINARY, b"x" * 1000)]


def test_max_size_counts_the_whole_fragmented_message() -> None:
    ok = client_frame(OP_BINARY, b"x" * 600, fin=False) + client_frame(0, b"y" * 400)
    assert parse(ok, max_size=1000) == [(OP_BINARY, b"x" * 600 + b"y" * 400)]
    over = client_frame(OP_BINARY, b"x" * 600, fin=False) + client_frame(0, b"y" * 401)[:8]
    assert isinstance(refusal(over, max_size=1000), MessageTooBig)


def fragments(count: int, opcode: int = OP_BINARY, piece: bytes = b"") -> bytes:
    """A message in ``count`` frames (``piece`` in each), the last one final."""
    frames = [client_frame(opcode, piece, fin=count == 1)]
    frames += [client_frame(0, piece, fin=n == count - 1) for n in range(1, count)]
    return b"".join(frames)


@pytest.mark.parametrize("opcode", [OP_BINARY, OP_TEXT])
def test_max_fragments_counts_every_frame_of_a_message_empty_ones_too(opcode: int) -> None:
    parser = FrameParser(1000, max_fragments=4)
    parser.feed(fragments(4, opcode) + fragments(4, opcode, b"a"))
    assert events(parser) == [(opcode, "" if opcode == OP_TEXT else b""),
                              (opcode, "aaaa" if opcode == OP_TEXT else b"aaaa")]  # fmt: skip
    # a fifth frame is refused from its header: its payload never needs to arrive
    error = refusal(fragments(5, opcode)[: 6 * 4 + 2], max_size=1000, max_fragments=4)
    assert isinstance(error, TooManyFragments)
    assert error.code == 1009


def test_control_frames_between_fragments_are_not_fragments() -> None:
    parser = FrameParser(1000, max_fragments=2)
    ping = client_frame(OP_PING, b"p")
    parser.feed(client_frame(OP_BINARY, b"a", fin=False) + ping * 5 + client_frame(0, b"b"))
    assert events(parser) == [(OP_PING, b"p")] * 5 + [(OP_BINARY, b"ab")]


def test_incomplete_offset_names_where_the_unfinished_message_began() -> None:
    parser = FrameParser(1000)
    whole = client_frame(OP_BINARY, b"done")
    parser.feed(whole)
    assert events(parser) == [(OP_BINARY, b"done")]
    assert parser.incomplete_offset is None  # everything fed is complete
    first = client_frame(OP_BINARY, b"x", fin=False)
    parser.feed(first + client_frame(OP_PING, b"p") + client_frame(0, b"y", fin=False))
    assert events(parser) == [(OP_PING, b"p")]
    assert parser.incomplete_offset == len(whole)  # its first frame, pings or not
    parser.feed(client_frame(0, b"z")[:3])  # the last fragment, partly
    assert events(parser) == []
    assert parser.incomplete_offset == len(whole)
    parser.feed(client_frame(0, b"z")[3:])
    assert events(parser) == [(OP_BINARY, b"xyz")]
    assert parser.incomplete_offset is None
    # a partial frame outside any fragmented message: where that frame began
    fed = len(whole) + len(first) + 7 + 7 + 7
    text = client_frame(OP_TEXT, b"partial")
    parser.feed(text[:4])
    assert events(parser) == []
    assert parser.incomplete_offset == fed
    parser.feed(text[4:-1])
    assert events(parser) == []
    assert parser.incomplete_offset == fed  # the same frame, still incomplete
    parser.feed(text[-1:] + client_frame(OP_BINARY, b"x", mask=None))
    with pytest.raises(ProtocolError):
        events(parser)
    assert parser.incomplete_offset is None  # a failed parser holds nothing


def test_exception_tree() -> None:
    assert issubclass(InvalidUTF8, ProtocolError)
    assert issubclass(MessageTooBig, ProtocolError)
    assert issubclass(TooManyFragments, ProtocolError)
    assert issubclass(ProtocolError, rfc6455.WebSocketError)
    assert issubclass(HandshakeError, rfc6455.WebSocketError)


@settings(max_examples=300)
@given(st.binary(max_size=300), st.integers(min_value=1, max_value=40))
def test_any_bytes_parse_or_raise_the_modules_own_error(data: bytes, chunk: int) -> None:
    parser = FrameParser(200)
    try:
        for start in range(0, len(data), chunk):
            parser.feed(data[start : start + chunk])
            events(parser)
    except ProtocolError:
        pass


frame_specs = st.lists(
    st.tuples(st.sampled_from([OP_BINARY, OP_TEXT, OP_PING]), st.text(max_size=200)),
    max_size=8,
)


@settings(max_examples=100)
@given(frame_specs, st.lists(st.integers(min_value=1, max_value=64), min_size=1))
def test_chunking_never_changes_the_events(specs: list[tuple[int, str]], cuts: list[int]) -> None:
    # Clipped to a control frame's 125 bytes without splitting a character.
    payloads = [(op, text.encode()[:125].decode(errors="ignore").encode()) for op, text in specs]
    stream = b"".join(client_frame(op, payload) for op, payload in payloads)
    expected = parse(stream)
    parser = FrameParser(1 << 20)
    seen: list[tuple[int, object]] = []
    position = 0
    for cut in cuts * (len(stream) // sum(cuts) + 1):
        parser.feed(stream[position : position + cut])
        position += cut
        seen += events(parser)
    assert seen == expected


# --- the writer ------------------------------------------------------------------------


def websockets_parse(data: bytes) -> WebsocketsFrame:
    """Parse a server frame with the websockets library, as an independent oracle."""
    reader = StreamReader()
    reader.feed_data(data)
    parser = WebsocketsFrame.parse(reader.read_exact, mask=False)
    try:
        next(parser)
    except StopIteration as done:
        frame: WebsocketsFrame = done.value
        return frame
    raise AssertionError("incomplete frame")


@pytest.mark.parametrize("size", [0, 1, 125, 126, 65535, 65536, 100000])
def test_server_frames_parse_as_websockets_reads_them(size: int) -> None:
    payload = b"z" * size
    frame = websockets_parse(rfc6455.encode_frame(OP_BINARY, payload))
    assert (frame.opcode.value, frame.fin, bytes(frame.data)) == (OP_BINARY, True, payload)
    if size < 126:
        assert rfc6455.BINARY_HEADERS[size] == rfc6455.frame_header(OP_BINARY, size)
        assert rfc6455.TEXT_HEADERS[size] == rfc6455.frame_header(OP_TEXT, size)


def test_close_payloads() -> None:
    payload = rfc6455.close_payload(4008, "slow")
    assert payload == b"\x0f\xa8slow"
    frame = websockets_parse(rfc6455.encode_frame(OP_CLOSE, payload))
    assert frame.opcode.value == OP_CLOSE
    assert rfc6455.close_payload(1000, "é" * 61)  # 122 bytes
    with pytest.raises(ValueError):
        rfc6455.close_payload(1000, "é" * 62)  # 124 bytes
    for code in (1005, 1006, 1015, 999, 5000):
        with pytest.raises(ValueError):
            rfc6455.close_payload(code)
