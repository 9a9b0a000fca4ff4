"""engine.shard.replica: a range's ownership check (before the log and at apply), its split
through its own log, the seed of the right-hand range, snapshots, and the meta envelope."""

from __future__ import annotations

from typing import Any

import pytest

from engine.errors import DecodeError
from engine.kv import commands as kv
from engine.shard import meta
from engine.shard.map import RangeDescriptor, ShardMap, voters
from engine.shard.replica import (
    SPLIT_EPOCH_MISMATCH,
    SPLIT_OK,
    TXN_MAGIC,
    MetaReplica,
    RangeStateMachine,
    command_key,
    decode_split_result,
    decode_wrong_shard,
    encode_split_command,
    is_wrong_shard,
    meta_envelope,
)
from engine.txn import participant
from engine.txn.participant import TxnKVStore, decode, encode

REPLICAS = voters(1, 2, 3)
WHOLE = RangeDescriptor(1, b"", None, 1, REPLICAS)
LEFT = RangeDescriptor(1, b"", b"m", 1, REPLICAS, epoch=2)
RIGHT = RangeDescriptor(2, b"m", None, 2, REPLICAS, epoch=2)


def _put(key: bytes, value: bytes = b"v", session: int | None = None, seq: int = 1) -> bytes:
    if session is None:
        return kv.encode_put(key, value)
    return kv.encode_put(key, value, client_id=session, seq=seq)


def _split_machine() -> tuple[RangeStateMachine, list[tuple[RangeDescriptor, int, list[
        tuple[bytes, bytes]], int]]]:
    announced: list[tuple[RangeDescriptor, int, list[tuple[bytes, bytes]], int]] = []
    machine = RangeStateMachine(WHOLE, on_split=lambda *args: announced.append(args))
    for index, key in enumerate((b"a", b"k", b"m", b"x"), start=1):
        machine.apply(index, _put(key, key))
    return machine, announced


def test_command_key_reads_every_keyed_command() -> None:
    assert command_key(_put(b"k")) == b"k"
    assert command_key(_put(b"key", session=2**40, seq=3)) == b"key"
    assert command_key(kv.encode_delete(b"d", client_id=2**40, seq=1)) == b"d"
    assert command_key(kv.encode_cas(b"c", None, b"n")) == b"c"
    assert command_key(kv.encode_query(b"g")) == b"g"
    assert command_key(kv.encode_register()) is None
    assert command_key(b"\x01\x01") is None   # malformed: the store answers it


def test_a_write_outside_the_range_is_refused_before_the_log_and_at_apply() -> None:
    machine = RangeStateMachine(LEFT)
    assert machine.refusal_of_request(_put(b"a"), write=True) is None
    refusal = machine.refusal_of_request(_put(b"z"), write=True)
    assert refusal is not None and is_wrong_shard(refusal)
    error = decode_wrong_shard(refusal, b"z")
    assert (error.range_id, error.epoch) == (1, 2) and LEFT in error.descriptors
    # At apply (a split committed between proposal and apply): refused, nothing changed.
    assert is_wrong_shard(machine.apply(1, _put(b"z")))
    assert machine.store.get(b"z") is None and machine.refused_writes == 1
    assert kv.decode_result(machine.apply(2, _put(b"a"))).ok
    assert kv.decode_result(machine.apply(3, kv.encode_register())).ok   # keyless


def test_reads_and_scans_outside_the_range_are_refused() -> None:
    machine = RangeStateMachine(LEFT)
    machine.apply(1, _put(b"a", b"1"))
    assert kv.decode_result(machine.query(kv.encode_query(b"a"))).value == b"1"
    assert is_wrong_shard(machine.query(kv.encode_query(b"q")))
    assert not is_wrong_shard(machine.query(kv.encode_scan(b"", b"m")))
    assert is_wrong_shard(machine.query(kv.encode_scan(b"", b"n")))
    assert is_wrong_shard(machine.query(kv.encode_scan(b"a")))   # unbounded end


