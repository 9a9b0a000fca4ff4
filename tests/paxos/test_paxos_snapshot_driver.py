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
from pathlib import Path
from typing import Any

import pytest

import engine
from engine.aio import node as node_module
from engine.aio.wal import WriteAheadLog
from engine.kv import commands
from engine.types import Limits

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


async def test_paxos_wal_stays_bounded_and_a_whole_cluster_restart_keeps_every_write(
        tmp_path: Path, small_segments: None) -> None:
    async with engine.LocalCluster(n=3, protocol="paxos", data_dir=tmp_path,
                                   snapshot_entries=200, snapshot_trailing_entries=50,
                                   check_invariants=True) as cluster:
        leader = await cluster.wait_leader()
        sizes: list[int] = []
        written = 0
        for _ in range(20):
            await put_batch(leader, written, 200)
            written += 200
            sizes.append(max(wal_bytes(tmp_path / f"n{i}") for i in cluster.nodes))
        last = leader.status()["applied_index"]
        await wait_for(lambda: all(n.status()["applied_index"] >= last
                                   for n in cluster.nodes.values()), what="apply everywhere")
        await wait_for(lambda: all(n.status()["snapshot_index"] >= last - 400
                                   for n in cluster.nodes.values()), what="snapshots")
        for node in cluster.nodes.values():
            status = node.status()
            # Trimmed in memory below the snapshot, minus the trailing slots.
            assert status["first_index"] > 1_000
            assert status["first_index"] - 1 <= status["snapshot_index"] <= status["commit_index"]
        # The WAL does not grow with the writes: 4,000 commands of > 100 bytes (400 KB of
        # values alone, all of it in an untrimmed WAL) while each node's WAL stays within a few
        # 32 KiB segments (measured: 57-115 KB after every round).
        assert max(sizes[4:]) <= 6 * SEGMENT_BYTES, sizes
        assert written * 100 > 2 * max(sizes[4:]), sizes

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
