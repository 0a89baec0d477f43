// The relay's admin page: logs in, then follows the cluster through the
// server-sent event stream (/admin/api/stream) and asks /admin/api for a peer
// or a room. Every text from the relay goes into the page as text, never as
// markup. Actions are confirmed, carry the session's CSRF token, and are not
// offered in read-only mode (the relay refuses them there anyway).
import uPlot from "./uplot.js";

const WINDOW_SECONDS = 300; // the traffic chart's span
const $ = (/** @type {string} */ id) => /** @type {HTMLElement} */ (document.getElementById(id));

/** @type {{csrf: string | null, read_only: boolean} | null} */
let session = null;
/** @type {EventSource | null} */
let stream = null;
/** @type {string | null} */
let shownPeer = null;
/** @type {string | null} */
let shownRoom = null;
let roomOffset = 0;
/** @type {Map<string, {at: number, in: number, out: number, refusals: Record<string, number>}>} */
const previous = new Map();
// The chart's columns: time, in/s, out/s, connections, then refusals/s of each code seen.
/** @type {(number | null)[][]} */
const traffic = [[], [], [], []];
/** @type {string[]} */
const refusalCodes = []; // in the order they were first seen; column 4 + index
const REFUSAL_COLOURS = ["#d6453d", "#c98a0b", "#a04fd6", "#d6457f", "#7a5c3a", "#3aa6b9"];
/** @type {uPlot | null} */
let chart = null;

class Unauthorized extends Error {}

/** A JSON request to the admin API; actions carry the CSRF token. */
async function api(/** @type {string} */ path, /** @type {any} */ body = undefined) {
  /** @type {RequestInit} */
  const init = { credentials: "same-origin", headers: {} };
  if (body !== undefined) {
    init.method = "POST";
    init.headers = { "Content-Type": "application/json", "X-CSRF-Token": session?.csrf ?? "" };
    init.body = JSON.stringify(body);
  }
  const response = await fetch(path, init);
  const answer = await response.json().catch(() => ({}));
  if (response.status === 401) {
    showLogin();
    throw new Unauthorized(answer.message ?? "log in first");
  }
  return { status: response.status, answer };
}

function showLogin() {
  session = null;
  stream?.close();
  stream = null;
  $("dash-view").hidden = true;
  $("login-view").hidden = false;
  $("logout").hidden = true;
  $("user").textContent = "";
  setLive("idle", "not logged in");
  $("password").focus();
}

function setLive(/** @type {string} */ state, /** @type {string} */ text) {
  $("live").dataset.state = state;
  $("live").textContent = text;
}

async function start() {
  const { status, answer } = await api("/admin/api/session").catch(() => ({ status: 401, answer: {} }));
  if (status !== 200) return;
  session = answer;
  $("user").textContent = answer.user;
  $("login-view").hidden = true;
  $("dash-view").hidden = false;
  $("logout").hidden = false;
  document.body.classList.toggle("read-only", answer.read_only);
  $("read-only-note").hidden = !answer.read_only;
  for (const element of document.querySelectorAll("[data-action]")) {
    /** @type {HTMLElement} */ (element).hidden = answer.read_only;
  }
  makeChart();
  follow();
}

function follow() {
  stream?.close();
  setLive("connecting", "connecting…");
  stream = new EventSource("/admin/api/stream");
  stream.onopen = () => setLive("open", "live");
  stream.onmessage = (event) => update(JSON.parse(event.data));
  stream.addEventListener("expired", () => showLogin());
  stream.onerror = async () => {
    setLive("reconnecting", "reconnecting…");
    // EventSource retries by itself; a lost login shows the form instead.
    await api("/admin/api/session").catch(() => {});
  };
}

