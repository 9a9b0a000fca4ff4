"""Watch checker: every watcher saw exactly the committed changes of its range (sans-IO).

    result = check_watch_history(committed_changes, watchers)
    result.valid                     True when no watcher diverged
    result.divergences[name]         the first divergence of that watcher, with its evidence

committed_changes: the store's changes in commit order (revision non-decreasing; one revision
may hold several keys, a transaction's writes), each a Change(revision, key, kind, value).

A Watcher is one logical watch as its user saw it: its range (one key, a prefix, or
[key, range_end)), the revision it asked to start from, and every item its iterator yielded,
across reconnects (the client resumes from the last delivered revision + 1, so a correct
stream is seamless). The rule (etcd's watch guarantees, "Ordered", "Unique", "Reliable"):

  received == [c for c in committed_changes if c in range and c.revision >= start_revision]

in that order, each change once. The stream may end early with an explicit error:

  Compacted(compact_revision)   legal only when the revision the stream needed next (the start
                                revision, or the last delivered revision + 1) is below the
                                compaction point: the history it asks for is gone.
  Overflow()                    legal: the watcher fell too far behind and was told so. Losing
                                events without it is a gap, never acceptable.

until_revision says how far the watcher must have got by the end of the run (None: to the last
committed change); changes beyond it may be delivered or not.

Divergence kinds, the first per watcher: gap (a change skipped: silent loss), duplicate,
out-of-order, out-of-range (a key outside the watched range), phantom (an event no committed
change of the range matches, wrong value included), before-start, missing (the stream stopped
short of until_revision without an error), unjustified-compacted, event-after-error.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from engine.testing.models import HistoryError

__all__ = [
    "Change",
    "Compacted",
    "Overflow",
    "WatchCheckResult",
    "WatchDivergence",
    "Watcher",
    "check_watch_history",
]


@dataclass(frozen=True)
class Change:
    revision: int
    key: Any
    kind: str = "put"        # "put" or "delete"
    value: Any = None


@dataclass(frozen=True)
class Compacted:
    """The explicit error: history before compact_revision (the oldest kept) is gone."""

    compact_revision: int


@dataclass(frozen=True)
class Overflow:
    """The explicit error: the watcher fell behind its buffer bound and was cut off."""

    reason: str = ""


WatchItem = Change | Compacted | Overflow


@dataclass
class Watcher:
    name: Hashable
    key: Any
    prefix: bool = False
    range_end: Any = None          # [key, range_end) when given; exclusive of prefix
    start_revision: int = 1
    received: Sequence[WatchItem] = ()
    until_revision: int | None = None

    def covers(self, key: Any) -> bool:
        if self.prefix:
            return bool(key[:len(self.key)] == self.key)
        if self.range_end is not None:
            return bool(self.key <= key < self.range_end)
        return bool(key == self.key)


@dataclass(frozen=True)
class WatchDivergence:
    watcher: Hashable
    kind: str
    position: int              # index in received (len(received) for "missing")
    received: WatchItem | None
    expected: Change | None    # the change the stream owed at that point, if any
    message: str

    def __str__(self) -> str:
        return (f"watcher {self.watcher!r}: {self.kind} at item {self.position}: {self.message}"
                f" (received {self.received!r}, expected {self.expected!r})")


@dataclass
class WatchCheckResult:
    valid: bool
    divergences: dict[Hashable, WatchDivergence] = field(default_factory=dict)
    # Events matched per watcher that did not diverge.
    delivered: dict[Hashable, int] = field(default_factory=dict)
    ended_by: dict[Hashable, WatchItem] = field(default_factory=dict)  # explicit errors seen

    def __bool__(self) -> bool:
        return self.valid


def _committed(changes: Iterable[Change]) -> list[Change]:
    ordered = list(changes)
    for before, after in zip(ordered, ordered[1:], strict=False):
        if after.revision < before.revision:
            raise HistoryError(f"committed changes go back: revision {after.revision} after "
                               f"{before.revision}")
    return ordered


def _check_one(
    committed: Sequence[Change], watcher: Watcher, result: WatchCheckResult,
) -> WatchDivergence | None:
    owed = [c for c in committed if watcher.covers(c.key) and c.revision >= watcher.start_revision]
    until = watcher.until_revision
    required = len(owed) if until is None else sum(1 for c in owed if c.revision <= until)
    position_of = {change: index for index, change in enumerate(owed)}
    committed_ids = {(c.revision, c.key) for c in committed}
    seen: set[tuple[int, Any]] = set()
    matched = 0                     # owed[:matched] delivered, in order
    last_revision: int | None = None
    ended: WatchItem | None = None

    def diverge(kind: str, position: int, item: WatchItem | None, message: str) -> WatchDivergence:
        expected = owed[matched] if matched < len(owed) else None
        return WatchDivergence(watcher.name, kind, position, item, expected, message)

    for position, item in enumerate(watcher.received):
        if ended is not None:
            return diverge("event-after-error", position, item,
                           f"the stream went on after {ended!r}")
        if isinstance(item, Compacted):
            needed = watcher.start_revision if last_revision is None else last_revision + 1
            if needed >= item.compact_revision:
                return diverge("unjustified-compacted", position, item,
                               f"revision {needed} was needed next, not below the compaction "
                               f"point {item.compact_revision}")
            ended = item
            continue
        if isinstance(item, Overflow):
            ended = item
            continue
        ident = (item.revision, item.key)
        if not watcher.covers(item.key):
            return diverge("out-of-range", position, item, f"key {item.key!r} is not watched")
        if ident in seen:
            return diverge("duplicate", position, item,
                           f"revision {item.revision} key {item.key!r} delivered twice")
        if last_revision is not None and item.revision < last_revision:
            return diverge("out-of-order", position, item,
                           f"revision {item.revision} after revision {last_revision}")
        if matched < len(owed) and item == owed[matched]:
            matched += 1
            seen.add(ident)
            last_revision = item.revision
            continue
        later = position_of.get(item)
        if later is not None and later > matched:
            # The change owed now: delivered further on (out of order) or never (a gap).
            skipped = owed[matched]
            if skipped in watcher.received[position + 1:]:
                return diverge("out-of-order", position, item,
                               f"revision {item.revision} key {item.key!r} came before "
                               f"revision {skipped.revision} key {skipped.key!r}")
            return diverge("gap", position, item,
                           f"revision {skipped.revision} key {skipped.key!r} was skipped")
        if item.revision < watcher.start_revision and ident in committed_ids:
            return diverge("before-start", position, item,
                           f"revision {item.revision} is before the start revision "
                           f"{watcher.start_revision}")
        return diverge("phantom", position, item,
                       "no committed change of the range matches this event"
                       + (" (its revision and key were committed with other content)"
                          if ident in committed_ids else ""))
    result.delivered[watcher.name] = matched
    if ended is not None:
        result.ended_by[watcher.name] = ended
    elif matched < required:
        return diverge("missing", len(watcher.received), None,
                       f"{required - matched} owed change(s) never delivered and no error "
                       "(silent loss)")
    return None


def check_watch_history(
    committed_changes: Iterable[Change], watchers: Iterable[Watcher],
) -> WatchCheckResult:
    """Check every watcher against the committed changes; report each one's first divergence."""
    committed = _committed(committed_changes)
    result = WatchCheckResult(valid=True)
    names: set[Hashable] = set()
    for watcher in watchers:
        if watcher.name in names:
            raise HistoryError(f"two watchers named {watcher.name!r}")
        names.add(watcher.name)
        divergence = _check_one(committed, watcher, result)
        if divergence is not None:
            result.valid = False
            result.divergences[watcher.name] = divergence
    return result
