"""engine/_core/codec: the wire format, in both implementations.

Properties (DESIGN.md §7 tier 1): decode(encode(m)) == m; codec_c and codec_py produce the
same bytes as a naive struct-based oracle of the spec; every malformed, forged or oversized
input gives the same DecodeError (class and text) in both; ReplayWindow matches a naive
oracle. The hostile-datagram volume test is in test_codec_hostile.py.
"""

from __future__ import annotations

import hashlib
import struct
from types import SimpleNamespace
from typing import Any

import pytest
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_codec_support import (
    CLUSTER_ID,
    FIELDS,
    KEY,
    OTHER_KEY,
    SUBKEY_LABEL,
    U64_MAX,
    WIRE_VERSION,
    MessageSpec,
    append_spec,
    blake2b_v1_seal,
    build_all,
    frame_tuple,
    headers,
    message_lists,
    message_specs,
    messages_frame,
    oracle_fragment,
    oracle_frame,
    oracle_header,
    oracle_message,
    oracle_tag,
    outcome,
    seal,
)

from engine.config import Limits
from engine.errors import ConfigError, DecodeError, WrongClusterError, WrongReceiverError
from engine.messages import EntryKind, MessageType

FUZZ = settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


def make_codec(impl: SimpleNamespace, **options: Any) -> Any:
    return impl.codec.FrameCodec(KEY, CLUSTER_ID, **options)


def same_outcome(codecs: list[Any], datagram: bytes) -> tuple[str, Any]:
    """Decode in every implementation and require the same result; return it."""
    results = [outcome(codec, datagram) for codec in codecs]
    assert all(result == results[0] for result in results[1:]), results
    return results[0]


# ---------------------------------------------------------------- constants and construction

def test_constants_match_the_spec(impl: SimpleNamespace) -> None:
    codec = impl.codec
    assert (codec.WIRE_VERSION, codec.FRAME_MESSAGES, codec.FRAME_FRAGMENT) == (4, 1, 2)
    assert codec.FRAME_OVERHEAD == 42 + 4 + 16
    assert codec.FRAGMENT_OVERHEAD == 42 + 20 + 16
    assert tuple(codec.U64_FIELDS) == FIELDS


@pytest.mark.parametrize("key", [b"", b"k" * 15, b"k" * 65, "k" * 32, None, 12345])
def test_cluster_key_must_be_16_to_64_bytes(impl: SimpleNamespace, key: Any) -> None:
    with pytest.raises(ConfigError):
        impl.codec.FrameCodec(key)


@pytest.mark.parametrize("key", [b"k" * 16, b"k" * 64, bytearray(b"k" * 32)])
def test_cluster_key_bounds_accepted(impl: SimpleNamespace, key: Any) -> None:
    codec = impl.codec.FrameCodec(key)
    frame = codec.decode(codec.encode(1, 1, 1, []))
    assert frame.messages == []


@pytest.mark.parametrize("options", [
    {"cluster_id": -1}, {"cluster_id": U64_MAX + 1}, {"max_datagram_bytes": 511},
    {"max_datagram_bytes": 65_508}, {"max_frame_bytes": 1000},  # below max_datagram_bytes
    {"max_frame_bytes": 1 << 31},  # AES-GCM (cryptography) authenticates < 2**31 bytes
])
def test_bad_codec_options_raise_config_error(impl: SimpleNamespace, options: Any) -> None:
    with pytest.raises(ConfigError):
        impl.codec.FrameCodec(KEY, **options)


def test_codec_exposes_its_bounds(impl: SimpleNamespace) -> None:
    limits = Limits(max_messages_per_frame=7, max_entries_per_message=9, max_context_bytes=11)
    codec = impl.codec.FrameCodec(KEY, 5, 1400, limits=limits, max_frame_bytes=100_000)
    assert (codec.cluster_id, codec.max_datagram_bytes, codec.max_frame_bytes) == (5, 1400, 100_000)
    assert codec.max_chunk_bytes == 1400 - impl.codec.FRAGMENT_OVERHEAD
    assert (codec.max_messages_per_frame, codec.max_entries_per_message,
            codec.max_context_bytes) == (7, 9, 11)
    default = impl.codec.FrameCodec(KEY)
    assert default.max_frame_bytes == Limits().max_reassembly_bytes


# ---------------------------------------------------------------- round trip and parity

@FUZZ
@given(specs=message_lists, header=headers)
def test_round_trip(
    impl: SimpleNamespace, specs: list[MessageSpec], header: tuple[int, int, int]
) -> None:
    codec = make_codec(impl)
    messages = build_all(impl.codec, specs)
    frame = codec.decode(codec.encode(*header, messages))
    assert frame.kind == impl.codec.FRAME_MESSAGES
    assert (frame.sender_id, frame.epoch, frame.counter) == header
    assert (frame.fragment_id, frame.part, frame.parts, frame.chunk) == (0, 0, 0, b"")
    assert frame.messages == messages
    assert all(type(m) is impl.codec.Message for m in frame.messages)
    assert all(type(e) is impl.codec.Entry for m in frame.messages for e in m.entries)


@FUZZ
@given(specs=message_lists, header=headers)
def test_both_implementations_match_the_oracle_byte_for_byte(
    both_impls: list[SimpleNamespace], specs: list[MessageSpec], header: tuple[int, int, int]
) -> None:
    expected = oracle_frame(*header, specs)
    for impl in both_impls:
        codec = make_codec(impl)
        messages = build_all(impl.codec, specs)
        assert codec.encode(*header, messages) == expected, impl.name
        assert sum(impl.codec.encoded_size(m) for m in messages) + impl.codec.FRAME_OVERHEAD \
            == len(expected)
    decoded = [make_codec(impl).decode(expected) for impl in both_impls]
    # Cross-implementation equality of the decoded records.
    assert all(d.messages == decoded[0].messages for d in decoded)


