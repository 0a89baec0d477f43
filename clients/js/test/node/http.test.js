// The HTTP fallback transport against a real relay (docs/protocol-http.md):
// alone (`transports: ["http"]`), streaming and long-polling, with its
// stream cut, its session lost, and as the fallback of the default options
// behind a proxy that passes no WebSockets.
import assert from "node:assert/strict";
import { after, afterEach, before, describe, test } from "node:test";
import { connect, PeerOffline } from "../../src/index.js";
import { collect, nextEvent, peer, startHttpProxy, startRelay, uid, until } from "../helpers.js";

const RESUME_SECONDS = 10;
// Above the 3 s a stream may take to show its first record: a relay that
// ended sessions sooner would end those behind a buffering proxy before they
// switch to long-poll.
const IDLE_SECONDS = 4;
const FAST = { backoff: { base: 50, max: 200 } };

/** @type {Awaited<ReturnType<typeof startRelay>>} */
let relay;
/** @type {Awaited<ReturnType<typeof startHttpProxy>> | null} */
let proxy = null;
/** @type {import("../../src/index.js").RelayPeer[]} */
let opened = [];

/** A fetch that notes the name of every HTTP-transport request (open, stream, ...) and its URL. */
function recordingFetch() {
  /** @type {{name: string, url: string}[]} */
  const seen = [];
  /** @type {typeof globalThis.fetch} */
  const fetch = (input, init) => {
    const url = String(input);
    seen.push({ name: url.slice(url.lastIndexOf("/") + 1), url });
    return globalThis.fetch(input, init);
  };
  return { fetch, seen, names: () => seen.map((r) => r.name) };
}

/** A peer on the HTTP transport alone. */
async function httpPeer(/** @type {string} */ url, /** @type {any} */ opts = {}) {
  const p = await connect(url, { transports: ["http"], ...FAST, ...opts });
  opened.push(p);
  return p;
}

/** A peer on a WebSocket. */
async function wsPeer(/** @type {string} */ id = uid("ws")) {
  const p = await peer(relay.url, { id, ...FAST });
  opened.push(p);
  return p;
}

/**
 * Messages both ways with a WebSocket peer, a room, ok and err: the session
 * works as on a WebSocket.
 * @param {import("../../src/index.js").RelayPeer} a on HTTP
 */
async function exchange(a) {
  const b = await wsPeer();
  const gotA = collect(a);
  const gotB = collect(b);
  assert.equal((await a.send(b.id ?? "", "to b", { ev: "chat" })).queued, false);
  await b.send(a.id ?? "", new Uint8Array([1, 2, 3]));
  await until(() => gotA.length === 1 && gotB.length === 1, 5000, "a message each way");
  assert.deepEqual([gotB[0].from, gotB[0].data, gotB[0].ev], [a.id, "to b", "chat"]);
  assert.deepEqual([gotA[0].from, [...gotA[0].data]], [b.id, [1, 2, 3]]);
  const room = uid("room");
  await a.join(room);
  await b.join(room);
  await b.publish(room, "to the room");
  await until(() => gotA.length === 2, 5000, "the room message");
  assert.deepEqual([gotA[1].room, gotA[1].data], [room, "to the room"]);
  await assert.rejects(a.send(uid("nobody"), 1), PeerOffline);
  b.onRequest("add", ({ x, y }) => x + y);
  a.onRequest("twice", (x) => 2 * x);
  assert.equal(await a.request(b.id ?? "", { x: 1, y: 2 }, { ev: "add" }), 3);
  assert.equal(await b.request(a.id ?? "", 21, { ev: "twice" }), 42);
  return b;
}

