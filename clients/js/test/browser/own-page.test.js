// Real-browser test of a page of one's own: docs/js-client.md's second
// snippet (absolute URLs) runs as written in a page served from another
// origin than the relay, which answers /client.js with CORS headers for the
// Origins of its `origins` setting. A page from an Origin it does not list
// cannot load the bundle.
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { createServer } from "node:http";
import { join } from "node:path";
import { after, afterEach, before, describe, test } from "node:test";
import { launchChromium } from "../chromium.js";
import { REPO, nextEvent, peer, startRelay } from "../helpers.js";

/** The docs' snippet for a page of one's own: the one importing /client.js by its absolute URL. */
function ownPageSnippet() {
  const doc = readFileSync(join(REPO, "docs", "js-client.md"), "utf8");
  const snippets = [...doc.matchAll(/```html\n(<script type="module">\n[\s\S]*?<\/script>\n)```/g)].map((m) => m[1]);
  const own = snippets.filter((s) => s.includes('from "http://127.0.0.1:8080/client.js"'));
  assert.equal(own.length, 1, "docs/js-client.md has one snippet importing the relay's /client.js by URL");
  return own[0];
}

/**
 * A page server on 127.0.0.1, an origin other than the relay's, serving its `html` at "/".
 * @returns {Promise<{origin: string, html: string, close: () => Promise<unknown>}>}
 */
function startPageServer() {
  const site = { origin: "", html: "", close: () => new Promise((r) => server.close(r)) };
  const server = createServer((_req, res) => {
    res.writeHead(200, { "content-type": "text/html; charset=utf-8" }).end(site.html);
  });
  return new Promise((resolve) => {
    server.listen(0, "127.0.0.1", () => {
      const { port } = /** @type {import("node:net").AddressInfo} */ (server.address());
      site.origin = `http://127.0.0.1:${port}`;
      resolve(site);
    });
  });
}

describe("a page of one's own, on another origin, using the relay", () => {
  /** @type {Awaited<ReturnType<typeof startPageServer>>} */
  let allowed;
  /** @type {Awaited<ReturnType<typeof startPageServer>>} */
  let other;
  /** @type {Awaited<ReturnType<typeof startRelay>>} */
  let relay;
  /** @type {import("playwright-core").Browser} */
  let browser;
  /** @type {import("playwright-core").BrowserContext[]} */
  let contexts = [];

  before(async () => {
    // Two sites, the relay allowing only the first; the page's URLs name the
    // relay, whose port is known once it runs.
    allowed = await startPageServer();
    other = await startPageServer();
    relay = await startRelay(["--origins", allowed.origin]);
    const snippet = ownPageSnippet().replaceAll("127.0.0.1:8080", new URL(relay.httpUrl).host);
    allowed.html = other.html = `<!doctype html><meta charset="utf-8"><title>my page</title>\n${snippet}`;
    browser = await launchChromium();
  });
  afterEach(async () => {
    for (const context of contexts) await context.close();
    contexts = [];
  });
  after(async () => {
    await browser?.close();
    await allowed?.close();
    await other?.close();
    await relay?.stop();
  });

  /** Opens `origin`'s page; what it reports as errors. */
  async function open(/** @type {string} */ origin) {
    const context = await browser.newContext();
    contexts.push(context);
    const page = await context.newPage();
    const errors = /** @type {string[]} */ ([]);
    page.on("pageerror", (e) => errors.push(String(e)));
    page.on("console", (m) => m.type() === "error" && errors.push(m.text()));
    const res = await page.goto(`${origin}/`);
    assert.equal(res?.status(), 200);
    return { page, errors };
  }

  test("the snippet runs as written in a page of an allowed Origin", async () => {
    const bob = await peer(relay.url, { id: "bob" });
    try {
      const got = nextEvent(bob, "message", undefined, 10_000);
      const { errors } = await open(allowed.origin);
      const message = /** @type {any} */ (await got);
      assert.deepEqual([message.from, message.data], ["carol", "hello from my own page"]);
      assert.deepEqual(errors, []);
    } finally {
      await bob.close();
    }
  });

  test("a page of an Origin the relay does not list cannot load /client.js", async () => {
    const context = await browser.newContext();
    contexts.push(context);
    const page = await context.newPage();
    const refused = page.waitForEvent("console", {
      predicate: (m) => m.type() === "error" && m.text().includes("blocked by CORS policy"),
      timeout: 10_000,
    });
    await page.goto(`${other.origin}/`);
    assert.match((await refused).text(), /\/client\.js' from origin 'http:\/\/127\.0\.0\.1:\d+' has been blocked/);
  });
});
