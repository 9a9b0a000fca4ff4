"""KVStore: the deterministic replicated key-value state machine (DESIGN.md §3).

Every replica applies the same commands in the same log order and must end in the same state
with the same results, so nothing here reads a clock, draws randomness or iterates a hash order
into its output: snapshots are sorted, session eviction is ordered by log index.

Exactly-once (Raft thesis §6.3). A client opens a session with REGISTER: the store answers
with a new client id, the log index the REGISTER applied at (unique, the same on every
replica), and remembers it at seq 0. A command may then carry (client_id, seq). The store
keeps, per client id, the last applied seq, its encoded result and the log index of its last
use. For a command with a session:
  * seq == last seq      -> the cached result, nothing re-applied (a retry); a result larger
                            than Limits.max_session_result_bytes is cached without its
                            value / previous / message and answered NOT_RETAINED (status,
                            revision and "existed" exact: the retry learns the command applied,
                            never that it failed);
  * seq <  last seq      -> STALE_REQUEST, nothing applied (a delayed duplicate);
  * seq >  last seq      -> applied, result cached;
  * unknown client id    -> SESSION_EXPIRED, nothing applied: the session was evicted (its
                            commands may have applied, so a retry must not apply again) or
                            never registered.
Ids come only from REGISTER, so an evicted session can never be mistaken for a new one: no
tombstones are needed, and the table stays bounded. (An earlier rule let seq 1 of an unknown id
open a session; a seq-1 write whose session was evicted before its retry arrived then applied
twice.) Sessions are bounded by Limits.max_client_sessions; past it the session least recently
used (by log index, identical on every replica) is evicted. Replicas must share that limit;
they should share max_session_result_bytes too (a retry's answer depends on it, the data never
does).

Key order. Beside the map the store keeps its keys sorted (sortedcontainers.SortedList: a
list of sorted lists, O(log n) insert and delete, O(log n + k) for k keys of a range) so a
SCAN costs O(log n + k). The order changes only when a key is created or deleted: an
overwrite, nearly every write of a steady workload, touches the map alone (the PUT fast path
reports a created key through its `created` callback). A created key is only appended to a
list of new keys (as cheap as the dict insert); the first ordered read or delete after them
merges that list into the order in one sorted batch (`_settle_order`), so a write-heavy
workload pays for ordering once per key, in bulk, and only if something reads in order.
Snapshots stay the sorted rows they were; restore rebuilds the order from them.

Memory and snapshot size: the live data, plus at most max_client_sessions sessions of
SESSION_ROW_BYTES + max(max_session_result_bytes, STRIPPED_RESULT_BYTES) bytes each
(session_bytes_bound()). A
write's result holds the previous value only when the command asks for it (FLAG_WANT_PREVIOUS),
so by default a session caches about a dozen bytes whatever the size of the values.
"""

from __future__ import annotations

import copy
import struct
from collections import OrderedDict
from collections.abc import Callable, Iterable

from sortedcontainers import SortedList

from engine._core import kvput as _kvput
from engine.errors import DecodeError, InvariantViolation
from engine.kv.commands import (
    FLAG_SESSION,
    SCAN_RESULT_OVERHEAD_BYTES,
    SCAN_ROW_OVERHEAD_BYTES,
    STRIPPED_RESULT_BYTES,
    VERSION,
    Command,
    Op,
    Status,
    decode_command,
    decode_query,
    decode_scan,
    encode_client_id,
    encode_result,
    encode_scan_page,
    is_scan,
    strip_result,
)
from engine.limits import Limits

_SNAPSHOT_MAGIC = b"EKV1"
_SNAPSHOT_HEAD = struct.Struct("<4sQQQ")   # magic, applied_index, n_keys, n_sessions
_U32 = struct.Struct("<I")
_SESSION_ROW = struct.Struct("<QQQ")      # client_id, last_seq, last_index
# A session's snapshot row without its result: ids, seq, index and the result's length.
SESSION_ROW_BYTES = _SESSION_ROW.size + _U32.size


