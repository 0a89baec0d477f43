// Real-browser test of the relay's /admin page in Debian's chromium: no data
// without a login; after it, a peer that connects shows up (with its rooms)
// within 3 s, a disconnect from the page closes it with 4504; a forged
// action without the CSRF token is refused; a read-only page offers no
// actions and the relay refuses them. It leaves screenshots, desktop and
// phone width, in clients/js/test-results/ (docs/admin.md shows one).
import assert from "node:assert/strict";
import { mkdirSync } from "node:fs";
import { join } from "node:path";
import { after, afterEach, before, describe, test } from "node:test";
import { closePages, launchChromium } from "../chromium.js";
import { REPO, nextEvent, peer, startRelay, uid } from "../helpers.js";

const RESULTS = join(REPO, "clients", "js", "test-results");
const PASSWORD = "correct horse battery staple";
const DESKTOP = { width: 1280, height: 900 };
const PHONE = { width: 390, height: 844 };

describe("admin page in chromium", () => {
  /** @type {Awaited<ReturnType<typeof startRelay>>} */
  let relay;
  /** @type {Awaited<ReturnType<typeof startRelay>>} */
  let readOnly;
  /** @type {import("playwright-core").Browser} */
  let browser;
  /** @type {import("playwright-core").Page[]} */
  let pages = [];
  /** @type {{close: () => Promise<void>}[]} */
  let peers = [];

  before(async () => {
    mkdirSync(RESULTS, { recursive: true });
    // the password goes by the environment, not on the command line
    relay = await startRelay([], { env: { RELAY_ADMIN_PASSWORD: PASSWORD } });
    readOnly = await startRelay(["--admin-read-only", "true"], { env: { RELAY_ADMIN_PASSWORD: PASSWORD } });
    browser = await launchChromium();
  });
  afterEach(async (t) => {
    await closePages(t, pages, RESULTS);
    pages = [];
    for (const p of peers) await p.close().catch(() => {});
    peers = [];
  });
  after(async () => {
    await browser?.close();
    await relay?.stop();
    await readOnly?.stop();
  });

  async function openPage(/** @type {string} */ base, viewport = DESKTOP) {
    const context = await browser.newContext({ viewport });
    const page = await context.newPage();
    pages.push(page);
    /** @type {unknown[]} */
    const errors = [];
    page.on("pageerror", (e) => errors.push(e));
    // a CSP violation ("Refused to ...") is a console error too; answers the test
    // asks for (401, 403, a 404 for a peer not online) are not
    page.on("console", (m) => m.type() === "error" && !m.text().startsWith("Failed to load resource") && errors.push(m.text()));
    page.on("dialog", (dialog) => dialog.accept()); // every action is confirmed
    const res = await page.goto(`${base}/admin/`);
    assert.equal(res?.status(), 200);
    return { page, errors };
  }

  async function logIn(/** @type {import("playwright-core").Page} */ page) {
    await page.waitForSelector("#login-form", { state: "visible" });
    await page.fill("#password", PASSWORD);
    await page.click('#login-form button[type="submit"]');
    await page.waitForSelector('#live[data-state="open"]');
  }

  /** fetch from inside the page (its cookie, its origin) */
  function fetchIn(/** @type {import("playwright-core").Page} */ page, /** @type {string} */ path, /** @type {any} */ init = {}) {
    return page.evaluate(async ([path, init]) => {
      const response = await fetch(path, init);
      return { status: response.status, body: await response.text() };
    }, /** @type {[string, any]} */ ([path, init]));
  }

  test("without credentials: the login form and no data", async () => {
    const { page, errors } = await openPage(relay.httpUrl);
    await page.waitForSelector("#login-form", { state: "visible" });
    assert.equal(await page.isVisible("#dash-view"), false);
    for (const path of ["/admin/api/overview", "/admin/api/peers/x", "/admin/api/events", "/admin/api/stream"]) {
      assert.equal((await fetchIn(page, path)).status, 401, path);
    }
    await page.fill("#password", "wrong");
    await page.click('#login-form button[type="submit"]');
    await page.waitForSelector("#login-error:has-text('wrong password')");
    await page.screenshot({ path: join(RESULTS, "admin-login.png") });
    assert.deepEqual(errors, []);
  });

  test("after login a new peer appears within 3 s with its rooms, and a disconnect closes it with 4504", async () => {
    const { page, errors } = await openPage(relay.httpUrl);
    await logIn(page);
    const id = uid("alice");
    const room = uid("lobby");
    await page.fill("#peer-id", id);
    await page.click('#peer-form button[type="submit"]');
    await page.waitForSelector("#peer-status:has-text('not online')");

    const alice = await peer(relay.url, { id });
    peers.push(alice);
    await alice.join(room);
    const bob = await peer(relay.url, { id: uid("bob") });
    peers.push(bob);
    await bob.join(room);
    await page.waitForSelector(`#peer-rooms li[data-room="${room}"]`, { timeout: 3000 });
    await page.waitForSelector("#peer-status:has-text('connected')");
    await page.waitForSelector("#nodes tbody td:nth-child(3):has-text('2')", { timeout: 3000 });

    // the room by its first letters: a search, then a click
    await page.fill("#room-name", room.slice(0, -1));
    await page.click(`#room-matches button:has-text("${room}")`);
    await page.waitForSelector(`#room-members button:has-text("${id}")`);
    await page.waitForTimeout(2500); // let the chart draw a few points for the pictures
    await page.screenshot({ path: join(RESULTS, "admin-desktop.png"), fullPage: true });

    const closed = nextEvent(alice, "close");
    await page.click("#peer-disconnect");
    const event = /** @type {any} */ (await closed);
    assert.equal(event.code, 4504);
    await page.waitForSelector("#action-result:has-text('done: disconnect')");
    await page.waitForSelector("#peer-status:has-text('not online')", { timeout: 3000 });
    await page.waitForSelector("#events tbody td:has-text('4504')", { timeout: 3000 });

    // a forged action: the cookie goes along, the CSRF token does not
    const forged = await fetchIn(page, "/admin/api/disconnect", {
      method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify({ peer: id }),
    });
    assert.equal(forged.status, 403);
    assert.match(forged.body, /csrf/);
    assert.deepEqual(errors, []);
  });

  test("phone width: the page stays usable", async () => {
    const { page, errors } = await openPage(relay.httpUrl, PHONE);
    await logIn(page);
    const bob = await peer(relay.url, { id: uid("bob") });
    peers.push(bob);
    await bob.join("lobby");
    await page.fill("#peer-id", bob.id);
    await page.click('#peer-form button[type="submit"]');
    await page.waitForSelector('#peer-rooms li[data-room="lobby"]', { timeout: 3000 });
    await page.waitForSelector("#nodes tbody td:nth-child(3):has-text('1')", { timeout: 3000 });
    const width = await page.evaluate(() => document.documentElement.scrollWidth);
    assert.ok(width <= PHONE.width, `the page scrolls sideways: ${width} px`);
    await page.screenshot({ path: join(RESULTS, "admin-phone.png"), fullPage: true });
    assert.deepEqual(errors, []);
  });

  test("read-only: no actions on the page, and the relay refuses them", async () => {
    const { page, errors } = await openPage(readOnly.httpUrl);
    await logIn(page);
    const carol = await peer(readOnly.url, { id: uid("carol") });
    peers.push(carol);
    await carol.join("lobby");
    await page.fill("#peer-id", carol.id);
    await page.click('#peer-form button[type="submit"]');
    await page.waitForSelector('#peer-rooms li[data-room="lobby"]', { timeout: 3000 });
    assert.equal(await page.isVisible("#read-only-note"), true);
    assert.equal(await page.locator("#peer-disconnect").isVisible(), false);
    assert.equal(await page.locator("#peer-send").isVisible(), false);
    assert.equal(await page.locator("#peer-rooms button").count(), 0);
    const session = JSON.parse((await fetchIn(page, "/admin/api/session")).body);
    assert.equal(session.read_only, true);
    const refused = await fetchIn(page, "/admin/api/disconnect", {
      method: "POST",
      headers: { "Content-Type": "application/json", "X-CSRF-Token": session.csrf },
      body: JSON.stringify({ peer: carol.id }),
    });
    assert.equal(refused.status, 403);
    assert.match(refused.body, /read-only/);
    assert.deepEqual(errors, []);
  });
});
