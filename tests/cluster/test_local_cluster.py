"""engine.LocalCluster: real nodes over real loopback UDP in one process.

Method: drive the public API (Node.propose / Node.read / LocalCluster faults) and check the
replicated KV state on every node afterwards.
"""

from __future__ import annotations

import asyncio

import pytest

import engine
from engine.kv import commands


async def wait_applied(cluster: engine.LocalCluster, index: int, timeout: float = 10.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while loop.time() < deadline:
        if all(n.status()["applied_index"] >= index for n in cluster.nodes.values() if n.running):
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"not every node applied {index}: "
                         f"{[n.status()['applied_index'] for n in cluster.nodes.values()]}")


def value_of(node: engine.Node, key: bytes) -> bytes | None:
    return commands.decode_result(node.state_machine.query(commands.encode_get_query(key))).value


async def test_three_nodes_commit_ten_thousand_proposals() -> None:
    async with engine.LocalCluster(n=3) as cluster:
        leader = await cluster.wait_leader()
        for chunk in range(10):
            results = await asyncio.gather(*(
                leader.propose(commands.encode_put(b"k%d" % i, b"v%d" % i))
                for i in range(chunk * 1000, (chunk + 1) * 1000)
            ))
            assert all(commands.decode_result(r).ok for r in results)
        index = leader.status()["applied_index"]
        await wait_applied(cluster, index)
        for node in cluster.nodes.values():
            assert value_of(node, b"k0") == b"v0"
            assert value_of(node, b"k9999") == b"v9999"
            assert len(node.state_machine.snapshot()) > 0


async def test_follower_forwards_proposals_and_serves_linearizable_reads() -> None:
    async with engine.LocalCluster(n=3) as cluster:
        leader = await cluster.wait_leader()
        follower = next(n for n in cluster.nodes.values() if n is not leader)
        result = await follower.propose(commands.encode_put(b"a", b"1"))
        assert commands.decode_result(result).ok
        answer = await follower.read(commands.encode_get_query(b"a"))
        assert commands.decode_result(answer).value == b"1"
        answer = await leader.read(commands.encode_get_query(b"a"))
        assert commands.decode_result(answer).value == b"1"


async def test_partitioned_leader_is_replaced_and_cluster_converges_after_heal() -> None:
    async with engine.LocalCluster(n=3) as cluster:
        old = await cluster.wait_leader()
        await old.propose(commands.encode_put(b"x", b"before"))
        others = [i for i in cluster.nodes if i != old.node_id]
        await cluster.partition({old.node_id}, set(others))
        new = await cluster.wait_leader(among=others)
        assert new.node_id != old.node_id
        # The isolated old leader cannot commit: its proposal never succeeds.
        with pytest.raises((engine.Timeout, engine.Rejected, engine.NotLeader)):
            await old.propose(commands.encode_put(b"x", b"lost"), timeout=1.0)
        await new.propose(commands.encode_put(b"x", b"after"))
        await cluster.heal()
        index = new.status()["applied_index"]
        await wait_applied(cluster, index)
        for node in cluster.nodes.values():
            assert value_of(node, b"x") == b"after"


async def test_crashed_follower_restarts_from_its_wal_and_catches_up(tmp_path) -> None:
    async with engine.LocalCluster(n=3, data_dir=tmp_path) as cluster:
        leader = await cluster.wait_leader()
        for i in range(50):
            await leader.propose(commands.encode_put(b"k%d" % i, b"v"))
        victim = next(i for i in cluster.nodes if i != leader.node_id)
        await cluster.stop(victim)
        for i in range(50, 100):
            await leader.propose(commands.encode_put(b"k%d" % i, b"v"))
        restarted = await cluster.restart(victim)
        await wait_applied(cluster, leader.status()["applied_index"])
        assert value_of(restarted, b"k99") == b"v"
        assert value_of(restarted, b"k0") == b"v"


async def test_in_memory_node_restart_keeps_what_it_persisted() -> None:
    async with engine.LocalCluster(n=3) as cluster:
        leader = await cluster.wait_leader()
        await leader.propose(commands.encode_put(b"k", b"v"))
        await cluster.stop(leader.node_id)
        new = await cluster.wait_leader(among=[i for i in cluster.nodes if i != leader.node_id])
        await new.propose(commands.encode_put(b"k2", b"v2"))
        back = await cluster.restart(leader.node_id)
        await wait_applied(cluster, new.status()["applied_index"])
        assert value_of(back, b"k2") == b"v2"


