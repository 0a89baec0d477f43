// The WebRTC helper's ICE servers from the relay: GET /v1/ice-servers with
// the peer's token, TURN credentials in coturn's shared-secret scheme.
import assert from "node:assert/strict";
import { createHmac } from "node:crypto";
import { after, before, describe, test } from "node:test";
import { fetchIceServers, openDataChannel } from "../../src/webrtc.js";
import { peer, startRelay } from "../helpers.js";

const JWT_SECRET = "a-test-secret-that-is-long-enough-for-hs256";
const TURN_SECRET = "coturn-secret";
const TURN_URL = "turn:127.0.0.1:3478?transport=udp";

/** An HS256 token for `sub`, valid for a minute. */
function token(sub) {
  const part = (/** @type {object} */ o) => Buffer.from(JSON.stringify(o)).toString("base64url");
  const body = `${part({ alg: "HS256", typ: "JWT" })}.${part({ sub, exp: Math.floor(Date.now() / 1000) + 60 })}`;
  return `${body}.${createHmac("sha256", JWT_SECRET).update(body).digest("base64url")}`;
}

describe("ICE servers from the relay", () => {
  /** @type {Awaited<ReturnType<typeof startRelay>>} */
  let relay;
  before(async () => {
    relay = await startRelay(["--jwt-secret", JWT_SECRET, "--turn-urls", TURN_URL, "--turn-secret", TURN_SECRET]);
  });
  after(async () => {
    await relay?.stop();
  });

  test("fetchIceServers sends the token and gets TURN credentials for that peer", async () => {
    const [turn] = await fetchIceServers(relay.url, { token: async () => token("alice") });
    assert.deepEqual(turn.urls, [TURN_URL]);
    assert.match(String(turn.username), /^\d+:alice$/);
    const expected = createHmac("sha1", TURN_SECRET).update(String(turn.username)).digest("base64");
    assert.equal(turn.credential, expected);
    await assert.rejects(fetchIceServers(relay.httpUrl), /\/v1\/ice-servers answered 401/);
  });

  test('openDataChannel with iceServers: "relay" configures the connection with them', async () => {
    const alice = await peer(relay.url, { id: "alice", token: token("alice") });
    /** @type {any} */
    let configured = null;
    const aborter = new AbortController();
    class FakePC {
      constructor(/** @type {any} */ config) {
        configured = config;
        queueMicrotask(() => aborter.abort(new Error("enough")));
      }
      close() {}
    }
    try {
      await assert.rejects(
        openDataChannel(alice, "bob", { iceServers: "relay", RTCPeerConnection: /** @type {any} */ (FakePC), signal: aborter.signal }),
        /enough/,
      );
      assert.match(configured.iceServers[0].username, /^\d+:alice$/);
    } finally {
      await alice.close();
    }
  });
});
