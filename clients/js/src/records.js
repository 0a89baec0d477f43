/**
 * The records of the HTTP transport (docs/protocol-http.md, "Records"): a
 * kind byte, a 4-byte big-endian payload length, the payload. Bodies in
 * both directions are a sequence of them.
 */

/** Record kinds. */
export const ENVELOPE = 0;
export const KEEPALIVE = 1;
export const CLOSE = 2;

const HEADER = 5;

/**
 * @typedef {object} Record
 * @property {number} kind ENVELOPE, KEEPALIVE or CLOSE (or a kind this client does not know)
 * @property {Uint8Array} payload
 */

/**
 * One body of records, as a `send` carries them.
 * @param {number} kind
 * @param {Uint8Array[]} payloads
 * @returns {Uint8Array<ArrayBuffer>}
 */
export function encodeRecords(kind, payloads) {
  let size = 0;
  for (const p of payloads) size += HEADER + p.byteLength;
  const out = new Uint8Array(size);
  const view = new DataView(out.buffer);
  let at = 0;
  for (const p of payloads) {
    out[at] = kind;
    view.setUint32(at + 1, p.byteLength);
    out.set(p, at + HEADER);
    at += HEADER + p.byteLength;
  }
  return out;
}

/**
 * Splits a stream of bytes into records, whatever the chunks' boundaries:
 * `push` each chunk as it comes; it returns the records it completed.
 * A record's bytes are copied only when they span chunks.
 */
export class RecordParser {
  constructor() {
    /** @type {Uint8Array[]} */
    this._chunks = [];
    this._head = 0; // index of the first chunk not yet wholly consumed
    this._skip = 0; // bytes of that chunk already consumed
    this._size = 0; // bytes not yet consumed
  }

  /** Bytes received that do not make a whole record yet. */
  get pending() {
    return this._size;
  }

  /**
   * @param {Uint8Array} chunk
   * @returns {Record[]}
   */
  push(chunk) {
    if (chunk.byteLength) {
      this._chunks.push(chunk);
      this._size += chunk.byteLength;
    }
    /** @type {Record[]} */
    const out = [];
    while (this._size >= HEADER) {
      const header = this._read(HEADER, false);
      const length = new DataView(header.buffer, header.byteOffset, HEADER).getUint32(1);
      if (this._size < HEADER + length) break;
      this._read(HEADER, true);
      out.push({ kind: header[0], payload: this._read(length, true) });
    }
    if (this._head === this._chunks.length) {
      this._chunks = [];
      this._head = 0;
    } else if (this._head > 64 && this._head * 2 > this._chunks.length) {
      this._chunks = this._chunks.slice(this._head);
      this._head = 0;
    }
    return out;
  }

  /**
   * The next `n` bytes (n <= pending), consumed when `consume`.
   * @param {number} n @param {boolean} consume
   */
  _read(n, consume) {
    const first = this._chunks[this._head];
    /** @type {Uint8Array} */
    let out;
    if (n === 0) out = new Uint8Array(0);
    else if (first.byteLength - this._skip >= n) out = first.subarray(this._skip, this._skip + n);
    else {
      out = new Uint8Array(n);
      let at = 0;
      for (let i = this._head, skip = this._skip; at < n; i++, skip = 0) {
        const part = this._chunks[i].subarray(skip, skip + n - at);
        out.set(part, at);
        at += part.byteLength;
      }
    }
    if (consume) {
      this._size -= n;
      let left = n;
      while (left > 0) {
        const available = this._chunks[this._head].byteLength - this._skip;
        if (available > left) {
          this._skip += left;
          break;
        }
        left -= available;
        this._head++;
        this._skip = 0;
      }
    }
    return out;
  }
}
