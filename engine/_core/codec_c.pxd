# Declarations other Cython modules cimport (log_c builds Entry objects directly).
from libc.stdint cimport uint64_t


cdef class Entry:
    cdef public uint64_t term
    cdef public uint64_t index
    cdef public int kind
    cdef public bytes data


cdef class Message:
    cdef public int type
    cdef public uint64_t src
    cdef public uint64_t dst
    cdef public uint64_t term
    cdef public uint64_t log_term
    cdef public uint64_t index
    cdef public uint64_t commit
    cdef public bint reject
    cdef public uint64_t reject_hint
    cdef public uint64_t reject_term
    cdef public uint64_t seq
    cdef public uint64_t status
    cdef public list entries
    cdef public bytes context
    cdef public uint64_t group


# Build an Entry without Python argument parsing (data must be bytes, not None).
cdef Entry make_entry(uint64_t term, uint64_t index, bytes data, int kind)
