// The JavaScript side of tests/deploy/test_nginx.py: the reference JS client
// over wss:// through nginx (NODE_EXTRA_CA_CERTS trusts the test's certificate).
//
//   node js_peer.mjs URL ID
//
// Prints one JSON line per event: {"open": node, "resumed": bool} on every
// welcome, {"msg": data, "from": id, "ev": ev} per message. Reads JSON lines
// on stdin: {"send": to, "data": d, "ev": e} sends (printing {"sent": d} or
// {"failed": d, "error": name}); end of input closes the peer and exits.
import { createInterface } from "node:readline";
import { createRequire } from "node:module";
import { fileURLToPath } from "node:url";

const root = new URL("../../clients/js/", import.meta.url);
const require = createRequire(fileURLToPath(new URL("package.json", root)));
const WebSocket = require("ws");
const { connect } = await import(new URL("src/index.js", root));

const [url, id] = process.argv.slice(2);
const print = (value) => process.stdout.write(JSON.stringify(value) + "\n");

const peer = await connect(url, { id, WebSocket, backoff: { base: 50, max: 200 } });
print({ open: peer.node, resumed: false });
peer.addEventListener("open", (e) => print({ open: e.node, resumed: e.resumed }));
peer.addEventListener("message", (e) => print({ msg: e.data, from: e.from, ev: e.ev ?? null }));
peer.addEventListener("undelivered", (e) => print({ undelivered: e.data ?? null }));

const lines = createInterface({ input: process.stdin });
for await (const line of lines) {
  const command = JSON.parse(line);
  try {
    await peer.send(command.send, command.data, { ev: command.ev });
    print({ sent: command.data });
  } catch (err) {
    print({ failed: command.data, error: err.name });
  }
}
await peer.close();
process.exit(0);
