import type { RelayPeer } from "./index.js";

export const SIGNAL_EV: "webrtc.signal";

export interface DataChannelOptions {
  /**
   * default []: host candidates only (enough on one machine or a LAN);
   * "relay": fetched from the relay's /v1/ice-servers with the peer's token
   */
  iceServers?: RTCIceServer[] | "relay";
  /** extra RTCPeerConnection configuration */
  rtcConfig?: RTCConfiguration;
  /** data channel label (default "relay") */
  label?: string;
  /** negotiated channel id, the same on both sides (default 0) */
  channelId?: number;
  channelOptions?: RTCDataChannelInit;
  /** signaling `ev` (default "webrtc.signal") */
  ev?: string;
  /** ms to wait for the channel to open (default 30000) */
  timeout?: number;
  RTCPeerConnection?: typeof RTCPeerConnection;
  signal?: AbortSignal;
}

export interface DataChannelResult {
  pc: RTCPeerConnection;
  channel: RTCDataChannel;
  /** this side's perfect-negotiation role */
  polite: boolean;
  /** closes the channel and the connection and stops listening for signals */
  close(): void;
}

export function openDataChannel(peer: RelayPeer, remoteId: string, options?: DataChannelOptions): Promise<DataChannelResult>;

export function acceptDataChannels(
  peer: RelayPeer,
  onChannel: (result: DataChannelResult, remoteId: string) => void,
  options?: DataChannelOptions & {
    /** who may connect (default: anyone) */
    accept?: (remoteId: string) => boolean;
    onError?: (err: Error, remoteId: string) => void;
  },
): () => void;

export interface FetchIceServersOptions {
  /** with auth on, a token for the peer (sent as `Authorization: Bearer`) */
  token?: string | (() => string | Promise<string>);
  signal?: AbortSignal;
  fetch?: typeof fetch;
}

/** The relay's STUN and TURN servers (TURN with short-lived credentials), from GET /v1/ice-servers. */
export function fetchIceServers(relayUrl: string, options?: FetchIceServersOptions): Promise<RTCIceServer[]>;
