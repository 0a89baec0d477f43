/**
 * The relay peer: one link to the relay, msgpack envelopes on it (protocol
 * v1, see /docs/js-client.md), reconnect/resume, request/reply. The link is
 * a WebSocket, or the HTTP transport (./http.js) where a WebSocket cannot
 * open. Runs unchanged in browsers and Node 20+ (pass `WebSocket` from the
 * `ws` package in Node, which has no global one before Node 22).
 */
import { backoffDelay, shouldReconnect } from "./backoff.js";
import { createCodec } from "./codec.js";
import { HttpSocket } from "./http.js";
import {
  ConnectionClosed,
  ConnectionLost,
  NotConnected,
  OfflineBufferFull,
  ProtocolError,
  RemoteError,
  RequestTimeout,
  TooLarge,
  errorFromEnvelope,
} from "./errors.js";
import {
  DisconnectEvent,
  OpenEvent,
  PresenceEvent,
  RelayCloseEvent,
  RelayErrorEvent,
  RelayMessageEvent,
  StateEvent,
  UndeliveredEvent,
} from "./events.js";

/**
 * An envelope on its way: waiting to be written, or written and waiting for
 * the relay's answer.
 * @typedef {object} Item
 * @property {number | undefined} id its `id` (requests only)
 * @property {Uint8Array} bytes the encoded envelope
 * @property {boolean} ack a request: it has an `id` and the relay's answer settles it
 * @property {boolean} urgent a rejoin after a reconnect: written ahead of everything
 * @property {any} env the envelope
 * @property {(value?: any) => void} resolve
 * @property {(error: Error) => void} reject
 * @property {() => boolean} live whether its caller still waits
 * @property {number} [sentAt] when it was written (performance.now())
 */

/** The WebSocket subprotocol of protocol v1. */
export const SUBPROTOCOL = "relay.v1";

/** The `ev` of a reply whose handler threw (cross-client convention). */
export const ERROR_EV = "relay.error";

const DEFAULTS = {
  reconnect: true,
  maxRetries: Infinity,
  backoff: { base: 250, max: 10_000 },
  connectTimeout: 10_000,
  pingInterval: 20_000,
  pingTimeout: 10_000,
  requestTimeout: 30_000,
  maxBuffered: 256,
  pace: true,
  fallbackTimeout: 5000,
  streamTimeout: 3000,
};

/** The transports, in the default order of trying them. */
const TRANSPORTS = ["websocket", "http"];

const noop = () => {};

/** A session up this long (ms) counts as stable: the backoff starts over after it. */
const STABLE_MS = 5000;

/**
 * The close code of a draining relay. It acted on no request it left
 * unanswered before its close frame (protocol.md), so those are sent again.
 */
const DRAIN_CODE = 1001;

const always = () => true;

/**
 * The HTTP transport's URL beside a WebSocket URL whose path ends in `/ws`
 * (`ws://h/v1/ws` -> `http://h/v1/http`), else undefined.
 * @param {string} wsUrl
 */
export function httpUrlFor(wsUrl) {
  /** @type {URL} */
  let url;
  try {
    url = new URL(wsUrl);
  } catch {
    return undefined;
  }
  if ((url.protocol !== "ws:" && url.protocol !== "wss:") || !url.pathname.endsWith("/ws")) return undefined;
  url.protocol = url.protocol === "wss:" ? "https:" : "http:";
  url.pathname = `${url.pathname.slice(0, -2)}http`;
  url.search = url.hash = "";
  return url.href;
}

/**
 * The transports to try, in order, from the `transports` option.
 * @param {unknown} value
 * @returns {string[]}
 */
function transportList(value) {
  if (!Array.isArray(value) || value.length === 0 || new Set(value).size !== value.length || !value.every((t) => TRANSPORTS.includes(t))) {
    throw new TypeError(`relay-client: \`transports\` takes a list of "websocket" and "http", each at most once (got ${JSON.stringify(value)})`);
  }
  return value;
}

/**
 * The `d` of an envelope: `undefined` becomes nil (the relay wants a `d`),
 * and a bare ArrayBuffer becomes a Uint8Array, because @msgpack/msgpack
 * encodes only typed arrays/DataViews as bin (an ArrayBuffer would turn into
 * an empty map). Nested ArrayBuffers are the caller's to wrap.
 * @param {unknown} data
 */
const payload = (data) =>
  data === undefined ? null : data instanceof ArrayBuffer ? new Uint8Array(data) : data;

