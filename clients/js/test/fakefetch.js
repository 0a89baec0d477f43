// A scripted `fetch` for the HTTP transport's unit tests: every request
// waits in a queue until the test answers it, so a test plays the relay's
// side of docs/protocol-http.md one request at a time.
import { encode } from "@msgpack/msgpack";
import { encodeRecords } from "../src/records.js";

/**
 * @typedef {object} FakeRequest
 * @property {string} name the last path segment: open, stream, poll, send, ack, close
 * @property {string} url
 * @property {Record<string, string>} headers lower-cased names
 * @property {Uint8Array} body
 * @property {AbortSignal | undefined} signal
 * @property {(status: number, body?: Uint8Array | string, headers?: Record<string, string>) => void} respond
 * @property {() => void} fail answers with a network error
 * @property {() => {write: (bytes: Uint8Array) => void, end: () => void}} stream answers 200 with a body left open
 */

/** Records of one kind, as a relay writes them. */
export const records = (/** @type {number} */ kind, /** @type {Uint8Array[]} */ payloads) => encodeRecords(kind, payloads);

/** The msgpack answer of `open`. */
export function openAnswer(session = "s3cret", { keepalive = 15, poll = 25, idle = 45, bodyBytes = 1 << 20 } = {}) {
  return encode({ session, keepalive_seconds: keepalive, poll_seconds: poll, idle_seconds: idle, body_bytes: bodyBytes });
}

export function fakeFetch() {
  /** @type {FakeRequest[]} */
  const queue = [];
  /** @type {FakeRequest[]} */
  const all = [];
  /** @type {Set<() => void>} */
  const waiters = new Set();

  /**
   * @this {unknown}
   * @param {string | URL | Request} input
   * @param {RequestInit} [init]
   * @returns {Promise<Response>}
   */
  function fetch(input, init = {}) {
    // As a browser's fetch, which refuses to be called as another object's method.
    if (this !== undefined && this !== globalThis) throw new TypeError("Illegal invocation");
    return new Promise((resolve, reject) => {
      const url = String(input);
      const signal = init.signal ?? undefined;
      const aborted = () => reject(new DOMException("aborted", "AbortError"));
      if (signal?.aborted) return aborted();
      signal?.addEventListener("abort", aborted, { once: true });
      /** @type {Record<string, string>} */
      const headers = {};
      for (const [k, v] of Object.entries(/** @type {Record<string, string>} */ (init.headers ?? {}))) headers[k.toLowerCase()] = v;
      /** @type {FakeRequest} */
      const req = {
        name: url.slice(url.lastIndexOf("/") + 1),
        url,
        headers,
        body: init.body ? new Uint8Array(/** @type {Uint8Array} */ (init.body)) : new Uint8Array(0),
        signal,
        respond(status, body, extra = {}) {
          resolve(new Response(status === 204 ? null : (body ?? null), { status, headers: extra }));
        },
        fail() {
          reject(new TypeError("fetch failed"));
        },
        stream() {
          /** @type {ReadableStreamDefaultController<Uint8Array>} */
          let ctl;
          const body = new ReadableStream({ start: (c) => void (ctl = c) });
          signal?.addEventListener("abort", () => ctl.error(new DOMException("aborted", "AbortError")), { once: true });
          resolve(new Response(body, { status: 200 }));
          return {
            write: (bytes) => ctl.enqueue(bytes),
            end: () => ctl.close(),
          };
        },
      };
      queue.push(req);
      all.push(req);
      for (const w of [...waiters]) w();
    });
  }

  /**
   * The next request not yet taken whose name is `name` (any name when absent).
   * @param {string} [name]
   * @returns {Promise<FakeRequest>}
   */
  function next(name, timeout = 3000) {
    return new Promise((resolve, reject) => {
      const look = () => {
        const at = queue.findIndex((r) => name === undefined || r.name === name);
        if (at === -1) return;
        waiters.delete(look);
        clearTimeout(timer);
        resolve(queue.splice(at, 1)[0]);
      };
      const timer = setTimeout(() => {
        waiters.delete(look);
        reject(new Error(`no ${name ?? "request"} within ${timeout} ms; got ${all.map((r) => r.name).join(", ")}`));
      }, timeout);
      waiters.add(look);
      look();
    });
  }

  return { fetch, next, all };
}