async def test_oversized_proposal_is_refused_at_propose_time() -> None:
    limits = engine.Limits(max_entry_bytes=1024)
    async with engine.LocalCluster(n=3, limits=limits) as cluster:
        leader = await cluster.wait_leader()
        with pytest.raises(engine.EntryTooLarge):
            await leader.propose(b"x" * 2048)


async def test_submit_queues_at_the_call_and_its_future_is_the_outcome() -> None:
    limits = engine.Limits(max_entry_bytes=1024, max_pending_proposals=64)
    async with engine.LocalCluster(n=3, limits=limits) as cluster:
        leader = await cluster.wait_leader()
        futures = [leader.submit(commands.encode_put(b"s%d" % i, b"v%d" % i)) for i in range(40)]
        assert all(isinstance(f, asyncio.Future) for f in futures)
        assert leader.status()["pending_proposals"] >= 40  # queued by the calls themselves
        results = await asyncio.gather(*futures)
        assert all(commands.decode_result(r).ok for r in results)
        assert value_of(leader, b"s39") == b"v39"
        # Refusals come from the call, before anything is queued.
        with pytest.raises(engine.EntryTooLarge):
            leader.submit(b"x" * 2048)
        flood = [leader.submit(commands.encode_put(b"f", b"v")) for _ in range(64)]
        with pytest.raises(engine.Overloaded):
            leader.submit(commands.encode_put(b"f", b"v"))
        await asyncio.gather(*flood)
        # The same write through propose answers the same way.
        again = await leader.propose(commands.encode_put(b"s39", b"w", previous=True))
        assert commands.decode_result(again).previous == b"v39"


async def test_a_write_cancelled_before_its_turn_is_never_proposed() -> None:
    async with engine.LocalCluster(n=3) as cluster:
        leader = await cluster.wait_leader()
        # All three are queued in this loop turn; the second is cancelled before the turn
        # that proposes them runs.
        first = leader.submit(commands.encode_put(b"c1", b"v"))
        second = leader.submit(commands.encode_put(b"c2", b"v"))
        third = leader.submit(commands.encode_put(b"c3", b"v"))
        assert second.cancel()
        await asyncio.gather(first, third)
        assert value_of(leader, b"c1") == value_of(leader, b"c3") == b"v"
        assert value_of(leader, b"c2") is None


async def test_entry_larger_than_a_datagram_is_chunked_and_replicated() -> None:
    async with engine.LocalCluster(n=3) as cluster:
        leader = await cluster.wait_leader()
        big = bytes(range(256)) * 4096  # 1 MiB, about 16 datagrams
        result = await leader.propose(commands.encode_put(b"big", big))
        assert commands.decode_result(result).ok
        await wait_applied(cluster, leader.status()["applied_index"])
        for node in cluster.nodes.values():
            assert value_of(node, b"big") == big
        fragments = sum(n.transport.stats()["fragments_sent"] for n in cluster.nodes.values())
        assert fragments >= 16


async def test_stop_fails_pending_requests_with_stopped_not_a_false_failure() -> None:
    async with engine.LocalCluster(n=3) as cluster:
        leader = await cluster.wait_leader()
        others = [i for i in cluster.nodes if i != leader.node_id]
        await cluster.partition({leader.node_id}, set(others))
        pending = asyncio.ensure_future(leader.propose(commands.encode_put(b"k", b"v")))
        await asyncio.sleep(0.05)
        await leader.stop()
        with pytest.raises(engine.Stopped):
            await pending


async def test_admin_fault_filter_needs_opt_in_and_partitions_a_node() -> None:
    from engine.messages import AdminOp

    async with engine.LocalCluster(n=3, allow_fault_injection=True) as cluster:
        leader = await cluster.wait_leader()
        address = cluster.members[leader.node_id]
        others = [i for i in cluster.nodes if i != leader.node_id]
        async with engine.Client(list(cluster.members.values()),
                                 cluster_key=cluster.cluster_key) as client:
            await client.admin(address, AdminOp.SET_FAULTS,
                               {"drop_to": others, "drop_from": others})
            new = await cluster.wait_leader(among=others)
            await client.admin(address, AdminOp.CLEAR_FAULTS)
            await new.propose(commands.encode_put(b"k", b"v"))
            await wait_applied(cluster, new.status()["applied_index"])
            with pytest.raises(engine.Rejected):
                await client.admin(address, 99)
    async with engine.LocalCluster(n=1) as single:
        async with engine.Client(list(single.members.values()),
                                 cluster_key=single.cluster_key) as client:
            with pytest.raises(engine.Rejected, match="disabled"):
                await client.admin(single.members[1], AdminOp.CLEAR_FAULTS)
