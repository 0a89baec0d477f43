/**
 * WebRTC over relay signaling: opens an RTCPeerConnection and a data channel
 * to another peer, using the relay only to exchange offers, answers and ICE
 * candidates ("perfect negotiation", so either side may start first, or both
 * at once). See docs/webrtc.md.
 *
 * Signaling messages are ordinary relay sends with `ev: "webrtc.signal"`
 * (configurable) and a map payload:
 *   {sid, ready: true, ack?: true}   -- "I am listening" (answered once with ack)
 *   {sid, description: {type, sdp}}  -- offer or answer
 *   {sid, candidate: {...}}          -- an ICE candidate (RTCIceCandidateInit)
 * `sid` is a random id per call, so stale signals of an earlier attempt are
 * ignored.
 *
 * ICE servers: pass them, or `iceServers: "relay"` to use the relay's own
 * `GET /v1/ice-servers` (STUN, and TURN with short-lived credentials).
 */

/** Default signaling `ev`. */
export const SIGNAL_EV = "webrtc.signal";

/** Remote ids with an attempt in progress or a live connection, per relay peer. */
const active = new WeakMap();
/** @param {object} peer @returns {Set<string>} */
const activeFor = (peer) => {
  let set = active.get(peer);
  if (!set) active.set(peer, (set = new Set()));
  return set;
};

/**
 * @typedef {object} DataChannelOptions
 * @property {RTCIceServer[] | "relay"} [iceServers] default [] (host candidates: enough on one
 *   machine or LAN); "relay": fetched from the relay's /v1/ice-servers with the peer's token
 * @property {RTCConfiguration} [rtcConfig] extra RTCPeerConnection configuration
 * @property {string} [label] data channel label (default "relay")
 * @property {number} [channelId] negotiated channel id, the same on both sides (default 0)
 * @property {RTCDataChannelInit} [channelOptions] e.g. {ordered: false, maxRetransmits: 0}
 * @property {string} [ev] signaling event name (default "webrtc.signal")
 * @property {number} [timeout] ms to wait for the channel to open (default 30000)
 * @property {typeof RTCPeerConnection} [RTCPeerConnection] constructor (default globalThis's)
 * @property {AbortSignal} [signal] aborts the attempt
 */

/**
 * Opens a data channel to `remoteId`. Both peers call this (in any order):
 * it resolves once the channel is open on this side.
 * @param {import("./client.js").RelayPeer} peer a connected relay peer
 * @param {string} remoteId
 * @param {DataChannelOptions} [options]
 * @returns {Promise<{pc: RTCPeerConnection, channel: RTCDataChannel, polite: boolean, close: () => void}>}
 */
