"""Benchmark the relay against node `ws` and a bare forwarder, as ratios, in one run.

    python tests/bench/bench.py                        # every scenario, one round, ~4 minutes
    python tests/bench/bench.py --only pairs64 idle    # some of them
    python tests/bench/bench.py --rounds 3 --json out.json

For each scenario, each server in turn (the relay, tests/bench/ws_forwarder.mjs,
tests/bench/bare.py) is started fresh, pinned to CPU 0 (taskset), and driven
by tests/bench/load.mjs (Node + ws) pinned to CPU 1 for the same time; the
order alternates between rounds. One table per scenario gives each server's
figure, the relay's ratio to node `ws` and to the bare forwarder, both
processes' CPU during the measured window, and which of them saturated.
Absolute figures vary between machines; ratios from one run do not.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import re
import resource
import shutil
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

ROOT = Path(__file__).resolve().parents[2]
HERE = ROOT / "tests" / "bench"
TICKS = os.sysconf("SC_CLK_TCK")
SATURATED_PCT = 90
SERVERS = ("relay", "ws", "bare")


@dataclass(frozen=True)
class Scenario:
    """One load.mjs invocation and the figure its ratios compare."""

    load: list[str]
    what: str
    figure: str  # the result key the ratios compare
    unit: str  # how the table names that figure
    better: str  # "higher" or "lower"


PAIRS = ["pairs", "--pairs", "50"]
SCENARIOS: dict[str, Scenario] = {
    "pairs64": Scenario(
        [*PAIRS, "--inflight", "16", "--size", "64"],
        "50 pairs ping-ponging, 16 messages in flight per pair, 64 B payloads",
        "relayed_per_second",
        "msg/s",
        "higher",
    ),
    "pairs64ok": Scenario(
        [*PAIRS, "--inflight", "16", "--size", "64", "--ids", "1"],
        "pairs64 with an id on every send: the relay answers each ok once the target's host "
        "acknowledged it (node ws and the bare forwarder answer nothing)",
        "relayed_per_second",
        "msg/s",
        "higher",
    ),
    "pairs4k": Scenario(
        [*PAIRS, "--inflight", "16", "--size", "4096"],
        "50 pairs ping-ponging, 16 messages in flight per pair, 4 KiB payloads",
        "relayed_per_second",
        "msg/s",
        "higher",
    ),
    # 65,400 B payloads make frames just under the relay's 64 KiB max-frame-bytes.
    "pairs64k": Scenario(
        [*PAIRS, "--inflight", "2", "--size", "65400"],
        "50 pairs ping-ponging, 2 messages in flight per pair, 64 KiB frames",
        "relayed_per_second",
        "msg/s",
        "higher",
    ),
    "fixed2000": Scenario(
        ["fixed", "--pairs", "50", "--rate", "2000", "--size", "64"],
        "the same pairs at a fixed 2,000 round trips/s, 64 B payloads",
        "p99_ms",
        "p99 ms",
        "lower",
    ),
    "room200": Scenario(
        ["room", "--members", "200", "--rate", "500", "--size", "64"],
        "one publisher at 500 msg/s to a 200-member room (100,000 deliveries/s offered)",
        "relayed_per_second",
        "deliveries/s",
        "higher",
    ),
    "idle": Scenario(
        ["idle", "--connections", "5000"],
        "5,000 registered idle connections: RSS growth per connection",
        "kib_per_connection",
        "KiB per connection",
        "lower",
    ),
}


# --- processes ---------------------------------------------------------------


def cpu_seconds(pid: int) -> float:
    """CPU time used so far by a process and all its threads."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def busy_seconds(cpu: int) -> float:
    """CPU time a core has spent on anything (not idle or waiting for I/O) since boot."""
    for line in Path("/proc/stat").read_text().splitlines():
        if line.startswith(f"cpu{cpu} "):
            ticks = [int(field) for field in line.split()[1:9]]
            return (sum(ticks) - ticks[3] - ticks[4]) / TICKS
    return 0.0


def rss_kib(pid: int) -> int:
    found = re.search(r"VmRSS:\s+(\d+) kB", Path(f"/proc/{pid}/status").read_text())
    return int(found.group(1)) if found else 0


def can_pin() -> bool:
    return shutil.which("taskset") is not None and (os.cpu_count() or 1) >= 2


