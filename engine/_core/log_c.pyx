# cython: freethreading_compatible = False
"""In-memory Raft log, compiled twin of log_py.py (same names, errors and results).

Layout: three C arrays indexed by slot (term: uint64, kind: uint8, payload start: uint64, plus one
end offset), grown with PyMem_Realloc (so tracemalloc sees them) by 12.5 % + a constant, which
keeps the metadata at 17 bytes per entry plus at most 1/8 slack; and the payload stream in chunks
(see log_c.pxd), placed by the same rules as in log_py.py: at most CHUNK_BYTES each (a larger
payload gets a chunk of its own), an entry never spans two chunks, a sealed chunk is trimmed to
what it holds (PyMem_Realloc down), so only the last chunk has spare capacity. See log_py.py for
the slot/offset scheme and the reclamation of a compacted prefix (whole chunks are freed).
"""

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from cpython.list cimport PyList_New, PyList_SET_ITEM
from cpython.ref cimport Py_INCREF
from cpython.mem cimport PyMem_Free, PyMem_Malloc, PyMem_Realloc
from libc.stdint cimport uint8_t, uint64_t
from libc.string cimport memcpy, memmove

from engine._core.codec_c cimport Entry, make_entry

from engine.errors import LogIndexError

U64_MAX = (1 << 64) - 1
MAX_INDEX = 1 << 63  # exclusive

RECLAIM_MIN_SLOTS = 1024
CHUNK_BYTES = 1 << 20
MIN_CHUNK_BYTES = 16 * 1024

cdef uint64_t _U64_MAX = 0xFFFFFFFFFFFFFFFFULL
cdef uint64_t _MAX_INDEX = 1ULL << 63
cdef Py_ssize_t _RECLAIM_MIN_SLOTS = RECLAIM_MIN_SLOTS
cdef uint64_t _CHUNK_BYTES = CHUNK_BYTES
cdef uint64_t _MIN_CHUNK_BYTES = MIN_CHUNK_BYTES

__all__ = ["CHUNK_BYTES", "EntryLog", "LogIndexError", "MIN_CHUNK_BYTES", "U64_MAX"]


cdef inline Py_ssize_t _grown(Py_ssize_t needed) noexcept:
    # 12.5 % slack (CPython's list/bytearray policy): amortised O(1) appends, bounded waste.
    return needed + (needed >> 3) + 16


