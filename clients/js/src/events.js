/**
 * Event classes dispatched by a {@link RelayPeer} (an `EventTarget`). Each
 * carries its fields as plain properties, so listeners read `e.from`,
 * `e.data`, ... directly.
 */

/** "message": a `msg` delivered by the relay. */
export class RelayMessageEvent extends Event {
  /** @param {Record<string, any>} env the `msg` envelope */
  constructor(env) {
    super("message");
    /** sender id, stamped by the relay ("@..." for the relay itself) */
    this.from = /** @type {string} */ (env.from);
    /** the payload (`d`), any msgpack value; bytes arrive as Uint8Array */
    this.data = env.d;
    /** @type {string | undefined} */
    this.ev = env.ev;
    /** @type {string | undefined} set when the message came from a `pub` */
    this.room = env.room;
    /** request id when this message is a request (see `peer.reply`) */
    this.rid = env.rid;
    /** the request id this message answers */
    this.re = env.re;
  }
}

/** "presence": a membership change in a room joined with `presence: true`. */
export class PresenceEvent extends Event {
  /** @param {Record<string, any>} env the `presence` envelope */
  constructor(env) {
    super("presence");
    /** @type {string} */
    this.room = env.room;
    /** @type {string} */
    this.peer = env.peer;
    /** @type {"join" | "leave"} */
    this.event = env.event;
    /** @type {string[] | undefined} full member list (first event after joining) */
    this.members = env.members;
  }
}

/** "state": the connection state changed. */
export class StateEvent extends Event {
  /** @param {string} state @param {string} previous */
  constructor(state, previous) {
    super("state");
    this.state = state;
    this.previous = previous;
  }
}

/** "open": a `welcome` arrived (first connect and every reconnect). */
export class OpenEvent extends Event {
  /** @param {{id: string, resumed: boolean, node?: string}} info */
  constructor({ id, resumed, node }) {
    super("open");
    this.id = id;
    /** true when the relay restored the previous session (rooms, queued messages) */
    this.resumed = resumed;
    this.node = node;
  }
}

/** "disconnect": the socket dropped and a reconnect is scheduled. */
export class DisconnectEvent extends Event {
  /** @param {number} code @param {string} reason @param {number} delay ms until the next attempt */
  constructor(code, reason, delay) {
    super("disconnect");
    this.code = code;
    this.reason = reason;
    this.delay = delay;
  }
}

/** "close": the peer is closed for good; `error` is what pending work was rejected with. */
export class RelayCloseEvent extends Event {
  /** @param {number} code @param {string} reason @param {Error} error */
  constructor(code, reason, error) {
    super("close");
    this.code = code;
    this.reason = reason;
    this.error = error;
  }
}

/**
 * "undelivered": a message the relay had accepted as `queued` (its target was
 * resuming) was dropped because the target never came back.
 */
export class UndeliveredEvent extends Event {
  /**
   * @param {import("./errors.js").RelayError} error
   * @param {{data: unknown, ev?: string}} [original] the lost send, if still remembered
   */
  constructor(error, original) {
    super("undelivered");
    /** the `id` of the original request (as returned by `send`) */
    this.id = error.id;
    /** the target(s) that were not reached */
    this.to = error.to;
    this.error = error;
    /** the original payload and ev (the client remembers its last 256 queued sends) */
    this.data = original?.data;
    this.ev = original?.ev;
  }
}

/** "error": something failed that no promise is waiting for (an `err` without a pending request, an undecodable frame, ...). */
export class RelayErrorEvent extends Event {
  /** @param {Error} error */
  constructor(error) {
    super("error");
    this.error = error;
  }
}
