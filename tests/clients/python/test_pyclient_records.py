"""The HTTP transport's pieces without a relay: the record reader, whatever the
chunks' boundaries, and the options that say where the transport is."""

from __future__ import annotations

import struct

import pytest
import relay_client
from relay_client._options import derive_http_url
from relay_client._records import BadRecord, Kind, Record, RecordReader, encode

RECORDS = [
    Record(Kind.KEEPALIVE, b""),
    Record(Kind.ENVELOPE, b"\x81\xa4type\xa3msg"),
    Record(Kind.ENVELOPE, bytes(range(256)) * 3),
    Record(Kind.ENVELOPE, b""),
    Record(Kind.CLOSE, b"\x82\xa4code\xcd\x03\xe8\xa6reason\xa0"),
]
BODY = b"".join(encode(r.payload, r.kind) for r in RECORDS)


def test_a_record_is_kind_length_big_endian_then_payload() -> None:
    assert encode(b"abc") == b"\x00\x00\x00\x00\x03abc"
    assert encode(b"", Kind.KEEPALIVE) == b"\x01\x00\x00\x00\x00"
    assert encode(b"x" * 258, Kind.CLOSE)[:5] == b"\x02\x00\x00\x01\x02"


def test_a_whole_body_in_one_chunk() -> None:
    reader = RecordReader()
    assert reader.feed(BODY) == RECORDS
    assert reader.pending == 0


@pytest.mark.parametrize("cut", range(1, len(BODY)))
def test_every_split_in_two_gives_the_same_records(cut: int) -> None:
    reader = RecordReader()
    assert reader.feed(BODY[:cut]) + reader.feed(BODY[cut:]) == RECORDS
    assert reader.pending == 0


def test_one_byte_at_a_time() -> None:
    reader = RecordReader()
    got: list[Record] = []
    for byte in BODY:
        got += reader.feed(bytes([byte]))
    assert got == RECORDS


def test_a_record_is_given_only_once_complete() -> None:
    reader = RecordReader()
    frame = encode(b"hello")
    assert reader.feed(frame[:4]) == []  # inside the header
    assert reader.feed(frame[4:7]) == []  # inside the payload
    assert reader.pending == 7
    assert reader.feed(frame[7:] + frame[:2]) == [Record(Kind.ENVELOPE, b"hello")]
    assert reader.pending == 2  # the next record's start is kept


def test_an_unknown_kind_is_refused() -> None:
    with pytest.raises(BadRecord, match="kind 3"):
        RecordReader().feed(b"\x03\x00\x00\x00\x00")


def test_a_payload_over_the_bound_is_refused_from_its_header() -> None:
    reader = RecordReader(max_payload=10)
    assert reader.feed(encode(b"x" * 10)) == [Record(Kind.ENVELOPE, b"x" * 10)]
    with pytest.raises(BadRecord, match="11 bytes"):
        reader.feed(struct.pack(">BI", 0, 11))  # refused before the payload arrives


@pytest.mark.parametrize(
    ("ws", "http"),
    [
        ("ws://h:8080/v1/ws", "http://h:8080/v1/http"),
        ("wss://relay.example.com/v1/ws", "https://relay.example.com/v1/http"),
        ("ws://[::1]:9/a/b/ws", "http://[::1]:9/a/b/http"),
        ("ws://h/ws", "http://h/http"),
    ],
)
def test_the_http_url_is_derived_from_the_websocket_url(ws: str, http: str) -> None:
    assert derive_http_url(ws) == http


@pytest.mark.parametrize("ws", ["ws://h:8080/v1/socket", "ws://h/", "ws://h/v1/ws?x=1"])
def test_an_http_url_that_cannot_be_derived_is_a_clear_error(ws: str) -> None:
    with pytest.raises(ValueError, match=r"cannot derive the HTTP transport's URL.*pass http_url"):
        relay_client.connect(ws, transports=["http"])
    relay_client.connect(ws, transports=["http"], http_url="http://h/v1/http")  # given: fine


def test_transports_are_checked() -> None:
    for bad in ([], ["http", "http"], ["carrier-pigeon"]):
        with pytest.raises(ValueError, match="transports must be distinct values"):
            relay_client.connect("ws://h/v1/ws", transports=bad)
    with pytest.raises(ValueError, match="invalid HTTP transport URL"):
        relay_client.connect("ws://h/v1/ws", http_url="ws://h/v1/http")
