// Test helpers: a real relay process, a severable TCP proxy, small waits.
import { spawn } from "node:child_process";
import { existsSync } from "node:fs";
import net from "node:net";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import WebSocket from "ws";
import { connect } from "../src/index.js";

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
