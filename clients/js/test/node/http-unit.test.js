// The HTTP transport without a relay: the record format, and HttpSocket
// against a scripted fetch (test/fakefetch.js) that plays the relay's side
// of docs/protocol-http.md request by request.
import assert from "node:assert/strict";
import { describe, test } from "node:test";
import { decode, encode } from "@msgpack/msgpack";
import { HttpSocket } from "../../src/http.js";
import { CLOSE, ENVELOPE, KEEPALIVE, RecordParser, encodeRecords } from "../../src/records.js";
import { httpUrlFor, RelayPeer } from "../../src/client.js";
import { fakeFetch, openAnswer, records } from "../fakefetch.js";

const bytes = (/** @type {number[]} */ ...b) => new Uint8Array(b);

describe("records", () => {
  test("a record is kind, u32 big-endian length, payload", () => {
    const payload = new Uint8Array(258).fill(7);
    const out = encodeRecords(ENVELOPE, [payload, bytes()]);
    assert.deepEqual([...out.subarray(0, 5)], [0, 0, 0, 1, 2]);
    assert.equal(out.length, 5 + 258 + 5);
    assert.deepEqual([...out.subarray(263)], [0, 0, 0, 0, 0]);
    const big = new Uint8Array(0x01_02_03).fill(1);
    assert.deepEqual([...encodeRecords(CLOSE, [big]).subarray(0, 5)], [2, 0, 1, 2, 3]);
  });

  test("the parser finds the records whatever the chunks' boundaries", () => {
    const payloads = [bytes(), bytes(1), new Uint8Array(255).fill(2), new Uint8Array(256).fill(3), new Uint8Array(70_000).fill(4)];
    const whole = new Uint8Array([...encodeRecords(ENVELOPE, payloads), ...encodeRecords(KEEPALIVE, [bytes()])]);
    const expected = [...payloads.map((p) => ({ kind: ENVELOPE, payload: p })), { kind: KEEPALIVE, payload: bytes() }];
    const same = (/** @type {import("../../src/records.js").Record[]} */ got, /** @type {string} */ what) => {
      assert.equal(got.length, expected.length, what);
      got.forEach((r, i) => {
        assert.equal(r.kind, expected[i].kind, what);
        assert.ok(Buffer.from(r.payload).equals(expected[i].payload), `${what}: record ${i}`);
      });
    };
    // every split into two chunks, at each header byte and around each payload
    for (let cut = 0; cut <= whole.length; cut += cut < 600 ? 1 : 997) {
      const parser = new RecordParser();
      same([...parser.push(whole.subarray(0, cut)), ...parser.push(whole.subarray(cut))], `cut at ${cut}`);
      assert.equal(parser.pending, 0);
    }
    // one byte at a time
    const parser = new RecordParser();
    const got = [];
    for (let i = 0; i < whole.length; i++) got.push(...parser.push(whole.subarray(i, i + 1)));
    same(got, "byte by byte");
  });

  test("an incomplete record waits for the rest", () => {
    const parser = new RecordParser();
    assert.deepEqual(parser.push(bytes(0, 0, 0, 0, 3, 9)), []);
    assert.equal(parser.pending, 6);
    assert.deepEqual(parser.push(bytes(9)), []);
    const [r] = parser.push(bytes(9, 1, 0, 0));
    assert.deepEqual([r.kind, [...r.payload]], [0, [9, 9, 9]]);
    assert.equal(parser.pending, 3, "the next record's header has begun");
  });
});

test("the HTTP URL is derived from a WebSocket URL ending in /ws, and only from one", () => {
  assert.equal(httpUrlFor("ws://h:8080/v1/ws"), "http://h:8080/v1/http");
  assert.equal(httpUrlFor("wss://h/relay/ws?x=1"), "https://h/relay/http");
  assert.equal(httpUrlFor("ws://h/v1/wss"), undefined);
  assert.equal(httpUrlFor("ws://h/chat"), undefined);
  assert.equal(httpUrlFor("not a url"), undefined);
  const { fetch } = fakeFetch();
  assert.throws(() => new RelayPeer("ws://h/chat", { transports: ["http"], fetch }), /needs the `httpUrl` option.*\/ws/);
  assert.throws(() => new RelayPeer("ws://h/v1/ws", { transports: ["sse"], fetch }), /`transports` takes/);
  assert.throws(() => new RelayPeer("ws://h/v1/ws", { transports: [], fetch }), /`transports` takes/);
  assert.equal(new RelayPeer("ws://h/v1/ws", { transports: ["http"], fetch }).httpUrl, "http://h/v1/http");
  assert.equal(new RelayPeer("http://h/v1/ws", { transports: ["http"], fetch }).transport, null);
  // the default list over a URL of another shape: the WebSocket alone, which Node 20 lacks
  assert.throws(() => new RelayPeer("ws://h/chat", { fetch }), /no WebSocket implementation/);
});

