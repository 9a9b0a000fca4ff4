"""In-memory Raft log: compact per-entry metadata plus payload chunks (pure-Python twin).

This module is the specification of `log_c.pyx`; both have the same names, signatures, errors
and results.

Layout (17 bytes of metadata per entry, beyond its payload):

    slot        0 ... head-1 | head ... head+count-1 | (free capacity)
    _terms      dead prefix  | term of each entry      array('Q')
    _kinds      dead prefix  | EntryKind of each entry array('B')
    _offsets    dead prefix  | start of each entry, plus one end offset   array('Q')

The entry at slot `head + k` has index `first_index + k`. Offsets are *logical* positions in the
stream of every payload ever appended. The stream is stored in chunks: chunk k holds the logical
bytes [_chunk_starts[k], _chunk_starts[k + 1]) (the last one up to the stream's end), and an entry
never spans two chunks, so its payload is one slice of one chunk. Only the last chunk has spare
capacity: a chunk is trimmed to what it holds when the next one is opened, and a new chunk is at
most CHUNK_BYTES (or exactly the size of a larger payload), so the spare capacity is bounded by one
chunk instead of growing with the log (the budget: <= 32 bytes per entry beyond the payload,
tests/_core/test_log.py::test_memory_overhead_per_entry).

`compact_prefix` only advances `head`: chunks whose bytes are all before the new first entry are
dropped at once (the payload memory comes back a whole chunk at a time), and the dead prefix of
the metadata arrays is reclaimed once it is at least as large as the live part (and at least
RECLAIM_MIN_SLOTS), so the copying is amortised O(1) per entry. `truncate_suffix` drops the chunks
that held only truncated bytes.

Indexes are ints in [1, 2**63); terms fit in 64 bits and kinds in 8 bits (OverflowError
otherwise). Any index outside the range the log holds raises engine.errors.LogIndexError.
"""

from __future__ import annotations

import sys
from array import array
from bisect import bisect_left, bisect_right
from itertools import accumulate, islice

from engine._core.codec_py import Entry
from engine.errors import LogIndexError

U64_MAX = (1 << 64) - 1
MAX_INDEX = 1 << 63  # exclusive; keeps index arithmetic inside int64 in the C twin

# The dead prefix of the metadata arrays is reclaimed when it is at least as large as the live
# part and at least this many slots.
RECLAIM_MIN_SLOTS = 1024
# Payload chunks hold at most CHUNK_BYTES, except a single larger payload, which gets a chunk of its
# own. A rest of a batch of at least MIN_CHUNK_BYTES is stored in exactly-sized chunks; smaller
# appends are copied into the open chunk, whose room is 1/8 of the live payload, clamped to
# [MIN_CHUNK_BYTES, CHUNK_BYTES]: small logs stay small, and a large one wastes at most one chunk.
CHUNK_BYTES = 1 << 20
MIN_CHUNK_BYTES = 16 * 1024

__all__ = ["CHUNK_BYTES", "EntryLog", "LogIndexError", "MIN_CHUNK_BYTES", "U64_MAX"]


