"""Multi-Paxos snapshots under the real asyncio/UDP driver (engine.Node via LocalCluster).

engine.Node's snapshot path is the one Raft uses (snapshot the state machine every
snapshot_entries applied slots, write it, compact the WAL, core.compact); these tests check it
keeps a Paxos cluster's WAL bounded, brings a replica that fell behind the trim back by a
chunked snapshot, and that a whole-cluster crash loses no acknowledged write.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import pytest

import engine
from engine.aio import node as node_module
from engine.aio import wal as wal_module
from engine.aio.wal import WriteAheadLog
from engine.config import Limits
from engine.kv import commands
from engine.paxos.core import IDENTITY_BYTES

SEGMENT_BYTES = 32 * 1024


def value_of(node: engine.Node, key: bytes) -> bytes | None:
    return commands.decode_result(node.state_machine.query(commands.encode_get_query(key))).value


async def wait_for(condition: Callable[[], bool], timeout: float = 15.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"{what} not reached in {timeout} s")


def wal_bytes(directory: Path) -> int:
    total = 0
    for name in os.listdir(directory):
        if name.startswith("wal-"):
            try:
                total += os.stat(directory / name).st_size
            except FileNotFoundError:
                pass   # deleted by the WAL thread meanwhile (trimmed)
    return total


@pytest.fixture
def small_segments(monkeypatch: pytest.MonkeyPatch) -> None:
    """WAL segments of 32 KiB, so trimming shows on disk (a segment is deleted once every
    slot in it is below the compaction marker; the default 64 MiB would hide that here)."""

    def open_storage(config: engine.NodeConfig) -> Any:
        assert config.data_dir is not None
        os.makedirs(config.data_dir, exist_ok=True)
        # Not preallocated: the sizes below then count records, not reserved zeros.
        return WriteAheadLog(config.data_dir, segment_bytes=SEGMENT_BYTES, fsync=config.fsync,
                             preallocate=False)

    monkeypatch.setattr(node_module, "_open_storage", open_storage)


async def put_batch(leader: engine.Node, start: int, count: int, size: int = 100) -> None:
    results = await asyncio.gather(*(
        leader.propose(commands.encode_put(b"k%d" % i, b"%d:" % i + b"x" * size))
        for i in range(start, start + count)))
    assert all(commands.decode_result(r).ok for r in results)


SNAPSHOT_ENTRIES, TRAILING = 200, 50
BATCH, BATCHES, VALUE_BYTES = 200, 20, 100


def wal_segments(directory: Path) -> list[tuple[int, int]]:
    """(seq, first_index) of each WAL segment, in order (engine.aio.wal.segment_name)."""
    names = sorted(name for name in os.listdir(directory)
                   if name.startswith("wal-") and name.endswith(".log"))
    return [(int(name[4:14]), int(name[15:35])) for name in names]


def settled(cluster: engine.LocalCluster, last: int) -> bool:
    """Every node applied through `last` and has no snapshot in flight (Node._snapshotting:
    a snapshot is being written or its WAL compaction is pending)."""
    return all(node.status()["applied_index"] >= last and not node._snapshotting
               for node in cluster.nodes.values())


def wal_bound(live_slots: int, key_bytes: int) -> int:
    """The most a node's WAL can hold once its snapshot policy has caught up (see the test's
    docstring): the segment holding the compaction floor, whole (compaction deletes whole
    segments only, and a segment rolls only once it is full, so it can exceed SEGMENT_BYTES
    by one record), plus the records of the live slots above the floor, each in the worst
    case in a record of its own followed by a commit-only hard-state record, plus the header
    of every segment those records can open."""
    # key "k<i>", value "<i>:" + VALUE_BYTES bytes
    command = len(commands.encode_put(b"k" * key_bytes, b"x" * (key_bytes + VALUE_BYTES)))
    entry = IDENTITY_BYTES + command
    # frame + flags and hard state + entries head (first index, count) + columns of one entry
    one_slot_record = wal_module._FRAME.size + wal_module._FLAGS_HARD_STATE.size + \
        wal_module._ONE_ENTRY.size + entry
    commit_record = wal_module._FRAME.size + wal_module._FLAGS_HARD_STATE.size
    slot_bytes = one_slot_record + commit_record
    live = live_slots * slot_bytes
    header = wal_module._FRAME.size + wal_module._HEADER_BODY.size
    segments = 1 + -(-live // SEGMENT_BYTES)
    return SEGMENT_BYTES + one_slot_record + live + segments * header


async def test_paxos_wal_stays_bounded_and_a_whole_cluster_restart_keeps_every_write(
        tmp_path: Path, small_segments: None) -> None:
    """The WAL's size follows from the snapshot policy, measured when the policy has caught up.

    A node starts a snapshot once snapshot_entries (200) slots were applied since the last one
    started (Driver.maybe_snapshot), then compacts its WAL to floor = snapshot index -
    snapshot_trailing_entries (50), deleting every segment whose successor starts at or below
    floor + 1 (WriteAheadLog._delete_segments_below). The snapshot is written and the WAL
    compacted off the loop while writes go on, so right after a batch the WAL also holds
    whatever was written while a snapshot was in flight: how much depends on the scheduler,
    not on the design. So after each batch of 200 writes the test waits (an observable
    state, not a sleep) until every node applied it and has no snapshot in flight. Then, with
    one crossing of the threshold per batch, fewer than snapshot_entries slots were applied
    since the last snapshot started, and the live slots above the floor number at most
    snapshot_entries - 1 + snapshot_trailing_entries = 249; the WAL holds the segment holding
    the floor (at most SEGMENT_BYTES + one record) and the records of those slots (wal_bound).
    Every slot is written once: an ACCEPT retransmission is not saved again
    (PaxosCore._store_accepted) and this run has a single leader.
    """
    async with engine.LocalCluster(n=3, protocol="paxos", data_dir=tmp_path,
                                   snapshot_entries=SNAPSHOT_ENTRIES,
                                   snapshot_trailing_entries=TRAILING,
                                   check_invariants=True) as cluster:
        leader = await cluster.wait_leader()
        bound = wal_bound(SNAPSHOT_ENTRIES - 1 + TRAILING, len(b"k%d" % (BATCH * BATCHES)))
        sizes: list[int] = []
        written = 0
        for _ in range(BATCHES):
            await put_batch(leader, written, BATCH, VALUE_BYTES)
            written += BATCH
            await wait_for(partial(settled, cluster, leader.status()["applied_index"]),
                           what="batch applied and snapshots written everywhere")
            for node_id, node in cluster.nodes.items():
                status = node.status()
                floor = status["first_index"] - 1
                assert status["applied_index"] - floor < SNAPSHOT_ENTRIES + TRAILING, status
                segments = wal_segments(tmp_path / f"n{node_id}")
                # Retention: no segment but the newest may end at or below the floor.
                assert all(first > floor + 1 for _, first in segments[1:]), (floor, segments)
                sizes.append(wal_bytes(tmp_path / f"n{node_id}"))
        for node in cluster.nodes.values():
            status = node.status()
            assert status["first_index"] > 1_000
            assert status["first_index"] - 1 <= status["snapshot_index"] <= status["commit_index"]
        # 4,000 commands of > 100 bytes (about 560 KB in an untrimmed WAL) while each node's
        # WAL stays within the bound (about 89 KB) after every batch.
        assert max(sizes) <= bound, (bound, sizes)
        assert written * VALUE_BYTES > 4 * bound, bound

        # Whole-cluster crash: every acknowledged write survives, restored from each node's
        # snapshot plus the slots its WAL kept after it.
        for node_id in list(cluster.nodes):
            await cluster.stop(node_id)
        for node_id in list(cluster.nodes):
            restarted = await cluster.restart(node_id)
            assert restarted.status()["applied_index"] >= restarted.status()["snapshot_index"] > 0
        leader = await cluster.wait_leader()
        assert commands.decode_result(
            await leader.propose(commands.encode_put(b"after", b"restart"))).ok
        for i in range(written):
            assert value_of(leader, b"k%d" % i) == b"%d:" % i + b"x" * 100
        last = leader.status()["applied_index"]
        await wait_for(lambda: all(n.status()["applied_index"] >= last
                                   for n in cluster.nodes.values()), what="apply after restart")
        assert all(n.state_machine == leader.state_machine for n in cluster.nodes.values())


@pytest.mark.parametrize("data_dir", [False, True])
async def test_paxos_replica_behind_the_trim_catches_up_by_a_chunked_snapshot_despite_loss(
        tmp_path: Path, data_dir: bool) -> None:
    limits = Limits(max_snapshot_chunk_bytes=4096, max_snapshot_inflight_chunks=8)
    async with engine.LocalCluster(n=3, protocol="paxos",
                                   data_dir=tmp_path if data_dir else None,
                                   snapshot_entries=200, snapshot_trailing_entries=0,
                                   limits=limits, check_invariants=True) as cluster:
        leader = await cluster.wait_leader()
        lagging = next(i for i in cluster.nodes if i != leader.node_id)
        await cluster.stop(lagging)
        for start in range(0, 1000, 200):
            await put_batch(leader, start, 200)
        await wait_for(lambda: leader.status()["first_index"] > 2, what="leader trim")
        # 10 % of the leader's datagrams are lost: chunks and ACCEPTs must be retransmitted.
        leader.transport.set_fault_filter(None, None, 0.1, seed=7)
        node = await cluster.restart(lagging)
        last = leader.status()["applied_index"]
        await wait_for(lambda: node.status()["applied_index"] >= last, timeout=20,
                       what="install and catch up")
        assert node.status()["snapshots"]["installed"] >= 1
        # At least one whole snapshot went in 4 KB chunks; which one depends on timing (the
        # leader snapshots every 200 slots), the smallest (200 ~110-byte keys) is 6 chunks.
        assert leader.status()["snapshots"]["chunks_sent"] >= 6
        leader.transport.clear_fault_filter()
        # The replica counts in phase 2 again: with the third node down, writes still commit.
        third = next(i for i in cluster.nodes if i not in (leader.node_id, lagging))
        await cluster.stop(third)
        assert commands.decode_result(
            await leader.propose(commands.encode_put(b"two", b"of-three"))).ok
        await wait_for(lambda: value_of(node, b"two") == b"of-three", what="apply on lagging")
        assert value_of(node, b"k999") == b"999:" + b"x" * 100
        if data_dir:
            # The installed snapshot is durable: a restart comes back from it.
            await cluster.stop(lagging)
            again = await cluster.restart(lagging)
            assert again.status()["applied_index"] >= again.status()["snapshot_index"] > 0
            await cluster.restart(third)
            last = leader.status()["applied_index"]
            await wait_for(lambda: again.status()["applied_index"] >= last,
                           what="catch up after restart")
            assert again.state_machine == leader.state_machine