/** @param {{nodes: any[], events: any[]}} data */
function update(data) {
  const now = Date.now() / 1000;
  let totalIn = 0;
  let totalOut = 0;
  let connections = 0;
  /** @type {Record<string, number>} */
  const refusing = {}; // refusals per second by code, summed over the nodes
  const rows = data.nodes.map((node) => {
    if (node.unreachable) return [node.node, "unreachable"];
    const last = previous.get(node.node);
    const span = last ? now - last.at : 0;
    const rate = (/** @type {number} */ count, /** @type {number | undefined} */ before) =>
      last && span > 0 ? Math.max(0, (count - (before ?? 0)) / span) : 0;
    const rateIn = rate(node.messages_in, last?.in);
    const rateOut = rate(node.messages_out, last?.out);
    for (const [code, count] of Object.entries(node.refusals ?? {})) {
      refusing[code] = (refusing[code] ?? 0) + rate(count, last?.refusals[code]);
    }
    previous.set(node.node, { at: now, in: node.messages_in, out: node.messages_out, refusals: node.refusals ?? {} });
    totalIn += rateIn;
    totalOut += rateOut;
    connections += node.connections;
    const backplane = node.backplane_up ? (node.draining ? "up, draining" : "up") : "down";
    return [node.node, node.connections, node.peers, node.rooms, rateIn.toFixed(1), rateOut.toFixed(1),
      node.queued_messages, backplane, duration(node.uptime_seconds), node.version];
  });
  fillTable("nodes", rows);
  const down = data.nodes.filter((node) => node.unreachable || !node.backplane_up).length;
  $("cluster-summary").textContent = `· ${data.nodes.length} node${data.nodes.length === 1 ? "" : "s"}` +
    (down ? `, ${down} with a problem` : "");
  fillTable("events", data.events.map((event) => [
    new Date(event.at * 1000).toLocaleTimeString(), event.node, event.kind === "closed" ? `closed (${event.label})` : "refused",
    event.peer ?? "(no id)", String(event.code),
  ]));
  plot(now, [totalIn, totalOut, connections], refusing);
  if (shownPeer !== null) showPeer(shownPeer).catch(() => {});
  if (shownRoom !== null) showRoom().catch(() => {});
}

function fillTable(/** @type {string} */ id, /** @type {any[][]} */ rows) {
  const table = /** @type {HTMLTableElement} */ ($(id));
  const body = table.tBodies[0];
  if (!rows.length) {
    const cell = document.createElement("td");
    cell.colSpan = table.tHead?.rows[0].cells.length ?? 1;
    cell.className = "muted";
    cell.textContent = "nothing yet";
    const row = document.createElement("tr");
    row.append(cell);
    body.replaceChildren(row);
    return;
  }
  body.replaceChildren(...rows.map((cells) => {
    const row = document.createElement("tr");
    for (const cell of cells) {
      const td = document.createElement("td");
      td.textContent = String(cell);
      row.append(td);
    }
    if (cells.length === 2) row.classList.add("bad");
    return row;
  }));
}

function duration(/** @type {number} */ seconds) {
  const s = Math.floor(seconds);
  if (s < 60) return `${s} s`;
  if (s < 3600) return `${Math.floor(s / 60)} min`;
  if (s < 86400) return `${Math.floor(s / 3600)} h ${Math.floor((s % 3600) / 60)} min`;
  return `${Math.floor(s / 86400)} d ${Math.floor((s % 86400) / 3600)} h`;
}

function chartWidth() {
  return Math.max(240, $("chart").clientWidth);
}

function makeChart() {
  if (chart !== null) return;
  chart = new uPlot({
    width: chartWidth(),
    height: 220,
    series: [
      {},
      { label: "in/s", stroke: "#4f6df5", width: 2, scale: "rate" },
      { label: "out/s", stroke: "#1f9d63", width: 2, scale: "rate" },
      { label: "connections", stroke: "#8d95a8", width: 2, dash: [6, 4], scale: "count" },
    ],
    axes: [{}, { scale: "rate", size: 50 }, { scale: "count", side: 1, size: 50, grid: { show: false } }],
    scales: {
      // the last minute at least, up to WINDOW_SECONDS, ending now
      x: { range: (_u, min, max) => [max - Math.min(WINDOW_SECONDS, Math.max(60, max - min)), max] },
      rate: { range: (_u, _min, max) => [0, Math.max(1, max * 1.1)] },
      count: { range: (_u, _min, max) => [0, Math.max(1, Math.ceil(max * 1.1))] },
    },
  }, /** @type {any} */ (traffic), $("chart"));
  window.addEventListener("resize", () => chart?.setSize({ width: chartWidth(), height: 220 }));
}

