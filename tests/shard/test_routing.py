"""engine.shard.routing.RangeCache: routing by key and span, WrongShard refreshes, and never
serving a descriptor older than one it has seen (checked against map histories produced by
the meta state machine)."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.errors import ConfigError, WrongShard
from engine.limits import Limits
from engine.shard.map import RangeDescriptor, ShardMap, voters
from engine.shard.meta import MetaStateMachine, encode_bootstrap, encode_merge, encode_split
from engine.shard.routing import RangeCache, SpanPiece

R = voters(1, 2, 3)


def d(range_id: int, start: bytes, end: bytes | None, epoch: int) -> RangeDescriptor:
    return RangeDescriptor(range_id, start, end, range_id, R, epoch)


WHOLE = d(1, b"", None, 1)
LEFT, RIGHT = d(1, b"", b"m", 2), d(2, b"m", None, 2)


def test_lookup_hits_and_misses() -> None:
    cache = RangeCache()
    assert cache.lookup(b"a") is None
    assert cache.insert(LEFT) and cache.lookup(b"a") == LEFT
    assert cache.lookup(b"m") is None and cache.lookup(b"z") is None   # end exclusive
    assert not cache.insert(LEFT)   # already held
    assert len(cache) == 1


def test_a_wrong_shard_with_descriptors_replaces_the_entry() -> None:
    cache = RangeCache()
    cache.insert(WHOLE)
    error = WrongShard(b"x", range_id=1, epoch=2, descriptors=(LEFT, RIGHT))
    assert cache.on_wrong_shard(error)
    assert cache.lookup(b"x") == RIGHT and cache.lookup(b"a") == LEFT
    assert cache.descriptors() == [LEFT, RIGHT]


def test_a_wrong_shard_without_descriptors_makes_a_miss_and_refuses_the_old_one() -> None:
    cache = RangeCache()
    cache.insert(WHOLE)
    assert cache.on_wrong_shard(WrongShard(b"x", range_id=1, epoch=2))
    assert cache.lookup(b"x") is None and cache.lookup(b"a") is None
    # A late reply carrying the old descriptor is not served again.
    assert not cache.insert(WHOLE) and cache.lookup(b"x") is None
    assert cache.insert(RIGHT) and cache.lookup(b"x") == RIGHT
    assert cache.lookup(b"a") is None
    assert cache.insert(LEFT) and cache.lookup(b"a") == LEFT


def test_a_wrong_shard_from_a_lagging_replica_changes_nothing() -> None:
    cache = RangeCache()
    cache.insert(LEFT)
    assert not cache.on_wrong_shard(WrongShard(b"x", range_id=1, epoch=2, descriptors=(WHOLE,)))
    assert not cache.on_wrong_shard(WrongShard(b"x", range_id=1, epoch=1))
    assert cache.lookup(b"a") == LEFT


def test_an_older_descriptor_never_displaces_a_newer_one() -> None:
    cache = RangeCache()
    cache.insert(RIGHT)
    assert not cache.insert(WHOLE)
    assert cache.lookup(b"x") == RIGHT
    # ... and it marks what it covers outside the newer entry as stale at its epoch.
    assert cache.lookup(b"a") is None
    assert not cache.insert(d(1, b"", b"m", 1))
    assert cache.insert(LEFT)


def test_a_refused_descriptor_still_retires_older_ones_it_overlaps() -> None:
    # Z is older than X, X older than Y; Z and Y are cached, X arrives last: X is refused
    # (Y is newer) but Z, older than X, must not be served any more.
    z = d(5, b"m", None, 1)
    x = d(1, b"", None, 2)
    y = d(1, b"", b"m", 3)
    cache = RangeCache()
    cache.insert(z)
    cache.insert(y)
    assert not cache.insert(x)
    assert cache.lookup(b"x") is None and cache.lookup(b"a") == y
    assert not cache.insert(z)


def test_span_routing_cuts_along_ranges_and_reports_misses() -> None:
    cache = RangeCache()
    a, b, c = d(1, b"", b"f", 1), d(2, b"f", b"m", 1), d(3, b"t", None, 1)
    cache.insert_all([a, b, c])
    route = cache.route_span(b"c", b"v")
    assert route.pieces == (SpanPiece(a, b"c", b"f"), SpanPiece(b, b"f", b"m"),
                            SpanPiece(c, b"t", b"v"))
    assert route.missing == ((b"m", b"t"),) and not route.complete
    whole = cache.route_span(b"", None)
    assert [p.descriptor for p in whole.pieces] == [a, b, c]
    assert whole.pieces[-1].end is None and whole.missing == ((b"m", b"t"),)
    assert cache.route_span(b"q", b"q").pieces == ()
    assert RangeCache().route_span(b"a", None).missing == ((b"a", None),)
    cache.insert(d(4, b"m", b"t", 1))
    assert cache.route_span(b"", None).complete


def test_the_cache_is_bounded_least_recently_used_first() -> None:
    cache = RangeCache(capacity=2)
    a, b, c = d(1, b"", b"f", 1), d(2, b"f", b"m", 1), d(3, b"m", None, 1)
    cache.insert(a)
    cache.insert(b)
    assert cache.lookup(b"a") == a   # a is now the most recently used
    cache.insert(c)
    assert cache.entries == 2 and cache.lookup(b"g") is None and cache.lookup(b"a") == a
    assert RangeCache(limits=Limits(max_range_cache_entries=3))._capacity == 3
    with pytest.raises(ConfigError):
        RangeCache(capacity=0)


def history(seed: int, steps: int) -> list[ShardMap]:
    """Map versions produced by random valid splits and merges through the meta machine."""
    rng = random.Random(seed)
    sm = MetaStateMachine()
    sm.apply(1, encode_bootstrap(1, 1, [1, 2, 3]))
    assert sm.shard_map is not None
    maps = [sm.shard_map]
    next_id = 2
    for index in range(2, steps + 2):
        current = sm.shard_map
        ranges = current.ranges
        if len(ranges) > 1 and rng.random() < 0.4:
            i = rng.randrange(len(ranges) - 1)
            left, right = ranges[i], ranges[i + 1]
            sm.apply(index, encode_merge(left.range_id, left.epoch, right.range_id,
                                         right.epoch))
        else:
            r = rng.choice(ranges)
            key = r.start + bytes([rng.randrange(1, 256)])
            sm.apply(index, encode_split(r.range_id, r.epoch, key, next_id, next_id))
            next_id += 1
        if sm.shard_map is not current:
            maps.append(sm.shard_map)
    return maps


KEYS = [b"", b"\x01", b"\x40", b"\x80", b"\x80\x80", b"\xc0", b"\xff", b"\xff\xff"]


@settings(max_examples=150, deadline=None)
@given(st.integers(0, 2**32), st.integers(1, 25), st.data())
def test_never_serves_older_than_seen_and_converges_to_the_newest(
        seed: int, steps: int, data: st.DataObject) -> None:
    maps = history(seed, steps)
    pool = [r for m in maps for r in m.ranges]
    order = data.draw(st.lists(st.sampled_from(pool), max_size=40))
    cache = RangeCache()
    newest_seen: dict[bytes, int] = {}
    for descriptor in order:
        cache.insert(descriptor)
        for key in KEYS:
            if descriptor.contains(key):
                newest_seen[key] = max(newest_seen.get(key, 0), descriptor.epoch)
            served = cache.lookup(key)
            if served is not None:
                assert served.contains(key)
                assert served.epoch >= newest_seen.get(key, 0), (key, served)
    # Whatever came before, once the newest map is inserted every key routes by it.
    cache.insert_map(maps[-1])
    for key in KEYS:
        assert cache.lookup(key) == maps[-1].lookup(key)
    route = cache.route_span(b"", None)
    assert route.complete and [p.descriptor for p in route.pieces] == list(maps[-1].ranges)


def _check_order(order: list[RangeDescriptor]) -> None:
    cache = RangeCache()
    newest_seen: dict[bytes, int] = {}
    for descriptor in order:
        cache.insert(descriptor)
        for key in KEYS:
            if descriptor.contains(key):
                newest_seen[key] = max(newest_seen.get(key, 0), descriptor.epoch)
            served = cache.lookup(key)
            assert served is None or served.epoch >= newest_seen.get(key, 0), (order, key)


@pytest.mark.parametrize("seed", range(4))
def test_every_order_of_three_descriptors_of_a_history(seed: int) -> None:
    # Exhaustive where the random orders above are sparse: the interleavings that expose
    # a forgotten stale span need three descriptors in one particular order.
    maps = history(seed, 6)
    pool = sorted({r for m in maps for r in m.ranges}, key=lambda r: (r.epoch, r.start))
    for a in pool:
        for b in pool:
            for c in pool:
                _check_order([a, b, c])
