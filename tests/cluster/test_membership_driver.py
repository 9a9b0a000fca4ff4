"""Membership changes through the driver (engine.Node / LocalCluster over real loopback UDP):
grow and shrink a cluster, remove the leader, replace a node, witnesses, snapshots that keep
the configuration, and the refusals (Raft thesis ch. 4; docs/interfaces.md "Membership").

Method: every write the library acknowledged is remembered and read back from every member's
state machine at the end; membership is checked on every node's status()."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest

import engine
from engine.kv import commands

put = commands.encode_put


def value_of(node: engine.Node, key: bytes) -> bytes | None:
    return commands.decode_result(node.state_machine.query(commands.encode_get_query(key))).value


async def wait_for(predicate: Callable[[], bool], timeout: float = 10.0,
                   what: str = "condition") -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        if loop.time() > deadline:
            raise AssertionError(f"{what} not reached in {timeout} s")
        await asyncio.sleep(0.01)


async def write_load(cluster: engine.LocalCluster, acknowledged: dict[bytes, bytes],
                     stop: asyncio.Event, writer: int) -> None:
    """Writes through whichever node leads; only answered writes count."""
    i = 0
    while not stop.is_set():
        leader = cluster.leader()
        if leader is None:
            await asyncio.sleep(0.01)
            continue
        key, value = b"w%d-%d" % (writer, i), b"v%d" % i
        i += 1
        try:
            await leader.propose(put(key, value), timeout=5.0)
        except (engine.Rejected, engine.Timeout, engine.Stopped):
            continue  # not acknowledged (or unknown): not counted
        acknowledged[key] = value


async def all_applied(cluster: engine.LocalCluster, node_ids: list[int]) -> None:
    leader = await cluster.wait_leader()
    target = leader.core.commit_index
    await wait_for(lambda: all(cluster.nodes[i].status()["applied_index"] >= target
                               for i in node_ids), what="members applied")


def voters(node: engine.Node) -> list[int]:
    return list(node.members()["voters"])


async def test_grow_3_to_5_under_load_loses_no_acknowledged_write() -> None:
    async with engine.LocalCluster(n=3) as cluster:
        await cluster.wait_leader()
        acknowledged: dict[bytes, bytes] = {}
        stop = asyncio.Event()
        writers = [asyncio.create_task(write_load(cluster, acknowledged, stop, w))
                   for w in range(4)]
        await wait_for(lambda: len(acknowledged) > 50, what="writes before growing")
        await cluster.add_node()
        await cluster.add_node()
        before = len(acknowledged)
        await wait_for(lambda: len(acknowledged) > before + 50, what="writes after growing")
        stop.set()
        await asyncio.gather(*writers)
        leader = await cluster.wait_leader()
        assert voters(leader) == [1, 2, 3, 4, 5]
        assert leader.members()["pending"] is False
        await all_applied(cluster, [1, 2, 3, 4, 5])
        for node in cluster.nodes.values():
            assert voters(node) == [1, 2, 3, 4, 5]
            lost = [k for k, v in acknowledged.items() if value_of(node, k) != v]
            assert not lost, f"node {node.node_id} lacks {len(lost)} acknowledged writes"
        # The new members are real voters: with two original nodes down, 3 of 5 commit.
        await cluster.stop(1 if leader.node_id != 1 else 2)
        await cluster.stop(3 if leader.node_id != 3 else 4)
        await (await cluster.wait_leader()).propose(put(b"after", b"1"), timeout=5.0)


async def test_remove_the_leader_it_steps_down_and_goes_quiet_the_rest_go_on() -> None:
    async with engine.LocalCluster(n=3) as cluster:
        leader = await cluster.wait_leader()
        await leader.propose(put(b"a", b"1"))
        old = leader.node_id
        view = await leader.remove_member(old)
        assert old not in view["voters"] and not view["joint"]
        # Hand-off (thesis §4.2.2, §3.10): the removed leader's TIMEOUT_NOW reaches a caught-up
        # voter, so a new leader exists well before any election timeout (300-600 ms) fires.
        rest_ids = [i for i in cluster.nodes if i != old]
        await wait_for(lambda: any(cluster.nodes[i].status()["role"] == "leader"
                                   for i in rest_ids), timeout=0.25, what="hand-off")
        assert leader.transport.stats()["dropped"]["unknown_destination"] == 0
        assert not any("hand off" in reason for reason in leader.core.ignored)
        await wait_for(lambda: leader.status()["removed"], what="removed leader goes quiet")
        status = leader.status()
        assert status["role"] == "follower" and "removed" in status["removed_reason"]
        with pytest.raises(engine.MembershipError, match="removed"):
            await leader.propose(put(b"b", b"2"))
        cluster.members.pop(old)
        new_leader = await cluster.wait_leader()
        assert new_leader.node_id != old
        await new_leader.propose(put(b"b", b"2"), timeout=5.0)
        rest = [n for n in cluster.nodes.values() if n.node_id != old]
        for node in rest:
            assert voters(node) == sorted(n.node_id for n in rest)
        # Quiet: the removed node's term stays put while the others go on.
        term = leader.status()["term"]
        await asyncio.sleep(1.0)
        assert leader.status()["term"] == term and leader.status()["role"] == "follower"


async def test_replace_a_follower_and_the_removed_one_is_told_it_is_out() -> None:
    async with engine.LocalCluster(n=3) as cluster:
        leader = await cluster.wait_leader()
        for i in range(20):
            await leader.propose(put(b"k%d" % i, b"v"))
        victim = next(i for i in cluster.nodes if i != leader.node_id)
        newcomer = await cluster.add_node()
        await cluster.remove_node(victim)
        leader = await cluster.wait_leader()
        expected = sorted(set(cluster.members))
        assert voters(leader) == expected and newcomer.node_id in expected
        # The removed follower never gets the entry completing its removal; the leader's
        # MEMBER_REMOVED notice makes it go quiet (thesis §4.2.3).
        removed = cluster.nodes[victim]
        await wait_for(lambda: removed.status()["removed"], what="removed follower quiet")
        await leader.propose(put(b"after", b"1"))
        await all_applied(cluster, expected)
        assert value_of(newcomer, b"k19") == b"v" and value_of(newcomer, b"after") == b"1"


async def test_two_full_and_a_witness_tolerate_a_full_node_down() -> None:
    async with engine.LocalCluster(n=3, witnesses=(3,)) as cluster:
        leader = await cluster.wait_leader()
        assert leader.node_id != 3  # a witness never leads
        witness = cluster.nodes[3]
        assert witness.status()["witness"] is True
        for i in range(10):
            await leader.propose(put(b"k%d" % i, b"x" * 100))
        # One full node down: {full, witness} still commits (rule W2 feeds the witness).
        other_full = 1 if leader.node_id == 2 else 2
        await cluster.stop(other_full)
        for i in range(10, 20):
            await leader.propose(put(b"k%d" % i, b"x" * 100), timeout=5.0)
        await wait_for(lambda: witness.status()["applied_index"] >= leader.core.commit_index,
                       what="witness applied")
        # The witness stores no payloads and has an empty state machine; reads are refused.
        entries = witness.core.log.slice(witness.core.log.first_index,
                                         witness.core.log.last_index + 1)
        normal = [e for e in entries if e.kind == engine.messages.EntryKind.NORMAL]
        assert len(normal) >= 20 and all(e.data == b"" for e in normal)
        assert value_of(witness, b"k0") is None
        with pytest.raises(engine.Rejected, match="witness"):
            await witness.read(commands.encode_get_query(b"k0"))
        # The other full node comes back and catches up with every command.
        await cluster.restart(other_full)
        back = cluster.nodes[other_full]
        await wait_for(lambda: value_of(back, b"k19") == b"x" * 100, what="full node caught up")


async def test_restart_from_a_snapshot_keeps_the_membership(tmp_path: Any) -> None:
    async with engine.LocalCluster(n=3, data_dir=tmp_path, snapshot_entries=50,
                                   snapshot_trailing_entries=0) as cluster:
        leader = await cluster.wait_leader()
        await cluster.add_node()
        leader = await cluster.wait_leader()
        config_index = leader.members()["index"]
        for start in range(0, 200, 50):
            await asyncio.gather(*(leader.propose(put(b"k%d" % i, b"v"))
                                   for i in range(start, start + 50)))
        follower = next(n for n in cluster.nodes.values()
                        if n is not leader and n.node_id != 4)
        # The CONFIG entries are compacted away: only the snapshot holds the membership.
        await wait_for(lambda: follower.status()["first_index"] > config_index + 1,
                       what="log compacted past the configuration entries")
        await cluster.stop(follower.node_id)
        restarted = await cluster.restart(follower.node_id)
        assert restarted.status()["first_index"] > config_index + 1
        # Its NodeConfig still names 3 members; the snapshot says 4 voters.
        assert sorted(restarted.config.members) == [1, 2, 3]
        assert voters(restarted) == [1, 2, 3, 4]
        assert restarted.transport._peer_addresses.keys() == {1, 2, 3, 4} - {follower.node_id}
        await wait_for(lambda: value_of(restarted, b"k199") == b"v", what="restarted caught up")


async def test_unsafe_or_invalid_changes_are_refused_with_clear_errors() -> None:
    async with engine.LocalCluster(n=3) as cluster:
        leader = await cluster.wait_leader()
        follower = next(n for n in cluster.nodes.values() if n is not leader)
        with pytest.raises(engine.MembershipError, match="not a member"):
            await leader.remove_member(9)
        with pytest.raises(engine.MembershipError, match="not a learner"):
            await leader.promote(9)
        # Promoting a voter is a no-op (idempotent: a retried add_member ends the same way).
        assert follower.node_id in (await leader.promote(follower.node_id))["voters"]
        with pytest.raises(engine.MembershipError, match="already a member"):
            await leader.add_member(follower.node_id, "127.0.0.1:1")
        with pytest.raises(engine.MembershipError, match="host:port"):
            await leader.add_member(7, "nowhere")
        with pytest.raises(engine.NotLeader) as not_leader:
            await follower.add_member(7, "127.0.0.1:1")
        assert not_leader.value.leader_id == leader.node_id
        assert not_leader.value.leader_address == cluster.members[leader.node_id]
        # A learner that never answers is never promoted: Timeout (outcome unknown).
        with pytest.raises(engine.Timeout, match="catch up"):
            await leader.add_member(7, "127.0.0.1:9", timeout=0.5)
        assert 7 in leader.members()["learners"]
        await leader.remove_member(7)
        # Two changes at once: the second waits for the first (ConfChangeInProgress retried).
        first = asyncio.create_task(cluster.add_node(4, learner=True))
        second = asyncio.create_task(cluster.add_node(5, learner=True))
        await asyncio.gather(first, second)
        assert leader.members()["learners"] == [4, 5]


async def test_paxos_refuses_membership_changes() -> None:
    async with engine.LocalCluster(n=3, protocol="paxos") as cluster:
        node = cluster.nodes[1]
        with pytest.raises(engine.MembershipError, match="protocol='raft'"):
            await node.add_member(4, "127.0.0.1:1")
        assert node.members()["voters"] == [1, 2, 3]
    with pytest.raises(engine.ConfigError, match="raft"):
        engine.NodeConfig(node_id=1, members={1: "127.0.0.1:1"}, protocol="paxos",
                          cluster_key=b"k" * 32, join=True)
    with pytest.raises(engine.ConfigError, match="witnesses must be fewer"):
        engine.NodeConfig(node_id=1, members={1: "127.0.0.1:1", 2: "127.0.0.1:2"},
                          cluster_key=b"k" * 32, witnesses=(2,))
