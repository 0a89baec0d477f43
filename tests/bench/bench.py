"""Benchmark the relay's hot path: a real relay on one core, load on the other.

    python tests/bench/bench.py                      # every scenario, ~1 minute
    python tests/bench/bench.py --only pairs64 idle  # some of them
    python tests/bench/bench.py --url ws://host:port/v1/ws   # an already running relay

Starts `relay serve` pinned to CPU 0 (taskset) with protocol, limits and
metrics all on (rate limits raised so the load is not refused), and drives it
with tests/bench/load.mjs (Node + ws) pinned to CPU 1. For each scenario it
prints the throughput and round-trip percentiles the generator saw, plus how
busy each side's core was: a generator near 100% means the figure is the
generator's limit, not the relay's.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
LOAD = ROOT / "tests" / "bench" / "load.mjs"
TICKS = os.sysconf("SC_CLK_TCK")

SCENARIOS: dict[str, list[str]] = {
    "pairs64": ["pairs", "--pairs", "50", "--inflight", "16", "--size", "64"],
    "pairs4k": ["pairs", "--pairs", "50", "--inflight", "16", "--size", "4096"],
    "fixed2000": ["fixed", "--pairs", "50", "--rate", "2000", "--size", "64"],
    "room200": ["room", "--members", "200", "--rate", "500", "--size", "64"],
    "idle": ["idle", "--connections", "5000"],
}


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def rss_kib(pid: int) -> int:
    found = re.search(r"VmRSS:\s+(\d+) kB", Path(f"/proc/{pid}/status").read_text())
    return int(found.group(1)) if found else 0


def pinned(cpu: int | None, command: list[str]) -> list[str]:
    if cpu is None or shutil.which("taskset") is None or (os.cpu_count() or 1) < 2:
        return command
    return ["taskset", "-c", str(cpu), *command]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_relay(args: argparse.Namespace) -> tuple[subprocess.Popen[str], str]:
    port = free_port()
    command = [
        str(ROOT / ".venv" / "bin" / "relay"), "serve", "--port", str(port),
        "--log-level", "warning", "--ws-impl", args.ws_impl,
        "--rate-per-second", "1000000", "--rate-burst", "1000000",
        "--queue-messages", "100000", "--queue-bytes", "100000000",
        # every load connection comes from 127.0.0.1: no admission caps
        "--max-connections", "0", "--max-connections-per-ip", "0",
        "--handshake-rate-per-second", "0",
    ]  # fmt: skip
    relay = subprocess.Popen(pinned(0, command), stderr=subprocess.PIPE, text=True)
    assert relay.stderr is not None
    for line in relay.stderr:
        if "relay ready on" in line:
            return relay, f"ws://127.0.0.1:{port}/v1/ws"
    raise SystemExit("the relay did not start")


def run_scenario(
    name: str, url: str, relay_pid: int | None, args: argparse.Namespace
) -> dict[str, Any]:
    command = pinned(1, ["node", str(LOAD), *SCENARIOS[name], "--url", url])
    if name != "idle":
        command += ["--seconds", str(args.seconds)]
    relay_cpu = cpu_seconds(relay_pid) if relay_pid else 0.0
    started = time.monotonic()
    if name == "idle":
        base = rss_kib(relay_pid) if relay_pid else 0
        load = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert load.stdout is not None and load.stdin is not None
        ready = json.loads(load.stdout.readline())
        time.sleep(1)  # let the relay settle its buffers before reading RSS
        grown = (rss_kib(relay_pid) - base) if relay_pid else 0
        load.stdin.close()
        load.wait()
        return {
            **ready,
            "rss_growth_kib": grown,
            "kib_per_connection": round(grown / ready["connections"], 1),
        }
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    output = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    wall = time.monotonic() - started
    result: dict[str, Any] = json.loads(output.strip().splitlines()[-1])
    load_cpu = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    result["generator_cpu_pct"] = round(100 * load_cpu / wall)
    if relay_pid:
        result["relay_cpu_pct"] = round(100 * (cpu_seconds(relay_pid) - relay_cpu) / wall)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", nargs="*", choices=sorted(SCENARIOS), help="scenarios to run")
    parser.add_argument("--seconds", type=float, default=8, help="measured seconds per scenario")
    parser.add_argument("--url", help="drive this running relay instead of starting one")
    parser.add_argument("--ws-impl", default="websockets-sansio", help="uvicorn ws implementation")
    parser.add_argument("--json", action="store_true", help="print raw JSON lines")
    args = parser.parse_args()
    if shutil.which("node") is None or not (ROOT / "clients/js/node_modules/ws").exists():
        raise SystemExit("needs node and clients/js/node_modules (npm ci --prefix clients/js)")
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    relay = None
    url = args.url
    if url is None:
        relay, url = start_relay(args)
    try:
        for name in args.only or list(SCENARIOS):
            print(f"... {name}", file=sys.stderr, flush=True)
            result = run_scenario(name, url, relay.pid if relay else None, args)
            print(json.dumps(result) if args.json else f"{name:10} {format_result(result)}")
    finally:
        if relay is not None:
            relay.terminate()
            relay.wait()


def format_result(result: dict[str, Any]) -> str:
    if result["mode"] == "idle":
        return (
            f"{result['connections']} idle connections: +{result['rss_growth_kib']} KiB RSS, "
            f"{result['kib_per_connection']} KiB each"
        )
    shown = f"{result['relayed_per_second']:>7} msg/s  p50 {result['p50_ms']:.2f} ms  "
    shown += f"p99 {result['p99_ms']:.2f} ms  relay cpu {result.get('relay_cpu_pct', '?')}%  "
    shown += f"generator cpu {result['generator_cpu_pct']}%"
    if "expected_per_second" in result:
        shown += f"  (offered {result['expected_per_second']}/s)"
    return shown


if __name__ == "__main__":
    main()
