"""engine.shard.meta: the meta group's state machine.

Unit tests, one per command rule and refusal; then a hypothesis stateful test that drives
random splits, merges and replica moves (many with stale epochs, misaligned replicas, bad
keys or reused ids) through MetaStateMachine, restores a fresh machine from a snapshot
midway, and checks the shard-map history (engine/testing/shard_invariants.py) after every
step, plus write ownership for writes routed by each version.
"""

from __future__ import annotations

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from engine.errors import DecodeError, EpochMismatch, InvalidShardChange
from engine.shard.map import RangeDescriptor, Replica, ReplicaRole, ShardMap
from engine.shard.meta import (
    MetaResult,
    MetaStateMachine,
    MetaStatus,
    decode_command,
    decode_result,
    encode_add_learner,
    encode_bootstrap,
    encode_merge,
    encode_promote,
    encode_query_lookup,
    encode_query_map,
    encode_query_span,
    encode_remove_replica,
    encode_split,
)
from engine.testing.shard_invariants import ApplyRecord, ShardMapChecker
from engine.types import StateMachine


class Meta:
    """A MetaStateMachine with an index counter and decoded results."""

    def __init__(self) -> None:
        self.sm = MetaStateMachine()
        self.index = 0

    def apply(self, command: bytes) -> MetaResult:
        self.index += 1
        return decode_result(self.sm.apply(self.index, command))

    def query(self, query: bytes) -> MetaResult:
        return decode_result(self.sm.query(query))

    @property
    def map(self) -> ShardMap:
        assert self.sm.shard_map is not None
        return self.sm.shard_map


@pytest.fixture
def meta() -> Meta:
    m = Meta()
    assert m.apply(encode_bootstrap(1, 1, [1, 2, 3])).ok
    return m


def test_is_a_state_machine() -> None:
    assert isinstance(MetaStateMachine(), StateMachine)


def test_bootstrap_makes_one_range_over_everything_once() -> None:
    m = Meta()
    refused = m.query(encode_query_map())
    assert refused.status == MetaStatus.REFUSED and "not bootstrapped" in refused.message
    assert m.apply(encode_split(1, 1, b"m", 2, 2)).status == MetaStatus.REFUSED
    result = m.apply(encode_bootstrap(5, 9, [3, 1]))
    assert result.ok and result.map_version == 1
    [only] = result.descriptors
    assert (only.range_id, only.start, only.end, only.group_id, only.epoch, only.voters) == (
        5, b"", None, 9, 1, (1, 3))
    again = m.apply(encode_bootstrap(6, 10, [1]))
    assert again.status == MetaStatus.REFUSED and "already bootstrapped" in again.message
    with pytest.raises(InvalidShardChange):
        again.raise_for_status()
    assert Meta().apply(encode_bootstrap(1, 1, [])).status == MetaStatus.REFUSED


def test_split_keeps_the_left_and_bumps_both_epochs(meta: Meta) -> None:
    result = meta.apply(encode_split(1, 1, b"m", 2, 2))
    left, right = result.descriptors
    assert (left.range_id, left.start, left.end, left.group_id, left.epoch) == (1, b"", b"m", 1, 2)
    assert (right.range_id, right.start, right.end, right.group_id, right.epoch) == (
        2, b"m", None, 2, 2)
    assert left.replicas == right.replicas
    assert result.map_version == 2 == meta.map.version
    assert (result.max_range_id, result.max_group_id) == (2, 2)


def test_a_stale_epoch_is_refused_naming_the_current_one(meta: Meta) -> None:
    assert meta.apply(encode_split(1, 1, b"m", 2, 2)).ok
    stale = meta.apply(encode_split(1, 1, b"f", 3, 3))
    assert stale.status == MetaStatus.EPOCH_MISMATCH
    assert (stale.range_id, stale.expected_epoch, stale.current_epoch) == (1, 1, 2)
    assert stale.descriptors == (meta.map[1],)
    with pytest.raises(EpochMismatch, match="expected epoch 1, now 2") as caught:
        stale.raise_for_status()
    assert caught.value.current_epoch == 2
    assert meta.map.version == 2   # nothing changed
    gone = meta.apply(encode_split(7, 1, b"f", 3, 3))
    assert (gone.status, gone.current_epoch, gone.descriptors) == (
        MetaStatus.EPOCH_MISMATCH, 0, ())


