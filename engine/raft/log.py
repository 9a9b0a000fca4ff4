"""RaftLog: the Raft log as the core sees it (etcd's raftLog), over an entry store.

The entry store is `engine._core.log.EntryLog` (term/offset arrays + payload arena; compiled,
or its pure-Python twin under ENGINE_NO_EXTENSIONS). Everything Raft-specific (matching,
conflicts, the up-to-date rule, the persisted/unstable watermarks) lives here, on top of the
store's surface (`EntryStore`).

Compaction (Raft §7): the log may start after a snapshot; `first_index - 1` is then the
last index the snapshot (or an older compaction) covers and `term(first_index - 1)` still
answers the AppendEntries consistency check. `compact(index)` drops entries <= index;
`restore(index, term)` replaces the whole log with an empty one that follows (index, term)
(a follower installing a snapshot that its log does not match, Raft Figure 13 step 7).

Invariants (checked by RaftCore._check_invariants):
  first_index - 1 <= persisted_index <= last_index
  unstable_index <= last_index + 1     (entries >= unstable_index not yet handed to a Ready)
"""

from __future__ import annotations

from typing import Any, Protocol

from engine._core import log as _core_log
from engine.errors import LogIndexError
from engine.types import U64_MAX


class EntryStore(Protocol):
    """The surface of engine._core.log.EntryLog that RaftLog uses (docs/interfaces.md)."""

    @property
    def first_index(self) -> int: ...
    @property
    def last_index(self) -> int: ...
    @property
    def last_term(self) -> int: ...
    def term_at(self, index: int) -> int: ...
    def append(self, entries: list[Any]) -> None: ...
    def append_payloads(self, term: int, kind: int, payloads: list[bytes]) -> tuple[int, int]: ...
    def payload_between(self, lo: int, hi: int) -> int: ...
    def entries(self, lo: int, hi: int, max_bytes: int = U64_MAX) -> list[Any]: ...
    def truncate_suffix(self, index: int) -> None: ...
    def compact_prefix(self, index: int) -> None: ...


def make_entry_store(first_index: int = 1, prev_term: int = 0) -> EntryStore:
    """An empty entry store whose first entry will be `first_index`, after (first_index - 1,
    prev_term)."""
    store: EntryStore = _core_log.EntryLog(first_index, prev_term)
    return store


class RaftLog:
    """The log plus the watermarks the Ready/advance contract needs (etcd raftLog + unstable).

    persisted_index: every entry <= it is on disk exactly as in this log (advance() moves it
        forward, a truncation pulls it back).
    unstable_index: the first entry not yet handed to the driver in a Ready.
    """

    __slots__ = ("store", "persisted_index", "unstable_index", "truncations")

    def __init__(
        self, entries: list[Any], first_index: int | None = None, prev_term: int = 0
    ) -> None:
        """entries start at first_index (default: the first entry's index, else 1); prev_term
        is the term of first_index - 1 (0 for an uncompacted log)."""
        if entries:
            if first_index is not None and entries[0].index != first_index:
                raise LogIndexError(
                    f"entries start at {entries[0].index}, expected first index {first_index}"
                )
            first_index = entries[0].index
        elif first_index is None:
            first_index = 1
        self.store: EntryStore = make_entry_store(first_index, prev_term)
        if entries:
            self.store.append(list(entries))
        # Entries given at construction come from disk.
        self.persisted_index = self.store.last_index
        self.unstable_index = self.store.last_index + 1
        self.truncations = 0

    @property
    def last_index(self) -> int:
        return self.store.last_index

    @property
    def last_term(self) -> int:
        return self.store.last_term

    @property
    def first_index(self) -> int:
        return self.store.first_index

    def term(self, index: int) -> int:
        """Term of the entry at index; 0 if the log does not hold it (as etcd)."""
        if index < self.store.first_index - 1 or index > self.store.last_index:
            return 0
        return self.store.term_at(index)

    def match_term(self, index: int, term: int) -> bool:
        if index < self.store.first_index - 1 or index > self.store.last_index:
            return False
        return self.store.term_at(index) == term

    def is_up_to_date(self, last_term: int, last_index: int) -> bool:
        """Raft §5.4.1: a candidate's log is at least as up to date as ours."""
        my_term = self.store.last_term
        return last_term > my_term or (last_term == my_term and last_index >= self.store.last_index)

    def find_conflict(self, entries: list[Any]) -> int:
        """Index of the first entry that is missing or whose term differs (0 if none)."""
        for entry in entries:
            if not self.match_term(entry.index, entry.term):
                return int(entry.index)
        return 0

    def find_conflict_by_term(self, index: int, term: int) -> tuple[int, int]:
        """The largest index <= index whose term is <= term, and that term (etcd
        findConflictByTerm): the fast backtracking hint of the thesis §5.3 optimisation."""
        index = min(index, self.store.last_index)
        floor = self.store.first_index - 1
        while index > floor:
            entry_term = self.store.term_at(index)
            if entry_term <= term:
                return index, entry_term
            index -= 1
        return floor, self.store.term_at(floor)

    def slice(self, lo: int, hi: int, max_bytes: int = U64_MAX) -> list[Any]:
        """Entries [lo, hi), at most max_bytes of payload but at least one if lo < hi."""
        if lo >= hi:
            return []
        return self.store.entries(lo, hi, max_bytes)

    def append(self, entries: list[Any]) -> None:
        """Append after truncating any conflicting suffix (entries[0].index <= last_index + 1)."""
        if not entries:
            return
        first = entries[0].index
        if first <= self.store.last_index:
            self.truncate_from(first)
        self.store.append(entries)

    def append_payloads(self, term: int, kind: int, payloads: list[bytes]) -> tuple[int, int]:
        """The leader's append of new proposals after its last entry (it never truncates its
        own log, Raft §5.3 Leader Append-Only): one entry per payload, all of `term` and
        `kind`. Returns (first_index, last_index)."""
        return self.store.append_payloads(term, kind, payloads)

    def payload_bytes(self, lo: int, hi: int) -> int:
        """Payload bytes of entries [lo, hi), without reading the entries."""
        if lo >= hi:
            return 0
        return self.store.payload_between(lo, hi)

    def truncate_from(self, index: int) -> None:
        self.store.truncate_suffix(index)
        self.truncations += 1
        self.persisted_index = min(self.persisted_index, index - 1)
        self.unstable_index = min(self.unstable_index, index)

    def compact(self, index: int) -> None:
        """Drops every entry <= index (covered by a snapshot); index <= persisted_index."""
        if index >= self.store.first_index:
            self.store.compact_prefix(index + 1)

    def restore(self, index: int, term: int) -> None:
        """Replaces the log with an empty one after (index, term): a snapshot was installed
        that the log does not contain (Raft Figure 13 step 7). The snapshot is persisted in
        the same Ready that reports it, hence persisted_index = index."""
        self.store = make_entry_store(index + 1, term)
        self.persisted_index = index
        self.unstable_index = index + 1
        self.truncations += 1

    def take_unstable(self) -> list[Any]:
        """Entries not yet handed to a Ready; marks them handed out."""
        entries = self.slice(self.unstable_index, self.store.last_index + 1)
        self.unstable_index = self.store.last_index + 1
        return entries

    def persisted_to(self, index: int, term: int) -> None:
        """The driver synced a Ready whose last entry was (index, term). If our log still has
        that entry, everything up to it is on disk as in memory (Log Matching, Raft §5.3)."""
        if index > self.persisted_index and self.match_term(index, term):
            self.persisted_index = index
