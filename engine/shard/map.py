"""The shard map: which consensus group serves which key range.

The key space (every byte string, ordered bytewise) is cut into half-open ranges
[start, end), `end` None meaning +infinity; the ranges of a map cover it exactly once (the
first starts at b"", each ends where the next starts, the last is unbounded). Each range has
a RangeDescriptor: its id, its span, the consensus group that replicates it, that group's
replicas (voters and learners, by node id) and an epoch. The map has a version, bumped on
every change.

Epochs (CockroachDB's descriptor generation, docs/tech-notes/range-merges.md): a range's
epoch is bumped on every change of that range (split, merge, replica change). Both sides of a
split take the parent's epoch + 1 and a merge takes max(left, right) + 1, so a descriptor that
replaces an overlapping one always has a strictly greater epoch: of two overlapping
descriptors, the one with the greater epoch is the newer, whatever their range ids. The
routing cache (engine.shard.routing) and the wrong-shard answer (engine.errors.WrongShard)
rely on exactly that.

Lookup is O(log n): a bisect over the sorted starts.

Encoding (the meta group's snapshot and the map a client fetches), little-endian::

    magic "ESHM" | u16 format (=1) | u64 map version | u32 range count | range* | digest
    range:   u64 range id | u64 group id | u64 epoch | u32 len | start
             | u8 bounded (0: end = +inf, 1: an end follows) | [u32 len | end]
             | u16 replica count | (u64 node id | u8 role)*

digest = 32-byte BLAKE2b-256 over everything before it (the convention of
engine.replication.snapshot). `ShardMap.decode` checks the digest, every length and count,
and then every invariant of the map (coverage, ids, replicas), so hostile or damaged bytes
raise engine.errors.DecodeError and never yield a map that routes a key twice or nowhere.
"""

from __future__ import annotations

import bisect
import hashlib
import struct
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from enum import IntEnum

from engine.errors import ConfigError, DecodeError, WrongShard
from engine.types import MAX_NODE_ID

FORMAT_VERSION = 1
MAGIC = b"ESHM"
DIGEST_BYTES = 32
U64_MAX = (1 << 64) - 1
U32_MAX = (1 << 32) - 1
U16_MAX = (1 << 16) - 1

_HEAD = struct.Struct("<4sHQI")
_RANGE_HEAD = struct.Struct("<QQQ")
_U32 = struct.Struct("<I")
_U16 = struct.Struct("<H")
_U8 = struct.Struct("<B")
_REPLICA = struct.Struct("<QB")
# The fewest bytes a range record takes (empty start, unbounded, one replica): a declared
# count above what the remaining bytes can hold is refused before any loop runs.
MIN_RANGE_BYTES = _RANGE_HEAD.size + _U32.size + _U8.size + _U16.size + _REPLICA.size


class ReplicaRole(IntEnum):
    """A voter counts in the group's quorums; a learner receives the log and snapshots but
    does not vote (Raft thesis §4.2.1): how a moved replica catches up before it counts."""

    VOTER = 1
    LEARNER = 2


_ROLES: dict[int, ReplicaRole] = {int(role): role for role in ReplicaRole}


@dataclass(frozen=True, slots=True)
class Replica:
    node_id: int
    role: ReplicaRole = ReplicaRole.VOTER


