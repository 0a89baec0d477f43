// The committed browser bundle must be exactly what the build produces.
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { test } from "node:test";
import { join } from "node:path";
import { ADMIN_DIR, OUTFILE, bundle, chartFiles } from "../../scripts/build.js";

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

test("the admin page's chart library in relay/static/admin is up to date, with its licence", async () => {
  for (const [name, content] of Object.entries(await chartFiles())) {
    const committed = readFileSync(join(ADMIN_DIR, name), "utf8");
    assert.ok(content === committed, `relay/static/admin/${name} is stale: run \`npm run build\` in clients/js`);
  }
  assert.match(readFileSync(join(ADMIN_DIR, "uplot.LICENSE.txt"), "utf8"), /MIT License/);
  assert.doesNotMatch(readFileSync(join(ADMIN_DIR, "uplot.js"), "utf8"), /^\s*import\s/m);
});
