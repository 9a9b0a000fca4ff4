"""Readable cluster scenarios on the deterministic simulator (engine.testing.sim).

Method: each test drives a Simulation through one story (partition the leader, crash and
restart, one-way links, ...) with the scenario DSL and checks the outcome; the simulator's
ClusterChecker checks the global safety invariants after every event on the way.
"""

from __future__ import annotations

from engine.raft import Role
from engine.testing.sim import FaultConfig, Simulation


def replicate(
    sim: Simulation, count: int, prefix: bytes = b"c", nodes: set[int] | None = None
) -> int:
    """Proposes count commands through the leader and waits until `nodes` (default: every
    running node) applied them."""
    last = 0
    for i in range(count):
        last = sim.propose(prefix + b"%d" % i)[1]
    up = sorted(nodes) if nodes else [i for i in sim.node_ids if sim.nodes[i].up]
    assert sim.run_until(lambda: sim.applied_everywhere(last, up), max_time=5_000)
    return last


def test_elects_one_leader_and_replicates_in_order() -> None:
    sim = Simulation(n=3, seed=1)
    sim.wait_leader()
    replicate(sim, 20)
    logs = {i: sim.nodes[i].applied for i in sim.node_ids}
    assert logs[1] == logs[2] == logs[3] == [b"c%d" % i for i in range(20)]


def test_partitioned_leader_is_replaced_and_its_uncommitted_writes_are_dropped() -> None:
    sim = Simulation(n=5, seed=2)
    old = sim.wait_leader()
    replicate(sim, 3)
    majority = set(sim.node_ids) - {old}
    sim.partition({old}, majority)
    first, _, old_term = sim.propose(b"lost", old)  # can never commit: no quorum
    assert sim.run_until(lambda: (sim.leader() or old) != old, max_time=5_000)
    new = sim.leader()
    assert new in majority
    # Check-quorum: the isolated leader stops acting as leader on its own (thesis §6.2).
    assert sim.run_until(lambda: sim.core(old).role != Role.LEADER, max_time=2_000)
    replicate(sim, 3, prefix=b"after", nodes=majority)
    sim.heal()
    assert sim.run_until(
        lambda: sim.nodes[old].applied_index >= sim.core(new).commit_index, max_time=5_000
    )
    assert not sim.is_committed(first, old_term)
    assert all(b"lost" not in sim.nodes[i].applied for i in sim.node_ids)
    assert sim.nodes[old].applied == sim.nodes[new].applied


def test_crash_and_restart_keep_every_committed_entry() -> None:
    sim = Simulation(n=3, seed=3, faults=FaultConfig(fsync_min_ms=2, fsync_max_ms=8))
    leader = sim.wait_leader()
    replicate(sim, 10)
    follower = next(i for i in sim.node_ids if i != leader)
    sim.crash(follower)
    replicate(sim, 5, prefix=b"while-down")
    sim.crash(leader)
    sim.restart(follower)
    sim.restart(leader)
    sim.wait_leader()
    replicate(sim, 5, prefix=b"after")
    expected = (
        [b"c%d" % i for i in range(10)]
        + [b"while-down%d" % i for i in range(5)]
        + [b"after%d" % i for i in range(5)]
    )
    assert all(sim.nodes[i].applied == expected for i in sim.node_ids)


def test_whole_cluster_crash_mid_replication_loses_no_committed_entry() -> None:
    for seed in range(5):
        sim = Simulation(
            n=3,
            seed=seed,
            faults=FaultConfig(delay_min_ms=1, delay_max_ms=10, fsync_min_ms=1, fsync_max_ms=10),
        )
        sim.wait_leader()
        for i in range(30):
            sim.propose(b"w%d" % i)
            sim.run_for(2)
        committed = sim.checker.committed_index
        for node_id in sim.node_ids:
            sim.crash(node_id)
        for node_id in sim.node_ids:
            sim.restart(node_id)  # checks every committed entry is on a majority of disks
        sim.wait_leader()
        last = replicate(sim, 1, prefix=b"x")
        assert last > committed


