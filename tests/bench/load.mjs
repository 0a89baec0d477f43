// Load generator for tests/bench/bench.py: Node + ws, so the generator is not
// what saturates first. One scenario per run. On stdout it prints one JSON line
// when the measured window opens ({"event":"measuring"}), one when it closes
// ({"event":"measured"}), so bench.py can read both sides' CPU time at exactly
// those moments, then one JSON line of results. `closed` counts the sockets the
// server closed during the run, by close code (room: the members only).
//
//   node tests/bench/load.mjs pairs --url ws://127.0.0.1:8080/v1/ws --pairs 50 --inflight 16 --size 64 --seconds 10
//   node tests/bench/load.mjs fixed --url ... --pairs 50 --rate 2000 --size 64 --seconds 10
//   node tests/bench/load.mjs pairs --url ws://node-a/v1/ws --echo-url ws://node-b/v1/ws ...
//   node tests/bench/load.mjs room  --url ... --members 200 --rate 500 --size 64 --seconds 10 --grace 2
//   node tests/bench/load.mjs idle  --url ... --steps 5000,10000   (holds them until stdin closes)
//   node tests/bench/load.mjs storm --url ... --clients 18000 --window 200 --per-address 4000 --restart 1
//
// idle opens connections up to each of --steps in turn, printing a line at each and waiting for
// a line on stdin before the next. storm connects and registers --clients, --window at a time,
// from 127.0.0.2, 127.0.0.3, ... (--per-address each: one address's ephemeral ports would not
// last a restart; --first-address N starts at 127.0.0.N), between a "measuring" and a "measured" line; with --restart 1 it then prints
// {"event":"registered"} and every client reconnects as soon as the server closes it (a fresh
// hello, retried every 100-300 ms while refused), and the result says how long all took to be
// back, counted from the first close.
//
// --echo-url puts the echoing side of every pair (pairs, fixed) on another relay node
// (tests/bench_cluster.py's split pairs); by default both sides use --url.
//
// --transport http runs pairs and fixed over the relay's HTTP transport instead
// (tests/bench/http_peer.mjs): bench.py's "relay-http" server.
//
// --ids 1 puts an id on every send of pairs and fixed, so the relay answers each
// with an ok (sent once the target's host acknowledged the message); the
// generator ignores the oks. Node ws and the bare forwarder answer nothing.
//
// ws masks frames with bufferutil (tests/bench/package.json), as a production
// client would; JavaScript masking of 64 KiB frames would otherwise be the limit.
import { performance } from "node:perf_hooks";

import { Decoder, Encoder } from "@msgpack/msgpack";
import WebSocket from "ws";

import { HttpPeer, httpBase } from "./http_peer.mjs";
import { openStormClient } from "./storm_client.mjs";

// One codec for the run, not one per call, to keep the generator's CPU low.
// `encode` returns a fresh copy, so a frame handed to ws.send is never reused.
const encoder = new Encoder();
const decoder = new Decoder();
const encode = (value) => encoder.encode(value);
const decode = (data) => decoder.decode(data);

const [mode, ...rest] = process.argv.slice(2);
const opts = { url: "ws://127.0.0.1:8080/v1/ws", pairs: 50, inflight: 16, size: 64, seconds: 10,
  rate: 2000, members: 200, steps: "5000", warmup: 2, grace: 2, ids: 0, clients: 18000, window: 200,
  "per-address": 4000, "first-address": 2, restart: 0, transport: "websocket", "echo-url": "",
  run: "" };
for (let i = 0; i < rest.length; i += 2) opts[rest[i].replace(/^--/, "")] = rest[i + 1];
for (const k of Object.keys(opts)) if (!["url", "steps", "transport", "echo-url", "run"].includes(k)) opts[k] = Number(opts[k]);

// fresh ids per run: old ones wait for a resume (a room's publisher process takes its parent's)
const run = opts.run || Math.random().toString(36).slice(2, 8);

