"""What a replica of a range runs: the key-value store behind an ownership check, and the
meta group's state machine behind an envelope that tells its traffic from a range's.

RangeStateMachine
-----------------
A range's group replicates a RangeStateMachine: an engine.KVStore plus the range's
descriptor (span, epoch) and the map version it comes from, both part of the replicated
state (so every replica holds the same descriptor at the same log index). Every command and
query names its key(s); one outside [start, end) is refused with a wrong-shard answer that
carries the range's id, its epoch and the descriptors it knows around the key (itself and
the ranges split off it), so a client's routing cache (engine.shard.routing.RangeCache)
re-routes without a meta lookup (engine.errors.WrongShard). The check runs twice:

  * before a write is proposed and before a read is served (`refusal_of_request`, called by
    the serving side: a cheap definite no that spares the log);
  * when a write applies (`apply`): a split may commit between a write's proposal and its
    application, and a write must only ever be applied by the range that owns its key at the
    descriptor the applying replica holds (engine.testing.shard_invariants, Ownership). A
    refused write changes nothing on any replica; the client re-routes it.

Split (ordered after the meta group's SPLIT, which allocates the ids and checks the epoch):
the range applies RANGE_SPLIT(map version, parent epoch, left, right) through its own log.
From that index on it owns [start, key) at the left descriptor; the keys of [key, end) stay
in its store, frozen (every command and query for them is refused from now on), and are the
right-hand range's initial state: every replica calls `on_split(right, map version, rows,
base)` at the same log index with the same rows, and the shell starts the right-hand group
there, seeded with them (RangeStateMachine.seeded). Nothing is copied through the network
and nothing is lost: a write the parent applied before the split is in the rows; one after
it is refused and retried at the new range. The children are part of the parent's state (and
snapshot), so a replica that restarts or installs a snapshot calls `on_split` again for each,
and the frozen keys can rebuild their seed at any time. Their memory is not reclaimed (see
docs/sharding.md, "What is not built yet").

Transactions (docs/transactions.md, "Replicated transactions"): the range also hosts the
participant side when given one (`participant=engine.txn.participant.TxnKVStore`, as
engine.aio.shard_server does), sharing the range's KVStore. A TXN1
command or query is checked like a KV one: every key it carries (and a scan's span) must be
the range's, else it is answered wrong-shard and changes nothing. Its state is in the range's
snapshot (after the store, present only once a transaction touched the range). A split
hands the right-hand range the versions and intents of its span (TxnKVStore.span_state,
taken at the split's index and kept with the children, so a restart seeds it the same), the
largest read timestamp on the span as its timestamp-cache floor, and the consensus time;
records stay with the group of their anchor key. A transaction message already addressed to
the parent for a moved key is refused wrong-shard (docs/transactions.md).

Revisions continue across a split: the child applies its log index i at revision base + i,
base being the parent's split index, so a key's revision never goes back when it moves.

Bytes, little-endian (descriptors: engine.shard.map.encode_descriptors)::

  wrong shard (a result, and the context of ClientStatus.WRONG_SHARD):
      u8 0xE5 | u8 version (=1) | u64 range id | u64 epoch | descriptors
  range command: u8 0xE6 | u8 version | u8 op (1 = split) | u64 map version
      | u64 parent epoch | descriptors (left, right)
  snapshot: "ERNG" | u16 version | u64 map version | u64 base | u32 children | descriptor
      | descriptors (children) | u64 base per child | u32 len | KVStore snapshot
      [| u32 len | TxnKVStore.state_snapshot() | u32 children seeded
       | (u64 range id | u32 len | TxnKVStore.span_state()) per child: once a transaction
       applied here]
  range command result: u8 0xE6 | u8 version | u8 status (0 ok, 1 epoch mismatch,
      2 malformed) | descriptors (the range's current descriptor)
  meta envelope: u8 0xE7 | a command or query of engine.shard.meta
"""

from __future__ import annotations

import json
import struct
from collections.abc import Callable, Iterable
from typing import Any

