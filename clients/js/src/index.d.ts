// Type declarations for relay-client (hand-written; the source is JS with JSDoc).
import type { ExtensionCodecType } from "@msgpack/msgpack";

export const SUBPROTOCOL: "relay.v1";
export const ERROR_EV: "relay.error";

/** Anything with the browser WebSocket's shape (globalThis.WebSocket, the `ws` package). */
export interface WebSocketConstructor {
  new (url: string, protocols?: string | string[]): any;
}

/** A link to the relay: a WebSocket, or the HTTP fallback (docs/protocol-http.md). */
export type Transport = "websocket" | "http";

export interface ConnectOptions {
  /** id to register as; the relay picks one when absent (and auth allows) */
  id?: string;
  /** JWT when the relay has auth on; a function is called before every (re)connect */
  token?: string | (() => string | Promise<string>);
  /** resume secret of an earlier session (takes it over; the old socket is closed 4503) */
  resume?: string;
  /** WebSocket constructor; default globalThis.WebSocket (Node 20: pass `ws`) */
  WebSocket?: WebSocketConstructor;
  /**
   * transports to try, in order, on every connect and reconnect (default ["websocket", "http"]);
   * the next is tried only when one never opened
   */
  transports?: Transport[];
  /** the HTTP transport's URL (default: `url` with ws(s) -> http(s) and a last path segment `ws` -> `http`) */
  httpUrl?: string;
  /** fetch for the HTTP transport; default globalThis.fetch */
  fetch?: typeof globalThis.fetch;
  /** ms for a transport to open before the next one is tried (default 5000) */
  fallbackTimeout?: number;
  /** ms an HTTP stream may take to bring its first record before the session long-polls (default 3000; 0: long-poll at once) */
  streamTimeout?: number;
  /** reconnect after drops and retryable closes (default true) */
  reconnect?: boolean;
  /** give up after this many reconnects without a stable (5 s) session (default Infinity) */
  maxRetries?: number;
  /** full-jitter exponential backoff, ms (default {base: 250, max: 10000}) */
  backoff?: { base?: number; max?: number };
  /** ms from socket creation to `welcome` before the attempt is dropped (default 10000) */
  connectTimeout?: number;
  /** ms between application pings (default 20000; 0 disables) */
  pingInterval?: number;
  /** ms to wait for a pong before the link is declared dead (default 10000) */
  pingTimeout?: number;
  /** default request() timeout, ms (default 30000) */
  requestTimeout?: number;
  /** max sends waiting to be written (while disconnected, or paced); default 256 */
  maxBuffered?: number;
  /** pace writes to the relay's advertised rate limit (default true) */
  pace?: boolean;
  /** msgpack codec options */
  msgpack?: {
    extensionCodec?: ExtensionCodecType<undefined>;
    useBigInt64?: boolean;
    mapKeyConverter?: (key: unknown) => string | number;
  };
}

export type State = "connecting" | "open" | "reconnecting" | "closed";

export interface SendResult {
  /** request id (matches a later "undelivered" event's id); a request sent again after a drain (1001) has a new one */
  id?: number;
  /** true when a target is resuming and the relay queued the message for it */
  queued: boolean;
}

export interface Limits {
  max_frame_bytes?: number;
  /** frames one message may take */
  max_fragments?: number;
  /** seconds a fragmented message may take to complete */
  message_timeout_seconds?: number;
  rate_per_second?: number;
  rate_burst?: number;
  rooms_per_peer?: number;
  peers_per_room?: number;
  queue_messages?: number;
  queue_bytes?: number;
  resume_seconds?: number;
  hello_timeout_seconds?: number;
  [key: string]: number | undefined;
}

export interface RelayPeerEventMap {
  message: RelayMessageEvent;
  presence: PresenceEvent;
  state: StateEvent;
  open: OpenEvent;
  disconnect: DisconnectEvent;
  close: RelayCloseEvent;
  undelivered: UndeliveredEvent;
  error: RelayErrorEvent;
}

export class RelayPeer extends EventTarget {
  constructor(url: string, options?: ConnectOptions);
  readonly url: string;
  /** the HTTP transport's URL; undefined when it cannot be derived from `url` and none was given */
  readonly httpUrl: string | undefined;
  /** the transport of the current link, while there is one */
  readonly transport: Transport | null;
  /** our registered id */
  id: string | undefined;
  /** secret of the latest welcome (rotates on every welcome) */
  resumeSecret: string | undefined;
  limits: Limits;
  node: string | undefined;
  state: State;
  readonly connected: boolean;
  readonly rooms: string[];

