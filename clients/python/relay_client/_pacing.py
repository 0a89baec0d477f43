"""Client-side pacing of writes, under the rate the relay advertises."""

from __future__ import annotations

import asyncio
import time
from typing import Any


class TokenBucket:
    """90% of the relay's ``rate_per_second`` with a burst one below its ``rate_burst``.

    Staying under the relay's own bucket means a burst of sends, or an offline
    buffer flushed after a reconnect, never earns ``rate-limited`` (or a 4029
    close). A bucket without a valid advertised rate, or disabled, never waits.
    """

    def __init__(self, *, enabled: bool) -> None:
        self._enabled = enabled
        self._rate = 0.0
        self._capacity = 1.0
        self._tokens = 0.0
        self._at = 0.0

    def reset(self, limits: dict[str, Any]) -> None:
        """Start over with the limits of a new ``welcome``.

        The relay's bucket for a fresh session starts full, so ours starts a
        little below it (one token less than our own capacity).
        """
        rate, burst = limits.get("rate_per_second"), limits.get("rate_burst")
        if not isinstance(burst, int):
            burst, rate = 0, 0.0  # without a burst there is no bucket to stay under
        self._rate = rate * 0.9 if self._enabled and isinstance(rate, int | float) else 0.0
        self._capacity = max(1.0, burst - 1.0)
        self._tokens = max(1.0, burst - 2.0)
        self._at = time.monotonic()

    async def take(self) -> None:
        """Wait until a write is allowed, and use it up."""
        if self._rate <= 0:
            return
        self._refill()
        if self._tokens < 1:
            await asyncio.sleep((1 - self._tokens) / self._rate)
            self._refill()
        self._tokens -= 1

    def _refill(self) -> None:
        now = time.monotonic()
        self._tokens = min(self._capacity, self._tokens + (now - self._at) * self._rate)
        self._at = now
