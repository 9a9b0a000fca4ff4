"""Client-side routing: a cache of range descriptors that routes a key or a scan span.

Optimistic routing, as in CockroachDB's range cache and TiKV's region cache: a client sends
each request to the range its cached descriptor names; a replica whose range no longer owns
the key answers engine.errors.WrongShard with its current epoch and the descriptors it knows,
and the client replaces its entry and retries. A miss (no cached descriptor for the key) is
the caller's to fill from the meta group (engine.shard.meta, LOOKUP or SPAN queries).

Which of two descriptors is newer: of two overlapping descriptors the one with the greater
epoch (engine.shard.map, "Epochs": a replacing descriptor always has a greater epoch). So:

  * inserting a descriptor removes every cached one it overlaps with a smaller epoch; if a
    cached one it overlaps has an equal or greater epoch (and is not the same descriptor),
    the insert is refused: the cache never goes back to an older descriptor than one it
    holds;
  * a removed descriptor leaves a tombstone over the part of its span the new one does not
    cover, remembering its epoch; a later descriptor overlapping a tombstone must have a
    greater epoch, so a stale descriptor arriving late (a lagging replica's hint, a reply
    that crossed a split) is never served after a newer one was seen;
  * WrongShard(range r, epoch e) turns a cached descriptor of r older than e into a
    tombstone, then inserts the descriptors it carries.

Bounded (DESIGN.md §5): at most Limits.max_range_cache_entries entries, descriptors and
tombstones together, least recently used evicted first. The guarantee above holds for the
spans the cache still holds an entry for; an evicted span is a miss again.
"""

from __future__ import annotations

import bisect
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass

from engine.errors import ConfigError, WrongShard
from engine.limits import Limits
from engine.shard.map import RangeDescriptor, ShardMap


@dataclass(frozen=True, slots=True)
class _Entry:
    start: bytes
    end: bytes | None
    epoch: int
    descriptor: RangeDescriptor | None   # None: a tombstone (a span known stale at epoch)


@dataclass(frozen=True, slots=True)
class SpanPiece:
    """The part [start, end) of a scanned span that `descriptor`'s range serves."""

    descriptor: RangeDescriptor
    start: bytes
    end: bytes | None


@dataclass(frozen=True, slots=True)
class SpanRoute:
    """A span cut along the cached ranges, in key order; `missing` are the sub-spans with
    no cached descriptor (look them up in the meta group, insert, route again)."""

    pieces: tuple[SpanPiece, ...]
    missing: tuple[tuple[bytes, bytes | None], ...]

    @property
    def complete(self) -> bool:
        return not self.missing


def _before(a: bytes | None, b: bytes | None) -> bool:
    """a < b where None is +inf."""
    return a is not None and (b is None or a < b)


def _min_end(a: bytes | None, b: bytes | None) -> bytes | None:
    return a if _before(a, b) or b is None else b


