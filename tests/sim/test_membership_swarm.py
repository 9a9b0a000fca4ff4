"""Seeded swarm simulation of membership changes under faults (Raft thesis §4.3,
learners and witnesses).

Goal: the Jepsen "lost updates during a membership change" class and its relatives - two
leaders in one term across joint configurations, a second change decided while one is in
flight, a committed entry dropped or overwritten while voters come and go, a witness
leading or holding the only trace of a committed command. Method: every seed draws the base
swarm configuration (cluster size, loss, duplication, delay, partitions, crash-restart losing
unsynced writes, snapshots, transfers) plus 1-3 spare nodes, witnesses among them and the
initial voters, and a rate of random membership changes asked of the leader: add a learner or
witness learner, promote, demote, remove (the leader included), or replace a voter in one
joint change. The invariants (engine/testing/invariants.py, "Membership") run after every
event; then the network heals, every node that can still be a member restarts, and the
cluster must settle: a non-joint committed configuration whose members all applied a fresh
proposal.

ENGINE_SIM_SEED=<n> runs only seed n; ENGINE_SIM_MEMBERSHIP_SEEDS sets the count (default 300).
"""

from __future__ import annotations

import os
import time

import pytest

from engine.testing.sim import SimulationFailure, SwarmResult, run_swarm

SEEDS = int(os.environ.get("ENGINE_SIM_MEMBERSHIP_SEEDS", "300"))
ONLY_SEED = os.environ.get("ENGINE_SIM_SEED")
# Seeds of this swarm are offset so they do not replay the base swarm's first seeds.
OFFSET = 100_000


# Two halves, so that pytest-xdist can run them on two workers; each half must meet the
# coverage bars on its own.
_ALL = [OFFSET + i for i in range(SEEDS)]
HALVES = [[int(ONLY_SEED)]] if ONLY_SEED is not None else [
    _ALL[: SEEDS // 2], _ALL[SEEDS // 2 :]
]


def _run(seed: int) -> SwarmResult:
    return run_swarm(seed, fault_time_ms=5_000, max_events=5_000, membership=True)


@pytest.mark.parametrize("seeds", HALVES, ids=lambda seeds: f"{seeds[0]}-{seeds[-1]}")
def test_membership_swarm(seeds: list[int]) -> None:
    started = time.perf_counter()
    failures: list[str] = []
    results: list[SwarmResult] = []
    for seed in seeds:
        try:
            results.append(_run(seed))
        except SimulationFailure as failure:
            failures.append(str(failure))
    elapsed = time.perf_counter() - started
    assert not failures, f"{len(failures)} of {len(seeds)} seeds failed; first:\n{failures[0]}"

    def seeds_with(name: str) -> int:
        return sum(1 for r in results if r.fault_stats[name] >= 1)

    coverage = {
        name: seeds_with(name)
        for name in ("conf_changes", "conf_changes_committed", "conf_changes_refused",
                     "learners_promoted", "voters_removed", "leader_removals",
                     "witness_changes", "crashes", "partitions", "snapshots_installed",
                     "leaders_elected", "answered_definite_failure", "answered_unknown")
    }
    print(f"\nmembership swarm: {len(results)} seeds in {elapsed:.1f} s; seeds with: {coverage}")
    if ONLY_SEED is None:
        # The interesting states must be reached in a meaningful share of seeds.
        for name in ("conf_changes_committed", "learners_promoted", "voters_removed",
                     "crashes", "partitions"):
            assert coverage[name] >= len(results) // 2, (name, coverage)
        # Honest outcomes are checked on every seed (engine.testing.sim); these bars make
        # sure definite and unknown answers both occur, removals' included.
        for name in ("witness_changes", "leader_removals", "snapshots_installed",
                     "answered_definite_failure", "answered_unknown"):
            assert coverage[name] >= len(results) // 20, (name, coverage)


def test_membership_seed_replays_to_the_same_trace() -> None:
    first, second = _run(OFFSET + 7), _run(OFFSET + 7)
    assert first.trace_hash == second.trace_hash and first.stats == second.stats