# The PUT hot path, compiled (or its pure-Python twin): engine/_core/kvput_py.py.
_parse_put = _kvput.parse_put
_apply_put = _kvput.apply_put
_put_result = _kvput.put_result


_STALE = encode_result(Status.STALE_REQUEST, message="stale request: seq below last applied")
_EXPIRED = encode_result(
    Status.SESSION_EXPIRED, message="unknown session: expired or never registered"
)


class _Session:
    __slots__ = ("seq", "result", "index")

    def __init__(self, seq: int, result: bytes, index: int) -> None:
        self.seq = seq
        self.result = result
        self.index = index

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, _Session):
            return NotImplemented
        return (self.seq, self.result, self.index) == (other.seq, other.result, other.index)

    __hash__ = None  # type: ignore[assignment]


class KVStore:
    """A replicated map of bytes to bytes with compare-and-swap and client sessions."""

    def __init__(self, limits: Limits | None = None) -> None:
        limits = limits or Limits()
        self._max_sessions = limits.max_client_sessions
        self._max_result_bytes = limits.max_session_result_bytes
        # A SCAN page is at most one datagram, whatever the query asks (Limits).
        self._max_page_bytes = limits.max_datagram_bytes
        self._data: dict[bytes, bytes] = {}
        # The keys of _data in byte order (see the module docstring, "Key order").
        self._keys: SortedList = SortedList()
        # Keys created since the order was last settled (see "Key order"): never in _keys,
        # each at most once (a delete settles first), so at most len(_data) of them.
        self._new_keys: list[bytes] = []
        self._key_created = self._new_keys.append
        # client_id -> _Session, ordered from least to most recently used (by log index).
        self._sessions: OrderedDict[int, _Session] = OrderedDict()
        self._applied_index = 0

    # ------------------------------------------------------------------ state machine API

    @property
    def applied_index(self) -> int:
        return self._applied_index

    def apply(self, index: int, command: bytes) -> bytes:
        """Apply one committed command at log index `index`; returns the encoded result.

        Never raises on command content (a malformed command is a MALFORMED result, the same on
        every replica); raises InvariantViolation if indexes do not increase (a driver bug).
        """
        if index <= self._applied_index:
            raise InvariantViolation(
                f"apply at index {index} after index {self._applied_index} was applied"
            )
        self._applied_index = index
        # The hot path: a well-formed PUT, no Command object (engine._core.kvput).
        result = _apply_put(self._data, command, index, self._key_created)
        if result is not None:
            return result  # a PUT without a session, applied
        put = _parse_put(command)
        if put is not None:  # a PUT in a session (_apply_put took every other PUT)
            key, value, client_id, seq, want_previous = put
            answered = self._session_answer(index, client_id, seq)
            if answered is not None:
                return answered
            data = self._data
            previous = data.get(key)
            data[key] = value
            if previous is None:
                self._key_created(key)
            return self._record(client_id, seq, index,
                                _put_result(index, previous, want_previous))
        try:
            cmd = decode_command(command)
        except DecodeError as exc:
            return encode_result(Status.MALFORMED, message=f"malformed command: {exc}")
        if cmd.client_id is None:
            if cmd.op == Op.REGISTER:
                return self._register(index)
            return self._execute(index, cmd)
        answered = self._session_answer(index, cmd.client_id, cmd.seq)
        if answered is not None:
            return answered
        return self._record(cmd.client_id, cmd.seq, index, self._execute(index, cmd))

    @staticmethod
    def retry_safe(command: bytes) -> bool:
        """True if two copies of `command` in the log apply it once: a command in a session
        (the second copy is answered from the session's cache, or finds its seq stale or the
        session expired; nothing re-applies, Raft thesis §6.3). engine.Node re-sends such a
        forwarded command to a new leader (Node.propose)."""
        return len(command) >= 3 and command[0] == VERSION and bool(command[2] & FLAG_SESSION)

    def apply_batch(self, items: Iterable[tuple[int, bytes]]) -> list[bytes]:
        """Apply (index, command) pairs in order; same results as apply() one by one."""
        apply = self.apply
        return [apply(index, command) for index, command in items]

    def query(self, query: bytes) -> bytes:
        """A read served after ReadIndex (Raft §6.4); never changes state."""
        if is_scan(query):
            return self._scan_query(query)
        try:
            key = decode_query(query)
        except DecodeError as exc:
            return encode_result(Status.MALFORMED, message=f"malformed query: {exc}")
        return encode_result(Status.OK, value=self._data.get(key))

    def scan(self, start: bytes, end: bytes = b"", limit: int | None = None,
             max_bytes: int | None = None) -> tuple[list[tuple[bytes, bytes]], bool]:
        """(rows, more): at most `limit` (key, value) rows of [start, end) in key order (an
        empty end: to the end of the key space), their encoded page at most `max_bytes` long
        (engine.kv.commands, SCAN) but never empty while a key is in range; more: keys in
        range follow the last row. A local read; SCAN queries come here after ReadIndex."""
        keys = self._settle_order()
        first = keys.bisect_left(start)
        stop = keys.bisect_left(end) if end else len(keys)
        if limit is not None:
            stop_at = min(stop, first + limit)
        else:
            stop_at = stop
        budget = (max_bytes if max_bytes is not None else self._max_page_bytes)
        used = SCAN_RESULT_OVERHEAD_BYTES
        data = self._data
        rows: list[tuple[bytes, bytes]] = []
        for key in keys.islice(first, max(first, stop_at)):
            value = data[key]
            used += SCAN_ROW_OVERHEAD_BYTES + len(key) + len(value)
            if used > budget and rows:
                break   # this row would overflow the page: it opens the next one
            rows.append((key, value))
        return rows, first + len(rows) < stop

    def _settle_order(self) -> SortedList:
        """The key order with every created key merged in (one sorted batch)."""
        new_keys = self._new_keys
        if new_keys:
            self._keys.update(new_keys)
            new_keys.clear()
        return self._keys

    def _scan_query(self, query: bytes) -> bytes:
        try:
            start, end, limit, max_bytes = decode_scan(query)
        except DecodeError as exc:
            return encode_result(Status.MALFORMED, message=f"malformed query: {exc}")
        rows, more = self.scan(start, end, limit, min(max_bytes, self._max_page_bytes))
        return encode_result(Status.OK, value=encode_scan_page(rows, more),
                             revision=self._applied_index)

    # ------------------------------------------------------------------ snapshots

    def snapshot(self) -> bytes:
        """The whole state, encoded deterministically (keys and client ids sorted)."""
        parts = [_SNAPSHOT_HEAD.pack(
            _SNAPSHOT_MAGIC, self._applied_index, len(self._data), len(self._sessions)
        )]
        pack_u32 = _U32.pack
        for key, value in sorted(self._data.items()):
            parts += (pack_u32(len(key)), key, pack_u32(len(value)), value)
        for client_id in sorted(self._sessions):
            session = self._sessions[client_id]
            parts += (
                _SESSION_ROW.pack(client_id, session.seq, session.index),
                pack_u32(len(session.result)), session.result,
            )
        return b"".join(parts)

    def snapshot_fork(self) -> Callable[[], bytes]:
        """Freeze the state now and return a function that serialises the frozen copy.

        The copy is shallow (keys and values are immutable bytes), so freezing 1M keys costs
        tens of milliseconds instead of the ~0.6 s of snapshot(); the driver serialises on
        another thread while apply goes on (copy-on-write at the granularity of the map).
        """
        frozen = KVStore.__new__(KVStore)
        frozen._max_sessions = self._max_sessions
        frozen._max_result_bytes = self._max_result_bytes
        frozen._max_page_bytes = self._max_page_bytes
        frozen._data = self._data.copy()   # snapshot() sorts the rows: no key order needed
        frozen._sessions = OrderedDict(
            (client_id, copy.copy(session)) for client_id, session in self._sessions.items()
        )
        frozen._applied_index = self._applied_index
        return frozen.snapshot

    def restore(self, data: bytes) -> None:
        """Replace the whole state with a snapshot; raises DecodeError (state unchanged) if
        the snapshot is malformed."""
        applied, items, sessions = _decode_snapshot(bytes(data))
        for _, session in sessions:   # a snapshot written under a larger limit
            session.result = self._retainable(session.result)
        self._data = dict(items)
        self._keys = SortedList(self._data)   # the rows come sorted: timsort is linear
        self._new_keys = []
        self._key_created = self._new_keys.append
        # Rebuild the LRU order from the log indexes (client id breaks ties; never equal in
        # practice since one command has one index) so eviction continues identically.
        ordered = sorted(sessions, key=lambda row: (row[1].index, row[0]))
        self._sessions = OrderedDict(ordered)
        self._applied_index = applied

    # ------------------------------------------------------------------ inspection

    def __len__(self) -> int:
        return len(self._data)

    def __bool__(self) -> bool:
        # An empty store is still a state machine: `sm or KVStore()` must not replace it.
        return True

    def get(self, key: bytes) -> bytes | None:
        """Local (not linearizable) read, for tests and tools."""
        return self._data.get(key)

    def items(self) -> list[tuple[bytes, bytes]]:
        data = self._data
        return [(key, data[key]) for key in self._settle_order()]

    def keys_in_order(self) -> list[bytes]:
        """Every key in byte order (the order a SCAN reads)."""
        return list(self._settle_order())

    @property
    def session_count(self) -> int:
        return len(self._sessions)

    @property
    def session_bytes(self) -> int:
        """Bytes the session table takes in a snapshot (rows and cached results)."""
        return sum(SESSION_ROW_BYTES + len(s.result) for s in self._sessions.values())

    def session_bytes_bound(self) -> int:
        """The most the session table can take in a snapshot, from the limits."""
        per_session = SESSION_ROW_BYTES + max(self._max_result_bytes, STRIPPED_RESULT_BYTES)
        return self._max_sessions * per_session

    def session_ids(self) -> list[int]:
        """Client ids from least to most recently used."""
        return list(self._sessions)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, KVStore):
            return NotImplemented
        return (
            self._applied_index == other._applied_index and self._data == other._data
            and list(self._sessions.items()) == list(other._sessions.items())
        )

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return (f"KVStore(keys={len(self._data)}, sessions={len(self._sessions)}, "
                f"applied_index={self._applied_index})")

    # ------------------------------------------------------------------ internals

    def _session_answer(self, index: int, client_id: int, seq: int) -> bytes | None:
        """The answer to a command in a session that must not execute (Raft thesis §6.3), or
        None when it is the session's next command (execute it, then _record the result)."""
        sessions = self._sessions
        session = sessions.get(client_id)
        if session is None:
            # Raft thesis §6.3: an expired session must not silently re-apply a retry.
            return _EXPIRED
        if seq == session.seq:
            # A retry of the command already applied: answer from the cache (§6.3).
            session.index = index
            sessions.move_to_end(client_id)
            return session.result
        if seq < session.seq:
            return _STALE
        return None

    def _record(self, client_id: int, seq: int, index: int, result: bytes) -> bytes:
        """Remember a session's newest command and its result (for retries); returns it."""
        session = self._sessions[client_id]
        session.seq = seq
        # _retainable, inlined: every write in a session passes here.
        session.result = (result if len(result) <= self._max_result_bytes
                          else strip_result(result))
        session.index = index
        self._sessions.move_to_end(client_id)
        return result

    def _retainable(self, result: bytes) -> bytes:
        """What a session keeps of `result`: all of it, or past the byte limit its status,
        revision and "existed" (commands.strip_result), so the cache stays bounded."""
        if len(result) <= self._max_result_bytes:
            return result
        return strip_result(result)

    def _register(self, index: int) -> bytes:
        sessions = self._sessions
        if index in sessions:   # cannot happen: ids are log indexes, each applied once
            raise InvariantViolation(f"session {index} registered twice")
        sessions[index] = _Session(0, b"", index)
        while len(sessions) > self._max_sessions:
            sessions.popitem(last=False)   # least recently used by log index
        return encode_result(Status.OK, value=encode_client_id(index))

    def _execute(self, index: int, cmd: Command) -> bytes:
        data = self._data
        op = cmd.op
        if op == Op.PUT:
            value = cmd.value
            if value is None:  # decode_command always sets it for PUT
                raise InvariantViolation("PUT without a value")
            previous = data.get(cmd.key)
            data[cmd.key] = value
            if previous is None:
                self._key_created(cmd.key)
            return _write_result(index, previous, cmd.previous)
        if op == Op.GET:
            return encode_result(Status.OK, value=data.get(cmd.key))
        if op == Op.DELETE:
            previous = data.pop(cmd.key, None)
            if previous is not None:
                self._settle_order().remove(cmd.key)
            return _write_result(index, previous, cmd.previous)
        if op == Op.CAS:
            current = data.get(cmd.key)
            if current != cmd.expected or cmd.value is None:
                return encode_result(Status.CAS_MISMATCH, value=current)
            data[cmd.key] = cmd.value
            if current is None:
                self._key_created(cmd.key)
            # The previous value is the expected one, which the client sent: not repeated.
            return encode_result(Status.OK, revision=index, existed=current is not None)
        raise InvariantViolation(f"op {op} passed decoding but has no handler")


