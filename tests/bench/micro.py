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
- ``room``: a ``pub`` to a room of ``ROOM`` members, from the frame the
  publisher's session is given to the frames handed to each member's socket:
  real ``Session``s on the relay's own frame layer (``relay.wsserver``), its
  sockets replaced by ones that take every write, on uvloop. Per delivery.
- ``links``: what a frame to a peer on another node costs the two nodes'
  links (``relay.broker.redis.links``): numbering, the batch's encoding and
  decoding, the delivery, the ack's way back; Redis itself is left out.
- ``storm``: one client's registration, as in a reconnect storm: from the
  accepted connection's first read (a plain upgrade) through the ``101``,
  the ``hello`` and the ``welcome``, on the relay's own HTTP and frame
  layers and the whole app, with the bench's lifted admission caps; the
  sockets take every write. Per registration; the clients stay connected.

The figure is the median of ``--rounds`` rounds. It is not a ratio against a
reference, so compare only figures taken on one machine, one after another.
On a shared machine even those move by a third between runs; ``--instructions``
counts the instructions per frame instead, under valgrind (cachegrind), which
gives the same figure for the same code on every run, to a few instructions:
the difference between two runs of the loop, one twice as long, so the set-up
drops out. A collection of the oldest generation falls in one run and not in
the other by how the code allocates, so a short run moves by several per cent
between two versions of the code for that alone: storm counts 1,000 steps
(1,000 registrations between the runs, against 100), the others 100.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import itertools
import os
import re
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

# Appended: a PYTHONPATH given for an A/B run comes first, for relay as for tests.
sys.path.append(str(Path(__file__).resolve().parents[2]))

import uvicorn
import uvloop
from uvicorn.server import ServerState

from relay.app import create_app
from relay.broker import wire
from relay.broker.redis.links import Links
from relay.broker.redis.resp import Done
from relay.httpserver import RelayHTTPProtocol
from relay.protocol import codec
from relay.rfc6455 import OP_BINARY
from relay.server import uvicorn_config
from relay.session import Session
from relay.settings import Settings
from relay.values import Answer, Delivery, Undelivered
from relay.wsserver import RelayWebSocketProtocol
from tests.cluster.fakes import FakeNode
from tests.core.fakes import Node
from tests.inloop import InLoopServer
from tests.wsserver.frames import upgrade_request

BATCH = 100  # frames per round trip of the links loop, about what a busy pass batches
ROOM = 1000  # members of the room loop's room
STORM = 10  # registrations per step of the storm loop (a run of the loop: 80,000 instructions)
INSTRUCTION_STEPS = {"storm": 1000}  # --steps with --instructions, where not 100 (see above)
_ZERO_MASK = bytes(4)


_exact = False  # set by --exact: a child of --instructions


def median_ns(step: Callable[[], None], frames_per_step: int, steps: int, rounds: int) -> float:
    """Nanoseconds per frame: the median over ``rounds`` of ``steps`` calls of ``step``.

    In a child of ``--instructions``: a fixed warm-up, then exactly ``steps``
    calls, and what was run is printed for the parent instead.
    """
    gc.freeze()  # what the loop set up lives on, as relay.server does once it serves
    gc.set_threshold(700, 10, 100)
    if _exact:
        for _ in range(20):
            step()
        for _ in range(steps):
            step()
        print(f"ran {steps} steps of {frames_per_step} frames", flush=True)
        return 0.0
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


class _NullSocket(asyncio.Transport):
    """An accepted socket that takes every write and never fills."""

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return default

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        pass

    def write(self, data: bytes | bytearray | memoryview) -> None:
        pass

    def writelines(self, list_of_data: Any) -> None:
        pass

    def get_write_buffer_size(self) -> int:
        return 0

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


def room_publish(steps: int, rounds: int) -> float:
    return _per_pass(_room, 1, ROOM, steps, rounds)


