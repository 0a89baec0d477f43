"""The start-up check that a node's connections fit under its open-file limit."""

from __future__ import annotations

import re
import resource
import subprocess
import sys
from collections.abc import Callable

import pytest

from relay.fdlimit import RESERVED_FILES, fit_open_files
from relay.settings import Settings

NEEDED = 10000 + 1024 + RESERVED_FILES  # the defaults


class Limits:
    """A fake RLIMIT_NOFILE: ``getrlimit`` and ``setrlimit`` for ``fit_open_files``."""

    def __init__(self, soft: int, hard: int, *, refuse: bool = False) -> None:
        self.soft, self.hard, self.refuse = soft, hard, refuse
        self.set_to: list[tuple[int, int]] = []

    def getrlimit(self, which: int) -> tuple[int, int]:
        assert which == resource.RLIMIT_NOFILE
        return self.soft, self.hard

    def setrlimit(self, which: int, limits: tuple[int, int]) -> None:
        assert which == resource.RLIMIT_NOFILE
        if self.refuse:
            raise ValueError("not allowed")
        self.set_to.append(limits)
        self.soft, self.hard = limits


def check(limits: Limits, settings: Settings | None = None) -> str | None:
    return fit_open_files(
        settings or Settings(), getrlimit=limits.getrlimit, setrlimit=limits.setrlimit
    )


def test_the_soft_limit_is_raised_to_what_the_node_needs() -> None:
    limits = Limits(1024, 20000)
    assert check(limits) is None
    assert limits.set_to == [(NEEDED, 20000)]
    unlimited = Limits(1024, resource.RLIM_INFINITY)
    assert check(unlimited) is None
    assert unlimited.set_to == [(NEEDED, resource.RLIM_INFINITY)]


def test_a_limit_that_already_fits_is_left_alone() -> None:
    limits = Limits(NEEDED, NEEDED)
    assert check(limits) is None
    assert limits.set_to == []


def test_a_hard_limit_too_low_is_one_line_naming_the_settings() -> None:
    limits = Limits(1024, 4096)
    line = check(limits)
    assert line == (
        f"max_connections 10000 + max_pending_connections 1024 + {RESERVED_FILES} reserved "
        f"need {NEEDED} open files, but this process may open 4096 (ulimit -n; hard limit "
        "4096): lower max_connections or max_pending_connections, or raise the limit "
        "(ulimit -n, systemd LimitNOFILE=)"
    )
    assert limits.set_to == [(4096, 4096)]  # raised as far as it may go anyway
    assert check(Limits(1024, 4096), Settings(max_connections=3000)) is None


def test_a_refused_raise_is_judged_by_the_limit_as_it_is() -> None:
    assert "may open 1024 " in (check(Limits(1024, 20000, refuse=True)) or "")


def test_no_connection_cap_raises_the_soft_limit_to_the_hard_one() -> None:
    limits = Limits(1024, 4096)
    assert check(limits, Settings(max_connections=0)) is None
    assert limits.set_to == [(4096, 4096)]


def with_open_files(soft: int, hard: int) -> Callable[[], None]:
    return lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_relay_serve_refuses_to_start_under_a_low_limit() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "relay", "serve", "--port", "0"],
        preexec_fn=with_open_files(1024, 1024),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr.count("\n") == 1
    assert result.stderr.startswith(f"Error: max_connections 10000 + max_pending_connections 1024 "
                                    f"+ {RESERVED_FILES} reserved need {NEEDED} open files, but "
                                    "this process may open 1024")  # fmt: skip


def test_relay_serve_raises_its_soft_limit_and_starts() -> None:
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < NEEDED:
        pytest.fail(f"this machine's hard open-file limit ({hard}) is under {NEEDED}")
    process = subprocess.Popen(
        [sys.executable, "-m", "relay", "serve", "--port", "0", "--log-level", "warning"],
        preexec_fn=with_open_files(1024, hard),
        stderr=subprocess.PIPE,
        text=True,
    )
    assert process.stderr is not None
    try:
        for line in process.stderr:
            if "relay ready on" in line:
                break
        else:
            pytest.fail("relay did not start")
        with open(f"/proc/{process.pid}/limits") as limits:
            found = re.search(r"Max open files\s+(\d+)", limits.read())
        assert found is not None and int(found.group(1)) == NEEDED
    finally:
        process.terminate()
        process.wait()
        process.stderr.close()
