// Real-browser test: Debian's chromium (driven by playwright-core, which
// never downloads a browser) loads the demo page the relay serves at "/",
// two pages chat through the relay, then open a WebRTC data channel to each
// other with the relay as signaling and talk over it. The page also shows
// whatever else it receives, ends neutrally when left, and keeps a long error
// readable on a phone.
import assert from "node:assert/strict";
import { mkdirSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { after, afterEach, before, describe, test } from "node:test";
import { closePages, launchChromium } from "../chromium.js";
import { REPO, nextEvent, peer, startRelay, uid } from "../helpers.js";

const RESULTS = join(REPO, "clients", "js", "test-results");

describe("demo page in chromium", () => {
  /** @type {Awaited<ReturnType<typeof startRelay>>} */
  let relay;
  /** @type {import("playwright-core").Browser} */
  let browser;
  /** @type {import("playwright-core").Page[]} */
  let pages = [];

  before(async () => {
    mkdirSync(RESULTS, { recursive: true });
    relay = await startRelay();
    browser = await launchChromium();
  });
  afterEach(async (t) => {
    await closePages(t, pages, RESULTS);
    pages = [];
  });
  after(async () => {
    await browser?.close();
    await relay?.stop();
  });

  async function openPage(/** @type {{width: number, height: number}} */ viewport = { width: 1280, height: 800 }, query = "") {
    const context = await browser.newContext({ viewport });
    const page = await context.newPage();
    pages.push(page);
    const errors = [];
    page.on("pageerror", (e) => errors.push(e));
    page.on("console", (m) => m.type() === "error" && errors.push(m.text()));
    const res = await page.goto(`${relay.httpUrl}/${query}`);
    assert.equal(res?.status(), 200, "the relay serves the demo at /");
    return { page, errors };
  }

  async function joinAs(/** @type {import("playwright-core").Page} */ page, /** @type {string} */ id, /** @type {string} */ room) {
    await page.fill("#peer-id", id);
    await page.fill("#room", room);
    await page.click("#connect");
    await page.waitForSelector('#status[data-state="open"]');
    await page.waitForSelector(`#members li[data-peer="${id}"]`);
  }

  test("two pages chat through the relay, then over a WebRTC data channel", async () => {
    const room = uid("room");
    const alice = uid("alice");
    const bob = uid("bob");
    const a = await openPage();
    const b = await openPage();
    await joinAs(a.page, alice, room);
    await joinAs(b.page, bob, room);
    await a.page.waitForSelector(`#members li[data-peer="${bob}"]`);

    // chat through the relay
    await a.page.fill("#chat-input", "hello bob, via the relay");
    await a.page.click("#chat-send");
    await b.page.waitForSelector('#chat-log li:has-text("hello bob, via the relay")');
    await b.page.fill("#chat-input", "hi alice!");
    await b.page.press("#chat-input", "Enter");
    await a.page.waitForSelector('#chat-log li:has-text("hi alice!")');

    // direct channel: alice presses "Direct" next to bob; bob's page accepts
    await a.page.click(`#members li[data-peer="${bob}"] button`);
    await a.page.waitForSelector('#rtc-status[data-state="open"]', { timeout: 20_000 });
    await b.page.waitForSelector('#rtc-status[data-state="open"]', { timeout: 20_000 });
    // the signaling the relay carried is shown too, in words
    for (const { page } of [a, b]) {
      await page.locator("#rtc-log li.system", { hasText: "via the relay (WebRTC setup): connection " }).first().waitFor();
    }
    await a.page.fill("#rtc-input", "peer-to-peer hello");
    await a.page.click("#rtc-send");
    await b.page.waitForSelector('#rtc-log li:has-text("peer-to-peer hello")');
    await b.page.fill("#rtc-input", "and back");
    await b.page.press("#rtc-input", "Enter");
    await a.page.waitForSelector('#rtc-log li:has-text("and back")');

    // a file, peer-to-peer: 200 KiB, so it crosses the channel in many chunks
    const content = Buffer.alloc(200 * 1024, "relay file ");
    await a.page.setInputFiles("#rtc-file", { name: "notes.txt", mimeType: "text/plain", buffer: content });
    const link = b.page.locator('#rtc-log a[download="notes.txt"]');
    await link.waitFor({ timeout: 10_000 });
    assert.match(await link.textContent() ?? "", /notes\.txt \(200\.0 KiB\)/);
    const received = await link.evaluate(async (a) => (await fetch(/** @type {HTMLAnchorElement} */ (a).href)).text());
    assert.equal(received, content.toString());
    await a.page.waitForSelector('#rtc-log li:has-text("sent notes.txt")');

    // the channel is really peer-to-peer: its messages never went through the relay
    const chatLines = await b.page.locator("#chat-log li").allTextContents();
    assert.ok(!chatLines.some((t) => t.includes("peer-to-peer hello")));

    await a.page.screenshot({ path: join(RESULTS, "demo.png") });
    await b.page.setViewportSize({ width: 390, height: 844 });
    await b.page.screenshot({ path: join(RESULTS, "demo-mobile.png"), fullPage: true });
    assert.deepEqual(a.errors, []);
    assert.deepEqual(b.errors, []);
  });

  test("the page works over the HTTP transport: chat and WebRTC signaling with a WebSocket page", async () => {
    const room = uid("room");
    const alice = uid("alice");
    const bob = uid("bob");
    const a = await openPage(undefined, "?transports=http");
    const b = await openPage();
    await joinAs(a.page, alice, room);
    await joinAs(b.page, bob, room);
    assert.match(await a.page.locator("#status").textContent() ?? "", /connected over HTTP/);
    assert.doesNotMatch(await b.page.locator("#status").textContent() ?? "", /over HTTP/);
    await a.page.waitForSelector(`#members li[data-peer="${bob}"]`);
    await a.page.fill("#chat-input", "over http");
    await a.page.click("#chat-send");
    await b.page.waitForSelector('#chat-log li:has-text("over http")');
    await b.page.fill("#chat-input", "back over ws");
    await b.page.press("#chat-input", "Enter");
    await a.page.waitForSelector('#chat-log li:has-text("back over ws")');
    await a.page.click(`#members li[data-peer="${bob}"] button`);
    await a.page.waitForSelector('#rtc-status[data-state="open"]', { timeout: 20_000 });
    await b.page.waitForSelector('#rtc-status[data-state="open"]', { timeout: 20_000 });
    assert.deepEqual(a.errors, []);
    assert.deepEqual(b.errors, []);
  });

  test("the page shows every message it receives, as text, and leaving is not an error", async () => {
    const room = uid("room");
    const me = uid("page");
    const { page, errors } = await openPage();
    await joinAs(page, me, room);
    const other = await peer(relay.url, { id: uid("term") });
    try {
      await other.send(me, "a direct message, no ev");
      await other.send(me, { n: 1, bytes: new Uint8Array([0, 255]) }, { ev: "ping" });
      await other.publish(room, "<b>no ev</b> in the room");
      await other.publish(room, "breaking", { ev: "news" });
      const line = (/** @type {string} */ text) => page.locator("#chat-log li", { hasText: text });
      await line("a direct message, no ev").waitFor();
      await line('{"n":1,"bytes":"<2 bytes> 00ff"}').waitFor();
      await line("<b>no ev</b> in the room").waitFor();
      await line("breaking").waitFor();
      assert.equal(await line("a direct message, no ev").locator(".who").textContent(), `${other.id} direct to you`);
      assert.equal(await line("00ff").locator(".who").textContent(), `${other.id} direct to you · ev ping`);
      assert.equal(await line("in the room").locator(".who").textContent(), `${other.id} in ${room}`);
      assert.equal(await line("breaking").locator(".who").textContent(), `${other.id} in ${room} · ev news`);
      assert.equal(await page.locator("#chat-log b").count(), 0, "payloads are text, never markup");
      await page.setViewportSize({ width: 375, height: 740 });
      await page.locator("#chat-log").scrollIntoViewIfNeeded();
      await page.screenshot({ path: join(RESULTS, "demo-received-375.png") });
    } finally {
      await other.close();
    }

    await page.click("#disconnect");
    await page.waitForSelector('#status[data-state="idle"]');
    assert.equal(await page.locator("#status").textContent(), `not connected · you left ${room}`);
    await page.locator("#chat-log li.system", { hasText: `you left ${room}` }).waitFor();
    assert.equal(await page.locator("#connect").isVisible(), true);
    assert.deepEqual(errors, []);
  });

  test("a long error status is shown in full on a 375 px wide screen", async () => {
    const held = `${uid("annabelle")}-with-a-rather-long-peer-id`;
    const holder = await peer(relay.url, { id: held });
    try {
      const { page } = await openPage({ width: 375, height: 740 });
      await page.fill("#peer-id", held);
      await page.click("#connect");
      await page.waitForSelector('#status[data-state="closed"]');
      const status = page.locator("#status");
      assert.equal(await status.textContent(), `could not connect: ${held} is held by another session`);
      const fit = await status.evaluate((el) => {
        const box = el.getBoundingClientRect();
        const style = getComputedStyle(el);
        return {
          right: box.right,
          overflows: el.scrollWidth > el.clientWidth || el.scrollHeight > el.clientHeight,
          ellipsis: style.textOverflow,
          pageWidth: document.documentElement.scrollWidth,
        };
      });
      assert.ok(fit.right <= 375, `the status ends at ${fit.right}px`);
      assert.equal(fit.overflows, false, "the status text fits its box");
      assert.notEqual(fit.ellipsis, "ellipsis");
      assert.equal(fit.pageWidth, 375, "nothing scrolls sideways");
      await page.screenshot({ path: join(RESULTS, "demo-error-375.png") });
    } finally {
      await holder.close();
    }
  });

  test("the browser snippet of docs/js-client.md runs as written in a page the relay serves", async () => {
    const doc = readFileSync(join(REPO, "docs", "js-client.md"), "utf8");
    const snippet = /```html\n<script type="module">\n([\s\S]*?)<\/script>\n```/.exec(doc)?.[1];
    assert.ok(snippet, "docs/js-client.md has the <script type=module> snippet");
    const bob = await peer(relay.url, { id: "bob" });
    try {
      const got = nextEvent(bob, "message", undefined, 10_000);
      const { page, errors } = await openPage();
      await page.addScriptTag({ type: "module", content: snippet });
      const message = /** @type {any} */ (await got);
      assert.deepEqual([message.from, message.data], ["carol", "hello from the browser"]);
      assert.deepEqual(errors, []);
    } finally {
      await bob.close();
    }
  });

  test("the served bundle works as a plain ES module: import {connect} from '/client.js'", async () => {
    const { page } = await openPage();
    const node = await peer(relay.url, { id: uid("node") });
    node.onRequest("reverse", (d) => Uint8Array.from(d).reverse());
    try {
      const result = await page.evaluate(
        async ({ url, target }) => {
          // @ts-ignore -- resolved by the browser against the relay
          const { connect, PeerOffline, RemoteError } = await import("/client.js");
          const p = await connect(url, {});
          const reversed = await p.request(target, new Uint8Array([1, 2, 3]), { ev: "reverse" });
          const offline = await p.send("nobody-" + Date.now(), 1).catch((/** @type {any} */ e) => e instanceof PeerOffline);
          const remote = await p.request(target, 1, { ev: "missing", timeout: 300 }).catch((/** @type {any} */ e) => e.name);
          const rtt = await p.ping();
          await p.close();
          return { isBytes: reversed instanceof Uint8Array, reversed: Array.from(reversed), offline, remote, rtt, id: p.id, RemoteError: typeof RemoteError };
        },
        { url: relay.url, target: node.id },
      );
      assert.equal(result.isBytes, true);
      assert.deepEqual(result.reversed, [3, 2, 1]);
      assert.equal(result.offline, true);
      assert.equal(result.remote, "RequestTimeout");
      assert.ok(result.rtt >= 0);
      assert.match(result.id, /^[A-Za-z0-9_.:~-]+$/);
    } finally {
      await node.close();
    }
  });
});
