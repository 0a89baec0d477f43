// The HTTP transport (docs/protocol-http.md) for load.mjs, shaped like the
// part of a `ws` socket load.mjs uses: "message" (a Buffer per envelope) and
// "close" (the code) events, send(), close(), terminate(). A stream for what
// the relay sends, one POST in flight carrying whatever was sent meanwhile,
// and one ack in flight reporting what was received. No retries: a failed
// request closes the peer (1006), which the bench counts.
import { EventEmitter } from "node:events";

import { Decoder } from "@msgpack/msgpack";

const decoder = new Decoder();
const HEAD = 5;

function head(kind, length) {
  const bytes = Buffer.allocUnsafe(HEAD);
  bytes.writeUInt8(kind, 0);
  bytes.writeUInt32BE(length, 1);
  return bytes;
}

/** The HTTP transport's base URL for a WebSocket URL: ws://h/v1/ws -> http://h/v1/http. */
export function httpBase(url) {
  return url.replace(/^ws/, "http").replace(/\/ws$/, "/http");
}

export class HttpPeer extends EventEmitter {
  constructor(base) {
    super();
    this.base = base;
    this.secret = "";
    this.received = 0; // envelope records received
    this.reported = 0; // the most a request has reported
    this.seq = 0;
    this.outbox = [];
    this.posting = false;
    this.acking = false;
    this.ended = false;
    this.abort = new AbortController();
  }

  /** Opens the session and its stream. */
  async start() {
    const answer = await fetch(`${this.base}/open`, { method: "POST" });
    if (answer.status !== 200) throw new Error(`open refused: ${answer.status}`);
    this.secret = decoder.decode(new Uint8Array(await answer.arrayBuffer())).session;
    this._read().catch(() => this._end(1006));
  }

  _headers(extra = {}) {
    return { "relay-session": this.secret, "relay-received": String(this.received), ...extra };
  }

  send(frame) {
    this.outbox.push(head(0, frame.length), frame);
    if (!this.posting) this._post().catch(() => this._end(1006));
  }

  async _post() {
    this.posting = true;
    while (this.outbox.length && !this.ended) {
      const body = Buffer.concat(this.outbox);
      this.outbox = [];
      const received = this.received;
      const answer = await fetch(`${this.base}/send`, {
        method: "POST", body, signal: this.abort.signal,
        headers: this._headers({ "relay-seq": String(++this.seq) }),
      });
      await answer.arrayBuffer();
      if (answer.status !== 204) throw new Error(`send refused: ${answer.status}`);
      this.reported = Math.max(this.reported, received);
    }
    this.posting = false;
  }

  // Not held back while a POST is in flight: a POST the relay holds (its
  // target's queue is full) must not hold back the report that drains ours.
  _ack() {
    if (this.acking || this.ended || this.received === this.reported) return;
    this.acking = true;
    const received = this.received;
    fetch(`${this.base}/ack`, { method: "POST", headers: this._headers(), signal: this.abort.signal })
      .then(async (answer) => {
        await answer.arrayBuffer();
        if (answer.status !== 204) throw new Error(`ack refused: ${answer.status}`);
        this.reported = Math.max(this.reported, received);
        this.acking = false;
        this._ack();
      })
      .catch(() => this._end(1006));
  }

  async _read() {
    const answer = await fetch(`${this.base}/stream`, {
      method: "POST", headers: this._headers(), signal: this.abort.signal,
    });
    if (answer.status !== 200) throw new Error(`stream refused: ${answer.status}`);
    let buffer = Buffer.alloc(0);
    for await (const chunk of answer.body) {
      buffer = buffer.length ? Buffer.concat([buffer, chunk]) : Buffer.from(chunk);
      let at = 0;
      while (buffer.length - at >= HEAD) {
        const kind = buffer.readUInt8(at);
        const length = buffer.readUInt32BE(at + 1);
        if (buffer.length - at - HEAD < length) break;
        const payload = buffer.subarray(at + HEAD, at + HEAD + length);
        at += HEAD + length;
        if (kind === 0) {
          this.received += 1;
          this.emit("message", payload);
        } else if (kind === 2) {
          this._end(decoder.decode(payload).code);
          return;
        }
      }
      buffer = buffer.subarray(at);
      this._ack();
    }
    this._end(1006);
  }

  _end(code) {
    if (this.ended) return;
    this.ended = true;
    this.abort.abort();
    this.emit("close", code);
  }

  close() {
    if (this.ended) return;
    fetch(`${this.base}/close`, { method: "POST", headers: this._headers() }).catch(() => {});
    this._end(1000);
  }

  terminate() {
    this._end(1006);
  }
}
