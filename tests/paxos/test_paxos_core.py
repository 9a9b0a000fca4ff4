"""PaxosCore, one rule per test (Paxos Made Simple §2-3, PMMC, Flexible Paxos)."""

from __future__ import annotations

from typing import Any

import pytest

from engine.config import Limits, TimingConfig
from engine.errors import ConfigError, EntryTooLarge, NotLeader, Overloaded
from engine.messages import Entry, EntryKind, Message, MessageType
from engine.paxos import PaxosConfig, PaxosCore, Role
from engine.paxos.ballot import ballot_node, ballot_round, make_ballot, next_ballot
from engine.paxos.core import IDENTITY_BYTES
from engine.types import HardState, Ready

MT = MessageType
TIMING = TimingConfig(tick_ms=1, heartbeat_interval_ticks=2, election_timeout_ticks=10)


def make(node: int = 1, n: int = 3, **kwargs: Any) -> PaxosCore:
    limits = kwargs.pop("limits", Limits())
    hard_state = kwargs.pop("hard_state", HardState())
    config = PaxosConfig(node, tuple(range(1, n + 1)), TIMING, limits, check_invariants=True,
                         **kwargs)
    return PaxosCore(config, hard_state)


# A replica that has seen ballots up to round 5, so its next ballot is above them.
SEEN = HardState(term=make_ballot(5, 2))


def value(identity: int, command: bytes) -> bytes:
    return identity.to_bytes(IDENTITY_BYTES, "little") + command


def drain(core: PaxosCore) -> Ready:
    """One Ready, acknowledged as if persisted, sent and applied."""
    ready = core.ready()
    core.advance(ready)
    return ready


def of_type(messages: list[Any], kind: MT) -> list[Any]:
    return [m for m in messages if m.type == kind]


def elect(core: PaxosCore, promisers: dict[int, tuple[int, list[Any]]]) -> None:
    """Runs phase 1 at core with the given (commit, accepted entries) per promiser."""
    core.campaign()
    ready = drain(core)
    prepares = of_type(ready.messages_after_persist, MT.PREPARE)
    assert prepares, "PREPARE goes out only after the candidate's own promise is persisted"
    ballot = prepares[0].term
    for src, (commit, entries) in promisers.items():
        core.step(Message(MT.PROMISE, src, core.node_id, ballot, index=prepares[0].index,
                          commit=commit, entries=entries))


# ---------------------------------------------------------------------- ballots and config


def test_ballots_are_unique_per_proposer_and_ordered_by_round() -> None:
    a, b = make_ballot(3, 1), make_ballot(3, 2)
    assert a != b and a < b < make_ballot(4, 1)
    assert (ballot_round(b), ballot_node(b)) == (3, 2)
    assert next_ballot(b, 1) > b and ballot_node(next_ballot(b, 1)) == 1


def test_flexible_paxos_rule_is_checked_at_configuration_time() -> None:
    voters = (1, 2, 3, 4, 5)
    with pytest.raises(ConfigError, match="Flexible Paxos"):
        PaxosConfig(1, voters, phase1_quorum=3, phase2_quorum=2)
    with pytest.raises(ConfigError):
        PaxosConfig(1, voters, phase1_quorum=6, phase2_quorum=1)
    config = PaxosConfig(1, voters, phase1_quorum=4, phase2_quorum=2)
    assert (config.q1, config.q2, config.read_quorum) == (4, 2, 2)
    default = PaxosConfig(1, voters)
    assert (default.q1, default.q2, default.read_quorum) == (3, 3, 3)
    with pytest.raises(ConfigError):
        PaxosConfig(70_000, (70_000,))  # ids must fit the ballot's node bits


# ---------------------------------------------------------------------- phase 1: acceptor


def test_acceptor_promises_only_ballots_not_below_its_promise() -> None:
    acceptor = make(2)
    high, low = make_ballot(5, 1), make_ballot(4, 3)
    acceptor.step(Message(MT.PREPARE, 1, 2, high, index=1))
    ready = drain(acceptor)
    assert ready.hard_state is not None and ready.hard_state.term == high
    assert not of_type(ready.messages, MT.PROMISE), "a promise waits for the fsync"
    (promise,) = of_type(ready.messages_after_persist, MT.PROMISE)
    assert promise.term == high and not promise.reject

    acceptor.step(Message(MT.PREPARE, 3, 2, low, index=1))
    ready = drain(acceptor)
    (refusal,) = of_type(ready.messages_after_persist, MT.PROMISE)
    assert refusal.reject and refusal.reject_term == high
    assert acceptor.promised == high and ready.hard_state is None


