"""Direct mode: the contract between a connection and the code that owns it.

An app takes ``conn = scope["extensions"]["relay.direct"]["connection"]`` and
calls ``conn.accept_direct(handler, subprotocol)``. From then on the connection
calls ``handler`` (a ``FrameHandler``) synchronously from the event loop, and
the owner drives the connection through ``DirectConnection``: no ASGI dicts,
no queue, no task per connection.
"""

from __future__ import annotations

from typing import Protocol


class FrameHandler(Protocol):
    """What a direct-mode connection calls; implemented by the connection's owner.

    Every method is called synchronously from the event loop; none may block.
    """

    def message_received(self, data: bytes) -> None:
        """One complete binary message."""

    def text_received(self, text: str) -> None:
        """One complete text message."""

    def writable(self) -> None:
        """The transport's buffer went under its low-water mark (``writing_paused`` is False)."""

    def connection_lost(self, code: int, reason: str) -> None:
        """The connection ended; called exactly once.

        ``code`` is the peer's close code (1005 if its close frame had none),
        the code the connection was failed with when the peer broke the
        protocol (1002, 1007, 1009), did not complete a message in time
        (1008) or answered no keepalive ping (1011, reason
        ``KEEPALIVE_TIMEOUT``, told when TCP ends), or 1006 when it ended
        without a close frame (dropped, aborted, close timeout).
        """


class DirectConnection(Protocol):
    """What a direct-mode owner may do with its connection (``RelayWebSocketProtocol``)."""

    def write(self, data: bytes) -> None:
        """Send one binary message.

        Never blocks and never raises on a dead connection (the message is
        dropped). Frames written during one event-loop pass leave together.
        """

    def write_text(self, text: str) -> None:
        """Send one text message, like ``write``."""

    @property
    def writing_paused(self) -> bool:
        """True while the transport's buffer is over its high-water mark (64 KiB)."""

    def write_buffer_size(self) -> int:
        """Bytes written but not yet handed to the kernel, pending frames included."""

    def pause_reading(self) -> None:
        """Deliver no more messages until ``resume_reading``; TCP then pushes back.

        Takes effect at once, even from inside ``message_received``: messages
        already read stay held and are delivered, in order, after ``resume_reading``.
        """

    def resume_reading(self) -> None:
        """Deliver messages again (held ones first, from the next loop pass)."""

    def close(self, code: int, reason: str = "") -> None:
        """Start the closing handshake: the close frame follows what is already written.

        No message is delivered after this. The connection is gone within
        ``close_timeout`` seconds whatever the peer does. ``ValueError`` for a
        code one cannot send or a reason over 123 bytes.
        """

    def abort(self) -> None:
        """Reset the connection now (the handler gets ``connection_lost(1006, ...)``)."""

    def unsent_bytes(self) -> int:
        """From ``connection_lost`` on: bytes written that never reached the peer's host.

        Frames not yet handed to the kernel, and what the kernel had not seen
        acknowledged (``SIOCOUTQ``) when the end was seen; 0 before that. Over
        TLS the kernel's share counts ciphertext, a little more than was written.
        """

    @property
    def written_bytes(self) -> int:
        """Every frame written so far (ours too: pongs, pings, close), in wire bytes."""

    def acked_bytes(self) -> int:
        """How many of ``written_bytes`` the peer's host has acknowledged.

        One ``SIOCOUTQ`` system call; after the end was seen, the count taken
        then. Over TLS the kernel counts ciphertext, so this errs low.
        """

    @property
    def acks_known(self) -> bool:
        """True where ``acked_bytes`` counts every byte ours (not over TLS).

        asyncio's TLS transport keeps ciphertext of its own that no count it
        offers includes, so there ``acked_bytes`` can run ahead of the truth.
        """

    def received_bytes(self) -> int:
        """Bytes received and not yet delivered as messages: the parser's and the kernel's."""

    @property
    def peer_address(self) -> tuple[str, int] | None:
        """The TCP peer's (host, port); a proxy's address behind one."""
