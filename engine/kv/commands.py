"""Binary encoding of KV commands, queries and results (the KVStore's wire vocabulary).

Every encoding is versioned, little-endian, fixed-width integers with explicit lengths, and
is decoded with exact length checks: trailing bytes, short buffers, unknown versions, ops or
flag bits are all a DecodeError. KVStore turns a command that fails to decode into a MALFORMED
result (the same on every replica) instead of raising.

Command (goes through the log):
    u8 version (=1) | u8 op | u8 flags | [u64 client_id | u64 seq]   if flags & SESSION
    | [12-byte HLC timestamp]   if flags & TIMESTAMP
    | u32 key_len | key
    | PUT: u32 value_len | value
    | CAS: [u32 expected_len | expected]   if flags & EXPECTED  (absent: key must not exist)
    |      [u64 expected_revision]         if flags & EXPECTED_REVISION (instead of EXPECTED;
    |                                      0: the key must not exist)
    |      u32 new_len | new
    flags & TIMESTAMP (PUT, DELETE, CAS): the proposer's HLC timestamp for the write
    (engine.txn.hlc.Timestamp.encode: big-endian u64 wall_ns, u32 logical); the store may
    push it up (KVStore, "MVCC") and the result carries the timestamp the write took
    (result flag TIMESTAMP). On a GET (query or command) it is the timestamp to read at.
    flags & WANT_REVISION (GET only): the result carries the revision of the value read
    (the log index of the write that set it; 0 when the key has no value).
    REGISTER: no session, an empty key, nothing after it; the result's value is the new
    session's client id (u64, the log index the command applied at).
    flags & WANT_PREVIOUS (PUT and DELETE only): the result carries the value the key held.
    Without it the result says only whether the key existed, so a result (and the copy a
    session keeps for retries) does not grow with the size of the values it replaced.
Query (ReadIndex read, never changes state): the GET command layout without a session, or
    SCAN (a query only, never a command): u8 version | u8 op = SCAN | u8 flags (= 0)
    | u32 limit (most keys, >= 1) | u32 max_bytes (most bytes of the encoded result)
    | u32 start_len | start | u32 end_len | end
    The keys in [start, end) in byte order (an empty end: to the end of the key space). The
    result is OK with the store's applied index as revision and the page as value:
        u8 more | u32 count | count x (u32 key_len | key | u32 value_len | value)
    A page holds at most `limit` keys and is at most max_bytes long, except that it always
    holds the first key in range (so paging makes progress whatever the bound). more = 1:
    keys in range follow the last one; the next page starts at last key + b"\x00" (the
    smallest key after it), so a caller pages without a continuation token of its own.
Result:
    u8 version (=1) | u8 status | u8 flags
    | [u64 revision] if flags & REVISION | [12-byte timestamp] if flags & TIMESTAMP
    | [u32 len | value] if flags & VALUE
    | [u32 len | previous] if flags & PREVIOUS | [u32 len | utf-8 message] if flags & MESSAGE
    flags & EXISTED: the key had a value before the write (set whenever PREVIOUS is).
    flags & TIMESTAMP: a 12-byte HLC timestamp follows the revision: the one a stamped
    write took (KVStore, "MVCC"); for HISTORY_COMPACTED the value is the oldest readable one.
    flags & NOT_RETAINED: the answer to a retry whose full result the session did not keep
    (larger than Limits.max_session_result_bytes); the command applied once, at `revision`,
    and its status and EXISTED are exact; only the value / previous / message were dropped.
    A write's revision is the log index it applied at (PUT, DELETE and a CAS that swapped).
A decoder refuses flag bits it does not know: results with REVISION, EXISTED or NOT_RETAINED
need a client that knows them (this module's). A store that predates WANT_PREVIOUS answers
such a command MALFORMED and applies nothing, so every replica must run a store that knows it
before a client sends one (in a mixed cluster only some replicas would apply it).

Sessions (Raft thesis §6.3): a client first applies REGISTER, whose result is its client id;
then its commands may carry (client_id, seq). It keeps at most one command outstanding per
client id, starts at seq 1 and uses a higher seq for each new command; a retry re-sends the
same seq and gets the cached result. See KVStore for the exact rules.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from enum import IntEnum
from typing import NamedTuple

from engine.errors import ConfigError, DecodeError, HistoryCompacted

VERSION = 1

U64_MAX = (1 << 64) - 1
U32_MAX = (1 << 32) - 1


class Op(IntEnum):
    PUT = 1
    GET = 2
    DELETE = 3
    CAS = 4
    REGISTER = 5   # open a client session (Raft thesis §6.3 RegisterClient)
    SCAN = 6       # a query only: keys of a range in order (never in a log)


class Status(IntEnum):
    OK = 0
    CAS_MISMATCH = 1      # value = the current value (None if absent); nothing changed
    STALE_REQUEST = 2     # seq below the session's last applied seq; nothing changed
    SESSION_EXPIRED = 3   # unknown client id (evicted, or never registered); nothing changed
    MALFORMED = 4         # the command or query could not be decoded; nothing changed
    HISTORY_COMPACTED = 5  # a read below the MVCC horizon; value = the oldest readable
                           # timestamp (12 bytes)
    REFUSED = 6           # a coordination command or query refused (engine.kv.coord); value =
                          # the typed error as JSON; nothing changed


# Command flags.
FLAG_SESSION = 0x01
FLAG_EXPECTED = 0x02
FLAG_WANT_PREVIOUS = 0x04   # PUT / DELETE: return the previous value
FLAG_TIMESTAMP = 0x08       # an HLC timestamp: a write's stamp, a GET's read timestamp
FLAG_WANT_REVISION = 0x10   # GET: return the revision of the value read
FLAG_EXPECTED_REVISION = 0x20   # CAS: compare the key's revision, not its value
_COMMAND_FLAGS = (FLAG_SESSION | FLAG_EXPECTED | FLAG_WANT_PREVIOUS | FLAG_TIMESTAMP
                  | FLAG_WANT_REVISION | FLAG_EXPECTED_REVISION)

# Result flags.
FLAG_VALUE = 0x01
FLAG_PREVIOUS = 0x02
FLAG_MESSAGE = 0x04
FLAG_REVISION = 0x08
FLAG_EXISTED = 0x10
FLAG_NOT_RETAINED = 0x20
FLAG_RESULT_TIMESTAMP = 0x40
_RESULT_FLAGS = (FLAG_VALUE | FLAG_PREVIOUS | FLAG_MESSAGE | FLAG_REVISION | FLAG_EXISTED
                 | FLAG_NOT_RETAINED | FLAG_RESULT_TIMESTAMP)
# What a result keeps when its payloads are dropped (KVStore's session cache).
_RETAINED_FLAGS = FLAG_REVISION | FLAG_EXISTED | FLAG_RESULT_TIMESTAMP

_HEAD = struct.Struct("<BBB")
_SESSION = struct.Struct("<QQ")
_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")
TIMESTAMP_BYTES = 12   # engine.txn.hlc.ENCODED_BYTES (kv sits below txn)

# Ops a command may carry: SCAN is a query, and a SCAN in the log is MALFORMED on every replica.
_KNOWN_OPS = frozenset(int(op) for op in Op if op != Op.SCAN)
_STATUS_OF: dict[int, Status] = {int(status): status for status in Status}  # not Status(n)
_PUT_SESSION_HEAD = struct.Struct("<BBBQQI")   # head, session, key length: a client's PUT
STRIPPED_RESULT_BYTES = _HEAD.size + _U64.size + 12   # the most strip_result keeps


@dataclass(frozen=True, slots=True)
class Command:
    """A decoded command. `expected` is only meaningful for CAS (None: key must be absent);
    `previous` (PUT / DELETE): the result is to carry the previous value. `timestamp`: the
    HLC timestamp the command carries as one int (int.from_bytes of its 12-byte big-endian
    encoding: wall_ns << 32 | logical), None without. `expected_revision` (CAS): compare the
    key's revision (0: absent) instead of its value. `want_revision` (GET): the result is
    to carry the revision of the value read."""

    op: int
    key: bytes
    value: bytes | None = None
    expected: bytes | None = None
    client_id: int | None = None
    seq: int = 0
    previous: bool = False
    timestamp: int | None = None
    expected_revision: int | None = None
    want_revision: bool = False


@dataclass(frozen=True, slots=True)
class KVResult:
    """A decoded result. `ok` is True when the command took effect as asked (for GET: ran).

    `revision`: the log index a write applied at (None for reads and refusals). `existed`
    (PUT / DELETE / CAS): the key had a value before. `previous`: that value, only when the
    command asked for it. `retained` is False for a retry's answer whose full result was not
    kept (Limits.max_session_result_bytes): status, revision and existed are exact, value and
    previous are None whatever they were. `timestamp`: the 12-byte HLC timestamp a stamped
    write took (None otherwise)."""

    status: Status
    value: bytes | None = None
    previous: bytes | None = None
    message: str = ""
    revision: int | None = None
    existed: bool = False
    retained: bool = True
    timestamp: bytes | None = None

    @property
    def ok(self) -> bool:
        return self.status == Status.OK

    @property
    def error(self) -> str:
        """Why the command did not take effect ("" when ok or a plain CAS mismatch)."""
        return "" if self.ok else self.message


class KeyValue(NamedTuple):
    """One key of a scan and its value (a tuple: `for key, value in await c.scan(...)`)."""

    key: bytes
    value: bytes


class Entry(NamedTuple):
    """A key's value and its revision (the log index of the write that set it), as read by
    get_entry: (None, 0) when the key has no value. cas(key, expected_revision=revision,
    ...) swaps only if the key still holds this very write."""

    value: bytes | None
    revision: int


@dataclass(frozen=True, slots=True)
class ScanPage:
    """One SCAN answer (one datagram): `items` in key order, `more` if keys in range follow
    the last item, `revision` the store's applied index when it was read (each page is
    linearizable on its own; a scan of many pages is not one atomic read). `resume_key` is
    where the next page starts (None when the range is done)."""

    items: list[KeyValue]
    more: bool
    revision: int | None = None

    @property
    def resume_key(self) -> bytes | None:
        if not self.more or not self.items:
            return None
        return self.items[-1].key + b"\x00"   # the smallest key after the last one


@dataclass(frozen=True, slots=True)
class WriteResult:
    """What engine.Client.put / delete return (DESIGN.md §3).

    `revision`: the log index the write applied at (0 only from a store that does not
    report revisions: log indexes start at 1). `prev`: the value the key held before,
    only when the call asked for it (prev=True), else None. `existed`: the key had a value.
    `retained` is False only for an answer to a retried write whose full result the cluster
    did not keep (larger than Limits.max_session_result_bytes): the write applied exactly
    once, at `revision`, but `prev` is None even if the key had a value (see `existed`)."""

    revision: int
    prev: bytes | None = None
    existed: bool = False
    retained: bool = True


# ---------------------------------------------------------------------------- encoding


def _session_bytes(client_id: int | None, seq: int | None) -> tuple[int, bytes]:
    if client_id is None and seq is None:
        return 0, b""
    if client_id is None or seq is None:
        raise ValueError("client_id and seq go together (both or neither)")
    if not 0 <= client_id <= U64_MAX:
        raise ValueError(f"client_id must fit in u64, got {client_id}")
    # seq 0 is reserved: a session's first command is seq 1 (see KVStore session rules).
    if not 1 <= seq <= U64_MAX:
        raise ValueError(f"seq must be in [1, 2**64), got {seq}")
    return FLAG_SESSION, _SESSION.pack(client_id, seq)


def _blob(data: bytes) -> bytes:
    if len(data) > U32_MAX:
        raise ValueError(f"key or value of {len(data)} bytes exceeds u32")
    return _U32.pack(len(data)) + data


def _timestamp_bytes(timestamp: bytes | None) -> tuple[int, bytes]:
    if timestamp is None:
        return 0, b""
    if type(timestamp) is not bytes or len(timestamp) != TIMESTAMP_BYTES:
        raise ValueError("a timestamp is the 12-byte encoding of an engine.txn.hlc.Timestamp")
    return FLAG_TIMESTAMP, timestamp


def _command(op: Op, key: bytes, tail: bytes, flags: int,
             client_id: int | None, seq: int | None, timestamp: bytes | None = None) -> bytes:
    session_flag, session = _session_bytes(client_id, seq)
    stamp_flag, stamp = _timestamp_bytes(timestamp)
    return b"".join((
        _HEAD.pack(VERSION, op, flags | session_flag | stamp_flag), session, stamp, _blob(key),
        tail,
    ))


def encode_put(key: bytes, value: bytes, *, client_id: int | None = None,
               seq: int | None = None, previous: bool = False,
               timestamp: bytes | None = None) -> bytes:
    """Set key to value; the result carries the revision, whether the key existed, and with
    previous=True the value it held before. `timestamp`: the write's HLC timestamp (12
    bytes; see the module docstring)."""
    flags = FLAG_WANT_PREVIOUS if previous else 0
    if timestamp is not None:
        return _command(Op.PUT, key, _blob(value), flags, client_id, seq, timestamp)
    if (client_id is not None and seq is not None and 0 <= client_id <= U64_MAX
            and 1 <= seq <= U64_MAX and len(key) <= U32_MAX and len(value) <= U32_MAX):
        # engine.Client's every write: the same bytes as the general path, in one pack.
        return b"".join((
            _PUT_SESSION_HEAD.pack(VERSION, Op.PUT, FLAG_SESSION | flags, client_id, seq,
                                   len(key)),
            key, _U32.pack(len(value)), value,
        ))
    return _command(Op.PUT, key, _blob(value), flags, client_id, seq)


def encode_get(key: bytes, *, client_id: int | None = None, seq: int | None = None,
               at: bytes | None = None, revision: bool = False) -> bytes:
    """Read key through the log (for tests and strict ordering); use encode_query normally."""
    return _command(Op.GET, key, b"", FLAG_WANT_REVISION if revision else 0, client_id, seq,
                    at)


def encode_delete(key: bytes, *, client_id: int | None = None,
                  seq: int | None = None, previous: bool = False,
                  timestamp: bytes | None = None) -> bytes:
    """Delete key; the result carries the revision, whether the key existed, and with
    previous=True the value it held."""
    return _command(Op.DELETE, key, b"", FLAG_WANT_PREVIOUS if previous else 0, client_id, seq,
                    timestamp)


def encode_cas(key: bytes, expected: bytes | None, new: bytes, *,
               client_id: int | None = None, seq: int | None = None,
               timestamp: bytes | None = None) -> bytes:
    """Set key to new iff its value is expected (None: iff the key is absent)."""
    if expected is None:
        return _command(Op.CAS, key, _blob(new), 0, client_id, seq, timestamp)
    return _command(Op.CAS, key, _blob(expected) + _blob(new), FLAG_EXPECTED, client_id, seq,
                    timestamp)


def encode_cas_revision(key: bytes, expected_revision: int, new: bytes, *,
                        client_id: int | None = None, seq: int | None = None,
                        timestamp: bytes | None = None) -> bytes:
    """Set key to new iff its revision (the log index of the write that set its value) is
    expected_revision; 0: iff the key is absent. A mismatch answers CAS_MISMATCH with the
    current value and revision."""
    if isinstance(expected_revision, bool) or not 0 <= expected_revision <= U64_MAX:
        raise ValueError(f"expected_revision must fit in u64, got {expected_revision!r}")
    return _command(Op.CAS, key, _U64.pack(expected_revision) + _blob(new),
                    FLAG_EXPECTED_REVISION, client_id, seq, timestamp)


class _Unset:
    """The default of cas's `expected` (None means "absent", so it cannot be the default)."""

    def __repr__(self) -> str:
        return "UNSET"


