# cython: freethreading_compatible = False
"""In-memory Raft log, compiled twin of log_py.py (same names, errors and results).

Layout: three C arrays indexed by slot (term: uint64, kind: uint8, payload start: uint64, plus one
end offset) and one payload arena, all grown with PyMem_Realloc (so tracemalloc sees them) by
12.5 % + a constant, which keeps the metadata at 17 bytes per entry plus at most 1/8 slack.
See log_py.py for the slot/offset scheme and the amortised reclamation of a compacted prefix.
"""

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from cpython.mem cimport PyMem_Free, PyMem_Malloc, PyMem_Realloc
from libc.stdint cimport uint8_t, uint64_t
from libc.string cimport memcpy, memmove

from engine._core.codec_c cimport Entry, make_entry

from engine.errors import LogIndexError

U64_MAX = (1 << 64) - 1
MAX_INDEX = 1 << 63  # exclusive

RECLAIM_MIN_SLOTS = 1024
RECLAIM_MIN_BYTES = 64 * 1024

cdef uint64_t _U64_MAX = 0xFFFFFFFFFFFFFFFFULL
cdef uint64_t _MAX_INDEX = 1ULL << 63
cdef Py_ssize_t _RECLAIM_MIN_SLOTS = RECLAIM_MIN_SLOTS
cdef uint64_t _RECLAIM_MIN_BYTES = RECLAIM_MIN_BYTES

__all__ = ["EntryLog", "LogIndexError", "U64_MAX"]


cdef inline Py_ssize_t _grown(Py_ssize_t needed) noexcept:
    # 12.5 % slack (CPython's list/bytearray policy): amortised O(1) appends, bounded waste.
    return needed + (needed >> 3) + 16