/**
 * An HttpSocket whose session is open, with its events collected.
 * @param {{streamTimeout?: number, idle?: number}} [opts]
 */
async function opened({ streamTimeout = 3000, idle = 45, bodyBytes = 1 << 20 } = {}) {
  const relay = fakeFetch();
  const sock = new HttpSocket("http://relay.test/v1/http/", { fetch: relay.fetch, streamTimeout });
  /** @type {any[]} */
  const messages = [];
  /** @type {Promise<{code: number, reason: string}>} */
  const closed = new Promise((resolve) => (sock.onclose = resolve));
  sock.onmessage = (e) => messages.push(decode(e.data));
  const open = await relay.next("open");
  assert.equal(open.url, "http://relay.test/v1/http/open");
  assert.equal(open.headers["relay-session"], undefined);
  const onopen = new Promise((resolve) => (sock.onopen = resolve));
  open.respond(200, openAnswer("s3cret", { idle, bodyBytes }));
  await onopen;
  assert.equal(sock.readyState, HttpSocket.OPEN);
  return { relay, sock, messages, closed };
}

const env = (/** @type {object} */ e) => encode(e);

describe("HttpSocket", () => {
  test("open, then a stream with the secret in a header and the count received", async () => {
    const { relay, sock } = await opened();
    const stream = await relay.next("stream");
    assert.equal(stream.url, "http://relay.test/v1/http/stream");
    assert.equal(stream.headers["relay-session"], "s3cret");
    assert.equal(stream.headers["relay-received"], "0");
    for (const r of relay.all) assert.ok(!r.url.includes("s3cret"), "the secret never goes in a URL");
    sock.terminate();
  });

  test("sends: one POST in flight, what is written meanwhile batched into the next, seq counting up", async () => {
    const { relay, sock } = await opened();
    await relay.next("stream");
    sock.send(env({ type: "hello" }));
    const first = await relay.next("send");
    assert.equal(first.headers["relay-seq"], "1");
    assert.equal(first.headers["relay-session"], "s3cret");
    sock.send(env({ n: 1 }));
    sock.send(env({ n: 2 }));
    await new Promise((r) => setTimeout(r, 20));
    assert.equal(relay.all.filter((r) => r.name === "send").length, 1, "one send in flight");
    first.respond(204);
    const second = await relay.next("send");
    assert.equal(second.headers["relay-seq"], "2");
    const got = new RecordParser().push(second.body);
    assert.deepEqual(
      got.map((r) => [r.kind, decode(r.payload)]),
      [
        [ENVELOPE, { n: 1 }],
        [ENVELOPE, { n: 2 }],
      ],
    );
    second.respond(204);
    sock.terminate();
  });

  test("a batch stays within the body_bytes the relay's open answer gave", async () => {
    const { relay, sock } = await opened({ bodyBytes: 64 });
    await relay.next("stream");
    const payload = { d: "x".repeat(30) }; // 37 bytes of msgpack, 42 with its record header
    sock.send(env({ type: "hello" }));
    const first = await relay.next("send");
    sock.send(env(payload));
    sock.send(env(payload));
    first.respond(204);
    const second = await relay.next("send");
    assert.equal(new RecordParser().push(second.body).length, 1, "two would exceed 64 bytes");
    second.respond(204);
    const third = await relay.next("send");
    assert.equal(new RecordParser().push(third.body).length, 1);
    third.respond(204);
    sock.terminate();
  });

  test("a send refused with 503 or lost to a network error goes again: same seq, same body, after Retry-After", async () => {
    const { relay, sock } = await opened();
    await relay.next("stream");
    sock.send(env({ type: "hello" }));
    const first = await relay.next("send");
    const refusedAt = performance.now();
    first.respond(503, "draining", { "Retry-After": "0.3" });
    const again = await relay.next("send");
    assert.ok(performance.now() - refusedAt >= 280, "Retry-After honoured");
    again.fail();
    const third = await relay.next("send");
    for (const r of [again, third]) {
      assert.equal(r.headers["relay-seq"], "1");
      assert.deepEqual(r.body, first.body);
    }
    third.respond(204);
    sock.send(env({ n: 2 }));
    assert.equal((await relay.next("send")).headers["relay-seq"], "2");
    sock.terminate();
  });

  test("envelopes on the stream are delivered in order and reported with an ack; keepalives are answered", async () => {
    const { relay, sock, messages } = await opened();
    const stream = (await relay.next("stream")).stream();
    stream.write(records(KEEPALIVE, [bytes()]));
    const ack0 = await relay.next("ack");
    assert.equal(ack0.headers["relay-received"], "0", "a keepalive is answered even with nothing received");
    ack0.respond(204);
    const all = records(ENVELOPE, [env({ type: "welcome", id: "a" }), env({ type: "msg", d: 1 }), env({ type: "msg", d: 2 })]);
    stream.write(all.subarray(0, 7)); // split mid-record
    stream.write(all.subarray(7));
    const ack = await relay.next("ack");
    assert.deepEqual(
      messages.map((m) => m.type),
      ["welcome", "msg", "msg"],
    );
    assert.equal(ack.headers["relay-received"], "3");
    ack.respond(204);
    sock.terminate();
  });

  test("a cut stream is opened again with the count received", async () => {
    const { relay, sock, messages } = await opened();
    const stream = (await relay.next("stream")).stream();
    stream.write(records(ENVELOPE, [env({ type: "welcome" }), env({ type: "msg" })]));
    (await relay.next("ack")).respond(204);
    stream.end();
    const again = await relay.next("stream");
    assert.equal(again.headers["relay-received"], "2");
    assert.equal(messages.length, 2);
    sock.terminate();
  });

  test("no record within streamTimeout: long-poll from then on, each poll reporting the count", async () => {
    const { relay, sock, messages } = await opened({ streamTimeout: 100 });
    const stream = await relay.next("stream");
    const poll = await relay.next("poll");
    assert.equal(stream.signal?.aborted, true, "the silent stream was given up");
    assert.equal(poll.headers["relay-received"], "0");
    poll.respond(200, records(ENVELOPE, [env({ type: "welcome" }), env({ type: "msg" })]));
    const poll2 = await relay.next("poll");
    assert.equal(poll2.headers["relay-received"], "2");
    poll2.respond(200, records(KEEPALIVE, [bytes()]));
    const poll3 = await relay.next("poll");
    assert.equal(poll3.headers["relay-received"], "2");
    assert.equal(messages.length, 2);
    assert.equal(relay.all.filter((r) => r.name === "stream").length, 1, "no stream again in this session");
    sock.terminate();
  });

  test("a close record: reported with an ack, then onclose with its code and reason", async () => {
    const { relay, messages, closed } = await opened();
    const stream = (await relay.next("stream")).stream();
    stream.write(
      new Uint8Array([
        ...records(ENVELOPE, [env({ type: "welcome" })]),
        ...records(CLOSE, [encode({ code: 4008, reason: "slow consumer" })]),
      ]),
    );
    const e = await closed;
    assert.deepEqual([e.code, e.reason], [4008, "slow consumer"]);
    assert.equal(messages.length, 1);
    const ack = await relay.next("ack");
    assert.equal(ack.headers["relay-received"], "1");
  });

  test("404 or 409: the session is lost, closed as a dropped WebSocket (1006)", async () => {
    for (const status of [404, 409]) {
      const { relay, sock, closed } = await opened();
      await relay.next("stream");
      sock.send(env({ type: "hello" }));
      (await relay.next("send")).respond(status, "unknown session");
      const e = await closed;
      assert.equal(e.code, 1006);
      assert.match(e.reason, new RegExp(`send: HTTP ${status} unknown session`));
      assert.equal(sock.readyState, HttpSocket.CLOSED);
    }
  });

  test("no successful request for idle_seconds: closed with 1006", async () => {
    const { relay, closed } = await opened({ idle: 0.2 });
    const stream = await relay.next("stream");
    const e = await closed;
    assert.equal(e.code, 1006);
    assert.match(e.reason, /no answer from the relay for 0.2 s/);
    assert.equal(stream.signal?.aborted, true);
  });

  test("an open refused (503) closes with 1006 and never opens", async () => {
    const relay = fakeFetch();
    const sock = new HttpSocket("http://relay.test/v1/http", { fetch: relay.fetch });
    let opens = 0;
    sock.onopen = () => opens++;
    const closed = new Promise((resolve) => (sock.onclose = resolve));
    (await relay.next("open")).respond(503, "too many connections", { "Retry-After": "1" });
    const e = /** @type {any} */ (await closed);
    assert.equal(e.code, 1006);
    assert.match(e.reason, /open: HTTP 503 too many connections/);
    assert.equal(opens, 0);
  });

  test("close(): what was sent goes first, then POST close, then onclose 1000", async () => {
    const { relay, sock, closed } = await opened();
    await relay.next("stream");
    sock.send(env({ type: "hello" }));
    const send = await relay.next("send");
    sock.close(1000, "bye");
    assert.equal(sock.readyState, HttpSocket.CLOSING);
    await new Promise((r) => setTimeout(r, 20));
    assert.ok(!relay.all.some((r) => r.name === "close"), "close waits for the send in flight");
    send.respond(204);
    const close = await relay.next("close");
    assert.equal(close.headers["relay-session"], "s3cret");
    close.respond(204);
    const e = await closed;
    assert.deepEqual([e.code, e.reason], [1000, "bye"]);
  });
});

