# Declarations of the compiled in-memory log (see log_c.pyx and its spec, log_py.py).
from libc.stdint cimport uint8_t, uint64_t


cdef class EntryLog:
    # Entries first_index .. first_index + (_end - _head) - 1 live in slots _head .. _end - 1.
    cdef uint64_t _first_index
    cdef uint64_t _prev_term
    cdef Py_ssize_t _head
    cdef Py_ssize_t _end
    cdef Py_ssize_t _capacity        # slots allocated in _terms/_kinds; _offsets has one more
    cdef uint64_t* _terms
    cdef uint8_t* _kinds
    cdef uint64_t* _offsets          # logical start of each slot's payload, plus the end
    cdef char* _arena                # payload stream from logical position _arena_origin on
    cdef uint64_t _arena_origin
    cdef size_t _arena_capacity

    cdef inline uint64_t _last_index(self) noexcept
    cdef uint64_t _index_arg(self, object index, str what, uint64_t low) except? 0
    cdef int _reserve(self, Py_ssize_t slots, size_t payload_bytes) except -1
    cdef void _shrink(self) noexcept
    cdef void _maybe_reclaim(self) noexcept
