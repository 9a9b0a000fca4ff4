# cython: freethreading_compatible = False
"""Wire format of engine, compiled twin of codec_py.py (same names, errors and bytes)."""

from libc.stdint cimport uint64_t

from engine._core import codec_py as _py

_FIELD_NAMES = (
    "type", "src", "dst", "term", "log_term", "index", "commit", "reject",
    "reject_hint", "reject_term", "seq", "status", "entries", "context",
)


cdef class Entry:
    """One log entry / accepted slot (see codec_py.Entry)."""

    def __init__(self, uint64_t term=0, uint64_t index=0, bytes data=b"", int kind=0):
        self.term = term
        self.index = index
        self.data = data
        self.kind = kind

    def __eq__(self, other):
        if not isinstance(other, _py._ENTRY_TYPES):
            return NotImplemented
        return (
            self.term == other.term and self.index == other.index
            and self.kind == other.kind and self.data == other.data
        )

    __hash__ = None

    def __repr__(self):
        return f"Entry(term={self.term}, index={self.index}, data={self.data!r}, kind={self.kind})"


cdef Entry make_entry(uint64_t term, uint64_t index, bytes data, int kind):
    """Build an Entry without going through Python argument parsing."""
    cdef Entry entry = Entry.__new__(Entry)
    entry.term = term
    entry.index = index
    entry.data = data
    entry.kind = kind
    return entry


cdef class Message:
    """One protocol message (see codec_py.Message and engine.messages)."""

    def __init__(
        self, int type, uint64_t src=0, uint64_t dst=0, uint64_t term=0, uint64_t log_term=0,
        uint64_t index=0, uint64_t commit=0, reject=False, uint64_t reject_hint=0,
        uint64_t reject_term=0, uint64_t seq=0, uint64_t status=0, list entries=None,
        bytes context=b"",
    ):
        self.type = type
        self.src = src
        self.dst = dst
        self.term = term
        self.log_term = log_term
        self.index = index
        self.commit = commit
        self.reject = bool(reject)
        self.reject_hint = reject_hint
        self.reject_term = reject_term
        self.seq = seq
        self.status = status
        self.entries = [] if entries is None else entries
        self.context = context

    def __eq__(self, other):
        if not isinstance(other, _py._MESSAGE_TYPES):
            return NotImplemented
        for name in _FIELD_NAMES:
            if getattr(self, name) != getattr(other, name):
                return False
        return True

    __hash__ = None

    def __repr__(self):
        parts = [f"type={self.type}"]
        for name in _FIELD_NAMES[1:]:
            value = getattr(self, name)
            if value:
                parts.append(f"{name}={value!r}")
        return "Message(" + ", ".join(parts) + ")"


# Cross-implementation equality (see codec_py._ENTRY_TYPES).
_py._ENTRY_TYPES = (_py.Entry, Entry)
_py._MESSAGE_TYPES = (_py.Message, Message)
