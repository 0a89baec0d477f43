"""Inter-node messages: round trips, and nothing malformed gets through."""

from __future__ import annotations

import contextlib

import msgpack
import pytest
from hypothesis import given
from hypothesis import strategies as st

from relay.broker import wire
from relay.broker.base import Delivery, Handover, Proof, Undelivered


def test_round_trips() -> None:
    u: Undelivered = ("alice", 7, True)
    assert wire.decode(wire.encode_deliver("bob", b"\x80", u, "c", "n")) == wire.Deliver(
        "bob", b"\x80", u, "c", "n"
    )
    assert wire.decode(wire.encode_deliver("bob", b"", None, "c", "n")).undelivered is None
    assert wire.decode(wire.encode_ack("c", Delivery.QUEUED)) == wire.Ack("c", Delivery.QUEUED)
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
    assert wire.decode(wire.encode_probe("n")) == wire.Probe("n")


@pytest.mark.parametrize(
    "message",
    [
        {"t": "d", "p": "", "f": b"x", "u": None},
        {"t": "d", "p": "bob", "f": "text", "u": None},
        {"t": "d", "p": "bob", "f": b"x", "u": ["a", 1.5, True]},
        {"t": "d", "p": "bob", "f": b"x", "u": ["a", True, True]},
        {"t": "d", "p": "bob", "f": b"x", "u": ["a", 1]},
        {"t": "r", "m": "r", "f": b"x", "x": None, "o": 1},
        {"t": "hq", "c": "c", "p": "bob", "s": 5, "v": False, "n": "n"},
        {"t": "hr", "c": "c", "h": {"rooms": {"r": 1}, "queue": [], "written": [], "count": 0}},
        {"t": "hr", "c": "c", "h": {"rooms": {}, "queue": [[b"x", "?", None]], "count": 0}},
        {"t": "hr", "c": "c", "h": {"rooms": {}, "queue": [], "written": [], "count": -1}},
        {"t": "a", "c": "c", "r": "lost"},
        {"t": "d", "p": "bob", "f": b"x", "u": None},
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
