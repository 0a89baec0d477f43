"""Cluster benchmark: ping-pong pairs through relays over a real redis-server.

Starts a throwaway redis-server (or uses REDIS_URL) and, per scenario:

    one        one relay process, memory broker (the baseline)
    one-redis  one relay process over Redis (every pair on the one node)
    nodes      two relay processes over Redis; every pair is split across them
    workers    one relay process with --workers 2 over Redis (the kernel
               spreads sockets, so about half the pairs cross workers)

Each pair is two peers: ``a`` sends pings to ``b``, ``b`` sends each back,
``a`` measures the round trip. By default every pair keeps ``--inflight``
pings in flight (throughput); with ``--rate`` the pings go out at that many
round trips per second in all (latency when not saturated). The load comes
from separate client processes (Python ``websockets``), so the generator and
the relays do not share an interpreter. Prints relayed messages per second
(pings and pongs both count), round-trip p50/p99, and the CPU the relays and
redis-server spent per relayed message (from /proc, over the measured window).

    python3 tests/bench_cluster.py --help
    python3 tests/bench_cluster.py --seconds 5 --scenario one --scenario nodes
    python3 tests/bench_cluster.py --seconds 5 --rate 2000 --scenario one --scenario nodes
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import msgpack
from websockets.asyncio.client import ClientConnection, connect

from tests.cluster.processes import RelayProcess
from tests.redis_server import RedisServer, redis_url_from_env

UNLIMITED = (
    "--rate-per-second", "1000000", "--rate-burst", "1000000", "--log-level", "warning",
    "--handshake-rate-per-second", "0", "--max-connections-per-ip", "0",
    "--queue-messages", "100000", "--queue-bytes", "100000000",
)  # fmt: skip
TICKS = os.sysconf("SC_CLK_TCK")
WARMUP = 1.0  # seconds of load before the measured window opens


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU time of these processes (and their reaped children)."""
    total = 0.0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except FileNotFoundError:
            continue
        total += sum(int(f) for f in fields[11:15]) / TICKS
    return total


def family(pid: int) -> list[int]:
    """``pid`` and its children (the workers of ``relay serve --workers``)."""
    children = Path(f"/proc/{pid}/task/{pid}/children")
    found = [int(c) for c in children.read_text().split()] if children.exists() else []
    return [pid, *found]


async def _hello(url: str, peer_id: str) -> ClientConnection:
    ws = await connect(url, subprotocols=["relay.v1"], max_size=None)  # type: ignore[list-item]
    await ws.send(msgpack.packb({"type": "hello", "id": peer_id}))
    welcome = msgpack.unpackb(await ws.recv())
    assert welcome["type"] == "welcome", welcome
    return ws


class Load:
    """One client process's pairs, the samples and the counts of its measured window."""

    def __init__(self, payload: bytes, window: tuple[float, float]) -> None:
        self.payload = payload
        self.window = window  # wall-clock start and end of the measured window
        self.rtts: list[float] = []
        self.relayed = 0
        self.sent_at: dict[int, float] = {}
        self.seq = 0

    def measuring(self) -> bool:
        now = time.time()
        return self.window[0] <= now < self.window[1]


async def _pair(urls: tuple[str, str], name: str, load: Load, inflight: int) -> Any:
    a = await _hello(urls[0], f"{name}a")
    b = await _hello(urls[1], f"{name}b")

    async def echo() -> None:
        async for frame in b:
            msg = msgpack.unpackb(frame)
            if msg.get("type") == "msg":
                await b.send(msgpack.packb({"type": "send", "to": f"{name}a", "d": msg["d"],
                                            "re": msg.get("rid")}))  # fmt: skip
                if load.measuring():
                    load.relayed += 1

    async def ping() -> None:
        load.seq += 1
        load.sent_at[load.seq] = time.perf_counter()
        await a.send(msgpack.packb({"type": "send", "to": f"{name}b", "d": load.payload,
                                    "rid": load.seq}))  # fmt: skip

    async def pongs() -> None:
        async for frame in a:
            msg = msgpack.unpackb(frame)
            if msg.get("type") == "err":
                raise RuntimeError(f"relay refused: {msg}")
            if msg.get("type") != "msg":
                continue
            sent = load.sent_at.pop(msg.get("re"), None)
            if sent is not None and load.measuring():
                load.relayed += 1
                load.rtts.append(time.perf_counter() - sent)
            if inflight and time.time() < load.window[1]:
                await ping()

    tasks = [asyncio.create_task(echo()), asyncio.create_task(pongs())]
    return a, b, tasks, ping


def _client(urls: tuple[str, str], names: list[str], inflight: int, rate: float, size: int,
            window: tuple[float, float], results: Any) -> None:  # fmt: skip
    async def main() -> None:
        load = Load(os.urandom(size), window)
        pairs = [await _pair(urls, name, load, inflight) for name in names]
        await asyncio.sleep(max(0.0, window[0] - WARMUP - time.time()))
        if inflight:
            for _a, _b, _tasks, ping in pairs:
                for _ in range(inflight):
                    await ping()
        else:
            started, fired = time.monotonic(), 0
            while time.time() < window[1]:
                due = int((time.monotonic() - started) * rate)
                for _ in range(due - fired):
                    await pairs[fired % len(pairs)][3]()
                    fired += 1
                await asyncio.sleep(0.001)
        await asyncio.sleep(max(0.0, window[1] - time.time()) + 0.5)
        for a, b, tasks, _ping in pairs:
            for task in tasks:
                task.cancel()
            await a.close()
            await b.close()
        results.put((load.relayed, load.rtts))

    asyncio.run(main())


