"""PaxosCore under the real asyncio/UDP driver (engine.Node via LocalCluster).

The driver picks the core by NodeConfig.protocol; the point is that PaxosCore's surface is the
RaftCore surface, so nothing else in the runtime changes. Invariants are checked in the cores.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import engine
from engine.kv import commands


def value_of(node: engine.Node, key: bytes) -> bytes | None:
    return commands.decode_result(node.state_machine.query(commands.encode_get_query(key))).value


async def wait_applied(cluster: engine.LocalCluster, index: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if all(n.status()["applied_index"] >= index for n in cluster.nodes.values() if n.running):
            return
        await asyncio.sleep(0.01)
    raise AssertionError("not every node applied the index in time")


async def test_paxos_cluster_commits_forwards_and_reads() -> None:
    async with engine.LocalCluster(n=3, protocol="paxos", check_invariants=True) as cluster:
        leader = await cluster.wait_leader()
        assert leader.status()["role"] == "leader"
        results = await asyncio.gather(*(
            leader.propose(commands.encode_put(b"k%d" % i, b"v%d" % i)) for i in range(2000)
        ))
        assert all(commands.decode_result(r).ok for r in results)
        follower = next(n for n in cluster.nodes.values() if n is not leader)
        assert commands.decode_result(
            await follower.propose(commands.encode_put(b"f", b"1"))).ok
        answer = await follower.read(commands.encode_get_query(b"f"))
        assert commands.decode_result(answer).value == b"1"
        answer = await leader.read(commands.encode_get_query(b"k1999"))
        assert commands.decode_result(answer).value == b"v1999"
        await wait_applied(cluster, leader.status()["applied_index"])
        for node in cluster.nodes.values():
            assert value_of(node, b"k0") == b"v0"


async def test_paxos_leader_crash_then_new_leader_keeps_acknowledged_writes() -> None:
    async with engine.LocalCluster(n=3, protocol="paxos", check_invariants=True) as cluster:
        leader = await cluster.wait_leader()
        for i in range(50):
            assert commands.decode_result(
                await leader.propose(commands.encode_put(b"a%d" % i, b"x"))).ok
        await cluster.stop(leader.node_id)
        new_leader = await cluster.wait_leader()
        assert new_leader is not leader
        assert commands.decode_result(
            await new_leader.propose(commands.encode_put(b"after", b"y"))).ok
        for i in range(50):
            assert value_of(new_leader, b"a%d" % i) == b"x"
        await cluster.restart(leader.node_id)
        await wait_applied(cluster, new_leader.status()["applied_index"])
        restarted = cluster.nodes[leader.node_id]
        assert value_of(restarted, b"after") == b"y"


async def test_paxos_whole_cluster_restart_from_the_wal(tmp_path: Any) -> None:
    async with engine.LocalCluster(n=3, protocol="paxos", data_dir=tmp_path,
                                    check_invariants=True) as cluster:
        leader = await cluster.wait_leader()
        results = await asyncio.gather(*(
            leader.propose(commands.encode_put(b"d%d" % i, b"v")) for i in range(300)))
        assert all(commands.decode_result(r).ok for r in results)
        for node_id in list(cluster.nodes):
            await cluster.stop(node_id)
        for node_id in list(cluster.nodes):
            await cluster.restart(node_id)
        leader = await cluster.wait_leader()
        assert commands.decode_result(
            await leader.propose(commands.encode_put(b"after", b"restart"))).ok
        for i in range(300):
            assert value_of(leader, b"d%d" % i) == b"v"
