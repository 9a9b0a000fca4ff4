"""Automatic splits (engine.aio.auto_split): a range past the size or the load limit
splits by itself, and every key stays readable."""

from __future__ import annotations

import asyncio

import pytest

import engine
from engine.aio.local_cluster import LocalCluster
from engine.config import Limits
from engine.shard.map import RangeDescriptor, ShardMap
from engine.testing.shard_invariants import check_history


async def _ranges_at_least(client: engine.Client, count: int) -> list[RangeDescriptor]:
    """The map once it has `count` ranges (the automatic check runs every 50 ms; the
    client's timeout bounds the wait)."""
    while True:
        ranges = await client.shard_map()
        if len(ranges) >= count:
            return ranges
        await asyncio.sleep(0.02)


@pytest.mark.parametrize(("limits", "writes"), [
    (Limits(range_split_bytes=1_000), 200),     # size: 200 rows of about 10 bytes
    (Limits(range_split_ops_per_s=20), 60),     # load: 60 writes in well under 3 s
], ids=["size", "load"])
async def test_a_range_past_a_limit_splits_by_itself(limits: Limits, writes: int) -> None:
    async with LocalCluster(n=3, split_keys=[b"key5"], auto_split_s=0.05,
                            limits=limits) as cluster:
        await cluster.wait_leader()
        async with cluster.client() as client:
            items = {b"key%03d" % i: b"x%d" % i for i in range(writes)}
            for key, value in items.items():
                await client.put(key, value)
            ranges = await asyncio.wait_for(_ranges_at_least(client, 3), 10)
            assert ranges[0].end is not None and b"key000" < ranges[0].end < b"key%03d" % (
                writes - 1)
            assert dict(await client.scan(b"")) == items
            check_history([ShardMap(1, ranges)])
