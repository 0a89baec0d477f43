/**
 * The HTTP fallback transport (docs/protocol-http.md) behind the part of the
 * WebSocket interface RelayPeer uses: `onopen`, `onmessage` (`data` is a
 * Uint8Array holding one envelope), `onclose` (`code`, `reason`),
 * `onerror`, `send(bytes)`, `close()`, `terminate()`, `readyState`. So the
 * peer's hello, resume, heartbeat and reconnect logic run unchanged over it.
 *
 * "Open" means the relay created the HTTP session (`open` answered). The
 * session lost (404, 409, no successful request for `idle_seconds`) closes
 * this socket with 1006, as a dropped WebSocket would, and the peer resumes
 * on a new one.
 */
import { decode } from "@msgpack/msgpack";
import { backoffDelay } from "./backoff.js";
import { CLOSE, ENVELOPE, KEEPALIVE, RecordParser, encodeRecords } from "./records.js";

const CONNECTING = 0;
const OPEN = 1;
const CLOSING = 2;
const CLOSED = 3;

/** Backoff of a request sent again (ms). */
const RETRY = { base: 250, max: 5000 };

/**
 * A `send` body stays within the relay's `http_body_bytes` (its `open` answer's
 * `body_bytes`; 1 MiB, the default, until then); one envelope larger than
 * that still goes, alone.
 */
const MAX_BATCH_BYTES = 1 << 20;

/**
 * The close code of a refusal that ends the session: 404 and 409 lose it (it
 * is unknown, or out of step with us), and the peer resumes on a new one as
 * after a dropped WebSocket; the others are what a WebSocket would be closed
 * with (403 an Origin refused, 413 too large); anything else (400) is a
 * protocol error.
 * @type {Record<number, number>}
 */
const FATAL = { 404: 1006, 409: 1006, 403: 1008, 413: 1009 };

/**
 * How long to wait before a request is made again: `null` when the socket
 * is closed meanwhile, 0 at once, -1 after the retry backoff, else ms.
 * @typedef {number | null} Next
 */

/** @typedef {{code: number, reason: string, wasClean: boolean}} CloseInfo */

/**
 * The ms a `Retry-After` header asks for, if it has a usable one.
 * @param {Response} res
 */
function retryAfter(res) {
  const value = res.headers.get("retry-after");
  if (!value) return -1;
  const seconds = Number(value);
  if (Number.isFinite(seconds)) return Math.max(0, seconds * 1000);
  const at = Date.parse(value);
  return Number.isNaN(at) ? -1 : Math.max(0, at - Date.now());
}

export class HttpSocket {
  static CONNECTING = CONNECTING;
  static OPEN = OPEN;
  static CLOSING = CLOSING;
  static CLOSED = CLOSED;

  /**
   * Opens an HTTP session at once, as `new WebSocket()` opens a socket.
   * @param {string} url the transport's base, e.g. `http://127.0.0.1:8080/v1/http`
   * @param {{fetch?: typeof globalThis.fetch, streamTimeout?: number}} [options]
   *   `streamTimeout`: ms a new stream may take to bring its first record
   *   before the session switches to long-poll for good (0: long-poll from the start)
   */
  constructor(url, { fetch = globalThis.fetch, streamTimeout = 3000 } = {}) {
    this.url = url.replace(/\/+$/, "");
    /** Envelopes always arrive as Uint8Array; kept for the WebSocket's shape. */
    this.binaryType = "arraybuffer";
    this.readyState = CONNECTING;
    /** @type {((e: object) => void) | null} */
    this.onopen = null;
    /** @type {((e: {data: Uint8Array}) => void) | null} */
    this.onmessage = null;
    /** @type {((e: CloseInfo) => void) | null} */
    this.onclose = null;
    /** @type {((e: {message: string}) => void) | null} */
    this.onerror = null;

    // Called as a plain function: a browser's fetch refuses any other `this` ("Illegal invocation").
    /** @type {typeof globalThis.fetch} */
    this._fetch = (input, init) => fetch(input, init);
    this._streamTimeout = streamTimeout;
    this._polling = streamTimeout === 0;
    this._secret = "";
    this._keepaliveMs = 15_000;
    this._pollMs = 25_000;
    this._idleMs = 45_000;
    this._maxBatchBytes = MAX_BATCH_BYTES;
    this._received = 0; // envelope records received in this HTTP session (Relay-Received)
    this._reported = 0; // the highest Relay-Received a request has delivered
    /** @type {Uint8Array[]} */
    this._outgoing = []; // envelopes not yet in a batch
    this._seq = 0; // the last batch's Relay-Seq
    this._sending = false;
    this._acking = false;
    this._ackWanted = false; // a keepalive to answer
    /** @type {() => void} */
    this._sendsDone = () => {};
    this._lastHeard = 0;
    this._idleTimer = /** @type {ReturnType<typeof setTimeout> | undefined} */ (undefined);
    this._abort = new AbortController(); // every request but the reader's
    /** @type {AbortController | null} */
    this._reader = null; // the current stream or poll
    /** @type {Set<() => void>} */
    this._sleepers = new Set();
    this._done = false;
    this._open();
  }