/**
 * Connects to a relay and resolves once it has welcomed us.
 * Rejects (typed error) if the first connection attempt fails; later drops
 * are retried according to the options.
 * @param {string} url `ws://host:port/v1/ws` (http(s) URLs are accepted too)
 * @param {import("./index.js").ConnectOptions} [options]
 * @returns {Promise<RelayPeer>}
 */
export function connect(url, options = {}) {
  const peer = new RelayPeer(url, options);
  return peer._start();
}

export class RelayPeer extends EventTarget {
  /**
   * Use {@link connect} instead; the constructor does not connect.
   * @param {string} url
   * @param {import("./index.js").ConnectOptions} [options]
   */
  constructor(url, options = {}) {
    super();
    this.url = url.replace(/^http(s?):/, "ws$1:");
    /** @type {string | undefined} the HTTP transport's URL (`httpUrl`, or derived from `url`) */
    this.httpUrl = options.httpUrl ?? httpUrlFor(this.url);
    let transports = transportList(options.transports ?? TRANSPORTS);
    if (transports.includes("http") && !this.httpUrl) {
      if (options.transports) {
        throw new TypeError(
          `relay-client: the "http" transport needs the \`httpUrl\` option: it is derived only from a URL ending in /ws, and ${this.url} does not`,
        );
      }
      // The default list, with a WebSocket URL of another shape: the WebSocket alone.
      transports = transports.filter((t) => t !== "http");
    }
    this._transports = transports;
    const WS = options.WebSocket ?? globalThis.WebSocket;
    if (transports.includes("websocket") && typeof WS !== "function") {
      throw new TypeError(
        "relay-client: no WebSocket implementation. Pass one as the `WebSocket` option " +
          "(in Node 20: `import WebSocket from \"ws\"` then connect(url, {WebSocket})), or use transports: [\"http\"]",
      );
    }
    this._WS = WS;
    const fetch = options.fetch ?? globalThis.fetch;
    if (transports.includes("http") && typeof fetch !== "function") {
      throw new TypeError("relay-client: no fetch implementation for the HTTP transport. Pass one as the `fetch` option");
    }
    this._fetch = fetch;
    this._opts = { ...DEFAULTS, ...options, backoff: { ...DEFAULTS.backoff, ...options.backoff } };
    this._codec = createCodec(options.msgpack);
    /** @type {string | undefined} our id: the one asked for, or the one the relay picked */
    this.id = options.id;
    /** @type {string | undefined} secret of the latest `welcome`, to resume this session */
    this.resumeSecret = options.resume;
    /** @type {Record<string, number>} limits from the latest `welcome` */
    this.limits = {};
    /** @type {string | undefined} relay node that welcomed us */
    this.node = undefined;
    /** @type {"connecting" | "open" | "reconnecting" | "closed"} */
    this.state = "connecting";

    this._ws = null;
    /** @type {"websocket" | "http" | null} */
    this._transport = null;
    this._nextId = 1; // request ids (ok/err/pong correlation); never reused
    this._nextRid = 1; // request/reply ids (rid/re)
    /** @type {Item[]} */
    this._outbox = []; // written in order when connected (and paced)
    /** @type {Item[]} */
    this._resend = []; // requests a drain left unanswered, in the order written: sent again first
    /** @type {Map<number | undefined, Item>} */
    this._acks = new Map(); // id -> item written, awaiting ok/err (pong for a ping)
    this._requests = new Map(); // rid -> {to, resolve, reject, timer}
    this._handlers = new Map(); // ev -> request handler
    this._rooms = new Map(); // room -> {presence}; rejoined after a non-resumed reconnect
    this._queued = new Map(); // id -> {data, ev} of recent sends the relay queued
    this._retries = 0; // reconnect attempts since the last stable session
    this._welcomed = false;
    // Envelopes received since the latest welcome: a resume tells the relay,
    // which replays whatever the dead socket never delivered.
    this._received = 0;
    this._welcomedAt = 0;
    this._closing = null; // {code, reason} once close() was called
    this._lastErr = undefined; // id-less err received on the current socket
    this._timers = { retry: 0, connect: 0, fallback: 0, heartbeat: 0, pump: 0, closeFallback: 0 };
    this._bucket = null; // client-side pacing to the relay's rate limit
    this._closedError = null;
    /** @type {Promise<void>} */
    this._closed = new Promise((resolve) => (this._resolveClosed = resolve));
  }

  /** true while a welcomed socket is up */
  get connected() {
    return this.state === "open";
  }