def _per_pass(
    set_up: Callable[[asyncio.AbstractEventLoop], Coroutine[Any, Any, Callable[[], None]]],
    calls: int,
    frames: int,
    steps: int,
    rounds: int,
) -> float:
    """Nanoseconds per frame of ``calls`` calls of what ``set_up`` returns, in one loop pass.

    On uvloop; the pass ends after the calls, so what waits for its end (the
    flushes, the steps' tasks) runs too. Each step is one such pass, of
    ``frames`` frames; a tenth of ``steps`` are run.
    """
    loop = uvloop.new_event_loop()
    try:
        call = loop.run_until_complete(set_up(loop))

        async def one_pass() -> None:
            for _ in range(calls):
                call()
            await asyncio.sleep(0)  # the pass ends

        def step() -> None:
            loop.run_until_complete(one_pass())

        return median_ns(step, frames, max(1, steps // 10), rounds)
    finally:
        loop.close()


async def _room(loop: asyncio.AbstractEventLoop) -> Callable[[], None]:
    """A room of ``ROOM`` members on the frame layer; returns a call that publishes once."""
    node = Node(rate_per_second=1e9, rate_burst=10**9)
    sessions: asyncio.Queue[Session] = asyncio.Queue()

    async def app(scope: Any, receive: Any, send: Any) -> None:
        connection = scope["extensions"]["relay.direct"]["connection"]
        session = Session(node.hub, connection)
        connection.accept_direct(session)
        node.hub.opened(session)
        await sessions.put(session)

    config = uvicorn.Config(app, ws=RelayWebSocketProtocol, lifespan="off", log_level="warning")
    config.load()
    server_state = ServerState()
    for n in range(ROOM):
        protocol = RelayWebSocketProtocol(config, server_state, {}, _loop=loop)
        protocol.connection_made(_NullSocket())
        protocol.data_received(upgrade_request(80))
        session = await sessions.get()
        session.message_received(codec.encode({"type": "hello", "id": f"m{n}"}))
        session.message_received(codec.encode({"type": "join", "room": "r"}))
        node.run()
    publisher, _, _ = node.peer("publisher")
    pub = codec.encode({"type": "pub", "room": "r", "d": b"x" * 64})
    received = publisher.message_received
    return lambda: received(pub)


class _AcceptedSocket(_NullSocket):
    """An accepted connection from 127.0.0.2 that takes every write, and its protocol."""

    def __init__(self, port: int) -> None:
        super().__init__()
        self._extra = {"peername": ("127.0.0.2", 40000), "sockname": ("127.0.0.1", port)}
        self.protocol: asyncio.BaseProtocol | None = None

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self._extra.get(name, default)

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        self.protocol = protocol

    def is_closing(self) -> bool:
        return False


def storm_register(steps: int, rounds: int) -> float:
    return _per_pass(_storm, STORM, STORM, steps, rounds)


async def _storm(loop: asyncio.AbstractEventLoop) -> Callable[[], None]:
    """The whole app served in ``loop``; returns a call that opens and registers one client."""
    settings = Settings(
        port=0, log_level="warning", max_connections=0, max_connections_per_ip=0,
        handshake_rate_per_second=0,
    )  # fmt: skip
    server = InLoopServer(uvicorn_config(create_app(settings), settings))
    loop.create_task(server.serve())
    await server.ready.wait()
    port = server.servers[0].sockets[0].getsockname()[1]
    upgrade = upgrade_request(port, "/v1/ws", subprotocols=("relay.v1",))
    config, state = server.config, server.server_state
    count = itertools.count()

    def register() -> None:
        socket = _AcceptedSocket(port)
        http = RelayHTTPProtocol(config, state, {}, _loop=loop)
        http.connection_made(socket)
        http.data_received(upgrade)
        assert isinstance(socket.protocol, RelayWebSocketProtocol), "taken as a plain upgrade"
        hello = codec.encode({"type": "hello", "id": f"c{next(count):07d}"})
        # Masked with zeros, so the payload goes as it is: nothing of the
        # client's own work lands in the figure.
        socket.protocol.data_received(
            bytes((0x80 | OP_BINARY, 0x80 | len(hello))) + _ZERO_MASK + hello
        )

    return register


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


def instructions_per_frame(name: str, steps: int) -> float:
    """Instructions per frame of loop ``name``, from runs of ``steps`` and twice as many."""
    counted = []
    for run_steps in (steps, 2 * steps):
        run = subprocess.run(
            [
                "valgrind", "--tool=cachegrind", "--cache-sim=no",
                "--cachegrind-out-file=/dev/null",
                sys.executable, __file__, name, "--steps", str(run_steps), "--exact",
            ],
            env={**os.environ, "PYTHONHASHSEED": "0"}, capture_output=True, text=True, check=False,
        )  # fmt: skip
        ran = re.search(r"ran (\d+) steps of (\d+) frames", run.stdout)
        refs = re.search(r"I\s+refs:\s+([\d,]+)", run.stderr)
        if run.returncode != 0 or ran is None or refs is None:
            raise SystemExit(f"{name} under valgrind failed:\n{run.stderr[-2000:]}")
        counted.append((int(ran[1]) * int(ran[2]), int(refs[1].replace(",", ""))))
    (frames, instructions), (more_frames, more_instructions) = counted
    return (more_instructions - instructions) / (more_frames - frames)


def main() -> None:
    global _exact
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "which", nargs="*", help="the loops to run: session, room, links, storm (default: all)"
    )
    parser.add_argument(
        "--steps", type=int, default=None,
        help="batches of 100 frames per round (room: a tenth as many publishes to 1,000 members; "
        "storm: a tenth as many batches of 10 registrations); "
        "default 2000, or with --instructions 100 (storm: 1000)",
    )  # fmt: skip
    parser.add_argument("--rounds", type=int, default=7, help="rounds; the median is printed")
    parser.add_argument(
        "--instructions", action="store_true",
        help="print instructions per frame, counted under valgrind, instead of time "
        "(the same on every run to a few instructions: for changes below the machine's noise)",
    )  # fmt: skip
    parser.add_argument("--exact", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    loops = {
        "session": session_send, "room": room_publish, "links": links_send,
        "storm": storm_register,
    }  # fmt: skip
    unknown = sorted(set(args.which) - set(loops))
    if unknown:
        parser.error(f"no loop named {', '.join(unknown)}: choose from session, room, links, storm")
    if args.instructions and shutil.which("valgrind") is None:
        parser.error("--instructions needs valgrind (Debian: apt-get install valgrind)")
    _exact = args.exact
    for name in args.which or list(loops):
        steps = args.steps or (INSTRUCTION_STEPS.get(name, 100) if args.instructions else 2000)
        if args.instructions:
            count = instructions_per_frame(name, steps)
            print(f"{name}: {count:,.0f} instructions per frame", flush=True)
            continue
        ns = loops[name](steps, 1 if _exact else args.rounds)
        if not _exact:
            print(f"{name}: {ns:,.0f} ns per frame (median of {args.rounds} rounds)", flush=True)


if __name__ == "__main__":
    main()
