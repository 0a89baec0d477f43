// Load generator for tests/bench/bench.py: Node + ws, so the generator is not
// what saturates first. One scenario per run; prints one JSON line of results.
//
//   node tests/bench/load.mjs pairs --url ws://127.0.0.1:8080/v1/ws --pairs 50 --inflight 16 --size 64 --seconds 10
//   node tests/bench/load.mjs fixed --url ... --pairs 50 --rate 2000 --size 64 --seconds 10
//   node tests/bench/load.mjs room  --url ... --members 200 --rate 500 --size 64 --seconds 10
//   node tests/bench/load.mjs idle  --url ... --connections 5000   (holds them until stdin closes)
import { createRequire } from "node:module";
import { performance } from "node:perf_hooks";
import { fileURLToPath } from "node:url";

const require = createRequire(fileURLToPath(new URL("../../clients/js/package.json", import.meta.url)));
const WebSocket = require("ws");
const { encode, decode } = await import(
  new URL("../../clients/js/node_modules/@msgpack/msgpack/dist.esm/index.mjs", import.meta.url)
);

const [mode, ...rest] = process.argv.slice(2);
const opts = { url: "ws://127.0.0.1:8080/v1/ws", pairs: 50, inflight: 16, size: 64, seconds: 10,
  rate: 2000, members: 200, connections: 5000, warmup: 2 };
for (let i = 0; i < rest.length; i += 2) opts[rest[i].replace(/^--/, "")] = rest[i + 1];
for (const k of Object.keys(opts)) if (k !== "url") opts[k] = Number(opts[k]);

const run = Math.random().toString(36).slice(2, 8); // fresh ids per run: old ones wait for a resume

function open(name) {
  const id = `${run}-${name}`;
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(opts.url, "relay.v1", { perMessageDeflate: false });
    ws.binaryType = "nodebuffer";
    ws.once("error", reject);
    ws.once("open", () => ws.send(encode({ type: "hello", id })));
    ws.once("message", (data) => {
      const welcome = decode(data);
      if (welcome.type !== "welcome") reject(new Error(`hello refused: ${JSON.stringify(welcome)}`));
      else resolve(ws);
    });
  });
}

async function openAll(ids, batch = 200) {
  const sockets = [];
  for (let i = 0; i < ids.length; i += batch) {
    sockets.push(...(await Promise.all(ids.slice(i, i + batch).map(open))));
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

// Runs the warm-up, then measures for opts.seconds; returns the elapsed seconds.
async function measure(setMeasuring) {
  await sleep(opts.warmup * 1000);
  setMeasuring(true);
  const t0 = performance.now();
  await sleep(opts.seconds * 1000);
  setMeasuring(false);
  return (performance.now() - t0) / 1000;
}
const payload = new Uint8Array(opts.size).fill(120);

async function pingPong(fixedRate) {
  const pingers = await openAll([...Array(opts.pairs).keys()].map((i) => `a${i}`));
  const echoers = await openAll([...Array(opts.pairs).keys()].map((i) => `b${i}`));
  let measuring = false, relayed = 0, seq = 0;
  const latencies = [];
  const sentAt = new Map();
  echoers.forEach((ws, i) => ws.on("message", (data) => {
    const m = decode(data);
    if (m.type !== "msg") return;
    ws.send(encode({ type: "send", to: `${run}-a${i}`, d: m.d, re: m.rid }));
    if (measuring) relayed++;
  }));
  const fire = (ws, i) => {
    const rid = ++seq;
    sentAt.set(rid, performance.now());
    ws.send(encode({ type: "send", to: `${run}-b${i}`, d: payload, rid }));
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
    ...(fixedRate ? { target_rt_per_second: opts.rate } : { inflight: opts.inflight }) });
  [...pingers, ...echoers].forEach((ws) => ws.terminate());
  return result;
}

async function room() {
  const members = await openAll([...Array(opts.members).keys()].map((i) => `m${i}`));
  await Promise.all(members.map((ws) => new Promise((resolve) => {
    ws.once("message", resolve);
    ws.send(encode({ type: "join", room: "bench", id: 1 }));
  })));
  const [publisher] = await openAll(["publisher"]);
  let measuring = false, delivered = 0;
  const latencies = [];
  members.forEach((ws) => ws.on("message", (data) => {
    const m = decode(data);
    if (m.type !== "msg" || !measuring) return;
    delivered++;
    latencies.push(performance.now() - m.d[0]);
  }));
  const timer = atRate(opts.rate, () =>
    publisher.send(encode({ type: "pub", room: "bench", d: [performance.now(), payload] })));
  const elapsed = await measure((on) => { measuring = on; });
  clearInterval(timer);
  const result = summary(latencies, delivered, elapsed, { members: opts.members,
    publish_rate: opts.rate, size: opts.size, expected_per_second: opts.rate * opts.members });
  [...members, publisher].forEach((ws) => ws.terminate());
  return result;
}

async function idle() {
  const sockets = await openAll([...Array(opts.connections).keys()].map((i) => `idle${i}`), 500);
  console.log(JSON.stringify({ mode, connections: sockets.length, ready: true }));
  process.stdin.resume();
  await new Promise((resolve) => process.stdin.on("end", resolve));
  sockets.forEach((ws) => ws.terminate());
  return null;
}

const scenario = { pairs: () => pingPong(false), fixed: () => pingPong(true), room, idle }[mode];
if (!scenario) {
  console.error("usage: load.mjs pairs|fixed|room|idle [--url U] [--pairs N] ...");
  process.exit(2);
}
const result = await scenario();
if (result) console.log(JSON.stringify(result));
process.exit(0);