function addRefusalSeries(/** @type {string} */ code) {
  const index = refusalCodes.indexOf(code);
  chart?.addSeries({
    label: `refused ${code}/s`, scale: "rate", width: 1.5,
    stroke: REFUSAL_COLOURS[index % REFUSAL_COLOURS.length],
  }, 4 + index);
}

/** One point of each series at ``now``: totals, then each code's refusals per second. */
function plot(/** @type {number} */ now, /** @type {number[]} */ values, /** @type {Record<string, number>} */ refusing) {
  for (const code of Object.keys(refusing).sort()) {
    if (refusalCodes.includes(code)) continue;
    refusalCodes.push(code);
    traffic.push(traffic[0].map(() => null)); // no line before the code was first seen
    addRefusalSeries(code);
  }
  traffic[0].push(now);
  values.forEach((value, i) => traffic[1 + i].push(value));
  refusalCodes.forEach((code, i) => traffic[4 + i].push(refusing[code] ?? 0));
  while (traffic[0].length && /** @type {number} */ (traffic[0][0]) < now - WINDOW_SECONDS) {
    for (const series of traffic) series.shift();
  }
  chart?.setData(/** @type {any} */ (traffic));
}

/** @type {Map<string, {count: number, at: number}>} */
const peerCounts = new Map(); // the shown peer's last counts, for its rates

/** A count the relay keeps as a total, shown as a rate since the last look (and the total). */
function perSecond(/** @type {string} */ id, /** @type {string} */ name, /** @type {number | null} */ count) {
  if (count === null) return "—";
  const key = `${id}\u0000${name}`;
  const now = Date.now();
  const last = peerCounts.get(key);
  peerCounts.set(key, { count, at: now });
  if (!last || count < last.count || now <= last.at) return `${count} in all`;
  const rate = ((count - last.count) * 1000) / (now - last.at);
  return `${rate.toFixed(1)}/s (${count} in all)`;
}

async function showPeer(/** @type {string} */ id) {
  const { status, answer } = await api(`/admin/api/peers/${encodeURIComponent(id)}`);
  if (shownPeer !== id) return; // another peer was asked for meanwhile
  $("peer").hidden = false;
  $("peer").dataset.peer = id;
  const online = status === 200;
  $("peer").dataset.online = String(online);
  $("peer-status").textContent = online ? `${id}: ${answer.connected ? "connected" : "resuming"}` :
    status === 404 ? `${id}: not online (watching)` : `${id}: ${answer.message ?? "unavailable"}`;
  const facts = online ? [
    ["node", answer.node],
    ["connected since", answer.connected_seconds === null ? "—" :
      `${new Date(Date.now() - answer.connected_seconds * 1000).toLocaleTimeString()} (${duration(answer.connected_seconds)})`],
    ["envelopes in", perSecond(id, "in", answer.received_envelopes)],
    ["errors sent", perSecond(id, "err", answer.errors_sent)],
    ["queue", `${answer.queue_messages} messages, ${answer.queue_bytes} bytes`],
    ["awaiting acks", answer.awaiting_acks],
    ["resume", answer.resume_seconds_left === null ? "connected" : `${answer.resume_seconds_left.toFixed(0)} s left`],
    ["closing", answer.closing ?? "no"],
  ] : [];
  $("peer-facts").replaceChildren(...facts.flatMap(([name, value]) => {
    const dt = document.createElement("dt");
    dt.textContent = name;
    const dd = document.createElement("dd");
    dd.textContent = String(value);
    return [dt, dd];
  }));
  const rooms = online ? Object.keys(answer.rooms).sort() : [];
  $("peer-rooms").replaceChildren(...rooms.map((room) => {
    const item = document.createElement("li");
    item.dataset.room = room;
    item.append(room);
    if (!session?.read_only) {
      const remove = document.createElement("button");
      remove.type = "button";
      remove.textContent = "Remove";
      remove.addEventListener("click", () => act(`remove ${id} from room ${room}`, "/admin/api/remove", { peer: id, room }));
      item.append(" ", remove);
    }
    return item;
  }));
  if (!rooms.length) $("peer-rooms").replaceChildren(note(online ? "in no room" : "—"));
  const refusals = online ? answer.refusals.slice().reverse() : [];
  $("peer-refusals").replaceChildren(...refusals.map((/** @type {any} */ refusal) =>
    note(`${new Date(refusal.at * 1000).toLocaleTimeString()} ${refusal.code}`)));
  if (!refusals.length) $("peer-refusals").replaceChildren(note("none"));
  /** @type {HTMLButtonElement} */ ($("peer-disconnect")).disabled = !online;
}