  /**
   * The transport of the current link, from its opening until it closes:
   * `"websocket"`, `"http"` (the fallback), or null while there is none.
   * @returns {"websocket" | "http" | null}
   */
  get transport() {
    return this._transport;
  }

  // ---------------------------------------------------------------- API

  /**
   * Sends `data` to one peer or several.
   * @param {string | string[]} to
   * @param {unknown} data any msgpack value
   * @param {{ev?: string, ack?: boolean, rid?: unknown, re?: unknown}} [opts]
   *   `ack: false` = fire-and-forget: resolves once written, failures arrive as "error" events
   * @returns {Promise<{id?: number, queued: boolean}>} resolves on the relay's `ok`;
   *   `queued` when a target is resuming (see the "undelivered" event)
   */
  send(to, data, { ev, ack = true, rid, re } = {}) {
    return this._submit({ type: "send", to, d: payload(data), ev, rid, re }, ack);
  }

  /**
   * Delivers `data` to every member of `room` (not to us unless `echo`).
   * @param {string} room
   * @param {unknown} data
   * @param {{ev?: string, echo?: boolean, ack?: boolean}} [opts]
   */
  publish(room, data, { ev, echo, ack = true } = {}) {
    return this._submit({ type: "pub", room, d: payload(data), ev, echo }, ack);
  }

  /**
   * Joins `room`; with `presence`, "presence" events follow for it. Rooms
   * are rejoined automatically after a reconnect the relay did not resume.
   * @param {string} room
   * @param {{presence?: boolean}} [opts]
   */
  async join(room, { presence = false } = {}) {
    const result = await this._submit({ type: "join", room, presence: presence || undefined }, true);
    this._rooms.set(room, { presence });
    return result;
  }

  /** @param {string} room */
  leave(room) {
    this._rooms.delete(room);
    return this._submit({ type: "leave", room }, true);
  }

  /** Rooms joined (as far as this client knows). */
  get rooms() {
    return [...this._rooms.keys()];
  }

