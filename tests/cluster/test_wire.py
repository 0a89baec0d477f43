"""Inter-node messages: round trips, and nothing malformed gets through."""

from __future__ import annotations

import contextlib

import msgpack
import pytest
from hypothesis import given
from hypothesis import strategies as st

from relay.broker import wire
from relay.values import Handover, Proof, Undelivered


def test_round_trips() -> None:
    u: Undelivered = ("alice", 7, True)
    carried = [("bob", 12, b"\x80", u), ("carol", 3, b"", None)]
    acks = ("inc-b", [(5, bytearray(b"\x00\x01\x05")), (9, bytearray(b"\x06"))])
    assert wire.decode(wire.encode_batch("a", "inc-a", 4, 6, carried, acks)) == wire.Batch(
        "a", "inc-a", 4, 6, carried, ("inc-b", [(5, b"\x00\x01\x05"), (9, b"\x06")])
    )
    assert wire.decode(wire.encode_batch("a", "i", 1, 0, [], None)) == wire.Batch(
        "a", "i", 1, 0, [], None
    )
    assert wire.decode(wire.encode_status("a", "i", 9, 3)) == wire.Status("a", "i", 9, 3)
    same = [("bob", 1, b"1", u), ("bob", 1, b"2", ("alice", 7, True))]
    decoded = wire.decode(wire.encode_batch("a", "i", 1, 1, same, None))
    assert isinstance(decoded, wire.Batch) and decoded.deliveries == same
    assert wire.decode(wire.encode_room("r", b"f", None, True)) == wire.RoomFrame(
        "r", b"f", None, True
    )
    request = wire.decode(wire.encode_handover_request("c1", "bob", Proof("s", False), "n1"))
    assert request == wire.HandoverRequest("c1", "bob", Proof("s", False), "n1")
    handover = Handover({"r": True}, [(b"q", "msg", ("a", "x", False))],
                        [(b"w", "err", None)], 3)  # fmt: skip
    assert wire.decode(wire.encode_handover_reply("c1", handover)) == wire.HandoverReply(
        "c1", handover
    )
    assert wire.decode(wire.encode_handover_reply("c1", None)).handover is None
    # What a decider admitted the session with moves along (relay.decisions.Admitted).
    admitted = handover._replace(meta={"plan": "pro", "n": [1, 2]}, granted=("chat-*",))
    assert wire.decode(wire.encode_handover_reply("c1", admitted)).handover == admitted
    assert wire.decode(wire.encode_request("c2", "peer", b"\x00", "n1", 500)) == wire.Request(
        "c2", "peer", b"\x00", "n1", 500
    )
    assert wire.decode(wire.encode_reply("c2", b"")) == wire.Reply("c2", b"", None)
    refused = wire.encode_reply("c2", None, wire.BUSY)
    assert wire.decode(refused) == wire.Reply("c2", None, wire.BUSY)
    assert wire.decode(wire.encode_probe("n")) == wire.Probe("n")


@pytest.mark.parametrize(
    "message",
    [
        {"t": "b", "n": "a", "i": "i", "l": 1, "s": 1, "d": [["", 1, b"x", None]], "a": None},
        {"t": "b", "n": "a", "i": "i", "l": 1, "s": 1, "d": [["b", 1, "x", None]], "a": None},
        {"t": "b", "n": "a", "i": "i", "l": 1, "s": 1, "d": [["b", "1", b"x", None]], "a": None},
        {"t": "b", "n": "a", "i": "i", "l": 1, "s": 1, "d": [["b", 1, b"x", ["a", 1.5, True]]]},
        {"t": "b", "n": "a", "i": "i", "l": 1, "s": 1, "d": [["b", 1, b"x", ["a", True, True]]]},
        {"t": "b", "n": "a", "i": "i", "l": 1, "s": 1, "d": [["b", 1, b"x", ["a", 1]]]},
        {"t": "b", "n": "a", "i": "i", "l": 1, "s": 1, "d": [["b", 1, b"x", ["a", [1], True]]]},
        {"t": "b", "n": "a", "i": "i", "l": -1, "s": 1, "d": [], "a": None},
        {"t": "b", "n": "a", "i": "i", "l": 1, "s": 1, "d": [], "a": ["i", [[1, b"\x08"]]]},
        {"t": "b", "n": "a", "i": "i", "l": 1, "s": 1, "d": [], "a": ["i", [[1, "codes"]]]},
        {"t": "b", "n": "a", "i": "i", "l": 1, "s": 1, "d": [], "a": ["i", [1, b"\x00"]]},
        {"t": "q", "n": "a", "i": "i", "u": True, "l": 1},
        {"t": "r", "m": "r", "f": b"x", "x": None, "o": 1},
        {"t": "hq", "c": "c", "p": "bob", "s": 5, "v": False, "n": "n"},
        {"t": "hr", "c": "c", "h": {"rooms": {"r": 1}, "queue": [], "written": [], "count": 0}},
        {"t": "hr", "c": "c", "h": {"rooms": {}, "queue": [[b"x", "?", None]], "count": 0}},
        {"t": "hr", "c": "c", "h": {"rooms": {}, "queue": [], "written": [], "count": -1}},
        {"t": "q", "n": "a", "i": "i", "u": 3},
        {"t": "rq", "c": "c", "k": "peer", "b": "text", "n": "n", "w": 5},
        {"t": "rq", "c": "c", "k": "", "b": b"", "n": "n", "w": 5},
        {"t": "rq", "c": "c", "k": "peer", "b": b"", "n": "n", "w": -1},
        {"t": "rq", "c": "c", "k": "peer", "b": b"", "w": 5},
        {"t": "rp", "c": "c", "b": b"x", "e": "busy"},
        {"t": "rp", "c": "c", "b": None, "e": None},
        {"t": "rp", "c": "c", "b": None, "e": "why"},
        {"t": "rp", "c": "c", "b": 1, "e": None},
        {"t": "nope"},
        [1, 2],
    ],
)
def test_malformed_messages_are_refused(message: object) -> None:
    with pytest.raises(wire.WireError):
        wire.decode(msgpack.packb(message))


@given(st.binary(max_size=256))
def test_arbitrary_bytes_never_crash(data: bytes) -> None:
    with contextlib.suppress(wire.WireError):
        wire.decode(data)


def test_declared_lengths_are_bounded() -> None:
    with pytest.raises(wire.WireError):
        wire.decode(b"\xdd\xff\xff\xff\xff")  # an array of 4 billion items, 5 bytes long
    with pytest.raises(wire.WireError):
        wire.decode(b"\xc6\xff\xff\xff\xf0")