class EntryLog:
    """The entries first_index..last_index of one replica's log, plus the term of first_index-1."""

    __slots__ = (
        "_first_index", "_prev_term", "_head", "_terms", "_kinds", "_offsets", "_chunks",
        "_chunk_starts", "_room_end",
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
        # Sealed chunks are bytes (exactly what they hold); the last one may be a bytearray with
        # room up to the logical position _room_end (0 when there is no room to write into).
        self._chunks: list[bytes | bytearray] = []
        self._chunk_starts: list[int] = []
        self._room_end = 0

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
            + sys.getsizeof(self._offsets) + sys.getsizeof(self._chunks)
            + sys.getsizeof(self._chunk_starts) + sum(map(sys.getsizeof, self._chunks))
            + sum(map(sys.getsizeof, self._chunk_starts))
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

    def payload_between(self, lo: int, hi: int) -> int:
        """Total payload bytes of entries lo..hi-1 (same range rule as entries), in O(1):
        the flow-control and uncommitted-size accounting need sizes, not Entry objects."""
        self._check_range("payload_between", lo, hi)
        slot = lo - self._first_index + self._head
        return self._offsets[slot + (hi - lo)] - self._offsets[slot]

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
        terms = self._terms
        kinds = self._kinds
        starts = self._chunk_starts
        if not starts:  # no payload byte is held: every entry in range is empty
            return [
                Entry(terms[slot], lo + slot - first_slot, b"", kinds[slot])
                for slot in range(first_slot, end_slot)
            ]
        out: list[Entry] = []
        index = lo
        slot = first_slot
        while slot < end_slot:
            # The chunk holding this entry's payload, and the run of entries that end inside it
            # (an entry never spans chunks; an empty one may sit on any chunk's boundary).
            k = bisect_right(starts, offsets[slot]) - 1
            stop = end_slot
            if k + 1 < len(starts):
                stop = bisect_right(offsets, starts[k + 1], slot + 1, end_slot + 1) - 1
            base = starts[k]
            with memoryview(self._chunks[k]) as chunk:
                for run_slot in range(slot, stop):
                    data = bytes(chunk[offsets[run_slot] - base:offsets[run_slot + 1] - base])
                    out.append(Entry(terms[run_slot], index, data, kinds[run_slot]))
                    index += 1
            slot = stop
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
        slot = len(self._terms)
        start = self._offsets[-1]
        self._terms.extend(terms)
        self._kinds.extend(kinds)
        self._offsets.extend(islice(accumulate(map(len, payloads), initial=start), 1, None))
        self._store(blob, slot)

    def _store(self, blob: bytes, slot: int) -> None:
        """Place `blob`, the payloads of slots `slot`.. back to back, in the chunks.

        The payloads that fit go into the open chunk's room. Where the next one does not fit,
        the open chunk is sealed and a new chunk starts: a rest of the batch of at least
        MIN_CHUNK_BYTES goes into exactly-sized chunks of up to CHUNK_BYTES (the blob itself when
        it is one such chunk, so a leader's batch is stored without a copy); a smaller rest is
        copied into a new open chunk. log_c follows the same rules (one difference: after a
        truncation its last chunk stays writable, while a sealed `bytes` chunk here does not).
        """
        offsets = self._offsets
        origin = offsets[slot]
        at = origin
        end = origin + len(blob)
        with memoryview(blob) as source:
            while at < end:
                room_end = max(self._room_end, at)
                if end <= room_end:
                    self._write(source[at - origin:], at)
                    return
                # The payloads that fit in the room left; payload `slot` is the first that does
                # not (an entry never spans chunks).
                slot = bisect_right(offsets, room_end, slot) - 1
                if offsets[slot] > at:
                    self._write(source[at - origin:offsets[slot] - origin], at)
                    at = offsets[slot]
                self._seal(at)
                if end - at < MIN_CHUNK_BYTES:
                    self._open_chunk(at, offsets[slot + 1] - at)
                    continue
                stop = bisect_right(offsets, at + CHUNK_BYTES, slot) - 1
                if offsets[stop] == at:
                    stop = slot + 1  # a payload larger than a chunk gets a chunk of its own
                chunk_end = offsets[stop]
                if at == origin and chunk_end == end:
                    self._chunks.append(blob)
                else:
                    self._chunks.append(source[at - origin:chunk_end - origin].tobytes())
                self._chunk_starts.append(at)
                at = chunk_end
                slot = stop

    def _write(self, data: memoryview, at: int) -> None:
        # Same-length slice assignment: a memcpy into the open chunk, which never resizes.
        chunk = self._chunks[-1]
        base = at - self._chunk_starts[-1]
        chunk[base:base + len(data)] = data  # type: ignore[index]

    def _seal(self, at: int) -> None:
        """End the last chunk at logical position `at`, giving back its unused tail, so that only
        the open chunk ever has spare capacity."""
        self._room_end = 0
        chunks = self._chunks
        if chunks:
            used = at - self._chunk_starts[-1]
            if used < len(chunks[-1]):
                with memoryview(chunks[-1]) as view:
                    chunks[-1] = view[:used].tobytes()

    def _open_chunk(self, at: int, size: int) -> None:
        """Start an open chunk at logical position `at` whose first payload has `size` bytes."""
        live = at - self._offsets[self._head]
        capacity = max(size, min(CHUNK_BYTES, max(MIN_CHUNK_BYTES, live >> 3)))
        self._chunks.append(bytearray(capacity))
        self._chunk_starts.append(at)
        self._room_end = at + capacity

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
        # Chunks that start at or after the new end hold only truncated bytes.
        keep = bisect_left(self._chunk_starts, end)
        del self._chunks[keep:]
        del self._chunk_starts[keep:]
        self._reset_room()

    def _reset_room(self) -> None:
        """The last chunk is the open one again if it is still writable (a bytearray)."""
        if self._chunks and type(self._chunks[-1]) is bytearray:
            self._room_end = self._chunk_starts[-1] + len(self._chunks[-1])
        else:
            self._room_end = 0

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
        # Drop every chunk whose bytes all lie before the first live entry's payload; with no
        # live payload byte left, that is every chunk.
        live_start = self._offsets[self._head]
        starts = self._chunk_starts
        if live_start == self._offsets[-1]:
            dead = len(starts)
        else:
            dead = bisect_right(starts, live_start) - 1  # the chunk holding live_start stays
        if dead > 0:
            del self._chunks[:dead]
            del starts[:dead]
            self._reset_room()

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
