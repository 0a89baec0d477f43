// The HTTP transport in Chromium: the bundle in a page the relay serves,
// streaming with fetch and long-polling, with a Node peer on a WebSocket.
import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";
import { launchChromium } from "../chromium.js";
import { peer, startRelay, uid } from "../helpers.js";

describe("the HTTP transport in a browser", () => {
  /** @type {Awaited<ReturnType<typeof startRelay>>} */
  let relay;
  /** @type {import("playwright-core").Browser} */
  let browser;
  before(async () => {
    relay = await startRelay();
    browser = await launchChromium();
  });
  after(async () => {
    await browser?.close();
    await relay?.stop();
  });

  for (const streamTimeout of [3000, 0]) {
    test(`transports: ["http"], ${streamTimeout ? "streaming" : "long-polling"}: messages both ways, a request, ok and err`, async () => {
      const node = await peer(relay.url, { id: uid("node") });
      node.onRequest("reverse", (d) => [...d].reverse().join(""));
      node.addEventListener("message", (e) => void node.send(e.from, "from node"));
      const page = await browser.newPage();
      try {
        await page.goto(`${relay.httpUrl}/`);
        const result = await page.evaluate(
          async ([target, streamTimeout]) => {
            const { connect } = await import("/client.js");
            const url = new URL("/v1/ws", location.href).href.replace(/^http/, "ws");
            const p = await connect(url, { transports: ["http"], streamTimeout });
            const got = new Promise((resolve) => p.addEventListener("message", (e) => resolve(e.data), { once: true }));
            await p.send(target, "from the page");
            const reply = await p.request(target, "abc", { ev: "reverse" });
            const err = await p.send("nobody-here", 1).then(() => "no error", (e) => e.name);
            const message = await got;
            const transport = p.transport;
            await p.close();
            return { transport, reply, err, message };
          },
          /** @type {[string, number]} */ ([node.id ?? "", streamTimeout]),
        );
        assert.deepEqual(result, { transport: "http", reply: "cba", err: "PeerOffline", message: "from node" });
      } finally {
        await page.close();
        await node.close();
      }
    });
  }
});
