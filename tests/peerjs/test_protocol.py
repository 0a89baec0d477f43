"""The PeerJS protocol module and the pre-connect queue, with plain values (no sockets)."""

from __future__ import annotations

import contextlib
import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from relay.exceptions import BadEnvelope, RelayError, TooLarge
from relay.peerjs import protocol
from relay.peerjs.pending import PreConnectQueue
from relay.peerjs.protocol import Heartbeat, MessageType, Relayed
from relay.protocol import codec
from relay.protocol.codes import CloseCode, ErrorCode

LIMITS = protocol.Limits(max_frame_bytes=1024, max_depth=4, max_id_length=64)


def parse(message: object, own_id: str = "alice") -> Heartbeat | Relayed:
    return protocol.parse(json.dumps(message), own_id, LIMITS)


def test_heartbeat_and_relayed_messages() -> None:
    assert parse({"type": "HEARTBEAT"}) == Heartbeat()
    offer = parse({"type": "OFFER", "dst": "bob", "payload": {"sdp": "v=0", "connectionId": "c"}})
    assert offer == Relayed(MessageType.OFFER, "bob", '{"sdp":"v=0","connectionId":"c"}')
    # src equal to the sender's own id is allowed; other fields are dropped
    leave = parse({"type": "LEAVE", "dst": "bob", "src": "alice", "extra": [1]})
    assert leave == Relayed(MessageType.LEAVE, "bob", None)


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("{not json", "malformed JSON"),
        ('{"type": "OFFER", "dst": "bob", "payload": {"x": NaN}}', "malformed JSON"),
        ("[1, 2]", "JSON object"),
        ('"OFFER"', "JSON object"),
        ("{}", "unknown message type"),
        ('{"type": "NOPE", "dst": "bob"}', "unknown message type"),
        ('{"type": 5, "dst": "bob"}', "unknown message type"),
        ('{"type": "EXPIRE", "dst": "bob"}', "unknown message type"),  # only the server sends it
        ('{"type": "OPEN"}', "unknown message type"),
        ('{"type": "OFFER", "payload": {}}', "dst is required"),
        ('{"type": "OFFER", "dst": 7, "payload": {}}', "dst is required"),
        ('{"type": "OFFER", "dst": "", "payload": {}}', "dst is required"),
        ('{"type": "OFFER", "dst": "bob", "src": "carol", "payload": {}}', "src is stamped"),
        ('{"type": "OFFER", "dst": "bob", "src": 1, "payload": {}}', "src is stamped"),
        ('{"type": "OFFER", "dst": "bob"}', "needs a payload object"),
        ('{"type": "CANDIDATE", "dst": "bob", "payload": [1]}', "needs a payload object"),
        ('{"type": "LEAVE", "dst": "bob", "payload": [[[[[1]]]]]}', "deeper than 4"),
        ("[" * 100_000, "malformed JSON"),  # Python's own recursion limit
        ('{"type": "OFFER", "dst": "bob", "payload": {"n": 1' + "0" * 5000 + "}}", "malformed"),
        # JSON that parses, but that JSON cannot carry on
        ('{"type": "OFFER", "dst": "bob", "payload": {"x": 1e400}}', "cannot carry"),
        ('{"type": "OFFER", "dst": "bob", "payload": {"x": [-1E+999]}}', "cannot carry"),
        ('{"type": "LEAVE", "dst": "bob", "payload": "\\ud800"}', "cannot carry"),
        ('{"type": "OFFER", "dst": "bob", "payload": {"\\udc00x": 1}}', "cannot carry"),
        # a dst no peer can hold
        ('{"type": "LEAVE", "dst": "' + "x" * 65 + '"}', "dst is not an id"),
        ('{"type": "LEAVE", "dst": "a__b"}', "dst is not an id"),
        ('{"type": "LEAVE", "dst": "@peerjs/bob"}', "dst is not an id"),
        ('{"type": "LEAVE", "dst": "\\ud800"}', "dst is not an id"),
    ],
)
def test_bad_messages_are_refused_with_a_reason(text: str, words: str) -> None:
    limits = protocol.Limits(max_frame_bytes=1_000_000, max_depth=4, max_id_length=64)
    with pytest.raises(BadEnvelope) as refused:
        protocol.parse(text, "alice", limits)
    assert words in refused.value.message
    assert protocol.close_code(refused.value.code) == CloseCode.POLICY_VIOLATION


