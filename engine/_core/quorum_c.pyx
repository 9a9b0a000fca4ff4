# cython: freethreading_compatible = False
"""Quorum arithmetic, compiled twin of quorum_py.py (same names, errors and results).

committed_index copies the match indexes into an on-stack array (heap only above
_STACK_VOTERS voters, like etcd's `[7]uint64`) and selects the majority position in place:
a branch-free sorting network up to 7 voters, insertion sort up to 32, quickselect above.
batched_committed_index does the same per row of a (groups, voters) array with the GIL released.
"""

from cpython.mem cimport PyMem_Free, PyMem_Malloc
from libc.stdint cimport uint8_t, uint64_t

import numpy as np

# One VoteResult class for both implementations, so results compare identical across them.
from engine._core.quorum_py import VoteResult

U64_MAX = (1 << 64) - 1

__all__ = [
    "U64_MAX", "VoteResult", "Tally", "JointTally", "committed_index",
    "joint_committed_index", "batched_committed_index",
]

cdef enum:
    _STACK_VOTERS = 32      # insertion sort up to here, quickselect above

cdef uint8_t _NO_VOTE = 0
cdef uint8_t _GRANTED = 1
cdef uint8_t _REJECTED = 2

cdef tuple _RESULTS = (VoteResult.PENDING, VoteResult.WON, VoteResult.LOST)
cdef int _PENDING = 0
cdef int _WON = 1
cdef int _LOST = 2


# -- selection ---------------------------------------------------------------------------------

cdef inline void _insertion_sort(uint64_t* values, Py_ssize_t n) noexcept nogil:
    cdef Py_ssize_t i, j
    cdef uint64_t value
    for i in range(1, n):
        value = values[i]
        j = i - 1
        while j >= 0 and values[j] > value:
            values[j + 1] = values[j]
            j -= 1
        values[j + 1] = value


cdef uint64_t _select(uint64_t* values, Py_ssize_t n, Py_ssize_t k) noexcept nogil:
    """The k-th smallest (0-based) of values[0:n]: Hoare's quickselect, median-of-three pivot."""
    cdef Py_ssize_t lo = 0, hi = n - 1, i, j, mid
    cdef uint64_t pivot, tmp
    while hi - lo > 16:
        mid = lo + (hi - lo) // 2
        # Median of three into values[mid].
        if values[mid] < values[lo]:
            tmp = values[mid]; values[mid] = values[lo]; values[lo] = tmp
        if values[hi] < values[lo]:
            tmp = values[hi]; values[hi] = values[lo]; values[lo] = tmp
        if values[hi] < values[mid]:
            tmp = values[hi]; values[hi] = values[mid]; values[mid] = tmp
        pivot = values[mid]
        i = lo
        j = hi
        while i <= j:
            while values[i] < pivot:
                i += 1
            while values[j] > pivot:
                j -= 1
            if i <= j:
                tmp = values[i]; values[i] = values[j]; values[j] = tmp
                i += 1
                j -= 1
        # Now values[lo..j] <= pivot <= values[i..hi], and values[j+1..i-1] == pivot.
        if k <= j:
            hi = j
        elif k >= i:
            lo = i
        else:
            return values[k]
    _insertion_sort(values + lo, hi - lo + 1)
    return values[k]


cdef inline void _cswap(uint64_t* v, Py_ssize_t i, Py_ssize_t j) noexcept nogil:
    # Branch-free compare-exchange (compiles to cmov): random match indexes would mispredict
    # most branches of an insertion sort, which costs more than the comparisons themselves.
    cdef uint64_t a = v[i]
    cdef uint64_t b = v[j]
    v[i] = a if a < b else b
    v[j] = b if a < b else a