function note(/** @type {string} */ text) {
  const item = document.createElement("li");
  item.className = "muted";
  item.textContent = text;
  return item;
}

/** The room asked for (from its input), then followed: each push refreshes its page of members. */
async function showRoom(/** @type {string | null} */ asked = null) {
  if (asked !== null) shownRoom = asked;
  const room = shownRoom;
  if (room === null) return;
  const { status, answer } = await api(`/admin/api/rooms/${encodeURIComponent(room)}?offset=${roomOffset}&limit=50`);
  if (room !== shownRoom) return; // another room was asked for meanwhile
  $("room").hidden = false;
  if (status !== 200) {
    $("room-status").textContent = answer.message ?? "unavailable";
    $("room-members").replaceChildren();
    return;
  }
  const last = Math.min(answer.count, roomOffset + answer.members.length);
  $("room-status").textContent = answer.count ? `${room}: ${answer.count} members (${roomOffset + 1}–${last})` : `${room}: empty`;
  $("room-members").replaceChildren(...answer.members.map((/** @type {string} */ member) => {
    const item = document.createElement("li");
    item.dataset.member = member;
    const link = document.createElement("button");
    link.type = "button";
    link.className = "link";
    link.textContent = member;
    link.addEventListener("click", () => lookUpPeer(member));
    item.append(link, presenceBadge(answer.presence?.[member]));
    return item;
  }));
  /** @type {HTMLButtonElement} */ ($("room-prev")).disabled = roomOffset === 0;
  /** @type {HTMLButtonElement} */ ($("room-next")).disabled = last >= answer.count;
}

/** A member's presence: online, resuming (its window's seconds left) or unknown; watching presence or not. */
function presenceBadge(/** @type {any} */ presence) {
  const badge = document.createElement("span");
  const state = presence?.state ?? "unknown";
  badge.className = "presence";
  badge.dataset.state = state;
  const text = state === "resuming" ? `resuming, ${Math.round(presence.seconds_left ?? 0)} s left` : state;
  badge.textContent = (presence?.node ? `${text} on ${presence.node}` : text) + (presence?.watching ? " · watches presence" : "");
  return badge;
}

function lookUpPeer(/** @type {string} */ id) {
  /** @type {HTMLInputElement} */ ($("peer-id")).value = id;
  peerCounts.clear();
  shownPeer = id;
  showPeer(id).catch(() => {});
}

/** Confirm, then run an action; its outcome goes to the status line. */
async function act(/** @type {string} */ what, /** @type {string} */ path, /** @type {any} */ body) {
  if (!window.confirm(`Really ${what}?`)) return;
  const { status, answer } = await api(path, body);
  $("action-result").textContent = status === 200 ? `done: ${what} (${JSON.stringify(answer)})` :
    `refused: ${what}: ${answer.message ?? status}`;
  if (shownPeer !== null) showPeer(shownPeer).catch(() => {});
}

