"""``Hub.spawn``: the steps a session waits on end with the hub, and a failing step ends it."""

from __future__ import annotations

import anyio
import pytest

from relay.broker.memory import MemoryBroker
from relay.hub import Hub
from relay.metrics import Metrics
from relay.settings import Settings

pytestmark = pytest.mark.anyio

TIMEOUT = 5.0


def new_hub() -> Hub:
    return Hub(Settings(), MemoryBroker(), Metrics())


async def test_a_step_still_waiting_when_the_hub_ends_is_cancelled_and_awaited() -> None:
    started, cancelled, finished = anyio.Event(), anyio.Event(), []

    async def step() -> None:
        started.set()
        try:
            await anyio.sleep_forever()
        finally:
            cancelled.set()
            finished.append("cleaned up")

    with anyio.fail_after(TIMEOUT):
        async with new_hub().running() as hub:
            hub.spawn(step())
            await started.wait()
        # running() returned only once the step had run its cleanup.
        assert cancelled.is_set()
        assert finished == ["cleaned up"]


async def test_a_step_that_raises_ends_the_hub_with_its_error() -> None:
    class StepBug(Exception):
        pass

    async def step() -> None:
        raise StepBug("a bug in a step")

    with anyio.fail_after(TIMEOUT), pytest.raises(BaseExceptionGroup) as raised:
        async with new_hub().running() as hub:
            hub.spawn(step())
            await anyio.sleep_forever()  # the hub's task group cancels this
    assert raised.group_contains(StepBug, match="a bug in a step")


async def test_finished_steps_are_not_kept() -> None:
    async with new_hub().running() as hub:
        done = anyio.Event()

        async def step() -> None:
            done.set()

        for _ in range(100):
            hub.spawn(step())
        with anyio.fail_after(TIMEOUT):
            await done.wait()
            await anyio.wait_all_tasks_blocked()
        assert not hub._steps  # what the hub holds is the point