def test_a_refusal_never_echoes_what_it_refuses() -> None:
    with pytest.raises(RelayError) as refused:
        parse({"type": "OFFER", "dst": "y" * 50_000, "payload": {}})
    assert len(refused.value.message) < 200


def test_an_oversize_message_is_refused_1009_by_its_utf8_size() -> None:
    text = json.dumps({"type": "LEAVE", "dst": "bob", "payload": "é" * 500}, ensure_ascii=False)
    assert len(text) < 1024 < len(text.encode())
    with pytest.raises(TooLarge) as refused:
        protocol.parse(text, "alice", LIMITS)
    assert protocol.close_code(refused.value.code) == CloseCode.MESSAGE_TOO_BIG


# Text as JSON escapes can spell it: lone surrogates included (st.text would
# merge the two alphabets and leave the surrogates out).
TEXT = st.lists(st.characters() | st.characters(categories=["Cs"]), max_size=8).map("".join)
JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | TEXT,
    lambda inner: st.lists(inner) | st.dictionaries(TEXT, inner),
    max_leaves=20,
)
FIELDS = st.sampled_from(["type", "dst", "src", "payload"]) | TEXT
TYPES = st.sampled_from([t.value for t in MessageType]) | JSON
DSTS = st.sampled_from(["bob", "b-o b", "x" * 64, "x" * 65, "", "@peerjs/bob"]) | JSON


def json_text(value: object) -> str:
    """``value`` as a client may send it: lone surrogates escaped, ``"__huge__"`` as 1e400."""
    return json.dumps(value).replace('"__huge__"', "1e400")


@given(st.dictionaries(FIELDS, JSON) | JSON, TYPES, DSTS, st.booleans())
def test_any_json_is_parsed_or_refused_never_an_exception(
    value: object, kind: object, dst: object, huge: bool
) -> None:
    if isinstance(value, dict):
        value["type"] = kind
        value["dst"] = dst
        if huge:
            value["payload"] = {"n": "__huge__"}
    with contextlib.suppress(RelayError):
        message = protocol.parse(json_text(value), "alice", LIMITS)
        if isinstance(message, Relayed):
            assert message.type in protocol.RELAYED
            assert protocol.valid_id(message.dst, LIMITS.max_id_length)
            # what goes on: msgpack (UTF-8) through the hub, JSON to the other client
            frame = codec.encode_msg(protocol.NAMESPACE + "alice", protocol.to_relay(message))
            assert protocol.unpack(frame) is not None


@pytest.mark.parametrize(
    ("number", "carried"),
    [("1e400", None), ("-1e400", None), ("1E+999", None), ("1e-400", 0.0), ("1e308", 1e308)],
)
def test_numbers_past_a_double_are_refused(number: str, carried: float | None) -> None:
    text = '{"type": "OFFER", "dst": "bob", "payload": {"n": ' + number + "}}"
    if carried is None:
        with pytest.raises(BadEnvelope, match="cannot carry"):
            protocol.parse(text, "alice", LIMITS)
    else:  # a double after all (0.0 for one too small): JSON carries it
        message = protocol.parse(text, "alice", LIMITS)
        assert isinstance(message, Relayed)
        assert json.loads(message.payload or "") == {"n": carried}


@pytest.mark.parametrize(
    ("peer_id", "valid"),
    [
        ("alice", True),
        ("a-b_c d", True),
        ("6f1c2d3e-0a1b-4c5d-8e9f-001122334455", True),  # what GET /id hands out
        ("x" * 64, True),
        ("x" * 65, False),
        ("", False),
        ("bad id!", False),
        ("a__b", False),
        (" lead", False),
        ("trail-", False),
        ("@server", False),
        ("tab\there", False),
        (5, False),
    ],
)
def test_ids_follow_the_peerjs_client_rule(peer_id: object, valid: bool) -> None:
    assert protocol.valid_id(peer_id, 64) is valid


def texts(frame: bytes, own_id: str) -> list[str]:
    """What a PeerJS socket of ``own_id`` gets for one frame the hub wrote to it."""
    envelope = protocol.unpack(frame)
    return [] if envelope is None else protocol.from_relay(envelope, own_id)


