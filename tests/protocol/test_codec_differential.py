"""The codec's reused unpackers against a fresh ``msgpack.Unpacker`` per frame, as it was.

``relay.protocol.codec._split`` keeps one streaming unpacker per size class
between frames. Here every frame of a sequence (valid envelopes, mutated and
truncated ones, trailing bytes, garbage) is split by it and by the reference,
a fresh unpacker bounded by the frame's own size, in the same order: the
header fields, the raw payload or the error must be the same, so no frame can
see what an earlier one left behind.
"""

from __future__ import annotations

import re
from typing import Any

import msgpack
from hypothesis import given, settings
from hypothesis import strategies as st

from relay.exceptions import BadEnvelope
from relay.protocol import codec
from relay.protocol.codec import CodecLimits
from tests.protocol.test_codec import msgpack_values

LIMITS = CodecLimits()


def reference_split(frame: bytes) -> tuple[dict[str, Any], bytes | None]:
    """The split as it was: a new unpacker, every length bounded by this frame's size."""
    size = len(frame)
    if not frame or not (0x80 <= frame[0] <= 0x8F or frame[0] in (0xDE, 0xDF)):
        raise BadEnvelope("an envelope must be a msgpack map")
    bound = max(size, 1)
    unpacker = msgpack.Unpacker(
        raw=False, strict_map_key=True, max_buffer_size=bound, max_str_len=size,
        max_bin_len=size, max_array_len=size, max_map_len=size, max_ext_len=size,
    )  # fmt: skip
    unpacker.feed(frame)
    fields: dict[str, Any] = {}
    d_raw = None
    try:
        for _ in range(unpacker.read_map_header()):
            key = unpacker.unpack()
            if not isinstance(key, str):
                raise BadEnvelope("envelope keys must be strings")
            if key == "d":
                start = unpacker.tell()
                unpacker.skip()
                d_raw = frame[start : unpacker.tell()]
            else:
                fields[key] = unpacker.unpack()
    except BadEnvelope:
        raise
    except (msgpack.StackError, msgpack.UnpackException, ValueError, TypeError):
        raise BadEnvelope("malformed") from None
    if unpacker.tell() != size:
        raise BadEnvelope("trailing bytes after the envelope")
    return fields, d_raw


def ours(frame: bytes) -> tuple[dict[str, Any], bytes | None]:
    return codec._split(frame, LIMITS)


def outcome(split: Any, frame: bytes) -> object:
    try:
        # As repr: NaN, which msgpack carries, is not equal to itself.
        return repr(split(frame))
    except BadEnvelope as exc:
        # Which failure it was matters, not the wording of how msgpack failed.
        return "error" if "trailing" not in str(exc) else "trailing"


def frames() -> st.SearchStrategy[bytes]:
    envelope = st.dictionaries(
        st.sampled_from(["type", "to", "d", "id", "ev", "room"]), msgpack_values, max_size=5
    ).map(msgpack.packb)

    def mangle(frame: bytes, cut: int, noise: bytes, tail: bytes) -> bytes:
        cut = cut % (len(frame) + 1)
        return frame[:cut] + noise + frame[cut + len(noise) :] + tail

    return (
        envelope
        | st.builds(mangle, envelope, st.integers(0, 300), st.binary(max_size=6), st.just(b""))
        | envelope.map(lambda frame: frame[: max(1, len(frame) // 2)])
        | st.builds(lambda frame, tail: frame + tail, envelope, st.binary(min_size=1, max_size=4))
        | st.binary(max_size=64).map(lambda body: b"\x83" + body)
        | st.binary(max_size=64)
    )


@settings(max_examples=1500, deadline=None)
@given(st.lists(frames(), min_size=1, max_size=8))
def test_a_sequence_of_frames_splits_as_each_would_alone(sequence: list[bytes]) -> None:
    for frame in sequence:
        assert outcome(ours, frame) == outcome(reference_split, frame), frame


def test_a_small_frame_declaring_a_huge_array_is_refused_and_leaves_nothing_behind() -> None:
    # A 20-byte frame whose field declares a 60,000-entry array: its size
    # class (up to 31 bytes) bounds every declared length, as the frame did.
    frame = b"\x81\xa2id\xdc\xea\x60" + b"\x00" * 13
    assert outcome(ours, frame) == "error"
    assert codec._UNPACKERS.get(len(frame).bit_length()) is None  # dropped, not reused


@settings(max_examples=500, deadline=None)
@given(st.lists(st.text(max_size=70) | st.integers() | st.none(), max_size=30))
def test_remembering_valid_ids_changes_no_verdict(values: list[object]) -> None:
    remembering = CodecLimits()
    for value in values * 2:  # each value twice: once to learn, once from memory
        try:
            expected: object = codec._checked_name(
                value, "id", LIMITS.max_id_length, re.compile(LIMITS.id_pattern)
            )
        except BadEnvelope:
            expected = "refused"
        try:
            got: object = remembering.check_peer_id(value)
        except BadEnvelope:
            got = "refused"
        assert got == expected
