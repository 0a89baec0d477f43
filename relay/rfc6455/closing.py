"""The closing handshake of one server connection (RFC 6455 section 7), without I/O.

``ClosingHandshake`` knows where the connection is (``state``) and decides,
for each event the I/O layer reports, what happens next: the close frame to
send, whether nothing more will be sent, and what its owner is told.

Events in: the opening handshake completed (``opened``), the server closes
(``close``), the peer's close frame arrives (``close_received``, or
``read_until_close`` while ours is out), the connection fails (``fail``), the
peer went silent (``peer_silent``: a keepalive timeout), the peer's FIN
(``eof_received``), an end without closing handshake (``abort``), the end of
TCP (``connection_lost``).

Decisions out (``CloseActions``): a close frame to write after what is already
written; ``finish``, nothing more to send (the I/O layer then half-closes TCP
first, RFC 6455 7.1.1, or closes it where it cannot, and reads until the
peer's end); and the code and reason the owner hears, exactly once:

- the peer's close code, 1005 when its close frame had none;
- the code the connection failed with: 1002, 1007 or 1009 when the peer broke
  the protocol, 1008 when a message took too long, 1011 for the server's own
  error; the code given to ``peer_silent`` (1011 for a keepalive timeout);
- 1006 when TCP ended without a close frame (dropped, aborted, timed out).

When the peer closes first on a transport that can half-close, its close is
told at the end of TCP (``eof_received`` or ``connection_lost``), not at once:
the peer may still read what was on its way before its close left, and what
never reached it is known only then (``reports_at_end``). So is a silent
peer's failure: a peer that wakes up within the close timeout reads what was
on its way, then the close frame; one that does not is aborted (a reset), and
nothing more reaches it.

No clock and no socket: the I/O layer bounds the closing in time (it aborts a
peer that has not finished ``close_timeout`` after the close began) and turns
the decisions into writes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from relay.rfc6455.errors import ABNORMAL_CLOSURE, NO_STATUS_RECEIVED, ProtocolError
from relay.rfc6455.frames import NEED_DATA, OP_CLOSE, FrameParser, close_payload, encode_frame

# States, in the order a connection goes through them.
CONNECTING: Final = 0
"""The opening handshake is not complete: nothing to close yet."""
OPEN: Final = 1
CLOSING: Final = 2
"""Our close frame is out; the peer's has not arrived."""
CLOSED: Final = 3
"""Nothing more to send or to deliver; TCP may still be ending."""


@dataclass(frozen=True, slots=True)
class CloseActions:
    """What the I/O layer does after a closing event, in this order."""

    send: bytes = b""
    """A close frame to write after everything already written (``b""``: none)."""
    finish: bool = False
    """Send nothing more: half-close TCP (close it where it cannot), read until the peer's end."""
    report: tuple[int, str] | None = None
    """Tell the owner the connection ended, with this code and reason."""


NO_ACTIONS: Final = CloseActions()


