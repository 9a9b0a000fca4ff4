# cython: freethreading_compatible = False
"""Wire format of engine, compiled twin of codec_py.py (same names, errors and bytes).

The frame format is specified in codec_py's module docstring; this module follows it byte for
byte. Encode computes the exact frame size first, then writes into one preallocated bytes
object through a pointer with explicit little-endian stores (never a host-endian struct
memcpy). Decode checks header and tag, then reads through a pointer, checking every length
against the bytes left before reading it, and builds Message/Entry via __new__ with direct
attribute stores. Python is called once per frame (the AES-GCM tag: one dict lookup and one
`cryptography` call), once per message/entry object and once per bytes payload, never per
field. Authentication, its key derivation and the nonce-uniqueness argument are specified in
codec_py's docstring ("Authentication"), the optional body encryption in its "Payload
encryption".
"""

cimport cython
from cpython.buffer cimport PyBUF_READ
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from cpython.mem cimport PyMem_Free, PyMem_Malloc
from cpython.memoryview cimport PyMemoryView_FromMemory
from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t
from libc.string cimport memcpy, memset

import hashlib
from collections import OrderedDict

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from engine._core import codec_py as _py
from engine.wire import KNOWN_ENTRY_KINDS, KNOWN_MESSAGE_TYPES
from engine.errors import (
    ConfigError,
    DecodeError,
    WireVersionError,
    WrongClusterError,
    WrongReceiverError,
)

# Public constants: the same objects as the spec module's.
WIRE_VERSION = _py.WIRE_VERSION
FRAME_MESSAGES = _py.FRAME_MESSAGES
FRAME_FRAGMENT = _py.FRAME_FRAGMENT
FRAME_ENCRYPTED = _py.FRAME_ENCRYPTED
HEADER_BYTES = _py.HEADER_BYTES
TAG_BYTES = _py.TAG_BYTES
MESSAGE_COUNT_BYTES = _py.MESSAGE_COUNT_BYTES
FRAGMENT_HEADER_BYTES = _py.FRAGMENT_HEADER_BYTES
FRAME_OVERHEAD = _py.FRAME_OVERHEAD
FRAGMENT_OVERHEAD = _py.FRAGMENT_OVERHEAD
MESSAGE_FIXED_BYTES = _py.MESSAGE_FIXED_BYTES
ENTRY_FIXED_BYTES = _py.ENTRY_FIXED_BYTES
U64_FIELDS = _py.U64_FIELDS
FLAG_REJECT = _py.FLAG_REJECT
FLAG_GROUP = _py.FLAG_GROUP
MAX_CACHED_SUBKEYS = _py.MAX_CACHED_SUBKEYS

cdef enum:
    C_VERSION = 4
    C_KIND_MESSAGES = 1
    C_KIND_FRAGMENT = 2
    C_KIND_ENCRYPTED = 0x80
    C_HEADER = 42
    C_TAG = 16
    C_COUNT = 4
    C_FRAGMENT_HEAD = 20
    C_MESSAGE_FIXED = 12
    C_ENTRY_FIXED = 21
    C_FIELDS = 10
    C_FLAG_REJECT = 1
    C_FLAG_GROUP = 2
    C_PRESENCE_MASK = 0x3FF
    C_IDENTITY_AT = 2           # cluster_id, sender_id, epoch: the KDF input
    C_SENDER_EPOCH_AT = 10      # sender_id, epoch: the subkey cache key
    C_COUNTER_AT = 26           # counter: the nonce's first 8 bytes
    C_RECEIVER_AT = 34          # receiver_id
    C_NONCE = 12

# The spec's constants must match the C ones, or the two implementations would diverge.
if (
    WIRE_VERSION != C_VERSION or HEADER_BYTES != C_HEADER or TAG_BYTES != C_TAG
    or FRAGMENT_HEADER_BYTES != C_FRAGMENT_HEAD or MESSAGE_FIXED_BYTES != C_MESSAGE_FIXED
    or ENTRY_FIXED_BYTES != C_ENTRY_FIXED or len(U64_FIELDS) != C_FIELDS
    or _py.IDENTITY_AT != C_IDENTITY_AT or _py.SENDER_EPOCH_AT != C_SENDER_EPOCH_AT
    or _py.COUNTER_AT != C_COUNTER_AT or _py.RECEIVER_AT != C_RECEIVER_AT
    or _py.FLAG_REJECT != C_FLAG_REJECT or _py.FLAG_GROUP != C_FLAG_GROUP
):
    raise ImportError("engine._core.codec_c is out of date with codec_py; rebuild it")

_FIELD_NAMES = (
    "type", "src", "dst", "term", "log_term", "index", "commit", "reject",
    "reject_hint", "reject_term", "seq", "status", "entries", "context", "group",
)


# ---------------------------------------------------------------- little-endian loads/stores

cdef inline uint16_t load_u16(const uint8_t* p) noexcept nogil:
    return <uint16_t>(p[0] | (<uint16_t>p[1] << 8))


