"""Watches: the WatchLog of change events and per-watcher cursors (sans-IO, deterministic).

The log keeps the newest Limits.watch_history_events change events (PUT / DELETE of a key,
with its value, revision and previous value) in revision order; one revision may hold several
events (a transaction's writes). History older than the ring is gone: the oldest available
revision is the smallest revision all of whose events are still kept, and a read or watch
that starts below it raises Compacted carrying it (etcd's ErrCompacted with its
CompactRevision). Every replica records the same events from the same applied commands, so
the ring is replicated state and is part of the snapshot; watchers are not (they belong to
one node's connections and are re-created by the client from its last delivered revision).

A Watcher delivers every event of its range (one key, or a prefix) from its start revision
exactly once, in order (etcd's ordered / unique / reliable guarantees):

  synced     caught up: `record` pushes matching events into its buffer (at most
             Limits.max_watch_buffer_events);
  unsynced   behind (it started in the past, or its buffer filled): `take` reads from the
             ring where it left off; reaching the end of the ring makes it synced again.
             A full buffer is back-pressure, not loss: the watcher stops taking pushes and
             catches up from the ring at the consumer's pace (etcd's synced/unsynced watcher
             groups).
  overflow   an unsynced watcher whose place in the ring was overwritten: after the events
             it already buffered, `take` raises WatchOverflow(resume_revision). Every event
             below resume_revision was delivered and none at or above it, because a watcher
             stops only at revision boundaries (a revision is delivered whole or not at all),
             so a new watch from resume_revision continues without a gap or duplicate.
             Never silent loss.
"""

from __future__ import annotations

import bisect
from collections import deque
from typing import NamedTuple

from engine.coord.codec import Writer, frame, unframe
from engine.errors import Compacted, DecodeError, WatchOverflow
from engine.limits import Limits

__all__ = ["DELETE", "PUT", "WatchEvent", "WatchLog", "Watcher", "put_event"]

PUT = "put"
DELETE = "delete"
_KINDS = (PUT, DELETE)
_MAGIC = b"ECW1"
_VERSION = 1
# What one retained event is accounted beyond its key and values (Limits.watch_history_bytes).
WATCH_EVENT_OVERHEAD_BYTES = 64


_DROPPED: WatchEvent   # the placeholder of an event dropped before the list is compacted


def _size(event: WatchEvent) -> int:
    return (WATCH_EVENT_OVERHEAD_BYTES + len(event.key) + len(event.value or b"")
            + len(event.prev or b""))


class _Event(NamedTuple):
    type: str                 # PUT or DELETE
    key: bytes
    value: bytes | None       # None for DELETE
    revision: int
    prev: bytes | None = None  # the value before this change (None: the key did not exist)


class WatchEvent(_Event):
    """One change (immutable). A tuple underneath: a store records one per write, and a
    tuple is several times cheaper to make than a frozen dataclass."""

    __slots__ = ()

    def __new__(cls, type: str, key: bytes, value: bytes | None, revision: int,
                prev: bytes | None = None) -> WatchEvent:
        if type not in _KINDS:
            raise ValueError(f"watch event type {type!r}, want {_KINDS}")
        return tuple.__new__(cls, (type, key, value, revision, prev))


def put_event(key: bytes, value: bytes, revision: int) -> WatchEvent:
    """A PUT event without the type check (a recorder that knows it is a PUT)."""
    return tuple.__new__(WatchEvent, (PUT, key, value, revision, None))


_DROPPED = WatchEvent(PUT, b"", b"", 0)