class ClosingHandshake:
    """Where one connection's closing is, and what each event makes of it; see the module doc."""

    __slots__ = ("_at_end", "_half_close", "_reported", "state")

    def __init__(self) -> None:
        self.state = CONNECTING
        self._half_close = False
        self._at_end: tuple[int, str] | None = None  # told when TCP ends
        self._reported = False

    @property
    def reports_at_end(self) -> bool:
        """The end is told when TCP ends, not yet: the peer closed first, or went silent."""
        return self._at_end is not None and not self._reported

    def opened(self, *, half_close: bool) -> None:
        """The opening handshake completed.

        ``half_close``: the transport can end its sending side alone (TCP can, TLS cannot).
        """
        if self.state == CONNECTING:
            self.state = OPEN
            self._half_close = half_close

    def close(self, code: int, reason: str = "") -> bytes:
        """The server closes: the close frame to send; ``b""`` unless open (a second close).

        ``ValueError``, whatever the state, for a code one cannot send or a
        reason over 123 bytes.
        """
        payload = close_payload(code, reason)
        if self.state != OPEN:
            return b""
        self.state = CLOSING
        return encode_frame(OP_CLOSE, payload)

    def close_received(self, code: int, reason: str) -> CloseActions:
        """The peer's close frame, as ``FrameParser`` read it (``code`` 1005 for an empty one)."""
        state = self.state
        if state == OPEN:
            self.state = CLOSED
            # Echo it (RFC 6455 5.5.1): the same code and reason, or none.
            payload = b"" if code == NO_STATUS_RECEIVED else close_payload(code, reason)
            echo = encode_frame(OP_CLOSE, payload)
            if self._half_close:
                self._at_end = (code, reason)
                return CloseActions(echo, finish=True)
            return CloseActions(echo, finish=True, report=self._report(code, reason))
        if state == CLOSING:
            self.state = CLOSED
            return CloseActions(finish=True, report=self._report(code, reason))
        return NO_ACTIONS

    def read_until_close(self, parser: FrameParser) -> CloseActions | None:
        """While our close frame is out: drop what the peer sends, up to its close frame.

        Pulls ``parser`` until it needs more bytes (None) or an event decides:
        the peer's close frame, or a protocol error (``fail``). Messages, pings
        and pongs are dropped: once closing, nothing more is delivered or answered.
        """
        try:
            while self.state == CLOSING:
                opcode = parser.next_event()
                if opcode == NEED_DATA:
                    return None
                if opcode == OP_CLOSE:
                    return self.close_received(parser.close_code, parser.close_reason)
        except ProtocolError as exc:
            return self.fail(exc.code, exc.reason)
        return None

    def fail(self, code: int, reason: str) -> CloseActions:
        """Fail the connection with ``code`` (RFC 6455 7.1.7): close frame if open, then finish.

        Also for a failure once the close has completed (the owner's own
        error): only the report, if none was made yet.
        """
        state = self.state
        if state == CLOSED:
            return CloseActions(report=self._report(code, reason))
        self.state = CLOSED
        send = encode_frame(OP_CLOSE, close_payload(code, reason)) if state == OPEN else b""
        return CloseActions(send, finish=True, report=self._report(code, reason))

    def peer_silent(self, code: int, reason: str) -> CloseActions:
        """The peer sent nothing for too long: fail with ``code``, told when TCP ends.

        As ``fail`` (a close frame if open, then finish), but where the
        transport can half-close the owner hears ``code`` at the end of TCP,
        as for a peer's close: the peer may yet read what was on its way.
        """
        if self.state == CLOSED or not self._half_close:
            return self.fail(code, reason)
        send = encode_frame(OP_CLOSE, close_payload(code, reason)) if self.state == OPEN else b""
        self.state = CLOSED
        self._at_end = (code, reason)
        return CloseActions(send, finish=True)

    def eof_received(self) -> tuple[int, str] | None:
        """The peer's FIN: it sends nothing more. What the owner hears now, if anything.

        The end told at the end of TCP (``reports_at_end``); otherwise
        nothing yet: 1006 follows at ``connection_lost`` if no close frame came.
        """
        self.state = CLOSED
        if self._at_end is None:
            return None
        return self._report(*self._at_end)

    def abort(self) -> None:
        """The connection ends without a closing handshake: reset, or refused before it opened.

        Nothing more is sent; the owner hears at ``connection_lost``.
        """
        self.state = CLOSED

    def connection_lost(self) -> tuple[int, str] | None:
        """TCP ended: what the owner hears, unless it heard already (the end held, or 1006)."""
        self.state = CLOSED
        return self._report(*(self._at_end or (ABNORMAL_CLOSURE, "")))

    def _report(self, code: int, reason: str) -> tuple[int, str] | None:
        """The end to tell the owner; None once told: the owner hears exactly one."""
        if self._reported:
            return None
        self._reported = True
        return code, reason
