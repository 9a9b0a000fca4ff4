"""Hybrid logical clocks (Kulkarni et al. 2014): the paper's properties under any interleaving
of local events, sends and receives, with skewed and backwards-stepping physical clocks."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine import ClockOffsetError, Limits, Rejected
from engine.errors import ConfigError, DecodeError
from engine.txn.hlc import (
    ENCODED_BYTES,
    MAX_LOGICAL,
    HybridLogicalClock,
    Timestamp,
    uncertain,
)

MS = 1_000_000
MAX_OFFSET_NS = Limits().max_clock_offset_ms * MS


class Clock:
    """A settable physical clock."""

    def __init__(self, ns: int = 0) -> None:
        self.ns = ns

    def __call__(self) -> int:
        return self.ns


timestamps = st.builds(Timestamp, st.integers(0, 2**64 - 1), st.integers(0, MAX_LOGICAL))

# One step of a run: (node, kind, argument). kind 0: local event; 1: send to node
# `argument % n` (delivered at once or later); 2: deliver a pending message; 3: move the node's
# physical clock by `argument` ns (negative: steps backwards).
steps = st.lists(
    st.tuples(st.integers(0, 2), st.integers(0, 3), st.integers(-12 * MS, 12 * MS)),
    max_size=120)


def _run(steps: list[tuple[int, int, int]], max_logical: int = MAX_LOGICAL) -> None:
    n = 3
    offset = 5 * MS
    clocks = [Clock(1_000 * MS + i * MS) for i in range(n)]
    hlcs = [HybridLogicalClock(clocks[i], max_offset_ns=offset, node_id=i,
                               max_logical=max_logical) for i in range(n)]
    last = [hlc.last for hlc in hlcs]
    pending: list[tuple[int, Timestamp]] = []
    max_physical = max(c.ns for c in clocks)
    read_by = [c.ns for c in clocks]      # the largest physical time each node has read
    carries = 0
    for node, kind, argument in steps:
        before = hlcs[node].last
        if kind == 0:
            ts = hlcs[node].now()
        elif kind == 1:
            ts = hlcs[node].now()
            pending.append((argument % n, ts))
        elif kind == 2 and pending:
            target, sent = pending.pop(abs(argument) % len(pending))
            try:
                ts = hlcs[target].update(sent, from_node=node)
            except ClockOffsetError as error:
                # Refused only beyond the bound, and then the clock is left as it was.
                assert sent.wall_ns - clocks[target].ns > offset
                assert error.node_id == node and "beyond max_clock_offset_ms=5" in str(error)
                assert hlcs[target].last == last[target]
                continue
            # Happens-before: the receive is above the send.
            assert ts > sent
            node = target
        else:
            clocks[node].ns = max(0, clocks[node].ns + argument)
            max_physical = max(max_physical, clocks[node].ns)
            continue
        read_by[node] = max(read_by[node], clocks[node].ns)
        # Within max_offset of the largest physical time this node has read: a timestamp
        # further ahead was refused (the offset guard, Theorem 2's premise).
        assert ts.wall_ns <= read_by[node] + offset + carries
        # Monotonic per node, and never below its own physical clock.
        assert ts > last[node] and ts == hlcs[node].last
        assert ts.wall_ns >= clocks[node].ns
        if ts.wall_ns > max(before.wall_ns, max_physical) and ts.logical == 0:
            carries += 1
        last[node] = ts
        # l is some node's physical reading (plus overflow carries): it never runs ahead of
        # the largest physical time any node has read (Theorem 2's premise, enforced).
        assert ts.wall_ns <= max_physical + carries


@settings(max_examples=400, deadline=None)
@given(steps)
def test_monotonic_happens_before_and_bounded_under_any_interleaving(
        run: list[tuple[int, int, int]]) -> None:
    _run(run)


@settings(max_examples=200, deadline=None)
@given(steps)
def test_the_same_with_a_tiny_logical_counter_that_overflows(
        run: list[tuple[int, int, int]]) -> None:
    _run(run, max_logical=2)


@given(timestamps, timestamps)
def test_encoding_order_is_timestamp_order(a: Timestamp, b: Timestamp) -> None:
    ea, eb = a.encode(), b.encode()
    assert len(ea) == len(eb) == ENCODED_BYTES
    assert (ea < eb) == (a < b) and (ea == eb) == (a == b)
    assert Timestamp.decode(ea) == a


def test_decode_refuses_a_wrong_length() -> None:
    with pytest.raises(DecodeError):
        Timestamp.decode(b"\x00" * 11)
    with pytest.raises(ConfigError):
        Timestamp(-1, 0)


def test_a_clock_stepping_backwards_keeps_issuing_higher_timestamps() -> None:
    clock = Clock(10 * MS)
    hlc = HybridLogicalClock(clock, max_offset_ns=MAX_OFFSET_NS)
    first = hlc.now()
    clock.ns = 2 * MS
    assert [hlc.now(), hlc.now()] == [Timestamp(10 * MS, 1), Timestamp(10 * MS, 2)]
    clock.ns = 11 * MS
    assert hlc.now() == Timestamp(11 * MS, 0) > first


def test_receive_follows_the_papers_rules() -> None:
    clock = Clock(100)
    hlc = HybridLogicalClock(clock, max_offset_ns=1_000)
    assert hlc.update(Timestamp(150, 7)) == Timestamp(150, 8)      # remote ahead
    assert hlc.update(Timestamp(150, 3)) == Timestamp(150, 9)      # same l: max(c, c_m) + 1
    assert hlc.update(Timestamp(120, 50)) == Timestamp(150, 10)    # remote behind
    clock.ns = 200
    assert hlc.update(Timestamp(180, 5)) == Timestamp(200, 0)      # physical time leads


def test_a_peer_beyond_the_offset_bound_is_refused_and_says_why() -> None:
    clock = Clock(1_000 * MS)
    hlc = HybridLogicalClock.for_limits(clock, Limits(), node_id=1)
    assert hlc.max_offset_ns == MAX_OFFSET_NS == 500 * MS
    before = hlc.now()
    with pytest.raises(ClockOffsetError) as caught:
        hlc.update(Timestamp(1_000 * MS + MAX_OFFSET_NS + 750 * MS), from_node=3)
    assert str(caught.value).startswith(
        "clock of node 3 is 1250.000 ms ahead, beyond max_clock_offset_ms=500")
    assert isinstance(caught.value, Rejected) and caught.value.offset_ns == 1_250 * MS
    assert hlc.last == before
    # Exactly at the bound is still served.
    assert hlc.update(Timestamp(1_000 * MS + MAX_OFFSET_NS)).wall_ns == 1_500 * MS


def test_the_logical_counter_carries_into_wall_time_at_its_limit() -> None:
    hlc = HybridLogicalClock(Clock(5), max_offset_ns=10, max_logical=3)
    issued = [hlc.now() for _ in range(5)]
    assert issued == [Timestamp(5, 0), Timestamp(5, 1), Timestamp(5, 2), Timestamp(5, 3),
                      Timestamp(6, 0)]
    assert Timestamp(1, MAX_LOGICAL).next() == Timestamp(2, 0)


def test_a_restarted_clock_continues_above_its_last_timestamp() -> None:
    hlc = HybridLogicalClock(Clock(0), max_offset_ns=10, last=Timestamp(50, 4))
    assert hlc.now() == Timestamp(50, 5)


def test_uncertainty_interval_is_read_ts_exclusive_to_read_ts_plus_max_offset() -> None:
    read = Timestamp(1_000, 5)
    assert not uncertain(read, Timestamp(1_000, 5), 100)            # visible
    assert not uncertain(read, Timestamp(900, 9), 100)              # visible
    assert uncertain(read, Timestamp(1_000, 6), 100)
    assert uncertain(read, Timestamp(1_100, 5), 100)                # the upper bound included
    assert not uncertain(read, Timestamp(1_100, 6), 100)            # certainly later
    assert not uncertain(read, Timestamp(5_000, 0), 100)
    # The restart timestamp is above the uncertain value, so it is then visible.
    value = Timestamp(1_050, 0)
    assert not uncertain(value.next(), value, 100)


@given(timestamps, timestamps, st.integers(1, 10**12))
def test_uncertain_means_inside_the_window(read: Timestamp, value: Timestamp, offset: int) -> None:
    inside = read < value and value.wall_ns - read.wall_ns <= offset and not (
        value.wall_ns - read.wall_ns == offset and value.logical > read.logical)
    assert uncertain(read, value, offset) == inside
