// Debian's Chromium, headless, as every browser test here starts it.
import assert from "node:assert/strict";
import { existsSync } from "node:fs";
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
