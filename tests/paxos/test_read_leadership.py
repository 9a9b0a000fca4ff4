"""A deposed Multi-Paxos leader must not answer a linearizable read (the ReadIndex rule).

PaxosCore.read_index() records the commit index, then answers only after one heartbeat round
tagged with the read's round is acknowledged in the leader's ballot by read_quorum =
n - |Q1| + 1 acceptors (engine/paxos/core.py: _start_read, _advance_reads): that set meets
every phase-1 quorum, so no higher ballot has chosen anything the read could miss (Raft
thesis §6.4 step 3, Paxos Made Simple §2.3). The core has no lease reads (see its docstring),
so this confirmation round is the only thing between a stale leader and a stale answer.

The scenario a stale read needs (Jepsen's classic): leader L is cut off from the majority, the
majority elects a new leader that chooses a newer write, and L - which has not timed out yet
and still believes it leads - is asked for a read. The swarm rarely builds it (check-quorum
and the followers' election timeout race, and a new leader's own reads wait for recovery),
so these tests build it by hand and deterministically:

* test_deposed_leader_..._core: the cores wired by a FIFO network written here, no clock
  at all (nobody ticks unless the test says so), three quorum shapes;
* test_deposed_leader_..._on_the_simulator: the same story on engine.testing.sim, whose
  checker (PaxosProtocol.on_read) rejects any read index below what was committed anywhere
  when the read started;
* test_stale_leader_swarm_...: swarm seeds (sizes, flexible quorums, faults, clients,
  nemesis) with that deposition forced in at a random time.

Checked against mutants of engine/paxos/core.py: answering a read at once (no heartbeat
round) or with read_quorum = 1 fails all three; confirming with one acceptor too few fails
the five-node shape of the first and the second.
"""

from __future__ import annotations

import os
import random
from collections import deque
from typing import Any

import pytest
from sim_helpers import seeds_from_env

from engine.config import TimingConfig
from engine.errors import InvariantViolation
from engine.messages import EntryKind
from engine.paxos import PaxosConfig, PaxosCore, Role
from engine.testing.sim import Simulation, SimulationFailure, paxos_swarm_simulation

TIMING = TimingConfig(tick_ms=1, heartbeat_interval_ticks=2, election_timeout_ticks=10)
OLD, NEW = b"x=old", b"x=new"


class HandNet:
    """n PaxosCores, no clock: settle() hands every Ready's messages over in FIFO order
    (after-persist ones as soon as the Ready is "persisted"), dropping those a partition
    blocks, until nothing moves. Committed commands and read answers are recorded."""

    def __init__(self, n: int, q1: int | None = None, q2: int | None = None) -> None:
        voters = tuple(range(1, n + 1))
        self.cores = {
            i: PaxosCore(PaxosConfig(i, voters, TIMING, check_invariants=True, seed=i,
                                     phase1_quorum=q1, phase2_quorum=q2))
            for i in voters
        }
        self.applied: dict[int, list[tuple[int, bytes]]] = {i: [] for i in voters}
        self.reads: dict[bytes, int] = {}
        self.blocked: set[tuple[int, int]] = set()

    def partition(self, *groups: set[int]) -> None:
        self.blocked = {(a, b) for g in groups for h in groups if g is not h
                        for a in g for b in h}

    def heal(self) -> None:
        self.blocked = set()

    def settle(self) -> None:
        queue: deque[Any] = deque()
        for _ in range(10_000):
            for node_id, core in self.cores.items():
                while core.has_ready():
                    ready = core.ready()
                    queue.extend(ready.messages)
                    queue.extend(ready.messages_after_persist)
                    self.applied[node_id].extend(
                        (e.index, e.data if e.kind == EntryKind.NORMAL else b"")
                        for e in ready.committed_entries)
                    for state in ready.read_states:
                        self.reads[state.context] = state.index
                    core.advance(ready)
            if not queue:
                return
            while queue:
                m = queue.popleft()
                if (m.src, m.dst) not in self.blocked:
                    self.cores[m.dst].step(m)
        raise AssertionError("the network never settled")

    def value_at(self, node_id: int, index: int) -> bytes:
        """The register's value on node_id once it applied slots 1..index (a read's answer)."""
        slots = self.applied[node_id]
        assert len(slots) >= index, f"node {node_id} applied {len(slots)} < read index {index}"
        commands = [command for slot, command in slots[:index] if command]
        return commands[-1] if commands else b""


