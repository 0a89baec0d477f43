/**
 * msgpack encoding of envelopes, via @msgpack/msgpack (the one runtime
 * dependency).
 *
 * Decoding choices (see docs/js-client.md, "Payload types"):
 * - bin -> Uint8Array; str -> string; ext types the codec does not know ->
 *   `ExtData` objects, which re-encode to the same bytes, so they survive a
 *   round trip through this client unchanged.
 * - maps -> plain objects. @msgpack/msgpack has no "decode maps as Map" mode;
 *   its default accepts string and number keys (a number key becomes the
 *   property name "1", and re-encodes as the string "1"). Any other key type
 *   fails the frame, which the client reports as an "error" event rather
 *   than crashing. Pass `msgpack: {mapKeyConverter, extensionCodec,
 *   useBigInt64}` to `connect()` to choose otherwise.
 */
import { Decoder, Encoder } from "@msgpack/msgpack";

/**
 * @typedef {object} CodecOptions
 * @property {import("@msgpack/msgpack").ExtensionCodecType<undefined>} [extensionCodec]
 * @property {boolean} [useBigInt64] int64 <-> bigint (default false: numbers)
 * @property {(key: unknown) => string | number} [mapKeyConverter]
 */

/** @param {CodecOptions} [opts] */
export function createCodec(opts = {}) {
  const encoder = new Encoder({
    extensionCodec: opts.extensionCodec,
    useBigInt64: opts.useBigInt64,
    // `undefined` fields (e.g. `ev: undefined`) are left out instead of being
    // sent as nil: the relay checks optional fields' types.
    ignoreUndefined: true,
  });
  const decoder = new Decoder({
    extensionCodec: opts.extensionCodec,
    useBigInt64: opts.useBigInt64,
    mapKeyConverter: opts.mapKeyConverter,
  });
  return {
    /** @param {unknown} value @returns {Uint8Array} */
    encode: (value) => encoder.encode(value),
    /** @param {ArrayBuffer | Uint8Array} bytes @returns {unknown} */
    decode: (bytes) => decoder.decode(bytes),
  };
}
