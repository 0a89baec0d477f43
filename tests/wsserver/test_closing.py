"""relay.rfc6455's closing handshake on plain bytes: what is sent, when sending ends, what is told.

The peer's frames are built by ``tests.wsserver.frames`` and read by a real
``FrameParser``; ``peer_sends`` hands the close frame or the protocol error to
the state machine as the frame layer does. No socket, no loop, no clock: the
close timeout is the I/O layer's, and shows here as an ``abort``.
"""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from relay.rfc6455 import (
    CLOSED,
    CLOSING,
    CONNECTING,
    NEED_DATA,
    NO_ACTIONS,
    OP_BINARY,
    OP_CLOSE,
    OP_PING,
    OP_TEXT,
    OPEN,
    CloseActions,
    ClosingHandshake,
    FrameParser,
    ProtocolError,
)
from tests.wsserver.frames import client_frame, close_frame


def opened(*, half_close: bool = True) -> ClosingHandshake:
    closing = ClosingHandshake()
    closing.opened(half_close=half_close)
    return closing


def peer_sends(closing: ClosingHandshake, parser: FrameParser, data: bytes) -> CloseActions | None:
    """Feed the peer's bytes; the actions of the close frame or error they hold, if any."""
    parser.feed(data)
    if closing.state == CLOSING:
        return closing.read_until_close(parser)
    try:
        while True:
            opcode = parser.next_event()
            if opcode == NEED_DATA:
                return None
            if opcode == OP_CLOSE:
                return closing.close_received(parser.close_code, parser.close_reason)
    except ProtocolError as exc:
        return closing.fail(exc.code, exc.reason)


def server_close(code: int, reason: bytes = b"") -> bytes:
    """A close frame as the server sends it: unmasked."""
    payload = code.to_bytes(2, "big") + reason
    return bytes((0x88, len(payload))) + payload


# --- the peer closes first -------------------------------------------------------------


def test_a_peer_close_is_echoed_and_told_when_tcp_ends() -> None:
    closing, parser = opened(), FrameParser(None)
    actions = peer_sends(closing, parser, close_frame(4000, "bye ✓".encode()))
    assert actions == CloseActions(send=server_close(4000, "bye ✓".encode()), finish=True)
    assert closing.state == CLOSED
    # The peer may still read what was on its way: its close is told at its FIN.
    assert closing.reports_at_end
    assert closing.eof_received() == (4000, "bye ✓")
    assert not closing.reports_at_end
    assert closing.connection_lost() is None


def test_a_peer_close_is_told_at_the_end_of_tcp_without_a_fin_too() -> None:
    closing, parser = opened(), FrameParser(None)
    peer_sends(closing, parser, close_frame(1001))
    closing.abort()  # the close timeout: the peer never sent its FIN
    assert closing.connection_lost() == (1001, "")


def test_without_half_close_a_peer_close_is_told_at_once() -> None:
    closing, parser = opened(half_close=False), FrameParser(None)
    actions = peer_sends(closing, parser, close_frame(1000, b"done"))
    assert actions == CloseActions(server_close(1000, b"done"), finish=True, report=(1000, "done"))
    assert not closing.reports_at_end
    assert closing.eof_received() is None
    assert closing.connection_lost() is None


def test_an_empty_close_is_echoed_empty_and_told_1005() -> None:
    closing, parser = opened(half_close=False), FrameParser(None)
    actions = peer_sends(closing, parser, close_frame(None))
    assert actions == CloseActions(send=b"\x88\x00", finish=True, report=(1005, ""))


def test_bytes_after_the_peer_close_are_ignored() -> None:
    closing, parser = opened(), FrameParser(None)
    data = close_frame(1000) + client_frame(OP_BINARY, b"late") + close_frame(4001)
    assert peer_sends(closing, parser, data) is not None
    assert peer_sends(closing, parser, client_frame(OP_TEXT, b"later")) is None
    assert closing.close_received(4002, "") is NO_ACTIONS
    assert closing.eof_received() == (1000, "")


# --- the server closes first -----------------------------------------------------------