test("fallback: a WebSocket that never opens gives way to HTTP after fallbackTimeout; the next reconnect tries it first again", async () => {
  /** @type {any[]} */
  const sockets = [];
  class SilentWebSocket {
    constructor(/** @type {string} */ url) {
      this.url = url;
      this.closed = false;
      sockets.push(this);
    }
    send() {}
    close() {
      this.closed = true;
    }
  }
  const relay = fakeFetch();
  const connecting = new RelayPeer("ws://relay.test/v1/ws", {
    WebSocket: /** @type {any} */ (SilentWebSocket),
    fetch: relay.fetch,
    fallbackTimeout: 100,
    backoff: { base: 1, max: 1 },
  })._start();
  /** Plays the relay for one HTTP session: welcome the hello; returns the stream. */
  const session = async (/** @type {string} */ secret) => {
    (await relay.next("open")).respond(200, openAnswer(secret));
    const stream = (await relay.next("stream")).stream();
    const send = await relay.next("send");
    const [hello] = new RecordParser().push(send.body).map((r) => decode(r.payload));
    send.respond(204);
    stream.write(records(ENVELOPE, [encode({ type: "welcome", id: "a", resume: `resume-${secret}`, resumed: hello.resume !== undefined })]));
    return { stream, hello: /** @type {any} */ (hello) };
  };
  const t0 = performance.now();
  const first = await session("one");
  const p = await connecting;
  assert.ok(performance.now() - t0 >= 90, "the WebSocket had its fallbackTimeout");
  assert.equal(sockets.length, 1);
  assert.equal(sockets[0].closed, true, "the WebSocket that never opened was given up");
  assert.equal(p.transport, "http");
  assert.equal(first.hello.resume, undefined);
  // The relay restarts (1012): a full reconnect, the WebSocket first again.
  const reconnected = new Promise((resolve) => p.addEventListener("open", resolve, { once: true }));
  first.stream.write(records(CLOSE, [encode({ code: 1012, reason: "restart" })]));
  const second = await session("two");
  await reconnected;
  assert.equal(sockets.length, 2, "the reconnect tried a WebSocket first");
  assert.equal(second.hello.resume, "resume-one");
  assert.equal(p.transport, "http");
  const closing = p.close();
  (await relay.next("close")).respond(204);
  await closing;
  assert.equal(p.transport, null);
});
