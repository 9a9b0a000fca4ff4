# Declarations of the compiled in-memory log (see log_c.pyx and its spec, log_py.py).
from libc.stdint cimport uint8_t, uint64_t


# One payload chunk: the logical bytes [start, next chunk's start) (the last chunk: up to the end
# of the stream) at data[0..], in a buffer of `capacity` bytes. Only the last chunk has room.
ctypedef struct Chunk:
    char* data
    uint64_t start
    size_t capacity


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
    cdef Chunk* _chunks              # the payload stream, in order of logical position
    cdef Py_ssize_t _chunk_count
    cdef Py_ssize_t _chunk_slots     # Chunk entries allocated in _chunks

    cdef inline uint64_t _last_index(self) noexcept
    cdef uint64_t _index_arg(self, object index, str what, uint64_t low) except? 0
    cdef Py_ssize_t _range_slot(self, object lo, object hi, str what, uint64_t* c_lo,
                                uint64_t* c_hi) except -1
    cdef int _reserve(self, Py_ssize_t slots) except -1
    cdef int _store(self, list items, bint of_entries, Py_ssize_t slot, Py_ssize_t n) except -1
    cdef int _add_chunk(self, uint64_t start, size_t capacity) noexcept
    cdef void _seal(self, uint64_t at) noexcept
    cdef void _drop_chunks_from(self, Py_ssize_t keep) noexcept
    cdef Py_ssize_t _chunk_of(self, uint64_t position) noexcept
    cdef void _shrink(self) noexcept
    cdef void _maybe_reclaim(self) noexcept
