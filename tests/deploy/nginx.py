"""nginx for the deploy tests: the deploy site, and proxies that break WebSockets as networks do.

``Nginx(directory, site)`` runs Debian's nginx with one site (a ``server``
block and its ``upstream``), an access log of every request (method, path,
status, the upstream that answered) and no daemon; ``PROXIES`` are the
sites of the HTTP transport's tests, templates taking the listen port and
the relays' addresses.

Run as a script, it serves one of ``PROXIES`` until SIGTERM, for the
JavaScript browser tests (clients/js/test/browser/http-fallback.test.js):

    python -m tests.deploy.nginx upgrade-refusing 127.0.0.1:8080

prints ``nginx ready on http://127.0.0.1:PORT, access log PATH``.
"""

from __future__ import annotations

import argparse
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from types import FrameType

from tests.redis_server import free_port

# What a test reads back: "POST /v1/http/send 204 127.0.0.1:41000" per request.
ACCESS_FORMAT = "$request_method $uri $status $upstream_addr"

# The proxies of docs/protocol-http.md's field: {port} and {servers} are filled in.
PROXIES = {
    # A proxy that does not pass WebSocket upgrades: nginx's own defaults, which
    # drop the hop-by-hop Upgrade and Connection headers (and speak HTTP/1.0
    # upstream). It obeys the relay's X-Accel-Buffering: no, so streams flow.
    "upgrade-refusing": """
upstream relays {{ {servers} }}
server {{
    listen 127.0.0.1:{port};
    location / {{ proxy_pass http://relays; }}
}}
""",
    # A proxy that holds responses back until they end or fill its buffers,
    # whatever the upstream asks: streams stall, long-polls get through.
    # Buffering alone does not do it: nginx passes on every whole chunk of a
    # chunked upstream answer at once, buffering or not. Compression does: the
    # gzip filter holds small records until its buffer fills or the answer
    # ends, as a compressing middlebox does (unless the upstream's
    # X-Accel-Buffering: no turns buffering off, which flushes each record).
    "buffering": """
upstream relays {{ {servers} }}
server {{
    listen 127.0.0.1:{port};
    location / {{
        proxy_pass http://relays;
        proxy_buffering on;
        proxy_ignore_headers X-Accel-Buffering;
        gzip on;
        gzip_types application/octet-stream;
    }}
}}
""",
    # Plain round-robin over the nodes, request by request, no stickiness.
    "round-robin": """
upstream relays {{ {servers} }}
server {{
    listen 127.0.0.1:{port};
    location / {{
        proxy_pass http://relays;
        proxy_http_version 1.1;
        proxy_buffering off;
        proxy_read_timeout 3600s;
    }}
}}
""",
}


def nginx_binary() -> str:
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    assert Path(nginx).exists(), "nginx is missing: apt-get install nginx (.ci/run does)"
    return nginx


def self_signed_certificate(directory: Path) -> Path:
    """Writes fullchain.pem and privkey.pem for 127.0.0.1 into ``directory``; the certificate."""
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1",
         "-keyout", str(directory / "privkey.pem"), "-out", str(directory / "fullchain.pem")],
        check=True, capture_output=True,
    )  # fmt: skip
    return directory / "fullchain.pem"


def wait_for_port(port: int, process: subprocess.Popen[bytes], timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:  # polled: nginx signals readiness only by listening
        if process.poll() is not None:
            raise RuntimeError(f"nginx exited with {process.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError("nginx did not listen in time")


def proxy_site(kind: str, port: int, upstreams: list[str]) -> str:
    """One of ``PROXIES``, listening on ``port``, in front of ``upstreams`` (host:port)."""
    servers = " ".join(f"server {upstream} max_fails=0;" for upstream in upstreams)
    return PROXIES[kind].format(port=port, servers=servers)


class Nginx:
    """One nginx serving ``site`` on ``port`` from ``directory``, started at once."""

    def __init__(self, directory: Path, site: str, port: int) -> None:
        self.directory = directory
        self.port = port
        self.access_log = directory / "access.log"
        (directory / "site.conf").write_text(site)
        (directory / "nginx.conf").write_text(
            f"pid {directory}/nginx.pid;\nerror_log {directory}/error.log;\nevents {{}}\n"
            f"http {{\n    log_format tests '{ACCESS_FORMAT}';\n"
            f"    access_log {self.access_log} tests;\n"
            f"    include {directory}/site.conf;\n}}\n"
        )
        self.process = subprocess.Popen(
            [nginx_binary(), "-c", str(directory / "nginx.conf"), "-p", str(directory),
             "-g", "daemon off;"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        try:
            wait_for_port(port, self.process)
        except RuntimeError as exc:
            raise RuntimeError(f"{exc}:\n{self.errors()}") from None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def errors(self) -> str:
        log = self.directory / "error.log"
        return log.read_text(errors="replace") if log.exists() else ""

    def requests(self) -> list[list[str]]:
        """The access log so far: [method, path, status, upstream] per request nginx finished."""
        if not self.access_log.exists():
            return []
        return [line.split(" ", 3) for line in self.access_log.read_text().splitlines()]

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
        self.process.wait(10)


def main() -> None:
    parser = argparse.ArgumentParser(description="Serve one of the test proxies until SIGTERM.")
    parser.add_argument("kind", choices=sorted(PROXIES))
    parser.add_argument("upstreams", nargs="+", help="host:port of each relay")
    args = parser.parse_args()
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="relay-nginx-") as directory:
        nginx = Nginx(Path(directory), proxy_site(args.kind, port, args.upstreams), port)

        def stop(_signum: int, _frame: FrameType | None) -> None:
            # Not nginx.stop(): this interrupts the wait below, which holds Popen's wait lock.
            nginx.process.terminate()

        signal.signal(signal.SIGTERM, stop)
        print(f"nginx ready on http://127.0.0.1:{port}, access log {nginx.access_log}", flush=True)
        nginx.process.wait()


if __name__ == "__main__":
    main()