UNSET = _Unset()


def encode_cas_call(key: bytes, expected: bytes | None | _Unset, new: bytes | None,
                    expected_revision: int | None, value: bytes | None, *,
                    client_id: int | None = None, seq: int | None = None) -> bytes:
    """The CAS of a client's cas(key, expected, new) (expected None: the key is absent) or
    cas(key, expected_revision=r, value=v) (r 0: absent); ConfigError for anything else."""
    if new is not None and value is not None:
        raise ConfigError("cas takes the new value once: `new` or `value=`")
    new_value = new if new is not None else value
    if not isinstance(new_value, bytes):
        raise ConfigError("cas needs the new value (bytes): `new` or `value=`")
    if expected_revision is not None:
        if not isinstance(expected, _Unset):
            raise ConfigError("cas compares a value or a revision, not both")
        if isinstance(expected_revision, bool) or not isinstance(expected_revision, int) or (
                not 0 <= expected_revision <= U64_MAX):
            raise ConfigError(f"expected_revision must be an int >= 0, got "
                              f"{expected_revision!r}")
        return encode_cas_revision(key, expected_revision, new_value, client_id=client_id,
                                   seq=seq)
    if isinstance(expected, _Unset):
        raise ConfigError("cas needs `expected` (a value; None: absent) or expected_revision=")
    return encode_cas(key, expected, new_value, client_id=client_id, seq=seq)