export function openDataChannel(peer, remoteId, options = {}) {
  if (options.iceServers === "relay") {
    // The token the peer connected with (a string, or a function minting one).
    const token = /** @type {any} */ (peer)._opts?.token;
    return fetchIceServers(peer.url, { token, signal: options.signal }).then((iceServers) =>
      openDataChannel(peer, remoteId, { ...options, iceServers }),
    );
  }
  const {
    iceServers = [],
    rtcConfig = {},
    label = "relay",
    channelId = 0,
    channelOptions = {},
    ev = SIGNAL_EV,
    timeout = 30_000,
    signal,
  } = options;
  const PC = options.RTCPeerConnection ?? globalThis.RTCPeerConnection;
  if (typeof PC !== "function") {
    return Promise.reject(new TypeError("relay-client/webrtc: no RTCPeerConnection (pass one as the `RTCPeerConnection` option)"));
  }
  if (!peer.id || peer.id === remoteId) {
    return Promise.reject(new TypeError("openDataChannel needs a connected peer and a different remote id"));
  }

  // Deterministic roles: both sides compute the same answer from the two ids.
  // The polite side yields when both send offers at once.
  const polite = peer.id > remoteId;
  const mine = activeFor(peer);
  mine.add(remoteId);
  const sid = randomId();
  const pc = new PC({ ...rtcConfig, iceServers });
  let remoteSid = /** @type {string | null} */ (null);
  let channel = /** @type {RTCDataChannel | null} */ (null);
  let makingOffer = false;
  let ignoreOffer = false;
  let settingRemoteAnswer = false;
  let chain = Promise.resolve(); // signals are applied one at a time, in order

  const sendSignal = (/** @type {object} */ body) =>
    // PeerOffline (the other side is not connected yet) is not fatal: its own
    // "ready" will start the exchange once it arrives.
    peer.send(remoteId, { sid, ...body }, { ev }).catch(() => {});

  return new Promise((resolve, reject) => {
    let settled = false;
    const close = () => {
      cleanup();
      try {
        channel?.close();
        pc.close();
      } catch {
        // already closed
      }
    };
    const fail = (/** @type {unknown} */ err) => {
      if (settled) return;
      settled = true;
      close();
      reject(err instanceof Error ? err : new Error(String(err)));
    };
    const timer = setTimeout(() => fail(new Error(`data channel to ${remoteId} not open within ${timeout} ms`)), timeout);
    const onAbort = () => fail(signal?.reason ?? new Error("aborted"));
    signal?.addEventListener("abort", onAbort, { once: true });
    const onPeerClose = () => fail(new Error("relay connection closed"));
    peer.addEventListener("close", onPeerClose);

    function cleanup() {
      mine.delete(remoteId);
      clearTimeout(timer);
      signal?.removeEventListener("abort", onAbort);
      peer.removeEventListener("close", onPeerClose);
      peer.removeEventListener("message", onMessage);
    }

    /** The remote side is listening: create the channel, which starts negotiation. */
    function startChannel() {
      if (channel) return;
      // negotiated: true -- both sides create the same channel (same id), so
      // neither waits for the other's ondatachannel.
      channel = pc.createDataChannel(label, { ...channelOptions, negotiated: true, id: channelId });
      channel.binaryType = "arraybuffer";
      channel.addEventListener("close", cleanup);
      channel.addEventListener("open", () => {
        if (settled) return;
        settled = true;
        // Keep listening for signals after the open: ICE restarts and
        // renegotiation use the same path. Stop when the connection ends.
        clearTimeout(timer);
        signal?.removeEventListener("abort", onAbort);
        resolve({ pc, channel: /** @type {RTCDataChannel} */ (channel), polite, close });
      });
    }

    pc.onnegotiationneeded = async () => {
      try {
        makingOffer = true;
        await pc.setLocalDescription();
        sendSignal({ description: plainDescription(pc.localDescription) });
      } catch (err) {
        fail(err);
      } finally {
        makingOffer = false;
      }
    };
    pc.onicecandidate = ({ candidate }) => {
      if (candidate) sendSignal({ candidate: candidate.toJSON() });
    };
    pc.onconnectionstatechange = () => {
      if (pc.connectionState !== "failed" && pc.connectionState !== "closed") return;
      if (settled) cleanup(); // stop signaling for a connection that is over
      else fail(new Error(`WebRTC connection to ${remoteId} ${pc.connectionState}`));
    };

    /** @param {any} e a relay "message" event */
    function onMessage(e) {
      if (e.from !== remoteId || e.ev !== ev) return;
      const body = e.data;
      if (!body || typeof body !== "object" || typeof body.sid !== "string") return;
      chain = chain.then(() => handleSignal(body)).catch(fail);
    }
    peer.addEventListener("message", onMessage);

    /** @param {any} body */
    async function handleSignal(body) {
      if (body.ready) {
        if (body.sid !== remoteSid) {
          remoteSid = body.sid; // a (re)started remote attempt: follow it
          if (!body.ack) sendSignal({ ready: true, ack: true });
        }
        startChannel();
        return;
      }
      if (body.sid !== remoteSid) return; // stale: from an earlier attempt
      if (body.description) {
        const description = body.description;
        // Perfect negotiation (W3C WebRTC spec, section 10.7).
        const readyForOffer = !makingOffer && (pc.signalingState === "stable" || settingRemoteAnswer);
        const offerCollision = description.type === "offer" && !readyForOffer;
        ignoreOffer = !polite && offerCollision;
        if (ignoreOffer) return;
        settingRemoteAnswer = description.type === "answer";
        await pc.setRemoteDescription(description);
        settingRemoteAnswer = false;
        if (description.type === "offer") {
          await pc.setLocalDescription();
          sendSignal({ description: plainDescription(pc.localDescription) });
        }
      } else if (body.candidate) {
        try {
          await pc.addIceCandidate(body.candidate);
        } catch (err) {
          if (!ignoreOffer) throw err; // candidates of an offer we ignored may fail
        }
      }
    }

    // Announce ourselves; the other side answers with an ack if it is
    // already listening, otherwise its own "ready" reaches us later.
    sendSignal({ ready: true });
  });
}

