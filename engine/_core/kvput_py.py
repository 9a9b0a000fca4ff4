"""The replicated KV store's PUT hot path: the pure-Python twin of kvput_c.

engine.kv.store applies every committed command; a PUT is nearly all of them under load, and
decoding it into a Command object and encoding the result cost more than the rest of a write
on the leader. These two functions do exactly what the general path does for a well-formed PUT
and answer None for anything else, which then takes decode_command's path with its exact
errors (tests/kv/test_put_fast_path.py holds both twins to decode_command and to the general
path, result for result and state for state).

Wire format (engine/kv/commands.py, docs/interfaces.md), little-endian, nothing after the value:
    PUT     u8 version = 1, u8 op = PUT (1), u8 flags (SESSION (1) and WANT_PREVIOUS (4) may be
            set; SESSION is followed by u64 client_id and u64 seq, seq >= 1), u32 key length,
            key, u32 value length, value
    result  u8 version = 1, u8 status = OK (0), u8 flags = REVISION (8), | EXISTED (16) if the
            key had a value, | PREVIOUS (2) if WANT_PREVIOUS and it had; u64 revision (the log
            index); with PREVIOUS, u32 length and the value the key held before
The result holds the previous value only when the command asks for it, so neither a result
nor a session's cached copy of it grows with the values a write replaces.

Versions (engine.kv.store, "MVCC"): with a `versions` table apply_put also records the key's
revision (the log index of the write that set its value) and, on an overwrite, hands the
replaced value to Versions.push, so the value map stays the flat dict a plain write touches
and superseded versions live only in the side table. A PUT carrying a timestamp (command flag
0x08) is not a plain write: it takes the general path, which stamps it.
"""

from __future__ import annotations

import struct
from collections.abc import Callable

VERSION = 1
OP_PUT = 1
FLAG_SESSION = 0x01
FLAG_WANT_PREVIOUS = 0x04
FLAG_PREVIOUS = 0x02
FLAG_REVISION = 0x08
FLAG_EXISTED = 0x10
STATUS_OK = 0

_PUT_PREFIX = bytes((VERSION, OP_PUT))
_SESSION_FLAGS = (FLAG_SESSION, FLAG_SESSION | FLAG_WANT_PREVIOUS)
_U32 = struct.Struct("<I")
_SESSION_IDS = struct.Struct("<QQ")
_RESULT_HEAD = struct.Struct("<BBBQ")   # version, status, flags, revision


def parse_put(command: bytes) -> tuple[bytes, bytes, int | None, int, bool] | None:
    """(key, value, client_id, seq, previous) of a well-formed PUT (client_id None and seq 0
    without a session; previous: the result is to carry the previous value), or None for
    anything else (another op, a malformed PUT, session seq 0)."""
    if type(command) is not bytes or command[:2] != _PUT_PREFIX:
        return None
    flags = command[2] if len(command) > 2 else -1
    if flags in (0, FLAG_WANT_PREVIOUS):
        offset = 3
        client_id: int | None = None
        seq = 0
    elif flags in _SESSION_FLAGS and len(command) >= 19:
        client_id, seq = _SESSION_IDS.unpack_from(command, 3)
        if seq == 0:
            return None
        offset = 19
    else:
        return None
    end = len(command)
    if offset + 4 > end:
        return None
    key_end = offset + 4 + _U32.unpack_from(command, offset)[0]
    if key_end + 4 > end:
        return None
    value_end = key_end + 4 + _U32.unpack_from(command, key_end)[0]
    if value_end != end:
        return None
    return (command[offset + 4:key_end], command[key_end + 4:value_end], client_id, seq,
            bool(flags & FLAG_WANT_PREVIOUS))


def put_result(revision: int, previous: bytes | None, want_previous: bool) -> bytes:
    """The encoded result of a PUT applied at log index `revision` over `previous`."""
    if previous is None:
        return _RESULT_HEAD.pack(VERSION, STATUS_OK, FLAG_REVISION, revision)
    if not want_previous:
        return _RESULT_HEAD.pack(VERSION, STATUS_OK, FLAG_REVISION | FLAG_EXISTED, revision)
    return b"".join((
        _RESULT_HEAD.pack(VERSION, STATUS_OK, FLAG_REVISION | FLAG_EXISTED | FLAG_PREVIOUS,
                          revision),
        _U32.pack(len(previous)), previous,
    ))


