"""Commands run as in a new terminal: a fresh environment, output read as it comes."""

from __future__ import annotations

import contextlib
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Mapping
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# Set by the test run, not by a terminal: a venv, pytest, make (its jobserver), relay settings.
_NOT_IN_A_NEW_TERMINAL = (
    "VIRTUAL_ENV",
    "PYTHON",
    "PYTEST_",
    "MAKE",
    "MFLAGS",
    "RELAY_",
    "REDIS_URL",
)


def terminal_env(**extra: str) -> dict[str, str]:
    """The environment of a new terminal: no venv on PATH, nothing the test run set."""
    venv_bins = {str(ROOT / ".venv" / "bin")}
    if sys.prefix != sys.base_prefix:
        venv_bins.add(str(Path(sys.prefix) / "bin"))
    env = {k: v for k, v in os.environ.items() if not k.startswith(_NOT_IN_A_NEW_TERMINAL)}
    path = os.environ.get("PATH", "").split(os.pathsep)
    env["PATH"] = os.pathsep.join(entry for entry in path if entry and entry not in venv_bins)
    return {**env, **extra}


# Runs argv[1:] with SIGINT and SIGQUIT at their defaults, as in a terminal's
# foreground job. A test run started in the background by a non-interactive
# shell has them ignored, its children inherit that, and a shell cannot undo
# it ("trap -" leaves a signal ignored on entry ignored): Ctrl-C would do nothing.
_TERMINAL_SIGNALS = (
    "import os, signal, sys; signal.signal(signal.SIGINT, signal.SIG_DFL); "
    "signal.signal(signal.SIGQUIT, signal.SIG_DFL); os.execvp(sys.argv[1], sys.argv[1:])"
)


def with_terminal_signals(argv: list[str]) -> list[str]:
    """``argv`` run with a terminal's signal dispositions, whatever this process inherited."""
    return [sys.executable, "-c", _TERMINAL_SIGNALS, *argv]


class Command:
    """One command in a process group of its own; its stdout and stderr, merged, as they come."""

    def __init__(self, argv: list[str], cwd: Path, env: Mapping[str, str]) -> None:
        self.argv = argv
        self.process = subprocess.Popen(
            with_terminal_signals(argv),
            cwd=cwd,
            env=dict(env),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self._chunks: list[str] = []
        self._closed = False
        self._lines: queue.Queue[str | None] = queue.Queue()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for raw in self.process.stdout:
            line = raw.decode(errors="replace")
            self._chunks.append(line)
            self._lines.put(line)
        self._lines.put(None)

    @property
    def output(self) -> str:
        """What it printed so far."""
        return "".join(self._chunks)

    def wait_for(self, text: str, timeout: float = 30.0) -> str:
        """The first line (from now on) that contains ``text``; fails if it exits first."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = self._lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                pytest.fail(f"{text!r} not printed within {timeout:.0f} s:\n{self.output}")
            if line is None:
                self.process.wait()
                pytest.fail(
                    f"exited {self.process.returncode} before printing {text!r}:\n{self.output}"
                )
            if text in line:
                return line

    def finish(self, timeout: float = 30.0) -> int:
        """Wait for it to exit (killed after ``timeout``); its exit status."""
        if self._closed:
            return self.process.returncode
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self._signal(signal.SIGKILL)
            self.process.wait()
            self._close()
            pytest.fail(f"still running after {timeout:.0f} s:\n{self.output}")
        self._close()
        return self.process.returncode

    def interrupt(self, timeout: float = 20.0) -> int:
        """Ctrl-C (SIGINT to its process group), as in its terminal; its exit status."""
        if self.process.poll() is None:
            self._signal(signal.SIGINT)
        return self.finish(timeout)

    def kill(self) -> None:
        """SIGKILL to its process group (cleaning up after a failure)."""
        if not self._closed:
            self._signal(signal.SIGKILL)
            self.process.wait()
            self._close()

    def _signal(self, signum: int) -> None:
        with contextlib.suppress(ProcessLookupError):  # the whole group is gone
            os.killpg(self.process.pid, signum)

    def _close(self) -> None:
        # Children that outlive the shell keep the pipe open: they go too.
        self._reader.join(10)
        if self._reader.is_alive():
            self._signal(signal.SIGKILL)
            self._reader.join(10)
        assert self.process.stdout is not None
        self.process.stdout.close()
        self._closed = True