def pinned(cpu: int, command: list[str]) -> list[str]:
    # taskset execs the command: the pid we get is the server's or generator's own.
    return ["taskset", "-c", str(cpu), *command] if can_pin() else command


def server_command(name: str, ws_impl: str) -> list[str]:
    if name == "ws":
        return ["node", str(HERE / "ws_forwarder.mjs"), "0"]
    if name == "bare":
        return [sys.executable, str(HERE / "bare.py"), "0"]
    return [
        str(ROOT / ".venv" / "bin" / "relay"), "serve", "--port", "0",
        "--log-level", "warning", "--ws-impl", ws_impl,
        # protocol checks, limits and metrics stay on; only refusals are lifted
        "--rate-per-second", "1000000", "--rate-burst", "1000000",
        "--queue-messages", "100000", "--queue-bytes", "100000000",
        # every load connection comes from 127.0.0.1: no admission caps
        "--max-connections", "0", "--max-connections-per-ip", "0",
        "--handshake-rate-per-second", "0",
    ]  # fmt: skip


def keep_tail(stream: IO[str], tail: collections.deque[str]) -> None:
    """Reads a child's stderr to its end in a thread, so a full pipe never blocks the child."""

    def read() -> None:
        for line in stream:
            tail.append(line)

    threading.Thread(target=read, daemon=True).start()


class Server:
    """A server process on CPU 0; the last lines it wrote to stderr are kept for errors."""

    def __init__(self, name: str, ws_impl: str) -> None:
        self.name = name
        self.process = subprocess.Popen(
            pinned(0, server_command(name, ws_impl)), stderr=subprocess.PIPE, text=True
        )
        self.tail: collections.deque[str] = collections.deque(maxlen=20)
        self.url = self._wait_ready()

    def _wait_ready(self) -> str:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            self.tail.append(line)
            found = re.search(r"ready on (ws://\S+)", line)
            if found:
                keep_tail(self.process.stderr, self.tail)
                return found.group(1)
        raise SystemExit(f"{self.name} did not start:\n{''.join(self.tail)}")

    def check_alive(self) -> None:
        if self.process.poll() is not None:
            raise SystemExit(f"{self.name} exited during the run:\n{''.join(self.tail)}")

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


@contextmanager
def running(name: str, ws_impl: str) -> Iterator[Server]:
    server = Server(name, ws_impl)
    try:
        yield server
    finally:
        server.stop()