@FUZZ
@given(spec=message_specs())
def test_encoded_size_is_exact(impl: SimpleNamespace, spec: MessageSpec) -> None:
    message = spec.build(impl.codec)
    assert impl.codec.encoded_size(message) == len(oracle_message(spec))


def test_encoded_size_accepts_the_other_implementations_objects(
    both_impls: list[SimpleNamespace],
) -> None:
    spec = append_spec(entry_count=3)
    for impl in both_impls:
        for other in both_impls:
            assert impl.codec.encoded_size(spec.build(other.codec)) == len(oracle_message(spec))


def test_encode_accepts_the_other_implementations_objects(
    both_impls: list[SimpleNamespace],
) -> None:
    specs = [append_spec(entry_count=2), MessageSpec(type=int(MessageType.VOTE), reject=True)]
    expected = oracle_frame(1, 2, 3, specs)
    for impl in both_impls:
        for other in both_impls:
            mixed = build_all(other.codec, specs)
            assert make_codec(impl).encode(1, 2, 3, mixed) == expected
            assert make_codec(impl).encode(1, 2, 3, tuple(mixed)) == expected


def test_decode_accepts_bytes_bytearray_and_memoryview(impl: SimpleNamespace) -> None:
    codec = make_codec(impl)
    messages = build_all(impl.codec, [append_spec()])
    datagram = codec.encode(4, 5, 6, messages)
    padded = b"xx" + datagram + b"yy"
    for form in (datagram, bytearray(datagram), memoryview(datagram),
                 memoryview(padded)[2:-2], memoryview(bytearray(datagram))):
        assert codec.decode(form).messages == messages
    strided = memoryview(bytes(b for byte in datagram for b in (byte, 0)))[::2]
    assert codec.decode(strided).messages == messages


@pytest.mark.parametrize("value", ["text", 12, None, [1, 2]])
def test_decode_of_a_non_buffer_is_a_type_error(impl: SimpleNamespace, value: Any) -> None:
    with pytest.raises(TypeError):
        make_codec(impl).decode(value)


def test_decoded_payloads_are_bytes_and_independent(impl: SimpleNamespace) -> None:
    codec = make_codec(impl)
    spec = MessageSpec(type=int(MessageType.APPEND), context=b"ctx",
                       entries=((1, 2, b"data", int(EntryKind.NOOP)),))
    buffer = bytearray(codec.encode(1, 1, 1, [spec.build(impl.codec)]))
    message = codec.decode(buffer).messages[0]
    buffer[:] = bytes(len(buffer))  # the decoded objects must not alias the input
    assert type(message.context) is bytes and message.context == b"ctx"
    assert type(message.entries[0].data) is bytes and message.entries[0].data == b"data"
    assert message.entries[0].kind == EntryKind.NOOP
    assert message.reject is False


def test_reject_flag_and_all_fields_at_the_edges(both_impls: list[SimpleNamespace]) -> None:
    spec = MessageSpec(type=int(MessageType.APPEND_RESPONSE), reject=True,
                       fields={name: U64_MAX - bit for bit, name in enumerate(FIELDS)},
                       entries=((U64_MAX, U64_MAX, b"", 2),))
    datagram = oracle_frame(U64_MAX, U64_MAX, U64_MAX, [spec])
    for impl in both_impls:
        codec = make_codec(impl)
        assert codec.encode(U64_MAX, U64_MAX, U64_MAX, [spec.build(impl.codec)]) == datagram
        frame = codec.decode(datagram)
        assert (frame.sender_id, frame.epoch, frame.counter) == (U64_MAX,) * 3
        assert frame.messages[0].reject is True
        assert frame.messages[0] == spec.build(impl.codec)


def test_header_layout_is_little_endian_at_fixed_offsets(impl: SimpleNamespace) -> None:
    datagram = make_codec(impl).encode(0x0102030405060708, 9, 10, [])
    assert datagram[0] == WIRE_VERSION and datagram[1] == 1
    assert struct.unpack_from("<Q", datagram, 2)[0] == CLUSTER_ID
    assert datagram[10:18] == bytes([8, 7, 6, 5, 4, 3, 2, 1])
    assert struct.unpack_from("<QQ", datagram, 18) == (9, 10)
    assert struct.unpack_from("<I", datagram, 34)[0] == 0
    assert len(datagram) == impl.codec.FRAME_OVERHEAD


# ---------------------------------------------------------------- fragments

def test_fragment_matches_the_oracle_and_round_trips(both_impls: list[SimpleNamespace]) -> None:
    expected = oracle_fragment(1, 2, 3, 77, 4, 9, b"chunk-bytes")
    for impl in both_impls:
        codec = make_codec(impl)
        for chunk in (b"chunk-bytes", bytearray(b"chunk-bytes"), memoryview(b"chunk-bytes")):
            assert codec.encode_fragment(1, 2, 3, 77, 4, 9, chunk) == expected
        frame = codec.decode(expected)
        assert frame.kind == impl.codec.FRAME_FRAGMENT
        assert (frame.sender_id, frame.epoch, frame.counter) == (1, 2, 3)
        assert (frame.fragment_id, frame.part, frame.parts, frame.chunk) == (77, 4, 9,
                                                                                 b"chunk-bytes")
        assert frame.messages == []