def check_read(result: KVResult) -> KVResult:
    """A GET's result; raises engine.HistoryCompacted for a read below the MVCC horizon."""
    if result.status == Status.HISTORY_COMPACTED:
        oldest = int.from_bytes(result.value or bytes(TIMESTAMP_BYTES), "big")
        raise HistoryCompacted(oldest >> 32, oldest & 0xFFFFFFFF)
    return result


def encode_register() -> bytes:
    """Open a client session; decode the result with decode_client_id."""
    return _command(Op.REGISTER, b"", b"", 0, None, None)


def encode_query(key: bytes, *, at: bytes | None = None, revision: bool = False) -> bytes:
    """A linearizable read of key (served with ReadIndex by KVStore.query). `at`: the value
    as of that HLC timestamp (12 bytes) instead of the latest; revision=True: the result's
    revision is the value's (0: no value)."""
    return _command(Op.GET, key, b"", FLAG_WANT_REVISION if revision else 0, None, None, at)


# The name engine.aio.client uses.
encode_get_query = encode_query

_SCAN_HEAD = struct.Struct("<BBBII")   # version, op, flags, limit, max_bytes
# Bytes of a SCAN result around its rows: head, revision, value length, more, count.
SCAN_RESULT_OVERHEAD_BYTES = _HEAD.size + _U64.size + _U32.size + 1 + _U32.size
SCAN_ROW_OVERHEAD_BYTES = 2 * _U32.size   # the two lengths before a row's key and value


