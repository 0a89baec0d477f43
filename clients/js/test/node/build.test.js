// The committed browser bundle must be exactly what the build produces.
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { test } from "node:test";
import { OUTFILE, bundle } from "../../scripts/build.js";

test("relay/static/client.js is up to date (run `npm run build` in clients/js)", async () => {
  const built = await bundle();
  const committed = readFileSync(OUTFILE, "utf8");
  assert.ok(built === committed, "relay/static/client.js is stale: run `npm run build` in clients/js and commit it");
  assert.doesNotMatch(committed, /^\s*import\s/m, "the bundle must have no imports");
  assert.match(committed, /export \{[^}]*\bconnect\b[^}]*\bopenDataChannel\b/s);
});

test("the bundle loads as an ES module and exports the API", async () => {
  const mod = await import(`data:text/javascript;base64,${Buffer.from(readFileSync(OUTFILE)).toString("base64")}`);
  for (const name of ["connect", "RelayPeer", "openDataChannel", "PeerOffline", "RequestTimeout"]) {
    assert.equal(typeof mod[name], "function", name);
  }
});
