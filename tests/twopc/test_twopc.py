"""Classic two-phase commit (engine.twopc) under loss, reordering, duplication and crashes:
atomicity over many seeds, and the blocking window when the coordinator dies."""

from __future__ import annotations

import random

import pytest
from harness import COORDINATOR, Cluster, MemoryResource

from engine.errors import InvariantViolation, Overloaded, Rejected
from engine.twopc import (
    Ack,
    CommitRecord,
    Coordinator,
    Decision,
    DecisionRequest,
    Participant,
    Prepare,
    PreparedRecord,
    TwoPCConfig,
    Vote,
    xid_of,
)

P1, P2, P3 = 2, 3, 4


def resource(cluster: Cluster, node: int) -> MemoryResource:
    found = cluster.resources[node]
    assert isinstance(found, MemoryResource)
    return found


def check_atomic(cluster: Cluster, txids: list[str]) -> None:
    """No transaction committed at one participant and rolled back at another; the
    application's answer matches; a commit only if every participant voted yes."""
    for txid in txids:
        committed = {n for n in cluster.participant_ids if txid in resource(cluster, n).committed}
        rolled_back = {n for n in cluster.participant_ids
                       if txid in resource(cluster, n).rolled_back}
        assert not (committed and rolled_back), (txid, committed, rolled_back)
        told = cluster.coordinator_outcomes.get(txid)
        if told is True:
            assert not rolled_back, txid
        if told is False:
            assert not committed, txid
        if committed:
            assert txid not in cluster.prepare_refused, txid
        for (node, decided_txid), commit in cluster.participant_outcomes.items():
            if decided_txid == txid:
                assert commit == bool(committed or told), (node, txid)


# --------------------------------------------------------------------------- fault-free


def test_all_yes_commits_everywhere_and_the_coordinator_forgets() -> None:
    cluster = Cluster(3)
    cluster.start("t1", [P1, P2, P3])
    cluster.settle(3)
    assert cluster.coordinator_outcomes == {"t1": True}
    assert all("t1" in resource(cluster, n).committed for n in (P1, P2, P3))
    assert cluster.coordinator is not None and cluster.coordinator.state("t1") == "unknown"
    # The commit record was forced before any DECISION left; End after the last ACK.
    assert [type(r).__name__ for r in cluster.storage[COORDINATOR].durable] == ["CommitRecord"]
    assert [type(r).__name__ for r in cluster.storage[COORDINATOR].buffered] == ["EndRecord"]


def test_one_no_vote_aborts_everywhere_without_a_log_write_at_the_coordinator() -> None:
    cluster = Cluster(3)
    resource(cluster, P2).refuse.add("t1")
    cluster.start("t1", [P1, P2, P3])
    cluster.settle(3)
    assert cluster.coordinator_outcomes == {"t1": False}
    assert all("t1" in resource(cluster, n).rolled_back for n in (P1, P2, P3))
    assert cluster.storage[COORDINATOR].durable == []      # presumed abort
    assert cluster.in_doubt() == {}


def test_persist_before_send_is_stated_in_every_ready() -> None:
    coordinator = Coordinator(COORDINATOR)
    coordinator.begin("t", [P1])
    coordinator.commit("t")
    assert coordinator.ready().messages == [Prepare(COORDINATOR, P1, "t", (P1,))]
    coordinator.step(Vote(P1, COORDINATOR, "t", True))
    ready = coordinator.ready()
    assert ready.records == [CommitRecord("t", (P1,))] and ready.must_sync
    assert ready.messages == [] and ready.messages_after_persist == [
        Decision(COORDINATOR, P1, "t", True)]

    participant = Participant(P1)
    participant.begin("t")
    participant.ready()
    participant.step(Prepare(COORDINATOR, P1, "t", (P1,)))
    assert [c.op for c in participant.ready().resource_calls] == ["prepare"]
    participant.prepare_result("t", True)
    ready = participant.ready()
    assert ready.records == [PreparedRecord("t", COORDINATOR, (P1,))] and ready.must_sync
    assert ready.messages == [] and ready.messages_after_persist == [
        Vote(P1, COORDINATOR, "t", True)]
    participant.step(Decision(COORDINATOR, P1, "t", True))
    ready = participant.ready()
    assert ready.must_sync and [c.op for c in ready.resource_calls] == ["commit"]
    assert ready.messages_after_persist == [Ack(P1, COORDINATOR, "t")]


def test_a_prepared_participant_may_not_roll_back_alone() -> None:
    participant = Participant(P1)
    participant.begin("t")
    participant.step(Prepare(COORDINATOR, P1, "t", (P1, P2)))
    participant.prepare_result("t", True)
    with pytest.raises(Rejected, match="waits for the decision"):
        participant.rollback("t")


