"""The benchmark's summaries and Markdown tables: medians over rounds, ratios, who saturated."""

from __future__ import annotations

import collections
import statistics
from collections.abc import Callable
from typing import Any

SATURATED_PCT = 90
Column = tuple[str, Callable[[dict[str, Any]], str]]


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


def ratios(figure: str, summaries: dict[str, dict[str, Any]]) -> dict[str, float | None]:
    """The relay's `figure` divided by each other server's."""
    if "relay" not in summaries:
        return {}
    mine = summaries["relay"].get(figure)
    out: dict[str, float | None] = {}
    for other in summaries:
        if other != "relay":
            theirs = summaries[other].get(figure)
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


def shown(key: str, digits: int = 2) -> Callable[[dict[str, Any]], str]:
    return lambda s: number(s.get(key), digits)


def closed(summary: dict[str, Any]) -> str:
    return ", ".join(f"{code}: {n}" for code, n in sorted(summary["closed"].items())) or "0"


def delivered(summary: dict[str, Any]) -> str:
    share = summary.get("delivered_share")
    return "-" if share is None else f"{100 * share:.2f}%"


LOAD: list[Column] = [
    ("server CPU %", shown("server_cpu_pct", 0)),
    ("generator CPU %", shown("generator_cpu_pct", 0)),
    ("saturated", saturated),
    ("others CPU 0/1 %", lambda s: f"{number(s['others_cpu0_pct'], 0)} / "
     f"{number(s['others_cpu1_pct'], 0)}"),
]  # fmt: skip


def columns(kind: str, load: str) -> list[Column]:
    """What a scenario's table shows, by the kind of run and load.mjs's mode."""
    if kind == "idle":
        return [
            ("KiB per connection", shown("kib_per_connection", 1)),
            ("KiB per connection from start", shown("kib_from_start", 1)),
            ("RSS at start / first / last step MiB", lambda s: " / ".join(
                number(s[key] / 1024, 0) for key in ("rss_start_kib", "rss_first_kib",
                                                     "rss_last_kib"))),
            ("connections", shown("connections", 0)),
        ]  # fmt: skip
    if kind == "storm":
        return [
            ("registered/s", shown("registered_per_second", 0)),
            ("connect s", shown("connect_seconds", 1)),
            # a client's mean wait: from its connect to the 101, then from the 101 to the welcome
            ("101 after ms", shown("upgrade_ms", 1)),
            ("welcome after ms", shown("welcome_ms", 1)),
            ("server µs/registration", shown("server_us_per_registration", 1)),
            *LOAD,
            ("server RSS MiB", shown("server_rss_mib", 0)),
            ("ready after SIGKILL s", shown("restart_seconds", 2)),
            ("all back s", shown("back_seconds", 2)),
            ("retries", shown("retries", 0)),
        ]
    rate = "deliveries/s" if load == "room" else "msg/s"
    out: list[Column] = [
        (rate, shown("relayed_per_second", 0)),
        ("p50 ms", shown("p50_ms")),
        ("p99 ms", shown("p99_ms")),
        ("server µs/msg", shown("server_us_per_msg")),
        *LOAD,
        ("server RSS MiB", shown("server_rss_mib", 0)),
    ]
    if load == "room":
        out += [("delivered", delivered), ("subscribers closed", closed)]
    if kind == "busy":
        out += [
            ("RSS before / mid / after MiB", lambda s: " / ".join(
                number(s[key] / 1024, 0) for key in ("rss_before_kib", "rss_mid_kib",
                                                     "rss_after_kib"))),
            ("growth KiB per connection", shown("growth_kib_per_connection", 1)),
            ("2nd-half growth KiB per connection", shown("late_growth_kib_per_connection", 1)),
        ]  # fmt: skip
    return out


def table(
    title: str,
    kind: str,
    load: str,
    compared: list[tuple[str, str, str]],
    summaries: dict[str, dict[str, Any]],
    labels: dict[str, str],
) -> str:
    """A Markdown table of one scenario, then a ratio line per compared (key, unit, better)."""
    shown_columns = columns(kind, load)
    header = ["server", *(name for name, _ in shown_columns)]
    rows = [
        [labels[server], *(cell(s) for _, cell in shown_columns)] for server, s in summaries.items()
    ]
    lines = [
        f"### {title}",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
        *("| " + " | ".join(row) + " |" for row in rows),
    ]
    for key, unit, better in compared:
        found = ratios(key, summaries)
        if found:
            pairs = ", ".join(f"{pair} {number(value)}" for pair, value in found.items())
            lines += ["", f"ratios ({unit}, {better} is better): {pairs}"]
    floor = summaries.get("pyfloor", {}).get("server_us_per_msg")
    mine = summaries.get("relay", {}).get("server_us_per_msg")
    if floor and mine:
        lines += [
            "",
            f"server CPU per message: relay {mine:.2f} µs, pyfloor {floor:.2f} µs: the relay's "
            f"rules cost {mine - floor:.2f} µs per message on top of moving it",
        ]
    return "\n".join(lines)