def test_promise_reports_accepted_slots_with_their_ballots() -> None:
    acceptor = make(2)
    b1 = make_ballot(1, 1)
    acceptor.step(Message(MT.ACCEPT, 1, 2, b1, entries=[Entry(b1, 1, value(b1, b"x"))]))
    drain(acceptor)
    b2 = make_ballot(2, 3)
    acceptor.step(Message(MT.PREPARE, 3, 2, b2, index=1, context=b"force"))
    (promise,) = of_type(drain(acceptor).messages_after_persist, MT.PROMISE)
    assert [(e.index, e.term, e.data) for e in promise.entries] == [(1, b1, value(b1, b"x"))]
    assert promise.commit == 0


def test_a_promise_larger_than_one_message_is_sent_in_parts_and_counts_once_whole() -> None:
    # Found by the swarm (seed 257 at a shorter chaos phase): when every acceptor holds more
    # uncommitted slots than one message may carry, a promise that must fit one message is
    # never sent and no candidate can win; the promise is split and the candidate waits for
    # every part.
    limits = Limits(max_entries_per_message=4)
    acceptor = make(2, limits=limits)
    b1 = make_ballot(1, 1)
    for first in (1, 5, 9):
        acceptor.step(Message(MT.ACCEPT, 1, 2, b1, entries=[
            Entry(b1, slot, value(b1, b"v%d" % slot)) for slot in range(first, first + 4)
            if slot <= 10]))
        drain(acceptor)
    assert acceptor.last_index == 10
    candidate = make(1, n=5, hard_state=SEEN, limits=limits)  # needs 2 promises besides its own
    candidate.campaign()
    (prepare, *_) = of_type(drain(candidate).messages_after_persist, MT.PREPARE)
    acceptor.step(Message(MT.PREPARE, 1, 2, prepare.term, index=1, context=b"force"))
    parts = of_type(drain(acceptor).messages_after_persist, MT.PROMISE)
    assert [(p.seq, p.status, len(p.entries)) for p in parts] == [
        (0, 3, 4), (1, 3, 4), (2, 3, 2)]
    assert not any(p.reject for p in parts)
    # Another acceptor with nothing accepted promises in one message.
    candidate.step(Message(MT.PROMISE, 3, 1, prepare.term, index=1))
    for part in (parts[2], parts[0], parts[0]):  # out of order, duplicated, one missing
        candidate.step(part)
    assert candidate.role == Role.CANDIDATE
    candidate.step(parts[1])
    assert candidate.role == Role.LEADER
    assert [candidate.slot(slot).data for slot in range(1, 11)] == [
        value(b1, b"v%d" % slot) for slot in range(1, 11)]


def test_a_promise_with_inconsistent_parts_is_ignored() -> None:
    candidate = make(1, hard_state=SEEN)
    candidate.campaign()
    (prepare, *_) = of_type(drain(candidate).messages_after_persist, MT.PREPARE)
    b1 = make_ballot(1, 2)
    entry = Entry(b1, 1, value(b1, b"x"))
    candidate.step(Message(MT.PROMISE, 2, 1, prepare.term, index=1, seq=0, status=2,
                           entries=[entry]))
    candidate.step(Message(MT.PROMISE, 2, 1, prepare.term, index=1, seq=1, status=3))
    candidate.step(Message(MT.PROMISE, 2, 1, prepare.term, index=1, seq=5, status=3))
    assert candidate.role == Role.CANDIDATE
    assert candidate.ignored["malformed promise"] == 2


