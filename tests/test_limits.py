from relay.limits import Strikes, TokenBucket


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_token_bucket_allows_burst_then_refills_at_rate() -> None:
    clock = FakeClock()
    bucket = TokenBucket(rate=10, burst=3, clock=clock)
    assert [bucket.take() for _ in range(4)] == [True, True, True, False]
    clock.now += 0.15
    assert bucket.take()
    assert not bucket.take()
    clock.now += 100
    assert [bucket.take() for _ in range(4)] == [True, True, True, False]


def test_a_credit_passes_the_burst_once_and_is_not_refilled() -> None:
    clock = FakeClock()
    bucket = TokenBucket(rate=10, burst=3, clock=clock)
    assert [bucket.take() for _ in range(3)] == [True, True, True]
    bucket.credit(2.0)  # two seconds at 10/s that the client was not read
    assert [bucket.take() for _ in range(21)] == [True] * 20 + [False]
    clock.now += 100  # refilling stops at the burst again
    assert [bucket.take() for _ in range(4)] == [True, True, True, False]


def test_consecutive_strikes_are_forgiven_by_a_good_event() -> None:
    strikes = Strikes(2, consecutive=True)
    assert not strikes.hit()
    assert not strikes.hit()
    strikes.forgive()
    assert not strikes.hit()
    assert not strikes.hit()
    assert strikes.hit()


def test_budget_strikes_are_never_forgiven() -> None:
    strikes = Strikes(1, consecutive=False)
    assert not strikes.hit()
    strikes.forgive()
    assert strikes.hit()
