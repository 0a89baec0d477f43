// The relay demo page: room chat through the relay, plus a direct WebRTC
// data channel between two members, signaled through the relay. The page
// shows every message it receives: room chat, room messages with another
// (or no) `ev`, direct messages to its id, and the WebRTC signaling.
// Everything comes from the browser bundle the relay serves at /client.js.
import { SIGNAL_EV, acceptDataChannels, connect, openDataChannel } from "./client.js";

const $ = (/** @type {string} */ sel) => /** @type {HTMLElement} */ (document.querySelector(sel));
const params = new URLSearchParams(location.search);

// The relay's WebSocket: same host as the page, unless ?relay=ws://... says otherwise.
const relayUrl = params.get("relay") || new URL("v1/ws", location.href).href.replace(/^http/, "ws");
// ?transports=http tries the HTTP fallback alone (default: WebSocket first, then HTTP).
const transports = params.get("transports")?.split(",");

/** @type {import("./client.js").RelayPeer | null} */
let peer = null;
let room = "";
/** @type {Set<string>} */
const members = new Set();
/** @type {{remote: string, channel: RTCDataChannel, close: () => void} | null} */
let direct = null;
let stopAccepting = () => {};
/** How the status should read when the peer closes because we closed it; null: it was not us. */
let closedOnPurpose = /** @type {{state: string, text: string} | null} */ (null);

const ui = {
  form: /** @type {HTMLFormElement} */ ($("#join-form")),
  id: /** @type {HTMLInputElement} */ ($("#peer-id")),
  room: /** @type {HTMLInputElement} */ ($("#room")),
  connect: /** @type {HTMLButtonElement} */ ($("#connect")),
  disconnect: /** @type {HTMLButtonElement} */ ($("#disconnect")),
  status: $("#status"),
  roomName: $("#room-name"),
  chatLog: $("#chat-log"),
  chatForm: /** @type {HTMLFormElement} */ ($("#chat-form")),
  chatInput: /** @type {HTMLInputElement} */ ($("#chat-input")),
  chatSend: /** @type {HTMLButtonElement} */ ($("#chat-send")),
  members: $("#members"),
  memberCount: $("#member-count"),
  rtcStatus: $("#rtc-status"),
  rtcLog: $("#rtc-log"),
  rtcForm: /** @type {HTMLFormElement} */ ($("#rtc-form")),
  rtcInput: /** @type {HTMLInputElement} */ ($("#rtc-input")),
  rtcSend: /** @type {HTMLButtonElement} */ ($("#rtc-send")),
  rtcFile: /** @type {HTMLInputElement} */ ($("#rtc-file")),
  rtcFileLabel: $("#rtc-file-label"),
};

// On the direct channel every string is JSON: {text} for a line, {file: {name,
// size, type}} to start a file, {fileEnd: true} to finish it; binary messages
// are the current file's chunks.
const CHUNK_BYTES = 16 * 1024;
const MAX_FILE_BYTES = 64 * 1024 * 1024;
const HIGH_WATER = 1024 * 1024; // pause sending while this much is buffered

ui.id.value = params.get("id") || `guest-${Math.random().toString(36).slice(2, 6)}`;
if (params.get("room")) ui.room.value = /** @type {string} */ (params.get("room"));

function setStatus(/** @type {string} */ state, /** @type {string} */ text) {
  ui.status.dataset.state = state;
  ui.status.textContent = text;
}

/** Appends a line to a log; text only (never HTML), so payloads cannot inject markup. */
function log(/** @type {HTMLElement} */ list, /** @type {string} */ text, { who = "", kind = "", tag = "" } = {}) {
  const li = document.createElement("li");
  if (kind) li.className = kind;
  if (who) {
    const name = document.createElement("span");
    name.className = "who";
    name.textContent = who;
    if (tag) {
      const where = document.createElement("span");
      where.className = "tag";
      where.textContent = tag;
      name.append(" ", where);
    }
    li.append(name);
  }
  li.append(text);
  list.append(li);
  list.scrollTop = list.scrollHeight;
}

