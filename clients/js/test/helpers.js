// Test helpers: a real relay process, a severable TCP proxy, a WebSocket
// proxy that plays a relay's drain, an HTTP proxy that passes no WebSockets
// (and may buffer), small waits.
import { decode } from "@msgpack/msgpack";
import { spawn } from "node:child_process";
import { existsSync } from "node:fs";
import http from "node:http";
import net from "node:net";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import WebSocket, { WebSocketServer } from "ws";
import { connect, SUBPROTOCOL } from "../src/index.js";

const here = dirname(fileURLToPath(import.meta.url));
export const REPO = resolve(here, "..", "..", "..");
/** The repo's virtualenv python (same relative path in CI); RELAY_PYTHON overrides. */
export const PYTHON = process.env.RELAY_PYTHON || join(REPO, ".venv", "bin", "python");

/**
 * Starts `python -m relay serve` on a free port and waits for its ready line.
 * @param {string[]} [args] extra CLI flags, e.g. ["--resume-seconds", "2"]
 * @returns {Promise<{url: string, httpUrl: string, proc: import("node:child_process").ChildProcess, stderr: () => string, stop: () => Promise<number | null>}>}
 */
export function startRelay(args = [], { env = {}, timeout = 20_000 } = {}) {
  if (!existsSync(PYTHON)) {
    throw new Error(`no python at ${PYTHON}: create the repo's .venv (or set RELAY_PYTHON)`);
  }
  const proc = spawn(PYTHON, ["-m", "relay", "serve", "--host", "127.0.0.1", "--port", "0", ...args], {
    cwd: REPO,
    env: { ...process.env, ...env },
    stdio: ["ignore", "pipe", "pipe"],
  });
  let err = "";
  let ready = false;
  proc.stdout.on("data", () => {});
  return new Promise((resolveStart, reject) => {
    const timer = setTimeout(() => {
      proc.kill("SIGKILL");
      reject(new Error(`relay did not get ready within ${timeout} ms; stderr:\n${err}`));
    }, timeout);
    proc.once("exit", (code) => {
      clearTimeout(timer);
      if (!ready) reject(new Error(`relay exited (${code}) before ready; stderr:\n${err}`));
    });
    proc.stderr.on("data", (chunk) => {
      err += chunk;
      const m = /relay ready on (ws:\/\/[^\s]+)/.exec(err);
      if (m && !ready) {
        ready = true;
        clearTimeout(timer);
        const url = m[1];
        const stopped = new Promise((r) => proc.on("exit", (code) => r(code)));
        resolveStart({
          url,
          httpUrl: url.replace(/^ws/, "http").replace(/\/v1\/ws$/, ""),
          proc,
          stderr: () => err,
          stop: async () => {
            if (proc.exitCode === null && proc.signalCode === null) proc.kill("SIGTERM");
            const killer = setTimeout(() => proc.kill("SIGKILL"), 10_000);
            const code = await stopped;
            clearTimeout(killer);
            return code;
          },
        });
      }
    });
  });
}

/**
 * A TCP proxy in front of the relay whose connections can be severed, to
 * simulate dropped links (the relay sees an abrupt disconnect too).
 * @param {string} relayUrl ws://127.0.0.1:PORT/v1/ws
 */
export async function startProxy(relayUrl) {
  let target = new URL(relayUrl);
  /** @type {Set<net.Socket>} */
  const sockets = new Set();
  let paused = false; // when paused, accepted connections are dropped at once
  let blackhole = false; // when set, bytes are swallowed (a dead but open link)
  const server = net.createServer((client) => {
    if (paused) {
      client.destroy();
      return;
    }
    const upstream = net.connect(Number(target.port), target.hostname);
    sockets.add(client).add(upstream);
    const forward = (/** @type {net.Socket} */ from, /** @type {net.Socket} */ to) =>
      from.on("data", (chunk) => {
        if (!blackhole) to.write(chunk);
      });
    forward(client, upstream);
    forward(upstream, client);
    const end = () => {
      client.destroy();
      upstream.destroy();
      sockets.delete(client);
      sockets.delete(upstream);
    };
    client.on("close", end).on("error", end);
    upstream.on("close", end).on("error", end);
  });
  await new Promise((r) => server.listen(0, "127.0.0.1", () => r(undefined)));
  const port = /** @type {net.AddressInfo} */ (server.address()).port;
  return {
    url: `ws://127.0.0.1:${port}${target.pathname}`,
    /** send new connections to another relay (e.g. after a restart) */
    setTarget(/** @type {string} */ url) {
      target = new URL(url);
    },
    /** drop every live connection (both directions, abruptly) */
    sever() {
      for (const s of sockets) s.destroy();
      sockets.clear();
    },
    /** refuse (drop) new connections while true */
    setPaused(/** @type {boolean} */ v) {
      paused = v;
    },
    /** swallow all bytes while true, keeping the sockets open */
    setBlackhole(/** @type {boolean} */ v) {
      blackhole = v;
    },
    close() {
      this.sever();
      return new Promise((r) => server.close(() => r(undefined)));
    },
  };
}