def run_load(urls: tuple[str, str], pids: list[int], redis_pids: list[int],
             args: argparse.Namespace, tag: str) -> dict[str, float]:  # fmt: skip
    ctx = multiprocessing.get_context("spawn")
    results = ctx.Queue()
    start = time.time() + 3.0 + WARMUP  # every client connected, then warmed up
    window = (start, start + args.seconds)
    procs = []
    for c in range(args.clients):
        names = [f"{tag}{os.getpid()}c{c}x{p}" for p in range(args.pairs) if p % args.clients == c]
        rate = args.rate / args.clients
        inflight = 0 if args.rate else args.inflight
        work = (urls, names, inflight, rate, args.size, window, results)
        proc = ctx.Process(target=_client, args=work)
        proc.start()
        procs.append(proc)
    time.sleep(max(0.0, window[0] - time.time()))
    cpu_before = cpu_seconds(pids), cpu_seconds(redis_pids)
    time.sleep(max(0.0, window[1] - time.time()))
    relay_cpu = cpu_seconds(pids) - cpu_before[0]
    redis_cpu = cpu_seconds(redis_pids) - cpu_before[1]
    cpu = relay_cpu + redis_cpu
    total = 0
    rtts: list[float] = []
    for _ in procs:
        count, samples = results.get(timeout=args.seconds + 60)
        total += count
        rtts += samples
    for proc in procs:
        proc.join(10)
    rtts.sort()
    return {
        "msg_per_s": total / args.seconds,
        "p50_ms": 1000 * rtts[len(rtts) // 2],
        "p99_ms": 1000 * rtts[min(len(rtts) - 1, int(len(rtts) * 0.99))],
        "round_trips": len(rtts),
        "cpu_us_per_msg": 1e6 * cpu / max(1, total),
        "cpu_pct": 100 * cpu / args.seconds,
        "redis_us_per_msg": 1e6 * redis_cpu / max(1, total),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pairs", type=int, default=50, help="ping-pong pairs (default 50)")
    parser.add_argument("--inflight", type=int, default=16, help="pings in flight per pair")
    parser.add_argument("--rate", type=float, default=0, help="round trips/s in all (fixed rate)")
    parser.add_argument("--seconds", type=float, default=10, help="measured time per scenario")
    parser.add_argument("--clients", type=int, default=2, help="load generator processes")
    parser.add_argument("--size", type=int, default=64, help="payload bytes (default 64)")
    parser.add_argument(
        "--scenario",
        choices=["one", "one-redis", "nodes", "workers"],
        action="append",
        help="scenarios to run (repeatable; default one, one-redis, nodes)",
    )
    args = parser.parse_args()
    scenarios = args.scenario or ["one", "one-redis", "nodes"]
    server = None
    url = redis_url_from_env()
    if url is None:
        server = RedisServer()
        server.start()
        url = server.url
    redis_pids = [server.process.pid] if server is not None and server.process else []
    mode = f"rate={args.rate:g} RT/s" if args.rate else f"inflight={args.inflight}"
    try:
        for scenario in scenarios:
            prefix = ("--broker", url, "--redis-prefix", f"bench{os.getpid()}{scenario}")
            if scenario == "one":
                relays = [RelayProcess(*UNLIMITED)]
            elif scenario == "one-redis":
                relays = [RelayProcess(*UNLIMITED, *prefix, "--node-id", "a")]
            elif scenario == "workers":
                relays = [RelayProcess(*UNLIMITED, *prefix, "--workers", "2")]
            else:
                relays = [RelayProcess(*UNLIMITED, *prefix, "--node-id", n) for n in "ab"]
            try:
                for relay in relays:
                    relay.wait_ready()
                urls = (relays[0].url, relays[-1].url)
                pids = [p for relay in relays for p in family(relay.process.pid)]
                redis = redis_pids if scenario != "one" else []
                result = run_load(urls, pids, redis, args, scenario.replace("-", ""))
            finally:
                for relay in relays:
                    relay.stop()
            print(
                f"{scenario:9} pairs={args.pairs} {mode}: "
                f"{result['msg_per_s']:8.0f} msg/s relayed, "
                f"rtt p50 {result['p50_ms']:.2f} ms, p99 {result['p99_ms']:.2f} ms, "
                f"relay+redis cpu {result['cpu_us_per_msg']:.0f} us/msg "
                f"(redis {result['redis_us_per_msg']:.0f}; {result['cpu_pct']:.0f}% of a core; "
                f"{result['round_trips']} round trips)",
                flush=True,
            )
    finally:
        if server is not None:
            server.stop()


if __name__ == "__main__":
    main()
