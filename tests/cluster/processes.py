"""Real relay processes (``python -m relay serve``) for multi-node tests and the benchmark."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
_READY = re.compile(r"relay ready on (ws://\S+)")

# Short leases so node-death tests finish quickly; the bound is asserted.
FAST_CLUSTER = (
    "--node-lease-seconds", "2", "--heartbeat-seconds", "0.25",
    "--probe-seconds", "0.5", "--broker-timeout-seconds", "0.5", "--drain-seconds", "2",
)  # fmt: skip


class RelayProcess:
    """One ``relay serve`` process; its stderr goes to a file we can read."""

    def __init__(self, *args: str, env: dict[str, str] | None = None) -> None:
        self.args = args
        fd, self.log_path = tempfile.mkstemp(prefix="relay-node-", suffix=".log")
        environ = {**os.environ, "PYTHONPATH": str(ROOT), "RELAY_LOG_LEVEL": "warning"}
        self.process = subprocess.Popen(
            [sys.executable, "-m", "relay", "serve", "--port", "0", *args],
            cwd=ROOT,
            env={**environ, **(env or {})},
            stdout=subprocess.DEVNULL,
            stderr=fd,
        )
        os.close(fd)
        self.url = ""

    def output(self) -> str:
        return Path(self.log_path).read_text(errors="replace")

    def wait_ready(self, timeout: float = 20.0) -> str:
        deadline = time.monotonic() + timeout
        # Polling the log file: the ready line is the process's only signal.
        while time.monotonic() < deadline:
            found = _READY.search(self.output())
            if found:
                self.url = found.group(1)
                return self.url
            if self.process.poll() is not None:
                raise RuntimeError(f"relay exited {self.process.returncode}:\n{self.output()}")
            time.sleep(0.05)
        raise RuntimeError(f"relay not ready in {timeout}s:\n{self.output()}")

    @property
    def http_url(self) -> str:
        return self.url.replace("ws://", "http://").rsplit("/v1/", 1)[0]

    def kill(self) -> None:
        """SIGKILL: the node vanishes without unregistering anything."""
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(10)

    def terminate(self, timeout: float = 20.0) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        Path(self.log_path).unlink(missing_ok=True)
