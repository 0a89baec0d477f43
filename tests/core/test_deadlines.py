"""``relay.clock.Deadlines``: items of one wait, expired in order on one timer."""

from __future__ import annotations

from relay.clock import Deadlines
from tests.core.fakes import FakeScheduler


class CountingScheduler(FakeScheduler):
    def __init__(self) -> None:
        super().__init__()
        self.armed = 0

    def call_later(self, delay: float, callback: object, *args: object):  # type: ignore[no-untyped-def]
        self.armed += 1
        return super().call_later(delay, callback, *args)  # type: ignore[arg-type]


def recorded(clock: FakeScheduler) -> tuple[Deadlines[str], list[tuple[str, float]]]:
    """Deadlines of 5 s on ``clock``, and the list of what expired when."""
    expired: list[tuple[str, float]] = []
    deadlines: Deadlines[str] = Deadlines(
        clock, 5.0, lambda item: expired.append((item, clock.now))
    )
    return deadlines, expired


def test_each_item_expires_its_wait_after_it_was_added_unless_discarded() -> None:
    clock = CountingScheduler()
    deadlines, expired = recorded(clock)
    start = clock.now
    deadlines.add("a")
    clock.advance(1.0)
    deadlines.add("b")
    deadlines.add("c")
    clock.advance(1.5)
    deadlines.add("d")
    deadlines.discard("c")
    assert "b" in deadlines and "c" not in deadlines
    clock.advance(4.9)  # 7.4 s in: a (5.0) and b (6.0) are due, d (7.5) is not
    assert expired == [("a", start + 5.0), ("b", start + 6.0)]
    clock.advance(0.1)
    assert expired[2:] == [("d", start + 7.5)]
    assert "d" not in deadlines
    clock.advance(60)
    assert len(expired) == 3


def test_one_timer_serves_items_discarded_in_time() -> None:
    # A storm's hellos: a thousand sessions, each hello in 3 ms; the last three never say it.
    clock = CountingScheduler()
    expired: list[int] = []
    deadlines: Deadlines[int] = Deadlines(clock, 5.0, expired.append)
    for n in range(1000):
        deadlines.add(n)
        clock.advance(0.001)
        if 3 <= n < 1000:
            deadlines.discard(n - 3)
    assert clock.armed == 1
    clock.advance(10)
    assert expired == [997, 998, 999]
    assert clock.armed <= 4  # a timer each would have been a thousand
    deadlines.add(7)  # nothing waits: a fresh timer
    clock.advance(5)
    assert expired[-1] == 7


def test_an_item_expiring_may_add_another() -> None:
    clock = FakeScheduler()
    expired: list[str] = []

    def expire(item: str) -> None:
        expired.append(item)
        if item == "first":
            deadlines.add("second")

    deadlines: Deadlines[str] = Deadlines(clock, 1.0, expire)
    deadlines.add("first")
    clock.advance(1.0)
    clock.advance(1.0)
    assert expired == ["first", "second"]


def test_an_item_added_again_waits_from_then_behind_the_others() -> None:
    clock = FakeScheduler()
    deadlines, expired = recorded(clock)
    start = clock.now
    deadlines.add("a")
    deadlines.add("b")
    clock.advance(2.0)
    deadlines.add("a")
    clock.advance(10)
    assert expired == [("b", start + 5.0), ("a", start + 7.0)]
