"""WatchLog: retention and Compacted, events_since, synced / unsynced watchers, overflow at
revision boundaries."""

from __future__ import annotations

import pytest

from engine.coord import DELETE, PUT, WatchEvent, WatchLog
from engine.errors import Compacted, WatchOverflow
from engine.limits import Limits


def _put(log: WatchLog, key: bytes, revision: int, value: bytes = b"v") -> WatchEvent:
    event = WatchEvent(PUT, key, value, revision)
    log.record(event)
    return event


def test_events_since_filters_by_key_or_prefix_in_revision_order() -> None:
    log = WatchLog()
    a1 = _put(log, b"a/1", 1)
    _put(log, b"b", 2)
    a2 = WatchEvent(DELETE, b"a/2", None, 3, prev=b"old")
    log.record(a2)
    assert log.events_since(1, b"a/", prefix=True) == [a1, a2]
    assert log.events_since(2, b"a/", prefix=True) == [a2]
    assert log.events_since(1, b"a/1") == [a1]
    assert log.events_since(9, b"a/", prefix=True) == []


def test_revisions_never_go_back() -> None:
    log = WatchLog()
    _put(log, b"a", 5)
    _put(log, b"b", 5)                        # one transaction, two keys
    with pytest.raises(ValueError):
        _put(log, b"c", 4)


def test_history_below_the_ring_raises_compacted_with_the_oldest_revision() -> None:
    log = WatchLog(Limits(watch_history_events=3))
    for revision in range(1, 6):
        _put(log, b"k", revision)
    assert log.oldest_revision == 3
    with pytest.raises(Compacted) as gone:
        log.events_since(2, b"k")
    assert (gone.value.requested_revision, gone.value.oldest_revision) == (2, 3)
    with pytest.raises(Compacted):
        log.watch(b"k", start_revision=1)
    assert [e.revision for e in log.events_since(3, b"k")] == [3, 4, 5]


def test_a_revision_partly_evicted_is_not_available() -> None:
    log = WatchLog(Limits(watch_history_events=2))
    _put(log, b"a", 1)
    _put(log, b"b", 1)
    _put(log, b"c", 2)                        # evicts (1, a): revision 1 is no longer whole
    assert log.oldest_revision == 2
    with pytest.raises(Compacted):
        log.events_since(1, b"", prefix=True)


def test_initial_revision_and_explicit_compaction() -> None:
    log = WatchLog(initial_revision=10)
    with pytest.raises(Compacted):
        log.events_since(10, b"k")
    for revision in (11, 12, 13):
        _put(log, b"k", revision)
    log.compact(13)
    assert log.oldest_revision == 13 and len(log) == 1
    log.compact(99)
    assert log.oldest_revision == 14 and len(log) == 0


def test_a_synced_watcher_gets_pushed_events_of_its_range_only() -> None:
    log = WatchLog()
    watcher = log.watch(b"a/", prefix=True)
    assert watcher.synced
    a = _put(log, b"a/x", 1)
    _put(log, b"b/x", 2)
    assert watcher.take() == [a]
    assert watcher.take() == []


def test_a_watcher_from_the_past_catches_up_from_the_ring() -> None:
    log = WatchLog()
    events = [_put(log, b"k", revision) for revision in range(1, 11)]
    watcher = log.watch(b"k", start_revision=4, buffer_events=3)
    assert not watcher.synced
    got = []
    while batch := watcher.take():
        got += batch
    assert got == events[3:] and watcher.synced
    live = _put(log, b"k", 11)
    assert watcher.take() == [live]


def test_a_full_buffer_is_back_pressure_not_loss() -> None:
    log = WatchLog()
    watcher = log.watch(b"k", buffer_events=2)
    events = [_put(log, b"k", revision) for revision in range(1, 8)]
    assert watcher.buffered == 2 and not watcher.synced
    got = []
    while batch := watcher.take(2):
        got += batch
    assert got == events


def test_overflow_is_raised_after_the_buffered_events_with_a_seamless_resume() -> None:
    log = WatchLog(Limits(watch_history_events=4))
    watcher = log.watch(b"k", buffer_events=2)
    events = [_put(log, b"k", revision) for revision in range(1, 11)]
    assert watcher.take() == events[:2]
    with pytest.raises(WatchOverflow) as overflow:
        watcher.take()
    assert overflow.value.resume_revision == 3
    with pytest.raises(Compacted) as gone:         # the resume point left the ring too
        log.watch(b"k", start_revision=overflow.value.resume_revision)
    assert gone.value.oldest_revision == 7
    assert log.watchers == 0


def test_a_revision_is_never_split_by_a_full_buffer() -> None:
    log = WatchLog(Limits(watch_history_events=3))
    watcher = log.watch(b"", prefix=True, buffer_events=2)
    first = _put(log, b"a", 1)
    _put(log, b"b", 2)
    _put(log, b"c", 2)                        # revision 2 does not fit: handed back whole
    for revision in range(3, 6):
        _put(log, b"d", revision)
    assert watcher.take() == [first]
    with pytest.raises(WatchOverflow) as overflow:
        watcher.take()
    assert overflow.value.resume_revision == 2   # nothing of revision 2 was delivered


def test_take_returns_a_revision_whole_even_past_max_events() -> None:
    log = WatchLog()
    watcher = log.watch(b"", prefix=True, start_revision=1)
    for key in (b"a", b"b", b"c"):
        _put(log, key, 1)
    _put(log, b"d", 2)
    assert [e.key for e in watcher.take(1)] == [b"a", b"b", b"c"]
    assert [e.key for e in watcher.take(1)] == [b"d"]


def test_snapshot_round_trip_cancels_watchers_with_their_resume_revision() -> None:
    log = WatchLog(Limits(watch_history_events=5))
    for revision in range(1, 9):
        _put(log, b"k/%d" % revision, revision, b"x" * revision)
    log.record(WatchEvent(DELETE, b"k/1", None, 9, prev=b"x"))
    watcher = log.watch(b"k/", prefix=True, start_revision=6)
    watcher.take(1)
    copy = WatchLog(Limits(watch_history_events=5))
    copy.restore(log.snapshot())
    assert copy.snapshot() == log.snapshot()
    assert copy.oldest_revision == log.oldest_revision == 5
    assert copy.events_since(5, b"k/", prefix=True) == log.events_since(5, b"k/", prefix=True)
    log.restore(copy.snapshot())
    with pytest.raises(WatchOverflow) as cancelled:
        watcher.take()
    assert cancelled.value.resume_revision == 7
