// Pieces that need no relay: errors, backoff, codec, constructor checks.
import assert from "node:assert/strict";
import { test } from "node:test";
import { ExtData } from "@msgpack/msgpack";
import {
  ConnectionClosed,
  IdTaken,
  PeerOffline,
  RelayError,
  RelayPeer,
  backoffDelay,
  connect,
  errorFromEnvelope,
  shouldReconnect,
} from "../../src/index.js";
import { createCodec } from "../../src/codec.js";

test("err envelopes map to typed errors", () => {
  const e = errorFromEnvelope({ type: "err", code: "peer-offline", msg: "bob is offline", id: 7, to: ["bob"] });
  assert.ok(e instanceof PeerOffline && e instanceof RelayError && e instanceof Error);
  assert.equal(e.code, "peer-offline");
  assert.equal(e.message, "bob is offline");
  assert.equal(e.id, 7);
  assert.deepEqual(e.to, ["bob"]);
  assert.equal(e.name, "PeerOffline");
  assert.ok(errorFromEnvelope({ code: "id-taken" }) instanceof IdTaken);
  const unknown = errorFromEnvelope({ code: "brand-new-code", msg: "?" });
  assert.equal(unknown.constructor, RelayError);
  assert.equal(unknown.code, "brand-new-code");
  const closed = new ConnectionClosed(4503, "replaced");
  assert.equal(closed.closeCode, 4503);
  assert.equal(closed.code, "closed");
});

test("close codes: retry drops, drains and 4000-4499; never 4500-4999 or policy closes", () => {
  for (const c of [1001, 1006, 1011, 1013, 4000, 4008, 4029, 4499]) assert.ok(shouldReconnect(c), String(c));
  for (const c of [1000, 1003, 1008, 1009, 4500, 4501, 4502, 4503, 4999]) assert.ok(!shouldReconnect(c), String(c));
});

test("backoff is full-jitter exponential and bounded", () => {
  assert.equal(backoffDelay(0, { base: 100, max: 1000 }, () => 0.999), 99);
  assert.equal(backoffDelay(3, { base: 100, max: 1000 }, () => 0.5), 400);
  assert.equal(backoffDelay(50, { base: 100, max: 1000 }, () => 0.999), 999);
  assert.equal(backoffDelay(5, { base: 100, max: 1000 }, () => 0), 0);
});

test("a clear error when there is no WebSocket implementation", async () => {
  assert.equal(globalThis.WebSocket, undefined, "Node 20 has no global WebSocket");
  assert.throws(() => new RelayPeer("ws://127.0.0.1:9/v1/ws"), /no WebSocket implementation.*`WebSocket` option/);
  await assert.rejects(async () => connect("ws://127.0.0.1:9/v1/ws"), TypeError);
});

test("codec keeps payload types: bytes, nested maps, number keys, ext types", () => {
  const { encode, decode } = createCodec();
  const value = {
    b: new Uint8Array([0, 1, 255]),
    n: [1, -2, 3.5, null, true, "é"],
    m: { 1: "one" },
    x: new ExtData(42, new Uint8Array([9, 9])),
  };
  const back = /** @type {any} */ (decode(encode(value)));
  assert.ok(back.b instanceof Uint8Array);
  assert.deepEqual([...back.b], [0, 1, 255]);
  assert.deepEqual(back.n, value.n);
  assert.equal(back.m[1], "one");
  assert.ok(back.x instanceof ExtData);
  assert.equal(back.x.type, 42);
  // ext data re-encodes to the same bytes: delivered "type for type"
  assert.deepEqual(encode(back.x), encode(value.x));
  // undefined optional fields are left out, not sent as nil
  assert.deepEqual(decode(encode({ type: "send", ev: undefined })), { type: "send" });
});
