"""Helpers of the tests that make a peer reconnect: a fast backoff, a peer's
state changes as events, bounded waits."""

from __future__ import annotations

import anyio
import relay_client
from relay_client import Message, State

FAST = {"backoff_base": 0.02, "backoff_max": 0.1}


class States:
    """Records a peer's state changes; ``expect(state)`` returns an event set on the next one."""

    def __init__(self, peer: relay_client.Peer) -> None:
        self.seen: list[State] = []
        self._waiting: dict[State, anyio.Event] = {}
        peer.on_state(self._changed)

    def _changed(self, state: State) -> None:
        self.seen.append(state)
        event = self._waiting.pop(state, None)
        if event is not None:
            event.set()

    def expect(self, state: State) -> anyio.Event:
        event = anyio.Event()
        self._waiting[state] = event
        return event


async def wait(event: anyio.Event, seconds: float = 5) -> None:
    with anyio.fail_after(seconds):
        await event.wait()


async def recv(peer: relay_client.Peer, seconds: float = 5) -> Message:
    with anyio.fail_after(seconds):
        return await peer.recv()