  send(to: string | string[], data: unknown, opts?: { ev?: string; ack?: boolean; rid?: unknown; re?: unknown }): Promise<SendResult>;
  publish(room: string, data: unknown, opts?: { ev?: string; echo?: boolean; ack?: boolean }): Promise<SendResult>;
  join(room: string, opts?: { presence?: boolean }): Promise<SendResult>;
  leave(room: string): Promise<SendResult>;
  request<T = any>(to: string, data: unknown, opts?: { ev?: string; timeout?: number }): Promise<T>;
  onRequest(ev: string | null, handler: (data: any, msg: RelayMessageEvent) => unknown): () => void;
  reply(msg: RelayMessageEvent, data: unknown, opts?: { error?: boolean }): Promise<SendResult>;
  /** application-level ping; resolves with the round-trip time in ms */
  ping(opts?: { timeout?: number }): Promise<number>;
  close(code?: number, reason?: string): Promise<void>;
  [Symbol.asyncIterator](): AsyncIterableIterator<RelayMessageEvent>;

  addEventListener<K extends keyof RelayPeerEventMap>(
    type: K,
    listener: (ev: RelayPeerEventMap[K]) => void,
    options?: boolean | AddEventListenerOptions,
  ): void;
  addEventListener(type: string, listener: EventListenerOrEventListenerObject | null, options?: boolean | AddEventListenerOptions): void;
  removeEventListener<K extends keyof RelayPeerEventMap>(
    type: K,
    listener: (ev: RelayPeerEventMap[K]) => void,
    options?: boolean | EventListenerOptions,
  ): void;
  removeEventListener(type: string, listener: EventListenerOrEventListenerObject | null, options?: boolean | EventListenerOptions): void;
}

export function connect(url: string, options?: ConnectOptions): Promise<RelayPeer>;

// ---- events
export class RelayMessageEvent extends Event {
  readonly from: string;
  readonly data: any;
  readonly ev: string | undefined;
  readonly room: string | undefined;
  readonly rid: unknown;
  readonly re: unknown;
}
export class PresenceEvent extends Event {
  readonly room: string;
  readonly peer: string;
  readonly event: "join" | "leave";
  readonly members: string[] | undefined;
}
export class StateEvent extends Event {
  readonly state: State;
  readonly previous: State;
}
export class OpenEvent extends Event {
  readonly id: string;
  readonly resumed: boolean;
  readonly node: string | undefined;
}
export class DisconnectEvent extends Event {
  readonly code: number;
  readonly reason: string;
  /** ms until the next attempt */
  readonly delay: number;
}
export class RelayCloseEvent extends Event {
  readonly code: number;
  readonly reason: string;
  readonly error: Error;
}
export class UndeliveredEvent extends Event {
  readonly id: unknown;
  readonly to: string | string[] | undefined;
  readonly error: PeerOffline;
  /** the original payload, when still remembered (last 256 queued sends) */
  readonly data: unknown;
  readonly ev: string | undefined;
}
export class RelayErrorEvent extends Event {
  readonly error: Error;
}

// ---- errors
export class RelayError extends Error {
  constructor(code: string, message?: string, details?: { id?: unknown; to?: string | string[]; cause?: unknown });
  readonly code: string;
  readonly id: unknown;
  readonly to: string | string[] | undefined;
}
export class BadEnvelope extends RelayError {}
export class UnknownType extends RelayError {}
export class NotRegistered extends RelayError {}
export class Unauthorized extends RelayError {}
export class Forbidden extends RelayError {}
export class IdTaken extends RelayError {}
export class PeerOffline extends RelayError {}
export class TooLarge extends RelayError {}
export class RateLimited extends RelayError {}
export class Overloaded extends RelayError {}
export class RoomFull extends RelayError {}
export class BackendError extends RelayError {}
export class InternalError extends RelayError {}
export const ERROR_CLASSES: Readonly<Record<string, typeof RelayError>>;
export class ConnectionClosed extends RelayError {
  constructor(closeCode: number, reason?: string, details?: { cause?: unknown });
  readonly code: "closed";
  readonly closeCode: number;
  readonly reason: string;
}
/**
 * The socket dropped (or closed with a code other than 1001) after the request was written but
 * before the relay answered: it may or may not have been acted on. After a drain (1001) the
 * relay acted on nothing it left unanswered, and the client sends such requests again instead.
 */
export class ConnectionLost extends RelayError {
  constructor(message?: string);
}
export class NotConnected extends RelayError {
  constructor(message?: string);
}
export class RequestTimeout extends RelayError {
  constructor(message?: string);
}
export class RemoteError extends RelayError {
  constructor(message: string);
}
export class OfflineBufferFull extends RelayError {
  constructor(message?: string);
}
export class ProtocolError extends RelayError {
  constructor(message: string, details?: { cause?: unknown });
}
export function errorFromEnvelope(env: { code?: unknown; msg?: unknown; id?: unknown; to?: unknown }): RelayError;

export function backoffDelay(attempt: number, opts?: { base?: number; max?: number }, random?: () => number): number;
export function shouldReconnect(code: number): boolean;
