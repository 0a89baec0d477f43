"""The transport seam: what moves a session's frames.

A transport is one connection to one peer. The session writes frames to it
and pauses or resumes reading through it; the connection calls the session
back (``message_received``, ``writable``, ``connection_lost``). The relay's
own WebSocket frame layer in direct mode is one (``relay.wsserver``'s
``DirectConnection`` satisfies this protocol as it is),
``relay.ws.ASGITransport`` over uvicorn's WebSocket implementations is
another, and a dialect (``relay.peerjs``) may wrap either.
"""

from __future__ import annotations

from typing import Protocol


class Transport(Protocol):
    """What a session drives: one WebSocket connection.

    Every call returns at once. ``close`` bounds the closing handshake: the
    connection is gone (``Session.connection_lost`` called) within the close
    timeout even if the peer never reads again.
    """

    @property
    def writing_paused(self) -> bool:
        """True while the socket takes no more (its buffers are full)."""
        ...

    def write(self, data: bytes) -> None:
        """Send one binary message."""
        ...

    def pause_reading(self) -> None:
        """Deliver no more messages until ``resume_reading``."""
        ...

    def resume_reading(self) -> None:
        """Deliver messages again, the held ones first."""
        ...

    def close(self, code: int, reason: str = "") -> None:
        """Close the connection with ``code`` (aborting it if the close cannot complete)."""
        ...

    def abort(self) -> None:
        """Reset the connection now; the session hears ``connection_lost`` soon after."""
        ...

    def unsent_bytes(self) -> int:
        """Once the connection is lost: how many written bytes never reached the peer's host.

        Bytes its TCP stack acknowledged count as delivered (a living peer
        reads them even after a reset); 0 when the transport cannot tell.
        """
        ...

    @property
    def written_bytes(self) -> int:
        """Bytes written to the connection so far, counted as they go on the wire."""
        ...

    def acked_bytes(self) -> int:
        """How many of ``written_bytes`` the peer's host has acknowledged.

        A transport that cannot tell answers ``written_bytes``: written
        counts as delivered there.
        """
        ...

    @property
    def acks_known(self) -> bool:
        """True when ``acked_bytes`` is the kernel's count, not ``written_bytes``.

        Only then may the replay window drop what was acknowledged.
        """
        ...

    def received_bytes(self) -> int:
        """Bytes the peer sent that wait to be read: in the kernel, or read but not yet handled."""
        ...