class WatchLog:
    """The retained change events and the watchers reading them (module docstring).

    `initial_revision` is the store's revision when the log starts empty: nothing at or
    below it is retained, so the oldest available revision is initial_revision + 1."""

    def __init__(self, limits: Limits | None = None, *, initial_revision: int = 0) -> None:
        self._limits = limits or Limits()
        self._events: list[WatchEvent] = []
        self._head = 0                     # events[head:] are retained
        self._base_seq = 0                 # sequence number of events[0]
        self._floor = initial_revision + 1  # oldest available revision
        self._last_revision = initial_revision
        self._bytes = 0                    # _size of the retained events
        self._watchers: dict[int, Watcher] = {}
        self._next_watcher_id = 1

    # ------------------------------------------------------------------ recording

    def record(self, event: WatchEvent) -> None:
        """Append one applied change; revisions never go back. Record every event of a
        revision (a transaction's writes) before the next take(), as one apply does: a take
        in between could deliver part of the revision, and a resume point is a revision. A
        revision with more events than the ring holds cannot be kept whole: its events are
        delivered to synced watchers but dropped from the history (the oldest available
        revision passes it)."""
        if event.revision < self._last_revision:
            raise ValueError(f"watch event revision {event.revision} after revision "
                             f"{self._last_revision}")
        seq = self._base_seq + len(self._events)
        events = self._events
        events.append(event)
        self._last_revision = event.revision
        self._bytes += _size(event)
        keep_from = len(events) - self._limits.watch_history_events
        if self._bytes > self._limits.watch_history_bytes:
            # The oldest events go until the rest fit the byte bound.
            excess = self._bytes - self._limits.watch_history_bytes
            i = self._head
            while excess > 0 and i < len(events):
                excess -= _size(events[i])
                i += 1
            keep_from = max(keep_from, i)
        self._trim(keep_from)
        for watcher in self._watchers.values():
            watcher._push(seq, event)

    def extend(self, events: list[WatchEvent]) -> None:
        """record() each of `events` (in revision order), with the bookkeeping done once."""
        if not events:
            return
        if self._watchers or events[0].revision < self._last_revision:
            for event in events:
                self.record(event)
            return
        mine = self._events
        mine.extend(events)
        self._last_revision = events[-1].revision
        self._bytes += sum(map(_size, events))
        keep_from = len(mine) - self._limits.watch_history_events
        if self._bytes > self._limits.watch_history_bytes:
            excess = self._bytes - self._limits.watch_history_bytes
            i = max(self._head, keep_from)
            excess -= sum(map(_size, mine[self._head:i]))
            while excess > 0 and i < len(mine):
                excess -= _size(mine[i])
                i += 1
            keep_from = max(keep_from, i)
        self._trim(keep_from)

    def compact(self, revision: int) -> None:
        """Drop every event below `revision` (etcd's Compact); the oldest available
        revision becomes `revision` (at most last revision + 1)."""
        revision = min(revision, self._last_revision + 1)
        if revision <= self._floor:
            return
        self._floor = revision
        self._trim(self._head)

    def skip_to(self, revision: int) -> None:
        """Nothing below `revision` is retained any more (changes before it were not
        recorded): the retained events all go and the oldest available revision becomes
        `revision`. A recorder that dropped changes says so here instead of leaving a gap."""
        if revision <= self._floor:
            return
        self._floor = revision
        self._last_revision = max(self._last_revision, revision - 1)
        self._trim(len(self._events))

    def _trim(self, keep_from: int) -> None:
        """Drop events before index keep_from, then every event below the oldest available
        revision (the rest of a revision partly dropped)."""
        events = self._events
        head = self._head
        if keep_from > head:
            self._floor = max(self._floor, events[keep_from - 1].revision + 1)
            for i in range(head, keep_from):
                # Dropped events release their values now, not when the list is compacted.
                self._bytes -= _size(events[i])
                events[i] = _DROPPED
            head = keep_from
        while head < len(events) and events[head].revision < self._floor:
            self._bytes -= _size(events[head])
            events[head] = _DROPPED
            head += 1
        self._head = head
        if self._head > 1_024 and self._head * 2 > len(events):
            del events[:self._head]
            self._base_seq += self._head
            self._head = 0

    # ------------------------------------------------------------------ reads

    @property
    def last_revision(self) -> int:
        return self._last_revision

    @property
    def oldest_revision(self) -> int:
        return self._floor

    def __len__(self) -> int:
        return len(self._events) - self._head

    @property
    def nbytes(self) -> int:
        """What the retained events are accounted against Limits.watch_history_bytes."""
        return self._bytes

    def events_since(self, start_revision: int, key: bytes, *,
                     prefix: bool = False) -> list[WatchEvent]:
        """Every retained event of the range at or after start_revision, in order; Compacted
        if start_revision is below the oldest available revision."""
        self._check_start(start_revision)
        first = self._index_of_revision(start_revision)
        return [event for event in self._events[first:]
                if _covers(key, prefix, event.key)]

    def _check_start(self, start_revision: int) -> None:
        if start_revision < self._floor:
            raise Compacted(start_revision, self._floor)

    def _index_of_revision(self, revision: int) -> int:
        return bisect.bisect_left(self._events, revision, lo=self._head,
                                  key=lambda event: event.revision)

    def _first_seq(self) -> int:
        return self._base_seq + self._head

    def _end_seq(self) -> int:
        return self._base_seq + len(self._events)

    def _at(self, seq: int) -> WatchEvent:
        return self._events[seq - self._base_seq]

    # ------------------------------------------------------------------ watchers

    def watch(self, key: bytes, *, prefix: bool = False, start_revision: int | None = None,
              buffer_events: int | None = None) -> Watcher:
        """A watcher of `key` (or every key starting with it) from start_revision (default:
        the next revision); Compacted if that history is gone."""
        start = self._last_revision + 1 if start_revision is None else start_revision
        self._check_start(start)
        limit = buffer_events or self._limits.max_watch_buffer_events
        watcher = Watcher(self, self._next_watcher_id, key, prefix, start, limit)
        self._next_watcher_id += 1
        if start <= self._last_revision:
            watcher._next_seq = self._base_seq + self._index_of_revision(start)
        self._watchers[watcher.watcher_id] = watcher
        return watcher

    def cancel(self, watcher: Watcher) -> None:
        """Stop a watcher; a later take() raises WatchOverflow with its resume revision."""
        self._watchers.pop(watcher.watcher_id, None)
        watcher._cancelled = True

    def frozen_copy(self) -> WatchLog:
        """A copy of the retained history (no watchers) for a snapshot taken elsewhere;
        events are immutable, so this copies references only."""
        copy = WatchLog(self._limits, initial_revision=0)
        copy._events = self._events[self._head:]
        copy._floor, copy._last_revision = self._floor, self._last_revision
        copy._bytes = self._bytes
        return copy

    @property
    def watchers(self) -> int:
        return len(self._watchers)

    # ------------------------------------------------------------------ snapshots

    def snapshot(self) -> bytes:
        out = Writer()
        out.u64(self._floor)
        out.u64(self._last_revision)
        out.u32(len(self))
        for event in self._events[self._head:]:
            out.u8(_KINDS.index(event.type))
            out.blob(event.key)
            out.optional_blob(event.value)
            out.u64(event.revision)
            out.optional_blob(event.prev)
        return frame(_MAGIC, _VERSION, out.getvalue())

    def restore(self, data: bytes) -> None:
        """Replace the retained history (watchers are cancelled: they re-watch from their
        last delivered revision); DecodeError, state unchanged, for malformed bytes."""
        body = unframe(data, _MAGIC, _VERSION, "watch log")
        floor, last = body.u64("oldest revision"), body.u64("last revision")
        if floor == 0 or floor > last + 1:
            raise DecodeError(f"watch log snapshot: oldest revision {floor}, last {last}")
        events: list[WatchEvent] = []
        count = body.count("event count", 15)
        if count > self._limits.watch_history_events:
            raise DecodeError(f"watch log snapshot holds {count} events, more than "
                              f"Limits.watch_history_events")
        for _ in range(count):
            kind = body.u8("event type")
            if kind >= len(_KINDS):
                raise DecodeError(f"watch log snapshot: event type {kind}")
            key, value = body.blob("key"), body.optional_blob("value")
            revision, prev = body.u64("revision"), body.optional_blob("previous value")
            if (value is None) != (kind == 1):
                raise DecodeError("watch log snapshot: a PUT without value or a DELETE with one")
            if not floor <= revision <= last or (events and revision < events[-1].revision):
                raise DecodeError(f"watch log snapshot: revision {revision} out of order")
            events.append(WatchEvent(_KINDS[kind], key, value, revision, prev))
        body.end()
        for watcher in list(self._watchers.values()):
            self.cancel(watcher)
        self._events, self._head, self._base_seq = events, 0, 0
        self._bytes = sum(_size(event) for event in events)
        self._floor, self._last_revision = floor, last