cdef inline void _sorting_network(uint64_t* v, Py_ssize_t n) noexcept nogil:
    """Sort v[0:n] for 3 <= n <= 7 with optimal-size networks (Knuth TAOCP 5.3.4)."""
    if n == 3:
        _cswap(v, 0, 1); _cswap(v, 1, 2); _cswap(v, 0, 1)
    elif n == 4:
        _cswap(v, 0, 1); _cswap(v, 2, 3); _cswap(v, 0, 2); _cswap(v, 1, 3); _cswap(v, 1, 2)
    elif n == 5:
        _cswap(v, 0, 1); _cswap(v, 3, 4); _cswap(v, 2, 4); _cswap(v, 2, 3); _cswap(v, 0, 3)
        _cswap(v, 0, 2); _cswap(v, 1, 4); _cswap(v, 1, 3); _cswap(v, 1, 2)
    elif n == 6:
        _cswap(v, 1, 2); _cswap(v, 4, 5); _cswap(v, 0, 2); _cswap(v, 3, 5); _cswap(v, 0, 1)
        _cswap(v, 3, 4); _cswap(v, 2, 5); _cswap(v, 0, 3); _cswap(v, 1, 4); _cswap(v, 2, 4)
        _cswap(v, 1, 3); _cswap(v, 2, 3)
    else:
        _cswap(v, 1, 2); _cswap(v, 3, 4); _cswap(v, 5, 6); _cswap(v, 0, 2); _cswap(v, 3, 5)
        _cswap(v, 4, 6); _cswap(v, 0, 1); _cswap(v, 4, 5); _cswap(v, 2, 6); _cswap(v, 0, 4)
        _cswap(v, 1, 5); _cswap(v, 0, 3); _cswap(v, 2, 5); _cswap(v, 1, 3); _cswap(v, 2, 4)
        _cswap(v, 2, 3)