@pytest.mark.parametrize(("key", "new_ids", "expected"), [
    (b"", (2, 2), "not inside range 1"),
    (b"m", (1, 2), "range id 1 is not above"),
    (b"m", (2, 1), "group id 1 is not above"),
    (b"m", (0, 2), "range id 0"),
])
def test_a_bad_split_is_refused(meta: Meta, key: bytes, new_ids: tuple[int, int],
                                expected: str) -> None:
    result = meta.apply(encode_split(1, 1, key, *new_ids))
    assert result.status == MetaStatus.REFUSED and expected in result.message, result
    assert meta.map.version == 1


def test_a_split_key_at_the_end_is_refused_and_long_keys_are_cut(meta: Meta) -> None:
    assert meta.apply(encode_split(1, 1, b"m", 2, 2)).ok
    assert meta.apply(encode_split(1, 2, b"m", 3, 3)).status == MetaStatus.REFUSED
    big = meta.apply(encode_split(1, 2, b"z" * 100_000, 3, 3))
    assert big.status == MetaStatus.REFUSED and len(big.message) <= 1_024


def test_ids_are_never_reused_after_a_merge(meta: Meta) -> None:
    assert meta.apply(encode_split(1, 1, b"m", 2, 2)).ok
    assert meta.apply(encode_merge(1, 2, 2, 2)).ok
    again = meta.apply(encode_split(1, 3, b"m", 2, 2))
    assert again.status == MetaStatus.REFUSED and "never reused" in again.message


def test_merge_of_aligned_adjacent_ranges(meta: Meta) -> None:
    assert meta.apply(encode_split(1, 1, b"m", 2, 2)).ok
    assert meta.apply(encode_split(2, 2, b"t", 3, 3)).ok
    # 1 [, m) @2, 2 [m, t) @3, 3 [t, ) @3
    not_adjacent = meta.apply(encode_merge(1, 2, 3, 3))
    assert not_adjacent.status == MetaStatus.REFUSED and "not adjacent" in not_adjacent.message
    backwards = meta.apply(encode_merge(2, 3, 1, 2))
    assert backwards.status == MetaStatus.REFUSED
    stale = meta.apply(encode_merge(1, 2, 2, 2))
    assert (stale.status, stale.range_id, stale.current_epoch) == (
        MetaStatus.EPOCH_MISMATCH, 2, 3)
    merged = meta.apply(encode_merge(1, 2, 2, 3))
    [d] = merged.descriptors
    assert (d.range_id, d.start, d.end, d.group_id, d.epoch) == (1, b"", b"t", 1, 4)
    assert 2 not in meta.map and len(meta.map) == 2


def test_merge_of_misaligned_replicas_is_refused(meta: Meta) -> None:
    assert meta.apply(encode_split(1, 1, b"m", 2, 2)).ok
    assert meta.apply(encode_add_learner(2, 2, 4)).ok
    result = meta.apply(encode_merge(1, 2, 2, 3))
    assert result.status == MetaStatus.REFUSED and "different replica sets" in result.message


def test_a_move_is_learner_promote_remove(meta: Meta) -> None:
    added = meta.apply(encode_add_learner(1, 1, 4)).descriptors[0]
    assert added.epoch == 2 and added.replica(4) == Replica(4, ReplicaRole.LEARNER)
    assert added.voters == (1, 2, 3)
    promoted = meta.apply(encode_promote(1, 2, 4)).descriptors[0]
    assert promoted.epoch == 3 and promoted.voters == (1, 2, 3, 4)
    removed = meta.apply(encode_remove_replica(1, 3, 1)).descriptors[0]
    assert removed.epoch == 4 and removed.voters == (2, 3, 4) and removed.learners == ()
    assert meta.map.version == 4


@pytest.mark.parametrize(("command", "expected"), [
    (encode_add_learner(1, 1, 2), "already a VOTER"),
    (encode_promote(1, 1, 2), "not a learner"),
    (encode_promote(1, 1, 9), "not a learner"),
    (encode_remove_replica(1, 1, 9), "not a replica"),
    (encode_add_learner(1, 1, 2**32), "node id"),
])
def test_a_bad_replica_change_is_refused(meta: Meta, command: bytes, expected: str) -> None:
    result = meta.apply(command)
    assert result.status == MetaStatus.REFUSED and expected in result.message, result


def test_the_last_voter_is_never_removed() -> None:
    m = Meta()
    assert m.apply(encode_bootstrap(1, 1, [1])).ok
    assert m.apply(encode_add_learner(1, 1, 2)).ok
    last = m.apply(encode_remove_replica(1, 2, 1))
    assert last.status == MetaStatus.REFUSED and "last voter" in last.message
    assert m.apply(encode_remove_replica(1, 2, 2)).ok   # a learner may go