cdef inline uint32_t load_u32(const uint8_t* p) noexcept nogil:
    return (<uint32_t>p[0] | (<uint32_t>p[1] << 8) | (<uint32_t>p[2] << 16)
            | (<uint32_t>p[3] << 24))


cdef inline uint64_t load_u64(const uint8_t* p) noexcept nogil:
    return (<uint64_t>load_u32(p)) | ((<uint64_t>load_u32(p + 4)) << 32)


cdef inline void store_u16(uint8_t* p, uint16_t v) noexcept nogil:
    p[0] = <uint8_t>v
    p[1] = <uint8_t>(v >> 8)


cdef inline void store_u32(uint8_t* p, uint32_t v) noexcept nogil:
    p[0] = <uint8_t>v
    p[1] = <uint8_t>(v >> 8)
    p[2] = <uint8_t>(v >> 16)
    p[3] = <uint8_t>(v >> 24)


cdef inline void store_u64(uint8_t* p, uint64_t v) noexcept nogil:
    store_u32(p, <uint32_t>v)
    store_u32(p + 4, <uint32_t>(v >> 32))


cdef inline bytes nonce_of(const uint8_t* header):
    """The 96-bit GCM nonce of a frame: counter (u64) || kind (u32) (codec_py._nonce)."""
    cdef bytes nonce = PyBytes_FromStringAndSize(NULL, C_NONCE)
    cdef uint8_t* n = <uint8_t*>PyBytes_AS_STRING(nonce)
    memcpy(n, header + C_COUNTER_AT, 8)
    n[8] = header[1]
    n[9] = 0
    n[10] = 0
    n[11] = 0
    return nonce


# ---------------------------------------------------------------- records

@cython.freelist(1024)
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


