"""Snapshots of every coordination table: deterministic round trips, and hostile bytes (flipped,
truncated, random, or re-framed with a valid CRC around a damaged body) raise DecodeError and
leave the state unchanged; a body that is accepted is canonical (it re-encodes to itself)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine.coord import CoordState, Elections, FencedResource, LeaseTable, LockTable, WatchLog
from engine.coord.codec import frame, unframe
from engine.coord.watch import DELETE, PUT, WatchEvent
from engine.errors import DecodeError, LeaseNotFound, LockKindMismatch, Overloaded
from engine.limits import Limits

LIMITS = Limits(watch_history_events=16, max_lock_names=6)
names = st.sampled_from([b"a", b"b", b"c", b"d"])


def build_state(ops: list[tuple[int, Any, Any]]) -> CoordState:
    """A CoordState after a sequence of drawn commands (refusals skipped)."""
    state = CoordState(LIMITS)
    for kind, x, y in ops:
        leases = [lease.lease_id for lease in state.leases]
        lease = leases[x % len(leases)] if leases else 0
        try:
            if kind == 0 or not leases:
                state.grant_lease(1 + x)
            elif kind == 1:
                state.keepalive(lease)
            elif kind == 2:
                state.acquire(y, lease)
            elif kind == 3:
                state.acquire(y, lease, shared=True)
            elif kind == 4:
                state.acquire(y + b"s", lease, shared=True, capacity=2)
            elif kind == 5:
                state.release(y, lease)
            elif kind == 6:
                state.revoke(lease)
            elif kind == 7:
                state.leases.attach(y + b"/key", lease)
            elif kind == 8:
                state.campaign(y, lease, b"v%d" % x)
            elif kind == 9:
                state.checkpoint(lease, state.leases.get(lease).generation, x)  # type: ignore[union-attr]
        except (LeaseNotFound, LockKindMismatch, Overloaded):
            pass
    return state


ops_strategy = st.lists(st.tuples(st.integers(0, 9), st.integers(0, 50), names), max_size=60)


def build_watch_log(changes: list[tuple[bool, bytes, int]]) -> WatchLog:
    log = WatchLog(LIMITS, initial_revision=3)
    revision = 3
    for is_put, key, step in changes:
        revision = max(revision + step, 4)         # nothing at or below the initial revision
        log.record(WatchEvent(PUT, key, b"v%d" % revision, revision, prev=b"p")
                   if is_put else WatchEvent(DELETE, key, None, revision))
    return log


watch_strategy = st.lists(st.tuples(st.booleans(), names, st.integers(0, 2)), max_size=40)

TABLES: dict[str, tuple[Callable[[], Any], Callable[[Any], Any]]] = {
    "coord": (lambda: CoordState(LIMITS), lambda data: build_state(data)),
    "leases": (lambda: LeaseTable(LIMITS), lambda data: build_state(data).leases),
    "locks": (lambda: LockTable(LIMITS), lambda data: build_state(data).locks),
    "elections": (lambda: Elections(LIMITS), lambda data: build_state(data).elections),
    "watch": (lambda: WatchLog(LIMITS), lambda data: build_watch_log(data)),
}


@settings(max_examples=60, deadline=None)
@given(ops=ops_strategy)
def test_coord_state_round_trips(ops: list[tuple[int, Any, Any]]) -> None:
    state = build_state(ops)
    data = state.snapshot()
    assert build_state(ops).snapshot() == data          # deterministic
    copy = CoordState(LIMITS)
    copy.restore(data)
    assert copy.snapshot() == data
    # The restored copy behaves the same: the next grant has the same token on both (or
    # both refuse it: the lock names may be at Limits.max_lock_names already).
    outcomes = []
    for target in (state, copy):
        lease = target.grant_lease(5)
        try:
            target.acquire(b"fresh", lease.lease_id)
            outcomes.append("granted")
        except Overloaded as exc:
            outcomes.append(str(exc))
    assert outcomes[0] == outcomes[1]
    assert copy.snapshot() == state.snapshot()


@settings(max_examples=40, deadline=None)
@given(changes=watch_strategy)
def test_watch_log_round_trips(changes: list[tuple[bool, bytes, int]]) -> None:
    log = build_watch_log(changes)
    copy = WatchLog(LIMITS)
    copy.restore(log.snapshot())
    assert copy.snapshot() == log.snapshot()
    assert copy.oldest_revision == log.oldest_revision
    start = log.oldest_revision
    assert copy.events_since(start, b"", prefix=True) == log.events_since(start, b"", prefix=True)


def _sample(kind: str) -> tuple[Any, bytes]:
    make, build = TABLES[kind]
    if kind == "watch":
        source = build([(True, b"a", 1), (False, b"b", 1), (True, b"c", 0)])
    else:
        source = build([(0, 5, b"a"), (0, 7, b"a"), (2, 0, b"a"), (2, 1, b"a"), (3, 0, b"b"),
                        (4, 1, b"c"), (7, 0, b"k"), (8, 1, b"e"), (8, 0, b"e"), (9, 3, b"a")])
    return make(), source.snapshot()


@pytest.mark.parametrize("kind", sorted(TABLES))
def test_every_flipped_byte_and_every_truncation_is_refused(kind: str) -> None:
    target, data = _sample(kind)
    before = target.snapshot()
    for position in range(len(data)):
        damaged = bytearray(data)
        damaged[position] ^= 0x41
        with pytest.raises(DecodeError):
            target.restore(bytes(damaged))
    for length in range(len(data)):
        with pytest.raises(DecodeError):
            target.restore(data[:length])
    with pytest.raises(DecodeError):
        target.restore(data + b"\0")
    assert target.snapshot() == before


def _reframe(data: bytes, body: bytes) -> bytes:
    return frame(data[:4], int.from_bytes(data[4:6], "little"), body)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(kind=st.sampled_from(sorted(TABLES)), seed=st.data())
def test_a_damaged_body_with_a_valid_crc_is_refused_or_canonical(kind: str,
                                                                 seed: st.DataObject) -> None:
    target, data = _sample(kind)
    body = bytearray(unframe(data, data[:4], int.from_bytes(data[4:6], "little"), kind)
                     ._data)
    for _ in range(seed.draw(st.integers(1, 3))):
        position = seed.draw(st.integers(0, len(body) - 1))
        body[position] = seed.draw(st.integers(0, 255))
    hostile = _reframe(data, bytes(body))
    before = target.snapshot()
    try:
        target.restore(hostile)
    except DecodeError:
        assert target.snapshot() == before
        return
    assert target.snapshot() == hostile


@pytest.mark.parametrize("kind", sorted(TABLES))
def test_random_bytes_are_refused(kind: str) -> None:
    target, _ = _sample(kind)
    for blob in (b"", b"\0" * 11, b"ECL1" + b"\xff" * 40, bytes(range(256))):
        with pytest.raises(DecodeError):
            target.restore(blob)


def test_a_lock_entry_of_a_missing_lease_is_refused() -> None:
    from engine.coord.codec import Writer
    state = build_state([(0, 5, b"a"), (2, 0, b"a")])
    out = Writer()
    out.blob(LeaseTable(LIMITS).snapshot())         # the lease is gone, its lock is not
    out.blob(state.locks.snapshot())
    out.blob(state.elections.snapshot())
    with pytest.raises(DecodeError, match="do not exist"):
        CoordState(LIMITS).restore(frame(b"ECS1", 1, out.getvalue()))


def test_fenced_resource_refuses_hostile_bytes() -> None:
    fence = FencedResource()
    fence.admit(b"a", 2)
    fence.admit(b"b", 9)
    data = fence.snapshot()
    for position in range(len(data)):
        damaged = bytearray(data)
        damaged[position] ^= 1
        with pytest.raises(DecodeError):
            FencedResource().restore(bytes(damaged))