def test_a_relayed_message_crosses_the_hub_and_comes_out_with_src_stamped() -> None:
    message = parse({"type": "ANSWER", "dst": "bob", "payload": {"sdp": "ü"}})
    assert isinstance(message, Relayed)
    frame = codec.encode_msg(
        protocol.NAMESPACE + "alice", protocol.to_relay(message), ev=message.type
    )
    [text] = texts(frame, "bob")
    assert json.loads(text) == {
        "type": "ANSWER",
        "src": "alice",
        "dst": "bob",
        "payload": {"sdp": "ü"},
    }
    leave = parse({"type": "LEAVE", "dst": "bob"})
    assert isinstance(leave, Relayed)
    frame = codec.encode_msg(protocol.NAMESPACE + "alice", protocol.to_relay(leave), ev="LEAVE")
    assert [json.loads(t) for t in texts(frame, "bob")] == [
        {"type": "LEAVE", "src": "alice", "dst": "bob"}
    ]


def test_late_refusals_become_expire_and_other_errors_error() -> None:
    late = codec.encode_err("peer-offline", "gone", to=[protocol.NAMESPACE + "bob", "native"])
    assert [json.loads(t) for t in texts(late, "alice")] == [
        {"type": "EXPIRE", "src": "bob", "dst": "alice"}
    ]
    one = codec.encode_err("overloaded", "full", to=protocol.NAMESPACE + "bob")
    assert json.loads(texts(one, "alice")[0])["type"] == "EXPIRE"
    expired = codec.encode_err("unauthorized", "token expired")
    assert [json.loads(t) for t in texts(expired, "alice")] == [
        {"type": "ERROR", "payload": {"msg": "token expired"}}
    ]


@pytest.mark.parametrize(
    "frame",
    [
        b"\xc1",
        codec.pack_value([1]),
        codec.encode({"type": "presence", "room": "r", "peer": "x", "event": "join"}),
        codec.encode_msg("native", codec.pack_value("hi"), ev="OFFER"),  # not a PeerJS sender
        codec.encode_msg(protocol.NAMESPACE + "a", codec.pack_value("{}"), ev="chat"),
        codec.encode_msg(protocol.NAMESPACE + "a", codec.pack_value("{}"), ev="OFFER", room="r"),
        codec.encode_msg(protocol.NAMESPACE + "a", codec.pack_value(3), ev="OFFER"),
        codec.encode_ok(1),
    ],
)
def test_frames_of_no_meaning_to_peerjs_give_nothing(frame: bytes) -> None:
    assert texts(frame, "alice") == []


