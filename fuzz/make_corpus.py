"""Write the fuzzer's seed corpus and the hand-made regression inputs (deterministic).

    python fuzz/make_corpus.py

fuzz/corpus/seed/*.bin     valid frames of every shape, as fuzz inputs (mode byte + bytes):
                           the starting points libFuzzer mutates.
fuzz/corpus/crashes/*.bin  inputs crafted at the decoder's edges (lengths at u32 max, counts
                           above the limits, presence bits with zero values, fragments that do
                           not add up, ...). None crashes today; they sit with the fuzzer's own
                           findings so tests/hostile/test_fuzz_regressions.py is never empty
                           and these edges stay covered.

Input format (fuzz_codec.py): first byte even = a raw datagram follows; odd = a frame without
its tag follows, which the harness seals with the test key.
"""

from __future__ import annotations

import hashlib
import struct
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

from fuzz_codec import (  # noqa: E402
    CLUSTER_ID,
    CRASH_DIR,
    KEY,
    SEED_DIR,
    TAG_BYTES,
    WIRE_VERSION,
)

from engine._core import codec_py  # noqa: E402
from engine.messages import EntryKind, MessageType  # noqa: E402

RAW = b"\x00"
SEALED = b"\x01"
HEADER = struct.Struct("<BBQQQQQ")
MESSAGE_HEAD = struct.Struct("<BBH")
U32 = struct.Struct("<I")
U64 = struct.Struct("<Q")
ENTRY_HEAD = struct.Struct("<QQBI")


def header(kind: int = 1, sender: int = 2, epoch: int = 3, counter: int = 4,
           receiver: int = 0, cluster_id: int = CLUSTER_ID) -> bytes:
    return HEADER.pack(WIRE_VERSION, kind, cluster_id, sender, epoch, counter, receiver)


def message_head(type_: int = MessageType.APPEND, flags: int = 0, presence: int = 0) -> bytes:
    return MESSAGE_HEAD.pack(type_, flags, presence)


def seeds() -> dict[str, bytes]:
    codec = codec_py.FrameCodec(KEY, CLUSTER_ID)
    m, e = codec_py.Message, codec_py.Entry
    frames = {
        "empty": codec.encode(1, 1, 1, []),
        "append": codec.encode(1, 2, 3, [m(
            MessageType.APPEND, src=1, dst=2, term=5, log_term=4, index=10, commit=9,
            entries=[e(5, 11, b"put k v"), e(5, 12, b"", EntryKind.NOOP),
                     e(5, 13, b"cfg", EntryKind.CONFIG)])]),
        "vote_reject": codec.encode(2, 1, 7, [m(
            MessageType.VOTE_RESPONSE, src=2, dst=1, term=6, reject=True)]),
        "append_response": codec.encode(2, 1, 8, [m(
            MessageType.APPEND_RESPONSE, src=2, dst=1, term=6, index=3, reject=True,
            reject_hint=2, reject_term=1)]),
        "client": codec.encode(99, 1, 1, [m(
            MessageType.CLIENT_REQUEST, src=99, seq=1, status=1, context=b"\x01\x01\x00k")]),
        "all_fields": codec.encode(1, 1, 1, [m(
            MessageType.SNAPSHOT, src=1, dst=2, term=3, log_term=4, index=5, commit=6,
            reject_hint=7, reject_term=8, seq=9, status=10, reject=True, context=b"chunk")]),
        "many": codec.encode(1, 1, 2, [
            m(MessageType.HEARTBEAT, src=1, dst=k, term=2, commit=k) for k in range(1, 9)]),
        "paxos": codec.encode(3, 1, 1, [m(
            MessageType.PROMISE, src=3, dst=1, term=1 << 20,
            entries=[e(1 << 19, 4, b"v")])]),
        # Many consensus groups in one frame: group 0 (no byte), every varint length, 2**64-1.
        "groups": codec.encode(1, 1, 3, [
            m(MessageType.HEARTBEAT, src=1, dst=2, term=2, commit=k, group=group)
            for k, group in enumerate((0, 1, 127, 128, 16_384, 1 << 21, 1 << 63, 2**64 - 1))]),
        "one_group": codec.encode(1, 1, 4, [
            m(MessageType.APPEND, src=1, dst=2, term=2, index=k, group=300,
              entries=[e(2, k + 1, b"v")]) for k in range(4)]),
        "fragment": codec.encode_fragment(1, 1, 5, 77, 0, 3, b"chunk-bytes"),
        "fragment_last": codec.encode_fragment(1, 1, 6, 77, 2, 3, b"z"),
    }
    corpus = {}
    for name, frame in frames.items():
        corpus[f"{name}-sealed"] = SEALED + frame[:-TAG_BYTES]
        corpus[f"{name}-raw"] = RAW + frame
    return corpus