def test_a_live_leader_is_not_deposed_by_an_unforced_prepare() -> None:
    acceptor = make(2)
    acceptor.step(Message(MT.ACCEPT, 1, 2, make_ballot(1, 1)))
    drain(acceptor)
    acceptor.step(Message(MT.PREPARE, 3, 2, make_ballot(2, 3), index=1))
    assert acceptor.promised == make_ballot(1, 1)
    assert acceptor.ignored["prepare while the leader is live"] == 1
    for _ in range(TIMING.election_timeout_ticks):
        acceptor.tick()
    if acceptor.role == Role.FOLLOWER:  # the leader went silent: now it promises
        acceptor.step(Message(MT.PREPARE, 3, 2, make_ballot(2, 3), index=1))
        assert acceptor.promised == make_ballot(2, 3)


def test_a_message_whose_ballot_is_not_the_senders_is_ignored() -> None:
    acceptor = make(2)
    acceptor.step(Message(MT.PREPARE, 3, 2, make_ballot(9, 1), index=1))
    assert acceptor.promised == 0 and not acceptor.has_ready()
    assert acceptor.ignored["ballot not owned by sender"] == 1


# ---------------------------------------------------------------------- phase 2: acceptor


def test_acceptor_accepts_only_if_not_promised_a_higher_ballot() -> None:
    acceptor = make(2)
    promised = make_ballot(5, 3)
    acceptor.step(Message(MT.PREPARE, 3, 2, promised, index=1))
    drain(acceptor)
    stale = make_ballot(4, 1)
    acceptor.step(Message(MT.ACCEPT, 1, 2, stale, entries=[Entry(stale, 1, value(stale, b"a"))]))
    ready = drain(acceptor)
    (refusal,) = of_type(ready.messages_after_persist, MT.ACCEPTED)
    assert refusal.reject and refusal.reject_term == promised
    assert not ready.entries and acceptor.slot(1) is None

    acceptor.step(Message(MT.ACCEPT, 3, 2, promised,
                          entries=[Entry(promised, 1, value(promised, b"b"))]))
    ready = drain(acceptor)
    assert [(e.index, e.term) for e in ready.entries] == [(1, promised)]
    assert not of_type(ready.messages, MT.ACCEPTED), "an ack waits for the fsync"
    (ack,) = of_type(ready.messages_after_persist, MT.ACCEPTED)
    assert (ack.term, ack.seq, ack.index, ack.reject) == (promised, 1, 1, False)


def test_accepting_a_later_slot_persists_holes_so_saves_stay_contiguous() -> None:
    acceptor = make(2)
    b = make_ballot(1, 1)
    acceptor.step(Message(MT.ACCEPT, 1, 2, b, entries=[Entry(b, 3, value(b, b"c"))]))
    ready = drain(acceptor)
    assert [(e.index, e.term) for e in ready.entries] == [(1, 0), (2, 0), (3, b)]
    # Slot 1 arrives late: the save restarts at slot 1 and carries the suffix (WAL rule).
    acceptor.step(Message(MT.ACCEPT, 1, 2, b, entries=[Entry(b, 1, value(b, b"a"))]))
    ready = drain(acceptor)
    assert [(e.index, e.term) for e in ready.entries] == [(1, b), (2, 0), (3, b)]
    # A retransmission of a slot held in the same ballot is not saved again.
    acceptor.step(Message(MT.ACCEPT, 1, 2, b, entries=[Entry(b, 3, value(b, b"c"))]))
    assert not drain(acceptor).entries


def test_commit_is_learned_only_for_slots_held_in_the_leaders_ballot() -> None:
    follower = make(2)
    old, new = make_ballot(1, 3), make_ballot(2, 1)
    follower.step(Message(MT.ACCEPT, 3, 2, old, entries=[Entry(old, 1, value(old, b"old"))]))
    follower.step(Message(MT.ACCEPT, 1, 2, new, entries=[Entry(new, 2, value(new, b"b"))],
                          commit=2))
    ready = drain(follower)
    # Slot 1 holds an older ballot's value, which may not be the chosen one: no commit.
    assert follower.commit_index == 0 and not ready.committed_entries


# ---------------------------------------------------------------------- phase 1: new leader


def test_new_leader_adopts_the_value_accepted_in_the_highest_ballot() -> None:
    leader = make(1, n=5, hard_state=SEEN)  # a phase-1 quorum is 3: both promises count
    b1, b2 = make_ballot(1, 2), make_ballot(2, 3)
    elect(leader, {
        2: (0, [Entry(b1, 1, value(b1, b"low"))]),
        3: (0, [Entry(b2, 1, value(b2, b"high"))]),
    })
    assert leader.role == Role.LEADER
    slot = leader.slot(1)
    assert slot.data == value(b2, b"high") and slot.term == leader.ballot
    assert leader.counters["reproposals"] == 1


