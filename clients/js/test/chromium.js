// Debian's Chromium, headless, as every browser test here starts it.
import assert from "node:assert/strict";
import { existsSync } from "node:fs";
import { join } from "node:path";
import { chromium } from "playwright-core";

export const CHROMIUM = process.env.CHROMIUM_PATH || "/usr/bin/chromium";

// The background-networking flags keep Chromium from calling out of this
// closed network at every start.
const ARGS = [
  "--no-sandbox",
  "--disable-gpu",
  "--disable-background-networking",
  "--disable-component-update",
  "--no-first-run",
  "--disable-sync",
  "--disable-quic",
];

/** Launch headless Chromium; a missing browser fails the test, naming the package. */
export async function launchChromium() {
  assert.ok(
    existsSync(CHROMIUM),
    `no browser at ${CHROMIUM}: install Debian's "chromium" package (apt-get install chromium) or set CHROMIUM_PATH`,
  );
  return chromium.launch({ executablePath: CHROMIUM, args: ARGS, headless: true });
}

/**
 * Close the pages a test opened; when it failed, keep a picture of each first.
 * @param {any} t the node:test context (its outcome is only on it)
 * @param {import("playwright-core").Page[]} pages
 * @param {string} results the folder for the pictures
 */
export async function closePages(t, pages, results) {
  const failed = t.passed === false || t.error;
  for (const [i, page] of pages.entries()) {
    if (failed && !page.isClosed()) {
      await page.screenshot({ path: join(results, `failure-${t.name.replace(/\W+/g, "_")}-${i}.png`), fullPage: true });
    }
    await page.context().close();
  }
}
