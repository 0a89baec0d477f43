// Reconnect, resume, offline buffer, heartbeat and terminal closes, with a
// severable TCP proxy between the client and a real relay.
import assert from "node:assert/strict";
import { after, afterEach, before, describe, test } from "node:test";
import { ConnectionClosed, OfflineBufferFull } from "../../src/index.js";
import { collect, nextEvent, peer, sleep, startProxy, startRelay, uid, until } from "../helpers.js";

const RESUME_SECONDS = 2;
// The WebSocket's reconnect (the HTTP transport's is in http.test.js). With
// the HTTP fallback too, an attempt while the proxy refuses connections
// would also try `open`, and Node 20's first fetch of a process hangs (until
// connectTimeout) on a connection closed at once instead of failing.
const FAST = { backoff: { base: 50, max: 200 }, transports: ["websocket"] };

/** @type {Awaited<ReturnType<typeof startRelay>>} */
let relay;
/** @type {Awaited<ReturnType<typeof startProxy>>} */
let proxy;
/** @type {import("../../src/index.js").RelayPeer[]} */
let opened = [];

async function open(/** @type {string} */ url, /** @type {string} */ id, /** @type {any} */ opts = {}) {
  const p = await peer(url, { id, ...FAST, ...opts });
  opened.push(p);
  return p;
}