  /**
   * Queues one envelope; envelopes queued while a `send` is in flight go
   * together in the next one.
   * @param {Uint8Array | ArrayBuffer} data
   */
  send(data) {
    if (this.readyState === CONNECTING) throw new DOMException("the HTTP session is not open yet", "InvalidStateError");
    if (this.readyState !== OPEN) return; // as a WebSocket does after close()
    this._outgoing.push(data instanceof Uint8Array ? data : new Uint8Array(data));
    this._pumpSends();
  }

  /**
   * Ends the HTTP session once what was sent before is sent (`POST close`),
   * then closes with 1000.
   * @param {number} [_code] a WebSocket's; the relay takes any `close` as 1000
   * @param {string} [reason]
   */
  close(_code, reason = "") {
    if (this.readyState === CONNECTING) this._fail(1006, "closed before the HTTP session opened");
    if (this.readyState !== OPEN) return;
    this.readyState = CLOSING;
    this._closeAfterSends(reason);
  }

  /** Abandons the session without a word to the relay (a dropped link): it stays resumable. */
  terminate() {
    this._finish({ code: 1006, reason: "terminated", wasClean: false });
  }

  // ---------------------------------------------------------------- internals

  /**
   * @param {string} name @param {{body?: Uint8Array<ArrayBuffer>, seq?: number, signal?: AbortSignal}} [opts]
   * @returns {Promise<Response>}
   */
  _post(name, { body, seq, signal } = {}) {
    /** @type {Record<string, string>} */
    const headers = {};
    if (this._secret) {
      headers["Relay-Session"] = this._secret;
      headers["Relay-Received"] = String(this._received);
    }
    if (seq !== undefined) headers["Relay-Seq"] = String(seq);
    if (body) headers["Content-Type"] = "application/octet-stream";
    return this._fetch(`${this.url}/${name}`, { method: "POST", headers, body, signal, cache: "no-store" });
  }

  /**
   * One request of the session. A refusal that ends it closes this socket.
   * @param {string} name @param {{body?: Uint8Array<ArrayBuffer>, seq?: number, signal?: AbortSignal}} [opts]
   * @returns {Promise<Response | Next>} the response when it succeeded (2xx)
   */
  async _exchange(name, opts = {}) {
    const received = this._received;
    let res;
    try {
      res = await this._post(name, { signal: this._abort.signal, ...opts });
    } catch {
      return this._done ? null : -1; // a network error, or aborted
    }
    if (res.ok) {
      this._heard();
      this._reported = Math.max(this._reported, received);
      return res;
    }
    const why = `${name}: HTTP ${res.status} ${(await res.text().catch(() => "")).slice(0, 100)}`.trim();
    if (this._done) return null;
    if (res.status === 429 || res.status === 503) return retryAfter(res);
    if (res.status >= 500) return -1;
    const code = FATAL[res.status] ?? 1002;
    this._fail(code, why);
    return null;
  }

