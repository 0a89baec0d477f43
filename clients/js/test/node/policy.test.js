// Close-code policy and handshake details, against a scripted fake relay
// (the `ws` package's server): which closes are retried, what each hello
// carries, that pending work is rejected on a terminal close.
import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";
import { decode, encode } from "@msgpack/msgpack";
import { WebSocketServer } from "ws";
import { ConnectionClosed, SUBPROTOCOL } from "../../src/index.js";
import { nextEvent, peer, sleep, until } from "../helpers.js";

/**
 * A relay stand-in: welcomes every hello, records it, then runs `script`
 * for the connection (e.g. to close it with a given code).
 */
function fakeRelay() {
  /** @type {any[]} */
  const hellos = [];
  /** @type {string[]} */
  const protocols = [];
  /** @type {(ws: import("ws").WebSocket, n: number) => void} */
  let script = () => {};
  const wss = new WebSocketServer({ port: 0, host: "127.0.0.1", handleProtocols: (set) => (set.has(SUBPROTOCOL) ? SUBPROTOCOL : false) });
  wss.on("connection", (ws) => {
    protocols.push(ws.protocol);
    ws.on("message", (data) => {
      const env = /** @type {any} */ (decode(/** @type {Buffer} */ (data)));
      if (env.type === "hello") {
        hellos.push(env);
        const n = hellos.length;
        ws.send(encode({ type: "welcome", id: env.id ?? "anon", resume: `secret-${n}`, limits: {}, node: "fake", resumed: n > 1 }));
        script(ws, n);
      }
    });
  });
  const ready = new Promise((r) => wss.on("listening", () => r(undefined)));
  return {
    ready,
    get url() {
      return `ws://127.0.0.1:${/** @type {import("node:net").AddressInfo} */ (wss.address()).port}/v1/ws`;
    },
    hellos,
    protocols,
    setScript(/** @type {typeof script} */ s) {
      script = s;
    },
    close: () => new Promise((r) => wss.close(() => r(undefined))),
  };
}

describe("close-code policy (fake relay)", () => {
  /** @type {ReturnType<typeof fakeRelay>} */
  let relay;
  before(async () => {
    relay = fakeRelay();
    await relay.ready;
  });
  after(async () => {
    await relay.close();
  });

  for (const code of [1000, 1003, 1008, 1009, 4500, 4501, 4502, 4503, 4504, 4999]) {
    test(`close ${code} is terminal: close event, pending work rejected, no reconnect`, async () => {
      relay.hellos.length = 0;
      relay.setScript((ws, n) => n === 1 && setTimeout(() => ws.close(code, `bye ${code}`), 100));
      const p = await peer(relay.url, { id: "t", backoff: { base: 10, max: 20 } });
      const pending = p.send("someone", "never acked"); // the fake relay never answers
      const closed = await nextEvent(p, "close");
      assert.equal(closed.code, code);
      assert.equal(closed.reason, `bye ${code}`);
      const err = await pending.then(() => null, (e) => e);
      assert.ok(err instanceof ConnectionClosed, String(err));
      assert.equal(err.closeCode, code);
      await sleep(150);
      assert.equal(relay.hellos.length, 1, "no reconnect");
      assert.equal(p.state, "closed");
    });
  }

  for (const code of [1001, 1011, 1013, 4000, 4008, 4029, 4499]) {
    test(`close ${code} is retried, resuming with the latest secret`, async () => {
      relay.hellos.length = 0;
      relay.setScript((ws, n) => n === 1 && setTimeout(() => ws.close(code, "again"), 50));
      let tokens = 0;
      const p = await peer(relay.url, { id: "r", token: async () => `jwt-${++tokens}`, backoff: { base: 10, max: 20 } });
      const d = await nextEvent(p, "disconnect");
      assert.equal(d.code, code);
      assert.ok(d.delay >= 0 && d.delay <= 20, String(d.delay));
      const o = await nextEvent(p, "open");
      assert.equal(o.resumed, true);
      assert.equal(relay.hellos.length, 2);
      assert.deepEqual(relay.hellos[0], { type: "hello", id: "r", token: "jwt-1" });
      assert.deepEqual(relay.hellos[1], { type: "hello", id: "r", token: "jwt-2", resume: "secret-1", received: 0 });
      assert.equal(p.resumeSecret, "secret-2");
      await p.close();
    });
  }

  test("the client offers the relay.v1 subprotocol", () => {
    assert.ok(relay.protocols.length > 0);
    assert.ok(relay.protocols.every((p) => p === SUBPROTOCOL));
  });

  test("reconnects give up after maxRetries, with the last close code", async () => {
    relay.hellos.length = 0;
    relay.setScript((ws) => setTimeout(() => ws.close(4008, "slow"), 20));
    const p = await peer(relay.url, { id: "m", maxRetries: 2, backoff: { base: 5, max: 10 } });
    const closed = await nextEvent(p, "close");
    assert.equal(closed.code, 4008);
    await until(() => relay.hellos.length === 3, 1000, "three sessions");
    await sleep(100);
    assert.equal(relay.hellos.length, 3, "first connect + 2 retries");
  });
});