// `phases`, if given, gets [ms until the 101, ms from the 101 to the welcome] of this connection.
function open(name, localAddress = undefined, phases = undefined, url = opts.url) {
  const id = `${run}-${name}`;
  if (opts.transport === "http") return openHttp(id, url);
  return new Promise((resolve, reject) => {
    const start = performance.now();
    let upgraded = start;
    const ws = new WebSocket(url, "relay.v1", { perMessageDeflate: false, localAddress });
    ws.binaryType = "nodebuffer";
    // kept after the welcome: a server killed under its clients resets their sockets
    ws.on("error", reject);
    ws.once("close", () => reject(new Error("closed before the welcome")));
    ws.once("open", () => {
      upgraded = performance.now();
      ws.send(encode({ type: "hello", id }));
    });
    ws.once("message", (data) => {
      const welcome = decode(data);
      if (welcome.type !== "welcome") reject(new Error(`hello refused: ${JSON.stringify(welcome)}`));
      else {
        phases?.push([upgraded - start, performance.now() - upgraded]);
        resolve(ws);
      }
    });
  });
}

// --transport http: the relay's HTTP transport (tests/bench/http_peer.mjs), same events.
async function openHttp(id, url) {
  const peer = new HttpPeer(httpBase(url));
  const welcome = new Promise((resolve, reject) => {
    peer.once("message", (data) => resolve(decode(data)));
    peer.once("close", (code) => reject(new Error(`closed before the welcome: ${code}`)));
  });
  await peer.start();
  peer.send(encode({ type: "hello", id }));
  const answer = await welcome;
  if (answer.type !== "welcome") throw new Error(`hello refused: ${JSON.stringify(answer)}`);
  return peer;
}

async function openAll(ids, batch = 200, url = opts.url) {
  const sockets = [];
  for (let i = 0; i < ids.length; i += batch) {
    const opened = ids.slice(i, i + batch).map((name) => open(name, undefined, undefined, url));
    sockets.push(...(await Promise.all(opened)));
  }
  return sockets;
}

function percentile(sorted, p) {
  if (!sorted.length) return null;
  return sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))];
}

