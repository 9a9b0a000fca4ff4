"""Hostile datagrams (anchors-testing.md "Hostile UDP"): per implementation, 100,000+ random,
bit-flipped, truncated, extended and oversized datagrams, plus replays of genuine frames.

Zero may be accepted and nothing but DecodeError may escape (a crash or any other exception
fails the test). Every bit flip of a valid frame must be refused, and a flip anywhere after the
cheap header checks (sender id onwards, including the tag) must fail authentication. Genuine
frames replayed are decoded but refused by the ReplayWindow.

The seed is fixed so a failure replays; ENGINE_FUZZ_SEED=<n> tries another.
"""

from __future__ import annotations

import os
import random
import struct
from types import SimpleNamespace
from typing import Any

from test_codec_support import (
    CLUSTER_ID,
    KEY,
    WIRE_VERSION,
    append_spec,
    build_all,
    outcome,
    seal,
)

from engine.errors import DecodeError
from engine.messages import MessageType

SEED = int(os.environ.get("ENGINE_FUZZ_SEED", "20261127"))
RANDOM_COUNT = 30_000
FLIP_COUNT = 40_000
CUT_COUNT = 20_000
EXTEND_COUNT = 10_000
OVERSIZED_COUNT = 100
REPLAY_COUNT = 10_000
HEADER_BYTES = 42
RECEIVER_AT = 34   # a flip here is refused as a wrong receiver, before the tag
AUTHENTICATED_FROM = 10  # bytes 0..9 (version, kind, cluster id) are checked before the tag


def genuine_frames(impl: SimpleNamespace, codec: Any, rng: random.Random) -> list[bytes]:
    """A pool of valid frames of many shapes and sizes (about 50 B to 7 KB)."""
    c = impl.codec
    shapes = [
        [],
        [append_spec()],
        [append_spec(entry_count=16, data_bytes=64)],
        [append_spec(index=k) for k in range(1, 33)],
        [c.Message(MessageType.VOTE, src=1, dst=2, term=9, log_term=8, index=77)],
        [c.Message(MessageType.CLIENT_REQUEST, src=5, seq=1, status=1, context=b"put k v")],
        [c.Message(MessageType.APPEND_RESPONSE, reject=True, reject_hint=3, reject_term=2)],
    ]
    frames = []
    for counter, shape in enumerate(shapes, start=1):
        messages = [m if isinstance(m, c.Message) else m.build(c) for m in shape]
        frames.append(codec.encode(rng.randrange(1 << 64), 1, counter, messages))
    frames.append(codec.encode_fragment(3, 1, 99, 7, 0, 2, rng.randbytes(1000)))
    frames.append(codec.encode_fragment(3, 1, 100, 7, 1, 2, b"z"))
    return frames


def decode_refused(codec: Any, datagram: bytes) -> str:
    """The DecodeError text; fails the test if the datagram is accepted."""
    try:
        frame = codec.decode(datagram)
    except DecodeError as error:
        return str(error)
    raise AssertionError(f"hostile datagram accepted: {datagram[:64].hex()}... -> {frame!r}")