@cython.freelist(256)
cdef class Message:
    """One protocol message (see codec_py.Message and engine.messages)."""

    def __init__(
        self, int type, uint64_t src=0, uint64_t dst=0, uint64_t term=0, uint64_t log_term=0,
        uint64_t index=0, uint64_t commit=0, reject=False, uint64_t reject_hint=0,
        uint64_t reject_term=0, uint64_t seq=0, uint64_t status=0, list entries=None,
        bytes context=b"", *, uint64_t group=0,
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
        self.group = group

    def __eq__(self, other):
        cdef Message that
        if type(other) is Message:
            that = <Message>other
            return (
                self.type == that.type and self.src == that.src and self.dst == that.dst
                and self.term == that.term and self.log_term == that.log_term
                and self.index == that.index and self.commit == that.commit
                and self.reject == that.reject and self.reject_hint == that.reject_hint
                and self.reject_term == that.reject_term and self.seq == that.seq
                and self.status == that.status and self.group == that.group
                and self.context == that.context and self.entries == that.entries
            )
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


cdef class Frame:
    """A decoded frame (see codec_py.Frame)."""

    cdef public int kind
    cdef public uint64_t sender_id
    cdef public uint64_t epoch
    cdef public uint64_t counter
    cdef public list messages
    cdef public uint64_t fragment_id
    cdef public uint32_t part
    cdef public uint32_t parts
    cdef public bytes chunk
    cdef public uint64_t receiver_id
    cdef public uint64_t cluster_id

    def __init__(
        self, int kind, uint64_t sender_id, uint64_t epoch, uint64_t counter,
        list messages=None, uint64_t fragment_id=0, uint32_t part=0, uint32_t parts=0,
        bytes chunk=b"", uint64_t receiver_id=0, uint64_t cluster_id=0,
    ):
        self.kind = kind
        self.sender_id = sender_id
        self.epoch = epoch
        self.counter = counter
        self.messages = [] if messages is None else messages
        self.fragment_id = fragment_id
        self.part = part
        self.parts = parts
        self.chunk = chunk
        self.receiver_id = receiver_id
        self.cluster_id = cluster_id

    def __repr__(self):
        if self.kind == C_KIND_FRAGMENT:
            body = (
                f"fragment_id={self.fragment_id}, part={self.part}, parts={self.parts}, "
                f"chunk=<{len(self.chunk)} bytes>"
            )
        else:
            body = f"messages=<{len(self.messages)}>"
        return (
            f"Frame(kind={self.kind}, sender_id={self.sender_id}, epoch={self.epoch}, "
            f"counter={self.counter}, {body})"
        )


cdef inline bint is_plain_message(object obj):
    """True if obj is a codec_c.Message whose entries are all codec_c.Entry (the fast path)."""
    cdef Message message
    if type(obj) is not Message:
        return False
    message = <Message>obj
    if message.entries is None:
        return True  # rejected with TypeError where the size is computed
    for entry in message.entries:
        if type(entry) is not Entry:
            return False
    return True


cdef Message as_plain_message(object obj):
    """A codec_c copy of a foreign message (codec_py objects, or codec_c with foreign entries).
    Construction raises OverflowError / TypeError for values no field can hold."""
    entries = [
        entry if type(entry) is Entry else Entry(entry.term, entry.index, entry.data, entry.kind)
        for entry in obj.entries
    ]
    return Message(
        obj.type, obj.src, obj.dst, obj.term, obj.log_term, obj.index, obj.commit, obj.reject,
        obj.reject_hint, obj.reject_term, obj.seq, obj.status, entries, obj.context,
        group=obj.group,
    )


cdef inline void load_fields(Message message, uint64_t* fields) noexcept:
    # Order is U64_FIELDS (the presence-bitmap order of the spec).
    fields[0] = message.src
    fields[1] = message.dst
    fields[2] = message.term
    fields[3] = message.log_term
    fields[4] = message.index
    fields[5] = message.commit
    fields[6] = message.reject_hint
    fields[7] = message.reject_term
    fields[8] = message.seq
    fields[9] = message.status


cdef inline void store_fields(Message message, const uint64_t* fields) noexcept:
    message.src = fields[0]
    message.dst = fields[1]
    message.term = fields[2]
    message.log_term = fields[3]
    message.index = fields[4]
    message.commit = fields[5]
    message.reject_hint = fields[6]
    message.reject_term = fields[7]
    message.seq = fields[8]
    message.status = fields[9]


cdef inline Py_ssize_t present_bytes(Message message) noexcept:
    cdef uint64_t fields[C_FIELDS]
    cdef Py_ssize_t size = 0
    cdef int bit
    load_fields(message, fields)
    for bit in range(C_FIELDS):
        if fields[bit]:
            size += 8
    return size


cdef inline Py_ssize_t group_bytes(uint64_t group) noexcept nogil:
    """Bytes the group adds to its message: 0 for group 0, else its minimal varint."""
    cdef Py_ssize_t size = 0
    while group:
        size += 1
        group >>= 7
    return size


cdef Py_ssize_t plain_encoded_size(Message message) except -1:
    cdef Py_ssize_t size = (
        C_MESSAGE_FIXED + present_bytes(message) + group_bytes(message.group)
        + len(message.context)
    )
    cdef Entry entry
    for item in message.entries:
        entry = <Entry>item
        size += C_ENTRY_FIXED + len(entry.data)
    return size


def encoded_size(message):
    """Exact number of bytes `message` adds to a messages frame (for packing datagrams)."""
    if is_plain_message(message) and (<Message>message).entries is not None:
        return plain_encoded_size(<Message>message)
    return _py.encoded_size(message)


cdef object truncated(Py_ssize_t need, Py_ssize_t offset, Py_ssize_t end):
    return DecodeError(
        f"truncated frame: need {need} bytes at offset {offset}, {end - offset} left"
    )


# ---------------------------------------------------------------- codec

cdef class FrameCodec:
    """Encodes and decodes authenticated frames for one cluster (see codec_py.FrameCodec)."""

    cdef readonly uint64_t cluster_id
    cdef readonly uint64_t local_id
    cdef readonly Py_ssize_t max_datagram_bytes
    cdef readonly Py_ssize_t max_frame_bytes
    cdef readonly Py_ssize_t max_chunk_bytes
    cdef readonly Py_ssize_t max_messages_per_frame
    cdef readonly Py_ssize_t max_entries_per_message
    cdef readonly Py_ssize_t max_context_bytes
    cdef readonly bint encrypt
    cdef uint8_t _messages_kind    # the kinds written and accepted: the mode is a kind bit
    cdef uint8_t _fragment_kind
    cdef object _kdf              # BLAKE2b keyed with the cluster key, label absorbed
    # (sender_id, epoch) header bytes -> AESGCM of its subkey (codec_py._remember). Readable
    # from Python only so bench/test_micro.py can time the codec without the tag (a null AEAD).
    cdef readonly dict _aeads
    cdef uint8_t _type_known[256]
    cdef uint8_t _kind_known[256]

    def __init__(
        self, cluster_key, cluster_id=0, max_datagram_bytes=65_000, *, limits=None,
        max_frame_bytes=None, local_id=0, encrypt=False,
    ):
        # Same validation, same errors: the spec twin's constructor checks the arguments.
        spec = _py.FrameCodec(
            cluster_key, cluster_id, max_datagram_bytes, limits=limits,
            max_frame_bytes=max_frame_bytes, local_id=local_id, encrypt=encrypt,
        )
        self.cluster_id = spec.cluster_id
        self.local_id = spec.local_id
        self.max_datagram_bytes = spec.max_datagram_bytes
        self.max_frame_bytes = spec.max_frame_bytes
        self.max_chunk_bytes = spec.max_chunk_bytes
        self.max_messages_per_frame = spec.max_messages_per_frame
        self.max_entries_per_message = spec.max_entries_per_message
        self.max_context_bytes = spec.max_context_bytes
        self.encrypt = spec.encrypt
        self._messages_kind = spec._messages_kind
        self._fragment_kind = spec._fragment_kind
        self._kdf = hashlib.blake2b(
            _py.SUBKEY_LABEL, key=bytes(cluster_key), digest_size=_py.SUBKEY_BYTES
        )
        self._aeads = {}
        memset(self._type_known, 0, sizeof(self._type_known))
        memset(self._kind_known, 0, sizeof(self._kind_known))
        for code in KNOWN_MESSAGE_TYPES:
            if 0 <= code <= 255:
                self._type_known[code] = 1
        for code in KNOWN_ENTRY_KINDS:
            if 0 <= code <= 255:
                self._kind_known[code] = 1

    # ------------------------------------------------------------ encode

    def encode(
        self, uint64_t sender_id, uint64_t epoch, uint64_t counter, messages,
        uint64_t receiver_id=0,
    ):
        """One authenticated messages frame for `receiver_id` carrying `messages` in order."""
        cdef list items = messages if type(messages) is list else list(messages)
        cdef Py_ssize_t count = len(items)
        cdef Py_ssize_t i, size, offset
        cdef bytes out
        cdef uint8_t* p
        if count > self.max_messages_per_frame:
            raise ValueError(
                f"{count} messages exceed max_messages_per_frame={self.max_messages_per_frame}"
            )
        # Pass 1: validate and size (the spec's validation order), coercing foreign objects.
        size = C_HEADER + C_COUNT + C_TAG
        for i in range(count):
            item = items[i]
            if not is_plain_message(item):
                if items is messages:
                    items = list(items)
                item = as_plain_message(item)
                items[i] = item
            size += self._checked_size(<Message>item)
        if size > self.max_frame_bytes:
            raise ValueError(
                f"frame of {size} bytes exceeds max_frame_bytes={self.max_frame_bytes}"
            )
        # Pass 2: write into one bytes object of the exact size; nothing can fail from here.
        out = PyBytes_FromStringAndSize(NULL, size)
        p = <uint8_t*>PyBytes_AS_STRING(out)
        self._write_header(p, self._messages_kind, sender_id, epoch, counter, receiver_id)
        store_u32(p + C_HEADER, <uint32_t>count)
        offset = C_HEADER + C_COUNT
        for i in range(count):
            offset = write_message(p, offset, <Message>items[i])
        self._seal(out, p, size)
        return out

    def encode_fragment(
        self, uint64_t sender_id, uint64_t epoch, uint64_t counter, uint64_t fragment_id,
        uint32_t part, uint32_t parts, chunk, uint64_t receiver_id=0,
    ):
        """One authenticated fragment datagram for `receiver_id` carrying `chunk`, part
        `part` of `parts`."""
        cdef bytes chunk_bytes
        cdef Py_ssize_t length, size
        cdef bytes out
        cdef uint8_t* p
        if not part < parts:
            raise ValueError(f"fragment part {part} not below parts {parts}")
        chunk_bytes = _py._as_bytes(chunk)
        length = PyBytes_GET_SIZE(chunk_bytes)
        if not 1 <= length <= self.max_chunk_bytes:
            raise ValueError(
                f"fragment chunk of {length} bytes outside "
                f"[1, max_chunk_bytes={self.max_chunk_bytes}]"
            )
        size = C_HEADER + C_FRAGMENT_HEAD + length + C_TAG
        out = PyBytes_FromStringAndSize(NULL, size)
        p = <uint8_t*>PyBytes_AS_STRING(out)
        self._write_header(p, self._fragment_kind, sender_id, epoch, counter, receiver_id)
        store_u64(p + C_HEADER, fragment_id)
        store_u32(p + C_HEADER + 8, part)
        store_u32(p + C_HEADER + 12, parts)
        store_u32(p + C_HEADER + 16, <uint32_t>length)
        memcpy(p + C_HEADER + C_FRAGMENT_HEAD, PyBytes_AS_STRING(chunk_bytes), length)
        self._seal(out, p, size)
        return out

    cdef Py_ssize_t _checked_size(self, Message message) except -1:
        """The message's encoded size; raises what codec_py._pack_message raises, in order."""
        cdef Py_ssize_t size, entry_count
        cdef Entry entry
        if message.type < 0 or message.type > 255 or not self._type_known[message.type]:
            raise ValueError(f"unknown message type {message.type!r}")
        if message.entries is None:
            raise TypeError("Message.entries must be a list")
        entry_count = len(message.entries)
        if entry_count > self.max_entries_per_message:
            raise ValueError(
                f"{entry_count} entries exceed "
                f"max_entries_per_message={self.max_entries_per_message}"
            )
        if message.context is None:
            raise TypeError("Message.context must be bytes")
        if PyBytes_GET_SIZE(message.context) > self.max_context_bytes:
            raise ValueError(
                f"context of {PyBytes_GET_SIZE(message.context)} bytes exceeds "
                f"max_context_bytes={self.max_context_bytes}"
            )
        size = (
            C_MESSAGE_FIXED + present_bytes(message) + group_bytes(message.group)
            + PyBytes_GET_SIZE(message.context)
        )
        for item in message.entries:
            entry = <Entry>item
            if entry.kind < 0 or entry.kind > 255 or not self._kind_known[entry.kind]:
                raise ValueError(f"unknown entry kind {entry.kind!r}")
            if entry.data is None:
                raise TypeError("Entry.data must be bytes")
            size += C_ENTRY_FIXED + PyBytes_GET_SIZE(entry.data)
        return size

    cdef void _write_header(
        self, uint8_t* p, uint8_t kind, uint64_t sender_id, uint64_t epoch, uint64_t counter,
        uint64_t receiver_id,
    ) noexcept:
        p[0] = C_VERSION
        p[1] = kind
        store_u64(p + 2, self.cluster_id)
        store_u64(p + 10, sender_id)
        store_u64(p + 18, epoch)
        store_u64(p + 26, counter)
        store_u64(p + C_RECEIVER_AT, receiver_id)

    cdef int _seal(self, bytes out, uint8_t* p, Py_ssize_t size) except -1:
        """Write the tag over bytes [0, size - 16) into the last 16 bytes of `out` (which
        nobody else references yet, so filling it in place is safe); in encrypting mode,
        replace the body by its ciphertext too (codec_py._sealed)."""
        cdef bytes sealed
        cdef Py_ssize_t length
        sender_epoch = PyBytes_FromStringAndSize(<char*>p + C_SENDER_EPOCH_AT, 16)
        aead = self._aeads.get(sender_epoch)
        if aead is None:
            aead = self._derive(p)
            self._remember(sender_epoch, aead)
        if self.encrypt:
            # ciphertext || tag over the body; the header is the associated data.
            length = size - C_HEADER
            sealed = aead.encrypt(
                nonce_of(p),
                PyMemoryView_FromMemory(<char*>p + C_HEADER, length - C_TAG, PyBUF_READ),
                PyMemoryView_FromMemory(<char*>p, C_HEADER, PyBUF_READ),
            )
        else:
            length = C_TAG
            sealed = aead.encrypt(
                nonce_of(p), b"", PyMemoryView_FromMemory(<char*>p, size - C_TAG, PyBUF_READ)
            )
        if PyBytes_GET_SIZE(sealed) != length:
            raise ValueError("the AEAD returned a result of the wrong size")
        memcpy(p + size - length, PyBytes_AS_STRING(sealed), length)
        return 0

    cdef object _derive(self, const uint8_t* header):
        """The AESGCM of the (cluster_id, sender_id, epoch) subkey named by `header`."""
        kdf = self._kdf.copy()
        kdf.update(PyBytes_FromStringAndSize(<const char*>header + C_IDENTITY_AT, 24))
        return AESGCM(kdf.digest())

    cdef int _remember(self, bytes sender_epoch, object aead) except -1:
        # Bounded: emptied when full (codec_py._remember).
        if len(self._aeads) >= MAX_CACHED_SUBKEYS:
            self._aeads.clear()
        self._aeads[sender_epoch] = aead
        return 0

    cdef int _verify(self, const uint8_t* p, Py_ssize_t end, bint own_cluster=True) except -1:
        """Check the tag at [end, end + 16) over p[:end] (codec_py._verify)."""
        cdef bint derived
        sender_epoch = PyBytes_FromStringAndSize(<const char*>p + C_SENDER_EPOCH_AT, 16)
        aead = self._aeads.get(sender_epoch) if own_cluster else None
        derived = aead is None
        if derived:
            aead = self._derive(p)
        try:
            aead.decrypt(
                nonce_of(p), PyBytes_FromStringAndSize(<const char*>p + end, C_TAG),
                PyMemoryView_FromMemory(<char*>p, end, PyBUF_READ),
            )
        except InvalidTag:
            raise DecodeError("authentication failed (bad tag or wrong cluster key)") from None
        if derived and own_cluster:
            self._remember(sender_epoch, aead)
        return 0

    cdef bytes _open(self, const uint8_t* p, Py_ssize_t end, bint own_cluster=True):
        """Verify and decrypt an encrypted frame (codec_py._open): a new frame of the same
        size with the plaintext body in place (its tag bytes left as they were)."""
        cdef bint derived
        cdef bytes plaintext, opened
        sender_epoch = PyBytes_FromStringAndSize(<const char*>p + C_SENDER_EPOCH_AT, 16)
        aead = self._aeads.get(sender_epoch) if own_cluster else None
        derived = aead is None
        if derived:
            aead = self._derive(p)
        try:
            plaintext = aead.decrypt(
                nonce_of(p),
                PyMemoryView_FromMemory(<char*>p + C_HEADER, end + C_TAG - C_HEADER, PyBUF_READ),
                PyMemoryView_FromMemory(<char*>p, C_HEADER, PyBUF_READ),
            )
        except InvalidTag:
            raise DecodeError("authentication failed (bad tag or wrong cluster key)") from None
        if PyBytes_GET_SIZE(plaintext) != end - C_HEADER:
            raise ValueError("the AEAD returned a plaintext of the wrong size")
        if derived and own_cluster:
            self._remember(sender_epoch, aead)
        opened = PyBytes_FromStringAndSize(NULL, end + C_TAG)
        memcpy(PyBytes_AS_STRING(opened), p, C_HEADER)
        memcpy(PyBytes_AS_STRING(opened) + C_HEADER, PyBytes_AS_STRING(plaintext), end - C_HEADER)
        memcpy(PyBytes_AS_STRING(opened) + end, p + end, C_TAG)
        return opened

    # ------------------------------------------------------------ decode

    def decode(self, datagram):
        """Authenticate and parse one frame; DecodeError for anything not acceptable."""
        cdef bytes data
        cdef const uint8_t* p
        cdef Py_ssize_t size, end
        cdef uint8_t kind
        cdef uint64_t cluster_id, receiver_id
        cdef Frame frame
        if isinstance(datagram, bytes):
            data = <bytes>datagram
        else:
            data = _py._as_bytes(datagram)  # bytearray / memoryview: one copy; else TypeError
        p = <const uint8_t*>PyBytes_AS_STRING(data)
        size = PyBytes_GET_SIZE(data)
        # Cheap header checks, then the tag, before anything in the body is read.
        if size > self.max_frame_bytes:
            raise DecodeError(
                f"frame of {size} bytes exceeds max_frame_bytes={self.max_frame_bytes}"
            )
        if size < C_HEADER + C_TAG:
            raise DecodeError(
                f"truncated frame: {size} bytes, need at least {C_HEADER + C_TAG}"
            )
        if p[0] != C_VERSION:
            raise WireVersionError(f"unsupported wire version {p[0]} (expected {C_VERSION})")
        kind = p[1]
        if kind != self._messages_kind and kind != self._fragment_kind:
            raise _py._refused_kind(kind, self.encrypt)
        if kind == self._fragment_kind and size > self.max_datagram_bytes:
            raise DecodeError(
                f"fragment datagram of {size} bytes exceeds "
                f"max_datagram_bytes={self.max_datagram_bytes}"
            )
        receiver_id = load_u64(p + C_RECEIVER_AT)
        if receiver_id != self.local_id and receiver_id != 0:
            raise WrongReceiverError(
                f"frame for receiver {receiver_id} (this is {self.local_id})")
        cluster_id = load_u64(p + 2)
        if cluster_id != self.cluster_id and cluster_id != 0 and self.cluster_id != 0:
            # Checked after the tag: only a holder of the cluster key can report a conflict.
            if self.encrypt:
                self._open(p, size - C_TAG, False)
            else:
                self._verify(p, size - C_TAG, False)
            raise WrongClusterError(load_u64(p + 10), cluster_id, self.cluster_id)
        if self.encrypt:
            data = self._open(p, size - C_TAG)
            p = <const uint8_t*>PyBytes_AS_STRING(data)
        else:
            self._verify(p, size - C_TAG)

        kind &= <uint8_t>~C_KIND_ENCRYPTED
        frame = Frame.__new__(Frame)
        frame.kind = kind
        frame.sender_id = load_u64(p + 10)
        frame.epoch = load_u64(p + 18)
        frame.counter = load_u64(p + 26)
        frame.receiver_id = receiver_id
        frame.cluster_id = cluster_id
        frame.fragment_id = 0
        frame.part = 0
        frame.parts = 0
        end = size - C_TAG
        if kind == C_KIND_FRAGMENT:
            frame.messages = []
            self._decode_fragment(frame, data, p, end)
        else:
            frame.chunk = b""
            frame.messages = self._decode_messages(p, end)
        return frame

    cdef int _decode_fragment(
        self, Frame frame, bytes data, const uint8_t* p, Py_ssize_t end
    ) except -1:
        cdef Py_ssize_t offset = C_HEADER
        cdef uint32_t part, parts, chunk_length
        if end - offset < C_FRAGMENT_HEAD:
            raise truncated(C_FRAGMENT_HEAD, offset, end)
        frame.fragment_id = load_u64(p + offset)
        part = load_u32(p + offset + 8)
        parts = load_u32(p + offset + 12)
        chunk_length = load_u32(p + offset + 16)
        offset += C_FRAGMENT_HEAD
        if not part < parts:
            raise DecodeError(f"fragment part {part} not below parts {parts}")
        if chunk_length == 0:
            raise DecodeError("empty fragment chunk")
        if chunk_length != end - offset:
            raise DecodeError(
                f"fragment chunk of {chunk_length} bytes does not match the "
                f"{end - offset} bytes left"
            )
        frame.part = part
        frame.parts = parts
        frame.chunk = PyBytes_FromStringAndSize(<const char*>p + offset, chunk_length)
        return 0

    cdef list _decode_messages(self, const uint8_t* p, Py_ssize_t end):
        cdef Py_ssize_t offset = C_HEADER
        cdef uint32_t count, number
        cdef list messages = []
        if end - offset < C_COUNT:
            raise truncated(C_COUNT, offset, end)
        count = load_u32(p + offset)
        offset += C_COUNT
        if count > self.max_messages_per_frame:
            raise DecodeError(
                f"{count} messages exceed max_messages_per_frame={self.max_messages_per_frame}"
            )
        for number in range(count):
            offset = self._decode_message(p, offset, end, number, messages)
        if offset != end:
            raise DecodeError(f"{end - offset} trailing bytes after the last message")
        return messages

    cdef Py_ssize_t _decode_message(
        self, const uint8_t* p, Py_ssize_t offset, Py_ssize_t end, uint32_t number,
        list messages,
    ) except -1:
        """Parse one message at `offset`, append it, return the offset after it."""
        cdef uint8_t type_code, flags, kind
        cdef uint16_t presence
        cdef uint64_t fields[C_FIELDS]
        cdef Py_ssize_t need
        cdef uint32_t entry_count, context_length, data_length, entry_number
        cdef uint64_t term, index
        cdef uint64_t group = 0
        cdef uint8_t byte
        cdef int bit, shift
        cdef Message message
        cdef list entries
        if end - offset < 4:
            raise truncated(4, offset, end)
        type_code = p[offset]
        flags = p[offset + 1]
        presence = load_u16(p + offset + 2)
        offset += 4
        if not self._type_known[type_code]:
            raise DecodeError(f"message {number}: unknown type {type_code}")
        if flags & ~(C_FLAG_REJECT | C_FLAG_GROUP):
            raise DecodeError(f"message {number}: unknown flag bits 0x{flags:02x}")
        if presence & ~C_PRESENCE_MASK:
            raise DecodeError(f"message {number}: unknown field bits 0x{presence:04x}")
        if flags & C_FLAG_GROUP:
            # Minimal LEB128, non-zero, at most 64 bits (codec_py._read_group).
            shift = 0
            while True:
                if offset >= end:
                    raise truncated(1, offset, end)
                byte = p[offset]
                offset += 1
                if shift == 63 and byte > 1:
                    raise DecodeError(f"message {number}: group varint exceeds 64 bits")
                group |= (<uint64_t>(byte & 0x7F)) << shift
                if not byte & 0x80:
                    break
                shift += 7
            if byte == 0:
                raise DecodeError(
                    f"message {number}: group varint is zero or not minimal (non-canonical)")
        need = 0
        for bit in range(C_FIELDS):
            if presence >> bit & 1:
                need += 8
        if end - offset < need:
            raise truncated(need, offset, end)
        for bit in range(C_FIELDS):
            if presence >> bit & 1:
                fields[bit] = load_u64(p + offset)
                offset += 8
                if fields[bit] == 0:
                    raise DecodeError(
                        f"message {number}: field {U64_FIELDS[bit]} is present but zero "
                        f"(non-canonical)"
                    )
            else:
                fields[bit] = 0
        if end - offset < 8:
            raise truncated(8, offset, end)
        entry_count = load_u32(p + offset)
        context_length = load_u32(p + offset + 4)
        offset += 8
        if entry_count > self.max_entries_per_message:
            raise DecodeError(
                f"message {number}: {entry_count} entries exceed "
                f"max_entries_per_message={self.max_entries_per_message}"
            )
        if context_length > self.max_context_bytes:
            raise DecodeError(
                f"message {number}: context of {context_length} bytes exceeds "
                f"max_context_bytes={self.max_context_bytes}"
            )
        if end - offset < context_length:
            raise truncated(context_length, offset, end)
        message = Message.__new__(Message)
        message.type = type_code
        message.reject = flags & C_FLAG_REJECT
        message.group = group
        store_fields(message, fields)
        message.context = PyBytes_FromStringAndSize(<const char*>p + offset, context_length)
        offset += context_length
        entries = []
        message.entries = entries
        for entry_number in range(entry_count):
            if end - offset < C_ENTRY_FIXED:
                raise truncated(C_ENTRY_FIXED, offset, end)
            term = load_u64(p + offset)
            index = load_u64(p + offset + 8)
            kind = p[offset + 16]
            data_length = load_u32(p + offset + 17)
            offset += C_ENTRY_FIXED
            if not self._kind_known[kind]:
                raise DecodeError(f"message {number} entry {entry_number}: unknown kind {kind}")
            if end - offset < data_length:
                raise truncated(data_length, offset, end)
            entries.append(make_entry(
                term, index,
                PyBytes_FromStringAndSize(<const char*>p + offset, data_length), kind,
            ))
            offset += data_length
        messages.append(message)
        return offset


cdef Py_ssize_t write_message(uint8_t* p, Py_ssize_t offset, Message message) noexcept:
    """Write a validated message at `offset`; return the offset after it."""
    cdef uint64_t fields[C_FIELDS]
    cdef uint16_t presence = 0
    cdef int bit
    cdef Py_ssize_t length
    cdef Entry entry
    cdef uint8_t* head = p + offset
    cdef uint64_t group = message.group
    load_fields(message, fields)
    head[0] = <uint8_t>message.type
    head[1] = C_FLAG_REJECT if message.reject else 0
    offset += 4
    if group:
        head[1] |= C_FLAG_GROUP
        while group >= 0x80:
            p[offset] = <uint8_t>(group & 0x7F | 0x80)
            group >>= 7
            offset += 1
        p[offset] = <uint8_t>group
        offset += 1
    for bit in range(C_FIELDS):
        if fields[bit]:
            presence |= <uint16_t>(1 << bit)
            store_u64(p + offset, fields[bit])
            offset += 8
    store_u16(head + 2, presence)
    length = PyBytes_GET_SIZE(message.context)
    store_u32(p + offset, <uint32_t>len(message.entries))
    store_u32(p + offset + 4, <uint32_t>length)
    offset += 8
    memcpy(p + offset, PyBytes_AS_STRING(message.context), length)
    offset += length
    for item in message.entries:
        entry = <Entry>item
        length = PyBytes_GET_SIZE(entry.data)
        store_u64(p + offset, entry.term)
        store_u64(p + offset + 8, entry.index)
        p[offset + 16] = <uint8_t>entry.kind
        store_u32(p + offset + 17, <uint32_t>length)
        offset += C_ENTRY_FIXED
        memcpy(p + offset, PyBytes_AS_STRING(entry.data), length)
        offset += length
    return offset


# ---------------------------------------------------------------- replay window

@cython.final
cdef class _SenderWindow:
    """One sender's window: a ring of `bit_count` bits indexed by counter % bit_count; the
    bits of counters in (highest - bit_count, highest] are valid (RFC 6479)."""

    cdef uint64_t epoch
    cdef uint64_t highest
    cdef uint64_t* bits
    cdef Py_ssize_t word_count
    cdef uint64_t bit_count

    def __dealloc__(self):
        PyMem_Free(self.bits)

    cdef inline bint test(self, uint64_t counter) noexcept:
        cdef uint64_t slot = counter % self.bit_count
        return (self.bits[slot >> 6] >> (slot & 63)) & 1

    cdef inline void mark(self, uint64_t counter) noexcept:
        cdef uint64_t slot = counter % self.bit_count
        self.bits[slot >> 6] |= (<uint64_t>1) << (slot & 63)

    cdef inline void clear(self, uint64_t counter) noexcept:
        cdef uint64_t slot = counter % self.bit_count
        self.bits[slot >> 6] &= ~((<uint64_t>1) << (slot & 63))

    cdef void reset(self, uint64_t epoch, uint64_t counter) noexcept:
        memset(self.bits, 0, self.word_count * sizeof(uint64_t))
        self.epoch = epoch
        self.highest = counter
        self.mark(counter)

    cdef void advance(self, uint64_t counter) noexcept:
        """Slide the window forward to `counter` (> highest): forget the counters it passes."""
        cdef uint64_t passed
        if counter - self.highest >= self.bit_count:
            memset(self.bits, 0, self.word_count * sizeof(uint64_t))
        else:
            passed = self.highest + 1
            while passed != counter:
                self.clear(passed)
                passed += 1
            self.clear(counter)
        self.highest = counter
        self.mark(counter)


cdef class ReplayWindow:
    """Anti-replay filter over authenticated frames (see codec_py.ReplayWindow)."""

    cdef readonly Py_ssize_t size
    cdef readonly Py_ssize_t max_senders
    cdef object _senders          # OrderedDict: sender_id -> _SenderWindow, by recency
    cdef Py_ssize_t _word_count

    def __init__(self, size=1024, max_senders=4096):
        if not isinstance(size, int) or not 1 <= size <= 1 << 20:
            raise ConfigError(f"ReplayWindow size must be in [1, 2**20], got {size!r}")
        if not isinstance(max_senders, int) or max_senders < 1:
            raise ConfigError(f"ReplayWindow max_senders must be >= 1, got {max_senders!r}")
        self.size = size
        self.max_senders = max_senders
        self._senders = OrderedDict()
        self._word_count = (size + 63) // 64

    def __len__(self):
        return len(self._senders)

    cdef _SenderWindow _new_sender(self):
        cdef _SenderWindow window
        if len(self._senders) >= self.max_senders:
            # Forget the least recently accepted sender and reuse its memory.
            return <_SenderWindow>self._senders.popitem(last=False)[1]
        window = _SenderWindow.__new__(_SenderWindow)
        window.bits = <uint64_t*>PyMem_Malloc(self._word_count * sizeof(uint64_t))
        if window.bits == NULL:
            raise MemoryError()
        window.word_count = self._word_count
        window.bit_count = <uint64_t>self._word_count * 64
        return window

    def accept(self, uint64_t sender_id, uint64_t epoch, uint64_t counter):
        """True if this (sender, epoch, counter) is fresh; records it as seen."""
        cdef _SenderWindow window
        cdef uint64_t behind
        key = sender_id
        found = self._senders.get(key)
        if found is None:
            window = self._new_sender()
            window.reset(epoch, counter)
            self._senders[key] = window
            return True
        window = <_SenderWindow>found
        if epoch < window.epoch:
            return False  # a frame from before the sender's restart
        if epoch > window.epoch:
            window.reset(epoch, counter)  # the sender restarted: a fresh window
        elif counter > window.highest:
            window.advance(counter)
        else:
            behind = window.highest - counter
            if behind >= <uint64_t>self.size or window.test(counter):
                return False  # too old to judge, or already accepted
            window.mark(counter)
        self._senders.move_to_end(key)
        return True