def prefix_end(prefix: bytes) -> bytes:
    """The smallest key above every key that starts with `prefix`, b"" (the end of the key
    space) when there is none (an empty prefix, or only 0xff bytes): scan(prefix,
    prefix_end(prefix)) is the prefix's keys (etcd's clientv3.GetPrefixRangeEnd)."""
    trimmed = prefix.rstrip(b"\xff")
    if not trimmed:
        return b""
    return trimmed[:-1] + bytes((trimmed[-1] + 1,))


def check_scan_range(start: bytes, end: bytes | None, limit: int | None) -> None:
    """ConfigError for a scan's bad arguments: limit below 1, start after a non-empty end."""
    if not isinstance(start, bytes) or not isinstance(end, bytes | None):
        raise ConfigError("scan start and end must be bytes (end None: to the end)")
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int)
                              or limit < 1):
        raise ConfigError(f"scan limit must be an int >= 1, got {limit!r}")
    if end and start > end:
        raise ConfigError(f"scan start {start!r} is after its end {end!r}")


def encode_scan(start: bytes, end: bytes | None = None, *, limit: int = U32_MAX,
                max_bytes: int = U32_MAX) -> bytes:
    """A SCAN query: at most `limit` keys of [start, end) (end None or b"": to the end of the
    key space) in a result of at most `max_bytes` (see the module docstring)."""
    check_scan_range(start, end, limit)
    if not 1 <= limit <= U32_MAX or not 1 <= max_bytes <= U32_MAX:
        raise ConfigError(f"scan limit and max_bytes must be in [1, 2**32), got "
                          f"{limit}, {max_bytes}")
    return b"".join((_SCAN_HEAD.pack(VERSION, Op.SCAN, 0, limit, max_bytes),
                     _blob(start), _blob(end or b"")))


