"""engine.Client.put / delete answer WriteResult(revision, prev): the previous value only when
the call asks for it (prev=True), through the command's flag and back over UDP."""

from __future__ import annotations

import engine
from engine.kv import WriteResult


async def test_put_and_delete_return_the_previous_value_only_with_prev_true() -> None:
    async with engine.LocalCluster(n=1) as cluster:
        await cluster.wait_leader()
        async with engine.Client(list(cluster.members.values()),
                                 cluster_key=cluster.cluster_key) as client:
            created = await client.put(b"k", b"v1")
            assert isinstance(created, WriteResult) and created.revision > 0
            assert (created.prev, created.existed, created.retained) == (None, False, True)
            plain = await client.put(b"k", b"v2")
            assert plain.prev is None and plain.existed and plain.revision > created.revision
            asked = await client.put(b"k", b"v3", prev=True)
            assert asked.prev == b"v2" and asked.existed and asked.revision > plain.revision
            deleted = await client.delete(b"k", prev=True)
            assert deleted.prev == b"v3" and deleted.existed
            gone = await client.delete(b"k")
            assert gone.prev is None and not gone.existed
            assert await client.get(b"k") is None
