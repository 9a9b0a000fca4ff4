"""In-memory Raft log: compact per-entry metadata plus one payload arena (pure-Python twin).

This module is the specification of `log_c.pyx`; both have the same names, signatures, errors
and results.

Layout (17 bytes of metadata per entry, beyond its payload):

    slot        0 ... head-1 | head ... head+count-1 | (free capacity)
    _terms      dead prefix  | term of each entry      array('Q')
    _kinds      dead prefix  | EntryKind of each entry array('B')
    _offsets    dead prefix  | start of each entry, plus one end offset   array('Q')
    _arena      dead bytes   | payloads back to back    bytearray

The entry at slot `head + k` has index `first_index + k`. Offsets are *logical* positions in the
stream of every payload ever appended; the arena holds that stream from `_arena_origin` on, so
compacting the arena never rewrites the offsets. `compact_prefix` only advances `head`; the dead
prefix of the arrays (and of the arena) is reclaimed once it is at least as large as the live part
(and at least RECLAIM_MIN_SLOTS / RECLAIM_MIN_BYTES), so the copying is amortised O(1) per entry.

Indexes are ints in [1, 2**63); terms fit in 64 bits and kinds in 8 bits (OverflowError
otherwise). Any index outside the range the log holds raises engine.errors.LogIndexError.
"""

from __future__ import annotations

import sys
from array import array
from bisect import bisect_right
from itertools import accumulate, islice

from engine._core.codec_py import Entry
from engine.errors import LogIndexError

U64_MAX = (1 << 64) - 1
MAX_INDEX = 1 << 63  # exclusive; keeps index arithmetic inside int64 in the C twin

# The dead prefix is reclaimed when it is at least as large as the live part and at least this big.
RECLAIM_MIN_SLOTS = 1024
RECLAIM_MIN_BYTES = 64 * 1024

__all__ = ["EntryLog", "LogIndexError", "U64_MAX"]


