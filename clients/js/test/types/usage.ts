// Compiled (not run) by `npm run typecheck`: the declarations must accept
// ordinary usage and reject obvious misuse.
declare const WebSocket: new (url: string, protocols?: string | string[]) => unknown;
import { connect, PeerOffline, RelayError, type RelayPeer } from "relay-client";
import { fetchIceServers, openDataChannel } from "relay-client/webrtc";

async function main(): Promise<void> {
  const peer: RelayPeer = await connect("ws://127.0.0.1:1/v1/ws", { id: "alice", WebSocket });
  const viaHttp = await connect("ws://127.0.0.1:1/v1/ws", { transports: ["http"], httpUrl: "http://127.0.0.1:1/v1/http", fetch, streamTimeout: 0 });
  const kind: "websocket" | "http" | null = viaHttp.transport;
  // @ts-expect-error -- transport is read-only
  viaHttp.transport = "http";
  // @ts-expect-error -- only "websocket" and "http" are transports
  await connect("ws://127.0.0.1:1/v1/ws", { transports: ["sse"], fallbackTimeout: 1000 });
  void kind;
  const r = await peer.send(["bob", "carol"], new Uint8Array([1, 2]), { ev: "chat" });
  const queued: boolean = r.queued;
  await peer.publish("lobby", { text: "hi" }, { echo: true });
  await peer.join("lobby", { presence: true });
  peer.addEventListener("message", (e) => {
    const from: string = e.from;
    void from;
    void e.data;
  });
  peer.addEventListener("presence", (e) => void e.members);
  peer.addEventListener("close", (e) => void e.code);
  peer.onRequest("add", (d: { a: number; b: number }) => d.a + d.b);
  const sum = await peer.request<number>("bob", { a: 1, b: 2 }, { ev: "add", timeout: 1000 });
  const rtt: number = await peer.ping();
  try {
    await peer.send("nobody", 1);
  } catch (err) {
    if (err instanceof PeerOffline) void err.to;
    if (err instanceof RelayError) void err.code;
  }
  for await (const m of peer) void m.data;
  const { channel } = await openDataChannel(peer, "bob", { iceServers: [{ urls: "stun:stun.example.org" }] });
  channel.send("hello");
  await openDataChannel(peer, "carol", { iceServers: "relay" });
  const servers: RTCIceServer[] = await fetchIceServers(peer.url, { token: () => "jwt" });
  void servers;
  // @ts-expect-error -- only "relay" names the relay's servers
  await openDataChannel(peer, "dave", { iceServers: "google" });
  // @ts-expect-error -- room must be a string
  await peer.join(42);
  void queued, sum, rtt;
  await peer.close();
}
void main;