def test_a_value_known_chosen_wins_over_a_higher_unchosen_ballot() -> None:
    # A replica that installed a chosen value by catch-up keeps its source's ballot, which
    # may be lower than a stale value elsewhere; the promise's commit says it is chosen.
    leader = make(1, n=5, hard_state=SEEN)
    b_low, b_high = make_ballot(1, 2), make_ballot(3, 3)
    elect(leader, {
        2: (1, [Entry(b_low, 1, value(b_low, b"chosen"))]),
        3: (0, [Entry(b_high, 1, value(b_high, b"stale"))]),
    })
    assert leader.role == Role.LEADER
    assert leader.slot(1).data == value(b_low, b"chosen")


def test_new_leader_fills_gaps_with_noops_in_its_ballot() -> None:
    leader = make(1, hard_state=SEEN)
    b1 = make_ballot(1, 2)
    elect(leader, {2: (0, [Entry(b1, 1, value(b1, b"a")), Entry(b1, 3, value(b1, b"c"))])})
    gap = leader.slot(2)
    assert gap.kind == EntryKind.NOOP and gap.term == leader.ballot
    assert leader.counters["noop_fills"] == 1
    ready = drain(leader)
    accepts = of_type(ready.messages, MT.ACCEPT)
    assert {m.dst for m in accepts} == {2, 3}
    assert [e.index for e in accepts[0].entries] == [1, 2, 3]
    assert all(e.term == leader.ballot for e in accepts[0].entries)


def test_reproposal_keeps_the_value_identity_so_the_first_proposer_sees_it_commit() -> None:
    first = make(1)
    elect(first, {2: (0, [])})
    slot, _, ballot_at_propose = first.propose([b"cmd"])
    accept = next(m for m in of_type(drain(first).messages, MT.ACCEPT) if m.entries)
    # Node 3 takes over; it learns the value from node 2's promise and re-proposes it.
    successor = make(3, hard_state=SEEN)
    elect(successor, {2: (0, list(accept.entries))})
    assert successor.ballot != ballot_at_propose
    successor.step(Message(MT.ACCEPTED, 2, 3, successor.ballot, seq=1, index=slot))
    drain(successor)  # persists its own copy, which completes the quorum
    committed = drain(successor).committed_entries
    assert [(e.index, e.term, e.data) for e in committed] == [(slot, ballot_at_propose, b"cmd")]


def test_promise_rejection_with_a_higher_ballot_ends_the_candidacy() -> None:
    candidate = make(1)
    candidate.campaign()
    prepare = of_type(drain(candidate).messages_after_persist, MT.PREPARE)[0]
    higher = make_ballot(9, 2)
    candidate.step(Message(MT.PROMISE, 2, 1, prepare.term, reject=True, reject_term=higher))
    assert candidate.role == Role.FOLLOWER
    candidate.campaign()
    assert candidate.ballot > higher


# ---------------------------------------------------------------------- leader: phase 2


def test_propose_on_a_follower_raises_not_leader_with_the_leader_id() -> None:
    follower = make(2)
    with pytest.raises(NotLeader) as no_leader:
        follower.propose([b"x"])
    assert no_leader.value.leader_id is None
    b = make_ballot(1, 1)
    follower.step(Message(MT.ACCEPT, 1, 2, b))
    with pytest.raises(NotLeader) as known:
        follower.propose([b"x"])
    assert known.value.leader_id == 1


def test_propose_limits() -> None:
    leader = make(1, limits=Limits(max_entry_bytes=10, max_pending_proposals=3))
    elect(leader, {2: (0, [])})
    with pytest.raises(EntryTooLarge):
        leader.propose([b"x" * 11])
    leader.propose([b"a", b"b"])
    with pytest.raises(Overloaded):
        leader.propose([b"c", b"d"])