cdef uint64_t majority_index(uint64_t* values, Py_ssize_t n) noexcept nogil:
    # Ascending order: a majority (n//2 + 1 voters) has index >= the value at n - (n//2 + 1).
    cdef Py_ssize_t position = n - (n // 2 + 1)
    if n <= 2:
        return values[0] if n == 1 or values[0] < values[1] else values[1]
    if n <= 7:
        _sorting_network(values, n)
    elif n <= _STACK_VOTERS:
        _insertion_sort(values, n)
    else:
        return _select(values, n, position)
    return values[position]


# -- commit index ------------------------------------------------------------------------------

def committed_index(match):
    """Largest index acknowledged by a majority of `match`; U64_MAX for an empty config."""
    cdef Py_ssize_t n = len(match)
    if n == 0:
        return U64_MAX
    cdef list items = match if type(match) is list else list(match)
    cdef uint64_t stack[_STACK_VOTERS]
    cdef uint64_t* values = stack
    cdef Py_ssize_t k
    if n > _STACK_VOTERS:
        values = <uint64_t*>PyMem_Malloc(n * sizeof(uint64_t))
        if values == NULL:
            raise MemoryError()
    try:
        for k in range(n):
            values[k] = items[k]   # OverflowError outside uint64, as in quorum_py
        return majority_index(values, n)
    finally:
        if values != stack:
            PyMem_Free(values)


def joint_committed_index(match_old, match_new):
    """Committed index of C_old,new: a majority of each half must have it (thesis §4.3)."""
    return min(committed_index(match_old), committed_index(match_new))


def batched_committed_index(match):
    """committed_index of every row of a (groups, voters) uint64 array, as a (groups,) array."""
    if not isinstance(match, np.ndarray) or match.dtype != np.uint64 or match.ndim != 2:
        raise TypeError("match must be a 2-D numpy array of dtype uint64 (groups x voters)")
    match = np.ascontiguousarray(match)
    cdef Py_ssize_t groups = match.shape[0]
    cdef Py_ssize_t voters = match.shape[1]
    if voters == 0:
        return np.full(groups, U64_MAX, dtype=np.uint64)
    out = np.empty(groups, dtype=np.uint64)
    if groups == 0:
        return out
    cdef const uint64_t[:, ::1] rows = match
    cdef uint64_t[::1] result = out
    cdef uint64_t stack[_STACK_VOTERS]
    cdef uint64_t* scratch = stack
    cdef Py_ssize_t group, voter
    cdef const uint64_t* row = &rows[0, 0]
    if voters > _STACK_VOTERS:
        scratch = <uint64_t*>PyMem_Malloc(<size_t>voters * sizeof(uint64_t))
        if scratch == NULL:
            raise MemoryError()
    try:
        with nogil:
            for group in range(groups):
                for voter in range(voters):
                    scratch[voter] = row[voter]
                result[group] = majority_index(scratch, voters)
                row += voters
    finally:
        if scratch != stack:
            PyMem_Free(scratch)
    return out


# -- vote tallies ------------------------------------------------------------------------------

cdef class Tally:
    """Votes of one election (or pre-vote) over a fixed voter set; one vote per voter counts."""

    def __cinit__(self, voters):
        cdef list ids = sorted(set(voters))
        cdef Py_ssize_t n = len(ids)
        cdef Py_ssize_t k
        self._voters = <uint64_t*>PyMem_Malloc(max(n, 1) * sizeof(uint64_t))
        self._votes = <uint8_t*>PyMem_Malloc(max(n, 1) * sizeof(uint8_t))
        if self._voters == NULL or self._votes == NULL:
            raise MemoryError()
        for k in range(n):
            self._voters[k] = ids[k]   # OverflowError outside uint64, as in quorum_py
            self._votes[k] = _NO_VOTE
        self._count = n

    def __dealloc__(self):
        PyMem_Free(self._voters)
        PyMem_Free(self._votes)

    @property
    def voters(self):
        return frozenset([self._voters[k] for k in range(self._count)])

    cdef Py_ssize_t _find(self, uint64_t voter) noexcept:
        # Binary search over the sorted ids; -1 for a non-voter.
        cdef Py_ssize_t lo = 0, hi = self._count, mid
        while lo < hi:
            mid = (lo + hi) >> 1
            if self._voters[mid] < voter:
                lo = mid + 1
            else:
                hi = mid
        if lo < self._count and self._voters[lo] == voter:
            return lo
        return -1

    cdef bint _record(self, uint64_t voter, bint granted) noexcept:
        cdef Py_ssize_t slot = self._find(voter)
        if slot < 0 or self._votes[slot] != _NO_VOTE:
            return False
        # The first answer of a voter is the one that counts (etcd's RecordVote).
        if granted:
            self._votes[slot] = _GRANTED
            self.granted += 1
        else:
            self._votes[slot] = _REJECTED
            self.rejected += 1
        return True

    cdef int _result(self) noexcept:
        cdef Py_ssize_t quorum
        if self._count == 0:
            return _WON  # empty config: see quorum_py's module docstring
        quorum = self._count // 2 + 1
        if self.granted >= quorum:
            return _WON
        if self._count - self.rejected < quorum:
            return _LOST
        return _PENDING

    def record(self, voter, granted):
        """Count `voter`'s vote; False (and nothing counted) for a non-voter or a repeat."""
        cdef uint64_t c_voter
        try:
            c_voter = voter
        except OverflowError:
            return False  # cannot be a voter id
        return self._record(c_voter, bool(granted))

    def result(self):
        """WON with a majority of grants, LOST once a majority can no longer be reached."""
        return _RESULTS[self._result()]


cdef class JointTally:
    """Votes under C_old,new: wins only if both halves win, loses if either loses (§4.3)."""

    def __cinit__(self, old_voters, new_voters):
        self._old = Tally(old_voters)
        self._new = Tally(new_voters)

    @property
    def voters(self):
        return self._old.voters | self._new.voters

    @property
    def granted(self):
        """Distinct voters (of either half) that granted."""
        return self._union_count(_GRANTED)

    @property
    def rejected(self):
        """Distinct voters (of either half) that rejected."""
        return self._union_count(_REJECTED)

    cdef Py_ssize_t _union_count(self, uint8_t vote) noexcept:
        # A voter of both halves got the same first vote in both (record feeds both halves).
        cdef Py_ssize_t count = 0, k
        for k in range(self._old._count):
            if self._old._votes[k] == vote:
                count += 1
        for k in range(self._new._count):
            if self._new._votes[k] == vote and self._old._find(self._new._voters[k]) < 0:
                count += 1
        return count

    def record(self, voter, granted):
        """Count the vote in each half `voter` belongs to; False if it counted in none."""
        cdef uint64_t c_voter
        try:
            c_voter = voter
        except OverflowError:
            return False
        cdef bint flag = bool(granted)
        cdef bint in_old = self._old._record(c_voter, flag)
        cdef bint in_new = self._new._record(c_voter, flag)
        return in_old or in_new

    def result(self):
        cdef int old = self._old._result()
        cdef int new = self._new._result()
        if old == _LOST or new == _LOST:
            return VoteResult.LOST
        if old == _WON and new == _WON:
            return VoteResult.WON
        return VoteResult.PENDING
