// A drain (1001): the requests the relay left unanswered are sent again after
// reconnecting. The relay's contract (docs/protocol.md): at a 1001 close from
// the relay, every request it had not answered before its close frame was not
// acted on. The relay is real; a WebSocket proxy in front of it plays the
// drain: it reads the client's requests, keeps them from the relay, and
// closes the client's socket.
import assert from "node:assert/strict";
import { after, afterEach, before, describe, test } from "node:test";
import { ConnectionLost, RequestTimeout, TooLarge } from "../../src/index.js";
import { collect, nextEvent, peer, startDrainProxy, startRelay, uid, until } from "../helpers.js";

const FAST = { backoff: { base: 20, max: 100 } };

/** @type {Awaited<ReturnType<typeof startRelay>>} */
let relay;
/** @type {Awaited<ReturnType<typeof startRelay>>} forgets a lost peer at once, takes frames up to 1 KiB */
let forgetful;
/** @type {Awaited<ReturnType<typeof startDrainProxy>> | undefined} */
let proxy;
/** @type {import("../../src/index.js").RelayPeer[]} */
let opened = [];

async function open(/** @type {string} */ url, /** @type {string} */ id, /** @type {any} */ opts = {}) {
  const p = await peer(url, { id, ...FAST, ...opts });
  opened.push(p);
  return p;
}

/**
 * What a socket asked of the relay after its hello: each envelope's type, and data or room.
 * @param {any[]} envelopes
 */
const asked = (envelopes) =>
  envelopes.filter((e) => e.type !== "hello").map((e) => [e.type, e.d ?? e.room ?? null]);

/** Settles to the value or the error. */
const outcome = (/** @type {Promise<unknown>} */ p) => p.then((v) => v, (e) => e);

