"""KVStore's MVCC (engine/kv/store.py, "MVCC"), both twins of engine._core.kvput: reads at a
timestamp against an oracle that keeps every version (key -> [(timestamp, value, revision)]),
the group clock's stamping rule, garbage collection within Limits.max_mvcc_history_bytes and
past Limits.mvcc_retention_s, revisions and cas on a revision, snapshots with their versions
(EKV2, and EKV1 still restoring), and determinism (two stores fed one log end byte-identical).
"""

from __future__ import annotations

import contextlib
import struct
from collections.abc import Iterator
from types import SimpleNamespace

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine.config import Limits
from engine.errors import ConfigError, DecodeError, HistoryCompacted
from engine.kv import KVStore, commands
from engine.kv import store as store_module
from engine.kv.commands import Status, decode_result
from engine.testing import implementations

SECOND = 1_000_000_000 << 32   # one second of wall time in the packed timestamp


def ts(value: int) -> bytes:
    return value.to_bytes(12, "big")


@contextlib.contextmanager
def twin(kvput: object) -> Iterator[None]:
    """KVStore running on one twin of engine._core.kvput (the fast path and Versions)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(store_module, "_kvput", kvput)
        patch.setattr(store_module, "_apply_put", kvput.apply_put)  # type: ignore[attr-defined]
        patch.setattr(store_module, "_parse_put", kvput.parse_put)  # type: ignore[attr-defined]
        patch.setattr(store_module, "_put_result", kvput.put_result)  # type: ignore[attr-defined]
        patch.setattr(store_module, "_store_value", kvput.store_value)  # type: ignore[attr-defined]
        yield


# ---------------------------------------------------------------- the oracle

class Oracle:
    """Every version of every key, and the group clock as the store documents it: ts(r) =
    t0 + (r - r0) from the last anchor (r0, t0); a stamp above ts(r) anchors the clock."""

    def __init__(self) -> None:
        self.versions: dict[bytes, list[tuple[int, bytes | None, int]]] = {}
        self.anchor = (0, 0)

    def stamp(self, index: int, stamp: int | None) -> int:
        r0, t0 = self.anchor
        timestamp = t0 + (index - r0)
        if stamp is not None and stamp > timestamp:
            self.anchor = (index, stamp)
            timestamp = stamp
        return timestamp

    def current(self, key: bytes) -> tuple[bytes | None, int]:
        kept = self.versions.get(key)
        if not kept or kept[-1][1] is None:
            return None, 0
        return kept[-1][1], kept[-1][2]

    def write(self, index: int, key: bytes, value: bytes | None, timestamp: int) -> None:
        if value is None and self.current(key)[0] is None:
            return   # deleting nothing is no version
        self.versions.setdefault(key, []).append((timestamp, value, index))

    def at(self, key: bytes, at: int) -> tuple[bytes | None, int]:
        found: tuple[bytes | None, int] = (None, 0)
        for timestamp, value, revision in self.versions.get(key, []):
            if timestamp <= at:
                found = (value, revision) if value is not None else (None, 0)
        return found

    def timestamps(self) -> set[int]:
        return {t for kept in self.versions.values() for t, _, _ in kept}


_keys = st.sampled_from([b"a", b"b", b"c"])
# Stamps near the clock (pushed up or anchoring it) and whole seconds (moving the horizon).
_stamps = st.one_of(st.none(), st.integers(0, 60),
                    st.builds(lambda s, c: s * SECOND + c, st.integers(0, 4), st.integers(0, 3)))
_ops = st.lists(st.tuples(
    st.sampled_from(["put", "put", "delete", "cas", "session put"]), _keys,
    st.binary(min_size=0, max_size=40), _stamps, st.integers(0, 12)), max_size=40)


def _command(op: str, key: bytes, value: bytes, stamp: int | None, expected: int,
             seq: int) -> bytes:
    stamped = None if stamp is None else ts(stamp)
    if op == "put":
        return commands.encode_put(key, value, timestamp=stamped)
    if op == "session put":
        return commands.encode_put(key, value, client_id=1, seq=seq, timestamp=stamped)
    if op == "delete":
        return commands.encode_delete(key, timestamp=stamped)
    return commands.encode_cas_revision(key, expected, value, timestamp=stamped)


def _run(store: KVStore, ops: list[tuple[str, bytes, bytes, int | None, int]],
         oracle: Oracle | None = None, limit: int | None = None) -> None:
    """Apply `ops` (index 1 registers session 1) and check each result against the oracle;
    with `limit`, the kept history never passes it."""
    store.apply(1, commands.encode_register())
    for index, (op, key, value, stamp, expected) in enumerate(ops, 2):
        result = decode_result(store.apply(index, _command(op, key, value, stamp, expected,
                                                           index)))
        if limit is not None:
            assert store.history_bytes <= limit
        if oracle is None:
            continue
        timestamp = oracle.stamp(index, stamp)
        assert result.timestamp == (None if stamp is None else ts(timestamp))
        if op == "cas":
            current, revision = oracle.current(key)
            if expected != revision:
                assert (result.status, result.value, result.revision) == (
                    Status.CAS_MISMATCH, current, revision)
                continue
        assert result.ok and result.revision == index
        oracle.write(index, key, None if op == "delete" else value, timestamp)


def _probes(oracle: Oracle) -> list[int]:
    seen = oracle.timestamps() | {0, 1 << 95}
    return sorted({max(0, t + d) for t in seen for d in (-1, 0, 1)})


@settings(max_examples=300, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops=_ops, limit=st.sampled_from([200, 600, 1 << 24]), retention=st.sampled_from([0, 1]))
def test_reads_at_a_timestamp_match_the_oracle_at_or_above_the_horizon(
        impl: SimpleNamespace, ops: list[tuple[str, bytes, bytes, int | None, int]],
        limit: int, retention: int) -> None:
    """Every read at or above the horizon is the oracle's (value, revision), every read
    below it is HistoryCompacted naming the horizon, and the history stays in its bound.
    Retention 0 keeps no history: the horizon is the latest timestamp."""
    with twin(impl.kvput):
        store = KVStore(Limits(max_mvcc_history_bytes=limit, mvcc_retention_s=retention))
        oracle = Oracle()
        _run(store, ops, oracle, limit)
        horizon = int.from_bytes(store.horizon, "big")
        if retention == 0:
            assert store.horizon == store.latest_timestamp and store.version_count() == 0
        for key in (b"a", b"b", b"c", b"z"):
            assert tuple(store.get_entry(key)) == oracle.current(key)
            for at in _probes(oracle):
                if at < horizon:
                    with pytest.raises(HistoryCompacted) as caught:
                        store.get_entry(key, ts(at))
                    assert (caught.value.oldest_wall_ns << 32
                            | caught.value.oldest_logical) == horizon
                else:
                    assert tuple(store.get_entry(key, ts(at))) == oracle.at(key, at), at


@settings(max_examples=150, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops=_ops, limit=st.sampled_from([300, 1 << 24]))
def test_snapshots_carry_the_versions_and_both_twins_end_byte_identical(
        ops: list[tuple[str, bytes, bytes, int | None, int]], limit: int) -> None:
    """Determinism: a store per twin fed one log ends in the same snapshot bytes; a
    restored snapshot (and a frozen fork's) is the same state and answers the same reads."""
    limits = Limits(max_mvcc_history_bytes=limit, mvcc_retention_s=1)
    snapshots = []
    for name in implementations.available():
        with twin(implementations.load(name).kvput):
            store = KVStore(limits)
            _run(store, ops)
            fork = store.snapshot_fork()
            snapshots.append(store.snapshot())
            assert fork() == snapshots[-1]
            restored = KVStore(limits)
            restored.restore(snapshots[-1])
            assert restored == store and restored.snapshot() == snapshots[-1]
            for key in (b"a", b"b", b"c"):
                for at in (store.horizon, store.latest_timestamp):
                    assert restored.get_entry(key, at) == store.get_entry(key, at)
            # The restored store goes on exactly as the original.
            more = len(ops) + 2
            for s in (store, restored):
                s.apply(more, commands.encode_put(b"a", b"next", timestamp=ts(5 * SECOND)))
            assert restored == store and restored.snapshot() == store.snapshot()
    assert all(snapshot == snapshots[0] for snapshot in snapshots)


def test_a_stamp_below_the_group_clock_is_pushed_just_above_it() -> None:
    store = KVStore()
    high = decode_result(store.apply(1, commands.encode_put(b"k", b"1",
                                                            timestamp=ts(100 * SECOND))))
    assert high.timestamp == ts(100 * SECOND)
    low = decode_result(store.apply(2, commands.encode_put(b"k", b"2", timestamp=ts(5))))
    assert low.timestamp == ts(100 * SECOND + 1)   # index 2: one tick after the anchor
    # A plain write takes the next tick, and reads between versions see the older one.
    store.apply(5, commands.encode_put(b"k", b"3"))
    assert store.latest_timestamp == ts(100 * SECOND + 4)
    assert store.get(b"k", ts(100 * SECOND)) == b"1"
    assert store.get(b"k", ts(100 * SECOND + 3)) == b"2"
    assert store.get(b"k", ts(100 * SECOND + 4)) == b"3"
    assert store.get(b"k", ts(99 * SECOND)) is None


def test_the_horizon_trails_the_newest_stamp_by_the_retention() -> None:
    store = KVStore(Limits(mvcc_retention_s=2))
    for second in range(1, 6):
        store.apply(second, commands.encode_put(b"k", b"%d" % second,
                                                timestamp=ts(second * SECOND)))
    assert store.horizon == ts(3 * SECOND)
    assert store.get(b"k", ts(3 * SECOND)) == b"3"
    with pytest.raises(HistoryCompacted):
        store.get(b"k", ts(3 * SECOND - 1))
    assert store.version_count() == 2   # the versions of seconds 3 and 4; 1 and 2 dropped
    answer = decode_result(store.query(commands.encode_query(b"k", at=ts(SECOND))))
    assert (answer.status, answer.value) == (Status.HISTORY_COMPACTED, ts(3 * SECOND))


def test_plain_overwrites_keep_history_within_the_byte_bound() -> None:
    limit = 10_000
    store = KVStore(Limits(max_mvcc_history_bytes=limit))
    for index in range(1, 2_001):
        store.apply(index, commands.encode_put(b"k%d" % (index % 7), bytes(50)))
        assert store.history_bytes <= limit
    horizon = int.from_bytes(store.horizon, "big")
    assert 0 < horizon < 2_000   # the logical clock (0, index), moved by the byte bound
    assert store.version_count() > 0
    assert store.get(b"k3", ts(horizon)) == bytes(50)


def test_revisions_and_cas_on_a_revision() -> None:
    store = KVStore()
    assert store.get_entry(b"k") == (None, 0)
    assert decode_result(store.apply(1, commands.encode_cas_revision(b"k", 0, b"a"))).ok
    assert store.get_entry(b"k") == (b"a", 1)
    refused = decode_result(store.apply(2, commands.encode_cas_revision(b"k", 0, b"b")))
    assert (refused.status, refused.value, refused.revision) == (Status.CAS_MISMATCH, b"a", 1)
    assert decode_result(store.apply(3, commands.encode_cas_revision(b"k", 1, b"c"))).ok
    store.apply(4, commands.encode_delete(b"k"))
    assert store.get_entry(b"k") == (None, 0)
    assert decode_result(store.apply(5, commands.encode_cas_revision(b"k", 0, b"d"))).ok
    answer = decode_result(store.query(commands.encode_query(b"k", revision=True)))
    assert (answer.value, answer.revision) == (b"d", 5)
    # A plain GET answers as it always did: the value alone.
    assert decode_result(store.query(commands.encode_query(b"k"))).revision is None


def test_an_ekv1_snapshot_restores_with_its_index_as_every_revision() -> None:
    v1 = (struct.pack("<4sQQQ", b"EKV1", 9, 2, 0)
          + struct.pack("<I", 1) + b"a" + struct.pack("<I", 1) + b"1"
          + struct.pack("<I", 1) + b"b" + struct.pack("<I", 1) + b"2")
    store = KVStore()
    store.restore(v1)
    assert store.get_entry(b"a") == (b"1", 9) and store.get_entry(b"b") == (b"2", 9)
    assert store.applied_index == 9 and store.snapshot()[:4] == b"EKV3"
    assert store.get(b"a", ts(9)) == b"1"


def test_a_truncated_ekv2_snapshot_is_refused_and_leaves_the_state() -> None:
    store = KVStore(Limits(mvcc_retention_s=1))
    ops = [("put", b"a", b"1", None, 0), ("put", b"a", b"2", SECOND, 0),
           ("delete", b"a", b"", None, 0), ("put", b"b", b"3", None, 0)]
    _run(store, ops)
    snapshot = store.snapshot()
    for cut in range(len(snapshot)):
        other = KVStore()
        with pytest.raises(DecodeError):
            other.restore(snapshot[:cut])
        assert other == KVStore()
    with pytest.raises(DecodeError):
        KVStore().restore(snapshot + b"\x00")


def test_timestamp_and_revision_flags_decode_only_where_they_mean_something() -> None:
    cmd = commands.decode_command(commands.encode_put(b"k", b"v", client_id=3, seq=4,
                                                      timestamp=ts(7)))
    assert (cmd.key, cmd.value, cmd.client_id, cmd.seq, cmd.timestamp) == (b"k", b"v", 3, 4, 7)
    cas = commands.decode_command(commands.encode_cas_revision(b"k", 9, b"n"))
    assert (cas.expected_revision, cas.value, cas.expected) == (9, b"n", None)
    read = commands.decode_read(commands.encode_query(b"k", at=ts(5), revision=True))
    assert (read.key, read.timestamp, read.want_revision) == (b"k", 5, True)
    bad = [
        bytes((1, commands.Op.PUT, commands.FLAG_WANT_REVISION)) + b"\0" * 8,
        bytes((1, commands.Op.PUT, commands.FLAG_EXPECTED_REVISION)) + b"\0" * 8,
        bytes((1, commands.Op.CAS, commands.FLAG_EXPECTED | commands.FLAG_EXPECTED_REVISION))
        + b"\0" * 16,
        bytes((1, commands.Op.REGISTER, commands.FLAG_TIMESTAMP)) + b"\0" * 16,
        bytes((1, commands.Op.PUT, commands.FLAG_TIMESTAMP)) + b"\0" * 5,
    ]
    for data in bad:
        with pytest.raises(DecodeError):
            commands.decode_command(data)
        assert decode_result(KVStore().apply(1, data)).status == Status.MALFORMED
    with pytest.raises(ValueError):
        commands.encode_put(b"k", b"v", timestamp=b"short")


def test_only_the_retention_may_be_zero() -> None:
    assert Limits(mvcc_retention_s=0).mvcc_retention_s == 0
    with pytest.raises(ConfigError):
        Limits(max_mvcc_history_bytes=0)
    with pytest.raises(ConfigError):
        Limits(max_client_sessions=0)


def test_a_stamp_beyond_the_clock_range_is_malformed_and_changes_nothing() -> None:
    """A wall time of 2**63 ns or more (past the year 2262) is refused when decoded, so the
    group clock, one tick per index above the largest stamp, always fits its 12 bytes."""
    store = KVStore()
    huge = ((1 << 63) << 32).to_bytes(12, "big")
    result = decode_result(store.apply(1, commands.encode_put(b"k", b"v", timestamp=huge)))
    assert result.status == Status.MALFORMED and store.get(b"k") is None
    largest = (((1 << 63) - 1) << 32 | 0xFFFFFFFF).to_bytes(12, "big")
    assert decode_result(store.apply(2, commands.encode_put(b"k", b"v",
                                                            timestamp=largest))).ok
    assert decode_result(store.apply(3, commands.encode_put(b"k", b"w"))).ok
    assert store.latest_timestamp == ((1 << 63) << 32).to_bytes(12, "big")
