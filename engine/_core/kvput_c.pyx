# The replicated KV store's PUT hot path, compiled twin of kvput_py (which documents the wire
# format and the contract: the general path's result for a well-formed PUT, None otherwise).

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from cpython.dict cimport PyDict_GetItem, PyDict_SetItem
from cpython.ref cimport PyObject
from libc.stdint cimport uint8_t, uint32_t, uint64_t
from libc.string cimport memcpy

cdef enum:
    VERSION_OVERHEAD_BYTES_C = 64
    _VERSION = 1
    _OP_PUT = 1
    _FLAG_SESSION = 0x01
    _FLAG_WANT_PREVIOUS = 0x04
    _FLAG_PREVIOUS = 0x02
    _FLAG_REVISION = 0x08
    _FLAG_EXISTED = 0x10
    _STATUS_OK = 0
    _RESULT_HEAD = 11   # version, status, flags, u64 revision

VERSION = _VERSION
OP_PUT = _OP_PUT
FLAG_SESSION = _FLAG_SESSION
FLAG_WANT_PREVIOUS = _FLAG_WANT_PREVIOUS
FLAG_PREVIOUS = _FLAG_PREVIOUS
FLAG_REVISION = _FLAG_REVISION
FLAG_EXISTED = _FLAG_EXISTED
STATUS_OK = _STATUS_OK
VERSION_OVERHEAD_BYTES = 64


cdef class Versions:
    """The MVCC side table of a KVStore (kvput_py.Versions documents it)."""

    cdef public dict revisions
    cdef public dict history
    cdef public list queue
    cdef public Py_ssize_t head
    cdef public long long nbytes
    cdef public long long max_bytes
    cdef public object on_full
    cdef public bint keep

    def __init__(self, max_bytes, on_full=None):
        self.revisions = {}
        self.history = {}
        self.queue = []
        self.head = 0
        self.nbytes = 0
        self.max_bytes = max_bytes
        self.on_full = on_full
        self.keep = True

    cpdef push(self, bytes key, object value, object revision, object end_revision):
        """Record the version of `key` that `revision` set (value None: a deletion) as
        superseded at `end_revision` (for a deletion: its own revision)."""
        if not self.keep:
            return
        cdef PyObject* kept = PyDict_GetItem(self.history, key)
        if kept is NULL:
            PyDict_SetItem(self.history, key, (revision, value))
        else:
            PyDict_SetItem(self.history, key, <tuple>kept + (revision, value))
        self.queue.append(end_revision)
        self.queue.append(key)
        self.nbytes += PyBytes_GET_SIZE(key) + VERSION_OVERHEAD_BYTES_C
        if value is not None:
            self.nbytes += PyBytes_GET_SIZE(value)
        if self.nbytes > self.max_bytes and self.on_full is not None:
            self.on_full()

    cpdef object drop_oldest(self, long long target_bytes):
        """Drop the oldest superseded versions until at most `target_bytes` are kept;
        returns the revision that ended the last one dropped (0: none dropped)."""
        cdef list queue = self.queue
        cdef object end = 0
        while self.nbytes > target_bytes and self.head < len(queue):
            end = queue[self.head]
            self.drop_through(end)
        return end

    cpdef drop_through(self, object revision):
        """Drop every version superseded at or below `revision`, oldest first."""
        cdef list queue = self.queue
        cdef dict history = self.history
        cdef Py_ssize_t head = self.head
        cdef Py_ssize_t end = len(queue)
        cdef Py_ssize_t freed = 0
        cdef tuple kept
        cdef bytes key
        cdef object value
        while head < end and queue[head] <= revision:
            key = <bytes>queue[head + 1]
            head += 2
            kept = <tuple>history[key]
            value = kept[1]
            freed += PyBytes_GET_SIZE(key) + VERSION_OVERHEAD_BYTES_C
            if value is not None:
                freed += PyBytes_GET_SIZE(value)
            if len(kept) == 2:
                del history[key]
            else:
                history[key] = kept[2:]
        self.nbytes -= freed
        if head > 1024 and 2 * head > end:
            del queue[:head]
            head = 0
        self.head = head


cdef inline uint32_t _u32(const uint8_t* p) noexcept:
    # Little-endian on any host, as struct "<I".
    return <uint32_t>p[0] | (<uint32_t>p[1] << 8) | (<uint32_t>p[2] << 16) | (<uint32_t>p[3] << 24)


cdef inline uint64_t _u64(const uint8_t* p) noexcept:
    return <uint64_t>_u32(p) | (<uint64_t>_u32(p + 4) << 32)


cdef inline void _put_le(uint8_t* out, uint64_t value, int width) noexcept:
    cdef int i
    for i in range(width):
        out[i] = <uint8_t>((value >> (8 * i)) & 0xFF)


