"""The benchmark still runs: every server starts, relays, and lands in a parsable table.

A very short run of tests/bench/bench.py, so the instrument cannot rot between
the times someone measures with it. Nothing here asserts a timing.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

from relay.settings import Settings

BENCH = Path(__file__).with_name("bench.py")
SERVERS = ("relay", "ws", "ws-msgpackr", "bare", "pyfloor", "relay-http")
LABELS = ["relay", "node ws", "node ws (msgpackr)", "bare", "pyfloor", "relay over HTTP"]
# relay-http runs only the scenarios of load.mjs's pairs and fixed modes.
SERVERS_IN = {"pairs64": SERVERS, "room200": SERVERS[:-1]}


def tables(output: str) -> dict[str, list[dict[str, str]]]:
    """Each scenario's Markdown table, as one dict per row keyed by column header."""
    found: dict[str, list[dict[str, str]]] = {}
    for section in re.split(r"^### ", output, flags=re.M)[1:]:
        name = section.split(":", 1)[0]
        header, _, *rows = [line for line in section.splitlines() if line.startswith("|")]
        columns = [cell.strip() for cell in header.strip("|").split("|")]
        found[name] = [
            dict(zip(columns, (cell.strip() for cell in row.strip("|").split("|")), strict=True))
            for row in rows
        ]
    return found


def ratios(output: str, scenario: str) -> dict[str, float]:
    section = output.split(f"### {scenario}:", 1)[1].split("\n### ", 1)[0]
    line = re.search(r"^ratios \(.*?\): (.*)$", section, re.M)
    assert line is not None, section
    return {pair: float(value) for pair, value in re.findall(r"(relay/[\w-]+) ([\d.]+)", line[1])}


def rate(row: dict[str, str]) -> int:
    return int((row.get("msg/s") or row["deliveries/s"]).replace(",", ""))