class RangeCache:
    """See the module docstring."""

    def __init__(self, *, limits: Limits | None = None, capacity: int | None = None) -> None:
        capacity = (limits or Limits()).max_range_cache_entries if capacity is None \
            else capacity
        if not isinstance(capacity, int) or capacity < 1:
            raise ConfigError(f"range cache capacity must be a positive int, got {capacity!r}")
        self._capacity = capacity
        self._starts: list[bytes] = []
        self._entries: OrderedDict[bytes, _Entry] = OrderedDict()   # LRU order
        self._start_of: dict[int, bytes] = {}   # range id -> start of its live entry

    # ------------------------------------------------------------------ reading

    def __len__(self) -> int:
        """Cached descriptors (tombstones not counted)."""
        return sum(1 for e in self._entries.values() if e.descriptor is not None)

    @property
    def entries(self) -> int:
        """Descriptors and tombstones held (at most the capacity)."""
        return len(self._entries)

    def descriptors(self) -> list[RangeDescriptor]:
        """The cached descriptors in key order."""
        out = []
        for start in self._starts:
            descriptor = self._entries[start].descriptor
            if descriptor is not None:
                out.append(descriptor)
        return out

    def lookup(self, key: bytes) -> RangeDescriptor | None:
        """The cached descriptor of the range owning `key`, or None (a miss)."""
        i = bisect.bisect_right(self._starts, key) - 1
        if i < 0:
            return None
        entry = self._entries[self._starts[i]]
        if entry.descriptor is None or _before(entry.end, key) or entry.end == key:
            return None
        self._entries.move_to_end(entry.start)
        return entry.descriptor

    def route_span(self, start: bytes, end: bytes | None) -> SpanRoute:
        """[start, end) (end None = +inf) cut along the cached ranges, in key order."""
        pieces: list[SpanPiece] = []
        missing: list[tuple[bytes, bytes | None]] = []
        if end is not None and not start < end:
            return SpanRoute((), ())
        position: bytes | None = start
        i = max(bisect.bisect_right(self._starts, start) - 1, 0)
        while position is not None and _before(position, end):
            if i >= len(self._starts):
                missing.append((position, end))
                break
            entry = self._entries[self._starts[i]]
            if entry.end is not None and entry.end <= position:
                i += 1   # wholly before the position
                continue
            if entry.start > position:
                gap_end = _min_end(entry.start, end)
                missing.append((position, gap_end))
                position = gap_end
                continue
            piece_end = _min_end(entry.end, end)   # entry.start <= position < entry.end
            if entry.descriptor is None:
                missing.append((position, piece_end))
            else:
                self._entries.move_to_end(entry.start)
                pieces.append(SpanPiece(entry.descriptor, position, piece_end))
            position = piece_end
            i += 1
        return SpanRoute(tuple(pieces), tuple(_merge_gaps(missing)))

    # ------------------------------------------------------------------ writing

    def insert(self, descriptor: RangeDescriptor) -> bool:
        """Cache `descriptor`; False if it was not cached because an overlapping entry,
        live or a tombstone, has an equal or greater epoch (it is not newer than what was
        seen). Either way every older entry it overlaps stops being served: what the
        descriptor covers becomes its own, or a tombstone at its epoch where something
        newer is not cached (so nothing older than it is ever cached there again)."""
        overlapping = self._overlapping(descriptor.start, descriptor.end)
        for entry in overlapping:
            if entry.descriptor == descriptor:
                self._entries.move_to_end(entry.start)
                return False
        newer = [e for e in overlapping if e.epoch >= descriptor.epoch]
        for entry in overlapping:
            if entry.epoch >= descriptor.epoch:
                continue
            self._remove(entry)
            # The old entry is stale; what lies outside the descriptor stays known-stale at
            # the old epoch.
            if entry.start < descriptor.start:
                self._add(_Entry(entry.start, descriptor.start, entry.epoch, None))
            if _before(descriptor.end, entry.end):
                assert descriptor.end is not None
                self._add(_Entry(descriptor.end, entry.end, entry.epoch, None))
        if not newer:
            self._add(_Entry(descriptor.start, descriptor.end, descriptor.epoch, descriptor))
            return True
        # Not the newest: its span outside the newer entries is stale up to its epoch.
        position: bytes | None = descriptor.start
        for entry in newer:   # in key order, disjoint
            if _before(position, entry.start):
                assert position is not None
                self._add(_Entry(position, entry.start, descriptor.epoch, None))
            position = entry.end if _before(position, entry.end) or entry.end is None \
                else position
            if position is None:
                break
        if position is not None and _before(position, descriptor.end):
            self._add(_Entry(position, descriptor.end, descriptor.epoch, None))
        return False

    def insert_all(self, descriptors: Iterable[RangeDescriptor]) -> int:
        """Insert each; the number inserted."""
        return sum(self.insert(d) for d in descriptors)

    def insert_map(self, shard_map: ShardMap) -> int:
        return self.insert_all(shard_map.ranges)

    def invalidate(self, range_id: int, epoch: int) -> bool:
        """Range `range_id` is at `epoch` now: a cached descriptor of it with a smaller
        epoch becomes a tombstone (never served again). True if one did."""
        start = self._start_of.get(range_id)
        if start is None:
            return False
        entry = self._entries[start]
        assert entry.descriptor is not None
        if entry.descriptor.epoch >= epoch:
            return False
        self._remove(entry)
        self._add(_Entry(entry.start, entry.end, entry.epoch, None))
        return True

    def on_wrong_shard(self, error: WrongShard) -> bool:
        """Apply a WrongShard answer: invalidate the stale descriptor, insert the ones it
        carries. True if the cache changed (then route again); False means the answer was
        no newer than the cache (a lagging replica: try another replica of the range)."""
        changed = self.invalidate(error.range_id, error.epoch)
        for hint in error.descriptors:
            if isinstance(hint, RangeDescriptor):
                changed = self.insert(hint) or changed
        return changed

    def clear(self) -> None:
        self._starts.clear()
        self._entries.clear()
        self._start_of.clear()

    # ------------------------------------------------------------------ internals

    def _overlapping(self, start: bytes, end: bytes | None) -> list[_Entry]:
        i = max(bisect.bisect_right(self._starts, start) - 1, 0)
        found = []
        while i < len(self._starts):
            entry = self._entries[self._starts[i]]
            if end is not None and entry.start >= end:
                break
            if entry.end is None or entry.end > start:
                found.append(entry)
            i += 1
        return found

    def _remove(self, entry: _Entry) -> None:
        del self._entries[entry.start]
        del self._starts[bisect.bisect_left(self._starts, entry.start)]
        if (entry.descriptor is not None
                and self._start_of.get(entry.descriptor.range_id) == entry.start):
            del self._start_of[entry.descriptor.range_id]

    def _add(self, entry: _Entry) -> None:
        bisect.insort(self._starts, entry.start)
        self._entries[entry.start] = entry
        if entry.descriptor is not None:
            # Live entries never overlap, and one range id's descriptors always overlap
            # (its start key stays in it, engine.shard.meta): one live entry per range id.
            self._start_of[entry.descriptor.range_id] = entry.start
        while len(self._entries) > self._capacity:
            oldest = next(iter(self._entries.values()))
            self._remove(oldest)


def _merge_gaps(gaps: list[tuple[bytes, bytes | None]]) -> list[tuple[bytes, bytes | None]]:
    merged: list[tuple[bytes, bytes | None]] = []
    for start, end in gaps:
        if merged and merged[-1][1] == start:
            merged[-1] = (merged[-1][0], end)
        else:
            merged.append((start, end))
    return merged
