"""Benchmark the relay against node `ws` and two Python floors, as ratios, in one run.

    python tests/bench/bench.py                        # the default scenarios, one round
    python tests/bench/bench.py --only pairs64 idle    # some of them
    python tests/bench/bench.py --only storm room10k busy   # the long ones, opt-in
    python tests/bench/bench.py --rounds 3 --json out.json

For each scenario, each server in turn (the relay; node `ws` with
@msgpack/msgpack and with msgpackr, tests/bench/ws_forwarder.mjs; the bare
starlette forwarder, tests/bench/bare.py; the asyncio.Protocol floor,
tests/bench/py_forwarder.py) is started fresh, pinned to CPU 0 (taskset), and
driven by tests/bench/load.mjs (Node + ws) pinned to CPU 1; the order
alternates between rounds. One table per scenario gives each server's figure,
the relay's ratio to each other server, both processes' CPU during the
measured window, and which of them saturated. Absolute figures vary between
machines; ratios from one run do not.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from procs import (
    HERE,
    HTTP_MODES,
    SERVERS,
    Generator,
    Server,
    busy_seconds,
    can_pin,
    cpu_seconds,
    rss_kib,
    running,
)
from report import ratios, summarize, table

CPU_PER_MSG = ("server_us_per_msg", "server µs per msg", "lower")


@dataclass(frozen=True)
class Scenario:
    """One load.mjs invocation and the figures its ratios compare."""

    load: list[str]
    what: str
    figure: str  # the result key the first ratio line compares
    unit: str  # how the table names that figure
    better: str  # "higher" or "lower"
    kind: str = "rate"  # rate, idle, storm or busy: how bench.py drives and reads it
    long: bool = False  # minutes per server: runs only when named in --only
    crowd: str = ""  # the load.mjs option --clients replaces
    servers: tuple[str, ...] = ()  # the only servers it runs (empty: any)
    also: list[tuple[str, str, str]] = field(default_factory=list)  # more (key, unit, better)

    def compared(self) -> list[tuple[str, str, str]]:
        return [(self.figure, self.unit, self.better), *self.also]


PAIRS = ["pairs", "--pairs", "50"]
SCENARIOS: dict[str, Scenario] = {
    "pairs64": Scenario(
        [*PAIRS, "--inflight", "16", "--size", "64"],
        "50 pairs ping-ponging, 16 messages in flight per pair, 64 B payloads",
        "relayed_per_second", "msg/s", "higher", also=[CPU_PER_MSG],
    ),
    "pairs64ok": Scenario(
        [*PAIRS, "--inflight", "16", "--size", "64", "--ids", "1"],
        "pairs64 with an id on every send: the relay answers each ok once the target's host "
        "acknowledged it (the references answer each ok at once)",
        "relayed_per_second", "msg/s", "higher", also=[CPU_PER_MSG],
    ),
    "pairs4k": Scenario(
        [*PAIRS, "--inflight", "16", "--size", "4096"],
        "50 pairs ping-ponging, 16 messages in flight per pair, 4 KiB payloads",
        "relayed_per_second", "msg/s", "higher", also=[CPU_PER_MSG],
    ),
    # 65,400 B payloads make frames just under the relay's 64 KiB max-frame-bytes.
    "pairs64k": Scenario(
        [*PAIRS, "--inflight", "2", "--size", "65400"],
        "50 pairs ping-ponging, 2 messages in flight per pair, 64 KiB frames",
        "relayed_per_second", "msg/s", "higher", also=[CPU_PER_MSG],
    ),
    "fixed2000": Scenario(
        ["fixed", "--pairs", "50", "--rate", "2000", "--size", "64"],
        "the same pairs at a fixed 2,000 round trips/s, 64 B payloads",
        "p99_ms", "p99 ms", "lower",
    ),
    "fixed200": Scenario(
        ["fixed", "--pairs", "50", "--rate", "200", "--size", "64"],
        "the same pairs at a fixed 200 round trips/s, 64 B payloads: the latency falling back "
        "to HTTP adds (fixed2000's rate is more than the HTTP generator can offer)",
        "p99_ms", "p99 ms", "lower", servers=("relay", "relay-http"),
    ),
    "room200": Scenario(
        ["room", "--members", "200", "--rate", "500", "--size", "64"],
        "one publisher at 500 msg/s to a 200-member room (100,000 deliveries/s offered)",
        "relayed_per_second", "deliveries/s", "higher",
    ),
    "idle": Scenario(
        ["idle", "--steps", "5000,10000"],
        "registered idle connections: RSS growth per connection from 5,000 to 10,000 "
        "(and, beside it, from the server's start to 5,000)",
        "kib_per_connection", "KiB per connection", "lower", kind="idle", crowd="--steps",
    ),
    "storm": Scenario(
        ["storm", "--clients", "18000", "--window", "200", "--per-address", "4000",
         "--restart", "1"],
        "reconnect storm: 18,000 clients connecting and registering, 200 at a time, from "
        "five loopback addresses (fresh ones each run); then the server SIGKILLed and started "
        "again on its port, every client reconnecting at once",
        "registered_per_second", "registered/s", "higher", kind="storm", long=True,
        crowd="--clients",
        also=[
            ("server_us_per_registration", "server CPU µs per registration", "lower"),
            ("back_seconds", "s until all are back", "lower"),
        ],
    ),
    "room10k": Scenario(
        ["room", "--members", "10000", "--rate", "20", "--size", "64", "--grace", "5"],
        "one publisher at 20 msg/s to a 10,000-member room (200,000 deliveries/s offered)",
        "p99_ms", "p99 ms publish to delivery", "lower", long=True, crowd="--members",
        also=[("delivered_share", "share delivered", "higher")],
    ),
    "busy": Scenario(
        ["fixed", "--pairs", "500", "--rate", "32500", "--size", "64"],
        "1,000 peers ping-ponging at 65,000 msg/s in all: RSS growth per connection over the "
        "run (--busy-seconds, 20 by default), and over its second half",
        "growth_kib_per_connection", "KiB per connection", "lower", kind="busy", long=True,
        crowd="--pairs", also=[("late_growth_kib_per_connection", "2nd-half KiB per connection",
                                "lower"), CPU_PER_MSG],
    ),
}  # fmt: skip


DEFAULT = [name for name, scenario in SCENARIOS.items() if not scenario.long]
LONG = [name for name, scenario in SCENARIOS.items() if scenario.long]


def load_args(scenario: Scenario, clients: int | None) -> list[str]:
    """load.mjs's arguments, with the crowd resized to `clients` connections if given."""
    load = list(scenario.load)
    if clients is None or not scenario.crowd:
        return load
    value = {
        "--steps": f"{clients // 2},{clients}",
        "--pairs": str(max(1, clients // 2)),
    }.get(scenario.crowd, str(clients))
    load[load.index(scenario.crowd) + 1] = value
    return load


# --- one run -----------------------------------------------------------------


@dataclass(frozen=True)
class Sample:
    """Clocks read at one moment: wall, CPU seconds of each process and each core, server RSS."""

    wall: float
    server: float
    generator: float
    cpu0: float
    cpu1: float
    server_rss_kib: int

    @classmethod
    def take(cls, server: int, generator: int) -> Sample:
        return cls(
            time.monotonic(), cpu_seconds(server), cpu_seconds(generator),
            busy_seconds(0), busy_seconds(1), rss_kib(server),
        )  # fmt: skip


def window(start: Sample, end: Sample) -> dict[str, Any]:
    """Both processes' CPU over a measured window, and what others took from their cores."""
    wall = end.wall - start.wall

    def pct(seconds: float) -> int:
        # per-process and per-core clocks tick apart: clamp the difference's noise at 0
        return max(0, round(100 * seconds / wall))

    return {
        "server_cpu_pct": pct(end.server - start.server),
        "generator_cpu_pct": pct(end.generator - start.generator),
        # what other processes took from the two cores: high figures mean a noisy run
        "others_cpu0_pct": pct(end.cpu0 - start.cpu0 - (end.server - start.server)),
        "others_cpu1_pct": pct(end.cpu1 - start.cpu1 - (end.generator - start.generator)),
        "server_rss_mib": round(end.server_rss_kib / 1024),
    }


def run_idle(server: Server, load: list[str]) -> dict[str, Any]:
    """RSS at the server's start and at each step of registered connections, 1 s after it."""
    pid = server.process.pid
    start = rss_kib(pid)
    generator = Generator(load, server.url, [], deadline=300)
    points = []
    for _ in load[load.index("--steps") + 1].split(","):
        connections = generator.next_line()["connections"]
        time.sleep(1)  # let the server settle its buffers before reading RSS
        server.check_alive()
        points.append((connections, rss_kib(pid)))
        generator.go_on()
    generator.finish()
    (first, first_rss), (last, last_rss) = points[0], points[-1]
    from_start = (first_rss - start) / first
    return {
        "connections": last,
        "rss_start_kib": start,
        "rss_first_kib": first_rss,
        "rss_last_kib": last_rss,
        "kib_from_start": round(from_start, 1),
        # with one step, the growth from the start is all there is
        "kib_per_connection": round((last_rss - first_rss) / (last - first), 1)
        if last > first
        else round(from_start, 1),
    }


_storm_runs = 0


def fresh_addresses(load: list[str]) -> list[str]:
    """``--first-address`` for a storm run: loopback addresses no socket holds now.

    A run leaves its clients' sockets in TIME_WAIT for a minute, and a client
    bound to an address cannot take a port held so: reusing the addresses
    would slow the next server's connects for reasons of the bench's own.
    That holds across invocations too: a bench started within a minute of
    another skips the addresses the other left in TIME_WAIT.
    """
    global _storm_runs
    clients = int(load[load.index("--clients") + 1])
    per_address = int(load[load.index("--per-address") + 1])
    count = -(-clients // per_address)
    blocks = 252 // count
    if not blocks:
        raise SystemExit(f"storm: {clients} clients need more than 127.0.0.2-254")
    busy = busy_loopback_addresses()
    for step in range(blocks):
        first = 2 + count * ((_storm_runs + step) % blocks)
        if busy.isdisjoint(range(first, first + count)):
            _storm_runs += step + 1
            return ["--first-address", str(first)]
    raise SystemExit("storm: every block of loopback addresses holds sockets; wait a minute")


def busy_loopback_addresses() -> set[int]:
    """The last bytes of the 127.0.0.x addresses a TCP socket is bound to (TIME_WAIT too)."""
    busy: set[int] = set()
    with open("/proc/net/tcp") as table:
        next(table)
        for line in table:
            address = int(line.split(None, 2)[1].split(":")[0], 16)  # little-endian
            if address & 0xFF == 127:
                busy.add(address >> 24)
    return busy


def run_storm(server: Server, load: list[str]) -> dict[str, Any]:
    """Connects the crowd (CPU read around it), then SIGKILLs and restarts the server."""
    generator = Generator(load + fresh_addresses(load), server.url, [], deadline=900)
    samples: list[Sample] = []
    result: dict[str, Any] = {}
    for line in generator.lines():
        if line.get("event") in ("measuring", "measured"):
            samples.append(Sample.take(server.process.pid, generator.process.pid))
        elif line.get("event") == "registered":
            server.check_alive()
            result["restart_seconds"] = round(server.restart(), 3)
        else:
            result.update(line)
    server.check_alive()
    generator.finish()
    start, end = samples
    # what a registration costs the server, whichever process set the rate
    result["server_us_per_registration"] = round(
        1e6 * (end.server - start.server) / result["clients"], 1
    )
    return {**result, **window(start, end)}


def run_rate(server: Server, load: list[str], seconds: float, warmup: float) -> dict[str, Any]:
    """A measured window of load; its result plus CPU, RSS (and mid-window RSS) read around it."""
    pid = server.process.pid
    timing = ["--seconds", str(seconds), "--warmup", str(warmup)]
    options = timing + server.load_options
    generator = Generator(load, server.url, options, deadline=seconds + warmup + 120)
    samples: list[Sample] = []  # as the measured window opens and closes
    mid: list[int] = []
    result: dict[str, Any] = {}
    for line in generator.lines():
        if "event" in line:
            samples.append(Sample.take(pid, generator.process.pid))
            if len(samples) == 1:
                threading.Timer(seconds / 2, lambda: mid.append(rss_kib(pid))).start()
        else:
            result = line
    server.check_alive()
    generator.finish()
    start, end = samples
    result.update(window(start, end))
    server_seconds = end.server - start.server
    messages = result["relayed_per_second"] * (end.wall - start.wall)
    result["server_us_per_msg"] = round(1e6 * server_seconds / messages, 2) if messages else None
    result["rss_before_kib"], result["rss_after_kib"] = start.server_rss_kib, end.server_rss_kib
    result["rss_mid_kib"] = mid[0] if mid else None
    return result


def run_once(name: str, server: Server, args: argparse.Namespace) -> dict[str, Any]:
    """Drives `server` with scenario `name`; returns load.mjs's result plus CPU or RSS."""
    scenario = SCENARIOS[name]
    load = load_args(scenario, args.clients)
    if scenario.kind == "idle":
        return run_idle(server, load)
    if scenario.kind == "storm":
        return run_storm(server, load)
    if scenario.kind != "busy":
        return run_rate(server, load, args.seconds, args.warmup)
    result = run_rate(server, load, args.busy_seconds, 0)  # "before" is right after registering
    peers = 2 * int(load[load.index("--pairs") + 1])
    result["growth_kib_per_connection"] = round(
        (result["rss_after_kib"] - result["rss_before_kib"]) / peers, 1
    )
    if result["rss_mid_kib"] is not None:
        late = (result["rss_after_kib"] - result["rss_mid_kib"]) / peers
        result["late_growth_kib_per_connection"] = round(late, 1)
    return result


# --- main --------------------------------------------------------------------


def relay_default_ws_impl() -> str:
    from relay.settings import Settings

    return os.environ.get("RELAY_WS_IMPL") or Settings().ws_impl


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0] if __doc__ else None,
        epilog="Tables are Markdown; progress goes to stderr. See docs/benchmarks.md.",
    )
    parser.add_argument(
        "--only", nargs="+", choices=list(SCENARIOS), metavar="SCENARIO",
        help=f"scenarios to run (default: {', '.join(DEFAULT)}; the long ones, "
        f"{', '.join(LONG)}, take minutes per server and run only when named here)",
    )  # fmt: skip
    parser.add_argument(
        "--servers", default=",".join(SERVERS), type=server_list,
        help=f"comma-separated servers to run, of {', '.join(SERVERS)} (default: all)",
    )  # fmt: skip
    parser.add_argument(
        "--rounds", type=int, default=1,
        help="run every server this many times per scenario, the order reversed every other "
        "round; figures are medians (default: 1)",
    )  # fmt: skip
    parser.add_argument(
        "--seconds", type=float, default=8, help="measured seconds per run (default: 8)"
    )
    parser.add_argument(
        "--warmup", type=float, default=2,
        help="seconds of load before the measured window (default: 2)",
    )  # fmt: skip
    parser.add_argument(
        "--ws-impl", default=relay_default_ws_impl(),
        help="passed to `relay serve --ws-impl` (default: the relay's own, %(default)s)",
    )  # fmt: skip
    parser.add_argument(
        "--clients", type=int, metavar="N",
        help="resize the crowd: storm's clients, room10k's members, busy's peers, idle's last "
        "step (its first at N/2); for quick checks (default: each scenario's own)",
    )  # fmt: skip
    parser.add_argument(
        "--busy-seconds", type=float, default=20,
        help="busy's measured seconds (default: 20; RSS is read at the start, middle and end)",
    )  # fmt: skip
    parser.add_argument("--json", metavar="FILE", type=Path, help="also write the results here")
    args = parser.parse_args(argv)
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")
    if args.clients is not None and args.clients < 2:
        parser.error("--clients must be at least 2")
    return args


def server_list(text: str) -> list[str]:
    chosen = [name.strip() for name in text.split(",") if name.strip()]
    unknown = sorted(set(chosen) - set(SERVERS))
    if unknown or not chosen:
        raise argparse.ArgumentTypeError(f"choose from {', '.join(SERVERS)}")
    return [name for name in SERVERS if name in chosen]


def servers_for(name: str, servers: list[str]) -> list[str]:
    """The servers scenario ``name`` runs: relay-http only where load.mjs can drive it."""
    scenario = SCENARIOS[name]
    mode = scenario.load[0]
    return [
        server
        for server in servers
        if (server != "relay-http" or mode in HTTP_MODES)
        and (not scenario.servers or server in scenario.servers)
    ]


def run_all(args: argparse.Namespace, report: Callable[[str], None]) -> dict[str, Any]:
    """Each selected scenario, round and server in turn; returns the runs and their summaries."""
    names = args.only or DEFAULT
    total = sum(len(servers_for(name, args.servers)) for name in names) * args.rounds
    done = 0
    results: dict[str, Any] = {}
    for name in names:
        servers = servers_for(name, args.servers)
        runs: dict[str, list[dict[str, Any]]] = {server: [] for server in servers}
        for round_ in range(args.rounds):
            order = servers if round_ % 2 == 0 else servers[::-1]
            for server_name in order:
                done += 1
                report(f"[{done}/{total}] {name}, round {round_ + 1}, {server_name} ... ")
                started = time.monotonic()
                with running(server_name, args.ws_impl) as server:
                    result = run_once(name, server, args)
                runs[server_name].append({"round": round_ + 1, **result})
                scenario = SCENARIOS[name]
                figure = result.get(scenario.figure)
                shown = "-" if figure is None else f"{figure:,.2f}".removesuffix(".00")
                report(f"{shown} {scenario.unit} ({time.monotonic() - started:.0f} s)\n")
        summaries = {server: summarize(runs[server]) for server in servers}
        results[name] = {
            "what": SCENARIOS[name].what,
            "figure": SCENARIOS[name].figure,
            "better": SCENARIOS[name].better,
            "runs": runs,
            "servers": summaries,
            "ratios": {key: ratios(key, summaries) for key, _, _ in SCENARIOS[name].compared()},
        }
    return results


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if shutil.which("node") is None or not (HERE / "node_modules" / "ws").exists():
        raise SystemExit("needs node and tests/bench/node_modules (make install)")
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    # idle opens 10,000 sockets, storm 18,000: the servers and load.mjs inherit the limit
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))

    def progress(text: str) -> None:
        print(text, end="", file=sys.stderr, flush=True)

    results = run_all(args, progress)
    labels = {
        "relay": f"relay ({args.ws_impl})", "ws": "node ws", "ws-msgpackr": "node ws (msgpackr)",
        "bare": "bare", "pyfloor": "pyfloor", "relay-http": "relay over HTTP",
    }  # fmt: skip
    placement = (
        "servers on CPU 0, load.mjs on CPU 1"
        if can_pin()
        else "NOT pinned (needs taskset and 2 CPUs): figures are not comparable"
    )
    print(
        f"{args.seconds:g} s measured after {args.warmup:g} s warm-up, {args.rounds} round(s), "
        f"{placement}; figures are medians over rounds\n"
    )
    print(
        "\n\n".join(
            table(
                f"{name}: {SCENARIOS[name].what}",
                SCENARIOS[name].kind,
                SCENARIOS[name].load[0],
                SCENARIOS[name].compared(),
                result["servers"],
                labels,
            )
            for name, result in results.items()
        )
    )
    if args.json:
        conditions = {
            "seconds": args.seconds, "warmup": args.warmup, "rounds": args.rounds,
            "ws_impl": args.ws_impl, "pinned": can_pin(), "cpus": os.cpu_count(),
            "clients": args.clients, "busy_seconds": args.busy_seconds,
            "node": subprocess.run(["node", "--version"], capture_output=True, text=True)
            .stdout.strip(),
            "python": sys.version.split()[0], "date": time.strftime("%Y-%m-%d %H:%M %z"),
        }  # fmt: skip
        args.json.write_text(json.dumps({"conditions": conditions, "scenarios": results}, indent=1))


if __name__ == "__main__":
    main()