def test_a_short_run_against_every_server_relays_and_prints_ratios(tmp_path: Path) -> None:
    results = tmp_path / "bench.json"
    run = subprocess.run(
        [sys.executable, str(BENCH), "--only", "pairs64", "room200",
         "--seconds", "0.5", "--warmup", "0.2", "--json", str(results)],
        capture_output=True, text=True, timeout=90, check=False,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr

    found = tables(run.stdout)
    assert set(found) == {"pairs64", "room200"}
    for scenario, rows in found.items():
        assert rows[0]["server"].startswith("relay ("), rows
        servers = SERVERS_IN[scenario]
        assert [row["server"] for row in rows][1:] == LABELS[1 : len(servers)], rows
        assert all(rate(row) > 0 for row in rows), rows
        assert set(ratios(run.stdout, scenario)) == {f"relay/{s}" for s in servers[1:]}
    for row in found["room200"]:
        assert re.fullmatch(r"[\d.]+%", row["delivered"]), row
        assert re.fullmatch(r"0|\d+: \d+(, \d+: \d+)*", row["subscribers closed"]), row
    # one progress line per run on stderr
    assert len(re.findall(r"^\[\d+/11\] ", run.stderr, re.M)) == 11, run.stderr
    assert "pyfloor" in run.stdout.split("### pairs64:", 1)[1].split("server CPU per message", 1)[1]

    saved = json.loads(results.read_text())["scenarios"]
    for scenario in ("pairs64", "room200"):
        for server in SERVERS_IN[scenario]:
            (only_run,) = saved[scenario]["runs"][server]
            assert only_run["relayed_per_second"] > 0
            assert only_run["server_cpu_pct"] > 0
        # ratios by the figure compared, then by pair
        assert saved[scenario]["ratios"][saved[scenario]["figure"]]["relay/ws"] > 0


def test_the_crowd_scenarios_run_small(tmp_path: Path) -> None:
    """storm (with its SIGKILL and restart), room10k, busy and idle, with 200 clients."""
    results = tmp_path / "bench.json"
    run = subprocess.run(
        [sys.executable, str(BENCH), "--only", "storm", "room10k", "busy", "idle",
         "--servers", "relay,pyfloor", "--clients", "200", "--seconds", "0.5", "--warmup", "0.2",
         "--busy-seconds", "1", "--json", str(results)],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr

    found = tables(run.stdout)
    assert set(found) == {"storm", "room10k", "busy", "idle"}
    for row in found["storm"]:
        assert int(row["registered/s"].replace(",", "")) > 0, row
        assert float(row["all back s"]) > 0, row
        assert float(row["101 after ms"]) > 0 and float(row["welcome after ms"]) > 0, row
        # 200 registrations may take less CPU than one clock tick: present, not negative
        assert float(row["server µs/registration"]) >= 0, row
    for row in found["room10k"]:
        assert re.fullmatch(r"[\d.]+%", row["delivered"]), row
    saved = json.loads(results.read_text())["scenarios"]
    for server in ("relay", "pyfloor"):
        (storm,) = saved["storm"]["runs"][server]
        assert storm["clients"] == 200 and storm["restart_seconds"] > 0
        (busy,) = saved["busy"]["runs"][server]
        assert busy["pairs"] == 100 and busy["rss_mid_kib"] > 0
        (idle,) = saved["idle"]["runs"][server]
        assert idle["connections"] == 200 and idle["kib_per_connection"] is not None


def test_help_names_every_option() -> None:
    text = subprocess.run(
        [sys.executable, str(BENCH), "--help"], capture_output=True, text=True, check=True
    ).stdout
    for option in (
        "--only",
        "--servers",
        "--rounds",
        "--seconds",
        "--ws-impl",
        "--json",
        "--clients",
        "--busy-seconds",
    ):
        assert option in text


def test_the_references_welcome_with_the_relays_own_limits() -> None:
    # The references' welcome is as large as the relay's only while these match its defaults.
    limits = json.loads(BENCH.with_name("welcome_limits.json").read_text())
    assert limits == Settings().advertised_limits()


def test_the_cluster_bench_runs_split_pairs_over_redis() -> None:
    """tests/bench_cluster.py: one node, then two over Redis with every pair split."""
    cluster_bench = Path(__file__).parents[1] / "bench_cluster.py"
    run = subprocess.run(
        [sys.executable, str(cluster_bench), "--seconds", "1", "--pairs", "4",
         "--scenario", "one", "--scenario", "nodes"],
        capture_output=True, text=True, timeout=180, check=True,
    )  # fmt: skip
    lines = {line.split()[0]: line for line in run.stdout.splitlines()}
    assert set(lines) == {"one", "nodes"}, run.stdout
    for line in lines.values():
        relayed = re.search(r"(\d+) msg/s relayed", line)
        round_trips = re.search(r"(\d+) round trips", line)
        assert relayed and round_trips, line
        assert int(relayed.group(1)) > 0 and int(round_trips.group(1)) > 0, line


def test_the_microbenchmarks_run_and_print_a_figure_each() -> None:
    run = subprocess.run(
        [sys.executable, str(BENCH.with_name("micro.py")), "--steps", "5", "--rounds", "1"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    figures = re.findall(r"^(session|room|links|storm): ([\d,]+) ns per frame", run.stdout, re.M)
    assert [name for name, _ in figures] == ["session", "room", "links", "storm"]
    assert all(int(ns.replace(",", "")) > 0 for _, ns in figures)


def test_the_microbenchmarks_count_instructions_the_same_on_every_run() -> None:
    counts = []
    for _ in range(2):
        run = subprocess.run(
            [sys.executable, str(BENCH.with_name("micro.py")), "session", "--instructions",
             "--steps", "2"],
            capture_output=True, text=True, timeout=120, check=False,
        )  # fmt: skip
        assert run.returncode == 0, run.stderr
        counted = re.fullmatch(r"session: ([\d,]+) instructions per frame\n", run.stdout)
        assert counted is not None, run.stdout
        counts.append(int(counted[1].replace(",", "")))
    assert counts[0] > 1000  # a send takes thousands of instructions, not a handful
    assert abs(counts[0] - counts[1]) <= counts[0] // 100  # what the option promises
