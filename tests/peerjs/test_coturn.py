"""The relay's TURN credentials against a real coturn (Debian's ``coturn``, on loopback).

The test starts its own ``turnserver`` with ``use-auth-secret``, listening on
127.0.0.1 only, and allocates with ``turnutils_uclient``: the credentials from
``GET /v1/ice-servers`` are accepted; expired, forged or re-labelled ones are
refused. A missing coturn is a failure with the command that installs it.
"""

from __future__ import annotations

import random
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import anyio
import httpx
import pytest

from relay.ice import IceServers, turn_credential
from relay.settings import Settings
from tests.conftest import RelayFactory
from tests.redis_server import free_port

pytestmark = pytest.mark.anyio

SECRET = "coturn-test-secret"
REALM = "relay.test"


class TurnServer:
    """One ``turnserver`` on 127.0.0.1, stopped at the end of the test."""

    def __init__(self) -> None:
        missing = [b for b in ("turnserver", "turnutils_uclient") if shutil.which(b) is None]
        if missing:
            raise RuntimeError(
                f"{', '.join(missing)} not installed: the TURN test needs Debian's coturn "
                "(apt-get install coturn)"
            )
        self.port = free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="relay-coturn-"))
        relay_low = random.randrange(50000, 60000)
        # fmt: off
        with (self.dir / "log").open("wb") as log:
            self.process = subprocess.Popen(
                ["turnserver", "-n", "--listening-ip", "127.0.0.1", "--relay-ip", "127.0.0.1",
                 "--listening-port", str(self.port), "--min-port", str(relay_low),
                 "--max-port", str(relay_low + 50), "--use-auth-secret",
                 "--static-auth-secret", SECRET, "--realm", REALM, "--no-tls", "--no-dtls",
                 "--no-cli", "--allow-loopback-peers", "--db", str(self.dir / "turndb"),
                 "--log-file", "stdout", "--simple-log", "--no-software-attribute"],
                stdout=log, stderr=subprocess.STDOUT,
            )
        # fmt: on

    def wait_ready(self, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        # Polling: turnserver's only readiness signal is its listening socket.
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"turnserver exited {self.process.returncode}:\n{self.log()}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"turnserver not ready in {timeout}s:\n{self.log()}")

    def log(self) -> str:
        return (self.dir / "log").read_text(errors="replace")

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(10)
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture
def turn() -> Iterator[TurnServer]:
    server = TurnServer()
    try:
        server.wait_ready()
        yield server
    finally:
        server.stop()


async def allocate(turn: TurnServer, username: str, credential: str) -> tuple[int, str]:
    """Allocate a relay with these credentials and send through it; (exit code, output)."""
    # fmt: off
    result = await anyio.run_process(
        ["turnutils_uclient", "-y", "-c", "-n", "1", "-m", "1", "-u", username,
         "-w", credential, "-p", str(turn.port), "127.0.0.1"],
        check=False, stderr=subprocess.STDOUT,
    )
    # fmt: on
    return result.returncode, result.stdout.decode(errors="replace")


async def test_issued_credentials_allocate_and_bad_ones_are_refused(
    relay_factory: RelayFactory, turn: TurnServer
) -> None:
    url = f"turn:127.0.0.1:{turn.port}?transport=udp"
    relay = await relay_factory(turn_urls=(url,), turn_secret=SECRET, turn_ttl_seconds=600)
    async with httpx.AsyncClient(base_url=relay.http_url) as http:
        issued = (await http.get("/v1/ice-servers", params={"id": "alice"})).json()
    [server] = issued["iceServers"]
    assert server["urls"] == [url]
    with anyio.fail_after(60):
        code, output = await allocate(turn, server["username"], server["credential"])
    assert code == 0, output
    assert "Total lost packets 0" in output, output

    settings = Settings(turn_urls=(url,), turn_secret=SECRET, turn_ttl_seconds=60)
    an_hour_ago = IceServers(settings, clock=lambda: time.time() - 3600).for_peer("alice")
    expired = an_hour_ago["iceServers"][0]
    expiry, _, _peer = server["username"].partition(":")
    refused = {
        "expired": (expired["username"], expired["credential"]),
        "forged": (server["username"], turn_credential("not-the-secret", server["username"])),
        "re-labelled": (f"{expiry}:mallory", server["credential"]),
        "extended": (f"{int(expiry) + 86400}:alice", server["credential"]),
    }
    for name, (username, credential) in refused.items():
        with anyio.fail_after(60):
            code, output = await allocate(turn, username, credential)
        assert code != 0, name
        assert "Cannot complete Allocation" in output, (name, output)