@pytest.mark.parametrize(
    ("n", "q1", "q2", "minority", "new_leader"),
    [
        (3, None, None, {1}, 2),        # the old leader alone
        (5, None, None, {1, 2}, 3),     # it keeps one follower that still acks its ballot
        (5, 4, 2, {1}, 2),              # Flexible Paxos: read_quorum = 5 - 4 + 1 = 2
    ],
)
def test_deposed_leader_does_not_answer_a_read_with_the_old_value_core(
    n: int, q1: int | None, q2: int | None, minority: set[int], new_leader: int
) -> None:
    net = HandNet(n, q1, q2)
    old = net.cores[1]
    old.campaign()
    net.settle()
    assert old.role == Role.LEADER
    old.propose([OLD])
    net.settle()
    assert all(net.value_at(i, len(net.applied[i])) == OLD for i in net.cores)

    majority = set(net.cores) - minority
    net.partition(minority, majority)
    new = net.cores[new_leader]
    new.campaign()
    net.settle()
    assert new.role == Role.LEADER and new.ballot > old.ballot
    slot, _, _ = new.propose([NEW])
    net.settle()
    assert new.commit_index >= slot
    # The precondition of a stale read: nothing has told the old leader (no tick has run).
    assert old.role == Role.LEADER and old.commit_index < slot

    old.read_index(b"at-old-leader")
    followers_of_old = sorted(minority - {1})
    for follower in followers_of_old:   # a follower read, forwarded to the old leader
        assert net.cores[follower].leader_id == 1
        net.cores[follower].read_index(b"via-%d" % follower)
    net.settle()
    for context in [b"at-old-leader", *(b"via-%d" % f for f in followers_of_old)]:
        index = net.reads.get(context)
        assert not index, (
            f"read {context!r} answered by the deposed leader at slot {index} "
            f"(value {net.value_at(1, index)!r}) although {NEW!r} was chosen at slot {slot}")

    net.cores[new_leader].read_index(b"at-new-leader")
    net.settle()
    index = net.reads[b"at-new-leader"]
    assert index >= slot and net.value_at(new_leader, index) == NEW

    # Once the old leader reaches an acceptor of the new ballot it steps down and refuses
    # the reads it could never confirm (index 0), instead of answering them late.
    net.heal()
    for _ in range(TIMING.heartbeat_interval_ticks):
        old.tick()
    net.settle()
    assert net.reads[b"at-old-leader"] == 0
    assert all(net.reads[b"via-%d" % f] == 0 for f in followers_of_old)


def test_deposed_leader_does_not_answer_a_read_with_the_old_value_on_the_simulator() -> None:
    sim = Simulation(5, seed=11, protocol="paxos")
    old = sim.wait_leader(5_000)
    assert sim.propose_many(old, 1)
    assert sim.run_until(lambda: all(sim.nodes[i].applied_index >= 1 for i in sim.node_ids))
    follower = next(i for i in sim.node_ids if i != old)
    rest = sorted(set(sim.node_ids) - {old, follower})
    sim.partition({old, follower}, set(rest))
    # Start the new leader's phase 1 at once (its next tick drives the Ready), well inside
    # the election timeout after which check-quorum would depose the old leader.
    new = rest[0]
    sim.core(new).campaign()
    assert sim.run_until(lambda: sim.core(new).role == Role.LEADER, 60)
    (command,) = sim.propose_many(new, 1)
    assert sim.run_until(lambda: all(sim.nodes[i].applied_index >= 2 for i in rest), 30)
    assert sim.core(old).role == Role.LEADER, "precondition: the old leader has not timed out"
    assert sim.core(old).commit_index < 2

    # The simulator's checker fails the run if this read is answered below slot 2 (what was
    # committed anywhere when it started); the read must wait and then be refused.
    stale = sim.read(old)
    assert sim.run_until(lambda: stale in sim.read_results, 1_000)
    assert sim.read_results[stale] == 0
    assert sim.core(old).role != Role.LEADER

    fresh = sim.read(new)
    assert sim.run_until(lambda: fresh in sim.read_results, 1_000)
    index = sim.read_results[fresh]
    assert index >= 2
    assert any(value.endswith(command) for _, value in sim.nodes[new].applied[:index])


