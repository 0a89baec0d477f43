// Interop: node's `ws` client against the relay's frame layer.
// Usage: node node_client.mjs <clients/js directory> <relay url>
// Does hello -> welcome, sends 64 B, 4 KiB, 60 KiB and a fragmented message to
// the peer "echo" (which sends each back), pings, closes 1000; prints "ok".
import assert from "node:assert/strict";
import { once } from "node:events";
import { createRequire } from "node:module";
import path from "node:path";
import { randomBytes } from "node:crypto";

const [jsDir, url] = process.argv.slice(2);
const require = createRequire(path.join(path.resolve(jsDir), "package.json"));
const WebSocket = require("ws");
const { encode, decode } = require("@msgpack/msgpack");

const ws = new WebSocket(url, ["relay.v1"]);
const inbox = [];
let wake = null;
ws.on("message", (data, isBinary) => {
  assert.ok(isBinary, "the relay sends binary frames");
  inbox.push(decode(data));
  if (wake) wake();
});

async function next() {
  while (!inbox.length) await new Promise((resolve) => (wake = resolve));
  wake = null;
  return inbox.shift();
}

let requestId = 0;
async function roundTrip(size, write) {
  const payload = randomBytes(size);
  const frame = encode({ type: "send", to: "echo", d: payload, id: ++requestId });
  write(Buffer.from(frame));
  const replies = [await next(), await next()];
  const ok = replies.find((r) => r.type === "ok");
  const echoed = replies.find((r) => r.type === "msg");
  assert.equal(ok?.id, requestId);
  assert.equal(echoed?.from, "echo");
  assert.ok(Buffer.from(echoed.d).equals(payload), `payload of ${size} bytes came back intact`);
}

await once(ws, "open");
assert.equal(ws.protocol, "relay.v1");
ws.send(encode({ type: "hello", id: "node" }));
assert.equal((await next()).type, "welcome");

for (const size of [64, 4096, 61440]) {
  await roundTrip(size, (frame) => ws.send(frame));
}
await roundTrip(5000, (frame) => {
  ws.send(frame.subarray(0, 10), { fin: false });
  ws.send(frame.subarray(10, 3000), { fin: false });
  ws.send(frame.subarray(3000), { fin: true });
});

ws.ping(Buffer.from("are you there"));
const [pong] = await once(ws, "pong");
assert.equal(pong.toString(), "are you there");

ws.close(1000, "done");
const [code] = await once(ws, "close");
assert.equal(code, 1000);
console.log("ok");
