// The client API against a real relay process.
import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";
import {
  ConnectionClosed,
  IdTaken,
  NotConnected,
  PeerOffline,
  RemoteError,
  RequestTimeout,
  TooLarge,
} from "../../src/index.js";
import { collect, nextEvent, peer, sleep, startRelay, uid, until } from "../helpers.js";

/** @type {Awaited<ReturnType<typeof startRelay>>} */
let relay;
/** @type {import("../../src/index.js").RelayPeer[]} */
const opened = [];

/** connect() and remember the peer, closed after the suite */
async function open(/** @type {string | undefined} */ id, /** @type {any} */ opts = {}) {
  const p = await peer(relay.url, { id, ...opts });
  opened.push(p);
  return p;
}

describe("relay-client against a relay", () => {
  before(async () => {
    relay = await startRelay();
  });
  after(async () => {
    await Promise.all(opened.map((p) => p.close()));
    await relay?.stop();
  });

  test("connect: welcome, id, limits, resume secret, state", async () => {
    const id = uid("alice");
    const states = [];
    const a = await open(id);
    a.addEventListener("state", (e) => states.push(e.state));
    assert.equal(a.id, id);
    assert.equal(a.state, "open");
    assert.ok(a.connected);
    assert.equal(typeof a.resumeSecret, "string");
    assert.ok(a.limits.max_frame_bytes > 0, "limits.max_frame_bytes");
    assert.equal(typeof a.node, "string");
    // no id: the relay picks one
    const anon = await open(undefined);
    assert.match(anon.id ?? "", /^[A-Za-z0-9_.:~-]{1,64}$/);
    await a.close();
    assert.equal(a.state, "closed");
    assert.deepEqual(states, ["closed"]);
    await assert.rejects(a.send(anon.id ?? "", 1), ConnectionClosed);
  });

  test("send: delivery with from/ev, any payload type, bytes as Uint8Array", async () => {
    const a = await open(uid("a"));
    const b = await open(uid("b"));
    const got = collect(b);
    const payloads = [
      "text",
      42,
      -1.5,
      null,
      true,
      [1, "two", [3]],
      { nested: { list: [1, 2], bin: new Uint8Array([0, 255, 7]) } },
      new Uint8Array([1, 2, 3, 0, 255]),
    ];
    for (const d of payloads) {
      const r = await a.send(b.id ?? "", d, { ev: "t" });
      assert.equal(r.queued, false);
    }
    await until(() => got.length === payloads.length, 5000, "all messages");
    got.forEach((m, i) => {
      assert.equal(m.from, a.id);
      assert.equal(m.ev, "t");
      assert.equal(m.room, undefined);
      assert.deepEqual(m.data, payloads[i]);
    });
    assert.ok(got.at(-1).data instanceof Uint8Array);
    // a bare ArrayBuffer payload is sent as bin too
    const ab = nextEvent(b, "message", (m) => m.ev === "ab");
    await a.send(b.id ?? "", new Uint8Array([5, 6]).buffer, { ev: "ab" });
    assert.deepEqual((await ab).data, new Uint8Array([5, 6]));
  });

  test("send to an offline peer rejects with PeerOffline; multi-target lists the unreached", async () => {
    const a = await open(uid("a"));
    const b = await open(uid("b"));
    const ghost = uid("ghost");
    const err = await a.send(ghost, "x").then(() => null, (e) => e);
    assert.ok(err instanceof PeerOffline, String(err));
    assert.equal(err.code, "peer-offline");
    assert.equal(err.to, ghost);
    const got = nextEvent(b, "message");
    const err2 = await a.send([b.id ?? "", ghost], "both?").then(() => null, (e) => e);
    assert.ok(err2 instanceof PeerOffline);
    assert.deepEqual(err2.to, [ghost]);
    assert.equal((await got).data, "both?", "the live target still gets it");
  });

  test("fire-and-forget send resolves at once; a failure comes as an error event", async () => {
    const a = await open(uid("a"));
    const b = await open(uid("b"));
    const got = nextEvent(b, "message");
    assert.deepEqual(await a.send(b.id ?? "", "ff", { ack: false }), { queued: false });
    assert.equal((await got).data, "ff");
    const errEvent = nextEvent(a, "error");
    await a.send(uid("ghost"), "lost", { ack: false });
    const e = await errEvent;
    assert.ok(e.error instanceof PeerOffline);
  });

  test("rooms: join with presence, publish (echo or not), leave", async () => {
    const room = uid("room");
    const a = await open(uid("a"));
    const b = await open(uid("b"));
    const presenceA = collect(a, "presence");
    await a.join(room, { presence: true });
    await until(() => presenceA.length >= 1, 3000, "first presence");
    assert.equal(presenceA[0].room, room);
    assert.deepEqual(presenceA[0].members, [a.id]);
    await b.join(room);
    await until(() => presenceA.some((p) => p.peer === b.id && p.event === "join"), 3000, "b's join");
    assert.deepEqual(a.rooms, [room]);

    const gotA = collect(a);
    const gotB = collect(b);
    await a.publish(room, { hi: 1 }, { ev: "chat" });
    await b.publish(room, "echoed", { echo: true });
    await until(() => gotA.length === 1 && gotB.length === 2, 3000, "room messages");
    assert.equal(gotB[0].room, room);
    assert.equal(gotB[0].from, a.id);
    assert.equal(gotB[0].ev, "chat");
    assert.deepEqual(gotB[0].data, { hi: 1 });
    assert.equal(gotB[1].data, "echoed");
    assert.equal(gotA[0].data, "echoed");

    await b.leave(room);
    await until(() => presenceA.some((p) => p.peer === b.id && p.event === "leave"), 3000, "b's leave");
    await a.publish(room, "after leave");
    await sleep(200);
    assert.equal(gotB.length, 2);
  });

  test("request/reply: result, remote error, timeout, offline target", async () => {
    const a = await open(uid("a"));
    const b = await open(uid("b"));
    b.onRequest("add", (d) => d.a + d.b);
    b.onRequest("bytes", async (d) => new Uint8Array([...d].reverse()));
    b.onRequest("boom", () => {
      throw new Error("kaput");
    });
    assert.equal(await a.request(b.id ?? "", { a: 2, b: 3 }, { ev: "add" }), 5);
    assert.deepEqual(await a.request(b.id ?? "", new Uint8Array([1, 2, 3]), { ev: "bytes" }), new Uint8Array([3, 2, 1]));
    const remote = await a.request(b.id ?? "", null, { ev: "boom" }).then(() => null, (e) => e);
    assert.ok(remote instanceof RemoteError);
    assert.equal(remote.message, "kaput");
    // several in flight at once, answered out of order
    b.onRequest("slow", async (ms) => (await sleep(ms), ms));
    assert.deepEqual(
      await Promise.all([300, 10, 150].map((ms) => a.request(b.id ?? "", ms, { ev: "slow" }))),
      [300, 10, 150],
    );
    // no handler for the ev: it arrives as a message the app can reply to by hand
    const manual = nextEvent(b, "message", (m) => m.ev === "manual");
    const pending = a.request(b.id ?? "", "q", { ev: "manual" });
    const m = await manual;
    assert.notEqual(m.rid, undefined);
    await b.reply(m, "by hand");
    assert.equal(await pending, "by hand");
    // nobody answers
    await assert.rejects(a.request(b.id ?? "", "?", { ev: "unanswered", timeout: 200 }), RequestTimeout);
    await assert.rejects(a.request(uid("ghost"), "?", { ev: "add" }), PeerOffline);
  });

  test("ping returns a round-trip time", async () => {
    const a = await open(uid("a"));
    const rtt = await a.ping();
    assert.ok(rtt >= 0 && rtt < 1000, String(rtt));
    await a.close();
    await assert.rejects(a.ping(), NotConnected);
  });

  test("a taken id is refused with IdTaken", async () => {
    const id = uid("dup");
    await open(id);
    const err = await peer(relay.url, { id }).then(
      (p) => (p.close(), null),
      (e) => e,
    );
    assert.ok(err instanceof IdTaken, String(err));
  });

  test("frames over max_frame_bytes are refused locally with TooLarge", async () => {
    const a = await open(uid("a"));
    const b = await open(uid("b"));
    const big = new Uint8Array(a.limits.max_frame_bytes + 1);
    await assert.rejects(a.send(b.id ?? "", big), TooLarge);
    assert.ok(a.connected, "still connected");
    assert.ok((await a.ping()) >= 0);
  });

  test("async iteration over messages ends on close", async () => {
    const a = await open(uid("a"));
    const b = await open(uid("b"));
    const seen = [];
    const loop = (async () => {
      for await (const m of b) seen.push(m.data);
    })();
    for (const i of [1, 2, 3]) await a.send(b.id ?? "", i);
    await until(() => seen.length === 3, 3000, "iterated messages");
    await b.close();
    await loop;
    assert.deepEqual(seen, [1, 2, 3]);
  });

  test("messages from one sender arrive in order", async () => {
    const a = await open(uid("a"));
    const b = await open(uid("b"));
    const got = collect(b);
    const n = 200;
    await Promise.all(Array.from({ length: n }, (_, i) => a.send(b.id ?? "", i)));
    await until(() => got.length === n, 10_000, `${n} messages`);
    assert.deepEqual(
      got.map((m) => m.data),
      Array.from({ length: n }, (_, i) => i),
    );
  });
});
