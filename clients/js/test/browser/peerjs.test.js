// Real-browser test of the PeerJS-compatible endpoint: the unmodified `peerjs`
// npm package (its dist bundle, served by a local page server on another
// origin than the relay) runs in Debian's chromium against `relay serve`.
import assert from "node:assert/strict";
import { existsSync, readFileSync } from "node:fs";
import { createServer } from "node:http";
import { join } from "node:path";
import { after, afterEach, before, describe, test } from "node:test";
import { launchChromium } from "../chromium.js";
import { REPO, startRelay, uid } from "../helpers.js";

const PEERJS = join(REPO, "clients", "js", "node_modules", "peerjs", "dist", "peerjs.min.js");
const PAGE = `<!doctype html><meta charset="utf-8"><title>PeerJS app</title><script src="/peerjs.min.js"></script>`;

/** A page server on 127.0.0.1: the PeerJS app, on an origin of its own. */
function startPageServer() {
  const bundle = readFileSync(PEERJS);
  const server = createServer((req, res) => {
    if (req.url === "/peerjs.min.js") {
      res.writeHead(200, { "content-type": "text/javascript" }).end(bundle);
    } else {
      res.writeHead(200, { "content-type": "text/html" }).end(PAGE);
    }
  });
  return new Promise((resolve) => {
    server.listen(0, "127.0.0.1", () => {
      const address = /** @type {import("node:net").AddressInfo} */ (server.address());
      resolve({ url: `http://127.0.0.1:${address.port}/`, close: () => new Promise((r) => server.close(r)) });
    });
  });
}

describe("an unmodified PeerJS app in chromium, with the relay as its PeerServer", () => {
  /** @type {Awaited<ReturnType<typeof startRelay>>} */
  let relay;
  /** @type {{url: string, close: () => Promise<unknown>}} */
  let site;
  /** @type {import("playwright-core").Browser} */
  let browser;
  /** @type {import("playwright-core").Page[]} */
  let pages = [];
  /** PeerJS options as an app would write them for this relay. */
  let options = {};

  before(async () => {
    assert.ok(existsSync(PEERJS), `no ${PEERJS}: run npm ci in clients/js`);
    relay = await startRelay(); // no extra flag: the PeerJS endpoint is on by default
    site = /** @type {any} */ (await startPageServer());
    browser = await launchChromium();
    // What the app passes: host, port and path (the key is PeerJS's default, "peerjs").
    options = { host: "127.0.0.1", port: Number(new URL(relay.url).port), path: "/peerjs" };
  });
  afterEach(async () => {
    for (const page of pages) await page.context().close();
    pages = [];
  });
  after(async () => {
    await browser?.close();
    await site?.close();
    await relay?.stop();
  });

  async function openApp() {
    const page = await (await browser.newContext()).newPage();
    pages.push(page);
    const errors = /** @type {string[]} */ ([]);
    page.on("pageerror", (e) => errors.push(String(e)));
    await page.goto(site.url);
    return { page, errors };
  }

  /**
   * Creates `window.peer` (`new Peer(id, options)`, id from the server when
   * null) with the relay's ICE servers, and resolves with its id once open.
   */
  function createPeer(/** @type {import("playwright-core").Page} */ page, /** @type {string | null} */ id) {
    return page.evaluate(
      async ({ id, options }) => {
        const ice = await (await fetch(`http://${options.host}:${options.port}/v1/ice-servers`)).json();
        // @ts-ignore -- the PeerJS bundle's global
        const peer = id ? new peerjs.Peer(id, { ...options, config: ice }) : new peerjs.Peer({ ...options, config: ice });
        // @ts-ignore
        window.peer = peer;
        return await new Promise((resolve, reject) => {
          peer.on("open", resolve);
          peer.on("error", (/** @type {any} */ e) => reject(new Error(`${e.type}: ${e.message}`)));
        });
      },
      { id, options },
    );
  }

  /** The type of the next error `window.peer` emits. */
  function nextErrorType(/** @type {import("playwright-core").Page} */ page) {
    return page.evaluate(
      // @ts-ignore
      () => new Promise((resolve) => window.peer.once("error", (/** @type {any} */ e) => resolve(e.type))),
    );
  }

  test("two pages connect through the relay and exchange messages over a DataConnection", async () => {
    const a = await openApp();
    const b = await openApp();
    const aliceId = uid("alice");
    assert.equal(await createPeer(a.page, aliceId), aliceId);
    const bobId = /** @type {string} */ (await createPeer(b.page, null)); // GET /peerjs/peerjs/id
    assert.match(bobId, /^[0-9a-f-]{36}$/);
    await b.page.evaluate(() => {
      // @ts-ignore
      window.peer.on("connection", (/** @type {any} */ conn) => {
        conn.on("data", (/** @type {any} */ data) => {
          // @ts-ignore
          window.received = { from: conn.peer, data };
          conn.send({ echo: data });
        });
      });
    });
    const reply = await a.page.evaluate(
      (bobId) =>
        new Promise((resolve, reject) => {
          // @ts-ignore
          const conn = window.peer.connect(bobId, { reliable: true });
          conn.on("open", () => conn.send("hello over PeerJS"));
          conn.on("data", resolve);
          conn.on("error", reject);
        }),
      bobId,
    );
    assert.deepEqual(reply, { echo: "hello over PeerJS" });
    // @ts-ignore
    assert.deepEqual(await b.page.evaluate(() => window.received), { from: aliceId, data: "hello over PeerJS" });
    assert.deepEqual(a.errors, []);
    assert.deepEqual(b.errors, []);
  });

  test("a taken id gives unavailable-id, an absent peer peer-unavailable, a wrong key server-error", async () => {
    const a = await openApp();
    const aliceId = uid("alice");
    await createPeer(a.page, aliceId);

    const b = await openApp();
    await assert.rejects(createPeer(b.page, aliceId), /Error: unavailable-id: ID ".*" is taken/);

    const unavailable = nextErrorType(a.page); // after --peerjs-expire-seconds (5)
    // @ts-ignore
    await a.page.evaluate((nobody) => window.peer.connect(nobody), uid("nobody"));
    assert.equal(await unavailable, "peer-unavailable");
    // @ts-ignore -- peer-unavailable is not fatal: the peer stays connected
    assert.equal(await a.page.evaluate(() => window.peer.disconnected), false);

    const c = await openApp();
    const saved = options;
    options = { ...options, key: "not-the-key" };
    try {
      await assert.rejects(createPeer(c.page, uid("carol")), /Error: server-error: Invalid key provided/);
    } finally {
      options = saved;
    }
  });
});