@dataclass(frozen=True, slots=True)
class RangeDescriptor:
    """One range: [start, end) (end None = +inf), served by `group_id` on `replicas` (kept
    sorted by node id, so equal replica sets compare equal), at `epoch`."""

    range_id: int
    start: bytes
    end: bytes | None
    group_id: int
    replicas: tuple[Replica, ...]
    epoch: int = 1
    _voters: tuple[int, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        replicas = tuple(sorted(self.replicas, key=lambda r: r.node_id))
        object.__setattr__(self, "replicas", replicas)
        object.__setattr__(self, "_voters", tuple(
            r.node_id for r in replicas if r.role == ReplicaRole.VOTER))

    def contains(self, key: bytes) -> bool:
        return self.start <= key and (self.end is None or key < self.end)

    def overlaps(self, start: bytes, end: bytes | None) -> bool:
        """Does [self.start, self.end) meet [start, end)?"""
        return ((end is None or self.start < end)
                and (self.end is None or start < self.end))

    @property
    def voters(self) -> tuple[int, ...]:
        return self._voters

    @property
    def learners(self) -> tuple[int, ...]:
        return tuple(r.node_id for r in self.replicas if r.role == ReplicaRole.LEARNER)

    def replica(self, node_id: int) -> Replica | None:
        for replica in self.replicas:
            if replica.node_id == node_id:
                return replica
        return None

    def problem(self) -> str | None:
        """Why this descriptor is invalid on its own, or None."""
        where = f"range {self.range_id}"
        if not isinstance(self.range_id, int) or not 1 <= self.range_id <= U64_MAX:
            return f"range id {self.range_id!r} is not in [1, 2**64)"
        if not isinstance(self.group_id, int) or not 1 <= self.group_id <= U64_MAX:
            return f"{where}: group id {self.group_id!r} is not in [1, 2**64)"
        if not isinstance(self.epoch, int) or not 1 <= self.epoch <= U64_MAX:
            return f"{where}: epoch {self.epoch!r} is not in [1, 2**64)"
        if not isinstance(self.start, bytes) or len(self.start) > U32_MAX:
            return f"{where}: start must be bytes"
        if self.end is not None:
            if not isinstance(self.end, bytes) or len(self.end) > U32_MAX:
                return f"{where}: end must be bytes or None"
            if not self.start < self.end:
                return f"{where}: empty span [{self.start!r}, {self.end!r})"
        if not self.replicas:
            return f"{where}: no replica"
        if len(self.replicas) > U16_MAX:
            return f"{where}: {len(self.replicas)} replicas"
        for replica in self.replicas:
            if (not isinstance(replica.node_id, int)
                    or not 1 <= replica.node_id <= MAX_NODE_ID):
                return f"{where}: node id {replica.node_id!r} is not in [1, 2**32)"
            if replica.role not in _ROLES.values():
                return f"{where}: node {replica.node_id} has role {replica.role!r}"
        nodes = [r.node_id for r in self.replicas]
        if len(set(nodes)) != len(nodes):
            return f"{where}: node listed twice in {nodes}"
        if not self._voters:
            return f"{where}: no voter (a group without a voter can commit nothing)"
        return None


def check_owner(descriptor: RangeDescriptor, key: bytes, *,
                hints: Sequence[RangeDescriptor] = ()) -> None:
    """What a replica of `descriptor`'s range does before proposing a write of `key`, and
    again when applying it: WrongShard (with the range's current epoch and `hints`, the
    descriptors it knows around the key) unless the range owns the key. The check at apply
    time is what makes "no write applied by a range that did not own its key" hold across a
    split that commits between a write's proposal and its application."""
    if not descriptor.contains(key):
        raise WrongShard(key, range_id=descriptor.range_id, epoch=descriptor.epoch,
                         descriptors=tuple(hints))


def voters(*node_ids: int) -> tuple[Replica, ...]:
    """Replicas that all vote: `voters(1, 2, 3)`."""
    return tuple(Replica(node_id) for node_id in node_ids)


class ShardMap:
    """A versioned map of ranges covering the key space exactly once (see the module
    docstring). Immutable: a change builds a new map (`replace`). Raises ConfigError if the
    ranges do not cover the key space exactly once or a descriptor is invalid."""

    __slots__ = ("_by_id", "_ranges", "_starts", "_version")

    def __init__(self, version: int, ranges: Iterable[RangeDescriptor]) -> None:
        ordered = tuple(sorted(ranges, key=lambda r: r.start))
        problem = map_problem(version, ordered)
        if problem is not None:
            raise ConfigError(f"shard map version {version}: {problem}")
        self._version = version
        self._ranges = ordered
        self._starts = [r.start for r in ordered]
        self._by_id = {r.range_id: i for i, r in enumerate(ordered)}

    @classmethod
    def bootstrap(cls, range_id: int, group_id: int, replicas: Sequence[Replica],
                  *, version: int = 1) -> ShardMap:
        """One range over the whole key space, at epoch 1."""
        return cls(version, [RangeDescriptor(range_id, b"", None, group_id, tuple(replicas))])

    @classmethod
    def presplit(cls, split_keys: Iterable[bytes], replicas: Sequence[Replica], *,
                 first_range_id: int = 1, first_group_id: int = 1,
                 version: int = 1) -> ShardMap:
        """Ranges cut at `split_keys` (sorted, distinct, non-empty), ids counting up from the
        given first ones, all on the same replicas, at epoch 1: a test or demo cluster's
        initial map."""
        keys = sorted(set(split_keys))
        bounds: list[bytes | None] = [b"", *keys, None]
        ranges = []
        for i in range(len(bounds) - 1):
            start, end = bounds[i], bounds[i + 1]
            assert start is not None
            ranges.append(RangeDescriptor(first_range_id + i, start, end, first_group_id + i,
                                          tuple(replicas)))
        return cls(version, ranges)

    # ------------------------------------------------------------------ reading

    @property
    def version(self) -> int:
        return self._version

    @property
    def ranges(self) -> tuple[RangeDescriptor, ...]:
        """Every range, in key order."""
        return self._ranges

    def __len__(self) -> int:
        return len(self._ranges)

    def __iter__(self) -> Iterator[RangeDescriptor]:
        return iter(self._ranges)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, ShardMap):
            return NotImplemented
        return self._version == other._version and self._ranges == other._ranges

    def __hash__(self) -> int:
        return hash((self._version, self._ranges))

    def __repr__(self) -> str:
        return f"ShardMap(version={self._version}, ranges={len(self._ranges)})"

    def lookup(self, key: bytes) -> RangeDescriptor:
        """The range owning `key`: O(log n)."""
        # starts[0] == b"" <= every key, so the index is never -1.
        return self._ranges[bisect.bisect_right(self._starts, key) - 1]

    def overlapping(self, start: bytes, end: bytes | None) -> list[RangeDescriptor]:
        """The ranges meeting [start, end) (end None = +inf), in key order."""
        if end is not None and not start < end:
            return []
        first = bisect.bisect_right(self._starts, start) - 1
        last = len(self._ranges) if end is None else bisect.bisect_left(self._starts, end)
        return list(self._ranges[first:last])

    def get(self, range_id: int) -> RangeDescriptor | None:
        index = self._by_id.get(range_id)
        return None if index is None else self._ranges[index]

    def __getitem__(self, range_id: int) -> RangeDescriptor:
        descriptor = self.get(range_id)
        if descriptor is None:
            raise KeyError(range_id)
        return descriptor

    def __contains__(self, range_id: object) -> bool:
        return range_id in self._by_id

    def group_ids(self) -> set[int]:
        return {r.group_id for r in self._ranges}

    # ------------------------------------------------------------------ changing

    def replace(self, remove: Iterable[int], add: Iterable[RangeDescriptor]) -> ShardMap:
        """A map of the next version: without the ranges `remove` names, with `add`.
        ConfigError if the result does not cover the key space exactly once."""
        gone = set(remove)
        kept = [r for r in self._ranges if r.range_id not in gone]
        return ShardMap(self._version + 1, [*kept, *add])

    # ------------------------------------------------------------------ bytes

    def encode(self) -> bytes:
        body = b"".join((_HEAD.pack(MAGIC, FORMAT_VERSION, self._version, len(self._ranges)),
                         *(encode_descriptor(r) for r in self._ranges)))
        return body + _digest(body)

    @classmethod
    def decode(cls, data: bytes | bytearray | memoryview) -> ShardMap:
        """The map these bytes encode; DecodeError for anything that does not check out."""
        view = memoryview(data)
        if len(view) < _HEAD.size + DIGEST_BYTES:
            raise DecodeError(f"shard map of {len(view)} bytes is shorter than its header")
        body = view[:len(view) - DIGEST_BYTES]
        if _digest(body) != bytes(view[len(view) - DIGEST_BYTES:]):
            raise DecodeError("shard map: checksum mismatch")
        magic, fmt, version, count = _HEAD.unpack_from(body, 0)
        if magic != MAGIC or fmt != FORMAT_VERSION:
            raise DecodeError(f"shard map has magic {bytes(magic)!r} format {fmt}")
        reader = Reader(body, _HEAD.size, "shard map")
        ranges = reader.descriptors(count)
        reader.finish()
        try:
            return cls(version, ranges)
        except ConfigError as exc:
            raise DecodeError(f"shard map is invalid: {exc}") from None


