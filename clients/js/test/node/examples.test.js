// The examples docs/js-client.md shows run as written: from the repository
// root, with plain `node`, importing the package by its name and `ws`.
import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import { join } from "node:path";
import { after, before, test } from "node:test";
import { promisify } from "node:util";
import { REPO, startRelay } from "../helpers.js";

const run = promisify(execFile);

/** @type {Awaited<ReturnType<typeof startRelay>>} */
let relay;
before(async () => {
  relay = await startRelay();
});
after(async () => {
  await relay?.stop();
});

test("examples/quickstart.js: two peers send, publish and request in Node 20", async () => {
  const script = join("clients", "js", "examples", "quickstart.js");
  const { stdout, stderr } = await run(process.execPath, [script, relay.url], { cwd: REPO, timeout: 20_000 });
  assert.equal(stderr, "");
  const [intro, ...rest] = stdout.trimEnd().split("\n");
  const ids = /^alice is (\S+), bob is (\S+)$/.exec(intro);
  assert.ok(ids, intro);
  const alice = ids[1];
  assert.deepEqual(rest, [
    `bob got {"text":"hi"} from ${alice} (direct, ev chat)`,
    `bob got "hello room" from ${alice} (room lobby, ev chat)`,
    "alice asked bob to add 1 and 2: 3",
  ]);
});