def test_hostile_datagrams_are_all_refused(impl: SimpleNamespace) -> None:
    rng = random.Random(SEED)
    codec = impl.codec.FrameCodec(KEY, CLUSTER_ID)
    pool = genuine_frames(impl, codec, rng)
    header_prefix = [struct.pack("<BBQ", WIRE_VERSION, kind, CLUSTER_ID) for kind in (1, 2)]
    refused = 0
    auth_failures = 0

    # 1. Random bytes; half start with a plausible header so they reach the tag check.
    for number in range(RANDOM_COUNT):
        data = rng.randbytes(rng.randrange(0, 600))
        if number % 2:
            data = header_prefix[number % 4 // 2] + data
        decode_refused(codec, data)
        refused += 1

    # 2. One to three distinct bit flips of a valid frame: none may survive authentication.
    for _ in range(FLIP_COUNT):
        frame = rng.choice(pool)
        damaged = bytearray(frame)
        positions = rng.sample(range(len(frame) * 8), rng.randrange(1, 4))
        for bit in positions:
            damaged[bit // 8] ^= 1 << (bit % 8)
        text = decode_refused(codec, bytes(damaged))
        refused += 1
        receiver_field = range(RECEIVER_AT * 8, (RECEIVER_AT + 8) * 8)
        if min(positions) // 8 >= AUTHENTICATED_FROM and not any(
            bit in receiver_field for bit in positions
        ):
            assert text.startswith("authentication failed"), text
            auth_failures += 1

    # 3. Truncations and 4. extensions of valid frames.
    for _ in range(CUT_COUNT):
        frame = rng.choice(pool)
        decode_refused(codec, frame[: rng.randrange(len(frame))])
        refused += 1
    for _ in range(EXTEND_COUNT):
        frame = rng.choice(pool)
        decode_refused(codec, frame + rng.randbytes(rng.randrange(1, 17)))
        refused += 1

    # 5. Oversized datagrams (beyond a UDP payload), with and without a plausible header.
    for number in range(OVERSIZED_COUNT):
        data = rng.randbytes(65_508 + rng.randrange(8_000))
        if number % 2:
            data = header_prefix[number % 4 // 2] + data
        decode_refused(codec, data)
        refused += 1

    total = RANDOM_COUNT + FLIP_COUNT + CUT_COUNT + EXTEND_COUNT + OVERSIZED_COUNT
    assert refused == total >= 100_000
    assert auth_failures > FLIP_COUNT // 2  # most flips land after the 10 header bytes


def test_replayed_genuine_frames_are_refused_by_the_window(impl: SimpleNamespace) -> None:
    rng = random.Random(SEED + 1)
    codec = impl.codec.FrameCodec(KEY, CLUSTER_ID)
    window = impl.codec.ReplayWindow(1024)
    messages = build_all(impl.codec, [append_spec()])
    sent = [codec.encode(sender, 1, counter, messages)
            for sender in (1, 2) for counter in range(1, 1001)]
    for datagram in sent:
        frame = codec.decode(datagram)
        assert window.accept(frame.sender_id, frame.epoch, frame.counter)
    accepted = 0
    for _ in range(REPLAY_COUNT):
        frame = codec.decode(rng.choice(sent))
        accepted += window.accept(frame.sender_id, frame.epoch, frame.counter)
    assert accepted == 0


RESEALED_COUNT = 20_000


def test_resealed_mutations_reach_the_parser_and_both_agree(
    both_impls: list[SimpleNamespace],
) -> None:
    """Garbage under a VALID tag (as a buggy or compromised peer could send) exercises every
    bounds check of the parser, which runs with boundscheck off in codec_c: both
    implementations must return the same frame or the same DecodeError text, nothing else."""
    rng = random.Random(SEED + 2)
    codecs = [impl.codec.FrameCodec(KEY, CLUSTER_ID) for impl in both_impls]
    pool = genuine_frames(both_impls[0], codecs[0], rng)
    accepted = 0
    for _ in range(RESEALED_COUNT):
        frame = rng.choice(pool)
        body = bytearray(frame[HEADER_BYTES:-16])
        for _ in range(rng.randrange(1, 4)):
            at = rng.randrange(len(body) + 1)
            operation = rng.randrange(4)
            if operation == 0 and at < len(body):
                body[at] ^= 1 << rng.randrange(8)
            elif operation == 1:
                del body[at:]
            elif operation == 2:
                body[at:at] = rng.randbytes(rng.randrange(1, 9))
            elif at + 4 <= len(body):  # a random length or count field
                body[at:at + 4] = rng.randbytes(4)
        datagram = seal(frame[:HEADER_BYTES] + bytes(body))
        results = [outcome(codec, datagram) for codec in codecs]
        assert all(result == results[0] for result in results), (datagram.hex(), results)
        accepted += results[0][0] == "ok"
    assert accepted < RESEALED_COUNT  # the mutations did reach and trip the parser
