"""``relay.eager``: a step runs at once up to its first wait, as its task, then on in that task."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import anyio
import pytest

from relay.eager import start_eagerly

pytestmark = pytest.mark.anyio


async def from_a_callback(start: Callable[[], Any]) -> Any:
    """Call ``start`` as the relay's protocol callbacks do: outside any task."""
    loop = asyncio.get_running_loop()
    called: asyncio.Future[Any] = loop.create_future()

    def callback() -> None:
        assert asyncio.current_task() is None
        called.set_result(start())

    loop.call_soon(callback)
    return await called


async def test_a_step_that_never_waits_ends_inside_the_call() -> None:
    log: list[str] = []

    async def step() -> None:
        log.append("ran")

    def start() -> tuple[asyncio.Task[None] | None, list[str]]:
        task = start_eagerly(step())
        return task, list(log)

    task, seen = await from_a_callback(start)
    assert seen == ["ran"]
    assert task is None  # nothing left for its task: nobody need track it


async def test_a_step_that_waits_goes_on_in_its_task_as_the_current_task() -> None:
    log: list[object] = []
    gate = asyncio.get_running_loop().create_future()

    async def step() -> None:
        me = asyncio.current_task()
        log.append(me)
        with anyio.fail_after(10):  # a cancel scope needs the current task
            log.append(await gate)
        log.append(asyncio.current_task() is me)

    def start() -> tuple[asyncio.Task[None] | None, list[object]]:
        task = start_eagerly(step())
        return task, list(log)

    task, seen = await from_a_callback(start)
    assert task is not None
    assert seen == [task]  # the first part ran now, as the task
    gate.set_result("opened")
    await task
    assert log == [task, "opened", True]


@pytest.mark.parametrize("task_ran", [True, False])
async def test_cancelling_a_waiting_step_runs_its_clean_up(task_ran: bool) -> None:
    log: list[str] = []

    async def step() -> None:
        try:
            await asyncio.get_running_loop().create_future()  # never set
        except asyncio.CancelledError:
            log.append("cancelled")
            raise
        finally:
            log.append("cleaned up")

    task = await from_a_callback(lambda: start_eagerly(step()))
    assert task is not None
    if task_ran:
        await asyncio.sleep(0)  # one loop pass: the task's first, which takes the step on
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    # Cancelled before its first pass, the task never took the step on: the
    # step is closed with it (GeneratorExit), not cancelled.
    assert log == ["cancelled", "cleaned up"] if task_ran else ["cleaned up"]


@pytest.mark.parametrize("wait_first", [False, True])
async def test_what_a_step_raises_is_its_tasks(wait_first: bool) -> None:
    async def step() -> None:
        if wait_first:
            await asyncio.sleep(0)
        raise LookupError("from the step")

    task = await from_a_callback(lambda: start_eagerly(step()))
    assert task is not None  # what it raised is still to be seen
    with pytest.raises(LookupError, match="from the step"):
        await task


async def test_started_from_a_task_the_caller_stays_the_current_task() -> None:
    seen: list[object] = []

    async def step() -> None:
        seen.append(asyncio.current_task())

    me = asyncio.current_task()
    assert start_eagerly(step()) is None
    [task] = seen
    assert isinstance(task, asyncio.Task) and task is not me
    assert asyncio.current_task() is me
    await task
    assert task.done() and not task.cancelled()
