"""End to end on this machine: the deploy's nginx site (TLS) in front of two
relay nodes over a real Redis, with the Python and JS reference clients.

The clients land on different nodes and talk across them over wss://; then
the node holding the JS peer gets SIGTERM mid-traffic. Every message the
Python peer sent must be either delivered, in order and once, or reported
failed to it (an exception from `send`, or an "undelivered" event).
"""

from __future__ import annotations

import json
import os
import re
import ssl
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
import relay_client

from tests.cluster.processes import FAST_CLUSTER, RelayProcess
from tests.deploy.nginx import Nginx, self_signed_certificate
from tests.deploy.sessions import exchange_over_a_stream, streaming
from tests.httppeer import StreamReader
from tests.peers import join_as
from tests.redis_server import free_port

pytestmark = pytest.mark.anyio

ROOT = Path(__file__).resolve().parents[2]
SITE = ROOT / "deploy" / "nginx" / "relay.conf"


@dataclass
class Edge:
    url: str  # wss://127.0.0.1:PORT/v1/ws through nginx
    cafile: Path
    nodes: list[RelayProcess]

    @property
    def http_url(self) -> str:
        """The HTTP transport through nginx: https://127.0.0.1:PORT/v1/http."""
        return self.url.replace("wss://", "https://").replace("/v1/ws", "/v1/http")


def deploy_site(directory: Path, port: int, upstreams: list[str]) -> str:
    """deploy/nginx/relay.conf listening on ``port``, its certificates in ``directory``."""
    site = SITE.read_text().replace("/etc/nginx/certs", str(directory))
    site = site.replace("listen 443 ssl;", f"listen 127.0.0.1:{port} ssl;")
    servers = iter(upstreams)
    return re.sub(r"server relay-\d:8080", lambda _: f"server {next(servers)}", site)


@pytest.fixture
def edge(tmp_path: Path, redis_url: str) -> Iterator[Edge]:
    cafile = self_signed_certificate(tmp_path)
    prefix = f"deploy-{uuid.uuid4().hex[:8]}"
    nodes = [
        RelayProcess(
            "--broker",
            redis_url,
            "--redis-prefix",
            prefix,
            "--node-id",
            f"node-{n}",
            "--trusted-proxies",
            "127.0.0.1",
            "--drain-seconds",
            "10",
            *FAST_CLUSTER,
        )
        for n in (1, 2)
    ]
    try:
        for node in nodes:
            node.wait_ready()
        port = free_port()
        upstreams = [node.url.split("/")[2] for node in nodes]
        proxy = Nginx(tmp_path, deploy_site(tmp_path, port, upstreams), port)
        try:
            yield Edge(f"wss://127.0.0.1:{port}/v1/ws", cafile, nodes)
        finally:
            proxy.stop()
    finally:
        for node in nodes:
            node.stop()


class JsPeer:
    """tests/deploy/js_peer.mjs: the JS client as a child process, spoken to in JSON lines."""

    def __init__(self, process: anyio.abc.Process) -> None:
        self.process = process
        self.lines: list[dict[str, Any]] = []
        self.ended = False
        self._changed = anyio.Event()

    async def read(self) -> None:
        assert self.process.stdout is not None
        buffer = b""
        async for chunk in self.process.stdout:
            buffer += chunk
            *complete, buffer = buffer.split(b"\n")
            for line in complete:
                self.lines.append(json.loads(line))
                self._changed.set()
        self.ended = True
        self._changed.set()

    async def wait_for(self, predicate: Any, seconds: float = 10) -> dict[str, Any]:
        """The first line (so far or to come) that ``predicate`` accepts."""
        found: list[dict[str, Any]] = []

        def seen() -> bool:
            found.extend(line for line in self.lines if predicate(line))
            return bool(found)

        await self.until(seen, seconds)
        return found[0]

    async def until(self, condition: Any, seconds: float = 10) -> None:
        with anyio.fail_after(seconds):
            while not condition():
                if self.ended:
                    assert self.process.stderr is not None
                    problem = (await self.process.stderr.receive()).decode(errors="replace")
                    raise RuntimeError(f"js_peer.mjs exited: {problem}")
                self._changed = anyio.Event()
                await self._changed.wait()

    async def send(self, to: str, data: Any) -> None:
        assert self.process.stdin is not None
        await self.process.stdin.send((json.dumps({"send": to, "data": data}) + "\n").encode())

    def numbers(self) -> list[int]:
        """The integer payloads received, in arrival order."""
        return [line["msg"] for line in self.lines if isinstance(line.get("msg"), int)]