def _write_result(index: int, previous: bytes | None, want_previous: bool) -> bytes:
    """An applied PUT's or DELETE's result: revision, existed, the previous value if asked."""
    return encode_result(Status.OK, previous=previous if want_previous else None,
                         revision=index, existed=previous is not None)


def _decode_snapshot(
    data: bytes,
) -> tuple[int, list[tuple[bytes, bytes]], list[tuple[int, _Session]]]:
    if len(data) < _SNAPSHOT_HEAD.size:
        raise DecodeError(f"KV snapshot of {len(data)} bytes is shorter than its header")
    magic, applied, n_keys, n_sessions = _SNAPSHOT_HEAD.unpack_from(data, 0)
    if magic != _SNAPSHOT_MAGIC:
        raise DecodeError(f"KV snapshot has bad magic {magic!r}")
    offset = _SNAPSHOT_HEAD.size

    def blob(what: str) -> bytes:
        nonlocal offset
        if offset + 4 > len(data):
            raise DecodeError(f"KV snapshot truncated in {what} length at offset {offset}")
        (length,) = _U32.unpack_from(data, offset)
        end = offset + 4 + length
        if end > len(data):
            raise DecodeError(f"KV snapshot truncated in {what} at offset {offset}")
        out = data[offset + 4:end]
        offset = end
        return out

    # Every row takes at least 8 bytes (key) or 28 bytes (session): reject absurd counts
    # before looping so a corrupt count cannot make us spin.
    if n_keys * 8 + n_sessions * 28 > len(data) - offset:
        raise DecodeError("KV snapshot counts exceed its size")
    items = [(blob("key"), blob("value")) for _ in range(n_keys)]
    sessions: list[tuple[int, _Session]] = []
    for _ in range(n_sessions):
        if offset + _SESSION_ROW.size > len(data):
            raise DecodeError(f"KV snapshot truncated in session at offset {offset}")
        client_id, seq, index = _SESSION_ROW.unpack_from(data, offset)
        offset += _SESSION_ROW.size
        sessions.append((client_id, _Session(seq, blob("session result"), index)))
    if offset != len(data):
        raise DecodeError(f"{len(data) - offset} trailing bytes after KV snapshot")
    if len({key for key, _ in items}) != len(items):
        raise DecodeError("KV snapshot repeats a key")
    if len({client_id for client_id, _ in sessions}) != len(sessions):
        raise DecodeError("KV snapshot repeats a client id")
    return applied, items, sessions
