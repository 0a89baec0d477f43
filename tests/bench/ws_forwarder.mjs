// A node `ws` forwarder: the reference server tests/bench/bench.py measures the relay against.
//
//   taskset -c 0 node tests/bench/ws_forwarder.mjs [PORT] [--codec msgpack|msgpackr]
//
// PORT 0, the default, picks a free port. --codec picks the msgpack library: `msgpack`
// (@msgpack/msgpack, the default) or `msgpackr`, the fastest a Node user would pick
// (bench.py's `ws-msgpackr`).
//
// Prints "ws ready on ws://127.0.0.1:PORT/v1/ws" on stderr once listening. It speaks just enough
// of protocol v1 for load.mjs's scenarios: hello → welcome, send → msg to one peer with `from`
// stamped, pub → msg to every member of the room, join → ok; a request's `id` is echoed in an
// ok. It routes and does nothing else (no validation, limits, queues, resume or metrics), on one
// thread: the strongest reference a node server doing the same routing can be.
import { randomBytes } from "node:crypto";
import { readFileSync } from "node:fs";
import { Decoder, Encoder } from "@msgpack/msgpack";
import { Packr, Unpackr } from "msgpackr";
import { WebSocketServer } from "ws";

// A v1 welcome carries a resume secret, the node and the limits (docs/protocol.md): the reference
// sends as much as the relay does, so the generator reads an answer of the same size from both.
const LIMITS = JSON.parse(readFileSync(new URL("./welcome_limits.json", import.meta.url), "utf8"));
const NODE = `node-${randomBytes(4).toString("hex")}`;

const [portArg, codecFlag, codecName = "msgpack"] = process.argv.slice(2);
if (codecFlag !== undefined && codecFlag !== "--codec") throw new Error(`unknown option ${codecFlag}`);

// One codec for the process, and a frame handed to ws.send is never overwritten by the next
// one: @msgpack/msgpack's `encode` returns a fresh copy; msgpackr's `pack` (without
// REUSE_BUFFER_MODE or useBuffer) returns a view of its current buffer and packs the next
// value after it, starting a new buffer when that one is nearly full, so a view it returned
// is never written again. `useRecords: false` keeps plain msgpack maps (msgpackr's record
// extension, its default for a Packr, is a format load.mjs's decoder does not read).
const codecs = {
  msgpack: () => [new Encoder(), new Decoder()],
  msgpackr: () => [
    { encode: (value) => packr.pack(value) },
    { decode: (data) => unpackr.unpack(data) },
  ],
};
const packr = new Packr({ useRecords: false });
const unpackr = new Unpackr({ useRecords: false });
if (!(codecName in codecs)) throw new Error(`unknown codec ${codecName}`);
const [encoder, decoder] = codecs[codecName]();
const peers = new Map(); // id → socket
const rooms = new Map(); // room → Set of sockets

const CARRIED = ["ev", "room", "rid", "re"]; // the request fields a msg keeps

function delivered(envelope, from) {
  const msg = { type: "msg", from, d: envelope.d };
  for (const key of CARRIED) if (envelope[key] !== undefined) msg[key] = envelope[key];
  return encoder.encode(msg);
}

function serve(ws) {
  let me;
  const joined = new Set();
  ws.on("message", (data) => {
    const envelope = decoder.decode(data);
    switch (envelope.type) {
      case "hello":
        me = envelope.id;
        peers.set(me, ws);
        ws.send(encoder.encode({
          type: "welcome", id: me, resume: randomBytes(24).toString("base64url"), limits: LIMITS,
          node: NODE, resumed: false,
        }));
        return; // a hello's id is the peer's, not a request's
      case "send":
        peers.get(envelope.to)?.send(delivered(envelope, me));
        break;
      case "pub": {
        const frame = delivered(envelope, me);
        for (const member of rooms.get(envelope.room) ?? []) {
          if (member !== ws || envelope.echo) member.send(frame);
        }
        break;
      }
      case "join":
        if (!rooms.has(envelope.room)) rooms.set(envelope.room, new Set());
        rooms.get(envelope.room).add(ws);
        joined.add(envelope.room);
        break;
    }
    if (envelope.id !== undefined) ws.send(encoder.encode({ type: "ok", id: envelope.id }));
  });
  ws.on("close", () => {
    if (peers.get(me) === ws) peers.delete(me);
    for (const room of joined) rooms.get(room).delete(ws);
  });
}

const server = new WebSocketServer({
  host: "127.0.0.1",
  port: Number(portArg ?? 0),
  path: "/v1/ws",
  perMessageDeflate: false,
  clientTracking: false,
  maxPayload: 65536, // the relay's default max_frame_bytes
  handleProtocols: (offered) => (offered.has("relay.v1") ? "relay.v1" : false),
});
server.on("connection", serve);
server.on("listening", () => {
  console.error(`ws (${codecName}) ready on ws://127.0.0.1:${server.address().port}/v1/ws`);
});
