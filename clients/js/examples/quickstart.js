// Two peers on one relay, in Node 20. From the repository root, with a relay
// running (`make run`) and the JS packages installed (`make install`):
//
//   node clients/js/examples/quickstart.js
//
// An optional argument gives another relay URL. Node 20 has no global
// WebSocket, so the `ws` package's constructor is passed in; Node 22+ and
// browsers need no `WebSocket` option. In a project of your own, install the
// client from the tarball `npm pack` makes (docs/install.md) with
// `npm install relay-client-0.1.0.tgz ws`: the imports stay the same.
import WebSocket from "ws";
import { connect } from "relay-client";

const url = process.argv[2] ?? "ws://127.0.0.1:8080/v1/ws";
// Without an `id` option the relay picks one, so this never collides with a
// peer already connected; pass `id: "alice"` to choose.
const alice = await connect(url, { WebSocket });
const bob = await connect(url, { WebSocket });
console.log(`alice is ${alice.id}, bob is ${bob.id}`);

bob.addEventListener("message", (e) => {
  const where = e.room ? `room ${e.room}` : "direct";
  console.log(`bob got ${JSON.stringify(e.data)} from ${e.from} (${where}, ev ${e.ev})`);
});
bob.onRequest("add", ({ a, b }) => a + b); // answers requests with ev "add"
await bob.join("lobby");

await alice.send(bob.id, { text: "hi" }, { ev: "chat" }); // resolves on the relay's ok
await alice.publish("lobby", "hello room", { ev: "chat" }); // to every member of lobby
const sum = await alice.request(bob.id, { a: 1, b: 2 }, { ev: "add", timeout: 5000 });
console.log(`alice asked bob to add 1 and 2: ${sum}`);

await alice.close();
await bob.close();