def edges() -> dict[str, bytes]:
    """Frames (without tag, sealed by the harness) at the decoder's bounds checks."""
    append = message_head(MessageType.APPEND, 0, 0b100)  # presence: term only
    u32_max = 0xFFFF_FFFF
    return {
        "raw-empty-datagram": RAW,
        "raw-header-only-no-tag": RAW + header(),
        "raw-wrong-cluster-id": RAW + HEADER.pack(WIRE_VERSION, 1, CLUSTER_ID + 1, 2, 3, 4, 0)
        + bytes(20),
        "raw-oversized-fragment": RAW + header(kind=2) + bytes(65_000),
        "message-count-u32-max": SEALED + header() + U32.pack(u32_max),
        "message-count-above-limit": SEALED + header() + U32.pack(4_097),
        "message-count-one-no-bytes": SEALED + header() + U32.pack(1),
        "context-length-u32-max": SEALED + header() + U32.pack(1) + append + U64.pack(5)
        + U32.pack(0) + U32.pack(u32_max),
        "context-length-past-end": SEALED + header() + U32.pack(1) + append + U64.pack(5)
        + U32.pack(0) + U32.pack(64) + b"short",
        "entry-count-u32-max": SEALED + header() + U32.pack(1) + append + U64.pack(5)
        + U32.pack(u32_max) + U32.pack(0),
        "entry-data-length-u32-max": SEALED + header() + U32.pack(1) + append + U64.pack(5)
        + U32.pack(1) + U32.pack(0) + ENTRY_HEAD.pack(5, 1, 0, u32_max) + b"x",
        "entry-unknown-kind": SEALED + header() + U32.pack(1) + append + U64.pack(5)
        + U32.pack(1) + U32.pack(0) + ENTRY_HEAD.pack(5, 1, 9, 0),
        "present-field-zero": SEALED + header() + U32.pack(1) + append + U64.pack(0)
        + U32.pack(0) + U32.pack(0),
        "presence-unknown-bit": SEALED + header() + U32.pack(1)
        + message_head(MessageType.APPEND, 0, 1 << 12) + U32.pack(0) + U32.pack(0),
        "unknown-flag-bit": SEALED + header() + U32.pack(1)
        + message_head(MessageType.APPEND, 4, 0) + U32.pack(0) + U32.pack(0),
        # The group varint (flag bit 1): cut off, zero, non-minimal, past 64 bits, 2**64-1.
        "group-varint-cut-off": SEALED + header() + U32.pack(1)
        + message_head(MessageType.APPEND, 2, 0) + b"\xff\xff",
        "group-varint-zero": SEALED + header() + U32.pack(1)
        + message_head(MessageType.APPEND, 2, 0) + b"\x00" + U32.pack(0) + U32.pack(0),
        "group-varint-not-minimal": SEALED + header() + U32.pack(1)
        + message_head(MessageType.APPEND, 2, 0) + b"\x85\x80\x00" + U32.pack(0) + U32.pack(0),
        "group-varint-65-bits": SEALED + header() + U32.pack(1)
        + message_head(MessageType.APPEND, 2, 0) + b"\xff" * 9 + b"\x03"
        + U32.pack(0) + U32.pack(0),
        "group-varint-11-bytes": SEALED + header() + U32.pack(1)
        + message_head(MessageType.APPEND, 2, 0) + b"\x80" * 10 + b"\x01"
        + U32.pack(0) + U32.pack(0),
        "group-u64-max-reject-flag": SEALED + header() + U32.pack(1)
        + message_head(MessageType.APPEND, 3, 0b100) + b"\xff" * 9 + b"\x01" + U64.pack(5)
        + U32.pack(0) + U32.pack(0),
        "unknown-message-type": SEALED + header() + U32.pack(1) + message_head(200)
        + U32.pack(0) + U32.pack(0),
        "trailing-byte": SEALED + header() + U32.pack(0) + b"\x00",
        "fragment-parts-zero": SEALED + header(kind=2) + struct.pack("<QIII", 1, 0, 0, 1) + b"x",
        "fragment-part-equals-parts": SEALED + header(kind=2) + struct.pack("<QIII", 1, 2, 2, 1)
        + b"x",
        "fragment-empty-chunk": SEALED + header(kind=2) + struct.pack("<QIII", 1, 0, 1, 0),
        "fragment-chunk-length-mismatch": SEALED + header(kind=2)
        + struct.pack("<QIII", 1, 0, 2, u32_max) + b"xyz",
        "unknown-frame-kind": SEALED + header(kind=3) + U32.pack(0),
        "wire-version-5": SEALED + HEADER.pack(5, 1, CLUSTER_ID, 2, 3, 4, 0) + U32.pack(0),
        # A whole frame of the retired version 3 (no group flag), validly tagged.
        "retired-wire-version-3": SEALED + HEADER.pack(3, 1, CLUSTER_ID, 2, 3, 4, 0)
        + U32.pack(1) + message_head(MessageType.HEARTBEAT, 0, 0b100) + U64.pack(5)
        + U32.pack(0) + U32.pack(0),
        "retired-wire-version-2": SEALED + struct.pack("<BBQQQQ", 2, 1, CLUSTER_ID, 2, 3, 4)
        + U32.pack(0),
        "wrong-receiver": SEALED + header(receiver=5) + U32.pack(0),
        "unbound-cluster-id": SEALED + header(cluster_id=0) + U32.pack(0),
        "sealed-wrong-cluster-id": SEALED + header(cluster_id=CLUSTER_ID + 1) + U32.pack(0),
        # A genuine frame of the retired version 1 (keyed BLAKE2b-128 tag): refused by version.
        "raw-retired-wire-version-1": RAW + retired_v1_frame(),
        "u64-max-header-fields": SEALED + header(1, 2**64 - 1, 2**64 - 1, 2**64 - 1)
        + U32.pack(0),
    }


def retired_v1_frame() -> bytes:
    body = struct.pack("<BBQQQQ", 1, 1, CLUSTER_ID, 2, 3, 4) + U32.pack(0)
    return body + hashlib.blake2b(body, key=KEY, digest_size=TAG_BYTES).digest()


def write(folder: Path, inputs: dict[str, bytes]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name, data in inputs.items():
        (folder / f"{name}.bin").write_bytes(data)


if __name__ == "__main__":
    write(SEED_DIR, seeds())
    write(CRASH_DIR, edges())
    print(f"{len(seeds())} seeds in {SEED_DIR}, {len(edges())} edge inputs in {CRASH_DIR}")