const hex = (/** @type {Uint8Array} */ bytes) =>
  Array.from(bytes.subarray(0, 32), (b) => b.toString(16).padStart(2, "0")).join("") + (bytes.length > 32 ? "…" : "");
const bytesText = (/** @type {Uint8Array} */ bytes) => `<${bytes.length} bytes> ${hex(bytes)}`;

/** A payload as one line of text: strings as they are, bytes as hex, anything else as JSON. */
function show(/** @type {unknown} */ data) {
  if (typeof data === "string") return data;
  if (data instanceof Uint8Array) return bytesText(data);
  try {
    const text = JSON.stringify(data, (_key, value) =>
      typeof value === "bigint" ? String(value) : value instanceof Uint8Array ? bytesText(value) : value,
    );
    return text ?? String(data);
  } catch {
    return String(data);
  }
}

/** What a WebRTC signaling message carries, in words (its SDP and candidates are not worth reading). */
function signalKind(/** @type {any} */ body) {
  if (body?.ready) return body.ack ? "ready to connect (reply)" : "ready to connect";
  if (body?.description) return `connection ${body.description.type}`;
  if (body?.candidate) return "a network address to try";
  return show(body);
}

function renderMembers() {
  ui.members.replaceChildren();
  for (const id of [...members].sort()) {
    const li = document.createElement("li");
    li.dataset.peer = id;
    const name = document.createElement("span");
    name.className = "name";
    name.textContent = id;
    li.append(name);
    if (id === peer?.id) {
      const you = document.createElement("span");
      you.className = "you";
      you.textContent = "you";
      li.append(you);
    } else {
      const button = document.createElement("button");
      button.className = "small";
      button.type = "button";
      button.textContent = direct?.remote === id ? "Connected" : "Direct";
      button.disabled = direct?.remote === id;
      button.addEventListener("click", () => startDirect(id));
      li.append(button);
    }
    ui.members.append(li);
  }
  ui.memberCount.textContent = String(members.size);
}

function setChatEnabled(/** @type {boolean} */ on) {
  ui.chatInput.disabled = ui.chatSend.disabled = !on;
  ui.connect.hidden = on;
  ui.disconnect.hidden = !on;
  ui.id.disabled = ui.room.disabled = on;
}

function setRtc(/** @type {string} */ state, /** @type {string} */ text) {
  ui.rtcStatus.dataset.state = state;
  ui.rtcStatus.textContent = text;
  ui.rtcInput.disabled = ui.rtcSend.disabled = ui.rtcFile.disabled = state !== "open";
  ui.rtcFileLabel.dataset.disabled = String(state !== "open");
}

/** Appends a download link for a received file. */
function logFile(/** @type {string} */ who, /** @type {Blob} */ blob, /** @type {string} */ name) {
  const li = document.createElement("li");
  const sender = document.createElement("span");
  sender.className = "who";
  sender.textContent = who;
  const link = document.createElement("a");
  link.href = URL.createObjectURL(blob);
  link.download = name;
  link.textContent = `${name} (${formatSize(blob.size)})`;
  li.append(sender, link);
  ui.rtcLog.append(li);
  ui.rtcLog.scrollTop = ui.rtcLog.scrollHeight;
}

const formatSize = (/** @type {number} */ n) =>
  n < 1024 ? `${n} B` : n < 1048576 ? `${(n / 1024).toFixed(1)} KiB` : `${(n / 1048576).toFixed(1)} MiB`;

/** Receives lines and files from one channel. */
function receiver(/** @type {string} */ remote) {
  /** @type {{name: string, size: number, type: string, parts: ArrayBuffer[], got: number} | null} */
  let incoming = null;
  return (/** @type {MessageEvent} */ e) => {
    if (e.data instanceof ArrayBuffer) {
      if (!incoming) return;
      incoming.parts.push(e.data);
      incoming.got += e.data.byteLength;
      return;
    }
    let message;
    try {
      message = JSON.parse(String(e.data));
    } catch {
      message = { text: String(e.data) };
    }
    if (message.file) {
      incoming = { ...message.file, parts: [], got: 0 };
    } else if (message.fileEnd && incoming) {
      logFile(remote, new Blob(incoming.parts, { type: incoming.type }), incoming.name);
      incoming = null;
    } else if (typeof message.text === "string") {
      log(ui.rtcLog, message.text, { who: remote });
    }
  };
}