def test_large_frame_fragments_and_reassembles(both_impls: list[SimpleNamespace]) -> None:
    specs = [append_spec(entry_count=64, data_bytes=300, index=k * 100) for k in range(4)]
    for impl in both_impls:
        codec = make_codec(impl, max_datagram_bytes=1400)
        whole = codec.encode(9, 1, 50, build_all(impl.codec, specs))
        assert len(whole) > 4 * codec.max_datagram_bytes
        step = codec.max_chunk_bytes
        chunks = [whole[at:at + step] for at in range(0, len(whole), step)]
        datagrams = [
            codec.encode_fragment(9, 1, 51 + part, 1234, part, len(chunks), chunk)
            for part, chunk in enumerate(chunks)
        ]
        assert all(len(d) <= codec.max_datagram_bytes for d in datagrams)
        frames = [codec.decode(d) for d in reversed(datagrams)]  # arrival order is irrelevant
        frames.sort(key=lambda f: f.part)
        assert {f.parts for f in frames} == {len(chunks)} and {f.fragment_id for f in frames} \
            == {1234}
        reassembled = codec.decode(b"".join(f.chunk for f in frames))
        assert reassembled.messages == build_all(impl.codec, specs)
        assert (reassembled.sender_id, reassembled.counter) == (9, 50)


@pytest.mark.parametrize("part, parts, chunk, error", [
    (3, 3, b"x", ValueError),
    (0, 0, b"x", ValueError),
    (0, 1, b"", ValueError),
    (0, 1, b"x" * (1400 - 70 + 1), ValueError),
    (-1, 1, b"x", OverflowError),
    (0, 1 << 32, b"x", OverflowError),
    (0, 1, "text", TypeError),
])
def test_encode_fragment_refuses_bad_arguments(
    impl: SimpleNamespace, part: int, parts: int, chunk: Any, error: type[Exception]
) -> None:
    codec = make_codec(impl, max_datagram_bytes=1400)
    with pytest.raises(error):
        codec.encode_fragment(1, 1, 1, 1, part, parts, chunk)


def test_largest_fragment_fits_max_datagram_bytes(impl: SimpleNamespace) -> None:
    codec = make_codec(impl, max_datagram_bytes=1400)
    datagram = codec.encode_fragment(1, 1, 1, 1, 0, 1, b"x" * codec.max_chunk_bytes)
    assert len(datagram) == 1400
    assert codec.decode(datagram).chunk == b"x" * codec.max_chunk_bytes


# ---------------------------------------------------------------- encode errors

def limited_codec(impl: SimpleNamespace) -> Any:
    limits = Limits(max_messages_per_frame=3, max_entries_per_message=2, max_context_bytes=8)
    return make_codec(impl, limits=limits, max_frame_bytes=70_000)


@pytest.mark.parametrize("messages, error", [
    (lambda c: [c.Message(99)], ValueError),                                   # unknown type
    (lambda c: [c.Message(300)], ValueError),
    (lambda c: [c.Message(1, entries=[c.Entry(1, 1, b"", 9)])], ValueError),   # unknown kind
    (lambda c: [c.Message(1)] * 4, ValueError),                                # > max messages
    (lambda c: [c.Message(1, entries=[c.Entry()] * 3)], ValueError),          # > max entries
    (lambda c: [c.Message(1, context=b"x" * 9)], ValueError),                 # > max context
    (lambda c: [c.Message(1, entries=[c.Entry(data=b"x" * 40_000)] * 2)], ValueError),  # frame
])
def test_encode_refuses_local_errors_with_the_same_class(
    both_impls: list[SimpleNamespace], messages: Any, error: type[Exception]
) -> None:
    texts = set()
    for impl in both_impls:
        with pytest.raises(error) as caught:
            limited_codec(impl).encode(1, 1, 1, messages(impl.codec))
        assert not isinstance(caught.value, DecodeError)
        texts.add(str(caught.value))
    assert len(texts) == 1, texts


@pytest.mark.parametrize("header", [(-1, 0, 0), (0, U64_MAX + 1, 0), (0, 0, -5)])
def test_encode_refuses_header_ints_out_of_range(impl: SimpleNamespace, header: Any) -> None:
    with pytest.raises(OverflowError):
        make_codec(impl).encode(*header, [])


def test_encode_refuses_non_bytes_payloads(impl: SimpleNamespace) -> None:
    codec = make_codec(impl)
    message = impl.codec.Message(1)
    message.context = None
    with pytest.raises(TypeError):
        codec.encode(1, 1, 1, [message])
    entry = impl.codec.Entry()
    entry.data = None
    with pytest.raises(TypeError):
        codec.encode(1, 1, 1, [impl.codec.Message(1, entries=[entry])])


def test_encode_validates_before_producing_anything(impl: SimpleNamespace) -> None:
    # A bad message after good ones fails the whole frame (no partial frame escapes).
    codec = make_codec(impl)
    with pytest.raises(ValueError):
        codec.encode(1, 1, 1, [impl.codec.Message(1), impl.codec.Message(2), impl.codec.Message(0)])


def test_limits_at_the_bound_are_accepted(impl: SimpleNamespace) -> None:
    codec = limited_codec(impl)
    c = impl.codec
    messages = [c.Message(1, entries=[c.Entry(1, 1, b"a"), c.Entry(1, 2, b"b")],
                          context=b"x" * 8)] * 3
    assert codec.decode(codec.encode(1, 1, 1, messages)).messages == messages


# ---------------------------------------------------------------- decode errors (forged frames)

VALID_BODY = oracle_message(append_spec())


