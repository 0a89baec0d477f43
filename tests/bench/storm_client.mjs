// The storm's client: a WebSocket opened on a bare TCP socket, as lean as a client can be.
//
// A `ws` client costs the generator about 240 µs of CPU per connection on the bench machines
// (Node's HTTP client, its upgrade handling, a socket wrapper): at 200 in flight the generator
// saturated before either server did, so the storm measured the generator. This one writes the
// upgrade request itself, checks the 101 and its Sec-WebSocket-Accept, sends the hello as one
// masked frame and reads the welcome frame; everything after the welcome is left unread. It speaks
// only what the storm needs (docs/benchmarks.md, "storm").
import { createHash, randomBytes } from "node:crypto";
import net from "node:net";
import { performance } from "node:perf_hooks";

const GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";
const HEAD_END = Buffer.from("\r\n\r\n");

// Keys and masks come from one pool: a randomBytes call per connection cost the generator more
// than its masking.
let pool = Buffer.alloc(0);
function random(size) {
  if (pool.length < size) pool = randomBytes(65536);
  const bytes = pool.subarray(0, size);
  pool = pool.subarray(size);
  return bytes;
}

/** A registered client: `once("close", f)` hears its socket close, `terminate()` drops it. */
export class StormClient {
  constructor(socket) {
    this.socket = socket;
  }

  once(event, listener) {
    this.socket.once(event, listener);
    return this;
  }

  terminate() {
    this.socket.destroy();
  }
}

/**
 * Opens `url` (ws://host:port/path) from `localAddress`, sends `hello`'s bytes (msgpack) and
 * resolves to a StormClient once the answer arrives, if `isWelcome(answer bytes)`; rejects on
 * anything else. `phases`, if given, gets [ms until the 101, ms from the 101 to the answer].
 */
export function openStormClient(url, hello, isWelcome, localAddress, phases) {
  const { hostname, port, pathname } = new URL(url);
  const key = random(16).toString("base64");
  const accept = createHash("sha1").update(key + GUID).digest("base64");
  const request =
    `GET ${pathname} HTTP/1.1\r\nHost: ${hostname}:${port}\r\nUpgrade: websocket\r\n` +
    `Connection: Upgrade\r\nSec-WebSocket-Key: ${key}\r\nSec-WebSocket-Version: 13\r\n` +
    `Sec-WebSocket-Protocol: relay.v1\r\n\r\n`;
  return new Promise((resolve, reject) => {
    const start = performance.now();
    let upgraded = 0;
    let pending = Buffer.alloc(0);
    const socket = net.connect({ host: hostname, port: Number(port), localAddress });
    socket.setNoDelay(true);
    const fail = (error) => {
      socket.destroy();
      reject(error);
    };
    socket.on("error", fail);
    socket.once("close", () => reject(new Error("closed before the welcome")));
    socket.once("connect", () => socket.write(request));
    const read = (data) => {
      pending = pending.length ? Buffer.concat([pending, data]) : data;
      if (!upgraded) {
        const end = pending.indexOf(HEAD_END);
        if (end < 0) return;
        const lines = pending.toString("latin1", 0, end).split("\r\n");
        const accepted = lines.some((line) => line.toLowerCase().startsWith("sec-websocket-accept:")
          && line.slice(21).trim() === accept);
        if (!lines[0].startsWith("HTTP/1.1 101 ") || !accepted) {
          fail(new Error(`upgrade refused: ${lines[0]}`));
          return;
        }
        upgraded = performance.now();
        pending = pending.subarray(end + 4);
        socket.write(maskedFrame(hello));
      }
      if (pending.length && pending[0] !== 0x82) {
        fail(new Error(`not one whole binary frame: first byte ${pending[0]}`));
        return;
      }
      const frame = unmaskedFrame(pending);
      if (frame === null) return;
      socket.off("data", read);
      socket.on("data", () => {}); // later frames (pings) go unread: the run ends first
      if (!isWelcome(frame)) {
        fail(new Error("hello refused"));
        return;
      }
      phases?.push([upgraded - start, performance.now() - upgraded]);
      socket.off("error", fail);
      socket.on("error", () => {}); // a server killed under its clients resets their sockets
      resolve(new StormClient(socket));
    };
    socket.on("data", read);
  });
}

/** A final binary frame of `payload` (under 64 KiB), masked as a client must. */
function maskedFrame(payload) {
  const short = payload.length < 126;
  const header = short ? 2 : 4;
  const frame = Buffer.allocUnsafe(header + 4 + payload.length);
  frame[0] = 0x82;
  if (short) frame[1] = 0x80 | payload.length;
  else {
    frame[1] = 0x80 | 126;
    frame.writeUInt16BE(payload.length, 2);
  }
  const mask = random(4);
  mask.copy(frame, header);
  for (let i = 0; i < payload.length; i++) frame[header + 4 + i] = payload[i] ^ mask[i & 3];
  return frame;
}

/** The payload of the unmasked server frame `buffer` starts with, or null until it is whole. */
function unmaskedFrame(buffer) {
  if (buffer.length < 2) return null;
  let length = buffer[1] & 0x7f;
  let offset = 2;
  if (length === 126) {
    if (buffer.length < 4) return null;
    length = buffer.readUInt16BE(2);
    offset = 4;
  } else if (length === 127) {
    if (buffer.length < 10) return null;
    length = Number(buffer.readBigUInt64BE(2));
    offset = 10;
  }
  if (buffer.length < offset + length) return null;
  return buffer.subarray(offset, offset + length);
}