/**
 * A WebSocket proxy in front of the relay that can end a socket the way a
 * draining relay does. Every client socket gets its own socket to the relay.
 * `hold()` makes the proxy keep what the current client sends from then on
 * (read, never passed on: requests a draining relay read without acting on);
 * `end(code)` closes the client's socket with `code` (1001: the drain; null:
 * a reset, which the client sees as 1006) and drops the relay's socket, so the
 * relay keeps the session for a resume. `sessions[n]` lists the envelopes
 * client socket n sent (held ones too), `held[n]` the ones held.
 * @param {string} relayUrl ws://127.0.0.1:PORT/v1/ws
 */
export async function startDrainProxy(relayUrl) {
  /** @type {any[][]} */
  const sessions = [];
  /** @type {any[][]} */
  const held = [];
  /** @type {Set<() => void>} */
  const watchers = new Set();
  const changed = () => watchers.forEach((watch) => watch());
  let target = relayUrl;
  let refusing = false;
  let holdAfterHello = false;
  /** @type {{client: WebSocket, upstream: WebSocket, holding: boolean, ended: boolean} | null} */
  let current = null;
  const wss = new WebSocketServer({
    port: 0,
    host: "127.0.0.1",
    handleProtocols: (offered) => (offered.has(SUBPROTOCOL) ? SUBPROTOCOL : false),
    verifyClient: (_info, accept) => accept(!refusing, 503),
  });
  await new Promise((r) => wss.on("listening", () => r(undefined)));
  wss.on("connection", (client) => {
    /** @type {any[]} */
    const seen = [];
    /** @type {any[]} */
    const kept = [];
    sessions.push(seen);
    held.push(kept);
    const link = { client, upstream: new WebSocket(target, SUBPROTOCOL), holding: false, ended: false };
    current = link;
    /** @type {Buffer[]} */
    const early = []; // what the client sent before the relay's socket opened
    link.upstream.on("open", () => early.splice(0).forEach((frame) => link.upstream.send(frame)));
    link.upstream.on("message", (/** @type {Buffer} */ frame) => client.send(frame));
    link.upstream.on("close", (code, reason) => {
      if (link.ended) return;
      if (code === 1005 || code === 1006) client.terminate();
      else client.close(code, reason);
    });
    link.upstream.on("error", () => {});
    client.on("message", (/** @type {Buffer} */ frame) => {
      const env = /** @type {any} */ (decode(frame));
      seen.push(env);
      if (link.holding) {
        kept.push(env);
        changed();
        return;
      }
      if (holdAfterHello && env.type === "hello") link.holding = true;
      if (link.upstream.readyState === WebSocket.OPEN) link.upstream.send(frame);
      else early.push(frame);
    });
    client.on("close", () => link.upstream.terminate());
    client.on("error", () => {});
    changed();
  });
  const port = /** @type {import("node:net").AddressInfo} */ (wss.address()).port;
  return {
    url: `ws://127.0.0.1:${port}${new URL(relayUrl).pathname}`,
    sessions,
    held,
    /** send new sockets to another relay */
    setTarget(/** @type {string} */ url) {
      target = url;
    },
    /** refuse new sockets (HTTP 503) while true */
    setRefusing(/** @type {boolean} */ v) {
      refusing = v;
    },
    /** while true, every new socket passes its hello on and holds the rest */
    setHoldAfterHello(/** @type {boolean} */ v) {
      holdAfterHello = v;
    },
    /** from now on, what the current client sends stays here */
    hold() {
      if (current) current.holding = true;
    },
    /** resolves once `count` frames of client socket number `session` are held */
    waitHeld(/** @type {number} */ count, session = 0, timeout = 5000) {
      return new Promise((resolveHeld, reject) => {
        const watch = () => {
          if ((held[session]?.length ?? 0) < count) return;
          watchers.delete(watch);
          clearTimeout(timer);
          resolveHeld(undefined);
        };
        const timer = setTimeout(() => {
          watchers.delete(watch);
          reject(new Error(`fewer than ${count} frames held on socket ${session} within ${timeout} ms`));
        }, timeout);
        watchers.add(watch);
        watch();
      });
    },
    /** drop the relay's socket, then close the client's with `code` (null: reset) */
    end(/** @type {number | null} */ code, reason = "") {
      const link = /** @type {NonNullable<typeof current>} */ (current);
      link.ended = true;
      link.upstream.terminate();
      if (code === null) link.client.terminate();
      else link.client.close(code, reason);
    },
    close() {
      for (const client of wss.clients) client.terminate();
      return new Promise((r) => wss.close(() => r(undefined)));
    },
  };
}

/** connect() with the `ws` package (Node 20 has no global WebSocket). */
export function peer(/** @type {string} */ url, /** @type {any} */ opts = {}) {
  return connect(url, { WebSocket, ...opts });
}

/**
 * Resolves with the next event of `type` on `target` that matches `pred`.
 * @param {EventTarget} target @param {string} type
 */
