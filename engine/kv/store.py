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

MVCC. Every write creates a version of its key: the PUT, DELETE or CAS at log index r sets
the key's value (a DELETE: no value) from r on; r is the version's *revision* (get_entry,
cas on expected_revision). Versions are also ordered by HLC timestamp (engine.txn.hlc), and
apply stays deterministic because a timestamp is a function of the log alone:
  * the group's clock ts(r) is defined for every log index: the last *anchor* (r0, t0) at
    or below r gives ts(r) = t0 + (r - r0), one logical tick per index (the 96-bit int
    wall_ns << 32 | logical, whose + 1 is Timestamp.next());
  * a command may carry an HLC timestamp stamped by its proposer (a transaction
    coordinator, or any client keeping an HLC). Applied at index r, it takes
    max(stamp, ts(r)): a stamp above the group's clock becomes a new anchor (r, stamp)
    (the HLC receive rule), a stamp at or below it is pushed up to ts(r), just above the
    group's latest version, as CockroachDB pushes a write below its timestamp cache. The
    result of a stamped write carries the timestamp it took;
  * a plain write (no stamp) takes ts(r) and costs nothing more: the PUT fast path
    (engine._core.kvput) never computes a timestamp.
So timestamps strictly increase with the log index within a group, every replica derives
the same ones, and a group that never sees a stamp keeps a logical clock (0, r).
Layout: `_data` holds the latest value of each key (the flat dict the fast path writes),
Versions.revisions the revision of that value, and Versions.history the versions a write
replaced or a delete ended, touched only on overwrite and delete: a plain write to a new key
adds one revision, an overwrite pushes the replaced value (kvput.Versions).
Reads at a timestamp (query / get with `at`): the version with the largest timestamp at or
below it. A read above the group's latest timestamp sees the latest value; the store keeps
no timestamp cache, so a later plain write may still take a timestamp at or below it.
Garbage collection past a horizon: versions are kept while a read at or above the horizon
could see them, and reads below it answer HISTORY_COMPACTED (engine.HistoryCompacted) with
the horizon. The horizon only rises, to the latest timestamp less Limits.mvcc_retention_s
(at each stamped write: only stamps move the clock by more than a tick, and the log's
timestamps, never a clock, measure the retention) and higher whenever the kept versions
and anchors would pass Limits.max_mvcc_history_bytes (the oldest go first, down to 7/8 of
the bound, so a store at its bound collects once per many writes). Superseded
versions are dropped in the order they were superseded (Versions.queue), anchors whose
successor is at or below the horizon with them: memory is bounded by that limit.

Coordination (docs/coordination.md). The store carries a CoordState (leases, locks,
elections) and a WatchLog. COORD and PUT_EX commands (engine.kv.coord) run in sessions like
any write; coordination queries read them. A fenced PUT_EX runs check_fence here, in the
apply path, so every replica refuses the same stale writes (FencingTokenStale, answered
REFUSED). Every write records a watch event at its revision: writes through Python at once,
fast-path PUTs as a queue of their commands (a run of consecutive indexes ending at the
applied index, flushed before any other command applies) turned into events in bulk when
the history is read or snapshotted, so a plain PUT pays a deque append and a byte count.
A key put under a lease remembers the revision of that put (`_lease_rev`); when the lease
ends, each of its keys still holding that revision is deleted at the end's revision with a
DELETE event, and a key overwritten since (the fast path does not detach) stays.

