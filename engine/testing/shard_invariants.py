"""Safety invariants of a sharded key space, over the history of its shard map.

The shard map is the meta group's state: half-open key ranges [start, end) (end None = +inf)
each served by one consensus group, with an epoch bumped on every change of that range
(CockroachDB's descriptor generation). The properties, checked on every map version a
harness observes:

  Coverage          at every version each key belongs to exactly one range: sorted by start,
                    the first range starts at b"", each ends where the next starts (no gap,
                    no overlap), the last is unbounded, and none is empty.
  Live replicas     a range has at least one replica, at least one of them a voter, and
                    names each node once.
  Unique ids        range ids and group ids are unique among the live ranges of a version
                    (two ranges on one group would apply each other's writes).
  Epochs            versions strictly increase; the epoch of a range id never goes back; a
                    range id whose descriptor changed has a strictly greater epoch; a range
                    id, once retired by a merge, never comes back.
  Epoch order       a descriptor that replaces an overlapping one has a strictly greater
                    epoch: what lets a routing cache (engine.shard.routing) tell the newer of
                    two overlapping descriptors without knowing their ancestry.

And over what the groups applied:

  Ownership         no write was applied by a range that did not own its key at the time:
                    for an apply record (map version, range id, key), the range exists in
                    that version and its span contains the key (check_writes_owned).

The checks read descriptors through a small protocol (`RangeView`, `MapView`) rather than
engine.shard's own validation, so a map that engine.shard would refuse to build can still
be checked, and a bug in that validation does not hide a violation here. A violation is a
message naming the version and range; `check_*` raise engine.errors.InvariantViolation.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol

from engine.errors import InvariantViolation

VOTER_ROLE = "voter"


class ReplicaView(Protocol):
    @property
    def node_id(self) -> int: ...
    @property
    def role(self) -> object: ...   # compared by its name / value "voter"


class RangeView(Protocol):
    @property
    def range_id(self) -> int: ...
    @property
    def start(self) -> bytes: ...
    @property
    def end(self) -> bytes | None: ...
    @property
    def group_id(self) -> int: ...
    @property
    def replicas(self) -> Sequence[ReplicaView]: ...
    @property
    def epoch(self) -> int: ...


class MapView(Protocol):
    @property
    def version(self) -> int: ...
    @property
    def ranges(self) -> Sequence[RangeView]: ...


@dataclass(frozen=True, slots=True)
class ApplyRecord:
    """A write some range applied: its key, the applying range and the map version the
    applying replica held (the version its range descriptor comes from)."""

    map_version: int
    range_id: int
    key: bytes


def _is_voter(role: object) -> bool:
    text = getattr(role, "name", None) or getattr(role, "value", None) or role
    return str(text).lower() == VOTER_ROLE


def _contains(view: RangeView, key: bytes) -> bool:
    return view.start <= key and (view.end is None or key < view.end)


def _overlap(a: RangeView, b: RangeView) -> bool:
    return ((a.end is None or b.start < a.end) and (b.end is None or a.start < b.end))


def _key(descriptor: RangeView) -> tuple[object, ...]:
    replicas = tuple((r.node_id, _is_voter(r.role)) for r in descriptor.replicas)
    return (descriptor.start, descriptor.end, descriptor.group_id, replicas, descriptor.epoch)


def version_violations(view: MapView) -> list[str]:
    """Coverage, live replicas and unique ids of one map version."""
    found: list[str] = []
    at = f"version {view.version}"
    ranges = sorted(view.ranges, key=lambda r: r.start)
    if not ranges:
        return [f"{at}: no range: the key space is not covered"]
    if ranges[0].start != b"":
        found.append(f"{at}: gap [b'', {ranges[0].start!r}) before range {ranges[0].range_id}")
    for left, right in zip(ranges, ranges[1:], strict=False):
        if left.end is None or left.end > right.start:
            found.append(f"{at}: ranges {left.range_id} and {right.range_id} overlap at "
                         f"{right.start!r}")
        elif left.end < right.start:
            found.append(f"{at}: gap [{left.end!r}, {right.start!r}) between ranges "
                         f"{left.range_id} and {right.range_id}")
    if ranges[-1].end is not None:
        found.append(f"{at}: gap [{ranges[-1].end!r}, +inf) after range {ranges[-1].range_id}")
    seen_ranges: set[int] = set()
    seen_groups: dict[int, int] = {}
    for r in ranges:
        if r.end is not None and not r.start < r.end:
            found.append(f"{at}: range {r.range_id} is empty [{r.start!r}, {r.end!r})")
        if not r.replicas:
            found.append(f"{at}: range {r.range_id} has no replica")
        elif not any(_is_voter(replica.role) for replica in r.replicas):
            found.append(f"{at}: range {r.range_id} has no voter")
        nodes = [replica.node_id for replica in r.replicas]
        if len(set(nodes)) != len(nodes):
            found.append(f"{at}: range {r.range_id} names a node twice: {nodes}")
        if r.range_id in seen_ranges:
            found.append(f"{at}: range id {r.range_id} appears twice")
        seen_ranges.add(r.range_id)
        if r.group_id in seen_groups:
            found.append(f"{at}: ranges {seen_groups[r.group_id]} and {r.range_id} share "
                         f"group {r.group_id}")
        seen_groups.setdefault(r.group_id, r.range_id)
    return found


class ShardMapChecker:
    """Incremental: `observe(view)` after every change; violations so far in `violations`
    (`check` raises on the first observation that adds any)."""

    def __init__(self) -> None:
        self.violations: list[str] = []
        self._last: MapView | None = None
        self._epochs: dict[int, int] = {}              # range id -> highest epoch seen
        self._descriptors: dict[int, tuple[object, ...]] = {}   # range id -> last seen
        self._retired: set[int] = set()
        self._maps: dict[int, dict[int, RangeView]] = {}   # version -> range id -> range

    def observe(self, view: MapView) -> list[str]:
        found = version_violations(view)
        last = self._last
        at = f"version {view.version}"
        if last is not None and view.version <= last.version:
            if view.version == last.version and _map_key(view) == _map_key(last):
                return []   # the same version observed again
            found.append(f"{at}: map version did not increase (last {last.version})")
        live = {r.range_id for r in view.ranges}
        for r in view.ranges:
            if r.range_id in self._retired:
                found.append(f"{at}: retired range id {r.range_id} came back")
            previous = self._epochs.get(r.range_id)
            if previous is not None and r.epoch < previous:
                found.append(f"{at}: range {r.range_id} epoch went back {previous} -> {r.epoch}")
            elif (previous is not None and r.epoch == previous
                  and self._descriptors[r.range_id] != _key(r)):
                found.append(f"{at}: range {r.range_id} changed without an epoch bump "
                             f"(epoch {r.epoch})")
        if last is not None:
            for old in last.ranges:
                if old.range_id not in live:
                    self._retired.add(old.range_id)
            unchanged = {(r.range_id, _key(r)) for r in last.ranges}
            for r in view.ranges:
                if (r.range_id, _key(r)) in unchanged:
                    continue
                for old in last.ranges:
                    # The same range id is the per-id epoch check's.
                    if (old.range_id != r.range_id and _overlap(old, r)
                            and r.epoch <= old.epoch):
                        found.append(
                            f"{at}: range {r.range_id} epoch {r.epoch} replaces overlapping "
                            f"range {old.range_id} epoch {old.epoch} without a greater epoch")
        for r in view.ranges:
            self._epochs[r.range_id] = max(r.epoch, self._epochs.get(r.range_id, r.epoch))
            self._descriptors[r.range_id] = _key(r)
        self._maps[view.version] = {r.range_id: r for r in view.ranges}
        self._last = view
        self.violations.extend(found)
        return found

    def check(self, view: MapView) -> None:
        found = self.observe(view)
        if found:
            raise InvariantViolation("; ".join(found))

    def write_violations(self, records: Iterable[ApplyRecord]) -> list[str]:
        """Ownership over the versions observed so far (see check_writes_owned)."""
        found = []
        for record in records:
            ranges = self._maps.get(record.map_version)
            if ranges is None:
                found.append(f"write of {record.key!r} by range {record.range_id} at unknown "
                             f"map version {record.map_version}")
                continue
            owner = ranges.get(record.range_id)
            if owner is None:
                found.append(f"write of {record.key!r} applied by range {record.range_id}, "
                             f"which does not exist at version {record.map_version}")
            elif not _contains(owner, record.key):
                found.append(f"write of {record.key!r} applied by range {record.range_id} "
                             f"[{owner.start!r}, {owner.end!r}) at version "
                             f"{record.map_version}: not its key")
        return found


def _map_key(view: MapView) -> list[tuple[object, ...]]:
    return sorted((r.range_id, *_key(r)) for r in view.ranges)


def history_violations(views: Iterable[MapView]) -> list[str]:
    """Every invariant over a sequence of map versions, oldest first."""
    checker = ShardMapChecker()
    for view in views:
        checker.observe(view)
    return checker.violations


def check_history(views: Iterable[MapView]) -> None:
    found = history_violations(views)
    if found:
        raise InvariantViolation("; ".join(found))


def write_violations(views: Iterable[MapView], records: Iterable[ApplyRecord]) -> list[str]:
    """Ownership: each record's range existed at its map version and owned its key."""
    checker = ShardMapChecker()
    for view in views:
        checker.observe(view)
    return checker.write_violations(records)


def check_writes_owned(views: Iterable[MapView], records: Iterable[ApplyRecord]) -> None:
    found = write_violations(views, records)
    if found:
        raise InvariantViolation("; ".join(found))
