"""NodeConfig.encrypt_payloads / Client(encrypt_payloads=True): a cluster whose frames carry
encrypted payloads works end to end (fragmented frames included), and a node refuses, drops
and counts the frames of a client in the other mode (docs/security.md)."""

from __future__ import annotations

import pytest

import engine
from engine.kv import commands

# Larger than one datagram (Limits.max_datagram_bytes): the leader's APPEND carrying it
# travels as fragments of an encrypted frame, each fragment encrypted too.
LARGE_VALUE = bytes(range(256)) * 400


async def test_an_encrypting_cluster_serves_an_encrypting_client() -> None:
    async with engine.LocalCluster(n=3, encrypt_payloads=True) as cluster:
        await cluster.wait_leader()
        async with engine.Client(list(cluster.members.values()), cluster_key=cluster.cluster_key,
                                 encrypt_payloads=True) as client:
            await client.put(b"small", b"secret")
            assert await client.get(b"small") == b"secret"
            leader = await cluster.wait_leader()
            assert commands.decode_result(
                await leader.propose(commands.encode_put(b"large", LARGE_VALUE))).ok
            for node in cluster.nodes.values():
                answer = await node.read(commands.encode_get_query(b"large"))
                assert commands.decode_result(answer).value == LARGE_VALUE
        assert sum(n.transport.stats()["fragments_sent"] for n in cluster.nodes.values()) > 0
        for node in cluster.nodes.values():
            assert node.transport.stats()["dropped"]["wrong_mode"] == 0


@pytest.mark.parametrize("cluster_encrypts", [True, False])
async def test_a_client_of_the_other_mode_is_refused_and_counted(cluster_encrypts: bool) -> None:
    async with engine.LocalCluster(n=1, encrypt_payloads=cluster_encrypts) as cluster:
        node = await cluster.wait_leader()
        async with engine.Client(list(cluster.members.values()), cluster_key=cluster.cluster_key,
                                 encrypt_payloads=not cluster_encrypts, timeout=1.0) as client:
            with pytest.raises(engine.Timeout):
                await client.get(b"k")
        assert node.transport.stats()["dropped"]["wrong_mode"] >= 1
        assert node.transport.stats()["dropped"]["decode_error"] == 0
