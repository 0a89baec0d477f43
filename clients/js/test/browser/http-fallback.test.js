// The HTTP fallback in Chromium behind the proxies it exists for (issue 20):
// a page served through nginx connects with the unmodified client and its
// default options, talks with a Node peer on a WebSocket, joins a room, gets
// ok and err answers, and goes on after its stream or poll is cut.
//
//   browser → nginx (tests/deploy/nginx.py) → a severable TCP hop → relay
//
// "upgrade-refusing" does not pass WebSocket upgrades, so the client falls
// back and streams; "buffering" also holds responses back, so the client
// finds no record on its stream within 3 s and long-polls. nginx's access log
// shows which requests went through.
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { mkdirSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { after, afterEach, before, describe, test } from "node:test";
import { closePages, launchChromium } from "../chromium.js";
import { PYTHON, REPO, nextEvent, peer, startProxy, startRelay, uid } from "../helpers.js";

const RESULTS = join(REPO, "clients", "js", "test-results");

/**
 * One of tests/deploy/nginx.py's proxies in front of `upstream` (host:port), until `stop()`.
 * @param {string} kind
 * @param {string} upstream
 * @returns {Promise<{url: string, requests: () => string[][], stop: () => Promise<unknown>}>}
 */
function startNginx(kind, upstream) {
  const proc = spawn(PYTHON, ["-m", "tests.deploy.nginx", kind, upstream], {
    cwd: REPO,
    stdio: ["ignore", "pipe", "pipe"],
  });
  const exited = new Promise((resolve) => proc.once("exit", resolve));
  let out = "";
  let err = "";
  proc.stderr.on("data", (chunk) => (err += chunk));
  return new Promise((resolve, reject) => {
    exited.then((code) => reject(new Error(`tests/deploy/nginx.py exited (${code}):\n${err}`)));
    proc.stdout.on("data", (chunk) => {
      out += chunk;
      const ready = /nginx ready on (\S+), access log (\S+)/.exec(out);
      if (!ready) return;
      resolve({
        url: ready[1],
        /** [method, path, status, upstream] per request nginx finished */
        requests: () =>
          readFileSync(ready[2], "utf8")
            .split("\n")
            .filter(Boolean)
            .map((line) => line.split(" ")),
        stop: () => {
          proc.kill("SIGTERM");
          return exited;
        },
      });
    });
  });
}

describe("the HTTP fallback in a browser behind proxies that break WebSockets", () => {
  /** @type {Awaited<ReturnType<typeof startRelay>>} */
  let relay;
  /** @type {import("playwright-core").Browser} */
  let browser;
  /** @type {import("playwright-core").Page[]} */
  let pages = [];
  /** @type {(() => Promise<unknown>)[]} */
  let cleanups = [];

  before(async () => {
    mkdirSync(RESULTS, { recursive: true });
    relay = await startRelay();
    browser = await launchChromium();
  });
  afterEach(async (t) => {
    await closePages(t, pages, RESULTS);
    pages = [];
    for (const cleanup of cleanups.reverse()) await cleanup();
    cleanups = [];
  });
  after(async () => {
    await browser?.close();
    await relay?.stop();
  });

  for (const kind of ["upgrade-refusing", "buffering"]) {
    test(`behind ${kind} nginx: default options fall back to HTTP, exchange, room, ok/err, and survive a cut`, async () => {
      const hop = await startProxy(relay.url);
      cleanups.push(() => hop.close());
      const nginx = await startNginx(kind, new URL(hop.url).host);
      cleanups.push(() => nginx.stop());
      const node = await peer(relay.url, { id: uid("node") });
      cleanups.push(() => node.close());

      const context = await browser.newContext();
      const page = await context.newPage();
      pages.push(page);
      const res = await page.goto(`${nginx.url}/`);
      assert.equal(res?.status(), 200, "the relay's page, through nginx");
      const pageId = await page.evaluate(async () => {
        const { connect } = await import("/client.js");
        const w = /** @type {any} */ (window);
        w.got = [];
        w.peer = await connect(new URL("/v1/ws", location.href).href.replace(/^http/, "ws"));
        w.peer.addEventListener("message", (/** @type {any} */ e) => w.got.push(e.room ? { room: e.room, data: e.data } : e.data));
        return /** @type {string} */ (w.peer.id);
      });
      const refusedUpgrades = nginx.requests().filter(([method, path]) => method === "GET" && path === "/v1/ws");
      assert.ok(refusedUpgrades.length >= 1 && refusedUpgrades.every(([, , status]) => status !== "101"), "the WebSocket was tried, and refused");
      const transport = () => page.evaluate(() => /** @type {any} */ (window).peer.transport);
      assert.equal(await transport(), "http");

      /** What the page does and what the node sees, both ways, with the answers. */
      const exchange = async (/** @type {string} */ text) => {
        const heard = nextEvent(node, "message", (e) => e.data === `${text}: from the page`, 15_000);
        await page.evaluate(([to, data]) => /** @type {any} */ (window).peer.send(to, data), [node.id ?? "", `${text}: from the page`]);
        assert.equal(/** @type {any} */ (await heard).from, pageId);
        await node.send(pageId, `${text}: from the node`); // resolves on ok: the page reported it received
        await page.waitForFunction((data) => /** @type {any} */ (window).got.includes(data), `${text}: from the node`, { timeout: 15_000 });
      };

      await exchange("first");
      await page.evaluate(() => /** @type {any} */ (window).peer.join("room"));
      await node.publish("room", "to the room");
      await page.waitForFunction(() => /** @type {any} */ (window).got.some((m) => m.room === "room" && m.data === "to the room"), undefined, { timeout: 15_000 });
      const err = await page.evaluate(() => /** @type {any} */ (window).peer.send("nobody-here", 1).then(() => "no error", (/** @type {Error} */ e) => e.name));
      assert.equal(err, "PeerOffline");

      hop.sever(); // the stream (or the pending poll) is cut between nginx and the relay
      await exchange("after the cut");
      assert.equal(await page.evaluate(() => /** @type {any} */ (window).peer.id), pageId);
      assert.equal(await transport(), "http");

      const paths = nginx.requests().map(([, path, status]) => `${path} ${status}`);
      assert.equal(paths.filter((p) => p.startsWith("/v1/http/open ")).length, 1, "one HTTP session throughout");
      const polls = paths.filter((p) => p === "/v1/http/poll 200").length;
      if (kind === "buffering") {
        assert.ok(polls >= 4, `long-polled: ${paths.join(", ")}`);
      } else {
        assert.equal(polls, 0, `streamed: ${paths.join(", ")}`);
        assert.ok(paths.some((p) => p.startsWith("/v1/http/stream ")), `the cut stream: ${paths.join(", ")}`);
      }
      await page.evaluate(() => /** @type {any} */ (window).peer.close());
    });
  }
});
