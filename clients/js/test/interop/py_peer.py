"""Python side of the JS<->Python interop test (clients/js/test/node/interop.test.js).

Usage: py_peer.py URL ID

Connects with the Python reference client (relay_client) and then:
- answers requests: "py.add" ({a, b} -> a + b), "py.bytes" (bytes -> reversed
  bytes), "py.fail" (raises, so the requester gets RemoteError);
- for a message with ev "echo": sends its data back with ev "echoed", as is;
- for ev "call-me": requests "js.mul" from the sender with the message's data,
  then "js.fail", and reports both outcomes with ev "called";
- exits on ev "stop".
Prints "READY <id>" once connected.
"""

import asyncio
import sys

import relay_client


async def main(url: str, peer_id: str) -> None:
    async with relay_client.connect(url, id=peer_id) as peer:

        def add(msg: relay_client.Message) -> int:
            return msg.data["a"] + msg.data["b"]

        def reverse(msg: relay_client.Message) -> bytes:
            assert isinstance(msg.data, bytes), type(msg.data)
            return msg.data[::-1]

        def fail(msg: relay_client.Message) -> None:
            raise ValueError("py says no")

        peer.on_request("py.add", add)
        peer.on_request("py.bytes", reverse)
        peer.on_request("py.fail", fail)
        print("READY", peer.id, flush=True)

        async for msg in peer:
            if msg.ev == "echo":
                await peer.send(msg.sender, msg.data, ev="echoed")
            elif msg.ev == "call-me":
                product = await peer.request(msg.sender, msg.data, ev="js.mul", timeout=5)
                try:
                    await peer.request(msg.sender, None, ev="js.fail", timeout=5)
                    failure = None
                except relay_client.RemoteError as exc:
                    failure = str(exc)
                await peer.send(msg.sender, {"product": product, "failure": failure}, ev="called")
            elif msg.ev == "stop":
                return


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2]))
