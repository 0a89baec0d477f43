"""A bare starlette+uvicorn forwarder: the Python floor the relay is measured against.

    taskset -c 0 .venv/bin/python tests/bench/bare.py [PORT]   # 0, the default, picks one

Prints "bare ready on ws://127.0.0.1:PORT/v1/ws" on stderr once listening
(tests/bench/bench.py starts it). It speaks just enough of protocol v1 for
load.mjs (hello, send, join and pub to one room) and does nothing else: no
validation, limits, queues or metrics.
"""

from __future__ import annotations

import sys
from typing import Any

import msgpack
import uvicorn
from starlette.applications import Starlette
from starlette.routing import WebSocketRoute
from starlette.types import Receive, Scope, Send

peers: dict[str, Send] = {}
room: set[Send] = set()


class Forwarder:
    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await receive()
        await send({"type": "websocket.accept", "subprotocol": "relay.v1"})
        me = ""
        while True:
            message = await receive()
            if message["type"] == "websocket.disconnect":
                peers.pop(me, None)
                room.discard(send)
                return
            envelope: dict[str, Any] = msgpack.unpackb(message["bytes"])
            kind = envelope["type"]
            if kind == "hello":
                me = envelope["id"]
                peers[me] = send
                await send({"type": "websocket.send", "bytes": msgpack.packb({"type": "welcome"})})
            elif kind == "send":
                target = peers.get(envelope["to"])
                envelope["type"], envelope["from"] = "msg", me
                if target is not None:
                    await target({"type": "websocket.send", "bytes": msgpack.packb(envelope)})
            elif kind == "join":
                room.add(send)
                ok = {"type": "ok", "id": envelope.get("id")}
                await send({"type": "websocket.send", "bytes": msgpack.packb(ok)})
            elif kind == "pub":
                envelope["type"], envelope["from"] = "msg", me
                frame = {"type": "websocket.send", "bytes": msgpack.packb(envelope)}
                for member in list(room):
                    await member(frame)


class Server(uvicorn.Server):
    """uvicorn, saying where it listens once it does."""

    async def startup(self, sockets: Any = None) -> None:
        await super().startup(sockets)
        port = self.servers[0].sockets[0].getsockname()[1]
        print(f"bare ready on ws://127.0.0.1:{port}/v1/ws", file=sys.stderr, flush=True)


app = Starlette(routes=[WebSocketRoute("/v1/ws", Forwarder())])

if __name__ == "__main__":
    port = int(sys.argv[1]) if len(sys.argv) > 1 else 0
    config = uvicorn.Config(app, port=port, log_level="warning", ws="websockets-sansio")
    Server(config).run()