def test_slot_is_chosen_by_a_phase2_quorum_including_the_leaders_durable_copy() -> None:
    leader = make(1)
    elect(leader, {2: (0, [])})
    first, last, ballot = leader.propose([b"a", b"b"])
    assert (first, last) == (1, 2)
    leader.step(Message(MT.ACCEPTED, 2, 1, ballot, seq=1, index=2))
    assert leader.commit_index == 0, "the leader's own copy is not durable yet"
    drain(leader)
    assert leader.commit_index == 2
    committed = drain(leader).committed_entries
    assert [(e.index, e.term, e.data, e.kind) for e in committed] == [
        (1, ballot, b"a", EntryKind.NORMAL), (2, ballot, b"b", EntryKind.NORMAL)]


def test_pipelined_window_is_bounded_and_stalls_go_back() -> None:
    leader = make(1, limits=Limits(max_inflight_messages=2, max_append_bytes=512))
    elect(leader, {2: (0, [])})
    drain(leader)
    for i in range(5):
        leader.propose([b"x" * 500 + bytes([i])])
    accepts = of_type(drain(leader).messages, MT.ACCEPT)
    to_3 = [m for m in accepts if m.dst == 3 and m.entries]
    assert [m.entries[0].index for m in to_3] == [1, 2], "window of 2 messages"
    for _ in range(2 * TIMING.heartbeat_interval_ticks + 1):
        leader.tick()
    resent = [m for m in drain(leader).messages if m.type == MT.ACCEPT and m.dst == 3
              and m.entries]
    assert resent and resent[0].entries[0].index == 1
    assert leader.counters["go_back"] >= 1


def test_leader_preempted_by_a_higher_ballot_runs_phase1_again() -> None:
    leader = make(1)
    elect(leader, {2: (0, [])})
    old = leader.ballot
    higher = make_ballot(ballot_round(old) + 5, 3)
    leader.step(Message(MT.ACCEPTED, 2, 1, old, reject=True, reject_term=higher))
    assert leader.role == Role.CANDIDATE and leader.ballot > higher


# ---------------------------------------------------------------------- learning, catch-up


def test_follower_catches_up_chosen_slots_it_missed() -> None:
    leader = make(1)
    elect(leader, {2: (0, [])})
    leader.propose([b"a", b"b", b"c"])
    accepts = of_type(drain(leader).messages, MT.ACCEPT)
    leader.step(Message(MT.ACCEPTED, 2, 1, leader.ballot, seq=1, index=3))
    drain(leader)
    assert leader.commit_index == 3
    lagging = make(3)  # lost every ACCEPT; hears a heartbeat with the commit
    lagging.step(Message(MT.ACCEPT, 1, 3, leader.ballot, commit=3))
    (request,) = of_type(drain(lagging).messages, MT.CATCHUP_REQUEST)
    assert (request.dst, request.index, request.commit) == (1, 1, 3)
    leader.step(request)
    (response,) = of_type(drain(leader).messages, MT.CATCHUP_RESPONSE)
    lagging.step(response)
    ready = drain(lagging)
    assert lagging.commit_index == 3 and lagging.counters["catchup_entries"] == 3
    assert [e.data for e in ready.committed_entries] == [b"a", b"b", b"c"]
    assert ready.hard_state is not None and ready.hard_state.commit == 3
    assert accepts  # (the ACCEPTs it missed)


# ---------------------------------------------------------------------- reads


def test_quorum_read_is_served_after_a_quorum_confirms_the_ballot() -> None:
    leader = make(1)
    elect(leader, {2: (0, [])})
    drain(leader)
    leader.read_index(b"ctx")
    heartbeats = [m for m in drain(leader).messages if m.type == MT.ACCEPT and m.context]
    assert {m.dst for m in heartbeats} == {2, 3}
    assert not leader.ready().read_states
    leader.step(Message(MT.ACCEPTED, 2, 1, leader.ballot, context=heartbeats[0].context))
    (state,) = drain(leader).read_states
    assert (state.index, state.context) == (leader.commit_index, b"ctx")


def test_new_leader_serves_reads_only_after_choosing_what_it_recovered() -> None:
    leader = make(1, hard_state=SEEN)
    b1 = make_ballot(1, 2)
    elect(leader, {2: (0, [Entry(b1, 1, value(b1, b"a"))])})
    leader.read_index(b"r")
    drain(leader)
    leader.step(Message(MT.ACCEPTED, 2, 1, leader.ballot, seq=1, index=1))
    heartbeats = [m for m in drain(leader).messages if m.type == MT.ACCEPT and m.context]
    assert heartbeats, "the read round starts once slot 1 is chosen"
    leader.step(Message(MT.ACCEPTED, 3, 1, leader.ballot, context=heartbeats[0].context))
    (state,) = drain(leader).read_states
    assert state.index == 1