def test_queries(meta: Meta) -> None:
    meta.apply(encode_split(1, 1, b"m", 2, 2))
    meta.apply(encode_split(2, 2, b"t", 3, 3))
    everything = meta.query(encode_query_map())
    assert ShardMap(everything.map_version, everything.descriptors) == meta.map
    assert [d.range_id for d in meta.query(encode_query_lookup(b"p")).descriptors] == [2]
    assert [d.range_id for d in meta.query(encode_query_span(b"a", b"n")).descriptors] == [1, 2]
    assert [d.range_id for d in meta.query(encode_query_span(b"n", None)).descriptors] == [2, 3]
    assert meta.query(b"\x01\x09").status == MetaStatus.MALFORMED
    assert meta.query(encode_query_map() + b"x").status == MetaStatus.MALFORMED


def test_malformed_commands_change_nothing(meta: Meta) -> None:
    good = encode_split(1, 1, b"m", 2, 2)
    for size in range(len(good)):
        result = meta.apply(good[:size])
        assert result.status == MetaStatus.MALFORMED, size
    for bad in (good + b"\x00", b"\x02" + good[1:], b"\x01\x63", b"",
                encode_bootstrap(1, 1, [1])[:18] + b"\xff\xff"):
        assert meta.apply(bad).status == MetaStatus.MALFORMED
        with pytest.raises(DecodeError):
            decode_command(bad)
    assert meta.map.version == 1
    with pytest.raises(InvalidShardChange, match="malformed"):
        meta.apply(b"").raise_for_status()


def test_every_truncated_result_is_a_decode_error(meta: Meta) -> None:
    for raw in (meta.sm.apply(9, encode_split(1, 1, b"m", 2, 2)),
                meta.sm.apply(10, encode_split(1, 1, b"m", 3, 3)),
                meta.sm.apply(11, b"junk")):
        assert decode_result(raw).status in set(MetaStatus)
        for size in range(len(raw)):
            with pytest.raises(DecodeError):
                decode_result(raw[:size])
        with pytest.raises(DecodeError):
            decode_result(raw + b"\x00")
    with pytest.raises(DecodeError, match="utf-8"):
        decode_result(b"\x01\x02\x01\x00\x00\x00\xff")


def test_snapshot_restore_round_trip_and_hostile_snapshots(meta: Meta) -> None:
    meta.apply(encode_split(1, 1, b"m", 2, 2))
    meta.apply(encode_merge(1, 2, 2, 2))
    data = meta.sm.snapshot()
    other = MetaStateMachine()
    assert MetaStateMachine().snapshot() != data
    other.restore(MetaStateMachine().snapshot())
    assert other.shard_map is None
    other.restore(data)
    assert other.snapshot() == data and other.shard_map == meta.map
    assert (other.max_range_id, other.max_group_id, other.applied_index) == (2, 2, 3)
    for size in range(len(data)):
        with pytest.raises(DecodeError):
            other.restore(data[:size])
    with pytest.raises(DecodeError):
        other.restore(data + b"\x00")
    with pytest.raises(DecodeError):
        other.restore(b"EMEX" + data[4:])
    # Allocated ids below the map's: ids could be reused after this restore.
    low = data[:14] + (0).to_bytes(8, "little") + data[22:]
    with pytest.raises(DecodeError, match="above the allocated"):
        other.restore(low)
    assert other.snapshot() == data   # a refused restore changed nothing


# --------------------------------------------------------------------------- stateful

PROBE_KEYS = [bytes([c]) for c in range(0, 256, 7)] + [b"", b"m", b"mm", b"\xff\xff"]


