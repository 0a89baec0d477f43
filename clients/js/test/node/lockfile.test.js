// `npm install` must leave package-lock.json as committed. npm rewrites the
// lock's root entry from package.json, so that entry must already say what
// package.json says (it once lacked `license` and `engines`).
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { test } from "node:test";
import { fileURLToPath } from "node:url";

const root = join(dirname(fileURLToPath(import.meta.url)), "..", "..");
const read = (/** @type {string} */ name) => JSON.parse(readFileSync(join(root, name), "utf8"));

// The package.json fields npm copies into the lock's root entry.
const COPIED = ["name", "version", "license", "bin", "dependencies", "devDependencies",
  "optionalDependencies", "peerDependencies", "engines"];

test("package-lock.json's root entry repeats package.json", () => {
  const pkg = read("package.json");
  const lock = read("package-lock.json");
  /** @type {Record<string, unknown>} */
  const expected = {};
  for (const key of COPIED) if (pkg[key] !== undefined) expected[key] = pkg[key];
  assert.deepEqual(lock.packages[""], expected);
  assert.deepEqual([lock.name, lock.version], [pkg.name, pkg.version]);
});