  async _open() {
    /** @type {any} */
    let answer;
    try {
      const res = await this._post("open", { signal: this._abort.signal });
      if (!res.ok) {
        const text = await res.text().catch(() => "");
        this._fail(1006, `open: HTTP ${res.status} ${text.slice(0, 100)}`.trim());
        return;
      }
      answer = decode(new Uint8Array(await res.arrayBuffer()));
    } catch (err) {
      this._fail(1006, `open failed: ${err}`);
      return;
    }
    if (this._done) return;
    if (!answer || typeof answer.session !== "string") {
      this._fail(1002, "open: the answer has no session");
      return;
    }
    this._secret = answer.session;
    /** @param {unknown} s @param {number} fallback */
    const ms = (s, fallback) => (typeof s === "number" && s > 0 ? s * 1000 : fallback);
    this._keepaliveMs = ms(answer.keepalive_seconds, this._keepaliveMs);
    this._pollMs = ms(answer.poll_seconds, this._pollMs);
    this._idleMs = ms(answer.idle_seconds, this._idleMs);
    if (typeof answer.body_bytes === "number" && answer.body_bytes > 0) this._maxBatchBytes = answer.body_bytes;
    this.readyState = OPEN;
    this._heard();
    this.onopen?.({ type: "open" });
    if (!this._done) this._read();
  }

  /** Reads what the relay sends, on a stream or by long-poll, until the socket closes. */
  async _read() {
    let failures = 0;
    while (!this._done) {
      const next = this._polling ? await this._pollOnce() : await this._streamOnce();
      if (next === null || this._done) return;
      if (next === 0) failures = 0;
      else await this._sleep(next > 0 ? next : backoffDelay(failures++, RETRY));
    }
  }

  /**
   * One stream, read until it ends. No record within `streamTimeout` of
   * opening it: long-poll from now on. Silent for two keepalive periods: a
   * dead link, opened again.
   * @returns {Promise<Next>}
   */
  async _streamOnce() {
    const reader = (this._reader = new AbortController());
    let envelopes = false;
    let heard = false;
    let lastRecord = 0;
    /** @type {ReturnType<typeof setTimeout> | undefined} */
    let timer;
    const watch = () => {
      if (!heard) this._polling = true;
      const left = lastRecord + 2 * this._keepaliveMs - performance.now();
      if (!heard || left <= 0) reader.abort();
      else timer = setTimeout(watch, left);
    };
    timer = setTimeout(watch, this._streamTimeout);
    try {
      const res = await this._exchange("stream", { signal: reader.signal });
      if (res === null) return null;
      if (!(res instanceof Response)) return this._polling ? 0 : res;
      if (!res.body) return -1;
      const body = res.body.getReader();
      const parser = new RecordParser();
      for (;;) {
        const { done, value } = await body.read();
        if (done || this._done) break;
        const records = parser.push(value);
        if (!records.length) continue;
        heard = true;
        lastRecord = performance.now();
        this._heard();
        envelopes = this._handle(records, true) || envelopes;
        if (this._done) break;
      }
    } catch {
      // cut, or aborted by the watch
    } finally {
      clearTimeout(timer);
    }
    if (this._done) return null;
    return envelopes || (this._polling && !heard) ? 0 : -1;
  }

  /**
   * One long-poll.
   * @returns {Promise<Next>}
   */
  async _pollOnce() {
    const reader = (this._reader = new AbortController());
    // The relay answers within poll_seconds; much later, the answer was lost.
    const timer = setTimeout(() => reader.abort(), this._pollMs + this._keepaliveMs);
    try {
      const res = await this._exchange("poll", { signal: reader.signal });
      if (!(res instanceof Response)) return res;
      const body = new Uint8Array(await res.arrayBuffer());
      this._handle(new RecordParser().push(body), false);
      return this._done ? null : 0;
    } catch {
      return this._done ? null : -1;
    } finally {
      clearTimeout(timer);
    }
  }

  /**
   * Acts on records from the relay; whether envelopes were among them.
   * @param {import("./records.js").Record[]} records @param {boolean} streaming
   */
  _handle(records, streaming) {
    let envelopes = false;
    for (const record of records) {
      if (this._done) return envelopes;
      if (record.kind === ENVELOPE) {
        envelopes = true;
        this._received++;
        this.onmessage?.({ data: record.payload });
      } else if (record.kind === KEEPALIVE) {
        // On a stream the relay asks for a report; a poll reports by asking again.
        if (streaming) this._ackWanted = true;
      } else if (record.kind === CLOSE) {
        this._onCloseRecord(record.payload);
        return envelopes;
      }
      // Kinds a newer relay may add are skipped.
    }
    if (streaming) this._acks();
    return envelopes;
  }