def test_one_way_partition_does_not_depose_a_working_leader() -> None:
    # Node 3 cannot hear the leader, but the leader hears node 3. Pre-vote + check-quorum:
    # the others have a live leader and ignore 3's (pre-)votes, so the term stays put.
    sim = Simulation(n=3, seed=4)
    leader = sim.wait_leader()
    term = sim.core(leader).term
    deaf = next(i for i in sim.node_ids if i != leader)
    sim.cut(leader, deaf)
    sim.run_for(3_000)
    assert sim.leader() == leader and sim.core(leader).term == term
    replicate_to = [i for i in sim.node_ids if i != deaf]
    last = sim.propose(b"still-works")[1]
    assert sim.run_until(lambda: sim.applied_everywhere(last, replicate_to), max_time=2_000)
    sim.heal()
    assert sim.run_until(lambda: sim.applied_everywhere(last), max_time=3_000)


def test_rejoining_node_does_not_inflate_terms_with_pre_vote() -> None:
    sim = Simulation(n=3, seed=5)
    leader = sim.wait_leader()
    term = sim.core(leader).term
    lone = next(i for i in sim.node_ids if i != leader)
    sim.partition({lone}, set(sim.node_ids) - {lone})
    sim.run_for(5_000)
    assert sim.core(lone).term == term  # pre-votes failed, term never bumped (thesis §9.6)
    sim.heal()
    sim.run_for(1_000)
    assert sim.leader() == leader and sim.core(leader).term == term


def test_without_pre_vote_a_rejoining_node_disrupts_the_leader() -> None:
    # The contrast case (thesis §9.6 motivation): without pre-vote the isolated node's term
    # keeps growing, and when it returns the leader must step down.
    sim = Simulation(n=3, seed=5, pre_vote=False, check_quorum=False)
    leader = sim.wait_leader()
    term = sim.core(leader).term
    lone = next(i for i in sim.node_ids if i != leader)
    sim.partition({lone}, set(sim.node_ids) - {lone})
    sim.run_for(2_000)
    assert sim.core(lone).term > term
    sim.heal()
    sim.run_for(2_000)
    assert sim.core(sim.wait_leader()).term > term


def test_minority_cannot_commit() -> None:
    sim = Simulation(n=5, seed=6)
    leader = sim.wait_leader()
    replicate(sim, 2)
    buddy = next(i for i in sim.node_ids if i != leader)
    sim.partition({leader, buddy}, set(sim.node_ids) - {leader, buddy})
    index, _, term = sim.propose(b"minority", leader)
    sim.run_for(500)
    assert not sim.is_committed(index, term)


def test_follower_read_index_sees_the_latest_committed_write() -> None:
    sim = Simulation(n=3, seed=7)
    leader = sim.wait_leader()
    last = replicate(sim, 5)
    follower = next(i for i in sim.node_ids if i != leader)
    context = sim.read(follower)
    assert sim.run_until(lambda: context in sim.read_results, max_time=2_000)
    assert sim.read_results[context] >= last


def test_lossy_duplicating_network_still_converges() -> None:
    faults = FaultConfig(loss=0.2, duplicate=0.2, delay_min_ms=1, delay_max_ms=40)
    sim = Simulation(n=5, seed=8, faults=faults)
    sim.wait_leader()
    last = 0
    for i in range(30):
        leader = sim.wait_leader()
        last = sim.propose(b"l%d" % i, leader)[1]
        sim.run_for(20)
    sim.faults = FaultConfig(delay_min_ms=1, delay_max_ms=40)
    leader = sim.wait_leader()
    last = sim.propose(b"final", leader)[1]
    assert sim.run_until(lambda: sim.applied_everywhere(last), max_time=10_000)
    assert len({tuple(sim.nodes[i].applied) for i in sim.node_ids}) == 1
