"""The shard-map checker (engine/testing/shard_invariants.py) catches each planted violation.

Method: stand-in descriptors (plain dataclasses, not engine.shard's validated ones, so a
broken map can be built at all) form a correct history that passes; then one planted fault
per invariant must produce exactly the violation it names.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import pytest

from engine.errors import InvariantViolation
from engine.testing.shard_invariants import (
    ApplyRecord,
    ShardMapChecker,
    check_history,
    check_writes_owned,
    history_violations,
    version_violations,
    write_violations,
)


@dataclass(frozen=True)
class Rep:
    node_id: int
    role: str = "voter"


@dataclass(frozen=True)
class Rng:
    range_id: int
    start: bytes
    end: bytes | None
    group_id: int
    epoch: int = 1
    replicas: tuple[Rep, ...] = (Rep(1), Rep(2), Rep(3))


@dataclass(frozen=True)
class Map:
    version: int
    ranges: tuple[Rng, ...]


BOOT = Map(1, (Rng(1, b"", None, 10),))
SPLIT = Map(2, (Rng(1, b"", b"m", 10, 2), Rng(2, b"m", None, 11, 2)))
MOVE = Map(3, (Rng(1, b"", b"m", 10, 3, (Rep(1), Rep(2), Rep(3), Rep(4, "learner"))),
               Rng(2, b"m", None, 11, 2)))
MERGE = Map(4, (Rng(1, b"", None, 10, 4, (Rep(1), Rep(2), Rep(3))),))
GOOD = [BOOT, SPLIT, MOVE, MERGE]


def test_a_correct_history_passes() -> None:
    assert history_violations(GOOD) == []
    check_history(GOOD)


@pytest.mark.parametrize(("ranges", "expected"), [
    ((Rng(1, b"a", None, 10),), "gap [b'', b'a') before range 1"),
    ((Rng(1, b"", b"m", 10), Rng(2, b"n", None, 11)), "gap [b'm', b'n') between ranges 1 and 2"),
    ((Rng(1, b"", b"n", 10), Rng(2, b"m", None, 11)), "ranges 1 and 2 overlap at b'm'"),
    ((Rng(1, b"", None, 10), Rng(2, b"m", None, 11)), "ranges 1 and 2 overlap at b'm'"),
    ((Rng(1, b"", b"m", 10),), "gap [b'm', +inf) after range 1"),
    ((Rng(1, b"", b"", 10), Rng(2, b"", None, 11)), "range 1 is empty [b'', b'')"),
    ((Rng(1, b"", None, 10, replicas=()),), "range 1 has no replica"),
    ((Rng(1, b"", None, 10, replicas=(Rep(1, "learner"),)),), "range 1 has no voter"),
    ((Rng(1, b"", None, 10, replicas=(Rep(1), Rep(1))),), "range 1 names a node twice"),
    ((Rng(1, b"", b"m", 10), Rng(2, b"m", None, 10)), "ranges 1 and 2 share group 10"),
    ((Rng(1, b"", b"m", 10), Rng(1, b"m", None, 11)), "range id 1 appears twice"),
    ((), "no range: the key space is not covered"),
])
def test_a_broken_version_is_caught(ranges: tuple[Rng, ...], expected: str) -> None:
    found = version_violations(Map(7, ranges))
    assert any(expected in message for message in found), found
    with pytest.raises(InvariantViolation, match="version 7"):
        check_history([Map(7, ranges)])


def test_an_epoch_going_back_is_caught() -> None:
    back = Map(5, (Rng(1, b"", None, 10, 3),))
    assert history_violations([*GOOD, back]) == ["version 5: range 1 epoch went back 4 -> 3"]


def test_a_change_without_an_epoch_bump_is_caught() -> None:
    moved = Map(3, (Rng(1, b"", b"m", 10, 2, (Rep(1), Rep(2), Rep(4))), SPLIT.ranges[1]))
    assert history_violations([BOOT, SPLIT, moved]) == [
        "version 3: range 1 changed without an epoch bump (epoch 2)"]


def test_a_version_that_does_not_increase_is_caught() -> None:
    assert history_violations([BOOT, replace(SPLIT, version=1)]) == [
        "version 1: map version did not increase (last 1)"]
    # Observing the same version twice is not a change.
    assert history_violations([BOOT, BOOT, SPLIT, SPLIT]) == []


def test_a_retired_range_id_coming_back_is_caught() -> None:
    resplit = Map(5, (Rng(1, b"", b"m", 10, 5), Rng(2, b"m", None, 11, 5)))
    assert history_violations([*GOOD, resplit]) == ["version 5: retired range id 2 came back"]


def test_a_replacing_descriptor_without_a_greater_epoch_is_caught() -> None:
    # The right-hand side of a split keeps the parent's epoch: a routing cache could not tell
    # it from the parent it replaces.
    split = Map(2, (Rng(1, b"", b"m", 10, 2), Rng(2, b"m", None, 11, 1)))
    assert history_violations([BOOT, split]) == [
        "version 2: range 2 epoch 1 replaces overlapping range 1 epoch 1 without a greater "
        "epoch"]


def test_the_incremental_checker_raises_on_the_step_that_breaks() -> None:
    checker = ShardMapChecker()
    checker.check(BOOT)
    checker.check(SPLIT)
    with pytest.raises(InvariantViolation, match="gap"):
        checker.check(Map(3, (Rng(1, b"", b"l", 10, 3), SPLIT.ranges[1])))


def test_writes_applied_by_their_owner_pass() -> None:
    records = [ApplyRecord(1, 1, b"x"), ApplyRecord(2, 1, b"a"), ApplyRecord(2, 2, b"m"),
               ApplyRecord(4, 1, b"zz")]
    assert write_violations(GOOD, records) == []
    check_writes_owned(GOOD, records)


@pytest.mark.parametrize(("record", "expected"), [
    # The left side applied a key that moved to the right side at the split.
    (ApplyRecord(2, 1, b"x"), "write of b'x' applied by range 1 [b'', b'm') at version 2: "
                              "not its key"),
    # The right side applied after the merge retired it.
    (ApplyRecord(4, 2, b"x"), "write of b'x' applied by range 2, which does not exist at "
                              "version 4"),
    (ApplyRecord(9, 1, b"x"), "write of b'x' by range 1 at unknown map version 9"),
    # The end key is exclusive.
    (ApplyRecord(2, 1, b"m"), "write of b'm' applied by range 1 [b'', b'm') at version 2: "
                              "not its key"),
])
def test_a_write_applied_by_a_range_not_owning_its_key_is_caught(
        record: ApplyRecord, expected: str) -> None:
    assert write_violations(GOOD, [record]) == [expected]
    with pytest.raises(InvariantViolation):
        check_writes_owned(GOOD, [record])
