"""A real `relay serve` process on a free port, for tests that signal or kill it."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def relay_process(
    *flags: str,
    port: int = 0,
    env: dict[str, str] | None = None,
    startup: list[str] | None = None,
) -> Iterator[tuple[subprocess.Popen[str], str]]:
    """Start ``relay serve`` with ``flags`` (and ``env`` added to the environment).

    Yields the process and its WebSocket URL; the lines it printed up to its
    ready line are appended to ``startup``.
    """
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "relay",
            "serve",
            "--port",
            str(port),
            "--log-level",
            "warning",
            *flags,
        ],
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, **(env or {}), "PYTHONUNBUFFERED": "1"},
    )
    assert process.stderr is not None
    try:
        url = ""
        for line in process.stderr:
            if startup is not None:
                startup.append(line)
            found = re.search(r"relay ready on (ws://\S+)", line)
            if found:
                url = found.group(1)
                break
        assert url, "relay did not start"
        yield process, url
    finally:
        if process.poll() is None:
            process.kill()
        process.wait()
        process.stderr.close()