def forged_cases() -> dict[str, bytes]:
    """Frames that each break exactly one rule, carrying a valid tag unless the rule is the tag
    itself, so that the parser (not only the MAC) is exercised."""
    body = VALID_BODY
    valid = messages_frame(body, 1)
    limits = Limits()
    cases = {
        "truncated header": valid[:49],
        "empty": b"",
        "wrong version": seal(oracle_header(1, 1, 1, 1, version=5) + struct.pack("<I", 0)),
        "retired version 3": seal(oracle_header(1, 1, 1, 1, version=3) + struct.pack("<I", 0)),
        "retired version 3 append": seal(  # a whole v3 frame (no group), validly tagged
            b"\x03" + oracle_frame(1, 2, 3, [append_spec()])[1:-16]),
        "retired version 2": seal(oracle_header(1, 1, 1, 1, version=2) + struct.pack("<I", 0)),
        "wrong receiver": seal(oracle_header(1, 1, 1, 1, receiver=7) + struct.pack("<I", 0)),
        "retired version 1": blake2b_v1_seal(
            oracle_header(1, 1, 1, 1, version=1) + struct.pack("<I", 0)),
        "retired version 1 append": blake2b_v1_seal(  # a whole v1 frame, validly tagged
            b"\x01" + oracle_frame(1, 2, 3, [append_spec()])[1:-16]),
        "unknown frame kind": seal(oracle_header(3, 1, 1, 1) + struct.pack("<I", 0)),
        "wrong cluster id": oracle_frame(1, 1, 1, [append_spec()], cluster_id=CLUSTER_ID + 1),
        "wrong key": messages_frame(body, 1, key=OTHER_KEY),
        "bad tag": valid[:-1] + bytes([valid[-1] ^ 1]),
        "flipped body": valid[:50] + bytes([valid[50] ^ 0x10]) + valid[51:],
        "tag only": seal(oracle_header(1, 1, 1, 1)),
        "too many messages": messages_frame(b"", limits.max_messages_per_frame + 1),
        "count beyond body": messages_frame(body, 2),
        "trailing bytes": messages_frame(body + b"\x00", 1),
        "unknown type": messages_frame(bytes([99]) + body[1:], 1),
        "unknown type zero": messages_frame(bytes([0]) + body[1:], 1),
        "unknown flag bits": messages_frame(body[:1] + bytes([0x04]) + body[2:], 1),
        "unknown field bits": messages_frame(body[:2] + struct.pack("<H", 0x0400) + body[4:], 1),
        "present zero field": messages_frame(
            struct.pack("<BBH", 5, 0, 1) + struct.pack("<Q", 0) + struct.pack("<II", 0, 0), 1),
        "fields truncated": messages_frame(struct.pack("<BBH", 5, 0, 0x3FF) + b"\x01" * 79, 1),
        "too many entries": messages_frame(
            struct.pack("<BBHII", 5, 0, 0, limits.max_entries_per_message + 1, 0), 1),
        "context too large": messages_frame(
            struct.pack("<BBHII", 5, 0, 0, 0, limits.max_context_bytes + 1), 1),
        "context beyond body": messages_frame(struct.pack("<BBHII", 5, 0, 0, 0, 9) + b"x" * 8, 1),
        "entry truncated": messages_frame(struct.pack("<BBHII", 5, 0, 0, 1, 0) + b"\x00" * 20, 1),
        "unknown entry kind": messages_frame(
            struct.pack("<BBHII", 5, 0, 0, 1, 0) + struct.pack("<QQBI", 1, 1, 7, 0), 1),
        "entry data beyond body": messages_frame(
            struct.pack("<BBHII", 5, 0, 0, 1, 0) + struct.pack("<QQBI", 1, 1, 0, 5) + b"abcd", 1),
        "huge entry data length": messages_frame(
            struct.pack("<BBHII", 5, 0, 0, 1, 0) + struct.pack("<QQBI", 1, 1, 0, 0xFFFFFFFF), 1),
        "message head truncated": messages_frame(b"\x05\x00", 1),
        "count truncated": seal(oracle_header(1, 1, 1, 1) + b"\x01\x00"),
        "group truncated": messages_frame(struct.pack("<BBH", 5, 2, 0) + b"\x80", 1),
        "group missing": messages_frame(struct.pack("<BBH", 5, 2, 0), 1),
        "group flag with group zero": messages_frame(
            struct.pack("<BBH", 5, 2, 0) + b"\x00" + struct.pack("<II", 0, 0), 1),
        "group not minimal": messages_frame(
            struct.pack("<BBH", 5, 2, 0) + b"\x81\x00" + struct.pack("<II", 0, 0), 1),
        "group of 65 bits": messages_frame(
            struct.pack("<BBH", 5, 2, 0) + b"\xff" * 9 + b"\x02" + struct.pack("<II", 0, 0), 1),
        "group of 11 bytes": messages_frame(
            struct.pack("<BBH", 5, 2, 0) + b"\xff" * 10 + b"\x01" + struct.pack("<II", 0, 0), 1),
        "group then fields truncated": messages_frame(
            struct.pack("<BBH", 5, 2, 1) + b"\x07" + b"\x01" * 7, 1),
        "fragment part not below parts": oracle_fragment(1, 1, 1, 1, 2, 2, b"x"),
        "fragment zero parts": oracle_fragment(1, 1, 1, 1, 0, 0, b"x"),
        "fragment empty chunk": oracle_fragment(1, 1, 1, 1, 0, 1, b""),
        "fragment chunk length short": seal(
            oracle_header(2, 1, 1, 1) + struct.pack("<QIII", 1, 0, 1, 3) + b"abcd"),
        "fragment chunk length long": seal(
            oracle_header(2, 1, 1, 1) + struct.pack("<QIII", 1, 0, 1, 5) + b"abcd"),
        "fragment head truncated": seal(oracle_header(2, 1, 1, 1) + b"\x00" * 19),
        "fragment oversized": oracle_fragment(1, 1, 1, 1, 0, 1, b"x" * 65_000),
    }
    return cases