def decode_scan(data: bytes) -> tuple[bytes, bytes, int, int]:
    """(start, end, limit, max_bytes) of a SCAN query; DecodeError for anything else."""
    if len(data) < _SCAN_HEAD.size:
        raise DecodeError(f"scan query of {len(data)} bytes is shorter than its header")
    version, op, flags, limit, max_bytes = _SCAN_HEAD.unpack_from(data, 0)
    if version != VERSION or op != Op.SCAN:
        raise DecodeError(f"not a scan query: version {version}, op {op}")
    if flags:
        raise DecodeError(f"unknown scan flags {flags:#x}")
    if limit == 0 or max_bytes == 0:
        raise DecodeError("scan limit and max_bytes must be at least 1")
    start, offset = _read_blob(data, _SCAN_HEAD.size, "scan start")
    end, offset = _read_blob(data, offset, "scan end")
    if offset != len(data):
        raise DecodeError(f"{len(data) - offset} trailing bytes after scan query")
    return start, end, limit, max_bytes


def is_scan(query: bytes) -> bool:
    """True if `query` is a SCAN (KVStore.query's dispatch; decode_scan checks the rest)."""
    return len(query) >= 2 and query[1] == Op.SCAN


def encode_scan_page(items: list[tuple[bytes, bytes]], more: bool) -> bytes:
    """The value of a SCAN result (see the module docstring)."""
    parts = [bytes((1 if more else 0,)), _U32.pack(len(items))]
    pack = _U32.pack
    for key, value in items:
        parts += (pack(len(key)), key, pack(len(value)), value)
    return b"".join(parts)


