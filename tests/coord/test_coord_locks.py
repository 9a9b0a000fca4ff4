"""LockTable: FIFO grants, tokens, no herd, fencing, read-write locks, semaphores, bounds;
FencedResource."""

from __future__ import annotations

import pytest

from engine.coord import AcquireResult, FencedResource, Grant, LockTable
from engine.errors import FencingTokenStale, LockKindMismatch, Overloaded
from engine.limits import Limits


def test_first_is_holder_and_waiters_queue_fifo() -> None:
    table = LockTable()
    assert table.acquire(b"L", 1) == AcquireResult(Grant(b"L", 1, 1), new=True)
    assert table.acquire(b"L", 2).position == 0
    assert table.acquire(b"L", 3).position == 1
    assert table.waiters(b"L") == [2, 3]
    assert table.release(b"L", 1) == [Grant(b"L", 2, 2)]
    assert table.release(b"L", 2) == [Grant(b"L", 3, 3)]


def test_release_tells_exactly_the_next_waiter() -> None:
    table = LockTable()
    for lease in range(1, 65):
        table.acquire(b"L", lease)
    grants = table.release(b"L", 1)
    assert grants == [Grant(b"L", 2, 2)]          # one, not 63: no thundering herd
    assert table.waiters(b"L") == list(range(3, 65))


def test_acquire_again_under_the_same_lease_is_the_same_acquisition() -> None:
    table = LockTable()
    table.acquire(b"L", 1)
    table.acquire(b"L", 2)
    assert table.acquire(b"L", 1) == AcquireResult(Grant(b"L", 1, 1), new=False)
    assert table.acquire(b"L", 2).position == 0
    assert table.waiters(b"L") == [2]
    assert table.next_token == 2


def test_tokens_increase_with_every_grant_even_after_the_queue_empties() -> None:
    table = LockTable()
    tokens = []
    for lease in (1, 2, 1, 3):
        result = table.acquire(b"L", lease)
        assert result.granted is not None
        tokens.append(result.granted.token)
        table.release(b"L", lease)
    table.acquire(b"other", 9)
    again = table.acquire(b"L", 5).granted
    assert again is not None
    tokens.append(again.token)
    assert tokens == sorted(set(tokens)) and tokens[-1] > tokens[-2]


def test_a_waiter_cancelling_is_not_granted_and_the_next_one_is() -> None:
    table = LockTable()
    table.acquire(b"L", 1)
    table.acquire(b"L", 2)
    table.acquire(b"L", 3)
    assert table.release(b"L", 2) == []
    assert table.release(b"L", 1) == [Grant(b"L", 3, 2)]
    assert table.release(b"L", 42) == [] and table.release(b"nope", 1) == []


def test_release_lease_releases_every_lock_of_the_session() -> None:
    table = LockTable()
    table.acquire(b"a", 1)
    table.acquire(b"b", 1)
    table.acquire(b"a", 2)
    table.acquire(b"b", 3)
    table.acquire(b"c", 4)
    table.acquire(b"c", 1)
    assert table.release_lease(1) == [Grant(b"a", 2, 4), Grant(b"b", 3, 5)]
    assert table.waiters(b"c") == [] and table.names_of(1) == []


def test_fence_refuses_once_a_newer_token_exists() -> None:
    table = LockTable()
    table.acquire(b"L", 1)
    table.check_fence(b"L", 1)
    table.acquire(b"L", 2)
    table.release(b"L", 1)                       # lease 1 paused past its TTL, say
    with pytest.raises(FencingTokenStale) as refused:
        table.check_fence(b"L", 1)
    assert (refused.value.token, refused.value.newest_token) == (1, 2)
    table.check_fence(b"L", 2)


def test_fence_refuses_tokens_never_granted_and_unknown_locks() -> None:
    table = LockTable()
    table.acquire(b"L", 1)
    with pytest.raises(FencingTokenStale, match="never granted"):
        table.check_fence(b"L", 7)
    with pytest.raises(FencingTokenStale, match="no grant"):
        table.check_fence(b"M", 1)


def test_strict_fence_refuses_the_newest_token_once_released() -> None:
    table = LockTable()
    table.acquire(b"L", 1)
    table.release(b"L", 1)
    table.check_fence(b"L", 1)                   # newest, no newer grant: allowed
    with pytest.raises(FencingTokenStale, match="no longer holds"):
        table.check_fence(b"L", 1, strict=True)


