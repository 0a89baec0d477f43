// Real-browser test of the relay's /admin page in Debian's chromium: no data
// without a login; after it, a peer that connects shows up (with its rooms)
// within 3 s, a room's members with their presence (a dropped one resuming),
// the chart's series (connections, refusals by code), a disconnect from the
// page closes it with 4504; a forged action without the CSRF token is
// refused; a read-only page offers no actions and the relay refuses them; an
// admin JWT logs in through the form, a peer's token does not. It leaves
// screenshots, desktop and phone width, in clients/js/test-results/
// (docs/admin.md shows one).
import assert from "node:assert/strict";
import { createHmac } from "node:crypto";
import { mkdirSync } from "node:fs";
import { join } from "node:path";
import { after, afterEach, before, describe, test } from "node:test";
import { closePages, launchChromium } from "../chromium.js";
import { REPO, nextEvent, peer, startProxy, startRelay, uid } from "../helpers.js";

const RESULTS = join(REPO, "clients", "js", "test-results");
const PASSWORD = "correct horse battery staple";
const DESKTOP = { width: 1280, height: 900 };
const PHONE = { width: 390, height: 844 };
const JWT_SECRET = "test-secret-that-is-long-enough-for-hs256!";

/** An HS256 JWT of `claims` (with `sub` and a minute's `exp`), as a backend would mint it. */
function hs256(/** @type {Record<string, unknown>} */ claims) {
  const part = (/** @type {unknown} */ value) => Buffer.from(JSON.stringify(value)).toString("base64url");
  const body = `${part({ alg: "HS256", typ: "JWT" })}.${part({ exp: Math.floor(Date.now() / 1000) + 60, ...claims })}`;
  return `${body}.${createHmac("sha256", JWT_SECRET).update(body).digest("base64url")}`;
}

describe("admin page in chromium", () => {
  /** @type {Awaited<ReturnType<typeof startRelay>>} */
  let relay;
  /** @type {Awaited<ReturnType<typeof startRelay>>} */
  let readOnly;
  /** @type {Awaited<ReturnType<typeof startRelay>>} */
  let withTokens;
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
    // admin JWTs only: no password opens this one
    withTokens = await startRelay(["--admin-jwt", "true"], { env: { RELAY_JWT_SECRET: JWT_SECRET } });
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
    await withTokens?.stop();
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
    await bob.join(room, { presence: true });
    // carol's link drops (no close): the relay keeps her, rooms and all, for a resume
    const link = await startProxy(relay.url);
    const carol = await peer(link.url, { id: uid("carol"), reconnect: false });
    peers.push(carol, link);
    await carol.join(room);
    link.sever();
    // and someone takes alice's id: refused, id-taken
    await assert.rejects(peer(relay.url, { id, reconnect: false }));
    await page.waitForSelector(`#peer-rooms li[data-room="${room}"]`, { timeout: 3000 });
    await page.waitForSelector("#peer-status:has-text('connected')");
    await page.waitForSelector("#nodes tbody td:nth-child(3):has-text('3')", { timeout: 3000 });

    // the room by its first letters: a search, then a click; each member with its presence
    await page.fill("#room-name", room.slice(0, -1));
    await page.click(`#room-matches button:has-text("${room}")`);
    await page.waitForSelector(`#room-members li[data-member="${id}"] .presence[data-state="online"]`);
    await page.waitForSelector(`#room-members li[data-member="${bob.id}"] .presence:has-text("watches presence")`);
    await page.waitForSelector(`#room-members li[data-member="${carol.id}"] .presence[data-state="resuming"]:has-text("s left")`, { timeout: 3000 });

    // the chart: messages, connections, and a series for the refusals of each code seen
    await page.waitForSelector(".u-legend :text('refused id-taken/s')", { timeout: 3000 });
    const legend = await page.locator(".u-legend .u-series .u-label").allTextContents();
    assert.deepEqual(legend.slice(1), ["in/s", "out/s", "connections", "refused id-taken/s"]);
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

  test("an admin JWT logs in through the form; a peer's token gets nothing", async () => {
    const { page, errors } = await openPage(withTokens.httpUrl);
    await page.waitForSelector("#login-form", { state: "visible" });
    await page.fill("#token", hs256({ sub: "alice" })); // a peer's token: no relay_admin claim
    await page.click('#login-form button[type="submit"]');
    await page.waitForSelector("#login-error:has-text('wrong password or token')");
    assert.equal(await page.isVisible("#dash-view"), false);
    assert.equal((await fetchIn(page, "/admin/api/overview")).status, 401);
    // nor does the page's password field open it: this relay has no password
    await page.fill("#password", PASSWORD);
    await page.click('#login-form button[type="submit"]');
    await page.waitForSelector("#login-error:has-text('wrong password or token')");

    await page.fill("#token", hs256({ sub: "ops-dana", relay_admin: "operate" }));
    await page.click('#login-form button[type="submit"]');
    await page.waitForSelector('#live[data-state="open"]');
    await page.waitForSelector("#user:has-text('ops-dana')");
    // operate: the actions are offered
    assert.equal(await page.evaluate(() => [...document.querySelectorAll("[data-action]")].some((e) => /** @type {HTMLElement} */ (e).hidden)), false);
    const session = JSON.parse((await fetchIn(page, "/admin/api/session")).body);
    assert.equal(session.user, "ops-dana");
    assert.equal(session.read_only, false);
    assert.equal((await fetchIn(page, "/admin/api/overview")).status, 200);
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
