/**
 * Typed errors. Every error the client raises is a {@link RelayError} with a
 * string `code`: for errors the relay reports (`err` envelopes) it is the
 * protocol's code (`peer-offline`, `rate-limited`, ...); client-side
 * conditions have codes of their own (`timeout`, `closed`, ...). Callers can
 * branch with `instanceof` or on `.code`, whichever reads better.
 */

export class RelayError extends Error {
  /**
   * @param {string} code protocol error code, or a client-side one
   * @param {string} [message]
   * @param {{id?: unknown, to?: string | string[], cause?: unknown}} [details]
   */
  constructor(code, message, details = {}) {
    super(message || code, details.cause === undefined ? undefined : { cause: details.cause });
    this.name = new.target.name;
    this.code = code;
    /** request id echoed by the relay, when the error answers a request */
    this.id = details.id;
    /** unreached target(s), for `peer-offline` */
    this.to = details.to;
  }
}

// One class per protocol error code (protocol.md, "Error codes").
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

/** Maps a protocol error code to its class. */
export const ERROR_CLASSES = Object.freeze({
  "bad-envelope": BadEnvelope,
  "unknown-type": UnknownType,
  "not-registered": NotRegistered,
  unauthorized: Unauthorized,
  forbidden: Forbidden,
  "id-taken": IdTaken,
  "peer-offline": PeerOffline,
  "too-large": TooLarge,
  "rate-limited": RateLimited,
  overloaded: Overloaded,
  "room-full": RoomFull,
  "backend-error": BackendError,
  internal: InternalError,
});

/**
 * The connection ended for good: closed by the relay with a code that must
 * not be retried (4500-4999, 1008, ...), by `peer.close()`, or after the
 * reconnect attempts ran out. Pending work is rejected with this error.
 */
export class ConnectionClosed extends RelayError {
  /**
   * @param {number} closeCode WebSocket close code
   * @param {string} [reason] close reason
   * @param {{cause?: unknown}} [details]
   */
  constructor(closeCode, reason = "", details = {}) {
    super("closed", `connection closed (${closeCode}${reason ? ` ${reason}` : ""})`, details);
    this.closeCode = closeCode;
    this.reason = reason;
  }
}

/**
 * The socket dropped (or closed with a code other than 1001) after the
 * request was written but before the relay answered it: it may or may not
 * have been acted on. (Work that was not yet written stays buffered and is
 * sent after the reconnect instead; so is what a draining relay, 1001, left
 * unanswered, since it acted on none of it.)
 */
export class ConnectionLost extends RelayError {
  constructor(message = "connection lost before the relay answered") {
    super("connection-lost", message);
  }
}

/** An operation that needs a live connection (e.g. `ping`) was called while disconnected. */
export class NotConnected extends RelayError {
  constructor(message = "not connected") {
    super("not-connected", message);
  }
}

/** No reply to a `request()` within its timeout. */
export class RequestTimeout extends RelayError {
  constructor(message = "request timed out") {
    super("timeout", message);
  }
}

/** The remote peer's request handler threw; `message` is its error message. */
export class RemoteError extends RelayError {
  /** @param {string} message */
  constructor(message) {
    super("remote-error", message);
  }
}

/** A send was made while disconnected and the offline buffer is full. */
export class OfflineBufferFull extends RelayError {
  constructor(message = "offline buffer full") {
    super("offline-buffer-full", message);
  }
}

/** The relay sent something this client cannot parse. */
export class ProtocolError extends RelayError {
  /** @param {string} message @param {{cause?: unknown}} [details] */
  constructor(message, details) {
    super("protocol", message, details);
  }
}

/**
 * Builds the typed error for an `err` envelope.
 * @param {{code?: unknown, msg?: unknown, id?: unknown, to?: any}} env
 * @returns {RelayError}
 */
export function errorFromEnvelope(env) {
  const code = typeof env.code === "string" ? env.code : "internal";
  const Cls = Object.hasOwn(ERROR_CLASSES, code)
    ? ERROR_CLASSES[/** @type {keyof typeof ERROR_CLASSES} */ (code)]
    : RelayError;
  const msg = typeof env.msg === "string" && env.msg ? env.msg : code;
  return new Cls(code, msg, { id: env.id, to: env.to });
}