async def test_clients_across_nodes_through_nginx_and_a_rolling_restart(edge: Edge) -> None:
    tls = ssl.create_default_context(cafile=str(edge.cafile))
    undelivered: list[relay_client.Undelivered] = []
    env = {**os.environ, "NODE_EXTRA_CA_CERTS": str(edge.cafile)}
    async with (
        relay_client.connect(edge.url, id="py", ssl=tls, backoff_base=0.05, backoff_max=0.2) as py,
        await anyio.open_process(
            ["node", str(ROOT / "tests" / "deploy" / "js_peer.mjs"), edge.url, "js"], env=env
        ) as process,
        anyio.create_task_group() as tasks,
    ):
        py.on_undelivered(undelivered.append)
        js = JsPeer(process)
        tasks.start_soon(js.read)
        opened = await js.wait_for(lambda line: "open" in line)
        # least_conn put the second socket on the other node
        assert {py.node, opened["open"]} == {"node-1", "node-2"}

        # both ways across nodes, bytes included
        await py.send("js", {"text": "hello js", "bytes": [0, 255]})
        await js.wait_for(lambda line: line.get("msg") == {"text": "hello js", "bytes": [0, 255]})
        await py.send("js", b"\x00\x01\xff")
        await js.wait_for(lambda line: line.get("msg") == {"0": 0, "1": 1, "2": 255})
        await js.send("py", "hello py")
        with anyio.fail_after(5):
            reply = await py.recv()
        assert (reply.sender, reply.data) == ("js", "hello py")

        # a rolling restart of the node holding the JS peer, mid-traffic
        sent: list[int] = []
        failed: list[int] = []
        js_node = next(node for node in edge.nodes if node.url and opened["open"] in node.args)
        exit_codes: list[int] = []
        drained = anyio.Event()

        async def restart() -> None:  # SIGTERM, then wait for the drain to finish
            exit_codes.append(await anyio.to_thread.run_sync(js_node.terminate))
            drained.set()

        for n in range(300):
            if n == 100:
                tasks.start_soon(restart)
            try:
                await py.send("js", n)
            except relay_client.RelayError:
                failed.append(n)
            else:
                sent.append(n)
            await anyio.sleep(0.005)  # paced traffic, so the restart lands mid-stream
        reopened = await js.wait_for(lambda line: line.get("open") not in (None, opened["open"]))
        assert reopened["resumed"] is True  # the peer moved with its session
        acknowledged = set(sent)
        await js.until(lambda: acknowledged <= set(js.numbers()), 15)
        failed += [item.data for item in undelivered if isinstance(item.data, int)]
        numbers = js.numbers()
        assert numbers == sorted(set(numbers)), "delivered in order, each once"
        assert set(numbers) | set(failed) == set(range(300)), "nothing lost silently"
        print(f"delivered {len(numbers)}, reported failed {len(failed)}")
        with anyio.fail_after(25):
            await drained.wait()
        assert exit_codes == [0]
        assert process.stdin is not None
        await process.stdin.aclose()
        tasks.cancel_scope.cancel()


async def test_an_http_session_through_the_tls_edge(edge: Edge) -> None:
    tls = ssl.create_default_context(cafile=str(edge.cafile))
    bob = await join_as(edge.url, "bob", ssl=tls)
    async with (
        httpx.AsyncClient(verify=tls, timeout=10) as client,
        anyio.create_task_group() as tasks,
    ):
        alice, stream = await streaming(edge.http_url, client, tasks, "alice")
        await exchange_over_a_stream(alice, stream, bob)
        stream.scope.cancel()  # cut: a stream opened again goes on where it was
        await bob.send({"type": "send", "to": "alice", "d": "while cut", "id": 5})
        again = StreamReader(alice)
        tasks.start_soon(again.run)
        await again.envelope(type="msg", d="while cut")
        assert (await alice.ack()).status_code == 204
        await bob.expect(type="ok", id=5)
        again.scope.cancel()
    await bob.close()