from engine.errors import DecodeError, WrongShard
from engine.kv import commands as kv
from engine.kv.store import KVStore
from engine.limits import Limits
from engine.shard.map import (
    RangeDescriptor,
    Reader,
    ShardMap,
    encode_descriptor,
    encode_descriptors,
)
from engine.shard.meta import MetaStateMachine
from engine.shard.policy import KeySampler

VERSION = 1
WRONG_SHARD_MARK = 0xE5
RANGE_COMMAND_MARK = 0xE6
META_MARK = 0xE7
META_GROUP_ID = 0   # engine.shard.meta: group ids of ranges start at 1

OP_SPLIT = 1
SPLIT_OK, SPLIT_EPOCH_MISMATCH, SPLIT_MALFORMED = 0, 1, 2

_WRONG_HEAD = struct.Struct("<BBQQ")
_COMMAND_HEAD = struct.Struct("<BBBQQ")
_RESULT_HEAD = struct.Struct("<BBB")
_SNAPSHOT_HEAD = struct.Struct("<4sHQQI")
_SNAPSHOT_MAGIC = b"ERNG"
_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")
_KEYED = frozenset((int(kv.Op.PUT), int(kv.Op.GET), int(kv.Op.DELETE), int(kv.Op.CAS)))
_KV_VERSION = kv.VERSION
_SESSION_FLAG = kv.FLAG_SESSION
_unpack_u32 = _U32.unpack_from
_SCAN = int(kv.Op.SCAN)
_SEED_ROWS = 1 << 62
_RANGE_COMMAND = bytes((RANGE_COMMAND_MARK,))   # a seed is every row of the span, whatever its size
# engine.txn.participant.TXN_MAGIC: shard sits below txn (DESIGN.md §2), so the range takes
# its participant as a constructor argument and knows only the messages' mark and keys.
TXN_MAGIC = b"TXN1"
_TXN_MAGIC = TXN_MAGIC

# (child, map version, rows, base[, txn_seed=the child's TxnKVStore.span_state()])
SplitHook = Callable[..., None]


# ---------------------------------------------------------------------------- wrong shard


def encode_wrong_shard(range_id: int, epoch: int,
                       descriptors: Iterable[RangeDescriptor] = ()) -> bytes:
    return (_WRONG_HEAD.pack(WRONG_SHARD_MARK, VERSION, range_id, epoch)
            + encode_descriptors(list(descriptors)))


def is_wrong_shard(result: bytes) -> bool:
    return len(result) >= _WRONG_HEAD.size and result[0] == WRONG_SHARD_MARK


def decode_wrong_shard(data: bytes, key: bytes = b"") -> WrongShard:
    """The WrongShard a wrong-shard answer stands for; DecodeError if it is not one."""
    if not is_wrong_shard(data):
        raise DecodeError("not a wrong-shard answer")
    _, version, range_id, epoch = _WRONG_HEAD.unpack_from(data, 0)
    if version != VERSION:
        raise DecodeError(f"wrong-shard answer version {version}")
    reader = Reader(memoryview(data), _WRONG_HEAD.size, "wrong-shard answer")
    descriptors = tuple(reader.descriptor_list())
    reader.finish()
    return WrongShard(key, range_id=range_id, epoch=epoch, descriptors=descriptors)


# ---------------------------------------------------------------------------- keys


def command_key(command: bytes) -> bytes | None:
    """The key a KV command or GET query names; None for one that names none (REGISTER) or
    does not parse (the store answers it MALFORMED). On every write's path: a few byte
    reads and one slice."""
    if len(command) < 7 or command[0] != _KV_VERSION or command[1] not in _KEYED:
        return None
    offset = 19 if command[2] & _SESSION_FLAG else 3   # head, [u64 client id, u64 seq]
    start = offset + 4
    end = start + _unpack_u32(command, offset)[0]
    if end > len(command):
        return None
    return command[start:end]


def scan_span(query: bytes) -> tuple[bytes, bytes | None] | None:
    """[start, end) of a SCAN query (end None: unbounded); None for anything else."""
    if not kv.is_scan(query):
        return None
    try:
        start, end, _, _ = kv.decode_scan(query)
    except DecodeError:
        return None
    return start, end or None


