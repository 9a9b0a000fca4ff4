"""engine.shard.map: lookup and span overlap against a brute-force oracle, validation,
and the checksummed encoding under hostile bytes."""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.errors import ConfigError, DecodeError
from engine.shard.map import (
    DIGEST_BYTES,
    RangeDescriptor,
    Replica,
    ReplicaRole,
    ShardMap,
    decode_descriptors,
    encode_descriptors,
    voters,
)

KEYS = st.binary(max_size=4)
SPLITS = st.lists(st.binary(min_size=1, max_size=3), max_size=12, unique=True)


def presplit(keys: list[bytes]) -> ShardMap:
    return ShardMap.presplit(keys, voters(1, 2, 3))


def owner(shard_map: ShardMap, key: bytes) -> list[RangeDescriptor]:
    """Oracle: every range containing the key, by a linear scan."""
    return [r for r in shard_map.ranges if r.start <= key and (r.end is None or key < r.end)]


@settings(max_examples=200, deadline=None)
@given(SPLITS, KEYS)
def test_lookup_finds_the_one_owning_range(keys: list[bytes], key: bytes) -> None:
    shard_map = presplit(keys)
    assert [shard_map.lookup(key)] == owner(shard_map, key)
    assert len(shard_map) == len(keys) + 1


@settings(max_examples=200, deadline=None)
@given(SPLITS, KEYS, st.one_of(st.none(), KEYS))
def test_overlapping_is_every_range_meeting_the_span_in_order(
        keys: list[bytes], start: bytes, end: bytes | None) -> None:
    shard_map = presplit(keys)
    expected = [r for r in shard_map.ranges if r.overlaps(start, end)]
    if end is not None and not start < end:
        expected = []
    assert shard_map.overlapping(start, end) == expected


@settings(max_examples=200, deadline=None)
@given(SPLITS, st.integers(1, 2**64 - 1))
def test_encode_decode_round_trip(keys: list[bytes], version: int) -> None:
    shard_map = ShardMap(version, presplit(keys).ranges)
    assert ShardMap.decode(shard_map.encode()) == shard_map
    assert decode_descriptors(encode_descriptors(shard_map.ranges)) == list(shard_map.ranges)


def test_roles_and_replica_order() -> None:
    r = RangeDescriptor(1, b"", None, 1, (Replica(3), Replica(1, ReplicaRole.LEARNER),
                                          Replica(2)))
    assert [x.node_id for x in r.replicas] == [1, 2, 3]
    assert r.voters == (2, 3) and r.learners == (1,)
    assert r.replica(1) == Replica(1, ReplicaRole.LEARNER) and r.replica(9) is None
    assert ShardMap.decode(ShardMap(1, [r]).encode()).ranges == (r,)


@pytest.mark.parametrize(("ranges", "expected"), [
    ([], "no range"),
    ([RangeDescriptor(1, b"a", None, 1, voters(1))], "gap [b'', b'a')"),
    ([RangeDescriptor(1, b"", b"m", 1, voters(1)),
      RangeDescriptor(2, b"n", None, 2, voters(1))], "gap between range 1"),
    ([RangeDescriptor(1, b"", b"n", 1, voters(1)),
      RangeDescriptor(2, b"m", None, 2, voters(1))], "overlap between range 1"),
    ([RangeDescriptor(1, b"", b"m", 1, voters(1))], "gap [b'm', +inf)"),
    ([RangeDescriptor(1, b"", b"m", 1, voters(1)),
      RangeDescriptor(1, b"m", None, 2, voters(1))], "range id 1 used twice"),
    ([RangeDescriptor(1, b"", b"m", 1, voters(1)),
      RangeDescriptor(2, b"m", None, 1, voters(1))], "group id 1 serves two ranges"),
    ([RangeDescriptor(1, b"", None, 1, ())], "no replica"),
    ([RangeDescriptor(1, b"", None, 1, (Replica(1, ReplicaRole.LEARNER),))], "no voter"),
    ([RangeDescriptor(1, b"", None, 1, (Replica(1), Replica(1)))], "node listed twice"),
    ([RangeDescriptor(0, b"", None, 1, voters(1))], "range id 0"),
    ([RangeDescriptor(1, b"", None, 1, voters(1), epoch=0)], "epoch 0"),
    ([RangeDescriptor(1, b"", None, 1, voters(2**32))], "node id 4294967296"),
])
def test_an_invalid_map_is_refused(ranges: list[RangeDescriptor], expected: str) -> None:
    with pytest.raises(ConfigError, match=expected.replace("[", r"\[").replace("(", r"\(")
                       .replace(")", r"\)").replace("+", r"\+")):
        ShardMap(1, ranges)