cdef class EntryLog:
    """The entries first_index..last_index of one replica's log, plus the term of first_index-1."""

    def __cinit__(self, *args, **kwargs):
        self._offsets = <uint64_t*>PyMem_Malloc(sizeof(uint64_t))
        if self._offsets == NULL:
            raise MemoryError()
        self._offsets[0] = 0

    def __init__(self, first_index=1, prev_term=0):
        if not 1 <= first_index < MAX_INDEX:
            raise ValueError(f"first_index must be in [1, 2**63), got {first_index}")
        if not 0 <= prev_term <= U64_MAX:
            raise ValueError(f"prev_term must fit in 64 bits, got {prev_term}")
        self._first_index = first_index
        self._prev_term = prev_term

    def __dealloc__(self):
        PyMem_Free(self._terms)
        PyMem_Free(self._kinds)
        PyMem_Free(self._offsets)
        PyMem_Free(self._arena)

    # -- shape ---------------------------------------------------------------------------------

    @property
    def first_index(self):
        return self._first_index

    @property
    def last_index(self):
        """Index of the last entry; first_index - 1 when the log is empty."""
        return self._last_index()

    @property
    def last_term(self):
        """Term of the last entry; the term of first_index - 1 when the log is empty."""
        if self._end == self._head:
            return self._prev_term
        return self._terms[self._end - 1]

    @property
    def payload_bytes(self):
        """Total payload bytes of the entries held."""
        return self._offsets[self._end] - self._offsets[self._head]

    def __len__(self):
        return self._end - self._head

    def memory_bytes(self):
        """Bytes allocated by the log's buffers (capacity, not just the used part)."""
        return (
            self._capacity * (sizeof(uint64_t) + sizeof(uint8_t))
            + (self._capacity + 1) * sizeof(uint64_t) + self._arena_capacity
        )

    cdef inline uint64_t _last_index(self) noexcept:
        return self._first_index + <uint64_t>(self._end - self._head) - 1

    cdef uint64_t _index_arg(self, object index, str what, uint64_t low) except? 0:
        # Python ints outside uint64 are out of range like any other index (same as log_py).
        try:
            return index
        except OverflowError:
            raise LogIndexError(
                f"{what}: index {index} is outside [{low}, {self._last_index()}]"
            ) from None

    # -- reads ---------------------------------------------------------------------------------

    def term_at(self, index):
        """Term of the entry at `index`, valid for first_index-1 .. last_index."""
        cdef uint64_t i = self._index_arg(index, "term_at", self._first_index - 1)
        if i + 1 == self._first_index:
            return self._prev_term  # the entry just before the log (Raft §5.3 prevLogTerm)
        if i < self._first_index or i > self._last_index():
            raise LogIndexError(
                f"term_at: index {index} is outside [{self._first_index - 1}, "
                f"{self._last_index()}]"
            )
        return self._terms[self._head + <Py_ssize_t>(i - self._first_index)]

    def entries(self, lo, hi, max_bytes=U64_MAX):
        """Entries lo..hi-1, cut before the payload total would exceed `max_bytes`.

        At least one entry is returned when lo < hi, whatever its size.
        """
        cdef uint64_t first = self._first_index
        cdef uint64_t last = self._last_index()
        cdef uint64_t c_lo, c_hi, budget, index, start
        try:
            c_lo = lo
            c_hi = hi
        except OverflowError:
            c_lo = 1
            c_hi = 0  # fails the range check below
        if not (first <= c_lo and c_lo <= c_hi and c_hi <= last + 1):
            raise LogIndexError(f"entries: [{lo}, {hi}) is outside the log [{first}, {last}]")
        if max_bytes < 0:
            raise ValueError(f"max_bytes must be >= 0, got {max_bytes}")
        budget = _U64_MAX if max_bytes >= U64_MAX else max_bytes
        cdef list out = []
        if c_lo == c_hi:
            return out
        cdef Py_ssize_t first_slot = self._head + <Py_ssize_t>(c_lo - first)
        cdef Py_ssize_t end_slot = self._head + <Py_ssize_t>(c_hi - first)
        cdef Py_ssize_t slot
        cdef uint64_t* offsets = self._offsets
        cdef uint64_t origin = self._arena_origin
        cdef bytes data
        start = offsets[first_slot]
        index = c_lo
        for slot in range(first_slot, end_slot):
            if slot > first_slot and offsets[slot + 1] - start > budget:
                break
            data = PyBytes_FromStringAndSize(
                self._arena + (offsets[slot] - origin), <Py_ssize_t>(offsets[slot + 1] - offsets[slot])
            )
            out.append(make_entry(self._terms[slot], index, data, self._kinds[slot]))
            index += 1
        return out

    # -- writes --------------------------------------------------------------------------------

    def append(self, entries):
        """Append `entries`; entries[0].index must be last_index + 1 and indexes contiguous.

        Validation happens before any change, so a refused batch leaves the log untouched.
        """
        cdef list items = entries if type(entries) is list else list(entries)
        cdef Py_ssize_t n = len(items)
        if n == 0:
            return
        cdef uint64_t next_index = self._last_index() + 1
        cdef Py_ssize_t k
        cdef Entry entry
        cdef object item
        # Pass 1: contiguity (Raft §5.3: the caller truncated any conflicting suffix first).
        for k in range(n):
            item = items[k]
            if type(item) is Entry:
                if (<Entry>item).index == next_index + <uint64_t>k:
                    continue
            elif item.index == next_index + <uint64_t>k:
                continue
            raise LogIndexError(
                f"append: entry {k} has index {item.index}, expected {next_index + k} "
                f"(log is [{self._first_index}, {next_index - 1}])"
            )
        # Pass 2: field widths and payload sizes (entries of another codec are converted).
        cdef size_t total = 0
        for k in range(n):
            item = items[k]
            if type(item) is not Entry:
                if items is entries:
                    items = list(items)
                item = make_entry(item.term, item.index, item.data, item.kind)
                items[k] = item
            entry = <Entry>item
            if not 0 <= entry.kind <= 255:
                raise OverflowError(f"entry kind {entry.kind} does not fit in 8 bits")
            if entry.data is None:
                raise TypeError("entry data must be bytes, not None")
            total += <size_t>PyBytes_GET_SIZE(entry.data)
        if next_index - 1 + <uint64_t>n >= _MAX_INDEX:
            raise LogIndexError("append: index would exceed 2**63 - 1")
        self._reserve(n, total)
        # Pass 3: copy; nothing below can fail.
        cdef Py_ssize_t slot = self._end
        cdef uint64_t offset = self._offsets[slot]
        cdef uint64_t origin = self._arena_origin
        cdef Py_ssize_t size
        for k in range(n):
            entry = <Entry>items[k]
            size = PyBytes_GET_SIZE(entry.data)
            memcpy(self._arena + (offset - origin), PyBytes_AS_STRING(entry.data), size)
            self._terms[slot] = entry.term
            self._kinds[slot] = <uint8_t>entry.kind
            offset += <uint64_t>size
            slot += 1
            self._offsets[slot] = offset
        self._end = slot

    def append_payloads(self, term, kind, payloads):
        """Leader's fast path: append one entry per payload, all with `term` and `kind`.

        Returns (first_index, last_index) of the new entries (last < first when empty).
        """
        cdef uint64_t first = self._last_index() + 1
        cdef list items = payloads if type(payloads) is list else list(payloads)
        cdef Py_ssize_t n = len(items)
        if n == 0:
            return first, first - 1
        cdef uint64_t c_term = term
        if not 0 <= kind <= 255:
            raise OverflowError(f"entry kind {kind} does not fit in 8 bits")
        cdef uint8_t c_kind = kind
        cdef size_t total = 0
        cdef Py_ssize_t k
        cdef object payload
        for k in range(n):
            payload = items[k]
            if type(payload) is not bytes:
                raise TypeError(f"payload {k} must be bytes, not {type(payload).__name__}")
            total += <size_t>PyBytes_GET_SIZE(payload)
        if first - 1 + <uint64_t>n >= _MAX_INDEX:
            raise LogIndexError("append: index would exceed 2**63 - 1")
        self._reserve(n, total)
        cdef Py_ssize_t slot = self._end
        cdef uint64_t offset = self._offsets[slot]
        cdef uint64_t origin = self._arena_origin
        cdef Py_ssize_t size
        for k in range(n):
            payload = items[k]
            size = PyBytes_GET_SIZE(payload)
            memcpy(self._arena + (offset - origin), PyBytes_AS_STRING(payload), size)
            self._terms[slot] = c_term
            self._kinds[slot] = c_kind
            offset += <uint64_t>size
            slot += 1
            self._offsets[slot] = offset
        self._end = slot
        return first, first + <uint64_t>n - 1

    def truncate_suffix(self, index):
        """Drop every entry with index >= `index` (first_index <= index <= last_index + 1).

        Used when a follower's log conflicts with the leader's (Raft §5.3); committed entries
        are never truncated, which is the caller's invariant.
        """
        cdef uint64_t i = self._index_arg(index, "truncate_suffix", self._first_index)
        if i < self._first_index or i > self._last_index() + 1:
            raise LogIndexError(
                f"truncate_suffix: index {index} is outside [{self._first_index}, "
                f"{self._last_index()}]"
            )
        self._end = self._head + <Py_ssize_t>(i - self._first_index)

    def compact_prefix(self, index):
        """Drop every entry with index < `index` (first_index <= index <= last_index + 1).

        The term of index - 1 is kept as the new prev_term so that term_at(first_index - 1)
        still answers the AppendEntries consistency check (Raft §5.3, §7).
        """
        cdef uint64_t i = self._index_arg(index, "compact_prefix", self._first_index)
        if i < self._first_index or i > self._last_index() + 1:
            raise LogIndexError(
                f"compact_prefix: index {index} is outside [{self._first_index}, "
                f"{self._last_index()}]"
            )
        if i == self._first_index:
            return
        cdef Py_ssize_t slot = self._head + <Py_ssize_t>(i - self._first_index)
        self._prev_term = self._terms[slot - 1]
        self._first_index = i
        self._head = slot
        self._maybe_reclaim()

    # -- memory --------------------------------------------------------------------------------

    cdef int _reserve(self, Py_ssize_t slots, size_t payload_bytes) except -1:
        cdef Py_ssize_t needed = self._end + slots
        cdef Py_ssize_t capacity
        cdef void* grown
        if needed > self._capacity:
            capacity = _grown(needed)
            # Each pointer is replaced as soon as its realloc succeeds; _capacity only once all
            # three did, so a MemoryError leaves a consistent (if partly larger) log.
            grown = PyMem_Realloc(self._terms, capacity * sizeof(uint64_t))
            if grown == NULL:
                raise MemoryError()
            self._terms = <uint64_t*>grown
            grown = PyMem_Realloc(self._kinds, capacity * sizeof(uint8_t))
            if grown == NULL:
                raise MemoryError()
            self._kinds = <uint8_t*>grown
            grown = PyMem_Realloc(self._offsets, (capacity + 1) * sizeof(uint64_t))
            if grown == NULL:
                raise MemoryError()
            self._offsets = <uint64_t*>grown
            self._capacity = capacity
        cdef size_t used = <size_t>(self._offsets[self._end] - self._arena_origin)
        cdef size_t arena_needed = used + payload_bytes
        cdef size_t arena_capacity
        if arena_needed > self._arena_capacity:
            arena_capacity = <size_t>_grown(<Py_ssize_t>arena_needed)
            grown = PyMem_Realloc(self._arena, arena_capacity)
            if grown == NULL:
                raise MemoryError()
            self._arena = <char*>grown
            self._arena_capacity = arena_capacity
        return 0

    cdef void _maybe_reclaim(self) noexcept:
        cdef Py_ssize_t head = self._head
        cdef Py_ssize_t live = self._end - head
        # Amortised: the live part moved is never larger than the dead part freed.
        if head >= (live if live > _RECLAIM_MIN_SLOTS else _RECLAIM_MIN_SLOTS) or (
            live == 0 and head > 0
        ):
            memmove(self._terms, self._terms + head, live * sizeof(uint64_t))
            memmove(self._kinds, self._kinds + head, live * sizeof(uint8_t))
            memmove(self._offsets, self._offsets + head, (live + 1) * sizeof(uint64_t))
            self._head = 0
            self._end = live
        cdef uint64_t live_start = self._offsets[self._head]
        cdef uint64_t dead_bytes = live_start - self._arena_origin
        cdef uint64_t live_bytes = self._offsets[self._end] - live_start
        if dead_bytes >= (live_bytes if live_bytes > _RECLAIM_MIN_BYTES else _RECLAIM_MIN_BYTES) or (
            live_bytes == 0 and dead_bytes > 0
        ):
            memmove(self._arena, self._arena + dead_bytes, <size_t>live_bytes)
            self._arena_origin = live_start
        self._shrink()

    cdef void _shrink(self) noexcept:
        # Give memory back once the buffers are less than half used (as CPython's array does);
        # a failed shrinking realloc keeps the old, larger buffer.
        cdef Py_ssize_t capacity
        cdef size_t arena_capacity
        cdef size_t used
        cdef void* smaller
        if self._head == 0 and self._capacity > 2 * _grown(self._end):
            capacity = _grown(self._end)
            # A buffer whose realloc failed keeps its larger size, so `capacity` stays a valid
            # lower bound for all three.
            smaller = PyMem_Realloc(self._terms, capacity * sizeof(uint64_t))
            if smaller != NULL:
                self._terms = <uint64_t*>smaller
            smaller = PyMem_Realloc(self._kinds, capacity * sizeof(uint8_t))
            if smaller != NULL:
                self._kinds = <uint8_t*>smaller
            smaller = PyMem_Realloc(self._offsets, (capacity + 1) * sizeof(uint64_t))
            if smaller != NULL:
                self._offsets = <uint64_t*>smaller
            self._capacity = capacity
        used = <size_t>(self._offsets[self._end] - self._arena_origin)
        if self._arena_origin == self._offsets[self._head] and (
            self._arena_capacity > 2 * <size_t>_grown(<Py_ssize_t>used)
        ):
            arena_capacity = <size_t>_grown(<Py_ssize_t>used)
            smaller = PyMem_Realloc(self._arena, arena_capacity)
            if smaller != NULL:
                self._arena = <char*>smaller
                self._arena_capacity = arena_capacity

    def __repr__(self):
        return (
            f"EntryLog(first_index={self.first_index}, last_index={self.last_index}, "
            f"last_term={self.last_term}, payload_bytes={self.payload_bytes})"
        )