describe("reconnect and resume", () => {
  before(async () => {
    relay = await startRelay(["--resume-seconds", String(RESUME_SECONDS)]);
  });
  afterEach(async () => {
    await Promise.all(opened.map((p) => p.close()));
    opened = [];
    await proxy?.close();
  });
  after(async () => {
    await relay?.stop();
  });

  test("a dropped link reconnects and resumes: queued messages, rooms, buffered sends", async () => {
    proxy = await startProxy(relay.url);
    const room = uid("room");
    const a = await open(proxy.url, uid("a"));
    const b = await open(relay.url, uid("b"));
    await a.join(room);
    const secret = a.resumeSecret;
    const gotA = collect(a);
    const gotB = collect(b);

    proxy.setPaused(true);
    const dropped = nextEvent(a, "disconnect");
    proxy.sever();
    const d = await dropped;
    assert.equal(d.code, 1006);
    assert.equal(a.state, "reconnecting");
    await sleep(200); // let the relay notice the drop

    // The relay keeps a's session for the resume window: b's send is queued.
    const r = await b.send(a.id ?? "", "while you were away");
    assert.equal(r.queued, true);
    // a's own send waits in the offline buffer.
    const buffered = a.send(b.id ?? "", "sent while offline");

    const reopened = nextEvent(a, "open");
    proxy.setPaused(false);
    const o = await reopened;
    assert.equal(o.resumed, true);
    assert.notEqual(a.resumeSecret, secret, "the secret rotates per welcome");
    assert.equal((await buffered).queued, false);
    await until(() => gotA.length === 1 && gotB.length === 1, 3000, "both messages");
    assert.equal(gotA[0].data, "while you were away");
    assert.equal(gotB[0].data, "sent while offline");
    // rooms were kept by the relay
    await b.join(room);
    await b.publish(room, "room still there");
    await until(() => gotA.length === 2, 3000, "room message");
    assert.equal(gotA[1].room, room);
  });

  test("offline buffer: bounded (OfflineBufferFull), flushed in order after reconnect", async () => {
    proxy = await startProxy(relay.url);
    const a = await open(proxy.url, uid("a"), { maxBuffered: 5 });
    const b = await open(relay.url, uid("b"));
    const gotB = collect(b);
    proxy.setPaused(true);
    const dropped = nextEvent(a, "disconnect");
    proxy.sever();
    await dropped;
    const sends = [0, 1, 2, 3, 4].map((i) => a.send(b.id ?? "", i));
    await assert.rejects(a.send(b.id ?? "", 5), OfflineBufferFull);
    await assert.rejects(a.publish("r", 5), OfflineBufferFull);
    proxy.setPaused(false);
    const results = await Promise.all(sends);
    assert.ok(results.every((r) => r.queued === false));
    await until(() => gotB.length === 5, 3000, "flushed messages");
    assert.deepEqual(
      gotB.map((m) => m.data),
      [0, 1, 2, 3, 4],
    );
  });

  test("resume window expired: fresh session, rooms rejoined, sender told 'undelivered'", async () => {
    proxy = await startProxy(relay.url);
    const room = uid("room");
    const a = await open(proxy.url, uid("a"));
    const b = await open(relay.url, uid("b"));
    await a.join(room, { presence: true });
    const gotA = collect(a);
    proxy.setPaused(true);
    const dropped = nextEvent(a, "disconnect");
    proxy.sever();
    await dropped;
    await sleep(200);

    const undelivered = nextEvent(b, "undelivered", () => true, (RESUME_SECONDS + 3) * 1000);
    const r = await b.send(a.id ?? "", "never arrives");
    assert.equal(r.queued, true);
    const u = await undelivered;
    assert.equal(u.id, r.id);
    assert.equal(u.to, a.id);
    assert.equal(u.error.code, "peer-offline");
    assert.equal(u.data, "never arrives");

    const reopened = nextEvent(a, "open");
    const presence = nextEvent(a, "presence", (p) => p.members);
    proxy.setPaused(false);
    assert.equal((await reopened).resumed, false);
    // the client rejoined its room itself (with presence, as first asked)
    assert.deepEqual((await presence).members, [a.id]);
    await b.join(room);
    await b.publish(room, "rejoined");
    await until(() => gotA.length === 1, 3000, "room message after rejoin");
    assert.equal(gotA[0].data, "rejoined");
  });

  test("frames the relay wrote into a dead link are replayed on resume", async () => {
    proxy = await startProxy(relay.url);
    const a = await open(proxy.url, uid("a"));
    const b = await open(relay.url, uid("b"));
    const gotA = collect(a);
    await b.send(a.id ?? "", "before");
    await until(() => gotA.length === 1, 3000, "first message");
    proxy.setBlackhole(true); // the relay writes, nothing arrives
    for (let n = 0; n < 5; n++) {
      const r = await b.send(a.id ?? "", n);
      assert.equal(r.queued, false, "the relay believes a got it");
    }
    const reopened = nextEvent(a, "open");
    proxy.sever();
    proxy.setBlackhole(false);
    assert.equal((await reopened).resumed, true);
    await until(() => gotA.length === 6, 3000, "replayed messages");
    assert.deepEqual(gotA.map((m) => m.data), ["before", 0, 1, 2, 3, 4]);
  });

  test("heartbeat: a link that stops answering is dropped and redialled", async () => {
    proxy = await startProxy(relay.url);
    const a = await open(proxy.url, uid("a"), { pingInterval: 150, pingTimeout: 300 });
    const b = await open(relay.url, uid("b"));
    proxy.setBlackhole(true); // sockets stay open, nothing gets through
    const d = await nextEvent(a, "disconnect", () => true, 3000);
    assert.equal(d.reason, "ping timeout");
    proxy.setBlackhole(false);
    await nextEvent(a, "open", () => true, 3000);
    const got = nextEvent(b, "message");
    await a.send(b.id ?? "", "alive again");
    assert.equal((await got).data, "alive again");
  });

  test("4503: a newer session with our resume secret takes over; no reconnect, pending work rejected", async () => {
    const a = await open(relay.url, uid("a"));
    const b = await open(relay.url, uid("b"));
    // Its outcome is taken at once: the 4503 may reach `a` before `a2` is open.
    const pending = a.request(b.id ?? "", "never answered", { ev: "nobody", timeout: 10_000 })
      .then(() => null, (e) => e);
    const closed = nextEvent(a, "close");
    const a2 = await open(relay.url, a.id ?? "", { resume: a.resumeSecret });
    const c = await closed;
    assert.equal(c.code, 4503);
    assert.ok(c.error instanceof ConnectionClosed);
    assert.equal(c.error.closeCode, 4503);
    const err = await pending;
    assert.ok(err instanceof ConnectionClosed, String(err));
    assert.equal(err.closeCode, 4503);
    await assert.rejects(a.send(b.id ?? "", "x"), ConnectionClosed);
    await sleep(500);
    assert.equal(a.state, "closed", "no reconnect after 4503");
    assert.ok(a2.connected);
    assert.ok((await a2.ping()) >= 0, "the new session is unharmed");
  });

  test("relay restart (drain, 1001): reconnects to the new relay and rejoins rooms", async () => {
    const first = await startRelay();
    const second = await startRelay();
    try {
      proxy = await startProxy(first.url);
      const room = uid("room");
      const a = await open(proxy.url, uid("a"));
      await a.join(room);
      const gotA = collect(a);
      proxy.setTarget(second.url);
      const dropped = nextEvent(a, "disconnect", () => true, 15_000);
      const reopened = nextEvent(a, "open", () => true, 15_000);
      assert.equal(await first.stop(), 0, "a drained relay exits 0");
      assert.equal((await dropped).code, 1001);
      const o = await reopened;
      assert.equal(o.resumed, false);
      const b = await open(second.url, uid("b"));
      await b.join(room);
      await until(() => a.connected, 3000, "a open");
      await sleep(100); // the rejoin is in flight right after the welcome
      await b.publish(room, "hello from the new relay");
      await until(() => gotA.length === 1, 3000, "room message");
      assert.equal(gotA[0].data, "hello from the new relay");
    } finally {
      await first.stop();
      await second.stop();
    }
  });

  test("the first connection failing rejects connect()", async () => {
    proxy = await startProxy(relay.url);
    proxy.setPaused(true);
    const err = await peer(proxy.url, { id: uid("a") }).then(() => null, (e) => e);
    assert.ok(err instanceof ConnectionClosed, String(err));
    assert.equal(err.closeCode, 1006);
  });
});