describe("the HTTP transport against a relay", () => {
  before(async () => {
    relay = await startRelay([
      "--resume-seconds",
      String(RESUME_SECONDS),
      "--http-keepalive-seconds",
      "0.5",
      "--http-poll-seconds",
      "1",
      "--http-idle-seconds",
      String(IDLE_SECONDS),
    ]);
  });
  afterEach(async () => {
    await Promise.all(opened.map((p) => p.close()));
    opened = [];
    await proxy?.close();
    proxy = null;
  });
  after(async () => {
    await relay?.stop();
  });

  test('transports: ["http"]: registers, messages both ways with a WebSocket peer, a room, ok and err, requests', async () => {
    const { fetch, seen, names } = recordingFetch();
    const a = await httpPeer(relay.url, { id: uid("a"), fetch });
    assert.equal(a.transport, "http");
    assert.equal(a.state, "open");
    await exchange(a);
    assert.ok(names().includes("stream") && names().includes("send") && names().includes("ack"), names().join(","));
    assert.ok(!names().includes("poll"), "a stream that works is kept");
    const secret = /** @type {any} */ (a)._ws._secret;
    assert.ok(secret);
    for (const { url } of seen) {
      assert.ok(url.startsWith(relay.httpUrl + "/v1/http/"), url);
      assert.ok(!url.includes(secret), "the session secret is never in a URL");
    }
  });

  test("long-poll from the start (streamTimeout: 0) works the same, without a stream", async () => {
    const { fetch, names } = recordingFetch();
    const a = await httpPeer(relay.url, { id: uid("a"), fetch, streamTimeout: 0 });
    await exchange(a);
    assert.ok(names().includes("poll"));
    assert.ok(!names().includes("stream"), names().join(","));
  });

  test("a stream cut in the middle of bursts both ways is opened again: nothing lost, nothing twice, the session goes on", async () => {
    proxy = await startHttpProxy(relay.url);
    const { fetch, names } = recordingFetch();
    const a = await httpPeer(proxy.url, { id: uid("a"), fetch });
    const b = await wsPeer();
    const gotA = collect(a);
    const gotB = collect(b);
    const drops = collect(a, "disconnect");
    const N = 300;
    const fromB = Promise.all(Array.from({ length: N }, (_, i) => b.send(a.id ?? "", i)));
    const fromA = Promise.all(Array.from({ length: N }, (_, i) => a.send(b.id ?? "", i)));
    await until(() => gotA.length >= 20, 5000, "some of b's burst");
    const streams = names().filter((n) => n === "stream").length;
    /** @type {NonNullable<typeof proxy>} */ (proxy).sever();
    await Promise.all([fromB, fromA]);
    await until(() => gotA.length >= N && gotB.length >= N, 10_000, "both bursts");
    await b.ping(); // anything still on its way arrives before the pong
    assert.deepEqual(
      gotA.map((e) => e.data),
      Array.from({ length: N }, (_, i) => i),
    );
    assert.deepEqual(
      gotB.map((e) => e.data),
      Array.from({ length: N }, (_, i) => i),
    );
    assert.ok(names().filter((n) => n === "stream").length > streams, "the stream was opened again");
    assert.deepEqual(drops, [], "the session never dropped");
    assert.equal(a.transport, "http");
  });

  test("default options behind a buffering proxy that passes no WebSockets: fall back to HTTP, then long-poll", async () => {
    proxy = await startHttpProxy(relay.url, { buffer: true });
    const a = await peer(proxy.url, { id: uid("a") }); // the `ws` WebSocket, and the defaults
    opened.push(a);
    assert.equal(a.transport, "http");
    assert.equal(proxy.upgrades.count, 1, "the WebSocket was tried first");
    await exchange(a);
    const paths = proxy.paths.map((p) => p.slice(p.lastIndexOf("/") + 1));
    assert.equal(paths.filter((p) => p === "stream").length, 1, "no second stream once it long-polls");
    assert.ok(paths.includes("poll"), paths.join(","));
  });

  test("a lost HTTP session resumes as after a dropped WebSocket; the reconnect tries the WebSocket first", async () => {
    proxy = await startHttpProxy(relay.url);
    const a = await peer(proxy.url, { id: uid("a"), ...FAST });
    opened.push(a);
    assert.equal(a.transport, "http");
    const b = await wsPeer();
    const room = uid("room");
    await a.join(room);
    const gotA = collect(a);
    // Nothing gets through for longer than idle_seconds: the session is lost.
    const dropped = nextEvent(a, "disconnect", undefined, (IDLE_SECONDS + 5) * 1000);
    proxy.setPaused(true);
    proxy.sever();
    const d = /** @type {any} */ (await dropped);
    assert.equal(d.code, 1006);
    assert.equal(a.transport, null);
    const sent = await b.send(a.id ?? "", "while you were away");
    assert.equal(sent.queued, true, "the relay keeps the session for a resume");
    const reopened = nextEvent(a, "open", undefined, 10_000);
    const upgrades = proxy.upgrades.count;
    proxy.setPaused(false);
    const o = /** @type {any} */ (await reopened);
    assert.equal(o.resumed, true);
    assert.ok(proxy.upgrades.count > upgrades, "the WebSocket was tried again first");
    assert.equal(a.transport, "http");
    await until(() => gotA.length === 1, 5000, "the queued message");
    assert.equal(gotA[0].data, "while you were away");
    await b.join(room);
    await b.publish(room, "room kept");
    await until(() => gotA.length === 2, 5000, "a room message");
  });

  test("close() ends the HTTP session at once: it is not kept for a resume", async () => {
    const a = await httpPeer(relay.url, { id: uid("a") });
    const b = await wsPeer();
    await a.close();
    assert.equal(a.transport, null);
    await until(
      () => b.send(a.id ?? "", "gone?").then(
        () => false,
        (err) => err instanceof PeerOffline,
      ),
      3000,
      "a offline",
    );
  });
});