  /**
   * Sends a request and resolves with the reply's data. Rejects with
   * PeerOffline (target not connected), RequestTimeout, or RemoteError (the
   * remote handler threw).
   * @param {string} to
   * @param {unknown} data
   * @param {{ev?: string, timeout?: number}} [opts] timeout in ms
   */
  request(to, data, { ev, timeout = this._opts.requestTimeout } = {}) {
    if (typeof to !== "string") return Promise.reject(new TypeError("request() takes a single target id"));
    const rid = this._nextRid++;
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this._requests.delete(rid);
        reject(new RequestTimeout(`no reply from ${to} within ${timeout} ms`));
      }, timeout);
      this._requests.set(rid, { to, resolve, reject, timer });
      const env = { type: "send", to, d: payload(data), ev, rid };
      // After a drain the send goes again only while someone waits for its reply.
      this._submit(env, true, { live: () => this._requests.has(rid) }).catch((err) => {
        // Written but unanswered when the link dropped: it may have arrived,
        // and the reply can still come after we resume, so keep waiting.
        if (!(err instanceof ConnectionLost)) this._settleRequest(rid, err, true);
      });
    });
  }

  /**
   * Answers requests whose `ev` is `ev` (`null`: requests without `ev`;
   * `"*"`: any request no other handler takes). The handler's return value (or promise) is the reply; if it
   * throws, the requester gets a RemoteError with its message. Requests with
   * no handler arrive as "message" events (answer them with `reply`).
   * @param {string | null} ev
   * @param {(data: any, msg: RelayMessageEvent) => unknown} handler
   * @returns {() => void} removes the handler
   */
  onRequest(ev, handler) {
    const key = ev ?? null;
    this._handlers.set(key, handler);
    return () => {
      if (this._handlers.get(key) === handler) this._handlers.delete(key);
    };
  }

  /**
   * Replies to a request message by hand (fire-and-forget).
   * @param {RelayMessageEvent} msg a "message" event with `rid`
   * @param {unknown} data
   * @param {{error?: boolean}} [opts] `error: true` sends `data` as the error message
   */
  reply(msg, data, { error = false } = {}) {
    if (msg.rid === undefined || msg.rid === null) throw new TypeError("message is not a request (no rid)");
    const env = error
      ? { type: "send", to: msg.from, re: msg.rid, ev: ERROR_EV, d: String(data) }
      : { type: "send", to: msg.from, re: msg.rid, d: payload(data) };
    return this._submit(env, false);
  }

  /**
   * Application-level ping: resolves with the round-trip time in ms.
   * @param {{timeout?: number}} [opts]
   */
  ping({ timeout = this._opts.pingTimeout } = {}) {
    const ws = this._ws;
    if (this.state !== "open" || !ws) return Promise.reject(new NotConnected());
    return this._ping(ws, timeout, always);
  }

  /**
   * Closes the connection for good; pending work is rejected with
   * ConnectionClosed. Resolves once the socket is closed.
   * @param {number} [code] @param {string} [reason]
   * @returns {Promise<void>}
   */
  close(code = 1000, reason = "closed by client") {
    if (this.state === "closed" || this._closing) return this._closed;
    this._closing = { code, reason };
    clearTimeout(this._timers.retry);
    const ws = this._ws;
    if (!ws) {
      this._finish(code, reason, new ConnectionClosed(code, reason));
    } else {
      try {
        ws.close(code, reason);
      } catch {
        ws.close(); // a code the WebSocket API refuses (only 1000 and 3000-4999 are allowed)
      }
      // A dead link may never complete the closing handshake: don't wait for it.
      this._timers.closeFallback = setTimeout(() => this._drop(ws, reason), 2000);
    }
    return this._closed;
  }

  /**
   * Async iteration over incoming messages (`for await (const m of peer)`),
   * ending when the peer closes. Messages are buffered until consumed.
   * @returns {AsyncIterableIterator<RelayMessageEvent>}
   */
  [Symbol.asyncIterator]() {
    /** @type {RelayMessageEvent[]} */
    const queue = [];
    let done = this.state === "closed";
    let wake = noop;
    const onMessage = (/** @type {any} */ e) => (queue.push(e), wake());
    const onClose = () => ((done = true), wake());
    const cleanup = () => {
      this.removeEventListener("message", onMessage);
      this.removeEventListener("close", onClose);
    };
    this.addEventListener("message", onMessage);
    this.addEventListener("close", onClose);
    return {
      next: async () => {
        while (queue.length === 0 && !done) await new Promise((r) => (wake = () => r(undefined)));
        if (queue.length) return { value: /** @type {RelayMessageEvent} */ (queue.shift()), done: false };
        cleanup();
        return { value: undefined, done: true };
      },
      return: async () => {
        done = true;
        cleanup();
        return { value: undefined, done: true };
      },
      [Symbol.asyncIterator]() {
        return this;
      },
    };
  }

  // ---------------------------------------------------------- internals

  _start() {
    /** @type {Promise<void>} */
    const p = new Promise((resolve, reject) => (this._firstConnect = { resolve, reject }));
    this._open();
    return p.then(() => this);
  }

  _setState(/** @type {RelayPeer["state"]} */ state) {
    if (state === this.state) return;
    const previous = this.state;
    this.state = state;
    this.dispatchEvent(new StateEvent(state, previous));
  }

  _open() {
    this._setState(this._welcomed ? "reconnecting" : "connecting");
    this._openTransport(0);
  }

  /**
   * Opens a link with the `index`-th transport. One that never opens (an
   * error or a close before opening, or no open within `fallbackTimeout`)
   * gives way to the next; the last one's failure is the attempt's.
   * @param {number} index
   */
  _openTransport(index) {
    const kind = this._transports[index];
    const fallback = index + 1 < this._transports.length;
    /** @type {any} */
    let ws;
    try {
      ws =
        kind === "http"
          ? new HttpSocket(/** @type {string} */ (this.httpUrl), { fetch: this._fetch, streamTimeout: this._opts.streamTimeout })
          : new this._WS(this.url, [SUBPROTOCOL]);
    } catch (err) {
      // e.g. a malformed URL: nothing a retry would fix
      this._finish(1006, String(err), err instanceof Error ? err : new Error(String(err)));
      return;
    }
    this._ws = ws;
    this._lastErr = undefined;
    let opened = false;
    const next = () => {
      if (ws !== this._ws) return;
      clearTimeout(this._timers.connect);
      clearTimeout(this._timers.fallback);
      ws.onopen = ws.onmessage = ws.onclose = noop;
      try {
        if (typeof ws.terminate === "function") ws.terminate();
        else ws.close();
      } catch {
        // ignore: it never opened
      }
      this._ws = null;
      this._openTransport(index + 1);
    };
    ws.binaryType = "arraybuffer";
    ws.onopen = () => {
      opened = true;
      clearTimeout(this._timers.fallback);
      this._transport = /** @type {"websocket" | "http"} */ (kind);
      this._sendHello(ws);
    };
    ws.onmessage = (/** @type {{data: unknown}} */ e) => this._onFrame(ws, e.data);
    ws.onclose = (/** @type {{code: number, reason: string}} */ e) =>
      !opened && fallback ? next() : this._onSocketClose(ws, e.code, e.reason);
    ws.onerror = noop; // a close event always follows
    this._timers.connect = setTimeout(
      () => (!opened && fallback ? next() : this._drop(ws, "connect timeout")),
      this._opts.connectTimeout,
    );
    if (fallback) this._timers.fallback = setTimeout(() => opened || next(), this._opts.fallbackTimeout);
  }

  async _sendHello(/** @type {any} */ ws) {
    let token = this._opts.token;
    try {
      // A function lets a long-lived peer fetch a fresh JWT for each (re)connect.
      if (typeof token === "function") token = await token();
    } catch (err) {
      this._dispatchError(err);
      this._drop(ws, "token callback failed");
      return;
    }
    if (ws !== this._ws) return;
    this._writeNow(ws, {
      type: "hello",
      id: this.id,
      token: token ?? undefined,
      resume: this.resumeSecret,
      received: this.resumeSecret ? this._received : undefined,
    });
  }

  /** Encodes and writes one envelope now, bypassing the outbox. */
  _writeNow(/** @type {any} */ ws, /** @type {object} */ env) {
    try {
      ws.send(this._codec.encode(env));
    } catch {
      // the socket is going away; its close event handles the rest
    }
  }

  /**
   * Queues an envelope for writing. Every request gets an `id` when `ack`,
   * and the returned promise settles on the relay's `ok`/`err`.
   * `urgent` items (rejoins after a reconnect) skip the bound and the queue.
   * `live` says whether the caller still waits (a request whose reply timed
   * out does not): a request a drain left unanswered is sent again only then.
   * @param {Record<string, unknown>} env @param {boolean} ack
   * @param {{urgent?: boolean, live?: () => boolean}} [opts]
   */
  _submit(env, ack, { urgent = false, live = always } = {}) {
    if (this.state === "closed") return Promise.reject(this._closedError);
    if (this._closing) return Promise.reject(new ConnectionClosed(this._closing.code, this._closing.reason));
    const id = ack ? this._nextId++ : undefined;
    if (ack) env.id = id;
    let bytes;
    try {
      bytes = this._codec.encode(env);
    } catch (err) {
      return Promise.reject(err);
    }
    const tooLarge = this._tooLarge(bytes, id);
    if (tooLarge) return Promise.reject(tooLarge);
    if (!urgent && this._outbox.length >= this._opts.maxBuffered) {
      return Promise.reject(new OfflineBufferFull(`${this._outbox.length} sends already waiting (maxBuffered)`));
    }
    return new Promise((resolve, reject) => {
      /** @type {Item} */
      const item = { id, bytes, ack, urgent, env, resolve, reject, live };
      // Urgent items (rejoins after a reconnect) go ahead of buffered sends.
      const at = urgent ? this._outbox.findIndex((i) => !i.urgent) : -1;
      if (at === -1) this._outbox.push(item);
      else this._outbox.splice(at, 0, item);
      this._pump();
    });
  }

  /**
   * Checked before writing: a frame over the limit would get the socket closed (1009).
   * @param {Uint8Array} bytes @param {number | undefined} id
   */
  _tooLarge(bytes, id) {
    const max = this.limits.max_frame_bytes;
    if (!max || bytes.byteLength <= max) return null;
    return new TooLarge("too-large", `frame of ${bytes.byteLength} bytes exceeds the relay's max_frame_bytes (${max})`, { id });
  }

  /** Writes queued envelopes in order, as fast as the relay's rate limit allows. */
  _pump() {
    const ws = this._ws;
    if (this.state !== "open" || !ws || this._timers.pump) return;
    for (let queue = this._nextQueue(); queue.length; queue = this._nextQueue()) {
      const wait = this._takeToken();
      if (wait > 0) {
        this._timers.pump = setTimeout(() => {
          this._timers.pump = 0;
          this._pump();
        }, wait);
        return;
      }
      const item = /** @type {Item} */ (queue.shift());
      if (queue === this._resend && !this._renumber(item)) continue;
      this._write(ws, item);
    }
  }

  /**
   * The queue to write from next: rejoins, then what a drain left unanswered
   * (dropping those whose caller gave up), then everything else.
   */
  _nextQueue() {
    while (this._resend.length && !this._outbox[0]?.urgent) {
      if (this._resend[0].live()) return this._resend;
      /** @type {Item} */ (this._resend.shift()).reject(new ConnectionLost("its caller gave up before it was sent again"));
    }
    return this._outbox;
  }

  /**
   * A request sent again gets a new id, so that an answer meant for the old
   * one can never settle it. False when it no longer fits this relay's limit.
   * @param {Item} item
   */
  _renumber(item) {
    item.id = item.env.id = this._nextId++;
    item.bytes = this._codec.encode(item.env);
    const tooLarge = this._tooLarge(item.bytes, item.id);
    if (tooLarge) item.reject(tooLarge);
    return !tooLarge;
  }

  /** Writes one item now; a request waits for its answer from then on. */
  _write(/** @type {any} */ ws, /** @type {Item} */ item) {
    item.sentAt = performance.now();
    if (item.ack) this._acks.set(item.id, item);
    try {
      ws.send(item.bytes);
    } catch (err) {
      if (item.ack) this._acks.delete(item.id);
      item.reject(new ConnectionLost(`write failed: ${err}`));
      return;
    }
    if (!item.ack) item.resolve({ queued: false });
  }

  /**
   * A `ping` written at once (not paced, not buffered); resolves with the
   * round trip in ms. `live` as for `_submit`.
   * @param {any} ws @param {number} timeout @param {() => boolean} live
   * @returns {Promise<number>}
   */
  _ping(ws, timeout, live) {
    return new Promise((resolve, reject) => {
      let waiting = true;
      const id = this._nextId++;
      const env = { type: "ping", id };
      /** @type {Item} */
      const item = {
        id,
        env,
        bytes: this._codec.encode(env),
        ack: true,
        urgent: false,
        live: () => waiting && live(),
        resolve: () => (clearTimeout(timer), resolve(performance.now() - (item.sentAt ?? 0))),
        reject: (/** @type {Error} */ e) => (clearTimeout(timer), reject(e)),
      };
      const timer = setTimeout(() => {
        waiting = false;
        this._acks.delete(item.id);
        reject(new RequestTimeout(`no pong within ${timeout} ms`));
      }, timeout);
      this._write(ws, item);
    });
  }

  /** Token bucket mirroring the relay's; returns 0 or ms to wait. */
  _takeToken() {
    const b = this._bucket;
    if (!b) return 0;
    const now = performance.now();
    b.tokens = Math.min(b.cap, b.tokens + ((now - b.at) * b.rate) / 1000);
    b.at = now;
    if (b.tokens >= 1) {
      b.tokens -= 1;
      return 0;
    }
    return Math.ceil(((1 - b.tokens) * 1000) / b.rate);
  }

  _onFrame(/** @type {any} */ ws, /** @type {unknown} */ data) {
    if (ws !== this._ws) return;
    this._received++; // reset to 0 by the welcome itself
    if (typeof data === "string") {
      this._dispatchError(new ProtocolError("text frame from the relay"));
      return;
    }
    /** @type {any} */
    let env;
    try {
      env = this._codec.decode(/** @type {ArrayBuffer | Uint8Array} */ (data));
    } catch (err) {
      this._dispatchError(new ProtocolError(`undecodable frame: ${err}`, { cause: err }));
      return;
    }
    if (!env || typeof env !== "object" || typeof env.type !== "string") {
      this._dispatchError(new ProtocolError("frame is not an envelope"));
      return;
    }
    switch (env.type) {
      case "welcome":
        return this._onWelcome(ws, env);
      case "msg":
        return this._onMsg(env);
      case "ok": {
        const item = this._acks.get(env.id);
        if (item) {
          this._acks.delete(env.id);
          if (env.queued === true) this._rememberQueued(item.env);
          item.resolve({ id: env.id, queued: env.queued === true });
        }
        return;
      }
      case "err":
        return this._onErr(env);
      case "presence":
        this.dispatchEvent(new PresenceEvent(env));
        return;
      case "pong": {
        const item = this._acks.get(env.id);
        if (item?.env.type === "ping") {
          this._acks.delete(env.id);
          item.resolve();
        }
        return;
      }
      default:
        // Newer relays may add envelope types: ignore what we don't know.
        return;
    }
  }

  _onWelcome(/** @type {any} */ ws, /** @type {any} */ env) {
    clearTimeout(this._timers.connect);
    this.id = env.id;
    this.resumeSecret = env.resume;
    this._received = 0;
    this.limits = env.limits && typeof env.limits === "object" ? env.limits : {};
    this.node = env.node;
    const first = !this._welcomed;
    this._welcomed = true;
    this._welcomedAt = performance.now();
    this._lastErr = undefined;
    const resumed = env.resumed === true;
    const { rate_per_second: rate, rate_burst: burst } = this.limits;
    // Pace a little under the relay's limit so flushing a full offline buffer
    // does not trip it (rate-limited errors, or a 4029 close).
    this._bucket =
      this._opts.pace && rate > 0
        ? { rate: rate * 0.9, cap: Math.max(1, Math.floor(burst || 1) - 1), tokens: Math.max(1, Math.floor(burst || 1) - 1), at: performance.now() }
        : null;
    if (!resumed) {
      // A fresh session has no rooms: rejoin ours ahead of everything else.
      // Rejoins of an earlier session not yet written, or that a drain left
      // unanswered, are not needed any more.
      const superseded = [...this._outbox, ...this._resend].filter((item) => item.urgent);
      this._outbox = this._outbox.filter((item) => !item.urgent);
      this._resend = this._resend.filter((item) => !item.urgent);
      for (const item of superseded) item.reject(new ConnectionLost("superseded by a new rejoin"));
      for (const [room, { presence }] of this._rooms) {
        this._submit({ type: "join", room, presence: presence || undefined }, true, { urgent: true }).catch((err) => {
          // A lost link is not a refusal: the next fresh session rejoins the room.
          if (err instanceof ConnectionLost || err instanceof ConnectionClosed) return;
          this._rooms.delete(room);
          this._dispatchError(err);
        });
      }
    }
    this._setState("open");
    this._pump();
    this._startHeartbeat(ws);
    this.dispatchEvent(new OpenEvent({ id: env.id, resumed, node: env.node }));
    if (first) this._firstConnect?.resolve();
  }

  _onMsg(/** @type {any} */ env) {
    // A reply to one of our requests?
    if (env.re !== undefined && env.re !== null) {
      const req = this._requests.get(env.re);
      if (req && req.to === env.from) {
        if (env.ev === ERROR_EV) this._settleRequest(env.re, new RemoteError(String(env.d)), true);
        else this._settleRequest(env.re, env.d, false);
        return;
      }
    }
    const event = new RelayMessageEvent(env);
    // A request we have a handler for?
    if (env.rid !== undefined && env.rid !== null) {
      const handler = this._handlers.get(env.ev ?? null) ?? this._handlers.get("*");
      if (handler) {
        Promise.resolve()
          .then(() => handler(env.d, event))
          .then(
            (result) => this.reply(event, result),
            (err) => this.reply(event, err instanceof Error ? err.message : String(err), { error: true }),
          )
          .catch((err) => this._dispatchError(err));
        return;
      }
    }
    this.dispatchEvent(event);
  }

  _onErr(/** @type {any} */ env) {
    const err = errorFromEnvelope(env);
    const item = env.id !== undefined ? this._acks.get(env.id) : undefined;
    if (item) {
      this._acks.delete(env.id);
      item.reject(err);
    } else if (env.id !== undefined && err.code === "peer-offline") {
      // The second answer to a send that was `ok queued`: its target never resumed.
      const original = this._queued.get(env.id);
      this._queued.delete(env.id);
      this.dispatchEvent(new UndeliveredEvent(err, original));
    } else {
      this._lastErr = err;
      this._dispatchError(err);
    }
  }

  /** Keeps the last queued sends, so an "undelivered" event can say what was lost. */
  _rememberQueued(/** @type {any} */ env) {
    this._queued.set(env.id, { data: env.d, ev: env.ev });
    if (this._queued.size > 256) this._queued.delete(this._queued.keys().next().value);
  }

  _settleRequest(/** @type {unknown} */ rid, /** @type {unknown} */ value, /** @type {boolean} */ failed) {
    const req = this._requests.get(rid);
    if (!req) return;
    this._requests.delete(rid);
    clearTimeout(req.timer);
    if (failed) req.reject(value);
    else req.resolve(value);
  }

  _startHeartbeat(/** @type {any} */ ws) {
    clearInterval(this._timers.heartbeat);
    const every = this._opts.pingInterval;
    if (!every) return;
    // Browsers cannot send WebSocket pings, so liveness is checked with the
    // protocol's own ping: a link that stops answering is dropped and redialled.
    this._timers.heartbeat = setInterval(() => {
      if (ws !== this._ws) return;
      // This socket's liveness: not worth sending again on another one.
      this._ping(ws, this._opts.pingTimeout, () => ws === this._ws).catch((err) => {
        if (err instanceof RequestTimeout && ws === this._ws) this._drop(ws, "ping timeout");
      });
    }, every);
  }

  /** Gives up on a socket now (dead link, timeout) and proceeds as if it had closed. */
  _drop(/** @type {any} */ ws, /** @type {string} */ reason) {
    if (ws !== this._ws) return;
    try {
      // ws (Node) can destroy the socket at once; browsers only have close().
      if (typeof ws.terminate === "function") ws.terminate();
      else ws.close(4000, reason);
    } catch {
      // ignore: we are abandoning it anyway
    }
    this._onSocketClose(ws, 1006, reason);
  }

  _onSocketClose(/** @type {any} */ ws, /** @type {number} */ code, /** @type {string} */ reason = "") {
    if (ws !== this._ws) return;
    this._ws = null;
    this._transport = null;
    ws.onopen = ws.onmessage = ws.onclose = noop;
    clearTimeout(this._timers.connect);
    clearTimeout(this._timers.fallback);
    clearInterval(this._timers.heartbeat);
    clearTimeout(this._timers.pump);
    this._timers.pump = 0;
    // The backoff restarts only after a session that stayed up a while: a
    // relay that welcomes and at once closes again (4029, 4008...) must not
    // be redialled in a tight loop.
    if (this._welcomed && performance.now() - this._welcomedAt >= STABLE_MS) this._retries = 0;
    // Terminal? Then _finish rejects everything pending with the close error.
    /** @type {[number, string, Error] | null} */
    let end = null;
    if (this._closing) {
      const { code: c, reason: r } = this._closing;
      end = [c, r, new ConnectionClosed(c, r)];
    } else if (!this._welcomed) {
      // The first attempt failed: connect() rejects, with the relay's own
      // error (e.g. IdTaken, Unauthorized) when it sent one.
      end = [code, reason, this._lastErr ?? new ConnectionClosed(code, reason || "could not connect")];
    } else if (!this._opts.reconnect || !shouldReconnect(code) || this._retries >= this._opts.maxRetries) {
      end = [code, reason, new ConnectionClosed(code, reason, { cause: this._lastErr })];
    }
    if (end) {
      this._finish(...end);
      return;
    }
    const unanswered = [...this._acks.values()];
    this._acks.clear();
    const lost = new ConnectionLost();
    if (code === DRAIN_CODE) {
      // The relay acted on none of them: send them again, ahead of those
      // still waiting from an earlier drain (these were written first).
      const again = unanswered.filter((item) => item.live());
      for (const item of unanswered) if (!again.includes(item)) item.reject(lost);
      this._resend = [...again, ...this._resend];
    } else {
      // Written but unanswered: the outcome is unknown, so don't resend blindly.
      for (const item of unanswered) item.reject(lost);
    }
    const delay = backoffDelay(this._retries++, this._opts.backoff);
    this._setState("reconnecting");
    this.dispatchEvent(new DisconnectEvent(code, reason, delay));
    this._timers.retry = setTimeout(() => this._open(), delay);
  }

  /** Ends the peer: rejects everything pending with `error`, emits "close". */
  _finish(/** @type {number} */ code, /** @type {string} */ reason, /** @type {Error} */ error) {
    if (this.state === "closed") return;
    this._closedError = error;
    for (const t of Object.values(this._timers)) clearTimeout(t);
    clearInterval(this._timers.heartbeat);
    this._transport = null;
    if (this._ws) {
      const ws = this._ws;
      this._ws = null;
      ws.onopen = ws.onmessage = ws.onclose = noop;
      try {
        ws.close();
      } catch {
        // ignore
      }
    }
    for (const item of this._outbox.splice(0)) item.reject(error);
    for (const item of this._resend.splice(0)) item.reject(error);
    for (const item of this._acks.values()) item.reject(error);
    this._acks.clear();
    for (const rid of [...this._requests.keys()]) this._settleRequest(rid, error, true);
    this._setState("closed");
    this._firstConnect?.reject(error);
    this.dispatchEvent(new RelayCloseEvent(code, reason, error));
    this._resolveClosed();
  }

  _dispatchError(/** @type {unknown} */ err) {
    this.dispatchEvent(new RelayErrorEvent(err instanceof Error ? err : new Error(String(err))));
  }
}