def _within(descriptor: RangeDescriptor, start: bytes, end: bytes | None) -> bool:
    if start < descriptor.start:
        return False
    if descriptor.end is None:
        return True
    return end is not None and end <= descriptor.end


def txn_message_keys(message: dict[str, Any]
                     ) -> tuple[list[bytes], list[tuple[bytes, bytes | None]]]:
    """The keys and spans (end None: unbounded) a decoded transaction message must find in
    its range; none for a message about a record (END, PUSH, HEARTBEAT, RECOVER, RESOLVED:
    an END's keys are every group's). KeyError, TypeError or ValueError if malformed."""
    op = message.get("op")
    keys = [message["key"]] if "key" in message else []
    if op in ("intent", "one_phase"):
        keys.extend(k for k, _ in message["writes"])
    if op in ("refresh", "resolve"):
        keys.extend(message["keys"])
    if op in ("refresh", "one_phase"):
        keys.extend(message.get("reads", ()))
    spans = [tuple(span) for span in message.get("spans", ())]
    if op == "scan":
        spans.append((message["start"], message["end"]))
    return ([bytes.fromhex(k) for k in keys],
            [(bytes.fromhex(low), bytes.fromhex(high) or None) for low, high in spans])


# ---------------------------------------------------------------------------- range commands


def encode_split_command(map_version: int, parent_epoch: int, left: RangeDescriptor,
                         right: RangeDescriptor) -> bytes:
    return (_COMMAND_HEAD.pack(RANGE_COMMAND_MARK, VERSION, OP_SPLIT, map_version,
                               parent_epoch)
            + encode_descriptors([left, right]))


def decode_split_result(data: bytes) -> tuple[int, RangeDescriptor | None]:
    """(status, the range's current descriptor) of a range command's result."""
    if len(data) < _RESULT_HEAD.size or data[0] != RANGE_COMMAND_MARK:
        raise DecodeError("not a range command result")
    _, version, status = _RESULT_HEAD.unpack_from(data, 0)
    reader = Reader(memoryview(data), _RESULT_HEAD.size, "range command result")
    found = reader.descriptor_list()
    reader.finish()
    return status, (found[0] if found else None)


def _split_result(status: int, descriptor: RangeDescriptor | None) -> bytes:
    return (_RESULT_HEAD.pack(RANGE_COMMAND_MARK, VERSION, status)
            + encode_descriptors([] if descriptor is None else [descriptor]))


# ---------------------------------------------------------------------------- the range


