"""engine/testing/watches.py: each divergence kind is caught, correct streams pass.

Generated evidence: random committed histories (several keys per revision, as transactions
write them) and watchers on random keys, prefixes and ranges from random start revisions; the
exact owed stream, cut anywhere into reconnect segments, passes; dropping, repeating or
swapping one event is caught with its kind, at its position.
"""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from engine.testing.models import HistoryError
from engine.testing.watches import (
    Change,
    Compacted,
    Overflow,
    Watcher,
    check_watch_history,
)

COMMITTED = [
    Change(1, "a/1", "put", "x"), Change(2, "a/2", "put", "y"), Change(3, "b/1", "put", "z"),
    Change(4, "a/1", "delete"), Change(5, "a/3", "put", "w"), Change(5, "b/2", "put", "v"),
    Change(6, "a/2", "put", "u"),
]
A = [c for c in COMMITTED if c.key.startswith("a/")]


def first(watcher: Watcher, committed: list[Change] = COMMITTED) -> tuple[str, int] | None:
    result = check_watch_history(committed, [watcher])
    divergence = result.divergences.get(watcher.name)
    assert result.valid == (divergence is None)
    return None if divergence is None else (divergence.kind, divergence.position)


def test_exact_streams_pass_for_keys_prefixes_and_ranges() -> None:
    watchers = [
        Watcher("prefix", "a/", prefix=True, received=A),
        Watcher("key", "a/1", received=[COMMITTED[0], COMMITTED[3]]),
        Watcher("range", "a/2", range_end="b/2", received=[c for c in COMMITTED
                                                           if "a/2" <= c.key < "b/2"]),
        Watcher("late", "a/", prefix=True, start_revision=4, received=A[2:]),
    ]
    result = check_watch_history(COMMITTED, watchers)
    assert result.valid, [str(d) for d in result.divergences.values()]
    assert result.delivered == {"prefix": 5, "key": 2, "range": 4, "late": 3}


def test_a_gap_is_caught() -> None:
    assert first(Watcher("w", "a/", prefix=True, received=A[:1] + A[2:])) == ("gap", 1)


def test_a_duplicate_is_caught() -> None:
    # A reconnect that resumed from the last delivered revision instead of the next one.
    assert first(Watcher("w", "a/", prefix=True, received=A[:3] + A[2:])) == ("duplicate", 3)


def test_an_out_of_order_event_is_caught() -> None:
    swapped = [A[0], A[2], A[1], *A[3:]]
    assert first(Watcher("w", "a/", prefix=True, received=swapped)) == ("out-of-order", 1)
    # Going back in revision after everything before was right.
    assert first(Watcher("w", "a/", prefix=True, received=[A[0], A[1], A[0]])) == \
        ("duplicate", 2)
    assert first(Watcher("w", "a/", prefix=True, start_revision=2,
                         received=[A[1], A[2], A[3], A[0]])) == ("out-of-order", 3)


def test_the_order_of_one_revisions_changes_is_the_commit_order() -> None:
    txn = [Change(1, "k1", "put", 1), Change(1, "k2", "put", 2)]
    assert first(Watcher("w", "k", prefix=True, received=txn[::-1]), txn) == ("out-of-order", 0)


def test_silent_overflow_is_caught_and_an_explicit_one_passes() -> None:
    assert first(Watcher("w", "a/", prefix=True, received=A[:2])) == ("missing", 2)
    assert first(Watcher("w", "a/", prefix=True, received=[*A[:2], Overflow("buffer full")])) \
        is None


def test_compacted_is_legal_only_below_the_compaction_point() -> None:
    assert first(Watcher("w", "a/", prefix=True, start_revision=1,
                         received=[Compacted(3)])) is None
    assert first(Watcher("w", "a/", prefix=True, start_revision=3,
                         received=[Compacted(3)])) == ("unjustified-compacted", 0)
    # After a reconnect the stream needs the last delivered revision + 1.
    assert first(Watcher("w", "a/", prefix=True, received=[A[0], Compacted(3)])) is None
    assert first(Watcher("w", "a/", prefix=True, received=[*A[:3], Compacted(4)])) == \
        ("unjustified-compacted", 3)


