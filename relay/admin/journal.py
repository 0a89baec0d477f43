"""What the admin page shows of a node's past: recent closes and refusals, bounded.

A ``Journal`` is a session observer (``relay.events``): it hears only
closes and refusals, never a message, so it costs nothing per message. It
keeps the latest ``RECENT`` events of the node in one ring, and a peer's own
latest ``PER_PEER`` refusals in a ring made on that peer's first refusal,
for at most ``PEERS`` peers (the least recently refused forgotten first),
and a total of refusals per code (the traffic chart's rates are differences
of totals, taken when the page asks). An event holds an id, a code and a
time; never a payload or a message text.
"""

from __future__ import annotations

import time
from collections import OrderedDict, deque
from collections.abc import Callable
from typing import Any

from relay.events import SessionObserver

RECENT = 200
PER_PEER = 10
PEERS = 1000


class Journal(SessionObserver):
    """Recent closes and refusals on this node."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self.recent: deque[dict[str, Any]] = deque(maxlen=RECENT)
        self._refusals: OrderedDict[str, deque[dict[str, Any]]] = OrderedDict()
        # Bounded: one entry per error code the relay has (relay.protocol.codes).
        self.refusals_by_code: dict[str, int] = {}

    def refused(self, peer_id: str | None, code: str, message: str) -> None:
        """Note a refusal (a refused ``hello`` included, with ``peer_id`` None when unnamed)."""
        event = {"at": self._clock(), "kind": "refused", "peer": peer_id, "code": code}
        self.recent.append(event)
        self.refusals_by_code[code] = self.refusals_by_code.get(code, 0) + 1
        if peer_id is None:
            return
        history = self._refusals.get(peer_id)
        if history is None:
            history = self._refusals[peer_id] = deque(maxlen=PER_PEER)
            if len(self._refusals) > PEERS:
                self._refusals.popitem(last=False)
        else:
            self._refusals.move_to_end(peer_id)
        history.append({"at": event["at"], "code": code})

    def closed(self, peer_id: str | None, code: int, message: str, label: str) -> None:
        """Note a close the relay made."""
        self.recent.append(
            {"at": self._clock(), "kind": "closed", "peer": peer_id, "code": code, "label": label}
        )

    def refusals_of(self, peer_id: str) -> list[dict[str, Any]]:
        """``peer_id``'s latest refusals on this node, oldest first."""
        return list(self._refusals.get(peer_id, ()))