def test_replace_builds_the_next_version_or_refuses() -> None:
    shard_map = presplit([b"m"])
    left, right = shard_map.ranges
    merged = RangeDescriptor(left.range_id, b"", None, left.group_id, left.replicas, 2)
    after = shard_map.replace([left.range_id, right.range_id], [merged])
    assert after.version == 2 and after.ranges == (merged,)
    assert right.range_id not in after and after[left.range_id] == merged
    with pytest.raises(ConfigError, match="gap"):
        shard_map.replace([right.range_id], [])
    with pytest.raises(KeyError):
        after[right.range_id]


# --------------------------------------------------------------------------- hostile bytes


def reseal(body: bytes) -> bytes:
    """Bytes with a valid digest: what an attacker who knows the format can send."""
    return body + hashlib.blake2b(body, digest_size=DIGEST_BYTES).digest()


def test_every_truncation_and_every_flipped_byte_is_a_decode_error() -> None:
    data = ShardMap(7, presplit([b"g", b"p"]).ranges).encode()
    for size in range(len(data)):
        with pytest.raises(DecodeError):
            ShardMap.decode(data[:size])
    for i in range(len(data)):
        damaged = bytearray(data)
        damaged[i] ^= 0x41
        with pytest.raises(DecodeError):
            ShardMap.decode(bytes(damaged))
    with pytest.raises(DecodeError):
        ShardMap.decode(data + b"\x00")


def _body(shard_map: ShardMap) -> bytes:
    return shard_map.encode()[:-DIGEST_BYTES]


@pytest.mark.parametrize(("mutate", "expected"), [
    (lambda b: b"XXXX" + b[4:], "magic"),
    (lambda b: b[:4] + struct.pack("<H", 2) + b[6:], "format 2"),
    (lambda b: b[:14] + struct.pack("<I", 2**32 - 1) + b[18:], "ranges exceed its size"),
    (lambda b: b[:14] + struct.pack("<I", 1) + b[18:], "trailing bytes"),
    (lambda b: b[:-1], "replicas exceed its size"),
    (lambda b: b + b"\x00", "trailing bytes"),
    (lambda b: b[:6] + struct.pack("<Q", 0) + b[14:], "version 0"),
])
def test_a_resealed_malformed_map_is_a_decode_error(
        mutate: Callable[[bytes], bytes], expected: str) -> None:
    body = _body(presplit([b"m"]))
    with pytest.raises(DecodeError, match=expected):
        ShardMap.decode(reseal(mutate(body)))


def test_a_resealed_map_with_a_gap_or_a_bad_role_is_refused() -> None:
    # Well-formed records that do not cover the key space: decoding must not yield a map
    # that routes a key nowhere.
    gap = ShardMap(1, presplit([b"m"]).ranges)
    body = _body(gap).replace(b"\x01\x00\x00\x00m", b"\x01\x00\x00\x00n", 1)
    with pytest.raises(DecodeError, match="invalid: .*overlap between range 1"):
        ShardMap.decode(reseal(body))
    role_at = len(_body(presplit([]))) - 1
    body = bytearray(_body(presplit([])))
    body[role_at] = 9
    with pytest.raises(DecodeError, match="unknown role 9"):
        ShardMap.decode(reseal(bytes(body)))


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_random_bytes_resealed_never_escape_as_another_error(body: bytes) -> None:
    try:
        ShardMap.decode(reseal(b"ESHM\x01\x00" + body))
    except DecodeError:
        pass


def test_check_owner_raises_wrong_shard_with_the_current_epoch() -> None:
    from engine.errors import Rejected, WrongShard
    from engine.shard.map import check_owner

    left, right = ShardMap.presplit([b"m"], voters(1)).replace([], []).ranges
    check_owner(left, b"a")
    with pytest.raises(WrongShard) as caught:
        check_owner(left, b"m", hints=[right])
    error = caught.value
    assert isinstance(error, Rejected)
    assert (error.key, error.range_id, error.epoch, error.descriptors) == (
        b"m", left.range_id, left.epoch, (right,))