def test_split_through_the_log_freezes_the_right_half_and_seeds_the_new_range() -> None:
    machine, announced = _split_machine()
    status, current = decode_split_result(
        machine.apply(5, encode_split_command(2, 1, LEFT, RIGHT)))
    assert (status, current) == (SPLIT_OK, LEFT)
    assert machine.descriptor == LEFT and machine.map_version == 2
    [(child, version, rows, base)] = announced
    assert (child, version, base) == (RIGHT, 2, 5)
    assert rows == [(b"m", b"m"), (b"x", b"x")]
    assert is_wrong_shard(machine.apply(6, _put(b"x", b"late")))
    # The right-hand range continues the revisions of its keys.
    right = RangeStateMachine.seeded(RIGHT, rows, map_version=2, base=base)
    result = kv.decode_result(right.apply(1, _put(b"x", b"new")))
    assert result.revision == base + 1
    assert right.store.get(b"m") == b"m" and right.store.get(b"x") == b"new"
    # A retried copy applies once.
    again = decode_split_result(machine.apply(7, encode_split_command(2, 1, LEFT, RIGHT)))
    assert again == (SPLIT_OK, LEFT) and len(announced) == 1


def test_a_split_at_a_stale_epoch_is_refused() -> None:
    machine, announced = _split_machine()
    at_epoch_1 = encode_split_command(
        2, 0, RangeDescriptor(1, b"", b"m", 1, REPLICAS, epoch=1),
        RangeDescriptor(2, b"m", None, 2, REPLICAS, epoch=1))
    assert decode_split_result(machine.apply(5, at_epoch_1)) == (SPLIT_EPOCH_MISMATCH, WHOLE)
    assert machine.descriptor == WHOLE and not announced
    machine.apply(6, encode_split_command(2, 1, LEFT, RIGHT))
    # A late copy of another split of the old span (its epoch is not above the range's).
    late = encode_split_command(
        2, 1, RangeDescriptor(1, b"", b"t", 1, REPLICAS, epoch=2),
        RangeDescriptor(3, b"t", None, 3, REPLICAS, epoch=2))
    assert decode_split_result(machine.apply(7, late)) == (SPLIT_EPOCH_MISMATCH, LEFT)
    # A split of the span at a newer epoch (the map bumped it for a replica change).
    newer = encode_split_command(
        5, 3, RangeDescriptor(1, b"", b"c", 1, REPLICAS, epoch=4),
        RangeDescriptor(4, b"c", b"m", 4, REPLICAS, epoch=4))
    assert decode_split_result(machine.apply(8, newer))[0] == SPLIT_OK
    assert [c.range_id for c in machine.children] == [2, 4]


def test_snapshot_restore_keeps_the_descriptor_and_announces_children_again() -> None:
    machine, _ = _split_machine()
    machine.apply(5, encode_split_command(2, 1, LEFT, RIGHT))
    announced: list[tuple[RangeDescriptor, int, list[tuple[bytes, bytes]], int]] = []
    copy = RangeStateMachine(WHOLE, on_split=lambda *args: announced.append(args))
    copy.restore(machine.snapshot())
    assert copy.descriptor == LEFT and copy.children == [RIGHT]
    assert announced == [(RIGHT, 2, [(b"m", b"m"), (b"x", b"x")], 5)]
    assert copy.snapshot() == machine.snapshot() == machine.snapshot_fork()()
    with pytest.raises(DecodeError):
        copy.restore(machine.snapshot()[:-1])


def test_the_meta_group_answers_kv_traffic_with_wrong_shard_range_zero() -> None:
    replica = MetaReplica(ShardMap.presplit([b"m"], REPLICAS))
    replica.record_maps()
    refusal = replica.refusal_of_request(_put(b"k"), write=True)
    assert refusal is not None and decode_wrong_shard(refusal).range_id == 0
    assert is_wrong_shard(replica.query(kv.encode_query(b"k")))
    found = meta.decode_result(replica.query(meta_envelope(meta.encode_query_lookup(b"z"))))
    assert found.descriptors[0].range_id == 2
    result = meta.decode_result(replica.apply(1, meta_envelope(
        meta.encode_split(2, 1, b"t", 3, 3))))
    assert result.ok and replica.maps is not None and len(replica.maps) == 2
    assert replica.shard_map is not None and len(replica.shard_map) == 3