def test_read_write_lock_shares_readers_and_queues_a_writer_fifo() -> None:
    table = LockTable()
    assert table.acquire(b"rw", 1, shared=True).granted is not None
    assert table.acquire(b"rw", 2, shared=True).granted is not None
    assert table.acquire(b"rw", 3).granted is None          # writer waits for readers
    assert table.acquire(b"rw", 4, shared=True).granted is None   # behind the writer
    assert table.release(b"rw", 1) == []
    assert table.release(b"rw", 2) == [Grant(b"rw", 3, 3)]
    assert table.release(b"rw", 3) == [Grant(b"rw", 4, 4, shared=True)]


def test_readers_behind_a_released_writer_are_granted_together() -> None:
    table = LockTable()
    table.acquire(b"rw", 1)
    for lease in (2, 3, 4):
        table.acquire(b"rw", lease, shared=True)
    table.acquire(b"rw", 5)
    grants = table.release(b"rw", 1)
    assert [g.lease_id for g in grants] == [2, 3, 4]
    # A reader's token is fenced by a newer writer only.
    table.check_fence(b"rw", grants[0].token)


def test_semaphore_admits_capacity_holders() -> None:
    table = LockTable()
    granted = [table.acquire(b"s", lease, shared=True, capacity=2).granted
               for lease in (1, 2, 3)]
    assert [g is not None for g in granted] == [True, True, False]
    assert table.release(b"s", 2) == [Grant(b"s", 3, 3, shared=True)]


def test_a_name_keeps_its_kind_while_in_use() -> None:
    table = LockTable()
    table.acquire(b"s", 1, shared=True, capacity=2)
    with pytest.raises(LockKindMismatch):
        table.acquire(b"s", 2, shared=True, capacity=3)
    with pytest.raises(LockKindMismatch):
        table.acquire(b"s", 2, capacity=2)
    table.release(b"s", 1)
    assert table.acquire(b"s", 2).granted is not None       # free: a mutex now


def test_entries_are_bounded() -> None:
    table = LockTable(Limits(max_lock_entries=3))
    for lease in (1, 2, 3):
        table.acquire(b"L", lease)
    with pytest.raises(Overloaded):
        table.acquire(b"L", 4)
    table.acquire(b"L", 3)                       # already queued: no new entry


def test_free_rows_are_evicted_oldest_token_first_and_fence_refuses_then() -> None:
    table = LockTable(Limits(max_lock_names=2))
    table.acquire(b"a", 1)
    table.release(b"a", 1)                        # free, newest token 1
    table.acquire(b"b", 1)                        # held
    table.acquire(b"c", 2)                        # evicts a
    with pytest.raises(FencingTokenStale):
        table.check_fence(b"a", 1)
    with pytest.raises(Overloaded):
        table.acquire(b"d", 3)                    # b and c in use
    table.release(b"c", 2)
    again = table.acquire(b"a", 4).granted          # evicts c; tokens are never reused
    assert again is not None and again.token == 4


def test_churn_on_free_rows_keeps_the_free_heap_bounded() -> None:
    table = LockTable()
    for lease in range(3_000):
        table.acquire(b"L", lease)
        table.release(b"L", lease)
    assert len(table._free) <= 2 * len(table) + 64 + 1


def test_fenced_resource_refuses_an_older_token_after_a_newer_one() -> None:
    fence = FencedResource()
    fence.admit(b"L", 3)
    fence.admit(b"L", 3)
    fence.admit(b"L", 5)
    with pytest.raises(FencingTokenStale):
        fence.admit(b"L", 4)
    fence.admit(b"M", 1)
    assert fence.newest(b"L") == 5 and list(fence.locks()) == [b"L", b"M"]
    copy = FencedResource()
    copy.restore(fence.snapshot())
    assert copy.snapshot() == fence.snapshot()


def test_asking_again_in_the_other_mode_is_refused_not_an_upgrade() -> None:
    table = LockTable()
    table.acquire(b"rw", 1, shared=True)
    table.acquire(b"rw", 2)
    with pytest.raises(LockKindMismatch):
        table.acquire(b"rw", 1)                  # a reader asking to write
    with pytest.raises(LockKindMismatch):
        table.acquire(b"rw", 2, shared=True)     # a queued writer asking to read
    assert table.acquire(b"rw", 1, shared=True).granted == Grant(b"rw", 1, 1, shared=True)
