"""The ordered writer's pipeline: what one write carries, and what waits for replies."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from relay.broker.redis.commands import HOLD_COMMANDS, Commands
from relay.broker.redis.resp import NOT_SENT, Connection
from relay.broker.redis.scripts import Keys

pytestmark = pytest.mark.anyio


class FakeLinks:
    """Stands for ``Links``: counts the flushes that would publish gathered frames."""

    def __init__(self) -> None:
        self.flushes = 0

    def flush(self) -> None:
        self.flushes += 1


class FakeWriter(Connection):
    """A Redis connection that keeps each write and answers only when told."""

    def __init__(self) -> None:
        super().__init__()
        self.writes: list[list[Any]] = []

    def write(self, commands: list[Any]) -> None:
        self.writes.append([args for args, _done in commands])
        loop = asyncio.get_running_loop()
        self._waiting.extend((loop.time(), done) for _args, done in commands)

    def answer_all(self) -> None:
        """Every reply arrives (as ``data_received`` would hand them over)."""
        while self._waiting:
            _at, done = self._waiting.popleft()
            if done is not None:
                done(1)
        assert self.on_answered is not None
        self.on_answered()


async def passes(count: int = 3) -> None:
    for _ in range(count):
        await asyncio.sleep(0)


def pipeline() -> tuple[Commands, FakeWriter, FakeLinks]:
    commands = Commands("redis://127.0.0.1:1", Keys("test"), 1.0)
    links = FakeLinks()
    commands.links = links  # type: ignore[assignment]
    writer = FakeWriter()
    commands.attach(writer)
    return commands, writer, links


async def test_what_gathers_while_a_write_awaits_its_replies_goes_out_together() -> None:
    commands, writer, links = pipeline()
    commands.post("PUBLISH", "a", b"1")
    await passes()
    assert writer.writes == [[("PUBLISH", "a", b"1")]]
    # Three more passes while the first write's reply has not come: held.
    for n in (2, 3, 4):
        commands.post("PUBLISH", "a", str(n).encode())
        await passes()
    assert len(writer.writes) == 1
    flushes = links.flushes
    writer.answer_all()
    await passes()
    assert writer.writes[1] == [("PUBLISH", "a", str(n).encode()) for n in (2, 3, 4)]
    assert links.flushes > flushes  # the frames gathered meanwhile go out ahead of them


async def test_with_every_reply_in_each_pass_is_written_at_once() -> None:
    commands, writer, _links = pipeline()
    for n in range(3):
        commands.post("PUBLISH", "a", str(n).encode())
        await passes()
        writer.answer_all()
    assert len(writer.writes) == 3


async def test_the_hold_is_bounded() -> None:
    commands, writer, _links = pipeline()
    commands.post("PING")
    await passes()
    for _ in range(HOLD_COMMANDS):
        commands.post("PING")
    await passes()
    # Unanswered, but the bound is reached: written without waiting.
    assert [len(w) for w in writer.writes] == [1, HOLD_COMMANDS]


async def test_held_commands_are_not_sent_when_the_writer_goes() -> None:
    commands, _writer, links = pipeline()
    commands.post("PING")
    await passes()
    fates: list[Any] = []
    commands.publish_to("b", b"x", fates.append)
    await passes()
    flushes = links.flushes
    commands.detach()
    assert fates == [NOT_SENT]
    assert links.flushes == flushes + 1  # held frames are told not sent too