def test_our_close_then_the_peer_close_tells_the_peer_code() -> None:
    closing, parser = opened(), FrameParser(None)
    assert closing.close(1001, "going away") == server_close(1001, b"going away")
    assert closing.state == CLOSING
    actions = peer_sends(closing, parser, close_frame(4003, b"ok"))
    assert actions == CloseActions(finish=True, report=(4003, "ok"))  # no echo of an echo
    assert closing.state == CLOSED
    assert closing.eof_received() is None
    assert closing.connection_lost() is None


def test_messages_and_pings_after_our_close_are_dropped_until_the_peer_close() -> None:
    closing, parser = opened(), FrameParser(None)
    closing.close(1000)
    dropped = client_frame(OP_BINARY, b"a") + client_frame(OP_PING, b"p")
    assert peer_sends(closing, parser, dropped + client_frame(OP_TEXT, b"b", fin=False)) is None
    actions = peer_sends(closing, parser, client_frame(0x0, b"c") + close_frame(None))
    assert actions == CloseActions(finish=True, report=(1005, ""))


def test_a_peer_that_never_answers_our_close_is_told_1006() -> None:
    closing = opened()
    closing.close(1000)
    closing.abort()  # the I/O layer's close timeout
    assert closing.connection_lost() == (1006, "")


def test_a_protocol_error_after_our_close_fails_without_a_second_frame() -> None:
    closing, parser = opened(), FrameParser(None)
    closing.close(1000)
    actions = peer_sends(closing, parser, client_frame(OP_BINARY, b"x", mask=None))
    assert actions == CloseActions(finish=True, report=(1002, "client frames must be masked"))


def test_closing_twice_sends_one_frame() -> None:
    closing = opened()
    assert closing.close(1000)
    assert closing.close(1000) == b""
    assert closing.close(4000, "again") == b""
    assert closing.state == CLOSING


def test_close_after_the_end_or_before_the_open_sends_nothing() -> None:
    closing, parser = opened(), FrameParser(None)
    peer_sends(closing, parser, close_frame(1000))
    assert closing.close(1000) == b""
    early = ClosingHandshake()
    assert early.state == CONNECTING
    assert early.close(1000) == b""
    assert early.connection_lost() == (1006, "")


@pytest.mark.parametrize(("code", "reason"), [(1005, ""), (1006, ""), (999, ""), (1000, "x" * 124)])
def test_close_refuses_what_cannot_be_sent_in_any_state(code: int, reason: str) -> None:
    for closing in (opened(), ClosingHandshake()):
        with pytest.raises(ValueError):
            closing.close(code, reason)
        assert closing.state in (OPEN, CONNECTING)


# --- failing -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "code"),
    [
        (client_frame(OP_CLOSE, b"\x03"), 1002),  # a close payload of one byte
        (close_frame(999), 1002),  # a close code one may not send
        (close_frame(1005), 1002),
        (close_frame(1000, b"\xff"), 1007),  # a reason that is not UTF-8
        (client_frame(OP_BINARY, b"x", mask=None), 1002),
        (client_frame(OP_BINARY, b"x", rsv=4), 1002),
        (client_frame(OP_TEXT, b"\xc3\x28"), 1007),
        (client_frame(OP_BINARY, b"x" * 200), 1009),  # over max_size (100 here)
        (client_frame(OP_BINARY, b"", fin=False) + client_frame(0x0, b"", fin=False) * 3, 1009),
    ],
)
def test_a_broken_peer_fails_the_connection_with_its_code(data: bytes, code: int) -> None:
    closing, parser = opened(), FrameParser(100, max_fragments=3)
    actions = peer_sends(closing, parser, data)
    assert actions is not None and actions.report is not None
    reported, reason = actions.report
    assert reported == code
    assert actions == CloseActions(server_close(code, reason.encode()), True, (code, reason))
    assert closing.state == CLOSED
    assert closing.eof_received() is None
    assert closing.connection_lost() is None


def test_a_message_timeout_fails_1008_with_its_reason() -> None:
    closing = opened()
    actions = closing.fail(1008, "message not completed in 30 s")
    reason = b"message not completed in 30 s"
    assert actions == CloseActions(server_close(1008, reason), True, (1008, reason.decode()))