/** Sends a file in chunks, waiting whenever the channel's buffer is full. */
async function sendFile(/** @type {RTCDataChannel} */ channel, /** @type {File} */ file) {
  if (file.size > MAX_FILE_BYTES) {
    log(ui.rtcLog, `${file.name} is larger than ${formatSize(MAX_FILE_BYTES)}`, { kind: "system" });
    return;
  }
  channel.bufferedAmountLowThreshold = HIGH_WATER / 4;
  channel.send(JSON.stringify({ file: { name: file.name, size: file.size, type: file.type } }));
  const data = await file.arrayBuffer();
  for (let offset = 0; offset < data.byteLength; offset += CHUNK_BYTES) {
    if (channel.bufferedAmount > HIGH_WATER) {
      await new Promise((resolve) => channel.addEventListener("bufferedamountlow", resolve, { once: true }));
    }
    channel.send(data.slice(offset, offset + CHUNK_BYTES));
  }
  channel.send(JSON.stringify({ fileEnd: true }));
  log(ui.rtcLog, `sent ${file.name} (${formatSize(file.size)})`, { who: "you", kind: "mine" });
}

/** Wires an open data channel into the page. */
function useChannel(/** @type {{channel: RTCDataChannel, polite: boolean, close: () => void}} */ result, /** @type {string} */ remote) {
  direct?.close();
  direct = { remote, channel: result.channel, close: result.close };
  setRtc("open", `Direct channel open with ${remote}: what you send here goes from browser to browser, not through the relay.`);
  result.channel.addEventListener("message", receiver(remote));
  result.channel.addEventListener("close", () => {
    if (direct?.channel !== result.channel) return;
    direct = null;
    setRtc("idle", `Direct channel with ${remote} closed.`);
    renderMembers();
  });
  renderMembers();
}

async function startDirect(/** @type {string} */ remote) {
  setRtc("connecting", `Connecting to ${remote}…`);
  try {
    // iceServers "relay": the relay's STUN/TURN (GET /v1/ice-servers), for calls across NATs
    useChannel(await openDataChannel(/** @type {any} */ (peer), remote, { timeout: 20_000, iceServers: "relay" }), remote);
  } catch (err) {
    setRtc("failed", `Could not open a channel to ${remote}: ${err instanceof Error ? err.message : err}`);
  }
}