def map_problem(version: int, ordered: Sequence[RangeDescriptor]) -> str | None:
    """Why ranges sorted by start are not a valid map, or None."""
    if not isinstance(version, int) or not 1 <= version <= U64_MAX:
        return f"version {version!r} is not in [1, 2**64)"
    if not ordered:
        return "no range: the key space is not covered"
    if ordered[0].start != b"":
        return f"gap [b'', {ordered[0].start!r}) before range {ordered[0].range_id}"
    for left, right in zip(ordered, ordered[1:], strict=False):
        if left.end != right.start:
            kind = "overlap" if left.end is None or left.end > right.start else "gap"
            return (f"{kind} between range {left.range_id} (end {left.end!r}) and range "
                    f"{right.range_id} (start {right.start!r})")
    if ordered[-1].end is not None:
        return f"gap [{ordered[-1].end!r}, +inf) after range {ordered[-1].range_id}"
    range_ids: set[int] = set()
    group_ids: set[int] = set()
    for r in ordered:
        problem = r.problem()
        if problem is not None:
            return problem
        if r.range_id in range_ids:
            return f"range id {r.range_id} used twice"
        if r.group_id in group_ids:
            return f"group id {r.group_id} serves two ranges"
        range_ids.add(r.range_id)
        group_ids.add(r.group_id)
    return None


