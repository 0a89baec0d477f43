"""In-process microbenchmarks of the relay's own Python per frame, without sockets.

The project's bench (bench.py) measures the relay beside its references, but
its figures move by ±10% between runs with the machine and the load
generator; a change worth 5% of the relay's CPU is lost in that. These loops
run the relay's code alone, in one process, and print nanoseconds per frame,
so a change to the rules can be judged by alternating the code before and
after (``PYTHONPATH`` pointing at a checkout of the code before):

- ``session``: a ``send`` to one local peer, from the frame a session is
  given to the frame written to the target's transport (the codec, the rate
  limit, the router, the replay window, the metrics): real ``Session``s and a
  real ``Hub`` on fake transports (``tests/core/fakes.py``).
- ``links``: what a frame to a peer on another node costs the two nodes'
  links (``relay.broker.redis.links``): numbering, the batch's encoding and
  decoding, the delivery, the ack's way back; Redis itself is left out.

The figure is the median of ``--rounds`` rounds. It is not a ratio against a
reference, so compare only figures taken on one machine, one after another.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

# Appended: a PYTHONPATH given for an A/B run comes first, for relay as for tests.
sys.path.append(str(Path(__file__).resolve().parents[2]))

from relay.broker import wire
from relay.broker.redis.links import Links
from relay.broker.redis.resp import Done
from relay.protocol import codec
from relay.values import Answer, Delivery, Undelivered
from tests.cluster.fakes import FakeNode
from tests.core.fakes import Node

BATCH = 100  # frames per round trip of the links loop, about what a busy pass batches


def median_ns(step: Callable[[], None], frames_per_step: int, steps: int, rounds: int) -> float:
    """Nanoseconds per frame: the median over ``rounds`` of ``steps`` calls of ``step``."""
    for _ in range(max(1, steps // 10)):
        step()  # warm-up
    results = []
    for _ in range(rounds):
        started = time.perf_counter()
        for _ in range(steps):
            step()
        results.append((time.perf_counter() - started) / (steps * frames_per_step) * 1e9)
    return statistics.median(results)


def session_send(steps: int, rounds: int) -> float:
    node = Node(rate_per_second=1e9, rate_burst=10**9)
    alice, _, _ = node.peer("alice")
    _, bob, _ = node.peer("bob")
    frame = codec.encode({"type": "send", "to": "bob", "d": b"x" * 64})
    received = alice.message_received

    def step() -> None:
        for _ in range(BATCH):
            received(frame)
        bob.frames.clear()
        node.clock.run_soon()

    return median_ns(step, BATCH, steps, rounds)


class _Holder(FakeNode):
    """A node that takes every frame and keeps none: the links' cost alone."""

    def deliver(
        self,
        peer_id: str,
        frame: bytes,
        undelivered: Undelivered | None,
        answer: Answer | None = None,
    ) -> Delivery:
        return Delivery.DELIVERED


def links_send(steps: int, rounds: int) -> float:
    return asyncio.run(_links_send(steps, rounds))


async def _links_send(steps: int, rounds: int) -> float:
    published: list[tuple[str, bytes]] = []

    def publish(node: str, payload: bytes, done: Done) -> None:
        published.append((node, payload))
        done(1)

    async def lookup(peer: str) -> tuple[str, int] | None:
        return ("b", 7)

    async def alive(node: str) -> bool:
        return True

    tasks: set[asyncio.Task[None]] = set()

    def spawn(work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(work)
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    def make(node_id: str) -> Links:
        return Links(
            _Holder(node_id), f"{node_id}-1", publish=publish, wake=lambda: None, lookup=lookup,
            alive=alive, spawn=spawn, timeout_seconds=5.0, give_up_seconds=60.0, limit=10**6,
        )  # fmt: skip

    nodes = {"a": make("a"), "b": make("b")}
    a, b = nodes["a"], nodes["b"]
    peers = [f"t{n}" for n in range(50)]
    senders: list[Undelivered] = [(f"s{n}", None, False) for n in range(50)]
    for peer in peers:
        b.holds[peer] = 7
    frame = b"x" * 80

    def answered(delivery: Delivery) -> None:
        assert delivery is Delivery.DELIVERED

    def carry() -> None:
        while published:
            node, payload = published.pop(0)
            message = wire.decode(payload)
            assert isinstance(message, wire.Batch)
            nodes[node].received(message)

    def step() -> None:
        for n in range(BATCH):
            a.send(peers[n % 50], frame, senders[n % 50], answered)
        a.flush()
        carry()  # the frames to b
        # Acks nobody waits on wait ACK_DELAY for a batch to ride on: sent now.
        b._flush_lazy()
        b.flush()
        carry()  # the acks back to a

    for peer in peers:  # every peer looked up first, as on a warm node
        a.send(peer, frame, senders[0], answered)
    while tasks:
        await asyncio.wait(tasks)
    step()
    result = median_ns(step, BATCH, steps, rounds)
    assert a.backlog == 0, "every frame answered"
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("which", nargs="*", help="the loops to run: session, links (default: both)")
    parser.add_argument("--steps", type=int, default=2000, help="batches of 100 frames per round")
    parser.add_argument("--rounds", type=int, default=7, help="rounds; the median is printed")
    args = parser.parse_args()
    loops = {"session": session_send, "links": links_send}
    unknown = sorted(set(args.which) - set(loops))
    if unknown:
        parser.error(f"no loop named {', '.join(unknown)}: choose from session, links")
    for name in args.which or list(loops):
        ns = loops[name](args.steps, args.rounds)
        print(f"{name}: {ns:,.0f} ns per frame (median of {args.rounds} rounds)", flush=True)


if __name__ == "__main__":
    main()