/** The JSON value typed into an input, or undefined (and a message) when it is not JSON. */
function jsonOf(/** @type {string} */ id) {
  try {
    return JSON.parse(/** @type {HTMLInputElement} */ ($(id)).value);
  } catch {
    $("action-result").textContent = "the message must be JSON, e.g. \"hello\" or {\"n\": 1}";
    return undefined;
  }
}

/** Search as the operator types (after a pause): matches of the input's kind, to click. */
function suggest(/** @type {string} */ input, /** @type {string} */ list, /** @type {"peers" | "rooms"} */ kind,
  /** @type {(name: string) => void} */ pick) {
  /** @type {ReturnType<typeof setTimeout> | undefined} */
  let timer;
  $(input).addEventListener("input", () => {
    clearTimeout(timer);
    timer = setTimeout(async () => {
      const prefix = /** @type {HTMLInputElement} */ ($(input)).value.trim();
      if (!prefix) {
        $(list).replaceChildren();
        return;
      }
      const { status, answer } = await api(`/admin/api/search?q=${encodeURIComponent(prefix)}`);
      if (status !== 200 || /** @type {HTMLInputElement} */ ($(input)).value.trim() !== prefix) return;
      $(list).replaceChildren(...answer[kind].map((/** @type {string} */ name) => {
        const item = document.createElement("li");
        const button = document.createElement("button");
        button.type = "button";
        button.className = "link";
        button.textContent = name;
        button.addEventListener("click", () => {
          $(list).replaceChildren();
          pick(name);
        });
        item.append(button);
        return item;
      }));
    }, 300);
  });
}
suggest("peer-id", "peer-matches", "peers", lookUpPeer);
suggest("room-name", "room-matches", "rooms", (name) => {
  /** @type {HTMLInputElement} */ ($("room-name")).value = name;
  roomOffset = 0;
  showRoom(name).catch(() => {});
});

$("login-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const password = /** @type {HTMLInputElement} */ ($("password"));
  const token = /** @type {HTMLInputElement} */ ($("token"));
  const body = password.value ? { password: password.value } : { token: token.value };
  const response = await fetch("/admin/login", {
    method: "POST", credentials: "same-origin",
    headers: { "Content-Type": "application/json" }, body: JSON.stringify(body),
  });
  const answer = await response.json().catch(() => ({}));
  password.value = token.value = "";
  $("login-error").textContent = response.ok ? "" : answer.message ?? `refused (${response.status})`;
  if (response.ok) await start();
});
$("logout").addEventListener("click", async () => {
  await fetch("/admin/logout", { method: "POST", credentials: "same-origin" });
  showLogin();
});
$("peer-form").addEventListener("submit", (event) => {
  event.preventDefault();
  $("peer-matches").replaceChildren();
  lookUpPeer(/** @type {HTMLInputElement} */ ($("peer-id")).value.trim());
});
$("peer-disconnect").addEventListener("click", () => {
  if (shownPeer !== null) act(`disconnect ${shownPeer}`, "/admin/api/disconnect", { peer: shownPeer });
});
$("peer-send").addEventListener("submit", (event) => {
  event.preventDefault();
  const d = jsonOf("peer-send-d");
  if (d !== undefined && shownPeer !== null) act(`send a message to ${shownPeer}`, "/admin/api/publish", { to: shownPeer, d });
});
$("room-form").addEventListener("submit", (event) => {
  event.preventDefault();
  $("room-matches").replaceChildren();
  roomOffset = 0;
  showRoom(/** @type {HTMLInputElement} */ ($("room-name")).value.trim()).catch(() => {});
});
$("room-prev").addEventListener("click", () => { roomOffset = Math.max(0, roomOffset - 50); showRoom().catch(() => {}); });
$("room-next").addEventListener("click", () => { roomOffset += 50; showRoom().catch(() => {}); });
$("room-publish").addEventListener("submit", (event) => {
  event.preventDefault();
  const room = shownRoom;
  const d = jsonOf("room-publish-d");
  if (d !== undefined && room !== null) act(`publish a message to room ${room}`, "/admin/api/publish", { room, d });
});

start().then(() => { if (session === null) showLogin(); }, () => showLogin());
