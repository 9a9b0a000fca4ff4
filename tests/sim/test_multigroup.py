"""Many consensus groups per process, simulated (engine.testing.sim_multi): P processes, each
running ONE engine.host.Host of G groups (the shipped host and drivers), over a simulated
network, one simulated WAL per process and the simulated clock.

Every run checks, per group, the one-group simulator's invariants (election safety, log
matching, leader completeness, state machine safety, a leader's commit on a quorum of disks,
durability at every crash and restart, honest outcomes, linearizable reads) and, per
process, the host's: groups never cross, one save_many in flight and per turn, every
group's save in the host's batch.
Each run ends by healing everything and requiring every acknowledged write applied on every
replica of its group.

ENGINE_SIM_SEED=<n> runs only seed n of the swarms; ENGINE_MULTI_SEEDS sets the number of
Raft swarm seeds (default 20; the Paxos swarm runs half as many).
"""

from __future__ import annotations

import os
import random

import pytest

from engine.driver import Driver
from engine.host import Host
from engine.testing.sim_multi import (
    MultiFaults,
    MultiSim,
    MultiSwarmResult,
    SimulationFailure,
    main,
    run_multi_swarm,
)

SEEDS = int(os.environ.get("ENGINE_MULTI_SEEDS", "20"))
ONLY_SEED = os.environ.get("ENGINE_SIM_SEED")
GROUP_COUNTS = (1, 4, 16)
# Swarm seeds are drawn (from a fixed generator, so a run is reproducible) away from the
# small integers the scenario tests use.
_DRAWN = random.Random(20_261_208).sample(range(10_000, 1_000_000), SEEDS)


def _swarm_seeds(count: int) -> list[int]:
    return [int(ONLY_SEED)] if ONLY_SEED is not None else _DRAWN[:count]


def _swarm(seeds: list[int], protocol: str) -> list[MultiSwarmResult]:
    """Each seed with G in (1, 4, 16) in turn; all failures are collected, the first shown."""
    results: list[MultiSwarmResult] = []
    failures: list[str] = []
    for i, seed in enumerate(seeds):
        groups = GROUP_COUNTS[i % len(GROUP_COUNTS)]
        try:
            results.append(run_multi_swarm(seed, groups=groups,
                                           protocol=protocol))  # type: ignore[arg-type]
        except SimulationFailure as failure:
            failures.append(str(failure))
    assert not failures, f"{len(failures)} of {len(seeds)} seeds failed; first:\n{failures[0]}"
    return results


def _seeds_with(results: list[MultiSwarmResult], stat: str) -> int:
    return sum(1 for r in results if r.stats[stat] >= 1)


def test_raft_swarm() -> None:
    results = _swarm(_swarm_seeds(SEEDS), "raft")
    if ONLY_SEED is not None:
        return
    # The faults and paths the swarm must reach, over its seeds (each bar a fraction of
    # what the default seeds reach).
    assert sum(r.acknowledged for r in results) >= 100 * len(results)
    assert _seeds_with(results, "crashes") >= len(results) // 3
    assert _seeds_with(results, "batches_lost") >= 2
    assert _seeds_with(results, "partitions") >= len(results) // 3
    assert _seeds_with(results, "forwarded_requests") >= len(results) // 2
    assert _seeds_with(results, "snapshots_installed") >= 2
    assert _seeds_with(results, "disk_truncations") >= 1
    assert _seeds_with(results, "answered_unknown") >= 2
    assert _seeds_with(results, "group_restarts") >= 2
    assert _seeds_with(results, "reads_served") >= len(results) // 2
    assert {r.groups for r in results} == set(GROUP_COUNTS)