def test_commit_after_abort_is_an_invariant_violation_not_a_silent_flip() -> None:
    participant = Participant(P1)
    participant.begin("t")
    participant.rollback("t")
    with pytest.raises(InvariantViolation):
        participant.step(Decision(COORDINATOR, P1, "t", True))


def test_open_transactions_are_bounded() -> None:
    coordinator = Coordinator(COORDINATOR, TwoPCConfig(max_transactions=2))
    coordinator.begin("a", [P1])
    coordinator.begin("b", [P1])
    with pytest.raises(Overloaded, match="max_transactions=2"):
        coordinator.begin("c", [P1])


# --------------------------------------------------------------------------- blocking


def _all_voted_yes_then_coordinator_dies(*, decision_logged: bool) -> Cluster:
    cluster = Cluster(3, config=TwoPCConfig(decision_timeout_ticks=3, retry_ticks=2))
    cluster.start("t", [P1, P2, P3])
    while cluster.network and not isinstance(cluster.network[0], Vote):
        cluster.deliver()                         # the PREPAREs
    assert all(cluster.participants[n].state("t") == "prepared"  # type: ignore[union-attr]
               for n in (P1, P2, P3))
    votes = list(cluster.network)
    cluster.network.clear()
    assert len(votes) == 3 and all(isinstance(v, Vote) and v.yes for v in votes)
    coordinator = cluster.coordinator
    assert coordinator is not None
    for vote in votes:
        coordinator.step(vote)
    if decision_logged:
        # The commit record is forced, then the coordinator dies before sending anything.
        cluster.process(COORDINATOR, send=False)
        assert cluster.storage[COORDINATOR].durable == [CommitRecord("t", (P1, P2, P3))]
    else:
        coordinator.ready()                       # dies before the forced write finishes
    cluster.crash(COORDINATOR)
    return cluster


@pytest.mark.parametrize("decision_logged", [True, False])
def test_coordinator_dies_after_all_voted_yes_participants_stay_blocked_until_it_returns(
        decision_logged: bool) -> None:
    cluster = _all_voted_yes_then_coordinator_dies(decision_logged=decision_logged)
    asked = 0
    for _ in range(500):
        cluster.tick_all()
        asked += sum(isinstance(m, DecisionRequest) for m in cluster.network)
        while cluster.deliver():
            pass
    # Cooperative termination ran (they asked each other and the dead coordinator) and
    # could not finish: every peer is as uncertain as the asker. 2PC's blocking window.
    assert asked > 3 * 2 * 100
    for node in (P1, P2, P3):
        assert cluster.participants[node].in_doubt() == ["t"]  # type: ignore[union-attr]
        assert not resource(cluster, node).committed and not resource(cluster, node).rolled_back
    assert set(cluster.in_doubt()) == {P1, P2, P3}
    # The coordinator recovers: its log decides (commit if the record was forced, else
    # presumed abort) and every participant finishes.
    cluster.restart(COORDINATOR)
    cluster.settle(10)
    assert cluster.in_doubt() == {}
    for node in (P1, P2, P3):
        finished = resource(cluster, node).committed if decision_logged else resource(
            cluster, node).rolled_back
        assert finished == {"t"}
    check_atomic(cluster, ["t"])


def test_cooperative_termination_finishes_when_a_peer_learned_the_decision() -> None:
    cluster = _all_voted_yes_then_coordinator_dies(decision_logged=True)
    # P3 alone heard the commit before the coordinator died.
    p3 = cluster.participants[P3]
    assert p3 is not None
    p3.step(Decision(COORDINATOR, P3, "t", True))
    cluster.process(P3)
    cluster.network = [m for m in cluster.network if not isinstance(m, Ack)]
    cluster.settle(20)
    assert cluster.in_doubt() == {}
    assert all(resource(cluster, n).committed == {"t"} for n in (P1, P2, P3))


def test_cooperative_termination_aborts_when_a_peer_has_not_voted_yes() -> None:
    cluster = Cluster(3, config=TwoPCConfig(decision_timeout_ticks=3, retry_ticks=2))
    cluster.start("t", [P1, P2, P3])
    # P3's PREPARE is lost; the coordinator dies before its vote timeout.
    cluster.network = [m for m in cluster.network if m.dst != P3]
    while cluster.network and not isinstance(cluster.network[0], Vote):
        cluster.deliver()
    cluster.network.clear()
    cluster.crash(COORDINATOR)
    cluster.settle(20)
    assert cluster.in_doubt() == {}
    assert all(resource(cluster, n).rolled_back == {"t"} for n in (P1, P2, P3))
    p3 = cluster.participants[P3]
    assert p3 is not None and p3.state("t") == "aborted"