# Bytes a superseded version is accounted beyond its key and value (its tuple slots, the
# queue record): Versions.nbytes, bounded by Limits.max_mvcc_history_bytes.
VERSION_OVERHEAD_BYTES = 64


class Versions:
    """The MVCC side table of a KVStore: `revisions` maps each key with a value to the log
    index of the write that set it; `history` maps a key to its superseded versions, oldest
    first, as one flat tuple (revision, value, revision, value, ...) (value None: the key was
    deleted at that revision); `queue` lists (end_revision, key) of every superseded version
    flat and in the order they were superseded, from `head` on (the garbage collector's
    order: a version can be dropped once no read at or above the horizon can see it).
    `nbytes` is what the kept versions are accounted (VERSION_OVERHEAD_BYTES each plus key and
    value); when a push takes it past `max_bytes`, `on_full` is called (KVStore collects).
    Tuples, not lists: a frozen copy of the table (KVStore.snapshot_fork) is a shallow copy."""

    __slots__ = ("revisions", "history", "queue", "head", "nbytes", "max_bytes", "on_full",
                 "keep")

    def __init__(self, max_bytes: int, on_full: Callable[[], object] | None = None) -> None:
        self.revisions: dict[bytes, int] = {}
        self.history: dict[bytes, tuple[object, ...]] = {}
        self.queue: list[object] = []
        self.head = 0
        self.nbytes = 0
        self.max_bytes = max_bytes
        self.on_full = on_full
        # False: no history at all (Limits.mvcc_retention_s = 0): push records nothing.
        self.keep = True

    def push(self, key: bytes, value: bytes | None, revision: int, end_revision: int) -> None:
        """Record the version of `key` that `revision` set (value None: a deletion) as
        superseded at `end_revision` (for a deletion: its own revision)."""
        if not self.keep:
            return
        history = self.history
        kept = history.get(key)
        history[key] = (revision, value) if kept is None else kept + (revision, value)
        queue = self.queue
        queue.append(end_revision)
        queue.append(key)
        self.nbytes += len(key) + (0 if value is None else len(value)) + VERSION_OVERHEAD_BYTES
        if self.nbytes > self.max_bytes and self.on_full is not None:
            self.on_full()

    def drop_oldest(self, target_bytes: int) -> int:
        """Drop the oldest superseded versions until at most `target_bytes` are kept;
        returns the revision that ended the last one dropped (0: none dropped). The caller
        raises its horizon to it and drops the versions ended at that same revision."""
        queue = self.queue
        end = 0
        while self.nbytes > target_bytes and self.head < len(queue):
            end = queue[self.head]  # type: ignore[assignment]
            self.drop_through(end)
        return end

    def drop_through(self, revision: int) -> None:
        """Drop every version superseded at or below `revision`, oldest first (each is
        its key's oldest kept version: a key's versions are superseded in order)."""
        queue = self.queue
        head = self.head
        history = self.history
        nbytes = self.nbytes
        end = len(queue)
        while head < end and queue[head] <= revision:  # type: ignore[operator]
            key: bytes = queue[head + 1]  # type: ignore[assignment]
            head += 2
            kept = history[key]
            value = kept[1]
            nbytes -= len(key) + VERSION_OVERHEAD_BYTES + (
                0 if value is None else len(value))  # type: ignore[arg-type]
            if len(kept) == 2:
                del history[key]
            else:
                history[key] = kept[2:]
        self.nbytes = nbytes
        # The consumed prefix goes once it is most of the list: amortised O(1) per record.
        if head > 1024 and 2 * head > end:
            del queue[:head]
            head = 0
        self.head = head


def apply_put(data: dict[bytes, bytes], command: bytes, index: int,
              created: Callable[[bytes], object] | None = None,
              versions: Versions | None = None) -> bytes | None:
    """Apply a well-formed PUT without a session, at log index `index`, to `data` and return
    its encoded result; None, with `data` untouched, for any other command. `created` is
    called with the key, after the store, when the PUT creates it (not when it overwrites):
    KVStore keeps its key order with it, so an overwrite costs nothing more. With `versions`
    the key's revision becomes `index` and an overwritten value is pushed there."""
    put = parse_put(command)
    if put is None or put[2] is not None:
        return None
    key = put[0]
    previous = data.get(key)
    data[key] = put[1]
    if versions is not None:
        revisions = versions.revisions
        replaced = revisions.get(key)
        revisions[key] = index
        if previous is not None:
            versions.push(key, previous, replaced or 0, index)
    if previous is None and created is not None:
        created(key)
    return put_result(index, previous, put[4])