def test_failing_twice_tells_once() -> None:
    closing = opened()
    first = closing.fail(1011, "internal error")
    assert first.send and first.finish and first.report == (1011, "internal error")
    assert closing.fail(1002, "again") == NO_ACTIONS


def test_an_owner_error_after_a_peer_close_is_told_instead_of_it() -> None:
    closing, parser = opened(), FrameParser(None)
    peer_sends(closing, parser, close_frame(1000))
    assert closing.fail(1011, "internal error") == CloseActions(report=(1011, "internal error"))
    assert closing.eof_received() is None


# --- the peer went silent (a keepalive timeout) -----------------------------------------


def test_a_silent_peer_gets_a_close_frame_and_is_told_when_tcp_ends() -> None:
    closing = opened()
    actions = closing.peer_silent(1011, "keepalive ping timeout")
    assert actions == CloseActions(server_close(1011, b"keepalive ping timeout"), finish=True)
    assert closing.state == CLOSED
    # It may yet read what was on its way: the end is told at its FIN ...
    assert closing.reports_at_end
    assert closing.eof_received() == (1011, "keepalive ping timeout")
    assert closing.connection_lost() is None


def test_a_silent_peer_aborted_by_the_close_timeout_is_told_its_code() -> None:
    closing = opened()
    closing.peer_silent(1011, "keepalive ping timeout")
    closing.abort()  # ... or when the close timeout resets it
    assert closing.connection_lost() == (1011, "keepalive ping timeout")


def test_without_half_close_a_silent_peer_is_told_at_once() -> None:
    closing = opened(half_close=False)
    actions = closing.peer_silent(1011, "keepalive ping timeout")
    reason = b"keepalive ping timeout"
    assert actions == CloseActions(server_close(1011, reason), True, (1011, reason.decode()))
    assert not closing.reports_at_end
    assert closing.connection_lost() is None


def test_a_peer_silent_after_our_close_gets_no_second_frame() -> None:
    closing = opened()
    closing.close(1000)
    assert closing.peer_silent(1011, "keepalive ping timeout") == CloseActions(finish=True)
    assert closing.connection_lost() == (1011, "keepalive ping timeout")


# --- no close frame at all ---------------------------------------------------------------


def test_eof_without_a_close_frame_is_told_1006_when_tcp_ends() -> None:
    closing, parser = opened(), FrameParser(None)
    assert peer_sends(closing, parser, client_frame(OP_BINARY, b"hi")) is None
    assert closing.eof_received() is None
    assert closing.state == CLOSED
    assert closing.close(1000) == b""
    assert closing.connection_lost() == (1006, "")


def test_an_abort_is_told_1006() -> None:
    closing = opened()
    closing.abort()
    assert closing.fail(1002, "late") == CloseActions(report=(1002, "late"))
    assert closing.connection_lost() is None


# --- any order of events -----------------------------------------------------------------

EVENTS = st.lists(
    st.sampled_from(["close", "close_received", "fail", "silent", "eof", "abort"]), max_size=6
)


@given(events=EVENTS, half_close=st.booleans())
def test_the_owner_hears_exactly_once_and_at_most_one_close_frame_leaves(
    events: list[str], half_close: bool
) -> None:
    closing = opened(half_close=half_close)
    frames: list[bytes] = []
    told: list[tuple[int, str]] = []
    for event in events:
        if event == "close":
            frames.append(closing.close(4000))
        elif event in ("close_received", "fail", "silent"):
            if event == "close_received":
                actions = closing.close_received(4001, "")
            elif event == "fail":
                actions = closing.fail(1002, "broken")
            else:
                actions = closing.peer_silent(1011, "keepalive ping timeout")
            frames.append(actions.send)
            if actions.report is not None:
                told.append(actions.report)
        elif event == "eof":
            report = closing.eof_received()
            if report is not None:
                told.append(report)
        else:
            closing.abort()
    report = closing.connection_lost()
    if report is not None:
        told.append(report)
    assert len(told) == 1
    assert len([frame for frame in frames if frame]) <= 1
    assert closing.state == CLOSED