class EntryLog:
    """The entries first_index..last_index of one replica's log, plus the term of first_index-1."""

    __slots__ = (
        "_first_index", "_prev_term", "_head", "_terms", "_kinds", "_offsets", "_arena",
        "_arena_origin",
    )

    def __init__(self, first_index: int = 1, prev_term: int = 0) -> None:
        if not 1 <= first_index < MAX_INDEX:
            raise ValueError(f"first_index must be in [1, 2**63), got {first_index}")
        if not 0 <= prev_term <= U64_MAX:
            raise ValueError(f"prev_term must fit in 64 bits, got {prev_term}")
        self._first_index = first_index
        self._prev_term = prev_term
        self._head = 0
        self._terms = array("Q")
        self._kinds = array("B")
        self._offsets = array("Q", [0])
        self._arena = bytearray()
        self._arena_origin = 0

    # -- shape ---------------------------------------------------------------------------------

    @property
    def first_index(self) -> int:
        return self._first_index

    @property
    def last_index(self) -> int:
        """Index of the last entry; first_index - 1 when the log is empty."""
        return self._first_index + len(self._terms) - self._head - 1

    @property
    def last_term(self) -> int:
        """Term of the last entry; the term of first_index - 1 when the log is empty."""
        if len(self._terms) == self._head:
            return self._prev_term
        return self._terms[-1]

    @property
    def payload_bytes(self) -> int:
        """Total payload bytes of the entries held."""
        return self._offsets[-1] - self._offsets[self._head]

    def __len__(self) -> int:
        return len(self._terms) - self._head

    def memory_bytes(self) -> int:
        """Bytes allocated by the log's buffers (capacity, not just the used part)."""
        return (
            sys.getsizeof(self._terms) + sys.getsizeof(self._kinds)
            + sys.getsizeof(self._offsets) + sys.getsizeof(self._arena)
        )

    # -- reads ---------------------------------------------------------------------------------

    def term_at(self, index: int) -> int:
        """Term of the entry at `index`, valid for first_index-1 .. last_index."""
        slot = index - self._first_index + self._head
        if slot < self._head:
            if slot == self._head - 1:
                return self._prev_term  # the entry just before the log (Raft §5.3 prevLogTerm)
            raise LogIndexError(self._out_of_range("term_at", index, self._first_index - 1))
        if slot >= len(self._terms):
            raise LogIndexError(self._out_of_range("term_at", index, self._first_index - 1))
        return self._terms[slot]

    def entries(self, lo: int, hi: int, max_bytes: int = U64_MAX) -> list[Entry]:
        """Entries lo..hi-1, cut before the payload total would exceed `max_bytes`.

        At least one entry is returned when lo < hi, whatever its size, so replication always
        makes progress (etcd's limitSize does the same).
        """
        self._check_range("entries", lo, hi)
        if max_bytes < 0:
            raise ValueError(f"max_bytes must be >= 0, got {max_bytes}")
        if lo == hi:
            return []
        first_slot = lo - self._first_index + self._head
        end_slot = hi - self._first_index + self._head
        offsets = self._offsets
        if max_bytes < offsets[end_slot] - offsets[first_slot]:
            # First slot whose start lies beyond the budget: every entry before it fits.
            limit = offsets[first_slot] + max_bytes
            cut = bisect_right(offsets, limit, first_slot, end_slot + 1) - 1
            end_slot = max(cut, first_slot + 1)
        origin = self._arena_origin
        terms = self._terms
        kinds = self._kinds
        out = []
        with memoryview(self._arena) as arena:
            index = lo
            for slot in range(first_slot, end_slot):
                data = bytes(arena[offsets[slot] - origin:offsets[slot + 1] - origin])
                out.append(Entry(terms[slot], index, data, kinds[slot]))
                index += 1
        return out

    # -- writes --------------------------------------------------------------------------------

    def append(self, entries: list[Entry]) -> None:
        """Append `entries`; entries[0].index must be last_index + 1 and indexes contiguous.

        Validation happens before any change, so a refused batch leaves the log untouched.
        """
        if not entries:
            return
        next_index = self.last_index + 1
        for k, entry in enumerate(entries):
            if entry.index != next_index + k:
                raise LogIndexError(
                    f"append: entry {k} has index {entry.index}, expected {next_index + k} "
                    f"(log is [{self._first_index}, {next_index - 1}])"
                )
        # Build the new columns first: array() raises OverflowError on a term or kind that does
        # not fit, before anything is modified.
        terms = array("Q", [entry.term for entry in entries])
        kinds = array("B", [entry.kind for entry in entries])
        payloads = [entry.data for entry in entries]
        self._extend(terms, kinds, payloads)

    def append_payloads(self, term: int, kind: int, payloads: list[bytes]) -> tuple[int, int]:
        """Leader's fast path: append one entry per payload, all with `term` and `kind`.

        Returns (first_index, last_index) of the new entries (last < first when empty).
        """
        first = self.last_index + 1
        if not payloads:
            return first, first - 1
        count = len(payloads)
        terms = array("Q", [term]) * count
        kinds = array("B", [kind]) * count
        self._extend(terms, kinds, payloads)
        return first, first + count - 1

    def _extend(self, terms: array[int], kinds: array[int], payloads: list[bytes]) -> None:
        blob = b"".join(payloads)  # TypeError on a non-bytes payload, before any change
        if self.last_index + len(terms) >= MAX_INDEX:
            raise LogIndexError("append: index would exceed 2**63 - 1")
        start = self._offsets[-1]
        self._terms.extend(terms)
        self._kinds.extend(kinds)
        self._offsets.extend(islice(accumulate(map(len, payloads), initial=start), 1, None))
        self._arena += blob

    def truncate_suffix(self, index: int) -> None:
        """Drop every entry with index >= `index` (first_index <= index <= last_index + 1).

        Used when a follower's log conflicts with the leader's (Raft §5.3); committed entries
        are never truncated, which is the caller's invariant.
        """
        if not self._first_index <= index <= self.last_index + 1:
            raise LogIndexError(self._out_of_range("truncate_suffix", index, self._first_index))
        slot = index - self._first_index + self._head
        end = self._offsets[slot]
        del self._terms[slot:]
        del self._kinds[slot:]
        del self._offsets[slot + 1:]
        del self._arena[end - self._arena_origin:]

    def compact_prefix(self, index: int) -> None:
        """Drop every entry with index < `index` (first_index <= index <= last_index + 1).

        The term of index - 1 is kept as the new prev_term so that term_at(first_index - 1)
        still answers the AppendEntries consistency check (Raft §5.3, §7).
        """
        if not self._first_index <= index <= self.last_index + 1:
            raise LogIndexError(self._out_of_range("compact_prefix", index, self._first_index))
        if index == self._first_index:
            return
        slot = index - self._first_index + self._head
        self._prev_term = self._terms[slot - 1]
        self._first_index = index
        self._head = slot
        self._maybe_reclaim()

    def _maybe_reclaim(self) -> None:
        head = self._head
        live = len(self._terms) - head
        if head >= max(live, RECLAIM_MIN_SLOTS) or (live == 0 and head > 0):
            del self._terms[:head]
            del self._kinds[:head]
            del self._offsets[:head]
            self._head = 0
        live_start = self._offsets[self._head]
        dead_bytes = live_start - self._arena_origin
        live_bytes = self._offsets[-1] - live_start
        if dead_bytes >= max(live_bytes, RECLAIM_MIN_BYTES) or (live_bytes == 0 and dead_bytes):
            del self._arena[:dead_bytes]
            self._arena_origin = live_start

    # -- errors --------------------------------------------------------------------------------

    def _check_range(self, what: str, lo: int, hi: int) -> None:
        last = self.last_index
        if not self._first_index <= lo <= hi <= last + 1:
            raise LogIndexError(
                f"{what}: [{lo}, {hi}) is outside the log [{self._first_index}, {last}]"
            )

    def _out_of_range(self, what: str, index: int, low: int) -> str:
        return f"{what}: index {index} is outside [{low}, {self.last_index}]"

    def __repr__(self) -> str:
        return (
            f"EntryLog(first_index={self._first_index}, last_index={self.last_index}, "
            f"last_term={self.last_term}, payload_bytes={self.payload_bytes})"
        )
