"""Cluster benchmark: ping-pong pairs through relays over a real redis-server.

Starts a throwaway redis-server (or uses REDIS_URL) and, per scenario:

    one      one relay process, one worker, memory broker (the baseline)
    workers  one relay process with --workers 2 over Redis
    nodes    two relay processes over Redis; every pair is split across them

Each pair is two peers: ``a`` sends a ping to ``b``, ``b`` sends it back, ``a``
measures the round trip and sends the next one (one message in flight per
pair). The load comes from separate client processes (Python ``websockets``),
so the generator and the relay do not share an interpreter. Prints relayed
messages per second (pings and pongs both count) and p50/p99 round trip.

    python tests/bench_cluster.py --help
    python tests/bench_cluster.py --pairs 64 --seconds 10 --clients 2
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
from websockets.asyncio.client import connect

from tests.cluster.processes import RelayProcess
from tests.redis_server import RedisServer, redis_url_from_env

UNLIMITED = (
    "--rate-per-second", "1000000", "--rate-burst", "1000000", "--log-level", "warning",
    "--handshake-rate-per-second", "0", "--max-connections-per-ip", "0",
)  # fmt: skip


async def _hello(url: str, peer_id: str) -> Any:
    ws = await connect(url, subprotocols=["relay.v1"], max_size=None)  # type: ignore[list-item]
    await ws.send(msgpack.packb({"type": "hello", "id": peer_id}))
    welcome = msgpack.unpackb(await ws.recv())
    assert welcome["type"] == "welcome", welcome
    return ws


async def _pair(url_a: str, url_b: str, name: str, seconds: float, payload: bytes,
                out: list[float], counts: list[int], start_at: float) -> None:  # fmt: skip
    a = await _hello(url_a, f"{name}a")
    b = await _hello(url_b, f"{name}b")

    async def echo() -> None:
        async for frame in b:
            msg = msgpack.unpackb(frame)
            if msg.get("type") == "msg":
                await b.send(msgpack.packb({"type": "send", "to": f"{name}a", "d": msg["d"]}))

    echoer = asyncio.create_task(echo())
    await asyncio.sleep(max(0.0, start_at - time.time()))
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        sent = time.perf_counter()
        await a.send(msgpack.packb({"type": "send", "to": f"{name}b", "d": payload}))
        while True:
            reply = msgpack.unpackb(await a.recv())
            if reply.get("type") == "msg":
                break
            if reply.get("type") == "err":
                raise RuntimeError(f"relay refused: {reply}")
        out.append(time.perf_counter() - sent)
        counts[0] += 2
    echoer.cancel()
    await a.close()
    await b.close()


def _client(urls: tuple[str, str], names: list[str], seconds: float, size: int,
            start_at: float, results: Any) -> None:  # fmt: skip
    async def main() -> None:
        rtts: list[float] = []
        counts = [0]
        payload = os.urandom(size)
        await asyncio.gather(
            *(_pair(urls[0], urls[1], n, seconds, payload, rtts, counts, start_at) for n in names)
        )
        results.put((counts[0], rtts))

    asyncio.run(main())


def run_load(urls: tuple[str, str], pairs: int, clients: int, seconds: float, size: int,
             tag: str) -> dict[str, float]:  # fmt: skip
    ctx = multiprocessing.get_context("spawn")
    results = ctx.Queue()
    start_at = time.time() + 3.0  # every client connected first
    procs = []
    for c in range(clients):
        names = [f"{tag}{c}x{p}" for p in range(pairs) if p % clients == c]
        proc = ctx.Process(target=_client, args=(urls, names, seconds, size, start_at, results))
        proc.start()
        procs.append(proc)
    total = 0
    rtts: list[float] = []
    for _ in procs:
        count, samples = results.get(timeout=seconds + 60)
        total += count
        rtts += samples
    for proc in procs:
        proc.join(10)
    rtts.sort()
    return {
        "msg_per_s": total / seconds,
        "p50_ms": 1000 * rtts[len(rtts) // 2],
        "p99_ms": 1000 * rtts[min(len(rtts) - 1, int(len(rtts) * 0.99))],
        "round_trips": len(rtts),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pairs", type=int, default=64, help="ping-pong pairs (default 64)")
    parser.add_argument("--seconds", type=float, default=10, help="measuring time per scenario")
    parser.add_argument("--clients", type=int, default=2, help="load generator processes")
    parser.add_argument("--size", type=int, default=64, help="payload bytes (default 64)")
    parser.add_argument(
        "--scenario",
        choices=["one", "workers", "nodes"],
        action="append",
        help="scenarios to run (repeatable; default all three)",
    )
    args = parser.parse_args()
    scenarios = args.scenario or ["one", "workers", "nodes"]
    server = None
    url = redis_url_from_env()
    if url is None:
        server = RedisServer()
        server.start()
        url = server.url
    try:
        for scenario in scenarios:
            prefix = ("--broker", url, "--redis-prefix", f"bench{os.getpid()}{scenario}")
            if scenario == "one":
                relays = [RelayProcess(*UNLIMITED)]
            elif scenario == "workers":
                relays = [RelayProcess(*UNLIMITED, *prefix, "--workers", "2")]
            else:
                relays = [RelayProcess(*UNLIMITED, *prefix, "--node-id", n) for n in "ab"]
            try:
                for relay in relays:
                    relay.wait_ready()
                urls = (relays[0].url, relays[-1].url)
                result = run_load(urls, args.pairs, args.clients, args.seconds, args.size,
                                  scenario)  # fmt: skip
            finally:
                for relay in relays:
                    relay.stop()
            print(
                f"{scenario:8} pairs={args.pairs} clients={args.clients}: "
                f"{result['msg_per_s']:9.0f} msg/s relayed, "
                f"rtt p50 {result['p50_ms']:.2f} ms, p99 {result['p99_ms']:.2f} ms "
                f"({result['round_trips']} round trips)",
                flush=True,
            )
    finally:
        if server is not None:
            server.stop()


if __name__ == "__main__":
    main()