function summary(latencies, counted, seconds, extra = {}) {
  latencies.sort((a, b) => a - b);
  return { mode, ...extra, seconds, relayed_per_second: Math.round(counted / seconds),
    p50_ms: percentile(latencies, 50), p99_ms: percentile(latencies, 99), samples: latencies.length };
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

// Calls fire() `rate` times a second: a 1 ms tick catches up on whatever is due.
function atRate(rate, fire) {
  const start = performance.now();
  let fired = 0;
  return setInterval(() => {
    const due = Math.floor(((performance.now() - start) / 1000) * rate);
    for (; fired < due; fired++) fire();
  }, 1);
}

let finishing = false; // set before the generator closes its own sockets

// Counts, by close code, the sockets the server closes before the run ends.
function countCloses(sockets) {
  const closed = {};
  for (const ws of sockets) {
    ws.on("close", (code) => { if (!finishing) closed[code] = (closed[code] ?? 0) + 1; });
  }
  return closed;
}

function finish(sockets) {
  finishing = true;
  sockets.forEach((ws) => ws.terminate());
}

const mark = (event) => console.log(JSON.stringify({ event }));

// Runs the warm-up, then measures for opts.seconds; returns the elapsed seconds.
async function measure(setMeasuring) {
  await sleep(opts.warmup * 1000);
  setMeasuring(true);
  mark("measuring");
  const t0 = performance.now();
  await sleep(opts.seconds * 1000);
  setMeasuring(false);
  mark("measured");
  return (performance.now() - t0) / 1000;
}
const payload = new Uint8Array(opts.size).fill(120);

async function pingPong(fixedRate) {
  const pingers = await openAll([...Array(opts.pairs).keys()].map((i) => `a${i}`));
  const echoers = await openAll([...Array(opts.pairs).keys()].map((i) => `b${i}`), 200,
    opts["echo-url"] || opts.url);
  const closed = countCloses([...pingers, ...echoers]);
  let measuring = false, relayed = 0, seq = 0;
  const latencies = [];
  const sentAt = new Map();
  echoers.forEach((ws, i) => ws.on("message", (data) => {
    const m = decode(data);
    if (m.type !== "msg") return;
    const reply = { type: "send", to: `${run}-a${i}`, d: m.d, re: m.rid };
    if (opts.ids) reply.id = m.rid;
    ws.send(encode(reply));
    if (measuring) relayed++;
  }));
  const fire = (ws, i) => {
    const rid = ++seq;
    sentAt.set(rid, performance.now());
    const request = { type: "send", to: `${run}-b${i}`, d: payload, rid };
    if (opts.ids) request.id = rid;
    ws.send(encode(request));
  };
  pingers.forEach((ws, i) => ws.on("message", (data) => {
    const m = decode(data);
    if (m.type !== "msg") return;
    const t0 = sentAt.get(m.re);
    sentAt.delete(m.re);
    if (measuring) { relayed++; latencies.push(performance.now() - t0); }
    if (!fixedRate) fire(ws, i);
  }));
  let timer;
  if (fixedRate) {
    let next = 0; // round-robin over the pairs
    timer = atRate(opts.rate, () => { fire(pingers[next], next); next = (next + 1) % opts.pairs; });
  } else {
    pingers.forEach((ws, i) => { for (let k = 0; k < opts.inflight; k++) fire(ws, i); });
  }
  const elapsed = await measure((on) => { measuring = on; });
  clearInterval(timer);
  const result = summary(latencies, relayed, elapsed, { pairs: opts.pairs, size: opts.size,
    ...(fixedRate ? { target_rt_per_second: opts.rate } : { inflight: opts.inflight }), closed });
  finish([...pingers, ...echoers]);
  return result;
}

// One publisher, opts.members members. The rate figure counts deliveries in the
// window; the share counts, for the messages published in the window, how many
// of members × published reached a member, waiting up to opts.grace seconds
// after the window for those still on their way.
//
// The publisher is a process of its own (this file's `publisher` mode, over IPC):
// in the members' event loop its clock would wait while they read a fan-out,
// and the late publishes would then leave at once. Both stamp time as
// performance.timeOrigin + performance.now(), which two processes share.
const epochNow = () => performance.timeOrigin + performance.now();

async function room() {
  const members = await openAll([...Array(opts.members).keys()].map((i) => `m${i}`));
  await Promise.all(members.map((ws) => new Promise((resolve) => {
    ws.once("message", resolve);
    ws.send(encode({ type: "join", room: "bench", id: 1 }));
  })));
  const closed = countCloses(members);
  const publisher = await startPublisher();
  let measuring = false, delivered = 0, window = null, arrived = 0, expected = null;
  let allArrived;
  const everyArrival = new Promise((resolve) => { allArrived = resolve; });
  const latencies = [];
  members.forEach((ws) => ws.on("message", (data) => {
    const m = decode(data);
    if (m.type !== "msg") return;
    const now = epochNow();
    const [sentAt] = m.d;
    if (window !== null && sentAt >= window[0] && (window[1] === null || sentAt < window[1])
        && ++arrived === expected) allArrived();
    if (!measuring) return;
    delivered++;
    latencies.push(now - sentAt);
  }));
  publisher.send({ publish: opts.rate });
  const elapsed = await measure((on) => {
    measuring = on;
    if (on) window = [epochNow(), null];
    else window[1] = epochNow(); // published from now on is outside the window
  });
  const published = await publisher.ask({ stop: window }); // the publishes inside it
  expected = published * opts.members;
  if (arrived < expected) await Promise.race([everyArrival, sleep(opts.grace * 1000)]);
  const result = summary(latencies, delivered, elapsed, { members: opts.members,
    publish_rate: opts.rate, size: opts.size, expected_per_second: opts.rate * opts.members,
    published, delivered_share: expected ? arrived / expected : null, closed });
  finish(members);
  publisher.kill();
  return result;
}

// The room's publisher process: registered when this resolves; `send` and `ask` talk to it.
async function startPublisher() {
  const { fork } = await import("node:child_process");
  const args = ["publisher", "--url", opts.url, "--size", String(opts.size), "--run", run];
  const child = fork(new URL(import.meta.url).pathname, args, { stdio: ["ignore", "ignore", "inherit", "ipc"] });
  const replies = [];
  child.on("message", (message) => replies.shift()?.(message));
  const ask = (message) => new Promise((resolve) => { replies.push(resolve); child.send(message); });
  child.once("exit", (code) => { if (!finishing && code) { console.error(`publisher exited ${code}`); process.exit(1); } });
  await ask({ ready: true });
  return { send: (message) => child.send(message), ask, kill: () => child.kill() };
}

// `publisher` mode: the room's publisher, driven over IPC by a room run (not for the command line).
async function publisherProcess() {
  const [socket] = await openAll(["publisher"]);
  const sentAt = [];
  let timer;
  process.on("message", (message) => {
    if (message.ready) process.send(true);
    else if (message.publish) {
      timer = atRate(message.publish, () => {
        const now = epochNow();
        sentAt.push(now);
        socket.send(encode({ type: "pub", room: "bench", d: [now, sentAt.length, payload] }));
      });
    } else if (message.stop) {
      clearInterval(timer);
      const [from, to] = message.stop;
      process.send(sentAt.filter((t) => t >= from && t < to).length);
    }
  });
  await new Promise(() => {}); // until the room run kills it
}

const stdinLines = (async function* () {
  const lines = (await import("node:readline")).createInterface({ input: process.stdin });
  yield* lines;
})();

async function idle() {
  const sockets = [];
  for (const step of opts.steps.split(",").map(Number)) {
    const ids = [...Array(step - sockets.length).keys()].map((i) => `idle${sockets.length + i}`);
    sockets.push(...(await openAll(ids, 500)));
    console.log(JSON.stringify({ mode, connections: sockets.length, ready: true }));
    await stdinLines.next(); // bench.py has read the server's RSS
  }
  finish(sockets);
  return null;
}

// The storm's clients are bare-socket ones (tests/bench/storm_client.mjs): `ws` clients cost the
// generator more per connection than either server spends.
function openLean(name, localAddress, phases = undefined) {
  const hello = encode({ type: "hello", id: `${run}-${name}` });
  return openStormClient(opts.url, hello, (data) => decode(data).type === "welcome", localAddress,
    phases);
}

async function storm() {
  const address = (i) => `127.0.0.${opts["first-address"] + Math.floor(i / opts["per-address"])}`;
  const sockets = new Array(opts.clients);
  const phases = []; // where each client waited: for the 101, then for the welcome
  let next = 0;
  const connectEach = async () => {
    while (next < opts.clients) {
      const i = next++;
      sockets[i] = await openLean(`s${i}`, address(i), phases);
    }
  };
  mark("measuring");
  const t0 = performance.now();
  await Promise.all(Array.from({ length: Math.min(opts.window, opts.clients) }, connectEach));
  const seconds = (performance.now() - t0) / 1000;
  mark("measured");
  const mean = (k) => phases.reduce((sum, p) => sum + p[k], 0) / phases.length;
  const result = { mode, clients: opts.clients, window: opts.window, connect_seconds: seconds,
    registered_per_second: Math.round(opts.clients / seconds),
    upgrade_ms: mean(0), welcome_ms: mean(1) };
  if (!opts.restart) {
    finish(sockets);
    return result;
  }
  let firstClose = null, back = 0, retries = 0, allBack;
  const everyoneBack = new Promise((resolve) => { allBack = resolve; });
  const reconnect = (i) => openLean(`s${i}`, address(i)).then((ws) => {
    sockets[i] = ws;
    if (++back === opts.clients) allBack(performance.now());
  }, () => { retries++; setTimeout(() => reconnect(i), 100 + 200 * Math.random()); });
  sockets.forEach((ws, i) => ws.once("close", () => {
    if (finishing) return;
    firstClose ??= performance.now();
    reconnect(i);
  }));
  console.log(JSON.stringify({ event: "registered", connections: opts.clients }));
  const lastBack = await everyoneBack;
  finish(sockets);
  return { ...result, back_seconds: (lastBack - firstClose) / 1000, retries };
}

const scenario = { pairs: () => pingPong(false), fixed: () => pingPong(true), room, idle, storm,
  publisher: publisherProcess }[mode];
if (!scenario) {
  console.error("usage: load.mjs pairs|fixed|room|idle|storm [--url U] [--pairs N] ...");
  process.exit(2);
}
const result = await scenario();
if (result) console.log(JSON.stringify(result));
process.exit(0);
