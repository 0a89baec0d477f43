"""The codec alone: bytes in, envelopes or the codec's own errors out."""

from __future__ import annotations

import contextlib
import struct

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from relay.exceptions import BadEnvelope, RelayError, TooLarge, UnknownType
from relay.protocol.codec import (
    CodecLimits,
    WelcomeEncoder,
    decode,
    encode,
    encode_err,
    encode_msg,
    encode_ok,
)
from relay.protocol.envelopes import Hello, Join, Leave, Ping, Publish, Refresh, Send
from relay.settings import Settings

LIMITS = CodecLimits()


def pack(envelope: object) -> bytes:
    return msgpack.packb(envelope, use_bin_type=True)


def nested(depth: int) -> object:
    value: object = 0
    for _ in range(depth):
        value = [value]
    return value


def test_decodes_every_client_type() -> None:
    assert decode(pack({"type": "hello", "id": "alice", "token": "t"}), LIMITS) == Hello(
        peer_id="alice", token="t"
    )
    assert decode(pack({"type": "hello"}), LIMITS) == Hello()
    send = decode(
        pack({"type": "send", "to": ["a", "b", "a"], "d": 1, "id": 7, "rid": "r"}), LIMITS
    )
    assert send == Send(to=("a", "b"), d_raw=b"\x01", id=7, rid="r")
    assert decode(pack({"type": "pub", "room": "r", "d": None, "echo": True}), LIMITS) == Publish(
        room="r", d_raw=b"\xc0", echo=True
    )
    assert decode(pack({"type": "join", "room": "r", "presence": True}), LIMITS) == Join(
        room="r", presence=True
    )
    assert decode(pack({"type": "leave", "room": "r", "id": "x"}), LIMITS) == Leave(
        room="r", id="x"
    )
    assert decode(pack({"type": "ping"}), LIMITS) == Ping()
    assert decode(pack({"type": "refresh", "token": "t"}), LIMITS) == Refresh(token="t")


def test_payload_bytes_are_kept_exactly() -> None:
    # float32, a non-minimal int, an ext type and a map with int keys survive untouched
    payload = b"\x84\xca\x3f\x80\x00\x00\xcd\x00\x01\xd4\x05\x01\xc0\x01\x02\xa1x\xc2"
    frame = b"\x83\xa4type\xa4send\xa2to\xa3bob\xa1d" + payload
    envelope = decode(frame, LIMITS)
    assert isinstance(envelope, Send)
    assert envelope.d_raw == payload
    out = encode_msg("alice", envelope.d_raw, ev="e", rid=1)
    assert out.endswith(payload + b"\xa2ev\xa1e\xa3rid\x01") or payload in out
    decoded = msgpack.unpackb(out, strict_map_key=False, raw=False)
    assert decoded["from"] == "alice"
    assert decoded["type"] == "msg"


@pytest.mark.parametrize(
    ("frame", "message"),
    [
        (b"", "must be a msgpack map"),
        (pack([1, 2]), "must be a msgpack map"),
        (pack("hello"), "must be a msgpack map"),
        (b"\x81", "truncated"),
        (pack({"type": "send", "to": "b", "d": 1})[:-1], "truncated"),
        (b"\x81\xa4type\xc1", "malformed"),
        (pack({"type": "ping"}) + b"\x00", "trailing bytes"),
        (pack({1: "ping"}), "keys must be strings"),
        (pack({"type": 5}), "type must be a string"),
        (pack({"type": "send", "d": 1}), "to must be"),
        (pack({"type": "send", "to": 5, "d": 1}), "to must be"),
        (pack({"type": "send", "to": [], "d": 1}), "to must list"),
        (pack({"type": "send", "to": ["x"] * 101, "d": 1}), "to must list"),
        (pack({"type": "send", "to": "b"}), "d is required"),
        (pack({"type": "send", "to": "a b", "d": 1}), "to must be"),
        (pack({"type": "send", "to": "@server", "d": 1}), "to must be"),
        (pack({"type": "send", "to": "x" * 65, "d": 1}), "to must be"),
        (pack({"type": "send", "to": "b", "d": 1, "ev": 3}), "ev must be"),
        (pack({"type": "send", "to": "b", "d": 1, "id": [1]}), "id must be"),
        (pack({"type": "send", "to": "b", "d": 1, "id": "x" * 65}), "id must be"),
        (pack({"type": "send", "to": "b", "d": 1, "rid": 1.5}), "rid must be"),
        (pack({"type": "send", "to": "b", "d": 1, "from": "mallory"}), "from is stamped"),
        (pack({"type": "pub", "room": "", "d": 1}), "room must be"),
        (pack({"type": "pub", "room": "r", "d": 1, "echo": "yes"}), "echo must be"),
        (pack({"type": "join", "room": None}), "room must be"),
        (pack({"type": "hello", "id": 12}), "id must be"),
        (pack({"type": "hello", "token": b"bytes"}), "token must be"),
        (pack({"type": "refresh"}), "token is required"),
        (b"\x81\xa4type\xa2\xff\xfe", "invalid UTF-8"),
    ],
)
def test_refuses_bad_envelopes(frame: bytes, message: str) -> None:
    with pytest.raises(BadEnvelope, match=message):
        decode(frame, LIMITS)


def test_unknown_type_is_its_own_error_and_keeps_the_request_id() -> None:
    with pytest.raises(UnknownType) as caught:
        decode(pack({"type": "msg", "id": 4}), LIMITS)
    assert caught.value.request_id == 4


def test_bad_envelope_keeps_a_readable_request_id() -> None:
    with pytest.raises(BadEnvelope) as caught:
        decode(pack({"type": "send", "to": 5, "d": 1, "id": "req-1"}), LIMITS)
    assert caught.value.request_id == "req-1"


