"""The churn soak still runs: a few seconds of tests/bench/soak.py, every promise kept.

A very short run (make soak runs five minutes), so the instrument cannot rot
between the times someone soaks with it. Nothing here asserts a timing.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

SOAK = Path(__file__).with_name("soak.py")


def count(output: str, pattern: str) -> int:
    found = re.search(pattern, output, re.M)
    assert found is not None, (pattern, output)
    return int(found.group(1).replace(",", ""))


def test_a_short_soak_churns_and_loses_nothing() -> None:
    run = subprocess.run(
        [sys.executable, str(SOAK), "--seconds", "4", "--clients", "6",
         "--cycle-seconds", "0.5", "--report-seconds", "1"],
        capture_output=True, text=True, timeout=90, check=False,
    )  # fmt: skip
    assert run.returncode == 0, run.stdout + run.stderr
    out = run.stdout
    assert out.rstrip().endswith("PASS"), out
    assert count(out, r"dropped and resumed ([\d,]+)") > 0
    assert count(out, r"left and came back ([\d,]+)") > 0
    assert count(out, r"resumes that found their session ([\d,]+)") > 0
    assert count(out, r"^requests ([\d,]+)") > 0
    for line in ("unanswered 0", "ok but never arrived 0", "duplicates 0, out of order 0"):
        assert line in out.splitlines(), out
    progress = re.findall(r"^\[ *\d+/4 s\] relay RSS [\d.]+ MiB", run.stderr, re.M)
    assert len(progress) >= 3, run.stderr


def test_help_names_every_option() -> None:
    text = subprocess.run(
        [sys.executable, str(SOAK), "--help"], capture_output=True, text=True, check=True
    ).stdout
    for option in ("--seconds", "--clients", "--rate", "--cycle-seconds", "--report-seconds"):
        assert option in text
