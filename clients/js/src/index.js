/**
 * relay-client: the JavaScript reference peer of the relay (protocol v1).
 * @module relay-client
 */
export { connect, RelayPeer, SUBPROTOCOL, ERROR_EV } from "./client.js";
export * from "./errors.js";
export * from "./events.js";
export { backoffDelay, shouldReconnect } from "./backoff.js";