class RangeStateMachine:
    """A range's replicated state: its descriptor and a KVStore (module docstring)."""

    def __init__(self, descriptor: RangeDescriptor, *, map_version: int = 1,
                 limits: Limits | None = None, base: int = 0,
                 on_split: SplitHook | None = None,
                 participant: Callable[[Limits | None], Any] | None = None) -> None:
        self._limits = limits
        self._participant = participant
        self.store = KVStore(limits)
        self._store_apply = self.store.apply
        self.txn = self._txn_over(self.store)
        # Each child's transactional seed, taken at the split (omitted: none).
        self.child_txn: dict[int, bytes] = {}
        self.descriptor = descriptor
        self.map_version = map_version
        self.children: list[RangeDescriptor] = []
        # Each child's base: the index (in this store's numbering) its seed was taken at.
        self.child_bases: dict[int, int] = {}
        self.base = base
        self.on_split = on_split
        self.refused_writes = 0
        # Automatic splits (engine.aio.auto_split): keyed writes applied, an upper bound of
        # the bytes written since the range's rows were last counted, and a sample of the
        # keys written (None: not sampled).
        self.applied_writes = 0
        self.written_bytes = 0
        self.sampler: KeySampler | None = None
        # Tests: (map version, range id, key) of every keyed command applied, the records
        # engine.testing.shard_invariants.check_writes_owned reads. None: not kept.
        self.apply_records: list[tuple[int, int, bytes]] | None = None

    @classmethod
    def seeded(cls, descriptor: RangeDescriptor, rows: list[tuple[bytes, bytes]], *,
               map_version: int, base: int, limits: Limits | None = None,
               on_split: SplitHook | None = None, txn_seed: bytes = b"",
               participant: Callable[[Limits | None], Any] | None = None
               ) -> RangeStateMachine:
        """A range split off another: `rows` are its initial keys, applied as of the
        parent's index `base` (each row a session-less PUT at its own index up to base)."""
        machine = cls(descriptor, map_version=map_version, limits=limits, base=base,
                      on_split=on_split, participant=participant)
        first = base - len(rows) + 1
        if first < 1:
            raise ValueError(f"{len(rows)} rows cannot have applied by index {base}")
        apply = machine.store.apply
        for offset, (key, value) in enumerate(rows):
            apply(first + offset, kv.encode_put(key, value))
        if txn_seed and machine.txn is not None:
            machine.txn.restore_state(txn_seed)
        return machine

    def _txn_over(self, store: KVStore) -> Any:
        """The participant over `store` (None: this range serves no transactions)."""
        if self._participant is None:
            return None
        txn = self._participant(self._limits)
        txn.kv = store   # one store: plain commands keep their own path (apply)
        return txn

    # ------------------------------------------------------------------ checks

    def txn_refusal(self, payload: bytes) -> bytes | None:
        """The wrong-shard answer for a transaction message naming a key (or a scan span)
        outside the range, else None (a malformed one is the participant's to answer)."""
        try:
            keys, spans = txn_message_keys(json.loads(payload[len(_TXN_MAGIC):]))
        except (KeyError, TypeError, ValueError, AttributeError):
            return None
        d = self.descriptor
        for start, end in spans:
            if not _within(d, start, end):
                return self.wrong_shard()
        contains = d.contains
        for key in keys:
            if not contains(key):
                return self.wrong_shard()
        return None

    def wrong_shard(self) -> bytes:
        """The wrong-shard answer of this replica: its id and epoch, itself and its
        children as hints."""
        d = self.descriptor
        return encode_wrong_shard(d.range_id, d.epoch, [d, *self.children[-8:]])

    def refusal_of_request(self, payload: bytes, write: bool) -> bytes | None:
        """The wrong-shard answer for a client request this range does not own, else
        None (the serving side's check before proposing or reading)."""
        d = self.descriptor
        if write:
            key = command_key(payload)
        else:
            span = scan_span(payload)
            if span is not None:
                return None if _within(d, span[0], span[1]) else self.wrong_shard()
            key = command_key(payload)
        if key is None:   # not a keyed KV request (a transaction message's first byte is "T")
            return self.txn_refusal(payload) if payload[:4] == _TXN_MAGIC else None
        if d.contains(key):
            return None
        return self.wrong_shard()

    # ------------------------------------------------------------------ state machine

    def apply(self, index: int, command: bytes) -> bytes:
        # command_key inlined: this runs for every write on every replica.
        if len(command) >= 7 and command[0] == _KV_VERSION and command[1] in _KEYED:
            offset = 19 if command[2] & _SESSION_FLAG else 3
            end = offset + 4 + _unpack_u32(command, offset)[0]
            if end <= len(command):
                key = command[offset + 4:end]
                d = self.descriptor
                if key < d.start or (d.end is not None and key >= d.end):
                    self.refused_writes += 1
                    return self.wrong_shard()
                if self.apply_records is not None:
                    self.apply_records.append((self.map_version, d.range_id, key))
                self.applied_writes += 1
                self.written_bytes += len(command)
                if self.sampler is not None:
                    self.sampler.offer(key)
        elif command[:1] == _RANGE_COMMAND:
            return self._range_command(index, command)
        elif command[:4] == _TXN_MAGIC and self.txn is not None:
            refusal = self.txn_refusal(command)
            if refusal is not None:
                self.refused_writes += 1
                return refusal
            return self.txn.apply(index + self.base, command)
        return self._store_apply(index + self.base, command)

    @staticmethod
    def retry_safe(command: bytes) -> bool:
        return KVStore.retry_safe(command)

    def query(self, query: bytes) -> bytes:
        refusal = self.refusal_of_request(query, write=False)
        if refusal is not None:
            return refusal
        if query[:4] == _TXN_MAGIC and self.txn is not None:
            return self.txn.query(query)
        return self.store.query(query)

    def _range_command(self, index: int, command: bytes) -> bytes:
        try:
            if len(command) < _COMMAND_HEAD.size:
                raise DecodeError("short range command")
            _, version, op, map_version, parent_epoch = _COMMAND_HEAD.unpack_from(command, 0)
            if version != VERSION or op != OP_SPLIT:
                raise DecodeError(f"range command version {version} op {op}")
            reader = Reader(memoryview(command), _COMMAND_HEAD.size, "range command")
            found = reader.descriptor_list()
            reader.finish()
            if len(found) != 2:
                raise DecodeError("a split names two descriptors")
        except DecodeError:
            return _split_result(SPLIT_MALFORMED, self.descriptor)
        left, right = found
        d = self.descriptor
        if d == left:
            return _split_result(SPLIT_OK, d)   # a retried copy, or split already: no-op
        # The meta group checked the parent's epoch and allocated the ids; this replica may
        # hold an older epoch of the same span (a replica change bumps the epoch in the map
        # only), so it takes any split of exactly its span at a newer epoch. A stale copy
        # of a split applied since names an older epoch, or another span: refused.
        if (d.range_id != left.range_id or left.epoch <= d.epoch or parent_epoch >= left.epoch
                or left.start != d.start or left.end != right.start
                or right.end != d.end or left.end is None or not d.contains(left.end)
                or left.group_id != d.group_id):
            return _split_result(SPLIT_EPOCH_MISMATCH, d)
        self.descriptor = left
        self.map_version = map_version
        self.children.append(right)
        self.child_bases[right.range_id] = index + self.base
        if self._txn_touched():
            self.child_txn[right.range_id] = self.txn.span_state(right.start, right.end)
        self._announce(right, index + self.base)
        return _split_result(SPLIT_OK, left)

    def rows(self) -> list[tuple[bytes, bytes]]:
        """Every row of the range's span, in key order (the frozen keys excluded)."""
        return self.seed_of(self.descriptor)

    def seed_of(self, child: RangeDescriptor) -> list[tuple[bytes, bytes]]:
        """The frozen rows of a child's span (its initial state)."""
        end = b"" if child.end is None else child.end
        rows, _ = self.store.scan(child.start, end, None, _SEED_ROWS)
        return rows

    def _announce(self, child: RangeDescriptor, base: int) -> None:
        if self.on_split is not None:
            txn_seed = self.child_txn.get(child.range_id)
            if txn_seed:
                self.on_split(child, self.map_version, self.seed_of(child), base,
                              txn_seed=txn_seed)
            else:
                self.on_split(child, self.map_version, self.seed_of(child), base)

    def announce_children(self) -> None:
        """Call on_split for every child again (after a restart: the shell hosts them)."""
        for child in self.children:
            self._announce(child, self.child_bases[child.range_id])

    # ------------------------------------------------------------------ snapshots

    def snapshot(self) -> bytes:
        return (self._snapshot_head() + self._with_store(self.store.snapshot())
                + self._txn_section())

    def snapshot_fork(self) -> Callable[[], bytes]:
        """Freeze now, serialise later (KVStore.snapshot_fork): the driver writes the
        snapshot off the loop."""
        head = self._snapshot_head()
        serialise = self.store.snapshot_fork()
        txn = self._txn_section()   # taken now: the loop goes on applying
        return lambda: head + self._with_store(serialise()) + txn

    def _txn_touched(self) -> bool:
        txn = self.txn
        if txn is None:
            return False
        return bool(txn.versions or txn.intents or txn.records or txn.read_keys
                    or txn.read_spans or txn.clock or self.child_txn)

    def _txn_section(self) -> bytes:
        """The transactional state, omitted while no transaction ever applied here."""
        if not self._txn_touched():
            return b""
        return b"".join((self._with_store(self.txn.state_snapshot()),
                         _U32.pack(len(self.child_txn)),
                         *(_U64.pack(rid) + self._with_store(seed)
                           for rid, seed in sorted(self.child_txn.items()))))

    def _snapshot_head(self) -> bytes:
        return b"".join((
            _SNAPSHOT_HEAD.pack(_SNAPSHOT_MAGIC, VERSION, self.map_version, self.base,
                                len(self.children)),
            encode_descriptor(self.descriptor), encode_descriptors(self.children),
            *(_U64.pack(self.child_bases[c.range_id]) for c in self.children)))

    @staticmethod
    def _with_store(inner: bytes) -> bytes:
        return _U32.pack(len(inner)) + inner

    def restore(self, data: bytes) -> None:
        view = memoryview(data)
        if len(view) < _SNAPSHOT_HEAD.size:
            raise DecodeError("range snapshot shorter than its header")
        magic, version, map_version, base, _ = _SNAPSHOT_HEAD.unpack_from(view, 0)
        if magic != _SNAPSHOT_MAGIC or version != VERSION:
            raise DecodeError(f"range snapshot magic {bytes(magic)!r} version {version}")
        reader = Reader(view, _SNAPSHOT_HEAD.size, "range snapshot")
        descriptor = reader.descriptor()
        children = reader.descriptor_list()
        bases = {c.range_id: reader.u64("child base") for c in children}
        inner = reader.blob("store snapshot")
        txn_state = b""
        child_txn: dict[int, bytes] = {}
        if reader.offset < len(view):
            txn_state = reader.blob("transactions")
            for _ in range(reader.u32("children seeded")):
                rid = reader.u64("seeded range id")
                child_txn[rid] = reader.blob("transactional seed")
        reader.finish()
        store = KVStore(self._limits)
        store.restore(inner)
        txn = self._txn_over(store)
        if txn_state and txn is not None:
            txn.restore_state(txn_state)
        self.txn, self.child_txn = txn, child_txn
        self.store, self.descriptor, self.children = store, descriptor, children
        self._store_apply = store.apply
        self.child_bases = bases
        self.map_version, self.base = map_version, base
        self.announce_children()


