"""Per-session rate limiting and misbehaviour budgets.

The clock is injected so tests can drive time instead of sleeping.
"""

from __future__ import annotations

from collections.abc import Callable


class TokenBucket:
    """Allow ``rate`` events per second on average, in bursts of up to ``burst``."""

    __slots__ = ("_burst", "_clock", "_rate", "_stamp", "_tokens")

    def __init__(self, rate: float, burst: int, clock: Callable[[], float]) -> None:
        self._rate = rate
        self._burst = float(burst)
        self._clock = clock
        self._tokens = float(burst)
        self._stamp = clock()

    def _refill(self, now: float) -> float:
        # Refilling stops at the burst; a credit above it is spent, not topped up.
        tokens = self._tokens
        burst = self._burst
        if tokens < burst:
            tokens += (now - self._stamp) * self._rate
            if tokens > burst:
                tokens = burst
        return tokens

    def take(self) -> bool:
        """Spend one token; False when the bucket is empty."""
        now = self._clock()
        tokens = self._refill(now)
        self._stamp = now
        if tokens < 1.0:
            self._tokens = tokens
            return False
        self._tokens = tokens - 1.0
        return True

    def tokens(self) -> float:
        """How many requests the bucket would take now."""
        return self._refill(self._clock())

    def seconds_until_token(self) -> float:
        """How long until ``take`` can succeed (0 when it can now)."""
        tokens = self._refill(self._clock())
        return 0.0 if tokens >= 1.0 else (1.0 - tokens) / self._rate

    def credit(self, seconds: float) -> None:
        """Add what ``seconds`` at the full rate earn, even past the burst.

        For time the relay itself did not read the client: what the client
        sent meanwhile arrives at once, and at no more than the rate it is
        no flood.
        """
        now = self._clock()
        self._tokens = self._refill(now) + seconds * self._rate
        self._stamp = now


class Strikes:
    """Counts offences; ``hit`` says whether the budget is now exhausted."""

    __slots__ = ("_budget", "_consecutive", "_count")

    def __init__(self, budget: int, *, consecutive: bool) -> None:
        self._budget = budget
        self._consecutive = consecutive
        self._count = 0

    def hit(self) -> bool:
        """Record one offence; True once more than ``budget`` have been seen."""
        self._count += 1
        return self._count > self._budget

    def forgive(self) -> None:
        """A good event: resets the count when only consecutive offences matter."""
        if self._consecutive:
            self._count = 0