def _digest(body: bytes | memoryview) -> bytes:
    return hashlib.blake2b(body, digest_size=DIGEST_BYTES).digest()


def encode_descriptor(r: RangeDescriptor) -> bytes:
    """One range record (see the module docstring)."""
    end = b"\x00" if r.end is None else b"\x01" + _U32.pack(len(r.end)) + r.end
    return b"".join((
        _RANGE_HEAD.pack(r.range_id, r.group_id, r.epoch), _U32.pack(len(r.start)), r.start,
        end, _U16.pack(len(r.replicas)),
        *(_REPLICA.pack(replica.node_id, replica.role) for replica in r.replicas),
    ))


def encode_descriptors(ranges: Sequence[RangeDescriptor]) -> bytes:
    """u32 count | range*: a list of descriptors (meta results, WrongShard hints)."""
    return _U32.pack(len(ranges)) + b"".join(encode_descriptor(r) for r in ranges)


class Reader:
    """Bounds-checked little-endian reads over a buffer: every overrun is a DecodeError
    naming `what` and the offset."""

    __slots__ = ("data", "offset", "what")

    def __init__(self, data: bytes | memoryview, offset: int, what: str) -> None:
        self.data = data
        self.offset = offset
        self.what = what

    def _take(self, size: int, field_name: str) -> int:
        at = self.offset
        if at + size > len(self.data):
            raise DecodeError(f"{self.what} truncated in {field_name} at offset {at}")
        self.offset = at + size
        return at

    def u8(self, field_name: str) -> int:
        return int(self.data[self._take(1, field_name)])

    def u16(self, field_name: str) -> int:
        return int(_U16.unpack_from(self.data, self._take(2, field_name))[0])

    def u32(self, field_name: str) -> int:
        return int(_U32.unpack_from(self.data, self._take(4, field_name))[0])

    def u64(self, field_name: str) -> int:
        return int(struct.unpack_from("<Q", self.data, self._take(8, field_name))[0])

    def blob(self, field_name: str) -> bytes:
        length = self.u32(f"{field_name} length")
        at = self._take(length, field_name)
        return bytes(self.data[at:at + length])

    def optional_end(self, field_name: str) -> bytes | None:
        flag = self.u8(f"{field_name} flag")
        if flag not in (0, 1):
            raise DecodeError(f"{self.what}: {field_name} flag {flag} at offset "
                              f"{self.offset - 1}")
        return None if flag == 0 else self.blob(field_name)

    def descriptor(self) -> RangeDescriptor:
        at = self._take(_RANGE_HEAD.size, "range header")
        range_id, group_id, epoch = _RANGE_HEAD.unpack_from(self.data, at)
        start = self.blob("range start")
        end = self.optional_end("range end")
        count = self.u16("replica count")
        if count * _REPLICA.size > len(self.data) - self.offset:
            raise DecodeError(f"{self.what}: {count} replicas exceed its size")
        replicas = []
        for _ in range(count):
            node_id, role = _REPLICA.unpack_from(self.data, self._take(_REPLICA.size, "replica"))
            if role not in _ROLES:
                raise DecodeError(f"{self.what}: range {range_id} replica {node_id} has "
                                  f"unknown role {role}")
            replicas.append(Replica(node_id, _ROLES[role]))
        descriptor = RangeDescriptor(range_id, start, end, group_id, tuple(replicas), epoch)
        problem = descriptor.problem()
        if problem is not None:
            raise DecodeError(f"{self.what}: {problem}")
        return descriptor

    def descriptors(self, count: int) -> list[RangeDescriptor]:
        if count * MIN_RANGE_BYTES > len(self.data) - self.offset:
            raise DecodeError(f"{self.what}: {count} ranges exceed its size")
        return [self.descriptor() for _ in range(count)]

    def descriptor_list(self) -> list[RangeDescriptor]:
        return self.descriptors(self.u32("range count"))

    def finish(self) -> None:
        if self.offset != len(self.data):
            raise DecodeError(f"{len(self.data) - self.offset} trailing bytes after "
                              f"{self.what}")


def decode_descriptors(data: bytes | memoryview) -> list[RangeDescriptor]:
    """The inverse of encode_descriptors (each descriptor checked on its own)."""
    reader = Reader(data, 0, "range descriptors")
    ranges = reader.descriptor_list()
    reader.finish()
    return ranges
