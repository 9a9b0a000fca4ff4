"""A sharded cluster under faults: a crash and restart of every node after a split, a
replica that misses a split and catches up from snapshots, a range leader cut off."""

from __future__ import annotations

import asyncio

from engine.aio import shard_admin
from engine.aio.local_cluster import LocalCluster


async def test_a_split_range_survives_a_restart_of_every_node() -> None:
    """The right-hand range's initial state lives in its parent's log and snapshot: a
    restarted replica replays the split, hosts the new range again, and its WAL's entries
    apply on top of the seed."""
    async with LocalCluster(n=3, shards=2) as cluster:
        await cluster.wait_leader()
        async with cluster.client() as client:
            for i in range(20):
                await client.put(b"key%02d" % i, b"v%d" % i)
            await shard_admin.split(client, b"key10")
            for i in range(10, 20):
                await client.put(b"key%02d" % i, b"w%d" % i)
            for node_id in (1, 2, 3):
                await cluster.stop(node_id)
            for node_id in (1, 2, 3):
                await cluster.restart(node_id)
            await cluster.wait_leader()
            for i in range(20):
                expected = b"%s%d" % (b"w" if i >= 10 else b"v", i)
                assert await client.get(b"key%02d" % i) == expected
        assert all(sorted(s.nodes) == [0, 1, 2, 3] for s in cluster.servers.values())


async def test_writes_to_every_range_continue_when_a_leader_is_cut_off() -> None:
    """Leaders are per group: when the node leading a range is partitioned away, the
    range elects another leader and the client follows it, range by range."""
    async with LocalCluster(n=3, shards=4) as cluster:
        await cluster.wait_leader()
        async with cluster.client() as client:
            keys = [b"a", b"key3", b"key6", b"key8"]   # one per range
            for key in keys:
                await client.put(key, b"1")
            server = cluster.servers[1]
            leader_of_range_1 = next(
                s.config.node_id for s in cluster.servers.values()
                if s.nodes[1].core.role == "leader")
            await cluster.partition({leader_of_range_1})
            for key in keys:
                await client.put(key, b"2")
            await cluster.heal()
            assert [await client.get(key) for key in keys] == [b"2"] * 4
            assert server.running


async def test_a_replica_down_through_a_split_catches_up_from_snapshots() -> None:
    """Node 3 misses a split and the writes around it; the leaders compacted their logs,
    so it installs the parent's snapshot (which names the new range: node 3 hosts it,
    seeded from the snapshot's frozen keys) and the new range's snapshot."""
    async with LocalCluster(n=3, shards=2, snapshot_entries=20,
                            snapshot_trailing_entries=5) as cluster:
        await cluster.wait_leader()
        async with cluster.client() as client:
            await cluster.stop(3)
            for i in range(50):
                await client.put(b"key%02d" % i, b"v%d" % i)
            await shard_admin.split(client, b"key2")
            for i in range(50):
                await client.put(b"key%02d" % i, b"w%d" % i)
            await cluster.restart(3)
            reference, lagging = cluster.servers[1], cluster.servers[3]

            async def converged() -> None:
                while not (3 in lagging.nodes and all(
                        lagging.range_machine(g).store.items()
                        == reference.range_machine(g).store.items() for g in (1, 2, 3))):
                    await asyncio.sleep(0.02)

            await asyncio.wait_for(converged(), 10)
            assert lagging.nodes[1].snapshot_stats["installed"] >= 1
            assert lagging.range_machine(1).children == reference.range_machine(1).children

