"""A bare starlette+uvicorn forwarder: the floor the relay is measured against.

    taskset -c 0 .venv/bin/python tests/bench/bare.py PORT
    python tests/bench/bench.py --url ws://127.0.0.1:PORT/v1/ws --only pairs64 fixed2000

It speaks just enough of protocol v1 for load.mjs (hello, send, pub to one
room) and does nothing else: no validation, limits, queues or metrics.
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
room: list[Send] = []


class Forwarder:
    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await receive()
        await send({"type": "websocket.accept", "subprotocol": "relay.v1"})
        me = ""
        while True:
            message = await receive()
            if message["type"] == "websocket.disconnect":
                peers.pop(me, None)
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
                room.append(send)
                await send({"type": "websocket.send", "bytes": msgpack.packb({"type": "ok"})})
            elif kind == "pub":
                envelope["type"], envelope["from"] = "msg", me
                frame = {"type": "websocket.send", "bytes": msgpack.packb(envelope)}
                for member in room:
                    await member(frame)


app = Starlette(routes=[WebSocketRoute("/v1/ws", Forwarder())])

if __name__ == "__main__":
    uvicorn.run(app, port=int(sys.argv[1]), log_level="warning", ws="websockets-sansio")
