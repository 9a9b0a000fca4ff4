"""The meta group's state machine: the shard map, changed only by commands in its log.

The meta group is one consensus group like any other (engine.types.StateMachine); its state
is the ShardMap plus the highest range id and group id ever allocated. Commands:

  BOOTSTRAP(range id, group id, voters)   one range over the whole key space (once).
  SPLIT(range, epoch, key, new range id, new group id)
      [start, end) becomes [start, key) (same id and group) and [key, end) (the new id on
      the new group, the same replicas); both at epoch + 1. The left side keeps its start
      key and id, as in CockroachDB (docs/design.md), so a split is local to the replicas.
  MERGE(left, left epoch, right, right epoch)
      adjacent ranges (left.end == right.start) on the same replica set (same nodes, same
      roles: CockroachDB merges only aligned replicas, docs/tech-notes/range-merges.md)
      become the left range over both spans at epoch max(left, right) + 1; the right range
      id is retired.
  ADD_LEARNER / PROMOTE / REMOVE_REPLICA(range, epoch, node)
      the steps of a move (learner add -> catch up -> promote -> remove, CockroachDB's
      ChangeReplicas): the map records them; the group's own membership machinery
      (engine.raft.membership) carries them out. Removing the last voter is refused.

Every command names the epoch of each range it changes as the sender read it; if that is not
the current epoch the command is refused (EPOCH_MISMATCH naming the current epoch and
carrying the current descriptor): optimistic concurrency, CockroachDB's conditional put on
the range descriptor. Two movers racing on one range cannot both win, and a retried command
whose first copy applied is refused rather than applied twice (the sender re-reads and sees
its change). Every change bumps the epochs it touches (engine.shard.map, "Epochs") and the
map version. New range and group ids must be above every id allocated before (ids are never
reused, so a stale message of a retired group can never reach its successor).

The meta group's own group id is outside the map (it serves no user key); pick one no range
uses (e.g. 0 is never a range's: ids start at 1).

Deterministic: apply depends only on the state and the command; a command that does not
decode or is refused changes nothing and answers the same bytes on every replica.

Bytes, little-endian (Reader / encode_descriptor: engine.shard.map)::

  command: u8 version (=1) | u8 op | body
    BOOTSTRAP       u64 range id | u64 group id | u16 n | u64 node id * n
    SPLIT           u64 range id | u64 epoch | u32 len | key | u64 new range id
                    | u64 new group id
    MERGE           u64 left id | u64 left epoch | u64 right id | u64 right epoch
    ADD_LEARNER, PROMOTE, REMOVE_REPLICA   u64 range id | u64 epoch | u64 node id
  query: u8 version (=1) | u8 op | body
    MAP  (nothing): every range     LOOKUP  u32 len | key: the range owning it
    SPAN u32 len | start | u8 bounded | [u32 len | end]: the ranges meeting [start, end)
  result: u8 version (=1) | u8 status | body
    OK              u64 map version | u64 max range id | u64 max group id
                    | u32 n | range * n   (the ranges changed, or asked for)
    EPOCH_MISMATCH  u64 range id | u64 expected epoch | u64 current epoch (0: retired)
                    | u32 n | range * n   (the current descriptor, if any)
    REFUSED, MALFORMED   u32 len | utf-8 message
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass
from enum import IntEnum

from engine.errors import (
    DecodeError,
    EngineError,
    EpochMismatch,
    InvalidShardChange,
    InvariantViolation,
)
from engine.shard.map import (
    U16_MAX,
    U32_MAX,
    U64_MAX,
    RangeDescriptor,
    Reader,
    Replica,
    ReplicaRole,
    ShardMap,
    encode_descriptors,
)

VERSION = 1


class MetaOp(IntEnum):
    BOOTSTRAP = 1
    SPLIT = 2
    MERGE = 3
    ADD_LEARNER = 4
    PROMOTE = 5
    REMOVE_REPLICA = 6


class MetaQuery(IntEnum):
    MAP = 1
    LOOKUP = 2
    SPAN = 3


class MetaStatus(IntEnum):
    OK = 0
    EPOCH_MISMATCH = 1
    REFUSED = 2
    MALFORMED = 3


_OPS: dict[int, MetaOp] = {int(op): op for op in MetaOp}
_QUERIES: dict[int, MetaQuery] = {int(q): q for q in MetaQuery}
_STATUSES: dict[int, MetaStatus] = {int(s): s for s in MetaStatus}
_HEAD = struct.Struct("<BB")
_U64 = struct.Struct("<Q")
_U32 = struct.Struct("<I")
_REPLICA_CHANGE = struct.Struct("<QQQ")
_MERGE = struct.Struct("<QQQQ")
_OK_HEAD = struct.Struct("<QQQ")
_MISMATCH_HEAD = struct.Struct("<QQQ")
_SNAPSHOT_HEAD = struct.Struct("<4sHQQQB")
_SNAPSHOT_MAGIC = b"EMET"
MAX_MESSAGE_CHARS = 1_024
_SHOWN_KEY_BYTES = 64


def _show(key: bytes | None) -> str:
    if key is None or len(key) <= _SHOWN_KEY_BYTES:
        return repr(key)
    return f"{key[:_SHOWN_KEY_BYTES]!r}... ({len(key)} bytes)"


# ---------------------------------------------------------------------------- commands


def _u64(value: int, what: str) -> bytes:
    if not isinstance(value, int) or not 0 <= value <= U64_MAX:
        raise ValueError(f"{what} must fit in u64, got {value!r}")
    return _U64.pack(value)


def _blob(data: bytes, what: str) -> bytes:
    if not isinstance(data, bytes) or len(data) > U32_MAX:
        raise ValueError(f"{what} must be bytes of at most 2**32 - 1")
    return _U32.pack(len(data)) + data


def encode_bootstrap(range_id: int, group_id: int, voter_ids: Sequence[int]) -> bytes:
    if len(voter_ids) > U16_MAX:
        raise ValueError(f"{len(voter_ids)} voters")
    return b"".join((_HEAD.pack(VERSION, MetaOp.BOOTSTRAP), _u64(range_id, "range id"),
                     _u64(group_id, "group id"), struct.pack("<H", len(voter_ids)),
                     *(_u64(node, "node id") for node in voter_ids)))


def encode_split(range_id: int, epoch: int, key: bytes, new_range_id: int,
                 new_group_id: int) -> bytes:
    return b"".join((_HEAD.pack(VERSION, MetaOp.SPLIT), _u64(range_id, "range id"),
                     _u64(epoch, "epoch"), _blob(key, "split key"),
                     _u64(new_range_id, "new range id"), _u64(new_group_id, "new group id")))


def encode_merge(left_range_id: int, left_epoch: int, right_range_id: int,
                 right_epoch: int) -> bytes:
    for value in (left_range_id, left_epoch, right_range_id, right_epoch):
        _u64(value, "merge field")
    return _HEAD.pack(VERSION, MetaOp.MERGE) + _MERGE.pack(
        left_range_id, left_epoch, right_range_id, right_epoch)


def _replica_change(op: MetaOp, range_id: int, epoch: int, node_id: int) -> bytes:
    for value in (range_id, epoch, node_id):
        _u64(value, f"{op.name} field")
    return _HEAD.pack(VERSION, op) + _REPLICA_CHANGE.pack(range_id, epoch, node_id)


def encode_add_learner(range_id: int, epoch: int, node_id: int) -> bytes:
    return _replica_change(MetaOp.ADD_LEARNER, range_id, epoch, node_id)


def encode_promote(range_id: int, epoch: int, node_id: int) -> bytes:
    return _replica_change(MetaOp.PROMOTE, range_id, epoch, node_id)


def encode_remove_replica(range_id: int, epoch: int, node_id: int) -> bytes:
    return _replica_change(MetaOp.REMOVE_REPLICA, range_id, epoch, node_id)


@dataclass(frozen=True, slots=True)
class MetaCommand:
    op: MetaOp
    range_id: int = 0
    epoch: int = 0
    group_id: int = 0
    key: bytes = b""
    new_range_id: int = 0
    new_group_id: int = 0
    node_id: int = 0
    right_range_id: int = 0
    right_epoch: int = 0
    voter_ids: tuple[int, ...] = ()


def decode_command(data: bytes | memoryview) -> MetaCommand:
    """DecodeError for an unknown version or op, a short buffer or trailing bytes."""
    reader = Reader(data, 0, "meta command")
    version, op_code = reader.u8("version"), reader.u8("op")
    if version != VERSION:
        raise DecodeError(f"meta command version {version}")
    op = _OPS.get(op_code)
    if op is None:
        raise DecodeError(f"meta command op {op_code}")
    if op == MetaOp.BOOTSTRAP:
        range_id, group_id = reader.u64("range id"), reader.u64("group id")
        count = reader.u16("voter count")
        if count * 8 > len(data) - reader.offset:
            raise DecodeError(f"meta command: {count} voters exceed its size")
        command = MetaCommand(op, range_id=range_id, group_id=group_id,
                              voter_ids=tuple(reader.u64("voter") for _ in range(count)))
    elif op == MetaOp.SPLIT:
        command = MetaCommand(op, range_id=reader.u64("range id"), epoch=reader.u64("epoch"),
                              key=reader.blob("split key"),
                              new_range_id=reader.u64("new range id"),
                              new_group_id=reader.u64("new group id"))
    elif op == MetaOp.MERGE:
        command = MetaCommand(op, range_id=reader.u64("left range id"),
                              epoch=reader.u64("left epoch"),
                              right_range_id=reader.u64("right range id"),
                              right_epoch=reader.u64("right epoch"))
    else:
        command = MetaCommand(op, range_id=reader.u64("range id"), epoch=reader.u64("epoch"),
                              node_id=reader.u64("node id"))
    reader.finish()
    return command


# ---------------------------------------------------------------------------- queries


def encode_query_map() -> bytes:
    return _HEAD.pack(VERSION, MetaQuery.MAP)


def encode_query_lookup(key: bytes) -> bytes:
    return _HEAD.pack(VERSION, MetaQuery.LOOKUP) + _blob(key, "key")


def encode_query_span(start: bytes, end: bytes | None) -> bytes:
    tail = b"\x00" if end is None else b"\x01" + _blob(end, "end")
    return _HEAD.pack(VERSION, MetaQuery.SPAN) + _blob(start, "start") + tail


# ---------------------------------------------------------------------------- results


@dataclass(frozen=True, slots=True)
class MetaResult:
    """A decoded result. OK: `descriptors` are the ranges changed (a split: left, right; a
    merge: the merged range) or asked for, at `map_version`. EPOCH_MISMATCH: `range_id`,
    `expected_epoch`, `current_epoch` (0: retired) and the current descriptor if any."""

    status: MetaStatus
    map_version: int = 0
    max_range_id: int = 0
    max_group_id: int = 0
    descriptors: tuple[RangeDescriptor, ...] = ()
    range_id: int = 0
    expected_epoch: int = 0
    current_epoch: int = 0
    message: str = ""

    @property
    def ok(self) -> bool:
        return self.status == MetaStatus.OK

    def error(self) -> EngineError | None:
        """The typed error this result stands for (None when OK)."""
        if self.status == MetaStatus.OK:
            return None
        if self.status == MetaStatus.EPOCH_MISMATCH:
            return EpochMismatch(self.range_id, expected_epoch=self.expected_epoch,
                                 current_epoch=self.current_epoch)
        return InvalidShardChange(self.message)

    def raise_for_status(self) -> MetaResult:
        error = self.error()
        if error is not None:
            raise error
        return self


def encode_ok(shard_map: ShardMap | None, max_range_id: int, max_group_id: int,
              descriptors: Sequence[RangeDescriptor]) -> bytes:
    version = 0 if shard_map is None else shard_map.version
    return (_HEAD.pack(VERSION, MetaStatus.OK)
            + _OK_HEAD.pack(version, max_range_id, max_group_id)
            + encode_descriptors(descriptors))


def encode_epoch_mismatch(range_id: int, expected: int,
                          current: RangeDescriptor | None) -> bytes:
    epoch = 0 if current is None else current.epoch
    return (_HEAD.pack(VERSION, MetaStatus.EPOCH_MISMATCH)
            + _MISMATCH_HEAD.pack(range_id, expected, epoch)
            + encode_descriptors([] if current is None else [current]))


def encode_refusal(status: MetaStatus, message: str) -> bytes:
    # Bounded: a refusal never grows with its input (keys in it are shown cut, _show).
    text = message[:MAX_MESSAGE_CHARS].encode()
    return _HEAD.pack(VERSION, status) + _U32.pack(len(text)) + text


def decode_result(data: bytes | memoryview) -> MetaResult:
    reader = Reader(data, 0, "meta result")
    version, code = reader.u8("version"), reader.u8("status")
    status = _STATUSES.get(code)
    if version != VERSION or status is None:
        raise DecodeError(f"meta result version {version} status {code}")
    if status == MetaStatus.OK:
        version_, max_range, max_group = (reader.u64("map version"), reader.u64("max range"),
                                          reader.u64("max group"))
        result = MetaResult(status, version_, max_range, max_group,
                            tuple(reader.descriptor_list()))
    elif status == MetaStatus.EPOCH_MISMATCH:
        range_id, expected, current = (reader.u64("range id"), reader.u64("expected epoch"),
                                       reader.u64("current epoch"))
        result = MetaResult(status, descriptors=tuple(reader.descriptor_list()),
                            range_id=range_id, expected_epoch=expected, current_epoch=current)
    else:
        try:
            message = reader.blob("message").decode()
        except UnicodeDecodeError as exc:
            raise DecodeError(f"meta result message is not utf-8: {exc}") from None
        result = MetaResult(status, message=message)
    reader.finish()
    return result


# ---------------------------------------------------------------------------- the machine


class _Refused(Exception):
    def __init__(self, result: bytes) -> None:
        super().__init__()
        self.result = result


def _refuse(message: str) -> _Refused:
    return _Refused(encode_refusal(MetaStatus.REFUSED, message))


class MetaStateMachine:
    """The shard map as a replicated state machine (engine.types.StateMachine)."""

    def __init__(self) -> None:
        self._map: ShardMap | None = None
        self._max_range_id = 0
        self._max_group_id = 0
        self._applied_index = 0

    @classmethod
    def with_map(cls, shard_map: ShardMap) -> MetaStateMachine:
        """A meta state machine that starts from `shard_map` (ids allocated up to its
        largest): the initial state every replica of a pre-split cluster is built with, as
        if BOOTSTRAP and the splits had applied before index 1."""
        machine = cls()
        machine._map = shard_map
        machine._max_range_id = max(r.range_id for r in shard_map)
        machine._max_group_id = max(r.group_id for r in shard_map)
        return machine

    @property
    def shard_map(self) -> ShardMap | None:
        """The current map; None until BOOTSTRAP applied."""
        return self._map

    @property
    def applied_index(self) -> int:
        return self._applied_index

    @property
    def max_range_id(self) -> int:
        return self._max_range_id

    @property
    def max_group_id(self) -> int:
        return self._max_group_id

    # ------------------------------------------------------------------ apply

    def apply(self, index: int, command: bytes) -> bytes:
        self._applied_index = index
        try:
            decoded = decode_command(command)
        except DecodeError as exc:
            return encode_refusal(MetaStatus.MALFORMED, f"malformed meta command: {exc}")
        try:
            changed = self._apply(decoded)
        except _Refused as refused:
            return refused.result
        return encode_ok(self._map, self._max_range_id, self._max_group_id, changed)

    def _apply(self, c: MetaCommand) -> list[RangeDescriptor]:
        if c.op == MetaOp.BOOTSTRAP:
            return self._bootstrap(c)
        if self._map is None:
            raise _refuse("the shard map is not bootstrapped")
        if c.op == MetaOp.SPLIT:
            return self._split(self._map, c)
        if c.op == MetaOp.MERGE:
            return self._merge(self._map, c)
        return self._change_replicas(self._map, c)

    def _current(self, shard_map: ShardMap, range_id: int, epoch: int) -> RangeDescriptor:
        descriptor = shard_map.get(range_id)
        if descriptor is None or descriptor.epoch != epoch:
            raise _Refused(encode_epoch_mismatch(range_id, epoch, descriptor))
        return descriptor

    def _install(self, shard_map: ShardMap, remove: Sequence[int],
                 add: Sequence[RangeDescriptor]) -> list[RangeDescriptor]:
        try:
            self._map = shard_map.replace(remove, add)
        except EngineError as exc:
            # Every command is checked before it gets here: a map that does not cover the
            # key space exactly once is a bug of this module, never a refusal.
            raise InvariantViolation(f"meta: change built an invalid map: {exc}") from None
        return list(add)

    def _new_ids(self, range_id: int, group_id: int) -> None:
        if not 1 <= range_id <= U64_MAX or range_id <= self._max_range_id:
            raise _refuse(f"range id {range_id} is not above every allocated one "
                          f"({self._max_range_id}): ids are never reused")
        if not 1 <= group_id <= U64_MAX or group_id <= self._max_group_id:
            raise _refuse(f"group id {group_id} is not above every allocated one "
                          f"({self._max_group_id}): ids are never reused")

    def _bootstrap(self, c: MetaCommand) -> list[RangeDescriptor]:
        if self._map is not None:
            raise _refuse(f"the shard map is already bootstrapped (version {self._map.version})")
        self._new_ids(c.range_id, c.group_id)
        descriptor = RangeDescriptor(c.range_id, b"", None, c.group_id,
                                     tuple(Replica(node) for node in c.voter_ids))
        problem = descriptor.problem()
        if problem is not None:
            raise _refuse(f"bootstrap: {problem}")
        self._map = ShardMap(1, [descriptor])
        self._max_range_id, self._max_group_id = c.range_id, c.group_id
        return [descriptor]

    def _split(self, shard_map: ShardMap, c: MetaCommand) -> list[RangeDescriptor]:
        old = self._current(shard_map, c.range_id, c.epoch)
        if not (old.start < c.key and (old.end is None or c.key < old.end)):
            raise _refuse(f"split key {_show(c.key)} is not inside range {old.range_id} "
                          f"[{_show(old.start)}, {_show(old.end)}): both sides must be "
                          "non-empty")
        self._new_ids(c.new_range_id, c.new_group_id)
        epoch = old.epoch + 1
        if epoch > U64_MAX:
            raise _refuse(f"range {old.range_id}: epoch exhausted")
        left = RangeDescriptor(old.range_id, old.start, c.key, old.group_id, old.replicas,
                               epoch)
        right = RangeDescriptor(c.new_range_id, c.key, old.end, c.new_group_id, old.replicas,
                                epoch)
        changed = self._install(shard_map, [old.range_id], [left, right])
        self._max_range_id, self._max_group_id = c.new_range_id, c.new_group_id
        return changed

    def _merge(self, shard_map: ShardMap, c: MetaCommand) -> list[RangeDescriptor]:
        left = self._current(shard_map, c.range_id, c.epoch)
        right = self._current(shard_map, c.right_range_id, c.right_epoch)
        if left.end != right.start:
            raise _refuse(f"ranges {left.range_id} and {right.range_id} are not adjacent "
                          f"(left ends at {_show(left.end)}, right starts at {_show(right.start)})")
        if left.replicas != right.replicas:
            raise _refuse(f"ranges {left.range_id} and {right.range_id} are on different "
                          "replica sets: move replicas until they are aligned, then merge")
        epoch = max(left.epoch, right.epoch) + 1
        if epoch > U64_MAX:
            raise _refuse(f"range {left.range_id}: epoch exhausted")
        merged = RangeDescriptor(left.range_id, left.start, right.end, left.group_id,
                                 left.replicas, epoch)
        return self._install(shard_map, [left.range_id, right.range_id], [merged])

    def _change_replicas(self, shard_map: ShardMap, c: MetaCommand) -> list[RangeDescriptor]:
        old = self._current(shard_map, c.range_id, c.epoch)
        present = old.replica(c.node_id)
        others = [r for r in old.replicas if r.node_id != c.node_id]
        where = f"range {old.range_id}"
        if c.op == MetaOp.ADD_LEARNER:
            if present is not None:
                raise _refuse(f"{where}: node {c.node_id} is already a {present.role.name}")
            replicas = (*others, Replica(c.node_id, ReplicaRole.LEARNER))
        elif c.op == MetaOp.PROMOTE:
            if present is None or present.role != ReplicaRole.LEARNER:
                raise _refuse(f"{where}: node {c.node_id} is not a learner")
            replicas = (*others, Replica(c.node_id, ReplicaRole.VOTER))
        else:
            if present is None:
                raise _refuse(f"{where}: node {c.node_id} is not a replica")
            if present.role == ReplicaRole.VOTER and len(old.voters) == 1:
                raise _refuse(f"{where}: node {c.node_id} is the last voter")
            replicas = tuple(others)
        if old.epoch + 1 > U64_MAX:
            raise _refuse(f"{where}: epoch exhausted")
        new = RangeDescriptor(old.range_id, old.start, old.end, old.group_id, replicas,
                              old.epoch + 1)
        problem = new.problem()
        if problem is not None:
            raise _refuse(problem)
        return self._install(shard_map, [old.range_id], [new])

    # ------------------------------------------------------------------ query

    def query(self, query: bytes) -> bytes:
        reader = Reader(query, 0, "meta query")
        try:
            version, op_code = reader.u8("version"), reader.u8("op")
            op = _QUERIES.get(op_code)
            if version != VERSION or op is None:
                raise DecodeError(f"meta query version {version} op {op_code}")
            start = end = None
            if op == MetaQuery.LOOKUP:
                start = reader.blob("key")
            elif op == MetaQuery.SPAN:
                start, end = reader.blob("start"), reader.optional_end("end")
            reader.finish()
        except DecodeError as exc:
            return encode_refusal(MetaStatus.MALFORMED, f"malformed meta query: {exc}")
        if self._map is None:
            return encode_refusal(MetaStatus.REFUSED, "the shard map is not bootstrapped")
        if op == MetaQuery.MAP:
            found = list(self._map.ranges)
        elif op == MetaQuery.LOOKUP:
            assert start is not None
            found = [self._map.lookup(start)]
        else:
            assert start is not None
            found = self._map.overlapping(start, end)
        return encode_ok(self._map, self._max_range_id, self._max_group_id, found)

    # ------------------------------------------------------------------ snapshots

    def snapshot(self) -> bytes:
        """magic "EMET" | u16 1 | u64 applied index | u64 max range id | u64 max group id
        | u8 bootstrapped | [the encoded, checksummed ShardMap]"""
        head = _SNAPSHOT_HEAD.pack(_SNAPSHOT_MAGIC, VERSION, self._applied_index,
                                   self._max_range_id, self._max_group_id,
                                   self._map is not None)
        return head if self._map is None else head + self._map.encode()

    def restore(self, data: bytes) -> None:
        """Replace the state; DecodeError (state unchanged) if `data` does not check out."""
        view = memoryview(data)
        if len(view) < _SNAPSHOT_HEAD.size:
            raise DecodeError(f"meta snapshot of {len(view)} bytes is shorter than its header")
        magic, version, applied, max_range, max_group, has_map = _SNAPSHOT_HEAD.unpack_from(
            view, 0)
        if magic != _SNAPSHOT_MAGIC or version != VERSION or has_map not in (0, 1):
            raise DecodeError(f"meta snapshot has magic {bytes(magic)!r} version {version}")
        rest = view[_SNAPSHOT_HEAD.size:]
        if not has_map:
            if len(rest):
                raise DecodeError(f"{len(rest)} trailing bytes after meta snapshot")
            shard_map = None
        else:
            shard_map = ShardMap.decode(rest)
            if (max(r.range_id for r in shard_map) > max_range
                    or max(r.group_id for r in shard_map) > max_group):
                raise DecodeError("meta snapshot: a range or group id above the allocated")
        self._map = shard_map
        self._max_range_id, self._max_group_id = max_range, max_group
        self._applied_index = applied
