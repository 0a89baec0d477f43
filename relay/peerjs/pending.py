"""The pre-connect queue: messages a PeerJS peer sent to ids nobody holds yet.

PeerJS apps often call ``peer.connect(other)`` before ``other`` has reached
the server; peerjs-server keeps such messages and delivers them when the
peer arrives, or answers ``EXPIRE`` (the app's "peer-unavailable") when it
does not arrive in time. Here each sending session keeps its own queue,
bounded in messages and bytes, one first-in-first-out line per destination;
a destination waits at most ``expire_seconds`` from its first held message.
The clock is injected so tests drive time.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from relay.peerjs.protocol import Relayed


@dataclass(slots=True)
class _Line:
    deadline: float
    messages: deque[tuple[Relayed, int]] = field(default_factory=deque)  # with its size


class PreConnectQueue:
    """Held messages per destination id, bounded, each destination with a deadline."""

    def __init__(
        self,
        *,
        max_messages: int,
        max_bytes: int,
        expire_seconds: float,
        clock: Callable[[], float],
    ) -> None:
        self._max_messages = max_messages
        self._max_bytes = max_bytes
        self._expire_seconds = expire_seconds
        self._clock = clock
        self._lines: dict[str, _Line] = {}
        self._count = 0
        self._bytes = 0

    def __bool__(self) -> bool:
        return bool(self._lines)

    def holds(self, dst: str) -> bool:
        """Whether messages to ``dst`` are waiting (a new one must queue behind them)."""
        return dst in self._lines

    def add(self, message: Relayed) -> bool:
        """Hold ``message``; False (and nothing held) when the bounds are reached."""
        size = _size(message)
        if self._count >= self._max_messages or self._bytes + size > self._max_bytes:
            return False
        line = self._lines.get(message.dst)
        if line is None:
            line = self._lines[message.dst] = _Line(self._clock() + self._expire_seconds)
        line.messages.append((message, size))
        self._count += 1
        self._bytes += size
        return True

    def drop(self, dst: str) -> None:
        """Forget everything held for ``dst``."""
        line = self._lines.pop(dst, None)
        if line is not None:
            self._count -= len(line.messages)
            self._bytes -= sum(size for _message, size in line.messages)

    def expired(self) -> list[str]:
        """Remove and name the destinations whose deadline has passed."""
        now = self._clock()
        gone = [dst for dst, line in self._lines.items() if line.deadline <= now]
        for dst in gone:
            self.drop(dst)
        return gone

    def destinations(self) -> list[str]:
        """The destinations with held messages, oldest first."""
        return list(self._lines)

    def first(self, dst: str) -> Relayed | None:
        """The oldest message held for ``dst``."""
        line = self._lines.get(dst)
        return line.messages[0][0] if line is not None else None

    def delivered(self, dst: str) -> None:
        """The oldest message held for ``dst`` went out."""
        line = self._lines[dst]
        _message, size = line.messages.popleft()
        self._count -= 1
        self._bytes -= size
        if not line.messages:
            del self._lines[dst]


def _size(message: Relayed) -> int:
    return len(message.dst.encode()) + len((message.payload or "").encode())