def decode_scan_result(result: KVResult) -> ScanPage:
    """The page a SCAN's KVResult carries; DecodeError if it carries none."""
    data = result.value
    if result.status != Status.OK or data is None or len(data) < 1 + _U32.size:
        raise DecodeError(f"not a scan result: {result!r}")
    more = data[0]
    if more > 1:
        raise DecodeError(f"bad scan 'more' byte {more}")
    (count,) = _U32.unpack_from(data, 1)
    if count * SCAN_ROW_OVERHEAD_BYTES > len(data):
        raise DecodeError("scan result count exceeds its size")
    offset = 1 + _U32.size
    items: list[KeyValue] = []
    for _ in range(count):
        key, offset = _read_blob(data, offset, "scan key")
        value, offset = _read_blob(data, offset, "scan value")
        items.append(KeyValue(key, value))
    if offset != len(data):
        raise DecodeError(f"{len(data) - offset} trailing bytes after scan page")
    if any(a.key >= b.key for a, b in zip(items, items[1:], strict=False)):
        raise DecodeError("scan page keys are not in increasing order")
    return ScanPage(items, bool(more), result.revision)


def encode_result(status: Status, value: bytes | None = None, previous: bytes | None = None,
                  message: str = "", *, revision: int | None = None,
                  existed: bool = False, timestamp: bytes | None = None) -> bytes:
    flags = FLAG_EXISTED if existed or previous is not None else 0
    parts = [b""]
    if revision is not None:
        flags |= FLAG_REVISION
        parts.append(_U64.pack(revision))
    if timestamp is not None:
        flags |= FLAG_RESULT_TIMESTAMP
        parts.append(timestamp)
    if value is not None:
        flags |= FLAG_VALUE
        parts.append(_blob(value))
    if previous is not None:
        flags |= FLAG_PREVIOUS
        parts.append(_blob(previous))
    if message:
        flags |= FLAG_MESSAGE
        parts.append(_blob(message.encode("utf-8", "replace")))
    parts[0] = _HEAD.pack(VERSION, status, flags)
    return b"".join(parts)


def strip_result(result: bytes) -> bytes:
    """`result` without its value, previous and message, marked NOT_RETAINED: what a session
    keeps of a result too large to keep whole. At most STRIPPED_RESULT_BYTES (head and
    revision); DecodeError for bytes shorter than a result's head."""
    if len(result) < _HEAD.size:
        raise DecodeError(f"result of {len(result)} bytes is shorter than its header")
    flags = result[2] & _RETAINED_FLAGS
    head = bytes((result[0], result[1], flags | FLAG_NOT_RETAINED))
    kept = (_U64.size if flags & FLAG_REVISION else 0) + (
        TIMESTAMP_BYTES if flags & FLAG_RESULT_TIMESTAMP else 0)
    return head + result[3:3 + kept]


