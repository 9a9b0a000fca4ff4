"""LocalCluster.client(): an engine.Client already pointed at the cluster (DESIGN.md §3)."""

from __future__ import annotations

import engine


async def test_cluster_client_reaches_the_cluster() -> None:
    async with engine.LocalCluster(n=3) as cluster:
        await cluster.wait_leader()
        async with cluster.client(timeout=5.0) as client:
            written = await client.put(b"k", b"v")
            assert written.revision > 0
            assert await client.get(b"k") == b"v"


async def test_cluster_client_encrypts_when_the_nodes_do() -> None:
    async with engine.LocalCluster(n=3, encrypt_payloads=True) as cluster:
        await cluster.wait_leader()
        async with cluster.client(timeout=5.0) as client:
            await client.put(b"k", b"secret")
            assert await client.get(b"k") == b"secret"