FORGED = forged_cases()
# The error each forged frame must be refused with (which rule fired, not only that one did).
EXPECTED = {
    "truncated header": "truncated frame: 49 bytes", "empty": "truncated frame: 0 bytes",
    "wrong version": "unsupported wire version 5", "unknown frame kind": "unknown frame kind 3",
    "retired version 1": "unsupported wire version 1 (expected 4)",
    "retired version 1 append": "unsupported wire version 1 (expected 4)",
    "retired version 2": "unsupported wire version 2 (expected 4)",
    "retired version 3": "unsupported wire version 3 (expected 4)",
    "retired version 3 append": "unsupported wire version 3 (expected 4)",
    "wrong receiver": "frame for receiver 7 (this is 0)",
    "wrong cluster id": "of cluster 0xc0ffef, this is cluster 0xc0ffee",
    "wrong key": "authentication failed",
    "bad tag": "authentication failed", "flipped body": "authentication failed",
    "tag only": "need 4 bytes at offset 42, 0 left",
    "too many messages": "4097 messages exceed max_messages_per_frame",
    "count beyond body": "truncated frame", "trailing bytes": "1 trailing bytes",
    "unknown type": "unknown type 99", "unknown type zero": "unknown type 0",
    "unknown flag bits": "unknown flag bits 0x04", "unknown field bits": "unknown field bits",
    "present zero field": "field src is present but zero",
    "fields truncated": "need 80 bytes", "too many entries": "exceed max_entries_per_message",
    "context too large": "exceeds max_context_bytes", "context beyond body": "need 9 bytes",
    "entry truncated": "need 21 bytes", "unknown entry kind": "entry 0: unknown kind 7",
    "entry data beyond body": "need 5 bytes", "huge entry data length": "need 4294967295",
    "message head truncated": "need 4 bytes at offset 46", "count truncated": "need 4 bytes",
    "group truncated": "need 1 bytes at offset 51, 0 left",
    "group missing": "need 1 bytes at offset 50, 0 left",
    "group flag with group zero": "message 0: group varint is zero or not minimal",
    "group not minimal": "message 0: group varint is zero or not minimal",
    "group of 65 bits": "message 0: group varint exceeds 64 bits",
    "group of 11 bytes": "message 0: group varint exceeds 64 bits",
    "group then fields truncated": "need 8 bytes at offset 51, 7 left",
    "fragment part not below parts": "part 2 not below parts 2",
    "fragment zero parts": "part 0 not below parts 0",
    "fragment empty chunk": "empty fragment chunk",
    "fragment chunk length short": "chunk of 3 bytes does not match the 4",
    "fragment chunk length long": "chunk of 5 bytes does not match the 4",
    "fragment head truncated": "need 20 bytes", "fragment oversized": "max_datagram_bytes",
}


# The DecodeError subclass a forged frame is refused with, where it is not DecodeError itself:
# the transport counts these separately (old_version, wrong_receiver, wrong_cluster).
EXPECTED_CLASS = {
    "wrong version": "WireVersionError", "retired version 1": "WireVersionError",
    "retired version 3": "WireVersionError", "retired version 3 append": "WireVersionError",
    "retired version 1 append": "WireVersionError", "retired version 2": "WireVersionError",
    "wrong receiver": "WrongReceiverError", "wrong cluster id": "WrongClusterError",
}


@pytest.mark.parametrize("name", sorted(FORGED))
def test_forged_frames_raise_the_same_decode_error(
    both_impls: list[SimpleNamespace], name: str
) -> None:
    codecs = [make_codec(impl) for impl in both_impls]
    result = same_outcome(codecs, FORGED[name])
    assert result[0] == "error", (name, result)
    error_class = result[1].split(":")[0]
    assert error_class == EXPECTED_CLASS.get(name, "DecodeError"), result
    assert EXPECTED[name] in result[1], result


def test_authentication_is_checked_before_parsing(both_impls: list[SimpleNamespace]) -> None:
    # An unknown type with a bad tag reports the tag, proving the body was not parsed.
    forged = bytearray(messages_frame(bytes([99]) + VALID_BODY[1:], 1))
    forged[-1] ^= 0xFF
    for impl in both_impls:
        with pytest.raises(DecodeError, match="authentication failed"):
            make_codec(impl).decode(bytes(forged))


def test_wrong_key_and_wrong_cluster_are_refused(both_impls: list[SimpleNamespace]) -> None:
    for impl in both_impls:
        sender = impl.codec.FrameCodec(OTHER_KEY, CLUSTER_ID)
        datagram = sender.encode(1, 1, 1, build_all(impl.codec, [append_spec()]))
        with pytest.raises(DecodeError, match="authentication failed"):
            make_codec(impl).decode(datagram)
        other_cluster = impl.codec.FrameCodec(KEY, CLUSTER_ID + 1)
        with pytest.raises(WrongClusterError, match="of cluster 0xc0ffee"):
            other_cluster.decode(make_codec(impl).encode(1, 1, 1, []))
        # A forged frame naming another cluster id is an authentication failure, not a
        # conflict to report: only a holder of the cluster key can name a foreign cluster.
        forged = bytearray(make_codec(impl).encode(1, 1, 1, []))
        forged[-1] ^= 1
        with pytest.raises(DecodeError, match="authentication failed"):
            other_cluster.decode(bytes(forged))


def test_receiver_and_unbound_cluster_ids(both_impls: list[SimpleNamespace]) -> None:
    """The receiver id is authenticated and checked once per frame; receiver 0 means any
    receiver and cluster id 0 an unbound sender (codec_py docstring, "Identities")."""
    for impl in both_impls:
        node_2 = impl.codec.FrameCodec(KEY, CLUSTER_ID, local_id=2)
        node_3 = impl.codec.FrameCodec(KEY, CLUSTER_ID, local_id=3)
        sender = impl.codec.FrameCodec(KEY, CLUSTER_ID)
        for_2 = sender.encode(1, 1, 1, [], 2)
        frame = node_2.decode(for_2)
        assert (frame.receiver_id, frame.cluster_id) == (2, CLUSTER_ID)
        with pytest.raises(WrongReceiverError, match="frame for receiver 2 .this is 3."):
            node_3.decode(for_2)
        assert node_3.decode(sender.encode(1, 1, 2, [], 0)).receiver_id == 0
        unbound = impl.codec.FrameCodec(KEY, 0, local_id=9)
        assert node_2.decode(unbound.encode(9, 1, 1, [], 2)).cluster_id == 0
        assert unbound.decode(sender.encode(1, 1, 3, [], 9)).cluster_id == CLUSTER_ID


