"""The benchmark's processes: the servers on CPU 0, load.mjs on CPU 1, and their clocks."""

from __future__ import annotations

import collections
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

ROOT = Path(__file__).resolve().parents[2]
HERE = ROOT / "tests" / "bench"
TICKS = os.sysconf("SC_CLK_TCK")
SERVERS = ("relay", "ws", "ws-msgpackr", "bare", "pyfloor", "relay-http")
# relay-http: the relay itself, driven over its HTTP transport (load.mjs --transport http),
# in the scenarios of load.mjs's pairs and fixed modes.
HTTP_MODES = ("pairs", "fixed")


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


def server_command(name: str, ws_impl: str, port: int = 0) -> list[str]:
    if name == "ws":
        return ["node", str(HERE / "ws_forwarder.mjs"), str(port)]
    if name == "ws-msgpackr":
        return ["node", str(HERE / "ws_forwarder.mjs"), str(port), "--codec", "msgpackr"]
    if name == "bare":
        return [sys.executable, str(HERE / "bare.py"), str(port)]
    if name == "pyfloor":
        return [sys.executable, str(HERE / "py_forwarder.py"), str(port)]
    return [
        str(ROOT / ".venv" / "bin" / "relay"), "serve", "--port", str(port),
        "--log-level", "warning", "--ws-impl", ws_impl,
        # protocol checks, limits and metrics stay on; only refusals are lifted
        "--rate-per-second", "1000000", "--rate-burst", "1000000",
        "--queue-messages", "100000", "--queue-bytes", "100000000",
        # every load connection comes from 127.0.0.x: no admission caps
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
        self.ws_impl = ws_impl
        # What load.mjs adds to drive this server.
        self.load_options = ["--transport", "http"] if name == "relay-http" else []
        self.tail: collections.deque[str] = collections.deque(maxlen=20)
        self.process, self.url = self._start(0)

    def _start(self, port: int) -> tuple[subprocess.Popen[str], str]:
        command = pinned(0, server_command(self.name, self.ws_impl, port))
        self.process = subprocess.Popen(command, stderr=subprocess.PIPE, text=True)
        return self.process, self._wait_ready()

    def restart(self) -> float:
        """SIGKILL, then the same server again on the same port; the seconds until it is ready."""
        port = int(self.url.rsplit(":", 1)[1].split("/", 1)[0])
        started = time.monotonic()
        self.kill()
        self.process, self.url = self._start(port)
        return time.monotonic() - started

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

    def kill(self) -> None:
        """SIGKILL, as a crash or an OOM kill would end it: no close frames, no clean-up."""
        self.process.kill()
        self.process.wait()

    def stop(self) -> None:
        if self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.kill()


@contextmanager
def running(name: str, ws_impl: str) -> Iterator[Server]:
    server = Server(name, ws_impl)
    try:
        yield server
    finally:
        server.stop()


class Generator:
    """load.mjs on CPU 1, killed if it outlives `deadline` seconds."""

    def __init__(self, load: list[str], url: str, options: list[str], deadline: float) -> None:
        command = ["node", str(HERE / "load.mjs"), *load, "--url", url, *options]
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

    def next_line(self) -> dict[str, Any]:
        """The next line load.mjs prints; raises with its error if it ended instead."""
        line = next(self.lines(), None)
        if line is None:
            self.finish()
            raise SystemExit(f"load.mjs ended early:\n{''.join(self.tail)}")
        return line

    def go_on(self) -> None:
        """Tells load.mjs, waiting between two steps, to take the next one."""
        assert self.process.stdin is not None
        self.process.stdin.write("\n")
        self.process.stdin.flush()

    def finish(self) -> None:
        """Closes its stdin (which ends an idle run) and waits for it to exit."""
        assert self.process.stdin is not None
        self.process.stdin.close()
        code = self.process.wait()
        self.watchdog.cancel()
        if code != 0:
            raise SystemExit(f"load.mjs failed ({code}):\n{''.join(self.tail)}")
