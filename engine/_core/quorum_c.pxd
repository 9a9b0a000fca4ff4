# Declarations of the compiled quorum arithmetic (see quorum_c.pyx and its spec, quorum_py.py).
from libc.stdint cimport uint8_t, uint64_t


# Committed index of a majority over values[0:n] (n >= 1); reorders values in place.
cdef uint64_t majority_index(uint64_t* values, Py_ssize_t n) noexcept nogil


cdef class Tally:
    cdef uint64_t* _voters           # sorted, distinct
    cdef uint8_t* _votes             # per voter: _NO_VOTE, _GRANTED or _REJECTED
    cdef Py_ssize_t _count
    cdef readonly Py_ssize_t granted
    cdef readonly Py_ssize_t rejected

    cdef Py_ssize_t _find(self, uint64_t voter) noexcept
    cdef bint _record(self, uint64_t voter, bint granted) noexcept
    cdef int _result(self) noexcept


cdef class JointTally:
    cdef Tally _old
    cdef Tally _new

    cdef Py_ssize_t _union_count(self, uint8_t vote) noexcept