def old_relayed_text(kind: str, src: str, dst: str, payload: str | None) -> str:
    """The relayed text as the relay wrote it when it parsed the payload again on the way out."""
    message: dict[str, object] = {"type": kind, "src": src, "dst": dst}
    if payload is not None:
        message["payload"] = json.loads(payload)
    return json.dumps(message, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


@pytest.mark.parametrize(
    "payload",
    [
        r'{"sdp": "v=0\r\na=é", "emoji": "😀", "ls": "\u2028", "q": "\"\\\/", "c": "\u0001"}',
        '{"a": {"b": [1, [2, {"c": null}]], "t": true, "f": false}, "": {}}',
        '{"big": 1180591620717411303424, "neg": -5, "f": 1.5e300, "tiny": 1e-400, "z": -0.0}',
        '{"dup": 1, "dup": 2, "order": [3, 2, 1]}',
        r'{"escaped": "\u00e9\ud83d\ude00"}',
    ],
)
def test_a_payload_is_written_once_and_spliced_into_what_the_destination_reads(
    payload: str,
) -> None:
    text = '{"type": "OFFER", "dst": "bob", "payload": ' + payload + "}"
    message = protocol.parse(text, "alice", protocol.Limits(4096, 32, 64))
    assert isinstance(message, Relayed) and message.payload is not None
    frame = codec.encode_msg(protocol.NAMESPACE + "alice", protocol.to_relay(message), ev="OFFER")
    [out] = texts(frame, "bob")
    # the very text the relay sent before it stopped parsing payloads twice
    assert out == old_relayed_text("OFFER", "alice", "bob", message.payload)
    assert json.loads(out)["payload"] == json.loads(payload)


@given(st.dictionaries(TEXT, JSON), st.sampled_from(["OFFER", "ANSWER", "CANDIDATE", "LEAVE"]))
def test_any_payload_that_parses_comes_out_as_before(payload: object, kind: str) -> None:
    with contextlib.suppress(RelayError):  # a lone surrogate: refused as before
        message = protocol.parse(
            json_text({"type": kind, "dst": "bob", "payload": payload}), "alice", LIMITS
        )
        assert isinstance(message, Relayed)
        frame = codec.encode_msg(protocol.NAMESPACE + "alice", protocol.to_relay(message), ev=kind)
        assert texts(frame, "bob") == [old_relayed_text(kind, "alice", "bob", message.payload)]


def test_the_payload_is_not_parsed_on_the_way_out(monkeypatch: pytest.MonkeyPatch) -> None:
    message = parse({"type": "OFFER", "dst": "bob", "payload": {"sdp": "v=0"}})
    assert isinstance(message, Relayed)
    frame = codec.encode_msg(protocol.NAMESPACE + "alice", protocol.to_relay(message), ev="OFFER")

    def no_parsing(*args: object, **kwargs: object) -> object:
        raise AssertionError("the payload was parsed again")

    monkeypatch.setattr(json, "loads", no_parsing)
    # Only a PeerJS session sends from the namespace, so what ``d`` holds is
    # what its parse wrote, and goes on as it is (even text that is no JSON).
    assert texts(frame, "bob") == [
        '{"type":"OFFER","src":"alice","dst":"bob","payload":{"sdp":"v=0"}}'
    ]
    odd = codec.encode_msg(protocol.NAMESPACE + "a", codec.pack_value("{nope"), ev="OFFER")
    assert texts(odd, "bob") == ['{"type":"OFFER","src":"a","dst":"bob","payload":{nope}']


def test_refusals_close_by_their_error_code() -> None:
    assert protocol.close_code(ErrorCode.BAD_ENVELOPE) == CloseCode.POLICY_VIOLATION
    assert protocol.close_code(ErrorCode.TOO_LARGE) == CloseCode.MESSAGE_TOO_BIG
    assert protocol.close_code(ErrorCode.RATE_LIMITED) == CloseCode.RATE_LIMITED
    assert protocol.close_code(ErrorCode.INTERNAL) == CloseCode.INTERNAL_ERROR
    assert protocol.close_code(ErrorCode.UNKNOWN_TYPE) == CloseCode.POLICY_VIOLATION


def test_server_messages_are_the_ones_peerjs_clients_read() -> None:
    assert json.loads(protocol.server_message(MessageType.OPEN)) == {"type": "OPEN"}
    assert json.loads(protocol.server_message(MessageType.ID_TAKEN, msg="ID is taken")) == {
        "type": "ID-TAKEN",
        "payload": {"msg": "ID is taken"},
    }


# --- the pre-connect queue ---------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def relayed(dst: str, payload: str = "{}", kind: MessageType = MessageType.OFFER) -> Relayed:
    return Relayed(kind, dst, payload)


def test_held_messages_come_out_in_order_per_destination() -> None:
    queue = PreConnectQueue(max_messages=10, max_bytes=1000, expire_seconds=5, clock=Clock())
    assert not queue
    for n in range(3):
        assert queue.add(relayed("bob", f'{{"n":{n}}}'))
    assert queue.add(relayed("carol"))
    assert queue.holds("bob") and queue.destinations() == ["bob", "carol"]
    out = []
    while (message := queue.first("bob")) is not None:
        out.append(message.payload)
        queue.delivered("bob")
    assert out == ['{"n":0}', '{"n":1}', '{"n":2}']
    assert not queue.holds("bob") and queue


def test_the_queue_is_bounded_in_messages_and_bytes() -> None:
    queue = PreConnectQueue(max_messages=2, max_bytes=1000, expire_seconds=5, clock=Clock())
    assert queue.add(relayed("bob")) and queue.add(relayed("carol"))
    assert not queue.add(relayed("dave"))
    queue.drop("bob")
    assert queue.add(relayed("dave"))
    by_bytes = PreConnectQueue(max_messages=10, max_bytes=20, expire_seconds=5, clock=Clock())
    assert by_bytes.add(relayed("bob", '"' + "é" * 7 + '"'))  # 3 + 16 bytes
    assert not by_bytes.add(relayed("bob", "1"))
    by_bytes.delivered("bob")
    assert by_bytes.add(relayed("bob", "1"))


def test_a_destination_expires_from_its_first_held_message() -> None:
    clock = Clock()
    queue = PreConnectQueue(max_messages=10, max_bytes=1000, expire_seconds=5, clock=clock)
    queue.add(relayed("bob"))
    clock.now += 3
    queue.add(relayed("bob"))
    queue.add(relayed("carol"))
    assert queue.expired() == []
    clock.now += 2
    assert queue.expired() == ["bob"]
    assert not queue.holds("bob") and queue.holds("carol")
    clock.now += 3
    assert queue.expired() == ["carol"]
    assert not queue