describe("a drain (1001): requests left unanswered are sent again", () => {
  before(async () => {
    [relay, forgetful] = await Promise.all([startRelay(), startRelay(["--resume-seconds", "0", "--max-frame-bytes", "1024"])]);
  });
  afterEach(async () => {
    await Promise.all(opened.map((p) => p.close()));
    opened = [];
    await proxy?.close();
    proxy = undefined;
  });
  after(async () => {
    await Promise.all([relay?.stop(), forgetful?.stop()]);
  });

  test("a request unanswered at a drain is sent again once; one answered before is not", async () => {
    const p = (proxy = await startDrainProxy(relay.url));
    const b = await open(relay.url, uid("b"));
    const a = await open(p.url, uid("a"));
    const gotB = collect(b);
    await a.send(b.id ?? "", "answered");
    p.hold();
    const pending = a.send(b.id ?? "", "unanswered");
    await p.waitHeld(1);
    const reopened = nextEvent(a, "open");
    p.end(1001, "draining");
    assert.equal((await reopened).resumed, true);
    const result = await pending;
    assert.equal(result.queued, false);
    await a.send(b.id ?? "", "marker");
    await until(() => gotB.length === 3, 3000, "three messages");
    assert.deepEqual(gotB.map((m) => m.data), ["answered", "unanswered", "marker"]);
    // The relay was asked once more, with a new id: the one the caller's result carries.
    assert.deepEqual(asked(p.sessions[1]), [["send", "unanswered"], ["send", "marker"]]);
    const heldId = p.held[0][0].id;
    assert.equal(result.id, p.sessions[1][1].id);
    assert.notEqual(result.id, heldId);
    assert.deepEqual(asked(p.sessions[0]), [["send", "answered"], ["send", "unanswered"]]);
  });

  test("sent again in order, ahead of what was buffered while offline", async () => {
    const p = (proxy = await startDrainProxy(relay.url));
    const room = uid("room");
    const news = uid("news");
    const b = await open(relay.url, uid("b"));
    const a = await open(p.url, uid("a"));
    await b.join(room);
    const gotB = collect(b);
    p.hold();
    // Each call waits for the one before to be held, so the order is the order of the calls.
    const sent = a.send(b.id ?? "", 0);
    await p.waitHeld(1);
    const published = a.publish(room, 1);
    await p.waitHeld(2);
    const joined = a.join(news);
    await p.waitHeld(3);
    const pinged = a.ping();
    await p.waitHeld(4);
    const dropped = nextEvent(a, "disconnect");
    p.end(1001, "draining");
    assert.equal((await dropped).code, 1001);
    // Reconnecting: these wait in the offline buffer.
    const fireAndForget = a.send(b.id ?? "", 2, { ack: false });
    const buffered = a.send(b.id ?? "", 3);
    const results = await Promise.all([sent, published, joined, pinged, fireAndForget, buffered]);
    await until(() => gotB.length === 4, 3000, "four messages");
    assert.deepEqual(gotB.map((m) => m.data), [0, 1, 2, 3]);
    const last = p.sessions[p.sessions.length - 1];
    assert.deepEqual(asked(last), [["send", 0], ["pub", 1], ["join", news], ["ping", null], ["send", 2], ["send", 3]]);
    assert.equal(typeof results[3], "number", "the ping resolved with its round trip");
    assert.deepEqual(a.rooms, [news]);
    const gotA = collect(a);
    await b.publish(news, "to the room a joined");
    await until(() => gotA.length === 1, 3000, "room message");
  });

  for (const code of [null, 1011, 4008]) {
    test(`${code ?? "a reset (1006)"}: what was in flight fails with ConnectionLost, nothing is sent again`, async () => {
      const p = (proxy = await startDrainProxy(relay.url));
      const b = await open(relay.url, uid("b"));
      const a = await open(p.url, uid("a"));
      const gotB = collect(b);
      p.hold();
      const pending = a.send(b.id ?? "", "in flight");
      await p.waitHeld(1);
      const reopened = nextEvent(a, "open");
      p.end(code, "going");
      assert.ok((await outcome(pending)) instanceof ConnectionLost);
      await reopened;
      await a.send(b.id ?? "", "marker");
      await until(() => gotB.length === 1, 3000, "marker");
      assert.equal(gotB[0].data, "marker");
      assert.deepEqual(asked(p.sessions[1]), [["send", "marker"]]);
    });
  }

  test("a request() whose reply timed out meanwhile is not sent again", async () => {
    const p = (proxy = await startDrainProxy(relay.url));
    const b = await open(relay.url, uid("b"));
    const a = await open(p.url, uid("a"));
    const gotB = collect(b);
    p.hold();
    p.setRefusing(true);
    const request = a.request(b.id ?? "", "question", { timeout: 300 });
    await p.waitHeld(1);
    p.end(1001, "draining");
    assert.ok((await outcome(request)) instanceof RequestTimeout);
    const reopened = nextEvent(a, "open");
    p.setRefusing(false);
    await reopened;
    await a.send(b.id ?? "", "marker");
    await until(() => gotB.length === 1, 3000, "marker");
    assert.deepEqual(asked(p.sessions[1]), [["send", "marker"]]);
  });

  test("a request too large for the next relay rejects with TooLarge; the others go", async () => {
    const p = (proxy = await startDrainProxy(relay.url));
    const b = await open(forgetful.url, uid("b"));
    const a = await open(p.url, uid("a"));
    const gotB = collect(b);
    p.hold();
    const large = a.send(b.id ?? "", "x".repeat(2000));
    await p.waitHeld(1);
    const small = a.send(b.id ?? "", "small");
    await p.waitHeld(2);
    p.setTarget(forgetful.url); // the drained relay's peers move to another one
    p.end(1001, "draining");
    assert.ok((await outcome(large)) instanceof TooLarge);
    assert.equal((await small).queued, false);
    await until(() => gotB.length === 1, 3000, "the small message");
    assert.deepEqual(asked(p.sessions[1]), [["send", "small"]]);
  });

  test("rooms in flight at a drain end as asked on a fresh session", async () => {
    const p = (proxy = await startDrainProxy(forgetful.url));
    const [lobby, old, news] = [uid("lobby"), uid("old"), uid("news")];
    const b = await open(forgetful.url, uid("b"));
    const a = await open(p.url, uid("a"));
    await a.join(lobby);
    await a.join(old);
    p.hold();
    const presence = a.join(lobby, { presence: true });
    await p.waitHeld(1);
    const left = a.leave(old);
    await p.waitHeld(2);
    const joined = a.join(news);
    await p.waitHeld(3);
    const reopened = nextEvent(a, "open");
    p.end(1001, "draining");
    assert.equal((await reopened).resumed, false);
    await Promise.all([presence, left, joined]);
    // leave() forgets the room at once, so only the lobby is rejoined; then what was in flight.
    assert.deepEqual(asked(p.sessions[1]), [["join", lobby], ["join", lobby], ["leave", old], ["join", news]]);
    assert.deepEqual(a.rooms.sort(), [lobby, news].sort());
    const gotA = collect(a);
    for (const room of [old, lobby, news]) await b.publish(room, room);
    await until(() => gotA.length === 2, 3000, "room messages");
    assert.deepEqual(gotA.map((m) => m.data), [lobby, news]);
  });

  test("a rejoin cut by a drain is not sent twice; what waited behind it goes once", async () => {
    const p = (proxy = await startDrainProxy(forgetful.url));
    const [lobby, news] = [uid("lobby"), uid("news")];
    const b = await open(forgetful.url, uid("b"));
    const a = await open(p.url, uid("a"));
    await a.join(lobby);
    p.hold();
    const joined = a.join(news);
    await p.waitHeld(1);
    p.setHoldAfterHello(true); // the next socket's rejoin and re-sent join stay in the proxy
    p.end(1001, "draining");
    await p.waitHeld(2, 1);
    assert.deepEqual(asked(p.held[1]), [["join", lobby], ["join", news]]);
    p.setHoldAfterHello(false);
    const reopened = nextEvent(a, "open");
    p.end(1001, "draining again");
    assert.equal((await reopened).resumed, false);
    await joined;
    await a.ping(); // a round trip: what the socket carried before it is recorded
    assert.deepEqual(asked(p.sessions[2]), [["join", lobby], ["join", news], ["ping", null]]);
    const gotA = collect(a);
    await b.publish(lobby, "still in the room");
    await until(() => gotA.length === 1, 3000, "room message");
  });

  test("a rejoin cut by a reset keeps its room: the next fresh session rejoins it", async () => {
    const p = (proxy = await startDrainProxy(forgetful.url));
    const lobby = uid("lobby");
    const b = await open(forgetful.url, uid("b"));
    const a = await open(p.url, uid("a"));
    await a.join(lobby);
    p.setHoldAfterHello(true); // the next socket's rejoin stays in the proxy
    p.end(1001, "draining");
    await p.waitHeld(1, 1);
    p.setHoldAfterHello(false);
    const reopened = nextEvent(a, "open");
    p.end(null); // the rejoin's fate is unknown: a refusal would be the only reason to forget the room
    assert.equal((await reopened).resumed, false);
    await a.ping(); // a round trip: what the socket carried before it is recorded
    assert.deepEqual(asked(p.sessions[2]), [["join", lobby], ["ping", null]]);
    assert.deepEqual(a.rooms, [lobby]);
    const gotA = collect(a);
    await b.publish(lobby, "still in the room");
    await until(() => gotA.length === 1, 3000, "room message");
  });
});
