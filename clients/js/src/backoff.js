/**
 * Full-jitter exponential backoff: the n-th retry waits a uniformly random
 * time in [0, min(max, base * 2^n)]. Random spread keeps a fleet of clients
 * that lost the same relay from reconnecting in lockstep.
 * @param {number} attempt 0 for the first retry
 * @param {{base?: number, max?: number}} [opts] milliseconds
 * @param {() => number} [random]
 */
export function backoffDelay(attempt, { base = 250, max = 10_000 } = {}, random = Math.random) {
  const cap = Math.min(max, base * 2 ** Math.min(attempt, 30));
  return Math.floor(random() * cap);
}

// Close codes after which the client reconnects (protocol.md, "Close codes"):
// 1001 drain, 1006 dropped, 1005 no status, 1011 internal, 1012 restart,
// 1013 try again later, and the relay's own 4000-4499. Everything else --
// 1000, 1003, 1008, 1009, 4500-4999 -- means "do not retry on your own".
const RETRY = new Set([1001, 1005, 1006, 1011, 1012, 1013]);

/** @param {number} code WebSocket close code */
export function shouldReconnect(code) {
  return RETRY.has(code) || (code >= 4000 && code < 4500);
}
