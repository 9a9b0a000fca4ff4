"""engine/_core/codec: payload encryption (FrameCodec(encrypt=True); codec_py docstring,
"Payload encryption"), in both implementations, against an oracle written from the spec."""

from __future__ import annotations

import hashlib
import struct
from types import SimpleNamespace
from typing import Any

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_codec_support import (
    CLUSTER_ID,
    KEY,
    SUBKEY_LABEL,
    MessageSpec,
    append_spec,
    build_all,
    frame_tuple,
    message_lists,
    oracle_header,
    oracle_message,
    outcome,
)

from engine.errors import ConfigError, DecodeError, WrongClusterError, WrongModeError

ENCRYPTED = 0x80  # the kind bit, restated from the spec on purpose (not imported)
FUZZ = settings(
    max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


def encrypting(impl: SimpleNamespace, cluster_id: int = CLUSTER_ID) -> Any:
    return impl.codec.FrameCodec(KEY, cluster_id, encrypt=True)


def oracle_sealed(header: bytes, body: bytes) -> bytes:
    """The spec's encrypted frame: header || AESGCM(subkey).encrypt(nonce, body, header)."""
    subkey = hashlib.blake2b(SUBKEY_LABEL + header[2:26], key=KEY, digest_size=32).digest()
    nonce = header[26:34] + struct.pack("<I", header[1])
    return header + AESGCM(subkey).encrypt(nonce, body, header)


def oracle_encrypted_frame(counter: int, specs: list[MessageSpec]) -> bytes:
    body = struct.pack("<I", len(specs)) + b"".join(oracle_message(s) for s in specs)
    return oracle_sealed(oracle_header(1 | ENCRYPTED, 1, 2, counter), body)


def same_outcome(codecs: list[Any], datagram: bytes) -> tuple[str, Any]:
    results = [outcome(codec, datagram) for codec in codecs]
    assert all(result == results[0] for result in results[1:]), results
    return results[0]


@FUZZ
@given(specs=message_lists)
def test_encrypted_frames_match_the_oracle_and_round_trip(
    both_impls: list[SimpleNamespace], specs: list[MessageSpec]
) -> None:
    expected = oracle_encrypted_frame(3, specs)
    for impl in both_impls:
        codec = encrypting(impl)
        messages = build_all(impl.codec, specs)
        assert codec.encode(1, 2, 3, messages) == expected
        frame = codec.decode(expected)
        assert frame.kind == 1 and frame.messages == messages


def test_the_body_is_not_on_the_wire_in_cleartext(both_impls: list[SimpleNamespace]) -> None:
    secret = b"a value nobody on the path may read"
    for impl in both_impls:
        spec = MessageSpec(5, {"src": 1, "dst": 2, "term": 7}, entries=((7, 8, secret, 0),))
        clear = impl.codec.FrameCodec(KEY, CLUSTER_ID).encode(1, 2, 3, build_all(impl.codec,
                                                                                  [spec]))
        sealed = encrypting(impl).encode(1, 2, 3, build_all(impl.codec, [spec]))
        assert secret in clear and secret not in sealed
        assert len(sealed) == len(clear)  # same size: the tag is the only overhead
        assert sealed[1] == 1 | ENCRYPTED and sealed[2:42] == clear[2:42]


def test_encrypted_fragments_round_trip(both_impls: list[SimpleNamespace]) -> None:
    chunk = b"part of a larger frame" * 10
    expected = oracle_sealed(oracle_header(2 | ENCRYPTED, 1, 2, 4),
                             struct.pack("<QIII", 9, 1, 3, len(chunk)) + chunk)
    for impl in both_impls:
        codec = encrypting(impl)
        assert codec.encode_fragment(1, 2, 4, 9, 1, 3, chunk) == expected
        frame = codec.decode(expected)
        assert (frame.kind, frame.fragment_id, frame.part, frame.parts, frame.chunk) == (
            2, 9, 1, 3, chunk)


def test_every_tampered_byte_is_refused(both_impls: list[SimpleNamespace]) -> None:
    """Header, ciphertext and tag are all covered: a flipped bit anywhere is refused with
    the same error by both, never a frame parsed from tampered plaintext."""
    datagram = encrypting(both_impls[0]).encode(
        1, 2, 3, build_all(both_impls[0].codec, [append_spec(2, 20)]))
    codecs = [encrypting(impl) for impl in both_impls]
    for position in range(len(datagram)):
        tampered = bytearray(datagram)
        tampered[position] ^= 0x10
        result = same_outcome(codecs, bytes(tampered))
        assert result[0] == "error", position


@pytest.mark.parametrize("sender_encrypts", [False, True])
def test_a_frame_of_the_other_mode_is_refused(
    both_impls: list[SimpleNamespace], sender_encrypts: bool
) -> None:
    """Both ends must agree: a cleartext frame is refused where encryption is required, and
    an encrypted one where it is not, with WrongModeError (the transport's wrong_mode)."""
    for impl in both_impls:
        sender = impl.codec.FrameCodec(KEY, CLUSTER_ID, encrypt=sender_encrypts)
        receiver = impl.codec.FrameCodec(KEY, CLUSTER_ID, encrypt=not sender_encrypts)
        frames = [sender.encode(1, 2, 3, build_all(impl.codec, [append_spec()])),
                  sender.encode_fragment(1, 2, 4, 1, 0, 2, b"chunk")]
        for datagram in frames:
            with pytest.raises(WrongModeError, match="refused"):
                receiver.decode(datagram)
            assert receiver._aeads == {}  # refused before any key work


def test_unknown_kinds_stay_decode_errors_in_both_modes(
    both_impls: list[SimpleNamespace],
) -> None:
    for impl in both_impls:
        for codec in (encrypting(impl), impl.codec.FrameCodec(KEY, CLUSTER_ID)):
            for kind in (0, 3, 0x83, 0xFF):
                datagram = oracle_header(kind, 1, 1, 1) + bytes(20)
                with pytest.raises(DecodeError, match=f"unknown frame kind {kind}$"):
                    codec.decode(datagram)


def test_wrong_cluster_is_reported_only_for_a_decryptable_frame(
    both_impls: list[SimpleNamespace],
) -> None:
    for impl in both_impls:
        datagram = encrypting(impl).encode(1, 1, 1, [])
        with pytest.raises(WrongClusterError):
            encrypting(impl, CLUSTER_ID + 1).decode(datagram)
        forged = bytearray(datagram)
        forged[-1] ^= 1
        with pytest.raises(DecodeError, match="authentication failed"):
            encrypting(impl, CLUSTER_ID + 1).decode(bytes(forged))


@FUZZ
@given(data=st.binary(max_size=300), kind=st.sampled_from([1, 2]))
def test_random_plaintexts_under_valid_encryption_give_the_same_outcome(
    both_impls: list[SimpleNamespace], data: bytes, kind: int
) -> None:
    """Decrypted bodies reach the same parser: both must agree exactly on arbitrary bytes."""
    datagram = oracle_sealed(oracle_header(kind | ENCRYPTED, 1, 1, 1), data)
    result = same_outcome([encrypting(impl) for impl in both_impls], datagram)
    if result[0] == "ok":
        assert result[1] == frame_tuple(encrypting(both_impls[0]).decode(datagram))


@pytest.mark.parametrize("value", [1, "yes", None])
def test_encrypt_must_be_a_bool(impl: SimpleNamespace, value: Any) -> None:
    with pytest.raises(ConfigError, match="encrypt must be a bool"):
        impl.codec.FrameCodec(KEY, CLUSTER_ID, encrypt=value)
