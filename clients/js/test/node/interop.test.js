// Interop with the Python reference client (clients/python), both ways:
// plain sends (bytes included) and request/reply in each direction.
import assert from "node:assert/strict";
import { spawn, spawnSync } from "node:child_process";
import { existsSync } from "node:fs";
import { join } from "node:path";
import { after, before, describe, test } from "node:test";
import { PeerOffline, RemoteError } from "../../src/index.js";
import { PYTHON, REPO, collect, nextEvent, peer, startRelay, uid, until } from "../helpers.js";

const PY_CLIENT = join(REPO, "clients", "python");
const SCRIPT = join(REPO, "clients", "js", "test", "interop", "py_peer.py");
// Use the installed relay_client, or the source tree when it is not installed.
const PY_ENV = { ...process.env, PYTHONPATH: [PY_CLIENT, process.env.PYTHONPATH].filter(Boolean).join(":") };

/** Starts py_peer.py and resolves once it printed READY. */
function startPyPeer(/** @type {string} */ url, /** @type {string} */ id) {
  const proc = spawn(PYTHON, [SCRIPT, url, id], { env: PY_ENV, stdio: ["ignore", "pipe", "pipe"] });
  let out = "";
  let err = "";
  proc.stderr.on("data", (c) => (err += c));
  const ready = new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`python peer not ready; stderr:\n${err}`)), 15_000);
    proc.stdout.on("data", (c) => {
      out += c;
      if (out.includes("READY")) {
        clearTimeout(timer);
        resolve(undefined);
      }
    });
    proc.on("exit", (code) => {
      clearTimeout(timer);
      reject(new Error(`python peer exited ${code}; stderr:\n${err}`));
    });
  });
  const exited = new Promise((r) => proc.on("exit", (code) => r(code)));
  return { proc, ready, exited, stderr: () => err };
}

describe("interop with the Python client", () => {
  /** @type {Awaited<ReturnType<typeof startRelay>>} */
  let relay;
  /** @type {ReturnType<typeof startPyPeer>} */
  let py;
  /** @type {import("../../src/index.js").RelayPeer} */
  let js;
  const pyId = uid("py");

  before(async () => {
    assert.ok(existsSync(PY_CLIENT), `the Python client is missing at ${PY_CLIENT}`);
    const check = spawnSync(PYTHON, ["-c", "import relay_client"], { env: PY_ENV, encoding: "utf8" });
    assert.equal(check.status, 0, `cannot import relay_client with ${PYTHON}:\n${check.stderr}`);
    relay = await startRelay();
    py = startPyPeer(relay.url, pyId);
    await py.ready;
    js = await peer(relay.url, { id: uid("js") });
  });
  after(async () => {
    if (py && py.proc.exitCode === null) py.proc.kill("SIGTERM");
    await js?.close();
    await relay?.stop();
  });

  test("JS -> Python -> JS: payload types survive both decoders", async () => {
    const got = collect(js);
    const payloads = [
      "héllo ✓",
      0,
      -17,
      2 ** 40,
      3.25,
      null,
      false,
      [1, [2, [3]]],
      { text: "t", bin: new Uint8Array([0, 1, 254, 255]), list: [new Uint8Array([7])] },
      new Uint8Array(1000).map((_, i) => i % 256),
    ];
    for (const d of payloads) await js.send(pyId, d, { ev: "echo" });
    await until(() => got.length === payloads.length, 5000, "echoes");
    got.forEach((m, i) => {
      assert.equal(m.from, pyId);
      assert.equal(m.ev, "echoed");
      assert.deepEqual(m.data, payloads[i]);
    });
    assert.ok(got.at(-1).data instanceof Uint8Array);
  });

  test("JS requests, Python answers: result, bytes, RemoteError", async () => {
    assert.equal(await js.request(pyId, { a: 20, b: 22 }, { ev: "py.add" }), 42);
    assert.deepEqual(await js.request(pyId, new Uint8Array([1, 2, 3]), { ev: "py.bytes" }), new Uint8Array([3, 2, 1]));
    const err = await js.request(pyId, null, { ev: "py.fail" }).then(() => null, (e) => e);
    assert.ok(err instanceof RemoteError, String(err));
    assert.match(err.message, /py says no/);
  });

  test("Python requests, JS answers: result and RemoteError", async () => {
    js.onRequest("js.mul", (d) => d.a * d.b);
    js.onRequest("js.fail", () => {
      throw new Error("js says no");
    });
    const called = nextEvent(js, "message", (m) => m.ev === "called", 10_000);
    await js.send(pyId, { a: 6, b: 7 }, { ev: "call-me" });
    const { data } = await called;
    assert.equal(data.product, 42);
    assert.match(data.failure, /js says no/);
  });

  test("the relay-peer CLI (python -m relay_client) sends to and listens for a JS peer", async () => {
    const cli = (/** @type {string[]} */ args) => spawn(PYTHON, ["-m", "relay_client", ...args], { env: PY_ENV, stdio: ["ignore", "pipe", "pipe"] });
    const got = nextEvent(js, "message", (m) => m.ev === "cli", 10_000);
    const sender = cli(["send", "--url", relay.url, "--id", uid("cli"), "--ev", "cli", "--hex", js.id ?? "", "00ff10"]);
    const m = await got;
    assert.deepEqual(m.data, new Uint8Array([0, 255, 16]));
    await new Promise((r) => sender.on("exit", r));

    const listenerId = uid("listen");
    const listener = cli(["listen", "--url", relay.url, "--id", listenerId, "-n", "1"]);
    let out = "";
    listener.stdout.on("data", (c) => (out += c));
    listener.stderr.on("data", (c) => (out += c));
    const exited = new Promise((r) => listener.on("exit", r));
    // retry until the listener has registered
    await until(() => js.send(listenerId, "hello cli", { ev: "greet" }).then(() => true, () => false), 10_000, "listener online");
    assert.equal(await exited, 0, out);
    assert.match(out, /hello cli/);
  });

  test("a stopped Python peer is offline for JS", async () => {
    await js.send(pyId, null, { ev: "stop" });
    assert.equal(await py.exited, 0, py.stderr());
    const err = await js.request(pyId, { a: 1, b: 1 }, { ev: "py.add", timeout: 2000 }).then(() => null, (e) => e);
    assert.ok(err instanceof PeerOffline, String(err));
  });
});