class Generator:
    """load.mjs on CPU 1, killed if it outlives `deadline` seconds."""

    def __init__(self, scenario: Scenario, url: str, options: list[str], deadline: float) -> None:
        command = ["node", str(HERE / "load.mjs"), *scenario.load, "--url", url, *options]
        self.process = subprocess.Popen(
            pinned(1, command),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.tail: collections.deque[str] = collections.deque(maxlen=20)
        assert self.process.stderr is not None
        keep_tail(self.process.stderr, self.tail)
        self.watchdog = threading.Timer(deadline, self.process.kill)
        self.watchdog.start()

    def lines(self) -> Iterator[dict[str, Any]]:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            yield json.loads(line)

    def finish(self) -> None:
        """Closes its stdin (which ends an idle run) and waits for it to exit."""
        assert self.process.stdin is not None
        self.process.stdin.close()
        code = self.process.wait()
        self.watchdog.cancel()
        if code != 0:
            raise SystemExit(f"load.mjs failed ({code}):\n{''.join(self.tail)}")


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


def run_once(name: str, server: Server, args: argparse.Namespace) -> dict[str, Any]:
    """Drives `server` with scenario `name`; returns load.mjs's result plus CPU or RSS."""
    scenario = SCENARIOS[name]
    pid = server.process.pid
    if name == "idle":
        base = rss_kib(pid)
        load = Generator(scenario, server.url, [], deadline=300)
        ready = next(load.lines(), None)
        if ready is None:
            load.finish()  # raises with load.mjs's error
            raise SystemExit("load.mjs opened no connections")
        time.sleep(1)  # let the server settle its buffers before reading RSS
        grown = rss_kib(pid) - base
        server.check_alive()
        load.finish()
        return {
            **ready,
            "rss_growth_kib": grown,
            "kib_per_connection": round(grown / ready["connections"], 1),
        }
    timing = ["--seconds", str(args.seconds), "--warmup", str(args.warmup)]
    load = Generator(scenario, server.url, timing, deadline=args.seconds + args.warmup + 120)
    samples: list[Sample] = []  # as the measured window opens and closes
    result: dict[str, Any] = {}
    for line in load.lines():
        if "event" in line:
            samples.append(Sample.take(pid, load.process.pid))
        else:
            result = line
    server.check_alive()
    load.finish()
    start, end = samples
    wall = end.wall - start.wall

    def pct(seconds: float) -> int:
        # per-process and per-core clocks tick apart: clamp the difference's noise at 0
        return max(0, round(100 * seconds / wall))

    result["server_cpu_pct"] = pct(end.server - start.server)
    result["generator_cpu_pct"] = pct(end.generator - start.generator)
    # what other processes took from the two cores: high figures mean a noisy run
    result["others_cpu0_pct"] = pct(end.cpu0 - start.cpu0 - (end.server - start.server))
    result["others_cpu1_pct"] = pct(end.cpu1 - start.cpu1 - (end.generator - start.generator))
    result["server_rss_mib"] = round(end.server_rss_kib / 1024)
    return result


# --- summary -----------------------------------------------------------------


def median(runs: list[dict[str, Any]], key: str) -> Any:
    values = [run[key] for run in runs if run.get(key) is not None]
    return statistics.median(values) if values else None


def summarize(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """One server's runs of one scenario: the median of every figure over the rounds."""
    keys = {
        key
        for run in runs
        for key, value in run.items()
        # a figure may be null (no latency samples when nothing came back)
        if (value is None or isinstance(value, int | float))
        and not isinstance(value, bool)
        and key != "round"
    }
    summary: dict[str, Any] = {key: median(runs, key) for key in sorted(keys)}
    closed: collections.Counter[str] = collections.Counter()
    for run in runs:
        closed.update(run.get("closed", {}))
    summary["closed"] = dict(closed)
    summary["rounds"] = len(runs)
    return summary


def ratios(name: str, summaries: dict[str, dict[str, Any]]) -> dict[str, float | None]:
    """The relay's figure divided by each other server's."""
    if "relay" not in summaries:
        return {}
    figure = SCENARIOS[name].figure
    mine = summaries["relay"][figure]
    out: dict[str, float | None] = {}
    for other in summaries:
        if other != "relay":
            theirs = summaries[other][figure]
            out[f"relay/{other}"] = round(mine / theirs, 2) if mine is not None and theirs else None
    return out


def saturated(summary: dict[str, Any]) -> str:
    hot = [
        who
        for who, key in (("server", "server_cpu_pct"), ("generator", "generator_cpu_pct"))
        if (summary.get(key) or 0) >= SATURATED_PCT
    ]
    return " + ".join(hot) or "-"


def number(value: Any, digits: int = 2) -> str:
    if value is None:
        return "-"
    if isinstance(value, float) and digits:
        return f"{value:.{digits}f}"
    return f"{round(value):,}"


def table(name: str, summaries: dict[str, dict[str, Any]], labels: dict[str, str]) -> str:
    """A Markdown table of one scenario, then the ratio line."""
    scenario = SCENARIOS[name]
    if name == "idle":
        header = ["server", scenario.unit, "RSS growth KiB", "connections"]
        rows = [
            [labels[server], number(s["kib_per_connection"], 1), number(s["rss_growth_kib"], 0),
             number(s["connections"], 0)]
            for server, s in summaries.items()
        ]  # fmt: skip
    else:
        rate = "deliveries/s" if name == "room200" else "msg/s"
        header = [
            "server", rate, "p50 ms", "p99 ms", "server CPU %", "generator CPU %", "saturated",
            "others CPU 0/1 %", "server RSS MiB",
        ]  # fmt: skip
        if name == "room200":
            header += ["delivered", "subscribers closed"]
        rows = []
        for server, s in summaries.items():
            row = [
                labels[server], number(s["relayed_per_second"], 0), number(s["p50_ms"]),
                number(s["p99_ms"]), number(s["server_cpu_pct"], 0),
                number(s["generator_cpu_pct"], 0), saturated(s),
                f"{number(s['others_cpu0_pct'], 0)} / {number(s['others_cpu1_pct'], 0)}",
                number(s["server_rss_mib"], 0),
            ]  # fmt: skip
            if name == "room200":
                share = s["delivered_share"]
                row += [
                    "-" if share is None else f"{100 * share:.2f}%",
                    ", ".join(f"{code}: {n}" for code, n in sorted(s["closed"].items())) or "0",
                ]
            rows.append(row)
    lines = [
        f"### {name}: {scenario.what}",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
        *("| " + " | ".join(row) + " |" for row in rows),
    ]
    found = ratios(name, summaries)
    if found:
        shown = ", ".join(f"{pair} {number(value)}" for pair, value in found.items())
        lines += ["", f"ratios ({scenario.unit}, {scenario.better} is better): {shown}"]
    return "\n".join(lines)


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
        help=f"scenarios to run (default: all of {', '.join(SCENARIOS)})",
    )  # fmt: skip
    parser.add_argument(
        "--servers", default=",".join(SERVERS), type=server_list,
        help="comma-separated servers to run, of relay, ws, bare (default: all three)",
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
    parser.add_argument("--json", metavar="FILE", type=Path, help="also write the results here")
    args = parser.parse_args(argv)
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")
    return args


def server_list(text: str) -> list[str]:
    chosen = [name.strip() for name in text.split(",") if name.strip()]
    unknown = sorted(set(chosen) - set(SERVERS))
    if unknown or not chosen:
        raise argparse.ArgumentTypeError(f"choose from {', '.join(SERVERS)}")
    return [name for name in SERVERS if name in chosen]


def run_all(args: argparse.Namespace, report: Callable[[str], None]) -> dict[str, Any]:
    """Each selected scenario, round and server in turn; returns the runs and their summaries."""
    names = args.only or list(SCENARIOS)
    total = len(names) * args.rounds * len(args.servers)
    done = 0
    results: dict[str, Any] = {}
    for name in names:
        runs: dict[str, list[dict[str, Any]]] = {server: [] for server in args.servers}
        for round_ in range(args.rounds):
            order = args.servers if round_ % 2 == 0 else args.servers[::-1]
            for server_name in order:
                done += 1
                report(f"[{done}/{total}] {name}, round {round_ + 1}, {server_name} ... ")
                started = time.monotonic()
                with running(server_name, args.ws_impl) as server:
                    result = run_once(name, server, args)
                runs[server_name].append({"round": round_ + 1, **result})
                scenario = SCENARIOS[name]
                shown = number(result[scenario.figure], 0 if "/s" in scenario.unit else 2)
                report(f"{shown} {scenario.unit} ({time.monotonic() - started:.0f} s)\n")
        summaries = {server: summarize(runs[server]) for server in args.servers}
        results[name] = {
            "what": SCENARIOS[name].what,
            "figure": SCENARIOS[name].figure,
            "better": SCENARIOS[name].better,
            "runs": runs,
            "servers": summaries,
            "ratios": ratios(name, summaries),
        }
    return results


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if shutil.which("node") is None or not (HERE / "node_modules" / "ws").exists():
        raise SystemExit("needs node and tests/bench/node_modules (make install)")
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # idle opens 5,000 sockets

    def progress(text: str) -> None:
        print(text, end="", file=sys.stderr, flush=True)

    results = run_all(args, progress)
    labels = {"relay": f"relay ({args.ws_impl})", "ws": "node ws", "bare": "bare"}
    placement = (
        "servers on CPU 0, load.mjs on CPU 1"
        if can_pin()
        else "NOT pinned (needs taskset and 2 CPUs): figures are not comparable"
    )
    print(
        f"{args.seconds:g} s measured after {args.warmup:g} s warm-up, {args.rounds} round(s), "
        f"{placement}; figures are medians over rounds\n"
    )
    print("\n\n".join(table(name, result["servers"], labels) for name, result in results.items()))
    if args.json:
        conditions = {
            "seconds": args.seconds, "warmup": args.warmup, "rounds": args.rounds,
            "ws_impl": args.ws_impl, "pinned": can_pin(), "cpus": os.cpu_count(),
            "node": subprocess.run(["node", "--version"], capture_output=True, text=True)
            .stdout.strip(),
            "python": sys.version.split()[0], "date": time.strftime("%Y-%m-%d %H:%M %z"),
        }  # fmt: skip
        args.json.write_text(json.dumps({"conditions": conditions, "scenarios": results}, indent=1))


if __name__ == "__main__":
    main()