export function nextEvent(target, type, pred = (/** @type {any} */ _e) => true, timeout = 5000) {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      target.removeEventListener(type, on);
      reject(new Error(`no "${type}" event within ${timeout} ms`));
    }, timeout);
    function on(/** @type {any} */ e) {
      if (!pred(e)) return;
      clearTimeout(timer);
      target.removeEventListener(type, on);
      resolve(e);
    }
    target.addEventListener(type, on);
  });
}

/** Collects "message" events of a peer into an array. */
export function collect(/** @type {EventTarget} */ target, type = "message") {
  /** @type {any[]} */
  const got = [];
  target.addEventListener(type, (e) => got.push(e));
  return got;
}

/** Polls `fn` (sync or async) until it returns truthy. */
export async function until(/** @type {() => unknown} */ fn, timeout = 5000, what = "condition") {
  const t0 = Date.now();
  while (!(await fn())) {
    if (Date.now() - t0 > timeout) throw new Error(`timed out waiting for ${what}`);
    await sleep(20);
  }
}

export const sleep = (/** @type {number} */ ms) => new Promise((r) => setTimeout(r, ms));

let counter = 0;
/** A fresh peer id per test, so tests sharing a relay never collide. */
export const uid = (/** @type {string} */ prefix) => `${prefix}-${process.pid}-${++counter}`;

/**
 * An HTTP proxy in front of the relay that does not pass WebSockets on, as
 * a proxy that strips `Upgrade` does: a WebSocket handshake reaches the
 * relay as a plain GET, whose answer the client gets instead of a `101`.
 * Everything else is forwarded; with `buffer`, each answer is held back
 * until it is complete, as a buffering proxy does (so a stream never gets
 * through). `sever()` cuts every connection in both directions.
 * @param {string} relayUrl ws://127.0.0.1:PORT/v1/ws
 * @param {{buffer?: boolean}} [opts]
 */
export async function startHttpProxy(relayUrl, { buffer = false } = {}) {
  const target = new URL(relayUrl);
  /** @type {Set<import("node:net").Socket>} */
  const sockets = new Set();
  const upgrades = { count: 0 };
  /** @type {string[]} */
  const paths = [];
  let paused = false; // when paused, accepted connections are dropped at once
  const hopByHop = new Set(["connection", "upgrade", "keep-alive", "transfer-encoding"]);
  /** @param {import("node:http").IncomingHttpHeaders} headers */
  const forwardable = (headers) => Object.fromEntries(Object.entries(headers).filter(([k]) => !hopByHop.has(k)));
  /**
   * Sends the request on to the relay; calls `answer` with its response.
   * @param {import("node:http").IncomingMessage} req
   * @param {(res: import("node:http").IncomingMessage) => void} answer
   * @param {() => void} failed
   */
  const forward = (req, answer, failed) => {
    const upstream = http.request(
      { host: target.hostname, port: Number(target.port), method: req.method, path: req.url, headers: forwardable(req.headers) },
      answer,
    );
    upstream.on("socket", (s) => sockets.add(s));
    upstream.on("error", failed);
    req.pipe(upstream);
  };
  const server = http.createServer((req, res) => {
    paths.push(req.url ?? "");
    forward(
      req,
      (up) => {
        if (!buffer) {
          res.writeHead(up.statusCode ?? 502, forwardable(up.headers));
          res.flushHeaders();
          up.pipe(res);
          return;
        }
        /** @type {Buffer[]} */
        const parts = [];
        up.on("data", (c) => parts.push(c));
        up.on("end", () => res.writeHead(up.statusCode ?? 502, forwardable(up.headers)).end(Buffer.concat(parts)));
      },
      () => res.destroy(),
    );
  });
  server.on("connection", (s) => {
    if (paused) s.destroy();
    else sockets.add(s);
  });
  server.on("upgrade", (req, socket) => {
    upgrades.count++;
    forward(
      req,
      (up) => {
        /** @type {Buffer[]} */
        const parts = [];
        up.on("data", (c) => parts.push(c));
        up.on("end", () => {
          const body = Buffer.concat(parts);
          socket.end(`HTTP/1.1 ${up.statusCode} ${up.statusMessage}\r\ncontent-length: ${body.length}\r\nconnection: close\r\n\r\n${body}`);
        });
      },
      () => socket.destroy(),
    );
  });
  await new Promise((r) => server.listen(0, "127.0.0.1", () => r(undefined)));
  const port = /** @type {import("node:net").AddressInfo} */ (server.address()).port;
  return {
    url: `ws://127.0.0.1:${port}${target.pathname}`,
    /** WebSocket handshakes the proxy turned into plain GETs */
    upgrades,
    /** the paths of the other requests, in order */
    paths,
    /** refuse (drop) new connections while true */
    setPaused(/** @type {boolean} */ v) {
      paused = v;
    },
    /** drop every live connection (both directions, abruptly) */
    sever() {
      for (const s of sockets) s.destroy();
      sockets.clear();
    },
    close() {
      this.sever();
      return new Promise((r) => server.close(() => r(undefined)));
    },
  };
}
