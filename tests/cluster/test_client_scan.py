"""Scans over a real cluster: engine.Client.scan / scan_prefix (paged over UDP, each page a
linearizable read), engine.SyncClient and the in-process engine.KV facade.

Method: LocalClusters over loopback UDP. A scan issued after a put was acknowledged must see
it (ReadIndex, Raft §6.4); a client with a small datagram limit must page through many
replies and still return every key exactly once, in order.
"""

from __future__ import annotations

import asyncio

import pytest

import engine
from engine.config import Limits


def addresses(cluster: engine.LocalCluster) -> list[str]:
    return list(cluster.members.values())


def client(cluster: engine.LocalCluster, **options: object) -> engine.Client:
    return engine.Client(addresses(cluster), cluster_key=cluster.cluster_key,
                         **options)  # type: ignore[arg-type]


async def test_client_scan_sees_every_acknowledged_put_in_order() -> None:
    async with engine.LocalCluster(n=3) as cluster:
        await cluster.wait_leader()
        async with client(cluster) as c:
            assert await c.scan(b"") == []
            for i in (5, 1, 9, 3, 7):   # created out of order
                await c.put(b"user/%d" % i, b"v%d" % i)
                # Linearizable: the scan right after the acknowledgement sees the write.
                assert (b"user/%d" % i, b"v%d" % i) in await c.scan(b"user/")
            await c.put(b"other", b"x")
            await c.put(b"user0", b"just past the prefix")
            await c.delete(b"user/3")
            rows = await c.scan_prefix(b"user/")
            assert [kv.key for kv in rows] == [b"user/1", b"user/5", b"user/7", b"user/9"]
            assert rows[0].value == b"v1" and rows[0] == (b"user/1", b"v1")
            assert await c.scan(b"user/5", b"user/9") == [(b"user/5", b"v5"), (b"user/7", b"v7")]
            assert [k for k, _ in await c.scan(b"", limit=2)] == [b"other", b"user/1"]
            assert [k for k, _ in await c.scan(b"user/", None)][-1] == b"user0"
            page = await c.scan_page(b"user/", b"user0", limit=3)
            assert page.more and page.resume_key == b"user/7\x00" and page.revision
            with pytest.raises(engine.ConfigError):
                await c.scan(b"b", b"a")
            with pytest.raises(engine.ConfigError):
                await c.scan(b"a", limit=0)


async def test_scan_pages_through_many_keys_with_small_datagrams() -> None:
    async with engine.LocalCluster(n=3) as cluster:
        await cluster.wait_leader()
        keys = [b"key/%04d" % i for i in range(300)]
        async with client(cluster) as writer:
            await asyncio.gather(*(writer.put(key, key[::-1] * 3) for key in keys))
        # 512-byte datagrams: about 13 of these rows per reply, so the scan takes ~25 pages.
        async with client(cluster, limits=Limits(max_datagram_bytes=512)) as small:
            rows = await small.scan_prefix(b"key/")
            assert [k for k, _ in rows] == keys
            assert all(v == k[::-1] * 3 for k, v in rows)
            assert small.counters["requests"] >= 20
            limited = await small.scan(b"key/0100", limit=50)
            assert [k for k, _ in limited] == keys[100:150]


async def test_kv_facade_scans_on_a_follower_after_a_put_on_the_leader() -> None:
    async with engine.LocalCluster(n=3) as cluster:
        leader = await cluster.wait_leader()
        follower = next(n for n in cluster.nodes.values() if n is not leader)
        kv, remote = engine.KV(leader), engine.KV(follower)
        await kv.put(b"a/2", b"2")
        await kv.put(b"a/1", b"1")
        await kv.put(b"b", b"3")
        assert await remote.scan_prefix(b"a/") == [(b"a/1", b"1"), (b"a/2", b"2")]
        assert await remote.scan(b"a/2", limit=5) == [(b"a/2", b"2"), (b"b", b"3")]
        with pytest.raises(engine.ConfigError):
            await remote.scan(b"a", limit=0)


async def test_sync_client_scan() -> None:
    async with engine.LocalCluster(n=3) as cluster:
        await cluster.wait_leader()

        def blocking() -> list[list[engine.KeyValue]]:
            with engine.SyncClient(addresses(cluster), cluster_key=cluster.cluster_key) as c:
                c.put(b"p/x", b"1")
                c.put(b"p/y", b"2")
                return [c.scan(b"p/"), c.scan_prefix(b"p/", limit=1)]

        everything, first = await asyncio.to_thread(blocking)
        assert everything == [(b"p/x", b"1"), (b"p/y", b"2")]
        assert first == [(b"p/x", b"1")]