def test_events_after_an_error_are_caught() -> None:
    assert first(Watcher("w", "a/", prefix=True, received=[A[0], Overflow(), A[1]])) == \
        ("event-after-error", 2)


def test_foreign_and_invented_events_are_caught() -> None:
    assert first(Watcher("w", "a/", prefix=True, received=[COMMITTED[2]])) == ("out-of-range", 0)
    wrong_value = Change(1, "a/1", "put", "not x")
    assert first(Watcher("w", "a/", prefix=True, received=[wrong_value])) == ("phantom", 0)
    assert first(Watcher("w", "a/", prefix=True, start_revision=2, received=[A[0]])) == \
        ("before-start", 0)


def test_until_revision_bounds_what_is_owed() -> None:
    assert first(Watcher("w", "a/", prefix=True, until_revision=2, received=A[:2])) is None
    assert first(Watcher("w", "a/", prefix=True, until_revision=4, received=A[:2])) == \
        ("missing", 2)


def test_bad_inputs_are_refused() -> None:
    with pytest.raises(HistoryError):
        check_watch_history([Change(2, "k"), Change(1, "k")], [])
    with pytest.raises(HistoryError):
        check_watch_history([], [Watcher("w", "k"), Watcher("w", "j")])


# -- generated -------------------------------------------------------------------------------

KEYS = ["a", "a/x", "a/y", "ab", "b", "b/x"]


@st.composite
def histories(draw: st.DrawFn) -> tuple[list[Change], Watcher]:
    committed: list[Change] = []
    for revision in range(1, draw(st.integers(1, 15)) + 1):
        keys = draw(st.lists(st.sampled_from(KEYS), min_size=1, max_size=3, unique=True))
        for key in keys:
            deleted = draw(st.booleans())
            committed.append(Change(revision, key, "delete" if deleted else "put",
                                    None if deleted else draw(st.integers(0, 3))))
    shape = draw(st.sampled_from(["key", "prefix", "range"]))
    key = draw(st.sampled_from(KEYS))
    watcher = Watcher("w", key, prefix=shape == "prefix",
                      range_end=draw(st.sampled_from(KEYS)) if shape == "range" else None,
                      start_revision=draw(st.integers(1, committed[-1].revision)))
    watcher.received = [c for c in committed if watcher.covers(c.key)
                        and c.revision >= watcher.start_revision]
    return committed, watcher


@settings(max_examples=100, deadline=None)
@given(histories())
def test_generated_exact_streams_pass(case: tuple[list[Change], Watcher]) -> None:
    committed, watcher = case
    result = check_watch_history(committed, [watcher])
    assert result.valid, result.divergences
    assert result.delivered["w"] == len(watcher.received)


def planted(case: tuple[list[Change], Watcher], data: st.DataObject, how: str) -> Any:
    committed, watcher = case
    received = list(watcher.received)
    assume(len(received) >= 2)
    i = data.draw(st.integers(0, len(received) - 2))
    if how == "drop":
        del received[i]
    elif how == "repeat":
        received.insert(i + 1, received[i])
    else:
        received[i], received[i + 1] = received[i + 1], received[i]
    watcher.received = received
    return check_watch_history(committed, [watcher]).divergences["w"], i


@settings(max_examples=100, deadline=None)
@given(histories(), st.data())
def test_a_dropped_event_is_a_gap(case: tuple[list[Change], Watcher], data: st.DataObject) -> None:
    divergence, i = planted(case, data, "drop")
    assert (divergence.kind, divergence.position) == ("gap", i)


@settings(max_examples=100, deadline=None)
@given(histories(), st.data())
def test_a_repeated_event_is_a_duplicate(case: tuple[list[Change], Watcher],
                                         data: st.DataObject) -> None:
    divergence, i = planted(case, data, "repeat")
    assert (divergence.kind, divergence.position) == ("duplicate", i + 1)


@settings(max_examples=100, deadline=None)
@given(histories(), st.data())
def test_a_swap_is_out_of_order(case: tuple[list[Change], Watcher], data: st.DataObject) -> None:
    divergence, i = planted(case, data, "swap")
    assert (divergence.kind, divergence.position) == ("out-of-order", i)
