"""A sharded cluster in one process (LocalCluster(shards=N)): engine.Client routes by key
through the meta group's map, scans across ranges, and a live split loses no acknowledged
write (engine.testing.shard_invariants over every map version and every applied write)."""

from __future__ import annotations

import asyncio

import pytest

import engine
from engine.aio import shard_admin
from engine.aio.local_cluster import LocalCluster
from engine.aio.shard_server import presplit_keys
from engine.shard.map import ShardMap
from engine.testing.shard_invariants import ApplyRecord, check_history, check_writes_owned

KEYS = [b"key%d" % i for i in range(0, 100, 7)] + [b"a", b"zz"]


def _owner_groups(cluster: LocalCluster, key: bytes) -> set[int]:
    """The groups whose store holds `key`, on node 1 (frozen keys of a split excluded)."""
    server = cluster.servers[1]
    found = set()
    for group in server.nodes:
        if group == 0:
            continue
        machine = server.range_machine(group)
        if machine.descriptor.contains(key) and machine.store.get(key) is not None:
            found.add(group)
    return found


def test_presplit_keys_spread_key_style_keys() -> None:
    with pytest.raises(engine.errors.ConfigError):
        LocalCluster(n=3, shards=2, protocol="paxos")
    assert presplit_keys(1) == []
    assert presplit_keys(4) == [b"key2", b"key5", b"key7"]
    assert len(presplit_keys(64)) == 63 and presplit_keys(64)[0] == b"key01"


async def test_client_routes_every_operation_by_key_and_scans_across_ranges() -> None:
    async with LocalCluster(n=3, shards=4) as cluster:
        await cluster.wait_leader()
        async with cluster.client() as client:
            for key in KEYS:
                await client.put(key, b"v" + key)
            assert await client.get(b"key14") == b"vkey14"
            assert await client.cas(b"key21", b"vkey21", b"w")
            assert not await client.cas(b"key21", b"vkey21", b"x")
            assert (await client.delete(b"key28")).existed
            expected = sorted(k for k in KEYS if k != b"key28")
            rows = await client.scan(b"")
            assert [k for k, _ in rows] == expected
            assert dict(rows)[b"key21"] == b"w"
            assert [k for k, _ in await client.scan(b"key3", b"key8")] == [
                k for k in expected if b"key3" <= k < b"key8"]
            assert len(await client.scan(b"", limit=5)) == 5
            assert [k for k, _ in await client.scan_prefix(b"key4")] == [b"key42", b"key49"]
            ranges = await client.shard_map()
            assert [r.start for r in ranges] == [b"", b"key2", b"key5", b"key7"]
        with pytest.raises(engine.errors.ConfigError):
            await cluster.add_node()   # moves of ranges to a new node are not built
        async with cluster.client() as pager:   # pages by hand, unsharded at first
            paged: list[bytes] = []
            cursor: bytes | None = b""
            while cursor is not None:
                page = await pager.scan_page(cursor, limit=3)
                assert len(page.items) <= 3
                paged += [k for k, _ in page.items]
                cursor = page.resume_key
            assert paged == expected
        # Each key lives in exactly the group whose range owns it.
        for key in expected:
            owner = next(r for r in ranges if r.contains(key))
            assert _owner_groups(cluster, key) == {owner.group_id}


async def test_no_acknowledged_write_is_lost_across_live_splits() -> None:
    cluster = LocalCluster(n=3, shards=2)
    cluster.record_shards = True
    async with cluster:
        await cluster.wait_leader()
        async with cluster.client() as client, cluster.client() as stale:
            await stale.put(b"key90", b"before")   # caches the map before the splits
            acked: dict[bytes, bytes] = {}
            ack_count = [0]
            done = asyncio.Event()

            async def writer(w: int) -> None:
                i = 0
                while not done.is_set():
                    key = b"key%d%02d" % (w, i % 40)
                    value = b"%d" % i
                    try:
                        await client.put(key, value, timeout=5.0)
                    except engine.errors.Timeout:
                        acked.pop(key, None)   # outcome unknown: not checked
                    else:
                        acked[key] = value
                        ack_count[0] += 1
                    i += 1

            async def acks(count: int) -> None:
                target = ack_count[0] + count
                while ack_count[0] < target:
                    await asyncio.sleep(0.005)

            writers = [asyncio.create_task(writer(w)) for w in range(1, 10, 2)]
            await acks(10)
            first = await shard_admin.split(client, b"key3")   # while the writers run
            second = await shard_admin.split(client, b"key7")
            await acks(10)
            done.set()
            await asyncio.gather(*writers)
            assert first.right.start == b"key3" and second.right.start == b"key7"
            # The stale client's first write to a moved key is refused, re-routed, applied.
            await stale.put(b"key95", b"after")
            assert stale.counters["wrong_shard"] >= 1
            assert await stale.get(b"key95") == b"after"
            assert len(acked) > 20
            for key, value in acked.items():
                assert await client.get(key) == value, key
        maps: list[ShardMap] = []
        records: list[ApplyRecord] = []
        for server in cluster.servers.values():
            meta = server.nodes[0].state_machine
            assert meta.maps is not None
            maps = max(maps, meta.maps, key=len)
            for group in server.nodes:
                if group:
                    applied = server.range_machine(group).apply_records or []
                    records += [ApplyRecord(*record) for record in applied]
        assert [m.version for m in maps] == [1, 2, 3]
        check_history(maps)
        check_writes_owned(maps, records)
        # Every replica of every range holds the same data.
        for group in cluster.servers[1].nodes:
            if group:
                stores = {tuple(s.range_machine(group).store.items())
                          for s in cluster.servers.values() if group in s.nodes}
                assert len(stores) == 1, group


async def test_a_split_repeated_finishes_or_changes_nothing() -> None:
    async with LocalCluster(n=3, shards=2) as cluster:
        await cluster.wait_leader()
        async with cluster.client() as client:
            await client.put(b"key6", b"v")
            done = await shard_admin.split(client, b"key6")
            again = await shard_admin.split(client, b"key6")
            assert again.finished_only and again.right == done.right
            boundary = await shard_admin.split(client, b"key5")   # a pre-split boundary
            assert boundary.finished_only and boundary.right.start == b"key5"
            with pytest.raises(engine.errors.ConfigError):
                await shard_admin.split(client, b"")
            assert await client.get(b"key6") == b"v"
            assert len(await client.shard_map()) == 3


async def test_racing_splits_of_one_range_never_overlap() -> None:
    """Two coordinators split the same range at once: the meta group's epoch check lets one
    win (the other gets EpochMismatch, or splits the range it finds after the first)."""
    cluster = LocalCluster(n=3, shards=2)
    cluster.record_shards = True
    async with cluster:
        await cluster.wait_leader()
        async with cluster.client() as one, cluster.client() as two:
            for i in range(10):
                await one.put(b"key%d" % i, b"v%d" % i)
            outcomes = await asyncio.gather(
                shard_admin.split(one, b"key2"), shard_admin.split(two, b"key3"),
                return_exceptions=True)
            won = [o for o in outcomes if isinstance(o, shard_admin.SplitOutcome)]
            assert won and all(isinstance(o, shard_admin.SplitOutcome | engine.EpochMismatch)
                               for o in outcomes), outcomes
            ranges = await one.shard_map()
            assert len(ranges) == 2 + len(won)
            assert [await two.get(b"key%d" % i) for i in range(10)] == [
                b"v%d" % i for i in range(10)]
        meta = cluster.servers[1].nodes[0].state_machine
        assert meta.maps is not None
        check_history(meta.maps)