def test_follower_read_is_forwarded_and_refused_without_a_leader() -> None:
    follower = make(2)
    with pytest.raises(NotLeader):
        follower.read_index(b"r")
    follower.step(Message(MT.ACCEPT, 1, 2, make_ballot(1, 1)))
    follower.read_index(b"r")
    (forwarded,) = of_type(drain(follower).messages, MT.READ_INDEX)
    assert forwarded.dst == 1


# ---------------------------------------------------------------------- durability, restart


def test_restart_from_persisted_state() -> None:
    acceptor = make(2)
    b = make_ballot(1, 1)
    acceptor.step(Message(MT.ACCEPT, 1, 2, b, entries=[Entry(b, 3, value(b, b"c"))]))
    acceptor.step(Message(MT.ACCEPT, 1, 2, b, commit=1, entries=[Entry(b, 1, value(b, b"a"))]))
    disk_entries: list[Any] = []
    hard_state = HardState()
    while acceptor.has_ready():
        ready = drain(acceptor)
        if ready.entries:
            del disk_entries[ready.entries[0].index - 1:]
            disk_entries.extend(ready.entries)
        hard_state = ready.hard_state or hard_state
    assert hard_state == HardState(b, 0, 1)
    config = PaxosConfig(2, (1, 2, 3), TIMING, check_invariants=True)
    restarted = PaxosCore(config, hard_state, disk_entries)
    assert (restarted.promised, restarted.commit_index, restarted.last_index) == (b, 1, 3)
    assert restarted.slot(2) is None and restarted.slot(3).data == value(b, b"c")
    committed = drain(restarted).committed_entries
    assert [e.data for e in committed] == [b"a"]


def test_restart_rejects_a_commit_over_unknown_slots() -> None:
    config = PaxosConfig(2, (1, 2, 3), TIMING)
    with pytest.raises(ConfigError):
        PaxosCore(config, HardState(5, 0, 2), [Entry(0, 1, b"", 1), Entry(0, 2, b"", 1)])


def test_single_node_cluster_chooses_on_its_own_fsync() -> None:
    solo = make(1, n=1)
    solo.campaign()
    assert solo.role == Role.LEADER
    _, _, ballot = solo.propose([b"x"])
    drain(solo)
    assert [(e.term, e.data) for e in drain(solo).committed_entries] == [(ballot, b"x")]
    assert solo.status()["role"] == "leader" and solo.status()["term"] == ballot


def test_a_lagging_candidate_learns_chosen_slots_from_a_promise_in_parts() -> None:
    limits = Limits(max_entries_per_message=2)
    acceptor = make(2, limits=limits)
    b = make_ballot(1, 3)
    acceptor.step(Message(MT.ACCEPT, 3, 2, b, commit=3, entries=[
        Entry(b, i, value(b, b"%d" % i)) for i in (1, 2)]))
    acceptor.step(Message(MT.ACCEPT, 3, 2, b, commit=3, entries=[Entry(b, 3, value(b, b"3"))]))
    drain(acceptor)
    assert acceptor.commit_index == 3
    candidate = make(1, limits=limits, hard_state=SEEN)
    candidate.campaign()
    (prepare, _) = of_type(drain(candidate).messages_after_persist, MT.PREPARE)
    acceptor.step(Message(MT.PREPARE, 1, 2, prepare.term, index=1, context=b"force"))
    parts = of_type(drain(acceptor).messages_after_persist, MT.PROMISE)
    assert [(p.reject, p.commit, p.seq, p.status) for p in parts] == [
        (False, 3, 0, 2), (False, 3, 1, 2)]
    for part in parts:
        candidate.step(part)
    assert candidate.role == Role.LEADER
    # The chosen values are adopted (a known-chosen slot wins over any ballot, P2c).
    assert [candidate.slot(i).data for i in (1, 2, 3)] == [value(b, b"%d" % i) for i in (1, 2, 3)]