# ---------------------------------------------------------------------------- the meta group


class MetaReplica:
    """The meta group's state machine: engine.shard.meta.MetaStateMachine behind the META
    envelope. Anything else (a KV request from a client that does not know the cluster is
    sharded) is answered wrong-shard naming range 0: "ask the meta group for the map"."""

    def __init__(self, shard_map: ShardMap | None = None) -> None:
        self.meta = (MetaStateMachine() if shard_map is None
                     else MetaStateMachine.with_map(shard_map))
        # Tests: every map version this replica held, oldest first. None: not kept.
        self.maps: list[ShardMap] | None = None

    def record_maps(self) -> None:
        self.maps = [] if self.meta.shard_map is None else [self.meta.shard_map]

    @property
    def shard_map(self) -> ShardMap | None:
        return self.meta.shard_map

    def refusal_of_request(self, payload: bytes, write: bool) -> bytes | None:
        if payload[:1] == bytes((META_MARK,)):
            return None
        return encode_wrong_shard(0, 0)

    def apply(self, index: int, command: bytes) -> bytes:
        if command[:1] != bytes((META_MARK,)):
            return encode_wrong_shard(0, 0)
        before = self.meta.shard_map
        result = self.meta.apply(index, command[1:])
        after = self.meta.shard_map
        if self.maps is not None and after is not None and after is not before:
            self.maps.append(after)
        return result

    def query(self, query: bytes) -> bytes:
        if query[:1] != bytes((META_MARK,)):
            return encode_wrong_shard(0, 0)
        return self.meta.query(query[1:])

    def snapshot(self) -> bytes:
        return self.meta.snapshot()

    def restore(self, data: bytes) -> None:
        self.meta.restore(data)


def meta_envelope(data: bytes) -> bytes:
    """A meta command or query as the meta group's replicas take it."""
    return bytes((META_MARK,)) + data


def refusal_of(state_machine: Any, payload: bytes, write: bool) -> bytes | None:
    """The serving side's check: a sharded replica's refusal of a request, else None."""
    check = getattr(state_machine, "refusal_of_request", None)
    return None if check is None else check(payload, write)


__all__ = [
    "META_GROUP_ID", "MetaReplica", "RangeStateMachine", "command_key", "decode_split_result",
    "decode_wrong_shard", "encode_split_command", "encode_wrong_shard", "is_wrong_shard",
    "TXN_MAGIC", "meta_envelope", "refusal_of", "scan_span", "txn_message_keys",
]