  /** The relay ended the session: report the close record, then close with its code. */
  _onCloseRecord(/** @type {Uint8Array} */ payload) {
    /** @type {any} */
    let info;
    try {
      info = decode(payload);
    } catch {
      info = null;
    }
    // The relay holds the session until this report (or close_timeout_seconds).
    this._post("ack").catch(() => {});
    const code = typeof info?.code === "number" ? info.code : 1005;
    const reason = typeof info?.reason === "string" ? info.reason : "";
    this._finish({ code, reason, wasClean: true });
  }

  /** Reports what was received, one `ack` at a time, while something is unreported. */
  async _acks() {
    if (this._acking) return;
    this._acking = true;
    let failures = 0;
    try {
      while (!this._done && (this._ackWanted || this._received > this._reported)) {
        this._ackWanted = false;
        const res = await this._exchange("ack");
        if (res === null) return;
        if (res instanceof Response) {
          failures = 0;
          continue;
        }
        this._ackWanted = true;
        await this._sleep(res > 0 ? res : backoffDelay(failures++, RETRY));
      }
    } finally {
      this._acking = false;
    }
  }

  /** Sends what is queued, one batch in flight; a failed batch goes again, the same. */
  async _pumpSends() {
    if (this._sending) return;
    this._sending = true;
    try {
      while (this._outgoing.length && !this._done) {
        let size = 0;
        let n = 0;
        for (const bytes of this._outgoing) {
          if (n > 0 && size + 5 + bytes.byteLength > this._maxBatchBytes) break;
          size += 5 + bytes.byteLength;
          n++;
        }
        const body = encodeRecords(ENVELOPE, this._outgoing.splice(0, n));
        const seq = ++this._seq;
        for (let failures = 0; ; ) {
          const res = await this._exchange("send", { body, seq });
          if (res === null) return;
          if (res instanceof Response) break;
          await this._sleep(res > 0 ? res : backoffDelay(failures++, RETRY));
          if (this._done) return;
        }
      }
    } finally {
      this._sending = false;
      this._sendsDone();
    }
  }

  async _closeAfterSends(/** @type {string} */ reason) {
    while (this._sending) await new Promise((resolve) => (this._sendsDone = () => resolve(undefined)));
    if (this._done) return;
    const res = await this._exchange("close");
    this._finish({ code: 1000, reason, wasClean: res instanceof Response });
  }

  /** A request of the session succeeded, or the stream brought records. */
  _heard() {
    this._lastHeard = performance.now();
    if (this._idleTimer === undefined) this._watchIdle(this._idleMs);
  }

  _watchIdle(/** @type {number} */ delay) {
    this._idleTimer = setTimeout(() => {
      const left = this._lastHeard + this._idleMs - performance.now();
      if (left > 0) this._watchIdle(left);
      else this._fail(1006, `no answer from the relay for ${this._idleMs / 1000} s`);
    }, delay);
  }

  /** @param {number} ms @returns {Promise<void>} resolves early when the socket closes */
  _sleep(ms) {
    return new Promise((resolve) => {
      const wake = () => {
        clearTimeout(timer);
        this._sleepers.delete(wake);
        resolve();
      };
      const timer = setTimeout(wake, ms);
      this._sleepers.add(wake);
    });
  }

  _fail(/** @type {number} */ code, /** @type {string} */ reason) {
    this._finish({ code, reason, wasClean: false }, reason);
  }

  /**
   * Closes now; the events come after the current task, as a WebSocket's
   * do, so a caller of `close()` or `terminate()` never runs its own close
   * handler in the middle of the call.
   * @param {CloseInfo} info @param {string} [error] a failure, reported with `onerror` first
   */
  _finish(info, error) {
    if (this._done) return;
    this._done = true;
    this.readyState = CLOSED;
    clearTimeout(this._idleTimer);
    this._abort.abort();
    this._reader?.abort();
    for (const wake of [...this._sleepers]) wake();
    this._sendsDone();
    queueMicrotask(() => {
      if (error !== undefined) this.onerror?.({ message: error });
      this.onclose?.(info);
    });
  }
}