def test_oversized_frames_are_refused(both_impls: list[SimpleNamespace]) -> None:
    for impl in both_impls:
        codec = make_codec(impl, max_datagram_bytes=1400, max_frame_bytes=4000)
        big = make_codec(impl).encode(1, 1, 1, build_all(impl.codec, [append_spec(40)]))
        assert len(big) > 4000
        with pytest.raises(DecodeError, match="exceeds max_frame_bytes"):
            codec.decode(big)
        with pytest.raises(DecodeError, match="exceeds max_frame_bytes"):
            codec.decode(b"\x00" * 4001)
        with pytest.raises(ValueError, match="exceeds max_frame_bytes"):
            codec.encode(1, 1, 1, build_all(impl.codec, [append_spec(40)]))
        fragment = make_codec(impl).encode_fragment(1, 1, 1, 1, 0, 1, b"x" * 1400)
        with pytest.raises(DecodeError, match="exceeds max_datagram_bytes"):
            codec.decode(fragment)


def test_counts_above_custom_limits_are_refused(both_impls: list[SimpleNamespace]) -> None:
    big_limits = make_codec(both_impls[0], max_frame_bytes=70_000)
    c = both_impls[0].codec
    datagrams = {
        "messages": big_limits.encode(1, 1, 1, [c.Message(1)] * 4),
        "entries": big_limits.encode(1, 1, 1, [c.Message(1, entries=[c.Entry()] * 3)]),
        "context": big_limits.encode(1, 1, 1, [c.Message(1, context=b"x" * 9)]),
    }
    for name, datagram in datagrams.items():
        result = same_outcome([limited_codec(impl) for impl in both_impls], datagram)
        assert result[0] == "error" and "exceed" in result[1], (name, result)


# ---------------------------------------------------------------- authentication (AES-GCM)

def gcm_of(key: bytes, cluster_id: int, sender: int, epoch: int) -> AESGCM:
    """The AESGCM of one (cluster, sender, epoch) subkey, derived here from the spec."""
    identity = struct.pack("<QQQ", cluster_id, sender, epoch)
    subkey = hashlib.blake2b(SUBKEY_LABEL + identity, key=key, digest_size=32).digest()
    return AESGCM(subkey)


def test_tag_is_gmac_with_counter_and_kind_in_the_nonce(
    both_impls: list[SimpleNamespace],
) -> None:
    """A messages frame and a fragment frame with the same (sender, epoch, counter) are tagged
    under different nonces, so even a caller numbering them independently never reuses one."""
    aead = gcm_of(KEY, CLUSTER_ID, 7, 9)
    for impl in both_impls:
        codec = make_codec(impl)
        frames = {
            1: codec.encode(7, 9, 5, build_all(impl.codec, [append_spec()])),
            2: codec.encode_fragment(7, 9, 5, 1, 0, 2, b"chunk"),
        }
        for kind, datagram in frames.items():
            body, tag = datagram[:-16], datagram[-16:]
            assert aead.decrypt(struct.pack("<QI", 5, kind), tag, body) == b""
            with pytest.raises(InvalidTag):
                aead.decrypt(struct.pack("<QI", 5, 3 - kind), tag, body)
            with pytest.raises(InvalidTag):  # another sender's subkey
                gcm_of(KEY, CLUSTER_ID, 8, 9).decrypt(struct.pack("<QI", 5, kind), tag, body)


@pytest.mark.parametrize("offset, value", [
    (1, 2),                          # messages frame relabelled as a fragment
    (10, 8), (18, 10), (26, 6),      # another sender, epoch or counter
])
def test_a_tag_does_not_transfer_to_another_header(
    both_impls: list[SimpleNamespace], offset: int, value: int
) -> None:
    original = oracle_frame(7, 9, 5, [])
    forged = bytearray(original)
    forged[offset] = value
    for impl in both_impls:
        assert make_codec(impl).decode(original).messages == []
        with pytest.raises(DecodeError, match="authentication failed"):
            make_codec(impl).decode(bytes(forged))


def test_subkey_cache_is_bounded_and_filled_only_by_verified_frames(
    both_impls: list[SimpleNamespace],
) -> None:
    limit = both_impls[0].codec.MAX_CACHED_SUBKEYS
    assert limit == 4096
    senders = range(1, limit + 11)
    frames = [oracle_frame(sender, 1, 1, []) for sender in senders]
    for impl in both_impls:
        codec = make_codec(impl)
        forged = [frame[:-1] + bytes([frame[-1] ^ 1]) for frame in frames[:200]]
        for datagram in forged:  # wrong tags under fresh (sender, epoch): never cached
            with pytest.raises(DecodeError, match="authentication failed"):
                codec.decode(datagram)
        assert len(codec._aeads) == 0
        largest = 0
        for datagram in frames:
            assert codec.decode(datagram).messages == []
            largest = max(largest, len(codec._aeads))
        assert largest == limit and 1 <= len(codec._aeads) <= limit
        assert codec.decode(frames[0]).sender_id == 1  # evicted: derived again, still valid
        encoder = make_codec(impl)
        for sender in senders:
            encoder.encode(sender, 2, 1, [])
        assert len(encoder._aeads) <= limit


def test_largest_max_frame_bytes_is_accepted(impl: SimpleNamespace) -> None:
    codec = make_codec(impl, max_frame_bytes=(1 << 31) - 1)
    assert codec.max_frame_bytes == (1 << 31) - 1
    assert codec.decode(codec.encode(1, 1, 1, [])).messages == []