# ---------------------------------------------------------------------------- decoding


def _read_blob(data: bytes, offset: int, what: str) -> tuple[bytes, int]:
    if offset + 4 > len(data):
        raise DecodeError(f"truncated {what} length at offset {offset}")
    (length,) = _U32.unpack_from(data, offset)
    start = offset + 4
    end = start + length
    if end > len(data):
        raise DecodeError(f"{what} of {length} bytes at offset {start} overruns "
                          f"{len(data)}-byte buffer")
    return data[start:end], end


def _read_head(data: bytes, what: str) -> tuple[int, int]:
    if len(data) < _HEAD.size:
        raise DecodeError(f"{what} of {len(data)} bytes is shorter than its header")
    version, code, flags = _HEAD.unpack_from(data, 0)
    if version != VERSION:
        raise DecodeError(f"unsupported {what} version {version}")
    return code, flags


def decode_command(data: bytes) -> Command:
    """Parse a command; raises DecodeError on anything malformed."""
    if not isinstance(data, bytes):
        raise DecodeError(f"command must be bytes, got {type(data).__name__}")
    op, flags = _read_head(data, "command")
    if op not in _KNOWN_OPS:
        raise DecodeError(f"unknown command op {op}")
    if flags & ~_COMMAND_FLAGS:
        raise DecodeError(f"unknown command flags {flags:#x}")
    if flags & FLAG_EXPECTED and op != Op.CAS:
        raise DecodeError("expected-value flag on a non-CAS command")
    if flags & FLAG_WANT_PREVIOUS and op not in (Op.PUT, Op.DELETE):
        raise DecodeError("previous-value flag on a command other than PUT or DELETE")
    if flags & FLAG_SESSION and op == Op.REGISTER:
        raise DecodeError("REGISTER opens a session: it cannot carry one")
    if flags & FLAG_TIMESTAMP and op == Op.REGISTER:
        raise DecodeError("REGISTER takes no timestamp")
    if flags & FLAG_WANT_REVISION and op != Op.GET:
        raise DecodeError("revision flag on a command other than GET")
    if flags & FLAG_EXPECTED_REVISION and (op != Op.CAS or flags & FLAG_EXPECTED):
        raise DecodeError("expected-revision flag outside a CAS, or with an expected value")
    offset = _HEAD.size
    client_id: int | None = None
    seq = 0
    if flags & FLAG_SESSION:
        if offset + _SESSION.size > len(data):
            raise DecodeError("truncated session")
        client_id, seq = _SESSION.unpack_from(data, offset)
        if seq == 0:
            raise DecodeError("session seq 0 is reserved")
        offset += _SESSION.size
    timestamp: int | None = None
    if flags & FLAG_TIMESTAMP:
        if offset + TIMESTAMP_BYTES > len(data):
            raise DecodeError("truncated timestamp")
        timestamp = int.from_bytes(data[offset:offset + TIMESTAMP_BYTES], "big")
        if timestamp >> 95:
            # Past 2**63 ns (the year 2262): refused, so the group clock (a tick per log
            # index above the largest stamp, KVStore "MVCC") always fits its 12 bytes.
            raise DecodeError("timestamp wall time beyond 2**63 ns")
        offset += TIMESTAMP_BYTES
    key, offset = _read_blob(data, offset, "key")
    expected_revision: int | None = None
    value: bytes | None = None
    expected: bytes | None = None
    if op == Op.PUT:
        value, offset = _read_blob(data, offset, "value")
    elif op == Op.CAS:
        if flags & FLAG_EXPECTED:
            expected, offset = _read_blob(data, offset, "expected value")
        elif flags & FLAG_EXPECTED_REVISION:
            if offset + _U64.size > len(data):
                raise DecodeError("truncated expected revision")
            (expected_revision,) = _U64.unpack_from(data, offset)
            offset += _U64.size
        value, offset = _read_blob(data, offset, "new value")
    if offset != len(data):
        raise DecodeError(f"{len(data) - offset} trailing bytes after command")
    if op == Op.REGISTER and key:
        raise DecodeError("REGISTER takes no key")
    return Command(op, key, value, expected, client_id, seq, bool(flags & FLAG_WANT_PREVIOUS),
                   timestamp, expected_revision, bool(flags & FLAG_WANT_REVISION))