def test_frame_over_the_limit_is_too_large() -> None:
    limits = CodecLimits(max_frame_bytes=100)
    with pytest.raises(TooLarge):
        decode(pack({"type": "send", "to": "b", "d": b"x" * 100}), limits)


@pytest.mark.parametrize(
    "header",
    [
        b"\xdd\xff\xff\xff\xff",  # array of 4 billion
        b"\xdf\xff\xff\xff\xff",  # map of 4 billion
        b"\xc6\xff\xff\xff\xff",  # bin of 4 GiB
        b"\xdb\xff\xff\xff\xff",  # str of 4 GiB
        b"\xc9\xff\xff\xff\xff\x01",  # ext of 4 GiB
    ],
)
def test_huge_declared_lengths_are_refused_without_allocating(header: bytes) -> None:
    frame = b"\x83\xa4type\xa4send\xa2to\xa1b\xa1d" + header + b"\x00" * 8
    with pytest.raises(BadEnvelope):
        decode(frame, LIMITS)
    top = header + b"\x00" * 8
    with pytest.raises(BadEnvelope):
        decode(top, LIMITS)


def test_nesting_is_bounded() -> None:
    ok = pack({"type": "send", "to": "b", "d": nested(32)})
    assert isinstance(decode(ok, LIMITS), Send)
    with pytest.raises(BadEnvelope, match="deeper than 32"):
        decode(pack({"type": "send", "to": "b", "d": nested(33)}), LIMITS)
    maps: object = {"k": 1}
    for _ in range(40):
        maps = {"k": maps}
    with pytest.raises(BadEnvelope, match="deeper"):
        decode(pack({"type": "pub", "room": "r", "d": maps}), LIMITS)


def test_pathological_nesting_hits_msgpacks_own_stack_first() -> None:
    frame = b"\x83\xa4type\xa4send\xa2to\xa1b\xa1d" + b"\x91" * 50_000 + b"\x00"
    with pytest.raises(BadEnvelope):
        decode(frame, LIMITS)


def test_many_containers_but_shallow_payload_passes_the_exact_scan() -> None:
    payload = [[i] for i in range(500)] + [{"a": b"\x91" * 300}, struct.pack(">d", 1.5)]
    envelope = decode(pack({"type": "send", "to": "b", "d": payload}), LIMITS)
    assert isinstance(envelope, Send)
    assert msgpack.unpackb(envelope.d_raw) == payload


def test_server_envelopes() -> None:
    assert msgpack.unpackb(encode_ok(3, queued=True)) == {"type": "ok", "id": 3, "queued": True}
    assert msgpack.unpackb(encode_err("peer-offline", "gone", request_id="a", to=["x"])) == {
        "type": "err",
        "code": "peer-offline",
        "msg": "gone",
        "id": "a",
        "to": ["x"],
    }
    assert msgpack.unpackb(encode_msg("a", b"\x01", ev="e", room="r", rid=1, re=2)) == {
        "type": "msg",
        "from": "a",
        "d": 1,
        "ev": "e",
        "room": "r",
        "rid": 1,
        "re": 2,
    }


@settings(max_examples=2000, deadline=None)
@given(st.binary(max_size=256))
def test_any_bytes_decode_or_raise_the_codecs_error(frame: bytes) -> None:
    try:
        envelope = decode(frame, LIMITS)
    except RelayError:
        return
    assert isinstance(envelope, Hello | Refresh | Send | Publish | Join | Leave | Ping)


msgpack_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats(allow_nan=False)
    | st.text(max_size=20)
    | st.binary(max_size=20),
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(st.text(max_size=5) | st.integers(-100, 100), children, max_size=4)
    ),
    max_leaves=20,
)


@settings(max_examples=500, deadline=None)
@given(
    st.dictionaries(
        st.sampled_from(["type", "to", "d", "id", "ev", "room", "echo", "rid", "re", "token"]),
        msgpack_values | st.sampled_from(["send", "pub", "join", "hello", "ping", "leave"]),
    )
)
def test_any_map_decodes_or_raises_the_codecs_error(fields: dict[str, object]) -> None:
    try:
        envelope = decode(pack(fields), LIMITS)
    except RelayError:
        return
    if isinstance(envelope, Send | Publish):
        assert msgpack.unpackb(envelope.d_raw, strict_map_key=False) == fields["d"]


@settings(max_examples=300, deadline=None)
@given(msgpack_values, st.binary(max_size=8))
def test_payload_survives_and_mutations_never_crash(payload: object, noise: bytes) -> None:
    frame = pack({"type": "send", "to": "bob", "d": payload})
    envelope = decode(frame, LIMITS)
    assert isinstance(envelope, Send)
    assert msgpack.unpackb(envelope.d_raw, strict_map_key=False) == payload
    for cut in range(0, len(frame), max(1, len(frame) // 8)):
        mutated = frame[:cut] + noise + frame[cut + len(noise) :]
        with contextlib.suppress(RelayError):
            decode(mutated, LIMITS)


@settings(max_examples=300)
@given(
    peer_id=st.text(min_size=1, max_size=300),
    resume=st.text(max_size=64),
    node=st.text(max_size=40),
    resumed=st.booleans(),
)
def test_a_welcome_is_the_map_encode_gives(
    peer_id: str, resume: str, node: str, resumed: bool
) -> None:
    limits = Settings().advertised_limits()
    welcome = WelcomeEncoder(limits, node).encode(peer_id, resume, resumed=resumed)
    expected = {
        "type": "welcome", "id": peer_id, "resume": resume, "limits": limits, "node": node,
        "resumed": resumed,
    }  # fmt: skip
    assert welcome == encode(expected)
    assert msgpack.unpackb(welcome) == expected
