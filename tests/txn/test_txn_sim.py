"""Replicated transactions under the deterministic harness (engine.testing.txn_sim): loss,
duplication and delay of requests, coordinator crashes mid-commit, clock skew within the
bound. Checked with check_serializable (list-append) and bank totals; planted bugs and skew
beyond the bound show the checks can fail."""

from __future__ import annotations

import pytest

from engine.testing.serializability import check_serializable
from engine.testing.txn_sim import MS, Faults, TxnSim

SEEDS = range(40)


def _anomalies(sim: TxnSim) -> tuple[list[str], list[str]]:
    report = sim.run()
    result = check_serializable(report.history, model="list-append", realtime=True)
    kinds = sorted({a.kind for a in result.anomalies})
    if result.valid is not True and not kinds:
        kinds = [f"verdict {result.valid}"]
    return kinds, report.violations


@pytest.mark.parametrize("parallel_commits", [False, True])
@pytest.mark.parametrize("seed", SEEDS)
def test_list_append_is_strict_serializable_under_faults(seed: int,
                                                         parallel_commits: bool) -> None:
    sim = TxnSim(seed=seed, workload="list-append", parallel_commits=parallel_commits)
    kinds, violations = _anomalies(sim)
    assert (kinds, violations) == ([], [])
    report = sim.report
    assert report.committed > 0
    assert sum(len(e.issued) for e in sim.envs) > 0  # HLC monotonic: in violations


def test_the_swarm_exercises_crashes_one_phase_and_conflicts() -> None:
    totals = {"committed": 0, "failed": 0, "unknown": 0, "one_phase": 0}
    for seed in range(10):
        sim = TxnSim(seed=seed)
        sim.run()
        for name in totals:
            totals[name] += getattr(sim.report, name)
    assert all(totals.values()), totals


@pytest.mark.parametrize("seed", range(15))
def test_bank_total_is_constant_in_every_snapshot_read(seed: int) -> None:
    sim = TxnSim(seed=seed, workload="bank", clients=5, keys=8, parallel_commits=seed % 2 == 1)
    report = sim.run()
    assert report.violations == []
    assert report.committed > 0


@pytest.mark.parametrize("seed", range(5))
def test_snapshot_isolation_keeps_bank_totals(seed: int) -> None:
    sim = TxnSim(seed=seed, workload="bank", isolation="snapshot")
    assert sim.run().violations == []


def test_every_abandoned_intent_is_resolved_one_expiry_after_the_coordinators_stop() -> None:
    # Every transaction's coordinator crashes at one of its commit marks.
    for parallel_commits in (False, True):
        sim = TxnSim(seed=3, faults=Faults(crash=1.0), parallel_commits=parallel_commits)
        kinds, violations = _anomalies(sim)
        assert (kinds, violations) == ([], [])
        assert sim.report.unknown > 0


def test_planted_bug_no_read_refresh_is_found_by_the_checker() -> None:
    found = set()
    for seed in range(5):
        kinds, violations = _anomalies(TxnSim(seed=seed, planted=frozenset({"no_refresh"})))
        found.update(kinds)
        assert violations  # committed appends lost
    assert "G2" in found


def test_planted_bug_resolving_before_the_record_commits_breaks_atomicity() -> None:
    found = set()
    for seed in range(5):
        kinds, violations = _anomalies(TxnSim(seed=seed,
                                              planted=frozenset({"resolve_early"})))
        found.update(kinds)
    assert "G1a" in found


def test_beyond_the_clock_bound_the_checker_finds_real_time_anomalies() -> None:
    # Clocks 100 ms apart against a 10 ms uncertainty interval (and HLCs told not to refuse).
    found = set()
    for seed in range(10):
        kinds, _ = _anomalies(TxnSim(seed=seed, faults=Faults(skew_ns=100 * MS),
                                     hlc_offset_ns=10**12))
        found.update(kinds)
    assert any(kind.endswith("-realtime") for kind in found), found


@pytest.mark.parametrize(("seed", "workload", "groups", "clients", "keys", "loss",
                          "duplicate", "delay_ms", "crash", "expiry_ms", "isolation"), [
    # A STAGING record's retried END answered COMMITTED (a wounding pusher's recovery found
    # every intent first): the coordinator must report a commit, not a conflict (G1a).
    (97, "list-append", 4, 6, 3, 0.2, 0.0, 1, 0.3, 50, "serializable"),
    # A recovery reaching the anchor after the record was resolved and forgotten.
    (96, "bank", 3, 8, 3, 0.0, 0.1, 10, 0.0, 50, "snapshot"),
    # A retried intent landing after a recovery committed and resolved it looks pushed
    # (write-too-old): the abort finds the record COMMITTED and reports the commit.
    (351, "bank", 3, 6, 5, 0.2, 0.1, 3, 0.3, 200, "snapshot"),
])
def test_parallel_commits_recovery_races(seed: int, workload: str, groups: int, clients: int,
                                          keys: int, loss: float, duplicate: float,
                                          delay_ms: int, crash: float, expiry_ms: int,
                                          isolation: str) -> None:
    sim = TxnSim(seed=seed, workload=workload, groups=groups, clients=clients, keys=keys,
                 faults=Faults(loss=loss, duplicate=duplicate, max_delay_ns=delay_ms * MS,
                               crash=crash),
                 expiry_ns=expiry_ms * MS, isolation=isolation, parallel_commits=True)
    if workload == "list-append":
        assert _anomalies(sim) == ([], [])
    else:
        assert sim.run().violations == []
    assert sim.report.marks["implicitly_committed"] > 0


def test_history_is_collected_during_a_long_run_without_anomalies() -> None:
    # Groups keep two expiries of history here; 30 transactions per client outlast that.
    sim = TxnSim(seed=5, txns_per_client=30)
    assert _anomalies(sim) == ([], [])
    assert any(g.horizon > 0 for g in sim.groups)