Memory and snapshot size: the live data, plus at most max_client_sessions sessions of
SESSION_ROW_BYTES + max(max_session_result_bytes, STRIPPED_RESULT_BYTES) bytes each
(session_bytes_bound()), plus the watch history (Limits.watch_history_bytes). A
write's result holds the previous value only when the command asks for it (FLAG_WANT_PREVIOUS),
so by default a session caches about a dozen bytes whatever the size of the values.
"""

from __future__ import annotations

import copy
import struct
from bisect import bisect_right
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable

from sortedcontainers import SortedList

from engine._core import kvput as _kvput
from engine.coord import commands as _coord_commands
from engine.coord.codec import Reader
from engine.coord.lease import Lease
from engine.coord.state import CoordState
from engine.coord.watch import (
    DELETE,
    PUT,
    WATCH_EVENT_OVERHEAD_BYTES,
    WatchEvent,
    WatchLog,
    put_event,
)
from engine.errors import (
    Compacted,
    DecodeError,
    EngineError,
    FencingTokenStale,
    HistoryCompacted,
    InvariantViolation,
    LeaseNotFound,
)
from engine.kv import coord as _coord
from engine.kv.commands import (
    FLAG_SESSION,
    SCAN_RESULT_OVERHEAD_BYTES,
    SCAN_ROW_OVERHEAD_BYTES,
    STRIPPED_RESULT_BYTES,
    TIMESTAMP_BYTES,
    VERSION,
    Command,
    Entry,
    Op,
    Status,
    decode_command,
    decode_read,
    decode_scan,
    encode_client_id,
    encode_result,
    encode_scan_page,
    is_scan,
    strip_result,
)
from engine.limits import Limits

# EKV3 (EKV2 and a coordination section) is written; EKV2 (with revisions, anchors and
# superseded versions, no coordination state) and EKV1 still restore.
_SNAPSHOT_MAGIC = b"EKV3"
_SNAPSHOT_MAGIC_V2 = b"EKV2"
_SNAPSHOT_MAGIC_V1 = b"EKV1"
_VERSIONED = (_SNAPSHOT_MAGIC, _SNAPSHOT_MAGIC_V2)
_SNAPSHOT_HEAD = struct.Struct("<4sQQQ")   # magic, applied_index, n_keys, n_sessions
# EKV2 after the head: n_anchors, n_history_keys, the horizon (12-byte timestamp).
_SNAPSHOT_MVCC = struct.Struct("<QQ12s")
_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")
_ANCHOR = struct.Struct("<Q12s")           # revision, timestamp
_HISTORY_ROW = struct.Struct("<QB")        # revision, 1 if it holds a value (else deleted)
# What an anchor is accounted against Limits.max_mvcc_history_bytes (two list slots, two ints).
ANCHOR_BYTES = 64
_NS = 1_000_000_000
_SESSION_ROW = struct.Struct("<QQQ")      # client_id, last_seq, last_index
# A session's snapshot row without its result: ids, seq, index and the result's length.
SESSION_ROW_BYTES = _SESSION_ROW.size + _U32.size


# The PUT hot path, compiled (or its pure-Python twin): engine/_core/kvput_py.py.
_parse_put = _kvput.parse_put
_apply_put = _kvput.apply_put
_put_result = _kvput.put_result
_store_value = _kvput.store_value
VERSION_OVERHEAD_BYTES = _kvput.VERSION_OVERHEAD_BYTES


def _ts_bytes(timestamp: int) -> bytes:
    return timestamp.to_bytes(TIMESTAMP_BYTES, "big")


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
        # MVCC (module docstring): the retention in timestamp units, the byte bound, the
        # side table of revisions and superseded versions, the group clock's anchors and
        # the horizon (a timestamp) with the largest revision at or below it.
        self._retention = (limits.mvcc_retention_s * _NS) << 32
        self._max_history_bytes = limits.max_mvcc_history_bytes
        self._reset_versions()
        self._limits = limits
        self._reset_coord(0)
        # Lease ids a coordination command touched, for the leader's Lessor (the node drains
        # them on its tick, engine.aio.node_leases); collected only while tracking is on.
        self.track_leases = False
        self.touched_leases: list[int] = []

    def _reset_coord(self, revision: int) -> None:
        """Leases, locks and elections, and the watch history from `revision` + 1 on."""
        self.coord = CoordState(self._limits)
        self.watch_log = WatchLog(self._limits, initial_revision=revision)
        # The revision a key was put at under its lease (module docstring, "Coordination").
        self._lease_rev: dict[bytes, int] = {}
        # Fast-path PUTs not yet recorded as watch events: the commands of one run of
        # consecutive log indexes ending at the applied index (any other command flushes
        # them first), the newest watch_history_events of them (older ones could only fall
        # out of the ring).
        self._pending: deque[bytes] = deque(maxlen=max(1, self._limits.watch_history_events))
        self._pending_append = self._pending.append
        # Their bytes, kept under twice the watch history's byte bound (_shed_pending): the
        # ring could not hold more of them, and big values must not pile up here.
        self._pending_bytes = 0
        self._pending_max = 2 * max(1, self._limits.watch_history_bytes)
        self._pending_shed = False

    def _reset_versions(self) -> None:
        self._versions = _kvput.Versions(self._max_history_bytes, self._collect)
        self._versions.keep = self._retention > 0
        self._revisions = self._versions.revisions
        self._anchor_revisions: list[int] = [0]
        self._anchor_timestamps: list[int] = [0]
        self._horizon = 0
        self._horizon_revision = 0

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
        result = _apply_put(self._data, command, index, self._key_created, self._versions)
        if result is not None:
            self._pending_append(command)   # its watch event, made when read
            self._pending_bytes += len(command)
            if self._pending_bytes > self._pending_max:
                self._shed_pending()
            return result  # a PUT without a session, applied
        if self._pending:
            self._flush_events(index - 1)
        put = _parse_put(command)
        if put is not None:  # a PUT in a session (_apply_put took every other PUT)
            key, value, client_id, seq, want_previous = put
            answered = self._session_answer(index, client_id, seq)
            if answered is not None:
                return answered
            return self._record(client_id, seq, index,
                                _put_result(index, self._put(index, key, value),
                                            want_previous))
        if len(command) > 1 and command[1] in _COORD_OPS:
            return self._apply_coord(index, command)
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
        if len(query) > 1 and query[1] == _coord.OP_COORD_QUERY:
            return self._coord_query(query)
        try:
            cmd = decode_read(query)
        except DecodeError as exc:
            return encode_result(Status.MALFORMED, message=f"malformed query: {exc}")
        return self._get_result(cmd)

    def _get_result(self, cmd: Command) -> bytes:
        """A GET's result: the value (as of cmd.timestamp if it has one) and, if asked, its
        revision; HISTORY_COMPACTED with the horizon for a timestamp below it."""
        if cmd.timestamp is None and not cmd.want_revision:
            return encode_result(Status.OK, value=self._data.get(cmd.key))
        found = self._read(cmd.key, cmd.timestamp)
        if found is None:
            return encode_result(Status.HISTORY_COMPACTED, value=_ts_bytes(self._horizon_now()),
                                 message="read below the MVCC horizon")
        value, revision = found
        return encode_result(Status.OK, value=value,
                             revision=revision if cmd.want_revision else None)

    def _read(self, key: bytes, at: int | None) -> tuple[bytes | None, int] | None:
        """(value, revision) of `key` as of timestamp `at` (None: the latest), (None, 0)
        when it had no value then; None when `at` is below the horizon."""
        revision = self._revisions.get(key)
        if at is None:
            return (None, 0) if revision is None else (self._data[key], revision)
        if at < self._horizon_now():
            return None
        visible = self._revision_at(at)
        if revision is not None and revision <= visible:
            return self._data[key], revision
        kept = self._versions.history.get(key)
        if kept:
            for i in range(len(kept) - 2, -1, -2):
                if kept[i] <= visible:
                    value = kept[i + 1]
                    return (None, 0) if value is None else (value, kept[i])
        return None, 0

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
        """The whole state, encoded deterministically (keys and client ids sorted): EKV3,
        the head, then MVCC counts and horizon, rows (key, value, u64 revision), sessions,
        anchors (u64 revision, timestamp), superseded versions per key in key order (key,
        u32 count, count x (u64 revision, u8 has value, [u32 length, value])), then the
        coordination section (_coord_section)."""
        history = self._versions.history
        anchors = self._anchor_revisions
        parts = [_SNAPSHOT_HEAD.pack(
            _SNAPSHOT_MAGIC, self._applied_index, len(self._data), len(self._sessions)
        ), _SNAPSHOT_MVCC.pack(len(anchors), len(history), _ts_bytes(self._horizon))]
        pack_u32 = _U32.pack
        pack_u64 = _U64.pack
        revisions = self._revisions
        for key, value in sorted(self._data.items()):
            parts += (pack_u32(len(key)), key, pack_u32(len(value)), value,
                      pack_u64(revisions[key]))
        for client_id in sorted(self._sessions):
            session = self._sessions[client_id]
            parts += (
                _SESSION_ROW.pack(client_id, session.seq, session.index),
                pack_u32(len(session.result)), session.result,
            )
        for revision, timestamp in zip(anchors, self._anchor_timestamps, strict=True):
            parts.append(_ANCHOR.pack(revision, _ts_bytes(timestamp)))
        pack_row = _HISTORY_ROW.pack
        for key in sorted(history):
            kept = history[key]
            parts += (pack_u32(len(key)), key, pack_u32(len(kept) // 2))
            for i in range(0, len(kept), 2):
                value = kept[i + 1]
                if value is None:
                    parts.append(pack_row(kept[i], 0))
                else:
                    parts += (pack_row(kept[i], 1), pack_u32(len(value)), value)
        parts.append(self._coord_section())
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
        # The version table's tuples are immutable: shallow copies freeze it.
        frozen._versions = _kvput.Versions(self._max_history_bytes)
        frozen._versions.history = self._versions.history.copy()
        frozen._revisions = frozen._versions.revisions = self._revisions.copy()
        frozen._anchor_revisions = list(self._anchor_revisions)
        frozen._anchor_timestamps = list(self._anchor_timestamps)
        frozen._horizon = self._horizon
        frozen._sessions = OrderedDict(
            (client_id, copy.copy(session)) for client_id, session in self._sessions.items()
        )
        frozen._applied_index = self._applied_index
        # Coordination: the tables encoded now (small), the watch history's immutable events
        # shallow-copied into a log of their own.
        if self._pending:
            self._flush_events()
        coord = self.coord.snapshot()
        frozen.coord = CoordState(self._limits)
        frozen.coord.snapshot = lambda: coord   # type: ignore[method-assign]
        frozen.watch_log = self.watch_log.frozen_copy()
        frozen._lease_rev = dict(self._lease_rev)
        frozen._pending = deque()
        return frozen.snapshot

    def restore(self, data: bytes) -> None:
        """Replace the whole state with a snapshot; raises DecodeError (state unchanged) if
        the snapshot is malformed."""
        applied, items, sessions, mvcc, section = _decode_snapshot(bytes(data))
        coord, watch_log, lease_rev = self._decode_coord(section, applied, items)
        for _, session in sessions:   # a snapshot written under a larger limit
            session.result = self._retainable(session.result)
        self._reset_versions()
        self.coord, self.watch_log, self._lease_rev = coord, watch_log, lease_rev
        self._pending.clear()
        self._pending_bytes = 0
        self._pending_shed = False
        self._data = {key: value for key, value, _ in items}
        # An EKV1 snapshot has no revisions: its values take the snapshot's index, which is
        # at or above their true revision, so a cas on a revision a client learned before
        # can only fail, never swap a value it did not see.
        self._revisions.update((key, revision or applied) for key, _, revision in items)
        if mvcc is not None:
            anchors, history, horizon = mvcc
            self._anchor_revisions = [revision for revision, _ in anchors]
            self._anchor_timestamps = [timestamp for _, timestamp in anchors]
            self._horizon = horizon
            self._horizon_revision = self._revision_at(horizon)
            versions = self._versions
            versions.history = dict(history)
            versions.max_bytes = self._max_history_bytes - self._anchor_bytes()
            versions.queue = _gc_queue(history, self._revisions)
            versions.nbytes = sum(
                (len(key) + VERSION_OVERHEAD_BYTES) * (len(kept) // 2)
                + sum(len(value) for value in kept[1::2] if isinstance(value, bytes))
                for key, kept in history)
            if self.history_bytes > self._max_history_bytes:   # written under a larger limit
                self._collect()
        self._keys = SortedList(self._data)   # the rows come sorted: timsort is linear
        self._new_keys = []
        self._key_created = self._new_keys.append
        # Rebuild the LRU order from the log indexes (client id breaks ties; never equal in
        # practice since one command has one index) so eviction continues identically.
        ordered = sorted(sessions, key=lambda row: (row[1].index, row[0]))
        self._sessions = OrderedDict(ordered)
        self._applied_index = applied

    def _decode_coord(self, section: bytes | None, applied: int,
                      items: list[tuple[bytes, bytes, int | None]]
                      ) -> tuple[CoordState, WatchLog, dict[bytes, int]]:
        """The coordination state of a snapshot's section; an EKV1 or EKV2 snapshot has
        none: no leases or locks, and watch history only after the snapshot's index."""
        coord = CoordState(self._limits)
        watch_log = WatchLog(self._limits, initial_revision=applied)
        lease_rev: dict[bytes, int] = {}
        if section is None:
            return coord, watch_log, lease_rev
        body = Reader(section, "KV coordination")
        coord.restore(body.blob("coordination state"))
        watch_log.restore(body.blob("watch log"))
        revisions = {key: revision for key, _, revision in items}
        for _ in range(body.count("leased keys", 12)):
            key, revision = body.blob("leased key"), body.u64("leased revision")
            if coord.leases.lease_of(key) is None or revisions.get(key) is None:
                raise DecodeError(f"KV snapshot: leased key {key!r} without a lease or value")
            lease_rev[key] = revision
        body.end()
        if watch_log.last_revision > applied:
            raise DecodeError("KV snapshot: watch history past the applied index")
        return coord, watch_log, lease_rev

    # ------------------------------------------------------------------ inspection

    def __len__(self) -> int:
        return len(self._data)

    def __bool__(self) -> bool:
        # An empty store is still a state machine: `sm or KVStore()` must not replace it.
        return True

    def get(self, key: bytes, at: bytes | None = None) -> bytes | None:
        """Local (not linearizable) read, for tests and tools; `at`: as of that HLC
        timestamp (12 bytes; HistoryCompacted below the horizon)."""
        return self.get_entry(key, at).value

    def get_entry(self, key: bytes, at: bytes | None = None) -> Entry:
        """Local read of (value, revision); (None, 0) when the key has no value."""
        if at is None:
            found = self._read(key, None)
        else:
            if type(at) is not bytes or len(at) != TIMESTAMP_BYTES:
                raise ValueError("`at` is a 12-byte encoded HLC timestamp")
            found = self._read(key, int.from_bytes(at, "big"))
        if found is None:
            horizon = self._horizon_now()
            raise HistoryCompacted(horizon >> 32, horizon & 0xFFFFFFFF)
        return Entry(*found)

    @property
    def horizon(self) -> bytes:
        """The oldest timestamp a read can still be answered at (12 bytes)."""
        return _ts_bytes(self._horizon_now())

    @property
    def latest_timestamp(self) -> bytes:
        """The group clock at the last applied index (12 bytes): the timestamp the newest
        write took if it applied there."""
        return _ts_bytes(self._timestamp_at(self._applied_index))

    @property
    def history_bytes(self) -> int:
        """What the kept superseded versions and the clock's anchors are accounted, at most
        Limits.max_mvcc_history_bytes."""
        return self._versions.nbytes + self._anchor_bytes()

    def version_count(self) -> int:
        """Superseded versions kept (deletions included)."""
        return sum(len(kept) // 2 for kept in self._versions.history.values())

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
        mine, theirs = self._versions, other._versions
        return (
            self._applied_index == other._applied_index and self._data == other._data
            and list(self._sessions.items()) == list(other._sessions.items())
            and self._revisions == other._revisions and mine.history == theirs.history
            and mine.queue[mine.head:] == theirs.queue[theirs.head:]
            and mine.nbytes == theirs.nbytes and self._horizon == other._horizon
            and self._anchor_revisions == other._anchor_revisions
            and self._anchor_timestamps == other._anchor_timestamps
            and self._coord_section() == other._coord_section()
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

    def _put(self, index: int, key: bytes, value: bytes) -> bytes | None:
        """Set key to value at log index `index` (its new revision); returns the value it
        replaced, pushed to the version history (kvput.store_value, the fast path's own),
        and records the change for watches."""
        previous = _store_value(self._data, key, value, index, self._key_created,
                                self._versions)
        self._event(WatchEvent(PUT, key, value, index))
        return previous

    def _delete(self, index: int, key: bytes) -> bytes | None:
        """Delete key at log index `index`; returns the value it had (None: no change)."""
        previous = self._data.pop(key, None)
        if previous is not None:
            self._settle_order().remove(key)
            versions = self._versions
            versions.push(key, previous, self._revisions.pop(key), index)
            versions.push(key, None, index, index)   # the deletion, a version of its own
            if self._lease_rev.pop(key, None) is not None:
                self.coord.leases.detach(key)
            self._event(WatchEvent(DELETE, key, None, index))
        return previous

    def _execute(self, index: int, cmd: Command) -> bytes:
        data = self._data
        op = cmd.op
        key = cmd.key
        if op == Op.GET:
            return self._get_result(cmd)
        stamp = None
        if cmd.timestamp is not None and op != Op.REGISTER:
            stamp = _ts_bytes(self._stamp(index, cmd.timestamp))
        if op == Op.PUT:
            value = cmd.value
            if value is None:  # decode_command always sets it for PUT
                raise InvariantViolation("PUT without a value")
            return _write_result(index, self._put(index, key, value), cmd.previous, stamp)
        if op == Op.DELETE:
            return _write_result(index, self._delete(index, key), cmd.previous, stamp)
        if op == Op.CAS:
            current = data.get(key)
            if cmd.expected_revision is not None:
                revision = self._revisions.get(key, 0)
                if revision != cmd.expected_revision or cmd.value is None:
                    return encode_result(Status.CAS_MISMATCH, value=current, revision=revision,
                                         timestamp=stamp)
            elif current != cmd.expected or cmd.value is None:
                return encode_result(Status.CAS_MISMATCH, value=current, timestamp=stamp)
            self._put(index, key, cmd.value)
            # The previous value is the expected one, which the client sent: not repeated.
            return encode_result(Status.OK, revision=index, existed=current is not None,
                                 timestamp=stamp)
        raise InvariantViolation(f"op {op} passed decoding but has no handler")

    # ------------------------------------------------------------------ coordination

    def _event(self, event: WatchEvent) -> None:
        """Record one change in the watch history (apply flushed the fast-path PUTs before
        it first)."""
        self.watch_log.record(event)

    def _shed_pending(self) -> None:
        """Drop the oldest queued PUTs down to half the bound: the ring keeps at most
        watch_history_bytes of events, so they could not all be kept anyway."""
        pending = self._pending
        target = self._pending_max // 2
        while self._pending_bytes > target and pending:
            self._pending_bytes -= len(pending.popleft())
        self._pending_shed = True

    def _flush_events(self, end: int | None = None) -> None:
        """Turn the fast-path PUTs, the run of indexes ending at `end` (default: the applied
        index), into watch events: only the newest that the ring can hold, by its own
        measure (so the ring ends the same whenever the queue is flushed: replicas that
        served watches at different moments keep equal histories). When older PUTs fell out
        of the queue or do not fit, nothing below the first one kept is retained any more.
        Dropping from the queue never drops a PUT the ring would keep: the queue's bounds
        are above the ring's (a command is longer than its key and value)."""
        pending = self._pending
        log = self.watch_log
        count = len(pending)
        end_index = self._applied_index if end is None else end
        limits = self._limits
        budget = limits.watch_history_bytes
        parse = _parse_put
        events: list[WatchEvent] = []
        append = events.append
        index = end_index
        for command in reversed(pending):
            if len(events) == limits.watch_history_events:
                break
            put = parse(command)
            if put is None:
                raise InvariantViolation("a queued fast-path PUT does not parse")
            key, value = put[0], put[1]
            budget -= WATCH_EVENT_OVERHEAD_BYTES + len(key) + len(value)
            if budget < 0:
                break
            append(put_event(key, value, index))
            index -= 1
        if len(events) < count or count == pending.maxlen or self._pending_shed:
            log.skip_to(index + 1)
        events.reverse()
        pending.clear()
        self._pending_bytes = 0
        self._pending_shed = False
        log.extend(events)

    def _apply_coord(self, index: int, command: bytes) -> bytes:
        """A COORD or PUT_EX command (engine.kv.coord), in its session if it has one."""
        try:
            op, client_id, seq, offset = _coord.split_head(command)
        except DecodeError as exc:
            return encode_result(Status.MALFORMED, message=f"malformed command: {exc}")
        if client_id is None or seq is None:
            return self._coord_execute(index, op, command, offset)
        answered = self._session_answer(index, client_id, seq)
        if answered is not None:
            return answered
        return self._record(client_id, seq, index,
                            self._coord_execute(index, op, command, offset))

    def _coord_execute(self, index: int, op: int, command: bytes, offset: int) -> bytes:
        coord = self.coord
        try:
            if op == _coord.OP_PUT_EX:
                put = _coord.decode_put_ex(command, offset)
                return self._put_ex(index, put)
            cmd = _coord_commands.decode_command(command[offset:])
        except DecodeError as exc:
            return encode_result(Status.MALFORMED, message=f"malformed command: {exc}")
        except (FencingTokenStale, LeaseNotFound) as refused:
            return _refused(refused)
        effect = _coord_commands.apply(coord, cmd)
        if effect.error is not None:
            return _refused(effect.error)
        lease_rev = self._lease_rev
        revisions = self._revisions
        for key in effect.keys:
            # Only a key still holding the value put under the lease goes with it: a later
            # put without the lease (the PUT fast path does not detach) took it off.
            attached = lease_rev.pop(key, None)
            if attached is not None and revisions.get(key) == attached:
                self._delete(index, key)
        lease = effect.lease
        if self.track_leases and cmd.op in _LEASE_OPS:
            self.touched_leases.append(lease.lease_id if lease is not None else cmd.lease_id)
        granted = effect.granted
        return encode_result(Status.OK, revision=index, value=_coord.json_bytes({
            "applied": effect.applied,
            "lease": None if lease is None else {
                "id": lease.lease_id, "ttl_ms": lease.ttl_ms, "generation": lease.generation},
            "token": None if granted is None else granted.token,
            "position": effect.position,
        }))

    def _put_ex(self, index: int, put: _coord.PutEx) -> bytes:
        """A put with a lease and / or a fence: the fence is checked here, in the apply
        path, so every replica refuses the same stale writes (docs/coordination.md)."""
        coord = self.coord
        if put.fence_token:
            coord.check_fence(put.fence_name, put.fence_token)
        if put.lease_id and put.lease_id not in coord.leases:
            raise LeaseNotFound(put.lease_id)
        previous = self._put(index, put.key, put.value)
        if put.lease_id:
            coord.leases.attach(put.key, put.lease_id)
            self._lease_rev[put.key] = index
        elif self._lease_rev.pop(put.key, None) is not None:
            coord.leases.detach(put.key)
        return _write_result(index, previous, False)

    def _coord_query(self, query: bytes) -> bytes:
        try:
            if len(query) < 3 or query[0] != VERSION:
                raise DecodeError("coordination query shorter than its head")
            body = Reader(query[3:], "coordination query")
            kind = query[2]
            if kind == _coord.Q_WATCH:
                start, prefix = body.u64("start"), body.u8("prefix")
                limit, key = body.u32("limit"), body.blob("key")
                body.end()
                return self._watch_page(start, key, bool(prefix), limit)
            payload: object
            if kind == _coord.Q_LOCK:
                lease_id, name = body.u64("lease"), body.blob("name")
                locks = self.coord.locks
                holders = locks.holders(name)
                waiters = locks.waiters(name)
                payload = {
                    "token": next((g.token for g in holders if g.lease_id == lease_id), None),
                    "position": waiters.index(lease_id) if lease_id in waiters else None,
                    "last_token": locks.last_token(name),
                    "holders": [[g.lease_id, g.token] for g in holders]}
            elif kind == _coord.Q_LEASES:
                payload = [_lease_json(lease) for lease in self.coord.leases]
            elif kind == _coord.Q_LEASE:
                found = self.coord.leases.get(body.u64("lease"))
                payload = None if found is None else _lease_json(found)
            elif kind == _coord.Q_ELECTION:
                leader = self.coord.elections.leader(body.blob("name"))
                payload = None if leader is None else {
                    "lease_id": leader.lease_id, "value": leader.value.hex(),
                    "term": leader.term}
            else:
                raise DecodeError(f"coordination query kind {kind}")
            body.end()
        except DecodeError as exc:
            return encode_result(Status.MALFORMED, message=f"malformed query: {exc}")
        return encode_result(Status.OK, value=_coord.json_bytes(payload),
                             revision=self._applied_index)

    def _watch_page(self, start: int, key: bytes, prefix: bool, limit: int) -> bytes:
        """The events of the range from `start` (0: from the next revision), at most
        `limit` of them rounded up to a whole revision, and the revision to resume from."""
        if self._pending:
            self._flush_events()
        end = self._applied_index + 1
        if start == 0:
            return encode_result(Status.OK, value=_coord.encode_watch_page([], end),
                                 revision=self._applied_index)
        try:
            events = self.watch_log.events_since(start, key, prefix=prefix)
        except Compacted as compacted:
            return _refused(compacted)
        if len(events) > max(1, limit):
            cut = max(1, limit)
            last = events[cut - 1].revision
            while cut < len(events) and events[cut].revision == last:
                cut += 1   # a revision is delivered whole (a resume point is a revision)
            events, end = events[:cut], last + 1
        return encode_result(Status.OK, value=_coord.encode_watch_page(events, end),
                             revision=self._applied_index)

    def compact_watch(self, revision: int) -> None:
        """Drop the watch history below `revision` (etcd's Compact): a watch from an older
        revision raises Compacted. Local: call it with the same revision on every replica
        (or leave the ring to its bounds) to keep their snapshots equal."""
        if self._pending:
            self._flush_events()
        self.watch_log.compact(revision)

    def _coord_section(self) -> bytes:
        """The EKV3 coordination section: u32-prefixed CoordState and WatchLog snapshots,
        then u32 count x (u32 key_len | key | u64 revision) of the keys put under a lease."""
        if self._pending:
            self._flush_events()
        coord, watch = self.coord.snapshot(), self.watch_log.snapshot()
        parts = [_U32.pack(len(coord)), coord, _U32.pack(len(watch)), watch,
                 _U32.pack(len(self._lease_rev))]
        for key in sorted(self._lease_rev):
            parts += (_U32.pack(len(key)), key, _U64.pack(self._lease_rev[key]))
        return b"".join(parts)

    # ------------------------------------------------------------------ MVCC clock and GC

    def _timestamp_at(self, revision: int) -> int:
        """The group clock at log index `revision` (module docstring, "MVCC"). Below the
        first kept anchor (dropped with the history below the horizon) the value is only
        known to be at or below the horizon, and is reported so."""
        revisions = self._anchor_revisions
        j = bisect_right(revisions, revision) - 1
        if j < 0:
            return max(0, self._anchor_timestamps[0] - (revisions[0] - revision))
        return self._anchor_timestamps[j] + (revision - revisions[j])

    def _revision_at(self, timestamp: int) -> int:
        """The largest log index whose timestamp is at or below `timestamp` (-1: none)."""
        timestamps = self._anchor_timestamps
        revisions = self._anchor_revisions
        j = bisect_right(timestamps, timestamp) - 1
        if j < 0:
            return max(-1, revisions[0] - (timestamps[0] - timestamp))
        revision = revisions[j] + (timestamp - timestamps[j])
        if j + 1 < len(revisions):
            revision = min(revision, revisions[j + 1] - 1)
        return revision

    def _stamp(self, index: int, stamp: int) -> int:
        """The timestamp a command stamped `stamp` takes at log index `index`: the stamp,
        pushed up to the group clock if below it; a stamp above it anchors the clock."""
        timestamp = self._timestamp_at(index)
        if stamp > timestamp:
            self._anchor_revisions.append(index)
            self._anchor_timestamps.append(stamp)
            self._versions.max_bytes -= ANCHOR_BYTES
            timestamp = stamp
        horizon = timestamp - self._retention
        if horizon > self._horizon:
            self._raise_horizon(horizon)
        if self.history_bytes > self._max_history_bytes:
            self._collect()
        return timestamp

    def _horizon_now(self) -> int:
        """The horizon; without history (Limits.mvcc_retention_s = 0) the latest timestamp."""
        if self._versions.keep:
            return self._horizon
        return self._timestamp_at(self._applied_index)

    def _anchor_bytes(self) -> int:
        return (len(self._anchor_revisions) - 1) * ANCHOR_BYTES

    def _raise_horizon(self, horizon: int) -> None:
        """Move the horizon up to `horizon` and drop what no read at or above it can see."""
        self._horizon = horizon
        self._horizon_revision = self._revision_at(horizon)
        # A version superseded at or below the horizon's revision is invisible to every read
        # at or above it: the next version (or the key's absence) is what such reads see.
        versions = self._versions
        versions.drop_through(self._horizon_revision)
        # An anchor is needed while a revision it governs may be above the horizon: drop
        # those whose successor is at or below it.
        timestamps = self._anchor_timestamps
        first = bisect_right(timestamps, horizon) - 1
        if first > 0:
            del timestamps[:first]
            del self._anchor_revisions[:first]
            versions.max_bytes = self._max_history_bytes - self._anchor_bytes()

    def _collect(self) -> None:
        """Keep the history within Limits.max_mvcc_history_bytes: raise the horizon past
        the oldest superseded versions (or the oldest anchors) until they take at most 7/8
        of it, so a full history is collected once per many writes, not on every one."""
        versions = self._versions
        target = self._max_history_bytes - self._max_history_bytes // 8
        while versions.nbytes + self._anchor_bytes() > target:
            if versions.head < len(versions.queue):
                # The oldest versions in one call; the horizon then passes the last of them.
                ended = versions.drop_oldest(target - self._anchor_bytes())
                horizon = self._timestamp_at(ended)
            elif len(self._anchor_timestamps) > 1:
                horizon = self._anchor_timestamps[1]
            else:
                break
            # Each turn drops at least one version or anchor: the loop ends.
            self._raise_horizon(max(horizon, self._horizon))


_COORD_OPS = frozenset((_coord.OP_COORD, _coord.OP_PUT_EX))
_LEASE_OPS = frozenset((_coord_commands.CoordOp.GRANT, _coord_commands.CoordOp.KEEPALIVE,
                        _coord_commands.CoordOp.REVOKE, _coord_commands.CoordOp.EXPIRE,
                        _coord_commands.CoordOp.CHECKPOINT))


def _refused(error: EngineError) -> bytes:
    return encode_result(Status.REFUSED, value=_coord.json_bytes(_coord.error_payload(error)),
                         message=str(error))


def _lease_json(lease: Lease) -> dict[str, int]:
    return {"id": lease.lease_id, "ttl_ms": lease.ttl_ms, "remaining_ms": lease.remaining_ms,
            "generation": lease.generation, "keys": len(lease.keys)}


def _write_result(index: int, previous: bytes | None, want_previous: bool,
                  timestamp: bytes | None = None) -> bytes:
    """An applied PUT's or DELETE's result: revision, existed, the previous value if asked,
    the timestamp it took if it was stamped."""
    return encode_result(Status.OK, previous=previous if want_previous else None,
                         revision=index, existed=previous is not None, timestamp=timestamp)


def _gc_queue(history: list[tuple[bytes, tuple[object, ...]]],
              revisions: dict[bytes, int]) -> list[object]:
    """The garbage collector's queue (kvput.Versions.queue) of a restored history: each
    superseded version with the revision that ended it (the next version's, the key's
    current revision, or a deletion's own), in the order they were superseded."""
    records: list[tuple[int, int, bytes]] = []
    for key, kept in history:
        revisions_kept: list[int] = list(kept[0::2])  # type: ignore[arg-type]
        count = len(revisions_kept)
        for n in range(count):
            if kept[2 * n + 1] is None:
                records.append((revisions_kept[n], 1, key))   # after the value it ended
            elif n + 1 < count:
                records.append((revisions_kept[n + 1], 0, key))
            else:
                records.append((revisions[key], 0, key))
    records.sort()
    queue: list[object] = []
    for end, _, key in records:
        queue += (end, key)
    return queue


_Mvcc = tuple[list[tuple[int, int]], list[tuple[bytes, tuple[object, ...]]], int]


def _decode_snapshot(
    data: bytes,
) -> tuple[int, list[tuple[bytes, bytes, int | None]], list[tuple[int, _Session]],
           _Mvcc | None, bytes | None]:
    """(applied index, rows (key, value, revision: None in EKV1), sessions, the MVCC state
    (anchors, superseded versions per key, horizon; None in EKV1), the coordination
    section (EKV3; None before))."""
    if len(data) < _SNAPSHOT_HEAD.size:
        raise DecodeError(f"KV snapshot of {len(data)} bytes is shorter than its header")
    magic, applied, n_keys, n_sessions = _SNAPSHOT_HEAD.unpack_from(data, 0)
    if magic not in (*_VERSIONED, _SNAPSHOT_MAGIC_V1):
        raise DecodeError(f"KV snapshot has bad magic {magic!r}")
    versioned = magic in _VERSIONED
    offset = _SNAPSHOT_HEAD.size
    n_anchors = n_history = 0
    horizon = 0
    if versioned:
        if offset + _SNAPSHOT_MVCC.size > len(data):
            raise DecodeError("KV snapshot truncated in its MVCC header")
        n_anchors, n_history, raw_horizon = _SNAPSHOT_MVCC.unpack_from(data, offset)
        horizon = int.from_bytes(raw_horizon, "big")
        offset += _SNAPSHOT_MVCC.size

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

    def fixed(layout: struct.Struct, what: str) -> tuple[object, ...]:
        nonlocal offset
        if offset + layout.size > len(data):
            raise DecodeError(f"KV snapshot truncated in {what} at offset {offset}")
        fields = layout.unpack_from(data, offset)
        offset += layout.size
        return fields

    # Every row takes at least 8 bytes (key), 28 (session), 20 (anchor) or 8 (history key):
    # reject absurd counts before looping so a corrupt count cannot make us spin.
    if (n_keys * 8 + n_sessions * 28 + n_anchors * _ANCHOR.size + n_history * 8
            > len(data) - offset):
        raise DecodeError("KV snapshot counts exceed its size")
    items: list[tuple[bytes, bytes, int | None]] = []
    for _ in range(n_keys):
        key, value = blob("key"), blob("value")
        revision = int(fixed(_U64, "revision")[0]) if versioned else None  # type: ignore[call-overload]
        items.append((key, value, revision))
    sessions: list[tuple[int, _Session]] = []
    for _ in range(n_sessions):
        if offset + _SESSION_ROW.size > len(data):
            raise DecodeError(f"KV snapshot truncated in session at offset {offset}")
        client_id, seq, index = _SESSION_ROW.unpack_from(data, offset)
        offset += _SESSION_ROW.size
        sessions.append((client_id, _Session(seq, blob("session result"), index)))
    mvcc: _Mvcc | None = None
    if versioned:
        anchors: list[tuple[int, int]] = []
        for _ in range(n_anchors):
            revision, raw = _ANCHOR.unpack_from(data, offset) if (
                offset + _ANCHOR.size <= len(data)) else (None, None)
            if revision is None:
                raise DecodeError(f"KV snapshot truncated in anchor at offset {offset}")
            offset += _ANCHOR.size
            anchors.append((revision, int.from_bytes(raw, "big")))
        history: list[tuple[bytes, tuple[object, ...]]] = []
        for _ in range(n_history):
            key = blob("history key")
            (count,) = fixed(_U32, "history count")
            if not isinstance(count, int) or count == 0 or count * 9 > len(data) - offset:
                raise DecodeError("KV snapshot history count is zero or exceeds its size")
            kept: list[object] = []
            for _ in range(count):
                revision, has_value = fixed(_HISTORY_ROW, "history row")
                if has_value > 1:   # type: ignore[operator]
                    raise DecodeError(f"KV snapshot history row flag {has_value!r}")
                kept += (revision, blob("history value") if has_value else None)
            history.append((key, tuple(kept)))
        mvcc = (anchors, history, horizon)
    section = data[offset:] if magic == _SNAPSHOT_MAGIC else None
    if section is None and offset != len(data):
        raise DecodeError(f"{len(data) - offset} trailing bytes after KV snapshot")
    if len({key for key, _, _ in items}) != len(items):
        raise DecodeError("KV snapshot repeats a key")
    if len({client_id for client_id, _ in sessions}) != len(sessions):
        raise DecodeError("KV snapshot repeats a client id")
    if mvcc is not None:
        _check_mvcc(mvcc, {key: revision for key, _, revision in items}, applied)
    return applied, items, sessions, mvcc, section


def _check_mvcc(mvcc: _Mvcc, revisions: dict[bytes, int | None], applied: int) -> None:
    """DecodeError unless the snapshot's versions are ones a store could have written."""
    anchors, history, horizon = mvcc
    if not anchors or anchors[0][1] > horizon:
        raise DecodeError("KV snapshot has no anchor at or below its horizon")
    for (r0, t0), (r1, t1) in zip(anchors, anchors[1:], strict=False):
        if not (r0 < r1 and t0 + (r1 - r0) < t1):
            raise DecodeError("KV snapshot anchors do not advance the clock")
    if any(not 0 < (revision or 0) <= applied for revision in revisions.values()):
        raise DecodeError("KV snapshot has a revision outside (0, applied index]")
    if len({key for key, _ in history}) != len(history):
        raise DecodeError("KV snapshot repeats a history key")
    for key, kept in history:
        revs = kept[0::2]
        current = revisions.get(key)
        if any(not isinstance(r, int) for r in revs) or any(
                a >= b for a, b in zip(revs, revs[1:], strict=False)):  # type: ignore[operator]
            raise DecodeError(f"KV snapshot history of {key!r} is not in revision order")
        if current is None and kept[-1] is not None:
            raise DecodeError(f"KV snapshot history of deleted key {key!r} ends in a value")
        if current is not None and revs[-1] >= current:  # type: ignore[operator]
            raise DecodeError(f"KV snapshot history of {key!r} is newer than its value")