/**
 * Answers other peers' `openDataChannel` calls: when a peer announces itself
 * ("ready") and no attempt with it is in progress, calls `openDataChannel`
 * towards it and hands the result to `onChannel`.
 * @param {import("./client.js").RelayPeer} peer
 * @param {(result: {pc: RTCPeerConnection, channel: RTCDataChannel, polite: boolean, close: () => void}, remoteId: string) => void} onChannel
 * @param {DataChannelOptions & {accept?: (remoteId: string) => boolean, onError?: (err: Error, remoteId: string) => void}} [options]
 *   `accept` filters who may connect (default: anyone)
 * @returns {() => void} stops accepting
 */
export function acceptDataChannels(peer, onChannel, options = {}) {
  const ev = options.ev ?? SIGNAL_EV;
  const onMessage = (/** @type {any} */ e) => {
    const body = e.data;
    if (e.ev !== ev || !body || typeof body !== "object" || !body.ready || body.ack) return;
    if (activeFor(peer).has(e.from) || (options.accept && !options.accept(e.from))) return;
    openDataChannel(peer, e.from, options).then(
      (result) => onChannel(result, e.from),
      (err) => options.onError?.(err, e.from),
    );
  };
  peer.addEventListener("message", onMessage);
  return () => peer.removeEventListener("message", onMessage);
}

/**
 * Fetches the relay's ICE servers (`GET /v1/ice-servers`): its STUN URLs, and
 * its TURN URLs with time-limited credentials, ready for `RTCPeerConnection`.
 * @param {string} relayUrl the relay's URL, ws(s):// or http(s)://, any path (e.g. `peer.url`)
 * @param {{token?: string | (() => string | Promise<string>), signal?: AbortSignal, fetch?: typeof fetch}} [options]
 *   `token`: with auth on, a token for the peer (sent as `Authorization: Bearer`)
 * @returns {Promise<RTCIceServer[]>}
 */
export async function fetchIceServers(relayUrl, options = {}) {
  const url = new URL("/v1/ice-servers", relayUrl.replace(/^ws(s?):/, "http$1:"));
  const token = typeof options.token === "function" ? await options.token() : options.token;
  const doFetch = options.fetch ?? globalThis.fetch;
  const response = await doFetch(url.href, {
    headers: token ? { authorization: `Bearer ${token}` } : {},
    signal: options.signal,
  });
  if (!response.ok) {
    throw new Error(`relay-client/webrtc: ${url.pathname} answered ${response.status}`);
  }
  const body = await response.json();
  return body.iceServers;
}

/** RTCSessionDescription -> plain map msgpack can encode. */
function plainDescription(/** @type {RTCSessionDescription | null} */ d) {
  return d ? { type: d.type, sdp: d.sdp } : null;
}

function randomId() {
  const bytes = new Uint8Array(8);
  globalThis.crypto.getRandomValues(bytes);
  return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}