cdef inline Py_ssize_t _last_at_most(
    const uint64_t* offsets, Py_ssize_t lo, Py_ssize_t hi, uint64_t value
) noexcept:
    # The last j in [lo, hi] with offsets[j] <= value, given offsets[lo] <= value
    # (bisect_right - 1 on a sorted array).
    cdef Py_ssize_t mid
    while lo < hi:
        mid = hi - ((hi - lo) >> 1)
        if offsets[mid] <= value:
            lo = mid
        else:
            hi = mid - 1
    return lo


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
        self._drop_chunks_from(0)
        PyMem_Free(self._chunks)
        PyMem_Free(self._terms)
        PyMem_Free(self._kinds)
        PyMem_Free(self._offsets)

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
        cdef size_t payload = 0
        cdef Py_ssize_t k
        for k in range(self._chunk_count):
            payload += self._chunks[k].capacity
        return (
            self._capacity * (sizeof(uint64_t) + sizeof(uint8_t))
            + (self._capacity + 1) * sizeof(uint64_t)
            + self._chunk_slots * sizeof(Chunk) + payload
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

    cdef Py_ssize_t _range_slot(self, object lo, object hi, str what, uint64_t* c_lo,
                                uint64_t* c_hi) except -1:
        # [lo, hi) within [first_index, last_index + 1] (same rule and message as log_py's
        # _check_range); writes the bounds as uint64 and returns the slot of lo.
        cdef uint64_t first = self._first_index
        cdef uint64_t last = self._last_index()
        try:
            c_lo[0] = lo
            c_hi[0] = hi
        except OverflowError:
            c_lo[0] = 1
            c_hi[0] = 0  # fails the range check below
        if not (first <= c_lo[0] and c_lo[0] <= c_hi[0] and c_hi[0] <= last + 1):
            raise LogIndexError(f"{what}: [{lo}, {hi}) is outside the log [{first}, {last}]")
        return self._head + <Py_ssize_t>(c_lo[0] - first)

    def payload_between(self, lo, hi):
        """Total payload bytes of entries lo..hi-1 (same range rule as entries), in O(1)."""
        cdef uint64_t c_lo, c_hi
        cdef Py_ssize_t slot = self._range_slot(lo, hi, "payload_between", &c_lo, &c_hi)
        return self._offsets[slot + <Py_ssize_t>(c_hi - c_lo)] - self._offsets[slot]

    def entries(self, lo, hi, max_bytes=U64_MAX):
        """Entries lo..hi-1, cut before the payload total would exceed `max_bytes`.

        At least one entry is returned when lo < hi, whatever its size.
        """
        cdef uint64_t c_lo, c_hi, budget, index, start
        cdef Py_ssize_t first_slot = self._range_slot(lo, hi, "entries", &c_lo, &c_hi)
        if max_bytes < 0:
            raise ValueError(f"max_bytes must be >= 0, got {max_bytes}")
        budget = _U64_MAX if max_bytes >= U64_MAX else max_bytes
        if c_lo == c_hi:
            return []
        cdef Py_ssize_t end_slot = first_slot + <Py_ssize_t>(c_hi - c_lo)
        cdef uint64_t* offsets = self._offsets
        start = offsets[first_slot]
        if budget < offsets[end_slot] - start:
            # First slot whose start lies beyond the budget: every entry before it fits.
            end_slot = max(_last_at_most(offsets, first_slot, end_slot, start + budget),
                           first_slot + 1)
        cdef list out = PyList_New(end_slot - first_slot)
        cdef Py_ssize_t slot, k
        cdef uint64_t at, stop
        # The chunk the previous payload came from: its bytes [chunk_start, chunk_end).
        cdef const char* chunk_data = NULL
        cdef uint64_t chunk_start = 0
        cdef uint64_t chunk_end = 0
        cdef bytes data
        cdef Entry entry
        index = c_lo
        for slot in range(first_slot, end_slot):
            at = offsets[slot]
            stop = offsets[slot + 1]
            if stop == at:
                data = PyBytes_FromStringAndSize(NULL, 0)
            else:
                if stop > chunk_end:
                    # A payload lies in one chunk (never across two): find the next one.
                    k = self._chunk_of(at)
                    chunk_data = self._chunks[k].data
                    chunk_start = self._chunks[k].start
                    chunk_end = (
                        self._chunks[k + 1].start if k + 1 < self._chunk_count
                        else offsets[self._end]
                    )
                data = PyBytes_FromStringAndSize(
                    chunk_data + (at - chunk_start), <Py_ssize_t>(stop - at)
                )
            entry = make_entry(self._terms[slot], index, data, self._kinds[slot])
            Py_INCREF(entry)  # PyList_SET_ITEM steals a reference
            PyList_SET_ITEM(out, slot - first_slot, entry)
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
        # Pass 2: field widths, written into the slots past the end (entries of another codec
        # are converted). Only _end makes them part of the log, so a refusal changes nothing.
        self._reserve(n)
        cdef Py_ssize_t slot = self._end
        cdef uint64_t offset = self._offsets[slot]
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
            self._terms[slot + k] = entry.term
            self._kinds[slot + k] = <uint8_t>entry.kind
            offset += <uint64_t>PyBytes_GET_SIZE(entry.data)
            self._offsets[slot + k + 1] = offset
        if next_index - 1 + <uint64_t>n >= _MAX_INDEX:
            raise LogIndexError("append: index would exceed 2**63 - 1")
        self._store(items, True, slot, n)
        self._end = slot + n

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
        self._reserve(n)
        cdef Py_ssize_t slot = self._end
        cdef uint64_t offset = self._offsets[slot]
        cdef Py_ssize_t k
        cdef object payload
        for k in range(n):
            payload = items[k]
            if type(payload) is not bytes:
                raise TypeError(f"payload {k} must be bytes, not {type(payload).__name__}")
            self._terms[slot + k] = c_term
            self._kinds[slot + k] = c_kind
            offset += <uint64_t>PyBytes_GET_SIZE(payload)
            self._offsets[slot + k + 1] = offset
        if first - 1 + <uint64_t>n >= _MAX_INDEX:
            raise LogIndexError("append: index would exceed 2**63 - 1")
        self._store(items, False, slot, n)
        self._end = slot + n
        return first, first + <uint64_t>n - 1

    cdef int _store(self, list items, bint of_entries, Py_ssize_t slot, Py_ssize_t n) except -1:
        # Copy the payloads of items (Entry objects or bytes) into the chunks, at the positions
        # offsets[slot ..] already give them, by log_py's rules (see its _store): what fits goes
        # into the open chunk's room; where a payload does not fit, the last chunk is sealed and
        # a rest of at least MIN_CHUNK_BYTES goes into exactly-sized chunks of up to CHUNK_BYTES,
        # a smaller one into a new open chunk. On MemoryError the chunks added are freed again.
        cdef uint64_t* offsets = self._offsets
        cdef uint64_t end = offsets[slot + n]
        cdef Py_ssize_t keep = self._chunk_count
        cdef Py_ssize_t k, stop
        cdef uint64_t at, size, capacity
        cdef uint64_t room_end = 0     # logical end of the last chunk's room
        cdef uint64_t chunk_start = 0
        cdef char* chunk_data = NULL
        cdef object payload
        if keep:
            chunk_data = self._chunks[keep - 1].data
            chunk_start = self._chunks[keep - 1].start
            room_end = chunk_start + self._chunks[keep - 1].capacity
        for k in range(slot, slot + n):
            at = offsets[k]
            size = offsets[k + 1] - at
            if size == 0:
                continue
            if at + size > room_end:
                self._seal(at)
                if end - at < _MIN_CHUNK_BYTES:
                    capacity = (at - offsets[self._head]) >> 3
                    capacity = min(_CHUNK_BYTES, max(_MIN_CHUNK_BYTES, capacity))
                    capacity = max(size, capacity)
                else:
                    stop = _last_at_most(offsets, k, slot + n, at + _CHUNK_BYTES)
                    if offsets[stop] == at:
                        stop = k + 1  # a payload larger than a chunk gets a chunk of its own
                    capacity = offsets[stop] - at
                if self._add_chunk(at, <size_t>capacity) < 0:
                    self._drop_chunks_from(keep)
                    raise MemoryError()
                chunk_data = self._chunks[self._chunk_count - 1].data
                chunk_start = at
                room_end = at + capacity
            payload = items[k - slot]
            if of_entries:
                payload = (<Entry>payload).data
            memcpy(chunk_data + (at - chunk_start), PyBytes_AS_STRING(payload), <size_t>size)
        return 0

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
        cdef Py_ssize_t slot = self._head + <Py_ssize_t>(i - self._first_index)
        cdef uint64_t end = self._offsets[slot]
        # Chunks that start at or after the new end hold only truncated bytes.
        cdef Py_ssize_t keep = self._chunk_count
        while keep > 0 and self._chunks[keep - 1].start >= end:
            keep -= 1
        self._drop_chunks_from(keep)
        self._end = slot

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

    cdef int _reserve(self, Py_ssize_t slots) except -1:
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
        return 0

    cdef int _add_chunk(self, uint64_t start, size_t capacity) noexcept:
        # A new last chunk for the logical bytes from `start` on; -1 (no exception set) when out
        # of memory, which leaves the chunks as they were.
        cdef Py_ssize_t slots
        cdef void* grown
        if self._chunk_count == self._chunk_slots:
            slots = _grown(self._chunk_count + 1)
            grown = PyMem_Realloc(self._chunks, slots * sizeof(Chunk))
            if grown == NULL:
                return -1
            self._chunks = <Chunk*>grown
            self._chunk_slots = slots
        cdef char* data = <char*>PyMem_Malloc(capacity)
        if data == NULL:
            return -1
        self._chunks[self._chunk_count].data = data
        self._chunks[self._chunk_count].start = start
        self._chunks[self._chunk_count].capacity = capacity
        self._chunk_count += 1
        return 0

    cdef void _seal(self, uint64_t at) noexcept:
        # End the last chunk at logical position `at` and give back its unused tail, so that
        # only the open chunk ever has spare capacity. A failed shrink keeps the larger buffer.
        if self._chunk_count == 0:
            return
        cdef Chunk* last = &self._chunks[self._chunk_count - 1]
        cdef size_t used = <size_t>(at - last.start)
        cdef void* smaller
        if used < last.capacity:
            smaller = PyMem_Realloc(last.data, used)
            if smaller != NULL:
                last.data = <char*>smaller
                last.capacity = used

    cdef void _drop_chunks_from(self, Py_ssize_t keep) noexcept:
        cdef Py_ssize_t k
        for k in range(keep, self._chunk_count):
            PyMem_Free(self._chunks[k].data)
        self._chunk_count = keep

    cdef Py_ssize_t _chunk_of(self, uint64_t position) noexcept:
        # The last chunk starting at or before `position` (-1 if none), like bisect_right - 1.
        cdef Py_ssize_t lo = 0
        cdef Py_ssize_t hi = self._chunk_count
        cdef Py_ssize_t mid
        while lo < hi:
            mid = (lo + hi) >> 1
            if self._chunks[mid].start <= position:
                lo = mid + 1
            else:
                hi = mid
        return lo - 1

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
        # Free every chunk whose bytes all lie before the first live entry's payload; with no
        # live payload byte left, that is every chunk.
        cdef uint64_t live_start = self._offsets[self._head]
        cdef Py_ssize_t dead
        if live_start == self._offsets[self._end]:
            dead = self._chunk_count
        else:
            dead = self._chunk_of(live_start)  # the chunk holding live_start stays
        cdef Py_ssize_t k
        if dead > 0:
            for k in range(dead):
                PyMem_Free(self._chunks[k].data)
            memmove(self._chunks, self._chunks + dead, (self._chunk_count - dead) * sizeof(Chunk))
            self._chunk_count -= dead
        self._shrink()

    cdef void _shrink(self) noexcept:
        # Give memory back once the slot arrays are less than half used (as CPython's array
        # does); a failed shrinking realloc keeps the old, larger buffer.
        cdef Py_ssize_t capacity
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

    def __repr__(self):
        return (
            f"EntryLog(first_index={self.first_index}, last_index={self.last_index}, "
            f"last_term={self.last_term}, payload_bytes={self.payload_bytes})"
        )