def test_a_range_serves_transaction_messages_for_its_own_keys_only() -> None:
    """TXN1 commands and queries reach the range's TxnKVStore when every key they carry is
    the range's; one naming a key (or a scan reaching) outside it is refused wrong-shard and
    changes nothing. The transactional state survives a snapshot round trip."""
    machine = RangeStateMachine(LEFT, participant=TxnKVStore)
    now = 1 << 40
    one_phase = {"op": "one_phase", "txn": "t1", "start": now, "ts": now, "now": now,
                 "writes": [["61", "31"]], "reads": [], "spans": []}
    answer = machine.apply(1, encode(one_phase))
    assert decode(answer)["st"] == "COMMITTED", decode(answer)
    outside = {**one_phase, "txn": "t2", "writes": [["7a", "31"]]}
    assert machine.refusal_of_request(encode({"op": "read", "key": "7a"}), write=True)
    read = {"op": "read", "key": b"z".hex(), "txn": "r", "ts": now + 5, "limit": now + 5,
            "now": now + 5}
    refused = machine.apply(2, encode(read))
    assert is_wrong_shard(refused)
    scan = {"op": "scan", "start": b"a".hex(), "end": "", "txn": "r", "ts": now + 5,
            "limit": now + 5, "now": now + 5}
    assert is_wrong_shard(machine.apply(3, encode(scan)))
    got = decode(machine.apply(4, encode({**read, "key": b"a".hex()})))
    assert got["st"] == "ok" and got["value"] == b"1".hex(), got
    assert is_wrong_shard(machine.refusal_of_request(encode(outside), write=True) or b"")
    assert machine.refusal_of_request(encode({"op": "end", "keys": ["7a"]}), write=True) is None
    copy = RangeStateMachine(LEFT, participant=TxnKVStore)
    copy.restore(machine.snapshot())
    assert copy.txn.snapshot() == machine.txn.snapshot()
    plain = RangeStateMachine(LEFT, participant=TxnKVStore)
    plain.apply(1, _put(b"a"))
    assert not plain.snapshot().endswith(b"}")   # no transactional section until used


def test_a_split_hands_the_right_range_its_transactional_keys_and_read_floor() -> None:
    """The right-hand range starts with the versions and intents of its span and every read
    timestamp recorded there as its floor (a write is pushed above a read made before the
    split); the seed is kept with the children, so a restore announces the same one."""
    announced: list[tuple[Any, ...]] = []
    machine = RangeStateMachine(
        WHOLE, on_split=lambda *args, **kw: announced.append((*args, kw)),
        participant=TxnKVStore)
    now = 1 << 40
    one_phase = {"op": "one_phase", "txn": "t1", "start": now, "ts": now, "now": now,
                 "writes": [[b"a".hex(), "31"], [b"x".hex(), "32"]], "reads": [],
                 "spans": []}
    assert decode(machine.apply(1, encode(one_phase)))["st"] == "COMMITTED"
    late = now + 1000
    read = {"op": "read", "key": b"y".hex(), "txn": "r", "ts": late, "limit": late,
            "now": late}
    assert decode(machine.apply(2, encode(read)))["st"] == "ok"
    split = encode_split_command(2, 1, LEFT, RIGHT)
    assert decode_split_result(machine.apply(3, split))[0] == SPLIT_OK
    [(child, version, rows, base, kw)] = announced
    right = RangeStateMachine.seeded(child, rows, map_version=version, base=base,
                                     txn_seed=kw["txn_seed"], participant=TxnKVStore)
    assert set(right.txn.versions) == {b"x"} and right.txn.read_floor == late
    got = decode(right.apply(1, encode({**read, "key": b"x".hex(), "ts": late + 5,
                                        "limit": late + 5, "now": late + 5})))
    assert got["value"] == "32", got
    # A write below the pre-split read of y is pushed above it.
    write = {"op": "intent", "txn": "w", "ts": now + 10, "start": now + 10,
             "anchor": b"y".hex(), "writes": [[b"y".hex(), "33"]], "now": now + 10}
    assert int(decode(right.apply(2, encode(write)))["ts"]) > late
    copy = RangeStateMachine(WHOLE, on_split=lambda *args, **kw: announced.append((*args, kw)),
                             participant=TxnKVStore)
    copy.restore(machine.snapshot())
    assert announced[-1][4] == kw and copy.child_txn == machine.child_txn


def test_the_range_knows_the_participants_mark_and_without_one_serves_no_transactions() -> None:
    """shard sits below txn, so the mark is a copy: it must stay the participant's."""
    assert TXN_MAGIC == participant.TXN_MAGIC
    machine = RangeStateMachine(LEFT)
    assert machine.txn is None
    answer = machine.apply(1, encode({"op": "read", "key": b"a".hex(), "txn": "r", "ts": 1,
                                      "limit": 1, "now": 1}))
    assert not answer.startswith(TXN_MAGIC)   # the KVStore's answer: not a participant's