# ---------------------------------------------------------------------- a stale-leader swarm

# The plain swarm almost never opens the stale window: an isolated leader's check-quorum
# deposes it within one to two election timeouts, about when the majority's own election
# timeout fires, and under swarm delays the new leader then still needs round trips to
# choose anything (with the confirmation removed it caught nothing in seeds 0-99). Forcing
# phase 1 right after the cut opens the window in 32 of seeds 0-199; with the confirmation
# removed, 21 of those fail (35 is the first); about 1 s for the 200 seeds.
STALE_SEEDS = seeds_from_env(range(int(os.environ.get("ENGINE_SIM_PAXOS_STALE_SEEDS", "200"))))


def stale_leader_read(seed: int) -> bool:
    """One swarm seed (its cluster size, quorums, fault rates, clients and nemesis) with a
    deposition forced in: after a random time the leader and a random minority are cut off,
    a random node of the rest starts phase 1 at once, and as soon as something is committed
    that the old leader (still LEADER in its old ballot) has not seen, it is asked for a read.
    The simulator's checker raises if the read is answered below what was committed when it
    started. True if that window opened (the read was issued)."""
    sim = paxos_swarm_simulation(seed)
    rng = random.Random(f"stale-leader:{seed}")
    status = sim.core(1).status()
    spare = len(sim.node_ids) - max(status["phase1_quorum"], status["phase2_quorum"])
    if spare < 1:
        return False  # cutting the leader off leaves no side that can elect and choose
    sim.run_for(rng.randint(200, 1_500))
    old = sim.leader()
    if old is None:
        return False
    others = [i for i in sim.node_ids if i != old]
    rng.shuffle(others)
    cut = rng.randint(0, spare - 1)    # the old leader keeps up to spare - 1 followers
    sim.partition({old, *others[:cut]}, others[cut:])
    new = rng.choice(others[cut:])
    if sim.nodes[new].core is None:
        return False
    sim.core(new).campaign()           # its next tick hands the PREPAREs to the network
    old_ballot = sim.core(old).ballot
    deadline = sim.now + 500
    while sim.now < deadline:
        sim.step_event()
        core = sim.nodes[old].core
        if core is None or core.role != Role.LEADER or core.ballot != old_ballot:
            return False  # deposed (or crashed) before the window opened
        if sim.protocol.read_floor(sim) > core.commit_index:
            break
    else:
        return False
    stale = sim.read(old)
    sim.run_until(lambda: stale in sim.read_results, 2_000)
    return True


def test_stale_leader_swarm_never_answers_a_read_below_the_commit_at_start() -> None:
    windows = []
    for seed in STALE_SEEDS:
        try:
            if stale_leader_read(seed):
                windows.append(seed)
        except (InvariantViolation, SimulationFailure) as exc:
            raise AssertionError(
                f"stale-leader seed {seed}: {exc} (replay: ENGINE_SIM_SEED={seed} pytest "
                f"{__file__}::test_stale_leader_swarm_never_answers_a_read_below_the_commit_at_start)"
            ) from exc
    if len(STALE_SEEDS) >= 100:
        # Coverage: the test is worth its time only if the stale window really opens.
        assert len(windows) >= len(STALE_SEEDS) // 10, f"window opened in seeds {windows}"