def test_oracle_tag_is_what_both_implementations_append(
    both_impls: list[SimpleNamespace],
) -> None:
    for impl in both_impls:
        datagram = make_codec(impl).encode(U64_MAX, 0, U64_MAX, [])
        assert datagram[-16:] == oracle_tag(datagram[:-16])


# ---------------------------------------------------------------- differential parser fuzzing

mutations = st.lists(
    st.tuples(st.sampled_from(["flip", "set", "cut", "insert", "delete"]),
              st.integers(0, 10_000), st.integers(0, 255)),
    min_size=1, max_size=4,
)


def mutate(body: bytes, edits: list[tuple[str, int, int]]) -> bytes:
    data = bytearray(body)
    for op, position, value in edits:
        at = position % (len(data) + 1)
        if op == "flip" and at < len(data):
            data[at] ^= 1 << (value % 8)
        elif op == "set" and at < len(data):
            data[at] = value
        elif op == "cut":
            del data[at:]
        elif op == "insert":
            data[at:at] = bytes([value])
        elif op == "delete" and at < len(data):
            del data[at]
    return bytes(data)


@FUZZ
@given(specs=message_lists, edits=mutations)
def test_resealed_mutations_give_the_same_outcome(
    both_impls: list[SimpleNamespace], specs: list[MessageSpec], edits: Any
) -> None:
    """Mutated bodies under a VALID tag reach the parser: both implementations must agree
    exactly (same frame or same DecodeError text), and never raise anything else."""
    valid = oracle_frame(1, 2, 3, specs)
    body = valid[:34] + mutate(valid[34:-16], edits)  # keep the header: reach the parser
    same_outcome([make_codec(impl) for impl in both_impls], seal(body))


@FUZZ
@given(data=st.binary(max_size=300), kind=st.sampled_from([1, 2]))
def test_random_bodies_under_a_valid_tag_give_the_same_outcome(
    both_impls: list[SimpleNamespace], data: bytes, kind: int
) -> None:
    same_outcome([make_codec(impl) for impl in both_impls],
                 seal(oracle_header(kind, 1, 1, 1) + data))


@FUZZ
@given(data=st.binary(max_size=200))
def test_random_datagrams_are_refused_identically(
    both_impls: list[SimpleNamespace], data: bytes
) -> None:
    result = same_outcome([make_codec(impl) for impl in both_impls], data)
    assert result[0] == "error"


# ---------------------------------------------------------------- ReplayWindow

class NaiveReplayWindow:
    """Oracle: remembers every accepted counter of the current epoch."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.state: dict[int, tuple[int, int, set[int]]] = {}

    def accept(self, sender: int, epoch: int, counter: int) -> bool:
        if sender not in self.state or epoch > self.state[sender][0]:
            self.state[sender] = (epoch, counter, {counter})
            return True
        current, highest, seen = self.state[sender]
        if epoch < current or counter in seen or counter <= highest - self.size:
            return False
        seen.add(counter)
        self.state[sender] = (epoch, max(highest, counter), seen)
        return True


def test_replay_window_basics(impl: SimpleNamespace) -> None:
    window = impl.codec.ReplayWindow(8)
    assert window.accept(1, 1, 5) is True
    assert window.accept(1, 1, 5) is False            # duplicate
    assert window.accept(1, 1, 4) is True             # late but inside the window
    assert window.accept(2, 1, 5) is True             # senders are independent
    assert window.accept(1, 1, 13) is True            # jump ahead by the full window
    assert window.accept(1, 1, 5) is False            # now 8 behind: outside the window
    assert window.accept(1, 1, 6) is True             # 7 behind: inside
    assert window.accept(1, 1, 6) is False
    assert window.accept(1, 0, 100) is False          # older epoch
    assert window.accept(1, 2, 1) is True             # restart: newer epoch resets
    assert window.accept(1, 2, 13) is True
    assert window.accept(1, 1, 14) is False           # the old epoch stays refused
    assert window.accept(1, 2, 1) is False            # 12 behind in the new epoch
    assert len(window) == 2


def test_replay_window_extreme_counters(impl: SimpleNamespace) -> None:
    window = impl.codec.ReplayWindow(1024)
    assert window.accept(1, U64_MAX, U64_MAX) is True
    assert window.accept(1, U64_MAX, U64_MAX) is False
    assert window.accept(1, U64_MAX, U64_MAX - 1023) is True
    assert window.accept(1, U64_MAX, U64_MAX - 1024) is False
    assert window.accept(2, 0, 0) is True and window.accept(2, 0, 0) is False
    with pytest.raises(OverflowError):
        window.accept(-1, 0, 0)
    with pytest.raises(OverflowError):
        window.accept(1, 0, U64_MAX + 1)


def test_replay_window_bounds_its_senders_evicting_the_least_recent(
    impl: SimpleNamespace,
) -> None:
    window = impl.codec.ReplayWindow(64, max_senders=3)
    for sender in (1, 2, 3):
        assert window.accept(sender, 1, 10)
    assert window.accept(1, 1, 11)          # 1 is now the most recent; 2 the least
    assert window.accept(2, 1, 10) is False  # a refusal does not refresh recency
    assert window.accept(4, 1, 10)          # evicts 2
    assert len(window) == 3
    assert window.accept(1, 1, 10) is False and window.accept(3, 1, 10) is False  # kept
    assert window.accept(2, 1, 10) is True   # 2 was forgotten: a fresh window; evicts 3
    assert window.accept(4, 1, 10) is False  # 4 was kept
    assert window.accept(3, 1, 10) is True   # 3 was forgotten
    for sender in range(100, 1100):
        window.accept(sender, 1, 1)
    assert len(window) == 3


@pytest.mark.parametrize("size, max_senders", [(0, 1), (-1, 1), (1 << 21, 1), (8, 0), (1.5, 1)])
def test_replay_window_config_errors(impl: SimpleNamespace, size: Any, max_senders: Any) -> None:
    with pytest.raises(ConfigError):
        impl.codec.ReplayWindow(size, max_senders)


@settings(max_examples=200, deadline=None)
@given(
    size=st.sampled_from([1, 2, 63, 64, 65, 100, 1024]),
    events=st.lists(st.tuples(st.integers(1, 3), st.integers(0, 3), st.integers(0, 3000)),
                    max_size=200),
)
def test_replay_window_matches_the_naive_oracle(
    both_impls: list[SimpleNamespace], size: int, events: list[tuple[int, int, int]]
) -> None:
    windows = [impl.codec.ReplayWindow(size) for impl in both_impls]
    oracle = NaiveReplayWindow(size)
    for sender, epoch, counter in events:
        expected = oracle.accept(sender, epoch, counter)
        assert [w.accept(sender, epoch, counter) for w in windows] == [expected] * len(windows)


def test_replay_window_drives_frames(both_impls: list[SimpleNamespace]) -> None:
    """The transport's use: decode, then accept (sender, epoch, counter)."""
    for impl in both_impls:
        codec = make_codec(impl)
        window = impl.codec.ReplayWindow(1024)
        datagrams = [codec.encode(7, 1, counter, []) for counter in range(1, 50)]
        frames = [codec.decode(d) for d in datagrams]
        assert all(window.accept(f.sender_id, f.epoch, f.counter) for f in frames)
        replays = [codec.decode(d) for d in datagrams]
        assert not any(window.accept(f.sender_id, f.epoch, f.counter) for f in replays)
        assert frame_tuple(frames[0]) == frame_tuple(replays[0])


