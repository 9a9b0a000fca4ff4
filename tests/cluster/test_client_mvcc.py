"""engine.Client, engine.KV and engine.SyncClient over MVCC: get(key, at=ts) through the
cluster (HistoryCompacted below the kept history), get_entry's revision and cas on it."""

from __future__ import annotations

import asyncio

import pytest

import engine
from engine.kv import Entry
from engine.txn.hlc import Timestamp

SECOND = 1_000_000_000


async def test_client_reads_at_a_timestamp_and_swaps_on_a_revision() -> None:
    limits = engine.Limits(mvcc_retention_s=5)
    async with engine.LocalCluster(n=1, state_machine=lambda: engine.KVStore(limits)) as cluster:
        await cluster.wait_leader()
        async with engine.Client(list(cluster.members.values()),
                                 cluster_key=cluster.cluster_key) as client:
            for second in (10, 20, 30):
                await client.put(b"k", b"v%d" % second, timestamp=Timestamp(second * SECOND))
            assert await client.get(b"k", at=Timestamp(27 * SECOND)) == b"v20"
            assert await client.get(b"k", at=Timestamp(30 * SECOND)) == b"v30"
            assert await client.get(b"k") == b"v30"
            with pytest.raises(engine.HistoryCompacted) as caught:
                await client.get(b"k", at=Timestamp(12 * SECOND))
            assert Timestamp(caught.value.oldest_wall_ns,
                             caught.value.oldest_logical) == Timestamp(25 * SECOND)

            value, revision = await client.get_entry(b"k")
            assert value == b"v30" and revision > 0
            assert await client.get_entry(b"absent") == Entry(None, 0)
            assert not await client.cas(b"k", expected_revision=revision - 1, value=b"no")
            assert await client.cas(b"k", expected_revision=revision, value=b"yes")
            assert await client.cas(b"new", expected_revision=0, value=b"first")
            assert await client.get(b"new") == b"first"
            assert await client.cas(b"new", b"first", b"second")   # the value form as ever
            with pytest.raises(engine.ConfigError):
                await client.cas(b"k", b"yes", expected_revision=1, value=b"both")

            sync = await asyncio.to_thread(
                engine.SyncClient, list(cluster.members.values()),
                cluster_key=cluster.cluster_key)
            try:
                entry = await asyncio.to_thread(sync.get_entry, b"k")
                assert entry.value == b"yes"
                assert await asyncio.to_thread(
                    lambda: sync.get(b"k", at=Timestamp(27 * SECOND))) == b"v20"
                assert await asyncio.to_thread(
                    lambda: sync.cas(b"k", expected_revision=entry.revision, value=b"s"))
            finally:
                await asyncio.to_thread(sync.close)

        kv = engine.KV(next(iter(cluster.nodes.values())))
        assert await kv.get(b"k", at=Timestamp(27 * SECOND)) == b"v20"
        entry = await kv.get_entry(b"k")
        assert entry.value == b"s"
        assert await kv.cas(b"k", expected_revision=entry.revision, value=b"kv")
        assert not await kv.cas(b"k", expected_revision=entry.revision, value=b"stale")