def test_paxos_swarm() -> None:
    results = _swarm(_swarm_seeds(max(SEEDS // 2, 1)), "paxos")
    if ONLY_SEED is not None:
        return
    assert sum(r.acknowledged for r in results) >= 100 * len(results)
    assert _seeds_with(results, "crashes") >= 2
    assert _seeds_with(results, "partitions") >= 2
    assert _seeds_with(results, "forwarded_requests") >= 2


@pytest.mark.parametrize(("seed", "groups", "protocol"), [
    (1, 4, "raft"), (2, 16, "raft"), (3, 8, "paxos"),
])
def test_fixed_seeds(seed: int, groups: int, protocol: str) -> None:
    result = run_multi_swarm(seed, groups=groups, protocol=protocol)  # type: ignore[arg-type]
    assert result.acknowledged > 0
    # Group commit across groups: the drivers asked for more syncs than the host issued.
    assert result.syncs <= result.batches
    assert result.group_syncs >= result.syncs


def test_same_seed_same_trace() -> None:
    first = run_multi_swarm(5, groups=4)
    again = run_multi_swarm(5, groups=4)
    other = run_multi_swarm(6, groups=4)
    assert first.trace_hash == again.trace_hash
    assert first.events == again.events and first.stats == again.stats
    assert other.trace_hash != first.trace_hash


def test_crashes_with_batches_in_flight_lose_no_acknowledged_write() -> None:
    """Crash the process leading group 1 each time its WAL has a batch of several groups in
    flight (that batch is lost: one record), then bring it back; every acknowledged write
    survives on every replica."""
    sim = MultiSim(3, 8, 11, faults=MultiFaults(propose_interval_ms=2, fsync_min_ms=4,
                                                 fsync_max_ms=8, delay_min_ms=1,
                                                 delay_max_ms=4))
    sim.run_for(500)
    lost = 0
    for _ in range(4):
        assert sim.run_until(lambda: sim.leader(1) is not None, max_time=5_000)
        victim = sim.leader(1)
        assert victim is not None
        process = sim.processes[victim]

        def big_batch_in_flight() -> bool:
            disk = process.disk  # noqa: B023 - the process of this round
            return disk is not None and bool(disk.pending) and len(disk.pending[0]) >= 2

        assert sim.run_until(big_batch_in_flight, max_time=2_000)
        acked_before = sim.acknowledged()
        sim.crash(victim)
        lost += 1
        sim.run_for(300)
        sim.restart(victim)
        sim.run_for(300)
        assert sim.acknowledged() >= acked_before
    assert sim.stats["batches_lost"] == lost
    sim.settle()
    assert sim.acknowledged() > 200


def test_fsyncs_do_not_grow_with_the_number_of_groups() -> None:
    """The same offered load (clients proposing ~1,000 commands per simulated second to
    random groups) on G=1 and on G=16 groups. A process has at most one batch in flight and
    each batch costs one fsync (5 ms here), so no process can sync more than once per 5 ms
    whatever G is; under this load both runs keep that pipeline full, so their fsync counts
    match, while the groups' own Readies asked for several times more syncs at G=16."""
    duration_ms, fsync_ms, processes = 1_500, 5, 3
    syncs: dict[int, int] = {}
    group_syncs: dict[int, int] = {}
    for groups in (1, 16):
        sim = MultiSim(processes, groups, 5, faults=MultiFaults(
            propose_interval_ms=2, fsync_min_ms=fsync_ms, fsync_max_ms=fsync_ms,
            delay_min_ms=1, delay_max_ms=2))
        sim.run_for(duration_ms)
        assert sim.acknowledged() > duration_ms // 2
        syncs[groups], group_syncs[groups] = sim.syncs(), sim.group_syncs()
        # The design bound: one batch in flight per process, one fsync per batch.
        assert syncs[groups] <= processes * (duration_ms // fsync_ms + 1)
    assert syncs[16] <= syncs[1] * 1.1, (syncs, group_syncs)
    assert group_syncs[16] >= 2 * syncs[16], (syncs, group_syncs)


def test_a_host_that_continues_before_the_batch_is_durable_is_caught(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Planted bug: the host hands the batch to the WAL and lets every group continue at
    once (Host.persisted before the fsync completed), so followers ack entries their disks
    do not hold yet. With the host-level checks off, the per-group durability check (a
    leader's commit must be on a quorum of disks) catches it on its own; with them on, the
    second batch in flight is caught first."""
    run_multi_swarm(1, groups=4)   # the same seed passes with the shipped Host
    save_batch = Host._save_batch

    def save_and_continue(self: Host) -> None:
        save_batch(self)
        if self._in_flight is not None:
            self.persisted()

    monkeypatch.setattr(Host, "_save_batch", save_and_continue)
    with pytest.raises(SimulationFailure, match=r"durability|committed \d+ held by"):
        run_multi_swarm(1, groups=4, check_host=False)
    with pytest.raises(SimulationFailure, match="a save_many while another is in flight"):
        run_multi_swarm(1, groups=4)


def test_a_host_that_routes_a_message_to_another_group_is_caught(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Planted bug: the host routes every message of group 2 to group 1's driver."""
    receive = Host.receive

    def misroute(self: Host, messages: list) -> None:  # type: ignore[type-arg]
        for message in messages:
            if message.group == 2 and 1 in self.groups:
                self.groups[1].inbox.append(message)
                self.groups[1].schedule_turn()
        receive(self, [m for m in messages if m.group != 2])

    monkeypatch.setattr(Host, "receive", misroute)
    with pytest.raises(SimulationFailure, match="stepped a message of group 2"):
        run_multi_swarm(1, groups=4)


def test_the_command_line_runs_seeds(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--first", "4", "--seeds", "1", "--groups", "2", "--fault-ms", "500"]) == 0
    out = capsys.readouterr().out
    assert "seed 4: ok" in out and "1 of 1 seeds passed" in out


def test_a_read_served_before_its_index_is_applied_is_caught(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Planted bug: the driver answers a ReadIndex round at once, from whatever its replica
    applied, instead of waiting to apply through the read index (Raft thesis §6.4)."""
    run_multi_swarm(1, groups=4)   # the same seed passes with the shipped driver

    def answer_at_once(self: Driver, index: int, context: bytes) -> None:
        round_ = self.read_rounds.pop(context, None)
        if round_ is not None:
            self.answer_reads(round_[0])

    monkeypatch.setattr(Driver, "on_read_state", answer_at_once)
    with pytest.raises(SimulationFailure, match="linearizability"):
        run_multi_swarm(1, groups=4)
