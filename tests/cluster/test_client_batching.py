"""engine.Client sends the requests of one loop turn to a node in as few datagrams as fit."""

from __future__ import annotations

import asyncio

import engine


async def test_concurrent_writes_share_datagrams_and_all_apply() -> None:
    async with engine.LocalCluster(n=3) as cluster:
        await cluster.wait_leader()
        # An attempt timeout far above any answer's time: a retry here means a lost datagram
        # or a bug, never a slow machine.
        async with engine.Client(list(cluster.members.values()),
                                 cluster_key=cluster.cluster_key,
                                 attempt_timeout=30.0) as client:
            await client.put(b"warm", b"up")          # finds the leader
            before = client.counters["datagrams_sent"]
            keys = [b"k%d" % i for i in range(300)]
            await asyncio.gather(*(client.put(key, key * 3) for key in keys))
            sent = client.counters["datagrams_sent"] - before
            assert client.counters["retries"] == 0
            # 300 requests left together: a handful of datagrams, not 300.
            assert sent <= 10, sent
            values = await asyncio.gather(*(client.get(key) for key in keys))
            assert values == [key * 3 for key in keys]


async def test_a_turn_larger_than_a_datagram_is_split() -> None:
    async with engine.LocalCluster(n=1) as cluster:
        await cluster.wait_leader()
        async with engine.Client(list(cluster.members.values()),
                                 cluster_key=cluster.cluster_key) as client:
            await client.put(b"warm", b"up")
            before = client.counters["datagrams_sent"]
            value = b"v" * 2000
            # 200 x 2 KB = 400 KB of requests in one turn: at least 7 datagrams of <= 65 KB.
            await asyncio.gather(*(client.put(b"big%d" % i, value) for i in range(200)))
            sent = client.counters["datagrams_sent"] - before
            assert 7 <= sent <= 20, sent
            assert await client.get(b"big199") == value
