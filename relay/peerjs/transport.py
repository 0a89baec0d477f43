"""Where a PeerJS socket's frames become text: the hub writes binary, the client reads JSON.

A ``PeerJSSession`` is a hub ``Session``, so it writes the hub's frames
(``welcome``, ``msg``, ``ok``, ``err``) to its transport like any session.
On the way to the socket each becomes the PeerJS texts it stands for
(``PeerJSSession.translate``, set as ``translate`` once the session exists):

- ``DirectTextTransport`` on the relay's frame layer (direct mode): the
  session's ``Transport`` is the connection itself, with ``write`` sending
  text instead; the session is the connection's ``FrameHandler``, as a
  native session is. No task and no ASGI message per frame.
- ``TextSender`` on uvicorn's WebSocket implementations: the ASGI ``send``
  that ``ws.ASGITransport``'s writer task calls, sending text messages for
  the binary ones it is given.
"""

from __future__ import annotations

from collections.abc import Callable

from starlette.types import Message, Send

from relay.wsserver import DirectConnection

Translate = Callable[[bytes], list[str]]


def _not_attached(frame: bytes) -> list[str]:
    raise RuntimeError("translate is set before the session writes anything")


class DirectTextTransport:
    """A PeerJS session's ``relay.session.Transport`` on a direct-mode connection.

    Everything but ``write`` and ``acked_bytes`` is the connection's own,
    its byte counts those of the text frames on the wire.

    Written counts as acknowledged, as on ``ws.ASGITransport``: a PeerJS
    sender's message is "taken" (its ``ok``, which settles it in the sending
    session) once it is written to the destination's socket, not once that
    host acknowledged it. Waiting for the acknowledgement would make every
    PeerJS sender's ``inflight_per_session`` a window on the destination's
    TCP stack, a different flow control from the one PeerJS peers have.
    What a socket never sent is still reported when it ends (``unsent_bytes``,
    exact; ``Peer.count_unsent`` maps it to frames by their binary size, so
    at the boundary it may count one frame more or less).
    """

    __slots__ = ("_conn", "translate")

    def __init__(self, conn: DirectConnection) -> None:
        self._conn = conn
        self.translate: Translate = _not_attached

    @property
    def writing_paused(self) -> bool:
        return self._conn.writing_paused

    def write(self, data: bytes) -> None:
        write_text = self._conn.write_text
        for text in self.translate(data):
            write_text(text)

    def pause_reading(self) -> None:
        self._conn.pause_reading()

    def resume_reading(self) -> None:
        self._conn.resume_reading()

    def close(self, code: int, reason: str = "") -> None:
        self._conn.close(code, reason)

    def abort(self) -> None:
        self._conn.abort()

    def unsent_bytes(self) -> int:
        return self._conn.unsent_bytes()

    @property
    def written_bytes(self) -> int:
        return self._conn.written_bytes

    def acked_bytes(self) -> int:
        return self._conn.written_bytes  # written counts as acknowledged: see the class doc

    @property
    def acks_known(self) -> bool:
        return False  # the socket carries text, the window binary frames: the counts differ

    def received_bytes(self) -> int:
        return self._conn.received_bytes()


class TextSender:
    """The ASGI ``send`` of a PeerJS socket's ``ws.ASGITransport``.

    The transport hands it the hub's binary frames; the PeerJS texts each
    stands for go out instead. Other messages (the close) pass as they are.
    """

    __slots__ = ("_send", "translate")

    def __init__(self, send: Send) -> None:
        self._send = send
        self.translate: Translate = _not_attached

    async def __call__(self, message: Message) -> None:
        data = message.get("bytes")
        if message["type"] != "websocket.send" or data is None:
            await self._send(message)
            return
        for text in self.translate(data):
            await self._send({"type": "websocket.send", "text": text})