# ---------------------------------------------------------------- consensus group ids

GROUP_BOUNDARIES = [0, 1, 127, 128, 16_383, 16_384, (1 << 21) - 1, 1 << 21, (1 << 56) - 1,
                    1 << 56, (1 << 63) - 1, 1 << 63, U64_MAX - 1, U64_MAX]


@pytest.mark.parametrize("group", GROUP_BOUNDARIES)
def test_group_ids_match_the_oracle_at_every_varint_length(
    both_impls: list[SimpleNamespace], group: int
) -> None:
    specs = [MessageSpec(type=int(MessageType.HEARTBEAT), fields={"term": 3}, group=group),
             append_spec()]
    expected = oracle_frame(1, 2, 3, specs)
    for impl in both_impls:
        codec = make_codec(impl)
        messages = build_all(impl.codec, specs)
        assert codec.encode(1, 2, 3, messages) == expected, impl.name
        decoded = codec.decode(expected).messages
        assert [m.group for m in decoded] == [group, 0]
        assert decoded == messages
        assert impl.codec.encoded_size(messages[0]) == len(oracle_message(specs[0]))


def test_group_zero_costs_no_byte(both_impls: list[SimpleNamespace]) -> None:
    # A single-group process's frames are exactly the group-less layout plus nothing.
    for impl in both_impls:
        plain = impl.codec.Message(int(MessageType.HEARTBEAT), 1, 2, 3)
        assert impl.codec.encoded_size(plain) == impl.codec.MESSAGE_FIXED_BYTES + 3 * 8
        assert impl.codec.encoded_size(
            impl.codec.Message(int(MessageType.HEARTBEAT), 1, 2, 3, group=127)) \
            == impl.codec.encoded_size(plain) + 1


def test_mixed_groups_in_one_frame_keep_their_order(both_impls: list[SimpleNamespace]) -> None:
    specs = [MessageSpec(type=int(MessageType.HEARTBEAT), fields={"term": g % 1000 + 1}, group=g)
             for g in (5, 0, 5, U64_MAX, 300, 0)]
    expected = oracle_frame(9, 9, 9, specs)
    for impl in both_impls:
        decoded = make_codec(impl).decode(expected).messages
        assert [m.group for m in decoded] == [5, 0, 5, U64_MAX, 300, 0]
        assert decoded == build_all(impl.codec, specs)


def test_group_is_authenticated(both_impls: list[SimpleNamespace]) -> None:
    # Moving a message to another group without the cluster key is refused.
    frame = bytearray(oracle_frame(1, 1, 1, [MessageSpec(type=5, group=5)]))
    assert frame[50] == 5  # header 42, count 4, type, flags, presence: the varint
    frame[50] = 6
    for impl in both_impls:
        with pytest.raises(DecodeError, match="authentication failed"):
            make_codec(impl).decode(bytes(frame))


def test_group_is_keyword_only_and_part_of_equality(both_impls: list[SimpleNamespace]) -> None:
    for impl in both_impls:
        Message = impl.codec.Message
        # Every positional construction of the group-less Message still means the same.
        message = Message(5, 1, 2, 3, 4, 5, 6, True, 7, 8, 9, 10, [], b"c")
        assert (message.group, message.context, message.status) == (0, b"c", 10)
        with pytest.raises(TypeError):
            Message(5, 1, 2, 3, 4, 5, 6, True, 7, 8, 9, 10, [], b"c", 11)
        assert Message(5, group=1) != Message(5, group=2)
        assert "group=7" in repr(Message(5, group=7))
        for other in both_impls:
            assert Message(5, group=U64_MAX) == other.codec.Message(5, group=U64_MAX)
            assert Message(5, group=1) != other.codec.Message(5)


@pytest.mark.parametrize("group", [-1, U64_MAX + 1])
def test_out_of_range_group_is_an_overflow_error(impl: SimpleNamespace, group: int) -> None:
    # codec_py checks when encoding, codec_c when the field is set: both refuse before a byte
    # goes out.
    with pytest.raises(OverflowError):
        make_codec(impl).encode(1, 1, 1, [impl.codec.Message(5, group=group)])
