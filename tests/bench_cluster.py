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
round trips per second in all (latency when not saturated). The load is
``tests/bench/load.mjs`` (``pairs``, or ``fixed`` with ``--rate``; in
``nodes`` its ``--echo-url`` puts every ``b`` on the second node), pinned to
CPU 1 with a redis-server this script started; the relays are pinned to CPU 0,
so every scenario's relays share one core and their CPU per message compares
directly. Prints relayed messages per second (pings and pongs both count),
round-trip p50/p99, the CPU the relays and redis-server spent per relayed
message and in all (from /proc, over load.mjs's measured window), and the
generator's.

    python3 tests/bench_cluster.py --help
    python3 tests/bench_cluster.py --seconds 5 --scenario one --scenario nodes
    python3 tests/bench_cluster.py --seconds 5 --rate 2000 --scenario one --scenario nodes
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.bench.procs import Generator, can_pin
from tests.bench.procs import cpu_seconds as process_seconds
from tests.cluster.processes import RelayProcess
from tests.redis_server import RedisServer, redis_url_from_env

UNLIMITED = (
    "--rate-per-second", "1000000", "--rate-burst", "1000000", "--log-level", "warning",
    "--handshake-rate-per-second", "0", "--max-connections-per-ip", "0",
    "--queue-messages", "100000", "--queue-bytes", "100000000",
)  # fmt: skip
WARMUP = 1.0  # seconds of load before the measured window opens
RELAYS_CPU = 0
# redis-server shares the generator's core (tests/bench/procs.py pins load.mjs to CPU 1):
# on CPU 0 it would share the relays' with them, and three processes taking turns
# on a core cost their switches; a backplane has a machine of its own in practice.
REDIS_CPU = 1


def cpu_seconds(pids: list[int]) -> float:
    """CPU time used so far by these processes (gone ones count nothing)."""
    total = 0.0
    for pid in pids:
        try:
            total += process_seconds(pid)
        except FileNotFoundError:
            continue
    return total


def family(pid: int) -> list[int]:
    """``pid`` and its children (the workers of ``relay serve --workers``)."""
    children = Path(f"/proc/{pid}/task/{pid}/children")
    found = [int(c) for c in children.read_text().split()] if children.exists() else []
    return [pid, *found]


def pin(pids: list[int], cpu: int) -> None:
    """Every thread of these processes on ``cpu``; threads they make later follow."""
    if not can_pin():
        return
    for pid in pids:
        for task in Path(f"/proc/{pid}/task").iterdir():
            os.sched_setaffinity(int(task.name), {cpu})


def run_load(urls: tuple[str, str], pids: list[int], redis_pids: list[int],
             args: argparse.Namespace) -> dict[str, float]:  # fmt: skip
    if args.rate:
        load = ["fixed", "--rate", str(args.rate)]
    else:
        load = ["pairs", "--inflight", str(args.inflight)]
    load += ["--pairs", str(args.pairs), "--size", str(args.size), "--seconds",
             str(args.seconds), "--warmup", str(WARMUP)]  # fmt: skip
    options = ["--echo-url", urls[1]] if urls[1] != urls[0] else []
    generator = Generator(load, urls[0], options, deadline=args.seconds + 120)
    assert generator.next_line()["event"] == "measuring"
    before = cpu_seconds(pids), cpu_seconds(redis_pids), process_seconds(generator.process.pid)
    assert generator.next_line()["event"] == "measured"
    relay_cpu = cpu_seconds(pids) - before[0]
    redis_cpu = cpu_seconds(redis_pids) - before[1]
    generator_cpu = process_seconds(generator.process.pid) - before[2]
    result = generator.next_line()
    generator.finish()
    if result["closed"]:
        raise SystemExit(f"the relays closed load connections: {result['closed']}")
    seconds = result["seconds"]
    total = result["relayed_per_second"] * seconds
    cpu = relay_cpu + redis_cpu
    return {
        "msg_per_s": result["relayed_per_second"],
        "p50_ms": result["p50_ms"],
        "p99_ms": result["p99_ms"],
        "round_trips": result["samples"],
        "cpu_us_per_msg": 1e6 * cpu / max(1, total),
        "cpu_pct": 100 * cpu / seconds,
        "redis_us_per_msg": 1e6 * redis_cpu / max(1, total),
        "generator_pct": 100 * generator_cpu / seconds,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pairs", type=int, default=50, help="ping-pong pairs (default 50)")
    parser.add_argument("--inflight", type=int, default=16, help="pings in flight per pair")
    parser.add_argument("--rate", type=float, default=0, help="round trips/s in all (fixed rate)")
    parser.add_argument("--seconds", type=float, default=10, help="measured time per scenario")
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
    pin(redis_pids, REDIS_CPU)
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
                pin(pids, RELAYS_CPU)
                redis = redis_pids if scenario != "one" else []
                result = run_load(urls, pids, redis, args)
            finally:
                for relay in relays:
                    relay.stop()
            print(
                f"{scenario:9} pairs={args.pairs} {mode}: "
                f"{result['msg_per_s']:8.0f} msg/s relayed, "
                f"rtt p50 {result['p50_ms']:.2f} ms, p99 {result['p99_ms']:.2f} ms, "
                f"relay+redis cpu {result['cpu_us_per_msg']:.1f} us/msg "
                f"(redis {result['redis_us_per_msg']:.1f}; {result['cpu_pct']:.0f}% of a core; "
                f"generator {result['generator_pct']:.0f}%; {result['round_trips']} round trips)",
                flush=True,
            )
    finally:
        if server is not None:
            server.stop()


if __name__ == "__main__":
    main()
