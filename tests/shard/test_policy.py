"""engine.shard.policy: split thresholds and the split key."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.errors import ConfigError
from engine.limits import Limits
from engine.shard.map import RangeDescriptor, voters
from engine.shard.policy import (
    KeySampler,
    SplitDecision,
    SplitReason,
    decide_split,
    split_key,
    split_reason,
)

LIMITS = Limits(range_split_bytes=1_000, range_split_ops_per_s=100)
RANGE = RangeDescriptor(1, b"b", b"y", 1, voters(1))


def test_thresholds_are_past_the_limit_size_first() -> None:
    assert split_reason(1_000, 100, LIMITS) is None
    assert split_reason(1_001, 0, LIMITS) == SplitReason.SIZE
    assert split_reason(0, 100.5, LIMITS) == SplitReason.LOAD
    assert split_reason(5_000, 5_000, LIMITS) == SplitReason.SIZE
    defaults = Limits()
    assert (defaults.range_split_bytes, defaults.range_split_ops_per_s) == (64 << 20, 2_500)
    with pytest.raises(ConfigError):
        Limits(range_split_bytes=0)


def test_the_split_key_is_the_median_inside_the_range() -> None:
    assert split_key([b"c", b"d", b"e"], b"b", b"y") == b"d"
    assert split_key([b"e", b"c", b"d", b"f"], b"b", b"y") == b"e"   # upper median
    assert split_key([b"a", b"z", b"c"], b"b", b"y") == b"c"   # outside samples ignored
    # The median at the start would leave the left side empty: the next key above it.
    assert split_key([b"b", b"b", b"b", b"c"], b"b", b"y") == b"c"
    assert split_key([b"b", b"b"], b"b", b"y") is None   # one hot key cannot be split
    assert split_key([], b"", None) is None
    assert split_key([b"\xff" * 9], b"", None) == b"\xff" * 9


@settings(max_examples=300, deadline=None)
@given(st.lists(st.binary(max_size=3)), st.binary(max_size=2),
       st.one_of(st.none(), st.binary(max_size=2)))
def test_a_split_key_is_always_strictly_inside_and_order_free(
        samples: list[bytes], start: bytes, end: bytes | None) -> None:
    key = split_key(samples, start, end)
    assert key == split_key(list(reversed(samples)), start, end)
    if key is not None:
        assert start < key and (end is None or key < end) and key in samples
    elif any(start < k and (end is None or k < end) for k in samples):
        pytest.fail(f"no split key though {samples} has one inside")


def test_decide_split() -> None:
    samples = [b"c", b"m", b"x"]
    assert decide_split(RANGE, size_bytes=10, ops_per_s=1, samples=samples,
                        limits=LIMITS) is None
    assert decide_split(RANGE, size_bytes=2_000, ops_per_s=1, samples=samples,
                        limits=LIMITS) == SplitDecision(SplitReason.SIZE, b"m")
    assert decide_split(RANGE, size_bytes=0, ops_per_s=500, samples=samples,
                        limits=LIMITS) == SplitDecision(SplitReason.LOAD, b"m")
    assert decide_split(RANGE, size_bytes=2_000, ops_per_s=0, samples=[b"b"],
                        limits=LIMITS) is None


def test_the_sampler_is_bounded_uniform_and_reproducible() -> None:
    keys = [i.to_bytes(4, "big") for i in range(10_000)]
    first, second = KeySampler(seed=7, capacity=100), KeySampler(seed=7, capacity=100)
    for key in keys:
        first.offer(key)
        second.offer(key)
    assert first.sample() == second.sample() and len(first.sample()) == 100
    assert first.seen == 10_000
    # Uniform: the sample's median is near the population's (a 100-sample median lies
    # within +-1,500 of 5,000 with probability > 0.997: binomial(100, 1/2) within 3 sd).
    median = int.from_bytes(sorted(first.sample())[50], "big")
    assert 3_500 <= median <= 6_500
    first.reset()
    assert first.sample() == [] and first.seen == 0
    assert KeySampler(seed=1, limits=Limits(max_split_key_samples=5))._capacity == 5
    with pytest.raises(ConfigError):
        KeySampler(seed=1, capacity=0)