cdef int _locate(bytes command, Py_ssize_t* key_at, Py_ssize_t* key_len,
                 Py_ssize_t* value_at, Py_ssize_t* value_len, int* has_session,
                 uint64_t* client_id, uint64_t* seq, int* want_previous):
    """1 when `command` is a well-formed PUT (fields written), 0 otherwise."""
    cdef Py_ssize_t end = PyBytes_GET_SIZE(command)
    cdef const uint8_t* p = <const uint8_t*>PyBytes_AS_STRING(command)
    cdef Py_ssize_t offset
    cdef uint64_t length
    cdef uint8_t flags
    if end < 3 or p[0] != _VERSION or p[1] != _OP_PUT:
        return 0
    flags = p[2]
    if flags & ~(_FLAG_SESSION | _FLAG_WANT_PREVIOUS):
        return 0
    want_previous[0] = 1 if flags & _FLAG_WANT_PREVIOUS else 0
    if not flags & _FLAG_SESSION:
        offset = 3
        has_session[0] = 0
        client_id[0] = 0
        seq[0] = 0
    elif end >= 19:
        client_id[0] = _u64(p + 3)
        seq[0] = _u64(p + 11)
        if seq[0] == 0:
            return 0
        has_session[0] = 1
        offset = 19
    else:
        return 0
    if offset + 4 > end:
        return 0
    length = _u32(p + offset)
    if <uint64_t>(offset + 4) + length + 4 > <uint64_t>end:
        return 0
    key_at[0] = offset + 4
    key_len[0] = <Py_ssize_t>length
    offset = key_at[0] + key_len[0]
    length = _u32(p + offset)
    if <uint64_t>(offset + 4) + length != <uint64_t>end:
        return 0
    value_at[0] = offset + 4
    value_len[0] = <Py_ssize_t>length
    return 1


def parse_put(command):
    """(key, value, client_id, seq, previous) of a well-formed PUT (client_id None and seq 0
    without a session; previous: the result is to carry the previous value), or None for
    anything else (another op, a malformed PUT, session seq 0)."""
    cdef Py_ssize_t key_at, key_len, value_at, value_len
    cdef int has_session, want_previous
    cdef uint64_t client_id, seq
    if type(command) is not bytes:
        return None
    if not _locate(command, &key_at, &key_len, &value_at, &value_len, &has_session,
                   &client_id, &seq, &want_previous):
        return None
    cdef const char* p = PyBytes_AS_STRING(command)
    key = PyBytes_FromStringAndSize(p + key_at, key_len)
    value = PyBytes_FromStringAndSize(p + value_at, value_len)
    if has_session:
        return key, value, client_id, seq, want_previous != 0
    return key, value, None, 0, want_previous != 0


cdef bytes _put_result(uint64_t revision, object previous, bint want_previous):
    cdef Py_ssize_t size = 0
    cdef uint8_t flags = _FLAG_REVISION
    if previous is not None:
        flags |= _FLAG_EXISTED
        if want_previous:
            if type(previous) is not bytes:   # only bytes are stored; never trust that blindly
                previous = bytes(previous)
            flags |= _FLAG_PREVIOUS
            size = 4 + PyBytes_GET_SIZE(previous)
    result = PyBytes_FromStringAndSize(NULL, _RESULT_HEAD + size)
    cdef uint8_t* out = <uint8_t*>PyBytes_AS_STRING(result)
    out[0] = _VERSION
    out[1] = _STATUS_OK
    out[2] = flags
    _put_le(out + 3, revision, 8)
    if size:
        _put_le(out + _RESULT_HEAD, <uint64_t>(size - 4), 4)
        memcpy(out + _RESULT_HEAD + 4, PyBytes_AS_STRING(previous), <size_t>(size - 4))
    return result


def put_result(uint64_t revision, previous, bint want_previous):
    """The encoded result of a PUT applied at log index `revision` over `previous`."""
    return _put_result(revision, previous, want_previous)


def apply_put(dict data not None, command, uint64_t index, created=None,
              Versions versions=None):
    """Apply a well-formed PUT without a session, at log index `index`, to `data` and return
    its encoded result; None, with `data` untouched, for any other command. `created` is
    called with the key, after the store, when the PUT creates it (not when it overwrites).
    With `versions` the key's revision becomes `index` and an overwritten value is pushed
    there."""
    cdef Py_ssize_t key_at, key_len, value_at, value_len
    cdef int has_session, want_previous
    cdef uint64_t client_id, seq
    if type(command) is not bytes:
        return None
    if not _locate(command, &key_at, &key_len, &value_at, &value_len, &has_session,
                   &client_id, &seq, &want_previous) or has_session:
        return None
    cdef const char* p = PyBytes_AS_STRING(command)
    key = PyBytes_FromStringAndSize(p + key_at, key_len)
    value = PyBytes_FromStringAndSize(p + value_at, value_len)
    cdef PyObject* found = PyDict_GetItem(data, key)   # borrowed; no error for bytes keys
    cdef object previous = None
    if found is not NULL:
        previous = <object>found   # a new reference, held across the store below
    PyDict_SetItem(data, key, value)
    cdef PyObject* replaced
    cdef object replaced_revision
    cdef object revision
    if versions is not None:
        replaced = PyDict_GetItem(versions.revisions, key)
        replaced_revision = 0 if replaced is NULL else <object>replaced
        revision = index
        PyDict_SetItem(versions.revisions, key, revision)
        if found is not NULL and versions.keep:
            versions.push(key, previous, replaced_revision, revision)
    if found is NULL and created is not None:
        created(key)
    return _put_result(index, previous, want_previous)