def _covers(key: bytes, prefix: bool, candidate: bytes) -> bool:
    return candidate.startswith(key) if prefix else candidate == key


class Watcher:
    """One watch over a WatchLog (module docstring). `take()` returns the next events."""

    def __init__(self, log: WatchLog, watcher_id: int, key: bytes, prefix: bool,
                 start_revision: int, buffer_events: int) -> None:
        self.watcher_id = watcher_id
        self.key = key
        self.prefix = prefix
        self.start_revision = start_revision
        self.buffer_events = buffer_events
        self._log = log
        self._buffer: deque[tuple[int, WatchEvent]] = deque()
        self._next_seq: int | None = None      # None: synced
        # Every event of a revision <= this was delivered or buffered, or does not match.
        self._examined_revision = start_revision - 1
        self._cancelled = False

    @property
    def synced(self) -> bool:
        return self._next_seq is None

    @property
    def buffered(self) -> int:
        return len(self._buffer)

    @property
    def resume_revision(self) -> int:
        """Where a new watch continues this one (every event below it was taken)."""
        if self._buffer:
            return self._buffer[0][1].revision
        return max(self.start_revision, self._examined_revision + 1)

    def matches(self, event: WatchEvent) -> bool:
        return event.revision >= self.start_revision and _covers(self.key, self.prefix,
                                                                 event.key)

    def _push(self, seq: int, event: WatchEvent) -> None:
        if self._next_seq is not None:
            return   # unsynced: it will read this from the ring
        if not self.matches(event):
            self._examined_revision = max(self._examined_revision, event.revision)
            return
        if len(self._buffer) < self.buffer_events:
            self._buffer.append((seq, event))
            self._examined_revision = event.revision
            return
        # Full: fall back to the ring from this event, handing back the buffered events of
        # the same revision so the watcher stops at a revision boundary.
        self._next_seq = seq
        while self._buffer and self._buffer[-1][1].revision == event.revision:
            self._next_seq = self._buffer.pop()[0]
        self._examined_revision = event.revision - 1

    def take(self, max_events: int | None = None) -> list[WatchEvent]:
        """The next events in order, about max_events of them (default: the buffer bound;
        more when a revision holds more, since a revision is never split); [] when none are
        pending. Raises WatchOverflow once the events it needs left the ring (after
        every buffered event was taken)."""
        if self._cancelled:
            raise WatchOverflow(self.resume_revision)
        limit = max_events or self.buffer_events
        out: list[WatchEvent] = []
        while self._buffer and (len(out) < limit
                                or self._buffer[0][1].revision == out[-1].revision):
            out.append(self._buffer.popleft()[1])   # whole revisions only
        if self._next_seq is None or len(out) >= limit:
            return out
        log = self._log
        if self._next_seq < log._first_seq():
            if out:
                return out
            log.cancel(self)
            raise WatchOverflow(self.resume_revision)
        seq, end = self._next_seq, log._end_seq()
        while seq < end:
            event = log._at(seq)
            if len(out) >= limit and event.revision > self._examined_revision:
                break   # a revision boundary: stop here
            seq += 1
            self._examined_revision = event.revision
            if self.matches(event):
                out.append(event)
        self._next_seq = None if seq == end else seq
        return out