ui.form.addEventListener("submit", async (e) => {
  e.preventDefault();
  if (!ui.form.reportValidity()) return;
  ui.connect.disabled = true;
  closedOnPurpose = null;
  setStatus("connecting", "connecting…");
  try {
    peer = await connect(relayUrl, { id: ui.id.value.trim(), ...(transports ? { transports } : {}) });
  } catch (err) {
    setStatus("closed", `could not connect: ${err instanceof Error ? err.message : err}`);
    ui.connect.disabled = false;
    return;
  }
  const p = peer;
  room = ui.room.value.trim();
  ui.roomName.textContent = room;
  const connected = () => `${p.id} · connected${p.transport === "http" ? " over HTTP" : ""}`;
  setStatus("open", connected());

  p.addEventListener("state", (ev) => {
    if (ev.state === "reconnecting") setStatus("reconnecting", "reconnecting…");
  });
  p.addEventListener("open", (ev) => {
    const connected = () => `${p.id} · connected${p.transport === "http" ? " over HTTP" : ""}`;
  setStatus("open", connected());
    log(ui.chatLog, ev.resumed ? "reconnected (session resumed)" : "reconnected", { kind: "system" });
  });
  p.addEventListener("close", (ev) => {
    if (closedOnPurpose) setStatus(closedOnPurpose.state, closedOnPurpose.text);
    else setStatus("closed", `disconnected: ${ev.reason || "the connection closed"} (code ${ev.code})`);
    setChatEnabled(false);
    members.clear();
    renderMembers();
    ui.connect.disabled = false;
    stopAccepting();
  });
  p.addEventListener("presence", (ev) => {
    if (ev.room !== room) return;
    if (ev.members) {
      members.clear();
      for (const m of ev.members) members.add(m);
    } else if (ev.event === "join") {
      members.add(ev.peer);
      log(ui.chatLog, `${ev.peer} joined`, { kind: "system" });
    } else {
      members.delete(ev.peer);
      log(ui.chatLog, `${ev.peer} left`, { kind: "system" });
    }
    renderMembers();
  });
  p.addEventListener("message", (e) => {
    const mine = e.from === p.id;
    const who = mine ? "you" : e.from;
    if (e.ev === SIGNAL_EV && !e.room) {
      log(ui.rtcLog, `${e.from} → you via the relay (WebRTC setup): ${signalKind(e.data)}`, { kind: "system" });
    } else if (e.room === room && e.ev === "chat") {
      log(ui.chatLog, show(e.data), { who, kind: mine ? "mine" : "" });
    } else {
      // anything else sent to us: a direct message, or a room message that is not chat
      const where = e.room ? `in ${e.room}` : "direct to you";
      const tag = e.ev ? `${where} · ev ${e.ev}` : where;
      log(ui.chatLog, show(e.data), { who, tag, kind: mine ? "mine" : e.room ? "other" : "direct" });
    }
  });
  // Someone pressed "Direct" on us: answer with our side of the negotiation.
  stopAccepting = acceptDataChannels(p, (result, remote) => useChannel(result, remote), {
    accept: (remote) => members.has(remote),
    iceServers: "relay",
    onError: (err, remote) => setRtc("failed", `Channel from ${remote} failed: ${err.message}`),
  });

  try {
    await p.join(room, { presence: true });
  } catch (err) {
    closedOnPurpose = { state: "closed", text: `could not join ${room}: ${err instanceof Error ? err.message : err}` };
    await p.close();
    return;
  }
  setChatEnabled(true);
  ui.connect.disabled = false;
  log(ui.chatLog, `you joined ${room} as ${p.id}`, { kind: "system" });
  ui.chatInput.focus();
});

ui.disconnect.addEventListener("click", () => {
  closedOnPurpose = { state: "idle", text: `not connected · you left ${room}` };
  log(ui.chatLog, `you left ${room}`, { kind: "system" });
  direct?.close();
  peer?.close();
});

ui.chatForm.addEventListener("submit", async (e) => {
  e.preventDefault();
  const text = ui.chatInput.value.trim();
  if (!text || !peer) return;
  ui.chatInput.value = "";
  try {
    // echo: our own line comes back through the relay, in room order
    await peer.publish(room, text, { ev: "chat", echo: true });
  } catch (err) {
    log(ui.chatLog, `not sent: ${err instanceof Error ? err.message : err}`, { kind: "system" });
  }
});

ui.rtcForm.addEventListener("submit", (e) => {
  e.preventDefault();
  const text = ui.rtcInput.value.trim();
  if (!text || !direct) return;
  direct.channel.send(JSON.stringify({ text }));
  log(ui.rtcLog, text, { who: "you", kind: "mine" });
  ui.rtcInput.value = "";
});

ui.rtcFile.addEventListener("change", async () => {
  const file = ui.rtcFile.files?.[0];
  ui.rtcFile.value = "";
  if (!file || !direct) return;
  try {
    await sendFile(direct.channel, file);
  } catch (err) {
    log(ui.rtcLog, `${file.name} not sent: ${err instanceof Error ? err.message : err}`, { kind: "system" });
  }
});

// Let tests and the curious reach the live peer from the console.
Object.defineProperty(window, "relayPeer", { get: () => peer });