# --------------------------------------------------------------------------- recovery


def test_a_participant_restarted_while_prepared_recovers_from_tpc_recover() -> None:
    cluster = Cluster(2, config=TwoPCConfig(decision_timeout_ticks=3, retry_ticks=2))
    cluster.start("t", [P1, P2])
    while cluster.network and not isinstance(cluster.network[0], Vote):
        cluster.deliver()
    cluster.crash(P1)
    assert resource(cluster, P1).tpc_recover() == [xid_of("t", P1)]
    cluster.settle(3)                            # P2's vote is in, P1's was lost
    cluster.restart(P1)
    p1 = cluster.participants[P1]
    assert p1 is not None and p1.in_doubt() in (["t"], [])
    cluster.settle(20)
    assert cluster.in_doubt() == {}
    check_atomic(cluster, ["t"])


def test_a_branch_prepared_in_the_resource_without_a_prepared_record_is_rolled_back() -> None:
    # The crash fell between tpc_prepare and the forced Prepared record: no vote was sent,
    # so the participant may abort alone.
    res = MemoryResource()
    res.tpc_begin(xid_of("t", P1))
    res.tpc_prepare(xid_of("t", P1))
    participant = Participant(P1, records=[], in_doubt=res.tpc_recover())
    ready = participant.ready()
    assert [c.op for c in ready.resource_calls] == ["rollback"]
    assert participant.state("t") == "aborted"


# --------------------------------------------------------------------------- many seeds


def _random_run(seed: int) -> tuple[int, int]:
    rng = random.Random(seed)
    cluster = Cluster(3, seed=seed, loss=0.15, duplicate=0.05,
                      config=TwoPCConfig(vote_timeout_ticks=15, decision_timeout_ticks=5,
                                         retry_ticks=3, seed=seed,
                                         # odd seeds: participants forget outcomes fast
                                         max_remembered_outcomes=1 if seed % 2 else 100))
    txids: list[str] = []
    for _ in range(400):
        roll = rng.random()
        if roll < 0.05 and cluster.coordinator is not None and len(txids) < 12:
            txid = f"t{len(txids)}"
            members = rng.sample(cluster.participant_ids, rng.randint(1, 3))
            for member in members:
                if rng.random() < 0.1:
                    resource(cluster, member).refuse.add(txid)
            txids.append(txid)
            cluster.start(txid, members)
        elif roll < 0.10:
            cluster.tick_all()
        elif roll < 0.12:
            node = rng.choice([COORDINATOR, *cluster.participant_ids])
            if cluster.node(node) is not None:
                cluster.crash(node)
            else:
                cluster.restart(node)
        else:
            cluster.deliver(rng.randrange(1 << 30))          # reorder: any in-flight message
        check_atomic(cluster, txids)
    # Heal: everyone up, no more loss; every in-doubt branch must be resolved.
    for node in [COORDINATOR, *cluster.participant_ids]:
        if cluster.node(node) is None:
            cluster.restart(node)
    cluster.loss = cluster.duplicate = 0.0
    cluster.settle(60)
    assert cluster.in_doubt() == {}, (seed, cluster.in_doubt())
    check_atomic(cluster, txids)
    committed = sum(any(t in resource(cluster, n).committed for n in cluster.participant_ids)
                    for t in txids)
    return committed, len(txids) - committed


def test_atomicity_over_many_seeds_with_loss_reorder_duplicates_and_crashes() -> None:
    commits = aborts = 0
    for seed in range(300):
        committed, not_committed = _random_run(seed)
        commits += committed
        aborts += not_committed
    # Both outcomes occur often (else the property would be vacuous).
    assert commits > 300 and aborts > 300, (commits, aborts)


def test_a_rollback_before_commit_releases_the_participants_branches() -> None:
    cluster = Cluster(2)
    assert cluster.coordinator is not None
    cluster.coordinator.begin("t", [P1, P2])
    for node in (P1, P2):
        participant = cluster.participants[node]
        assert participant is not None
        participant.begin("t")
        cluster.process(node)
    cluster.coordinator.rollback("t")
    cluster.process(COORDINATOR)
    cluster.settle(2)
    assert cluster.coordinator_outcomes == {"t": False}
    assert all(resource(cluster, n).rolled_back == {"t"} for n in (P1, P2))
    assert cluster.storage[COORDINATOR].durable == []
