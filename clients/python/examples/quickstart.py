# Two peers on one relay. With a relay running (`make run`), from the
# repository root:
#
#   .venv/bin/python clients/python/examples/quickstart.py
#
# An optional argument gives another relay URL. With the client installed
# from its wheel (docs/install.md) it runs the same with that environment's
# python: nothing here needs the repository.
import asyncio
import sys

import relay_client

URL = sys.argv[1] if len(sys.argv) > 1 else "ws://127.0.0.1:8080/v1/ws"


async def main() -> None:
    async with (
        relay_client.connect(URL, id="alice") as alice,
        relay_client.connect(URL, id="bob") as bob,
    ):
        bob.on_request("add", lambda msg: msg.data["a"] + msg.data["b"])  # answers requests
        await bob.join("lobby")

        await alice.send("bob", {"text": "hi"}, ev="chat")  # returns on the relay's ok
        await alice.publish("lobby", "hello room", ev="chat")  # to every member of lobby
        total = await alice.request("bob", {"a": 1, "b": 2}, ev="add", timeout=5)
        print("1 + 2 =", total)  # 1 + 2 = 3

        for _ in range(2):  # or: async for msg in bob (until the peer closes)
            msg = await bob.recv()
            print(msg.sender, msg.room, msg.ev, msg.data)
            # alice None chat {'text': 'hi'}, then: alice lobby chat hello room


asyncio.run(main())