class MetaMachine(RuleBasedStateMachine):
    """Random shard-map changes, valid and not, checked after every step."""

    def __init__(self) -> None:
        super().__init__()
        self.meta = Meta()
        assert self.meta.apply(encode_bootstrap(1, 1, [1, 2, 3])).ok
        self.checker = ShardMapChecker()
        self.checker.check(self.meta.map)
        self.next_id = 2
        self.writes: list[ApplyRecord] = []

    def _pick(self, index: int) -> RangeDescriptor:
        ranges = self.meta.map.ranges
        return ranges[index % len(ranges)]

    def _epoch(self, d: RangeDescriptor, stale: bool) -> int:
        return d.epoch - 1 if stale and d.epoch > 1 else d.epoch

    def _expect(self, result: MetaResult, ok: bool, before: ShardMap) -> None:
        if ok:
            assert result.ok, result
            assert self.meta.map.version == before.version + 1
        else:
            assert not result.ok, result
            assert self.meta.map == before   # a refused command changes nothing

    @rule(index=st.integers(0, 99), key=st.binary(max_size=3), stale=st.booleans(),
          reuse=st.integers(0, 9))
    def split(self, index: int, key: bytes, stale: bool, reuse: int) -> None:
        before = self.meta.map
        d = self._pick(index)
        reused = reuse == 0   # an id at or below the allocated ones
        new_id = self.next_id - 1 if reused else self.next_id
        result = self.meta.apply(encode_split(d.range_id, self._epoch(d, stale), key,
                                              new_id, new_id))
        valid = (not (stale and d.epoch > 1) and d.contains(key) and key > d.start
                 and not reused)
        self._expect(result, valid, before)
        if valid:
            self.next_id += 1

    @rule(index=st.integers(0, 99), stale=st.booleans(), gap=st.booleans())
    def merge(self, index: int, stale: bool, gap: bool) -> None:
        before = self.meta.map
        ranges = before.ranges
        if len(ranges) < 2 + gap:
            return
        i = index % (len(ranges) - 1 - gap)
        left, right = ranges[i], ranges[i + 1 + gap]
        result = self.meta.apply(encode_merge(left.range_id, self._epoch(left, stale),
                                              right.range_id, right.epoch))
        valid = not gap and not (stale and left.epoch > 1) and left.replicas == right.replicas
        self._expect(result, valid, before)
        if result.status == MetaStatus.EPOCH_MISMATCH:
            assert result.current_epoch == left.epoch

    @rule(index=st.integers(0, 99), node=st.integers(1, 5), step=st.sampled_from(
        ["add", "promote", "remove"]), stale=st.booleans())
    def move_step(self, index: int, node: int, step: str, stale: bool) -> None:
        before = self.meta.map
        d = self._pick(index)
        encode = {"add": encode_add_learner, "promote": encode_promote,
                  "remove": encode_remove_replica}[step]
        result = self.meta.apply(encode(d.range_id, self._epoch(d, stale), node))
        present = d.replica(node)
        if step == "add":
            allowed = present is None
        elif step == "promote":
            allowed = present is not None and present.role == ReplicaRole.LEARNER
        else:
            allowed = present is not None and not (
                present.role == ReplicaRole.VOTER and len(d.voters) == 1)
        self._expect(result, allowed and not (stale and d.epoch > 1), before)

    @rule()
    def restart_from_snapshot(self) -> None:
        data = self.meta.sm.snapshot()
        fresh = MetaStateMachine()
        fresh.restore(data)
        assert fresh.snapshot() == data
        self.meta.sm = fresh

    @precondition(lambda self: True)
    @rule(key=st.sampled_from(PROBE_KEYS))
    def write(self, key: bytes) -> None:
        # A replica applies a write only if its range owns the key at its map version.
        owner = self.meta.map.lookup(key)
        self.writes.append(ApplyRecord(self.meta.map.version, owner.range_id, key))

    @invariant()
    def the_history_is_sound(self) -> None:
        self.checker.check(self.meta.map)
        assert self.checker.write_violations(self.writes) == []
        for key in PROBE_KEYS:
            [descriptor] = self.meta.query(encode_query_lookup(key)).descriptors
            assert descriptor.contains(key)


MetaMachine.TestCase.settings = settings(max_examples=150, stateful_step_count=40,
                                         deadline=None)
TestMetaMachine = MetaMachine.TestCase


def test_the_shard_errors_copy_and_pickle_with_their_fields() -> None:
    import copy
    import pickle

    from engine.errors import Rejected, WrongShard, unfinished

    wrong = WrongShard(b"k", range_id=3, epoch=7, descriptors=())
    mismatch = EpochMismatch(3, expected_epoch=6, current_epoch=7)
    for error in (wrong, mismatch):
        assert isinstance(error, Rejected)
        for clone in (copy.copy(error), pickle.loads(pickle.dumps(error)),
                      unfinished(error, may_apply=False)):
            assert type(clone) is type(error) and str(clone) == str(error)
            assert vars(clone) == vars(error)
    assert "no longer exists" in str(EpochMismatch(3, expected_epoch=1, current_epoch=0))