def decode_read(data: bytes) -> Command:
    """Parse a query (a GET without a session, with its timestamp and revision flags);
    raises DecodeError on anything else."""
    command = decode_command(data)
    if command.op != Op.GET or command.client_id is not None:
        raise DecodeError("a query must be a GET without a session")
    return command


def decode_query(data: bytes) -> bytes:
    """Parse a query; returns the key. Raises DecodeError on anything but a session-less GET."""
    return decode_read(data).key


def decode_client_id(result: KVResult) -> int:
    """The client id a successful REGISTER result carries; DecodeError for anything else."""
    if result.status != Status.OK or result.value is None or len(result.value) != _U64.size:
        raise DecodeError(f"not a REGISTER result: {result!r}")
    return int(_U64.unpack(result.value)[0])


def encode_client_id(client_id: int) -> bytes:
    """The value of a REGISTER result (KVStore's side of decode_client_id)."""
    return _U64.pack(client_id)


def decode_result(data: bytes) -> KVResult:
    """Parse a result produced by KVStore.apply or .query; raises DecodeError if malformed."""
    if type(data) is not bytes:
        if not isinstance(data, bytes | bytearray | memoryview):
            raise DecodeError(f"result must be bytes, got {type(data).__name__}")
        data = bytes(data)
    status, flags = _read_head(data, "result")
    known = _STATUS_OF.get(status)
    if known is None:
        raise DecodeError(f"unknown result status {status}")
    if flags & ~_RESULT_FLAGS:
        raise DecodeError(f"unknown result flags {flags:#x}")
    offset = _HEAD.size
    revision: int | None = None
    value: bytes | None = None
    previous: bytes | None = None
    timestamp: bytes | None = None
    message = ""
    if flags & FLAG_REVISION:
        if offset + _U64.size > len(data):
            raise DecodeError(f"truncated revision at offset {offset}")
        (revision,) = _U64.unpack_from(data, offset)
        offset += _U64.size
    if flags & FLAG_RESULT_TIMESTAMP:
        if offset + TIMESTAMP_BYTES > len(data):
            raise DecodeError(f"truncated timestamp at offset {offset}")
        timestamp = data[offset:offset + TIMESTAMP_BYTES]
        offset += TIMESTAMP_BYTES
    if flags & FLAG_VALUE:
        value, offset = _read_blob(data, offset, "value")
    if flags & FLAG_PREVIOUS:
        previous, offset = _read_blob(data, offset, "previous value")
    if flags & FLAG_MESSAGE:
        raw, offset = _read_blob(data, offset, "message")
        message = raw.decode("utf-8", "replace")
    if offset != len(data):
        raise DecodeError(f"{len(data) - offset} trailing bytes after result")
    return KVResult(known, value, previous, message, revision,
                    bool(flags & FLAG_EXISTED) or previous is not None,
                    not flags & FLAG_NOT_RETAINED, timestamp)


__all__ = [
    "VERSION", "Op", "Status", "Command", "KVResult", "WriteResult",
    "encode_put", "encode_get", "encode_delete", "encode_cas", "encode_register", "encode_query",
    "encode_cas_revision", "decode_read", "Entry", "TIMESTAMP_BYTES", "UNSET",
    "encode_cas_call", "check_read",
    "encode_get_query", "encode_result", "KeyValue", "ScanPage", "encode_scan", "decode_scan",
    "is_scan", "encode_scan_page", "decode_scan_result", "prefix_end", "check_scan_range",
    "SCAN_RESULT_OVERHEAD_BYTES", "SCAN_ROW_OVERHEAD_BYTES", "strip_result",
    "STRIPPED_RESULT_BYTES",
    "encode_client_id",
    "decode_command", "decode_query", "decode_result", "decode_client_id",
]
