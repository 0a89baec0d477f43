"""Churn soak: clients connect, send to each other, drop or leave, come back; nothing may be lost.

    python tests/bench/soak.py                     # 5 minutes, 40 clients (make soak)
    python tests/bench/soak.py --seconds 30 --clients 10

Starts a relay (`relay serve` with default settings, on a free port) and runs
the clients in this process. Each client connects and says hello, sends
requests (`send` with an `id`) to random other clients for a while, waits
until every one is answered, then either drops its link (a reset, no close
frame; it then resumes with `received`, as the reference clients do) or
leaves (a clean close; it then comes back as a fresh session), and starts
again. When the time is up each client finishes its cycle and stays
connected while the last messages arrive.

Every few seconds a line on stderr gives the relay's RSS and the counts so
far. At the end, stdout has the cycles, the requests, the requests never
answered, the messages acknowledged `ok` (and not reported undelivered by a
later `err`) that never reached their target, duplicates and messages out of
order. The exit status is 1 if any of those four is not zero, or if the
relay logged an error.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import random
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import msgpack
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from tests.bench.bench import rss_kib
from tests.cluster.processes import RelayProcess

ANSWER_SECONDS = 10.0  # longest wait for the answers to a cycle's requests
SETTLE_SECONDS = 2.0  # after the last cycle: time for what is in flight to arrive


@dataclass
class Request:
    target: str
    answer: str | None = None  # "ok" or "err"
    undelivered: bool = False  # an err followed the ok: the relay says it never arrived


@dataclass
class Ledger:
    """What every client sent, got and was told; shared by all clients."""

    requests: dict[tuple[str, int], Request] = field(default_factory=dict)  # (sender, id)
    arrived: Counter[tuple[str, int]] = field(default_factory=Counter)  # (sender, id) at target
    last_seen: dict[tuple[str, str], int] = field(default_factory=dict)  # (sender, target)
    out_of_order: int = 0
    answers: Counter[str] = field(default_factory=Counter)  # "ok", "ok queued", "err <code>"
    extra_answers: int = 0
    cycles: Counter[str] = field(default_factory=Counter)  # "dropped", "left"
    resumed: Counter[bool] = field(default_factory=Counter)  # welcome.resumed after a drop
    refused_hellos: int = 0

    def unanswered(self) -> int:
        return sum(1 for request in self.requests.values() if request.answer is None)

    def lost(self) -> list[tuple[str, int]]:
        """Requests answered ok, never reported undelivered, whose message never arrived."""
        return [
            key
            for key, request in self.requests.items()
            if request.answer == "ok" and not request.undelivered and not self.arrived[key]
        ]

    def undelivered_but_arrived(self) -> int:
        """Reported undelivered by an err after the ok, and yet it arrived: told too much."""
        return sum(1 for key, request in self.requests.items()
                   if request.undelivered and self.arrived[key])  # fmt: skip

    def duplicates(self) -> int:
        return sum(count - 1 for count in self.arrived.values() if count > 1)


class Client:
    """One peer id, connecting again and again until the soak ends."""

    def __init__(
        self, name: str, others: list[str], ledger: Ledger, args: argparse.Namespace
    ) -> None:
        self.name = name
        self.others = others
        self.ledger = ledger
        self.args = args
        self.random = random.Random(name)
        self.next_id = 0
        self.secret: str | None = None  # of the latest welcome: set while a resume is due
        self.received = 0  # envelopes since that welcome
        self.waiting = 0  # requests not answered yet
        self.answered = asyncio.Event()
        self.ws: ClientConnection | None = None
        self.reader: asyncio.Task[None] | None = None

    async def run(self, url: str, stop: asyncio.Event) -> None:
        while True:
            await self._connect(url)
            deadline = time.monotonic() + self.random.uniform(0.2, self.args.cycle_seconds)
            while time.monotonic() < deadline and not stop.is_set():
                await self._request()
                await asyncio.sleep(1 / self.args.rate)
            await self._wait_for_answers()
            if stop.is_set():
                return  # stay connected while the last messages arrive
            if self.random.random() < 0.5:
                await self._drop()
            else:
                await self._leave()
            await asyncio.sleep(self.random.uniform(0, 0.3))

    async def _connect(self, url: str) -> None:
        while True:
            ws = await connect(url, subprotocols=["relay.v1"], max_size=None)
            hello: dict[str, Any] = {"type": "hello", "id": self.name}
            if self.secret is not None:
                hello.update(resume=self.secret, received=self.received)
            await ws.send(msgpack.packb(hello))
            welcome = msgpack.unpackb(await ws.recv())
            if welcome["type"] == "welcome":
                break
            self.ledger.refused_hellos += 1  # e.g. the id not released yet: try again
            await ws.close()
            await asyncio.sleep(0.1)
        if self.secret is not None:
            self.ledger.resumed[bool(welcome["resumed"])] += 1
        self.secret = welcome["resume"]
        self.received = 0
        self.ws = ws
        self.reader = asyncio.create_task(self._read(ws))

    async def _request(self) -> None:
        assert self.ws is not None
        self.next_id += 1
        target = self.random.choice(self.others)
        self.ledger.requests[(self.name, self.next_id)] = Request(target)
        self.waiting += 1
        self.answered.clear()
        envelope = {"type": "send", "to": target, "d": self.next_id, "id": self.next_id}
        await self.ws.send(msgpack.packb(envelope))

    async def _read(self, ws: ClientConnection) -> None:
        ledger = self.ledger
        with contextlib.suppress(ConnectionClosed):
            async for frame in ws:
                # Counted and handled with no await between: a cancel cannot split them.
                self.received += 1
                envelope = msgpack.unpackb(frame)
                kind = envelope["type"]
                if kind == "msg":
                    sender, sent_id = envelope["from"], envelope["d"]
                    ledger.arrived[(sender, sent_id)] += 1
                    pair = (sender, self.name)
                    if sent_id < ledger.last_seen.get(pair, 0):
                        ledger.out_of_order += 1
                    ledger.last_seen[pair] = max(sent_id, ledger.last_seen.get(pair, 0))
                elif kind in ("ok", "err") and "id" in envelope:
                    self._answer(envelope)

    def _answer(self, envelope: dict[str, Any]) -> None:
        request = self.ledger.requests.get((self.name, envelope["id"]))
        if request is None:
            self.ledger.extra_answers += 1
            return
        if request.answer is None:
            request.answer = envelope["type"]
            name = "ok queued" if envelope.get("queued") else "ok"
            self.ledger.answers[name if request.answer == "ok" else f"err {envelope['code']}"] += 1
            self.waiting -= 1
            if not self.waiting:
                self.answered.set()
        elif request.answer == "ok" and envelope["type"] == "err" and not request.undelivered:
            request.undelivered = True  # the relay's later word that it never arrived
            self.ledger.answers[f"undelivered {envelope['code']}"] += 1
        else:
            self.ledger.extra_answers += 1

    async def _wait_for_answers(self) -> None:
        if self.waiting:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.answered.wait(), ANSWER_SECONDS)

    async def _drop(self) -> None:
        """Stop reading a while, then reset: what was never read is replayed on resume."""
        assert self.ws is not None and self.reader is not None
        self.reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.reader
        await asyncio.sleep(self.random.uniform(0, 0.2))  # frames pile up unread meanwhile
        self.ws.transport.abort()
        self.ledger.cycles["dropped"] += 1

    async def _leave(self) -> None:
        """A clean close: the reader gets everything the relay wrote before its echo."""
        assert self.ws is not None and self.reader is not None
        await self.ws.close()
        await self.reader
        self.secret = None  # gone for good: the next hello starts afresh
        self.ledger.cycles["left"] += 1

    async def close(self) -> None:
        if self.ws is not None and self.reader is not None:
            await self.ws.close()
            await self.reader


def mib(kib: int) -> str:
    return f"{kib / 1024:.1f} MiB"


async def soak(args: argparse.Namespace, relay: RelayProcess) -> tuple[Ledger, list[int]]:
    pid = relay.process.pid
    ledger = Ledger()
    names = [f"soak-{n}" for n in range(args.clients)]
    clients = [Client(name, [o for o in names if o != name], ledger, args) for name in names]
    stop = asyncio.Event()
    tasks = [asyncio.create_task(client.run(relay.url, stop)) for client in clients]
    rss = [rss_kib(pid)]
    started = time.monotonic()
    while (elapsed := time.monotonic() - started) < args.seconds:
        await asyncio.sleep(min(args.report_seconds, args.seconds - elapsed))
        rss.append(rss_kib(pid))
        elapsed = time.monotonic() - started
        print(
            f"[{elapsed:4.0f}/{args.seconds:g} s] relay RSS {mib(rss[-1])} "
            f"(start {mib(rss[0])}, peak {mib(max(rss))}) | cycles {ledger.cycles.total():,} "
            f"| requests {len(ledger.requests):,} "
            f"| waiting for an answer {sum(client.waiting for client in clients)}",
            file=sys.stderr,
            flush=True,
        )
    stop.set()
    await asyncio.gather(*tasks)
    await asyncio.sleep(SETTLE_SECONDS)
    for client in clients:
        await client.close()
    rss.append(rss_kib(pid))
    return ledger, rss


def report(args: argparse.Namespace, ledger: Ledger, rss: list[int], log_errors: int) -> bool:
    """Print the summary; True when every promise held."""
    unanswered = ledger.unanswered()
    lost = ledger.lost()
    duplicates = ledger.duplicates()
    answers = ", ".join(f"{name} {count:,}" for name, count in sorted(ledger.answers.items()))
    print(f"soak: {args.seconds:g} s, {args.clients} clients, {args.rate:g} requests/s each")
    print(f"relay RSS: start {mib(rss[0])}, peak {mib(max(rss))}, end {mib(rss[-1])}")
    print(
        f"cycles {ledger.cycles.total():,} (dropped and resumed {ledger.cycles['dropped']:,}, "
        f"left and came back {ledger.cycles['left']:,}); resumes that found their session "
        f"{ledger.resumed[True]:,}, that did not {ledger.resumed[False]:,}; "
        f"hellos refused {ledger.refused_hellos}"
    )
    print(f"requests {len(ledger.requests):,}: {answers}")
    print(f"unanswered {unanswered}")
    print(f"ok but never arrived {len(lost)}" + (f": {lost[:5]}" if lost else ""))
    print(f"duplicates {duplicates}, out of order {ledger.out_of_order}")
    print(f"answers to no request or a second ok {ledger.extra_answers}")
    print(f"reported undelivered but arrived {ledger.undelivered_but_arrived()} (not a failure)")
    print(f"relay log lines at ERROR {log_errors}")
    passed = not (unanswered or lost or duplicates or ledger.out_of_order or log_errors)
    passed = passed and not ledger.extra_answers
    print("PASS" if passed else "FAIL")
    return passed


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0] if __doc__ else None,
        epilog="Progress goes to stderr, the summary to stdout. See docs/benchmarks.md.",
    )
    parser.add_argument(
        "--seconds", type=float, default=300, help="how long clients churn (default: 300)"
    )
    parser.add_argument("--clients", type=int, default=40, help="peer ids (default: 40)")
    parser.add_argument(
        "--rate", type=float, default=20,
        help="requests per second each client sends while connected (default: 20)",
    )  # fmt: skip
    parser.add_argument(
        "--cycle-seconds", type=float, default=3,
        help="a connection sends for 0.2 s up to this long before it drops or leaves "
        "(default: 3)",
    )  # fmt: skip
    parser.add_argument(
        "--report-seconds", type=float, default=5,
        help="a progress line with the relay's RSS this often (default: 5)",
    )  # fmt: skip
    args = parser.parse_args(argv)
    if args.clients < 2 or args.seconds <= 0 or args.rate <= 0 or args.cycle_seconds < 0.2:
        parser.error("needs 2 clients or more, and positive --seconds, --rate, --cycle-seconds")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    relay = RelayProcess()
    try:
        relay.wait_ready()
        ledger, rss = asyncio.run(soak(args, relay))
        log = relay.output()
    finally:
        relay.stop()
    log_errors = sum(1 for line in log.splitlines() if line.startswith(("ERROR", "Traceback")))
    if log_errors:
        print(log[-3000:], file=sys.stderr)
    return 0 if report(args, ledger, rss, log_errors) else 1


if __name__ == "__main__":
    sys.exit(main())
