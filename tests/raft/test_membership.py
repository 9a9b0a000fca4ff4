"""Membership changes (Raft thesis ch. 4): joint consensus, learners, witnesses, snapshots.

Method: unit tests of engine.raft.membership (validation and encoding), rule tests on one
RaftCore fed hand-written messages (etcd raft_paper_test.go style), and scenario tests on the
deterministic simulator, whose ClusterChecker checks the global invariants after every event.
"""

from __future__ import annotations

from typing import Any

import pytest

from engine.config import TimingConfig
from engine.errors import (
    ConfChangeInProgress,
    ConfigError,
    DecodeError,
    MembershipError,
    NotLeader,
)
from engine.messages import Entry, EntryKind, Message, MessageType
from engine.raft import RaftConfig, RaftCore, Role
from engine.raft.membership import (
    Membership,
    add_learner,
    apply_change,
    decode_membership,
    demote,
    encode_membership,
    promote,
    remove,
)
from engine.replication.snapshot import decode_snapshot, encode_snapshot
from engine.testing.sim import Simulation
from engine.types import HardState, Snapshot

MT = MessageType
TIMING = TimingConfig(tick_ms=10, heartbeat_interval_ticks=2, election_timeout_ticks=10)
BASE = Membership.of((1, 2, 3), addresses={1: "h:1", 2: "h:2", 3: "h:3"})


def config_entry(term: int, index: int, membership: Membership) -> Any:
    return Entry(term, index, encode_membership(membership), int(EntryKind.CONFIG))


def make_core(node_id: int = 1, voters: tuple[int, ...] = (1, 2, 3), **kwargs: Any) -> RaftCore:
    options: dict[str, Any] = {"pre_vote": False, "check_quorum": False}
    core_kwargs = {k: kwargs.pop(k) for k in ("hard_state", "entries", "applied", "snapshot",
                                             "log_start") if k in kwargs}
    options.update(kwargs)
    return RaftCore(RaftConfig(node_id, voters, TIMING, check_invariants=True, **options),
                    **core_kwargs)


def drain(core: RaftCore) -> list[Any]:
    """The driver loop with instant persistence; returns every message sent."""
    out: list[Any] = []
    while core.has_ready():
        ready = core.ready()
        out += ready.messages + ready.messages_after_persist
        core.advance(ready)
    return out


def elect(core: RaftCore) -> None:
    """Makes a fresh core the leader of term 1 with its no-op committed."""
    core.campaign()
    drain(core)
    for peer in core.voters:
        if peer != core.node_id:
            core.step(Message(MT.VOTE_RESPONSE, peer, core.node_id, core.term))
    assert core.role == Role.LEADER
    ack_all(core)


def ack_all(core: RaftCore, peers: tuple[int, ...] | None = None) -> None:
    """Every peer (or the given ones) acknowledges the whole log; repeated until quiet."""
    for _ in range(4):
        drain(core)
        for peer in peers if peers is not None else core.peers:
            core.step(Message(MT.APPEND_RESPONSE, peer, core.node_id, core.term,
                              index=core.log.last_index))
    drain(core)


# ---------------------------------------------------------------------- membership.py


def test_encoding_round_trips_and_is_versioned_and_canonical() -> None:
    joint = apply_change(BASE, [add_learner(4, "h:4")])
    joint = apply_change(joint, [promote(4), remove(1)])
    payload = encode_membership(joint)
    assert payload.startswith(b"{") and b'"v":1' in payload
    assert decode_membership(payload) == joint
    assert encode_membership(decode_membership(payload)) == payload
    assert joint.joint and joint.voters == {2, 3, 4} and joint.old_voters == {1, 2, 3}
    assert joint.address_map()[4] == "h:4"


@pytest.mark.parametrize("payload", [
    b"", b"[]", b"{", b'{"v":2,"voters":[1]}', b'{"v":1,"voters":[]}',
    b'{"v":1,"voters":[0]}', b'{"v":1,"voters":[1],"learners":[1]}',
    b'{"v":1,"voters":[1,2],"witnesses":[2]}', b'{"v":1,"voters":[1],"addresses":[[1]]}',
])
def test_decoding_refuses_malformed_configurations(payload: bytes) -> None:
    with pytest.raises(DecodeError):
        decode_membership(payload)


@pytest.mark.parametrize(("change", "message"), [
    ([add_learner(2)], "already a member"),
    ([remove(9)], "not a member"),
    ([promote(3)], "not a learner"),
    ([demote(9)], "not a voter"),
    ([], "empty"),
    ([add_learner(4), remove(4)], "twice"),
    ([add_learner(4, "no-port")], "host:port"),
])
def test_invalid_changes_are_refused_with_a_clear_message(change: Any, message: str) -> None:
    with pytest.raises(MembershipError, match=message):
        apply_change(BASE, change)


def test_changes_that_leave_no_voter_or_no_full_voter_are_refused() -> None:
    single = Membership.of((1,))
    with pytest.raises(MembershipError, match="no voter"):
        apply_change(single, [remove(1)])
    with pytest.raises(MembershipError, match="no voter"):
        apply_change(single, [demote(1)])
    with_witness = Membership.of((1, 2, 3), witnesses=(3,))
    with pytest.raises(MembershipError, match="witnesses must be fewer"):
        apply_change(with_witness, [remove(1)])  # {2, 3}: one full voter, one witness
    staged = apply_change(BASE, [add_learner(4, witness=True), add_learner(5, witness=True)])
    with pytest.raises(MembershipError, match="witnesses must be fewer"):
        apply_change(staged, [promote(4), promote(5), remove(1)])  # 2 witnesses, 2 full
    assert apply_change(staged, [promote(4), promote(5)]).voters == {1, 2, 3, 4, 5}


def test_learner_only_changes_are_simple_and_voter_changes_are_joint() -> None:
    learner = apply_change(BASE, [add_learner(4, "h:4")])
    assert not learner.joint and learner.learners == {4} and learner.voters == BASE.voters
    joint = apply_change(learner, [promote(4)])
    assert joint.joint and joint.old_voters == BASE.voters and joint.voters == {1, 2, 3, 4}
    with pytest.raises(MembershipError, match="joint"):
        apply_change(joint, [remove(1)])
    final = joint.leave_joint()
    assert not final.joint and final.voters == {1, 2, 3, 4} and not final.learners
    removed = apply_change(final, [remove(1)]).leave_joint()
    assert 1 not in removed.members and 1 not in removed.address_map()


# ---------------------------------------------------------------------- one core


def test_only_the_leader_takes_changes() -> None:
    core = make_core()
    with pytest.raises(NotLeader):
        core.propose_conf_change(add_learner(4))


def test_joint_change_commits_then_the_leader_appends_c_new_itself() -> None:
    core = make_core()
    elect(core)
    core.propose_conf_change(add_learner(4, "h:4"))
    ack_all(core, (2, 3))
    assert core.membership.learners == {4} and not core.conf_change_pending
    ack_all(core)  # learner 4 catches up
    index, term = core.propose_conf_change(promote(4))
    # Thesis §4.1: in force once appended, before it commits.
    assert core.membership.joint and core.membership_index == index and term == core.term
    # Thesis §4.3: committing needs a majority of C_old {1,2,3} *and* of C_new {1,2,3,4}.
    drain(core)  # the leader's own write is in
    core.step(Message(MT.APPEND_RESPONSE, 4, 1, core.term, index=index))
    drain(core)
    assert core.commit_index < index  # {1, 4}: 2 of C_new's 4 is no majority
    core.step(Message(MT.APPEND_RESPONSE, 2, 1, core.term, index=index))
    drain(core)
    assert core.commit_index == index  # {1, 2, 4}: majorities of both halves
    # C_old,new committed: the leader appended C_new at once (thesis §4.3).
    assert core.log.last_index == index + 1 and core.membership_index == index + 1
    ack_all(core)
    assert core.commit_index == index + 1
    assert not core.membership.joint and core.membership.voters == {1, 2, 3, 4}
    assert core.log.term(index + 1) == core.term
    assert core.log.slice(index + 1, index + 2)[0].kind == EntryKind.CONFIG


def test_joint_commit_needs_the_old_half_too() -> None:
    # C_old = {1, 2, 3}, C_new = {1, 4, 5}: acks from the new members alone do not commit.
    core = make_core()
    elect(core)
    core.propose_conf_change([add_learner(4), add_learner(5)])
    ack_all(core)
    index, _ = core.propose_conf_change([promote(4), promote(5), remove(2), remove(3)])
    drain(core)
    for peer in (4, 5):
        core.step(Message(MT.APPEND_RESPONSE, peer, 1, core.term, index=index))
    drain(core)
    assert core.commit_index < index
    core.step(Message(MT.APPEND_RESPONSE, 2, 1, core.term, index=index))
    drain(core)
    assert core.commit_index >= index


def test_one_change_in_flight() -> None:
    core = make_core()
    elect(core)
    core.propose_conf_change(add_learner(4))
    with pytest.raises(ConfChangeInProgress):
        core.propose_conf_change(add_learner(5))
    ack_all(core)
    core.propose_conf_change(add_learner(5))  # the first one committed


def test_a_new_leader_takes_no_change_before_committing_an_entry_of_its_term() -> None:
    core = make_core()
    core.campaign()
    drain(core)
    for peer in (2, 3):
        core.step(Message(MT.VOTE_RESPONSE, peer, 1, core.term))
    assert core.role == Role.LEADER
    with pytest.raises(ConfChangeInProgress, match="its term"):
        core.propose_conf_change(add_learner(4))


def test_promoting_a_learner_that_is_not_caught_up_is_refused() -> None:
    core = make_core(promote_max_lag_entries=2)
    elect(core)
    core.propose_conf_change(add_learner(4))
    ack_all(core, (2, 3))
    core.propose([b"x"] * 5)
    ack_all(core, (2, 3))
    with pytest.raises(MembershipError, match="not caught up"):
        core.propose_conf_change(promote(4))
    ack_all(core)
    core.propose_conf_change(promote(4))


def test_learners_receive_the_log_but_never_vote_count_or_campaign() -> None:
    core = make_core()
    elect(core)
    core.propose_conf_change(add_learner(4))
    ack_all(core)
    index = core.propose([b"x"])[0]
    messages = drain(core)
    assert any(m.dst == 4 and m.type == MT.APPEND and m.entries for m in messages)
    core.step(Message(MT.APPEND_RESPONSE, 4, 1, core.term, index=index))
    drain(core)
    assert core.commit_index < index  # a learner's ack never counts
    learner = make_core(4, voters=(1, 2, 3), learners=(4,))
    for _ in range(200):
        learner.tick()
    assert learner.role == Role.FOLLOWER
    assert not [m for m in drain(learner) if m.type in (MT.VOTE, MT.PRE_VOTE)]
    learner.campaign()
    assert learner.role == Role.FOLLOWER


def test_a_follower_follows_appended_configs_and_reverts_a_truncated_one() -> None:
    core = make_core(2)
    joint = apply_change(apply_change(BASE, [add_learner(4)]), [promote(4)])
    core.step(Message(MT.APPEND, 1, 2, 1, entries=[Entry(1, 1, b"", 1),
                                                 config_entry(1, 2, joint)]))
    assert core.membership == joint and core.membership_index == 2  # before commit (§4.1)
    assert core.commit_index == 0
    # A leader of term 2 overwrites index 2: the configuration reverts.
    core.step(Message(MT.APPEND, 3, 2, 2, log_term=1, index=1, entries=[Entry(2, 2, b"x")]))
    assert core.membership == Membership.of((1, 2, 3)) and core.membership_index == 0


def test_a_malformed_config_entry_is_refused_as_a_whole_append() -> None:
    core = make_core(2)
    bad = Entry(1, 1, b'{"v":1,"voters":[]}', int(EntryKind.CONFIG))
    core.step(Message(MT.APPEND, 1, 2, 1, entries=[bad]))
    assert core.log.last_index == 0 and core.ignored["malformed configuration entry"] == 1


def test_joint_election_needs_both_halves() -> None:
    joint = Membership.of((1, 4, 5), old_voters=(1, 2, 3))
    core = make_core(1, entries=[config_entry(1, 1, joint)], hard_state=HardState(1, 0, 0))
    core.campaign()
    votes = [m for m in drain(core) if m.type == MT.VOTE]
    assert {m.dst for m in votes} == {2, 3, 4, 5}
    for peer in (4, 5):  # all of C_new
        core.step(Message(MT.VOTE_RESPONSE, peer, 1, core.term))
    assert core.role == Role.CANDIDATE
    core.step(Message(MT.VOTE_RESPONSE, 2, 1, core.term))
    assert core.role == Role.LEADER


def test_a_leader_outside_c_new_steps_down_once_c_new_commits() -> None:
    core = make_core()
    elect(core)
    index, _ = core.propose_conf_change(remove(1))
    ack_all(core)
    assert core.commit_index >= index + 1  # C_old,new and C_new both committed
    assert core.role == Role.FOLLOWER and not core.membership.is_voter(1)
    for _ in range(100):
        core.tick()
    assert core.role == Role.FOLLOWER  # a removed node never campaigns


def settle(cores: dict[int, RaftCore], sent: list[Any] | None = None) -> None:
    """Instant persistence and delivery among `cores` until no message is left; every
    message sent is appended to `sent`."""
    for _ in range(100):
        messages = [m for core in cores.values() for m in drain(core)]
        if not messages:
            return
        if sent is not None:
            sent += messages
        for m in messages:
            if m.dst in cores:
                cores[m.dst].step(m)
    raise AssertionError("the cluster did not settle")


def test_a_leader_removing_itself_hands_off_to_a_caught_up_voter() -> None:
    # Thesis §4.2.2 + §3.10: the removed leader steps down with TIMEOUT_NOW to a voter of
    # C_new holding its whole log, so a leader exists again without an election timeout,
    # even though the followers' lease (check-quorum, §4.2.3) refuses ordinary votes.
    cores = {i: make_core(i, check_quorum=True, pre_vote=True) for i in (1, 2, 3)}
    cores[1].campaign()
    settle(cores)
    assert cores[1].role == Role.LEADER
    term = cores[1].term
    sent: list[Any] = []
    index, _ = cores[1].propose_conf_change(remove(1))
    settle(cores, sent)
    assert cores[1].commit_index >= index + 1  # C_old,new and C_new committed
    assert cores[1].role == Role.FOLLOWER
    handoffs = [m for m in sent if m.type == MT.TIMEOUT_NOW]
    assert len(handoffs) == 1 and handoffs[0].src == 1 and handoffs[0].term == term
    target = handoffs[0].dst
    assert target in (2, 3)
    ticks = 0
    while not any(cores[i].role == Role.LEADER for i in (2, 3)) and ticks < 100:
        for core in cores.values():
            core.tick()
        ticks += 1
        settle(cores)
    assert ticks < TIMING.election_timeout_ticks  # no election timeout waited for
    assert cores[target].role == Role.LEADER and cores[target].term == term + 1
    assert cores[target].membership.voters == {2, 3}
    assert cores[1].role == Role.FOLLOWER and cores[1].lease_read_index() is None
    last = cores[target].propose([b"after"])[0]
    settle(cores)
    assert cores[target].commit_index >= last


def test_the_hand_off_goes_to_the_voter_that_holds_the_whole_log() -> None:
    # C_new = {2, 3, 4, 5} commits with {2, 3, 4}; only 2 also holds the entry after it.
    core = make_core(1, voters=(1, 2, 3, 4, 5))
    elect(core)
    index, _ = core.propose_conf_change(remove(1))
    drain(core)
    for peer in (2, 3, 4, 5):  # C_old,new commits; the leader appends C_new
        core.step(Message(MT.APPEND_RESPONSE, peer, 1, core.term, index=index))
    assert core.role == Role.LEADER and core.membership_index == index + 1  # C_new appended
    last = core.propose([b"x"])[0]
    drain(core)
    core.step(Message(MT.APPEND_RESPONSE, 2, 1, core.term, index=last))
    for peer in (3, 4):
        core.step(Message(MT.APPEND_RESPONSE, peer, 1, core.term, index=index + 1))
    assert core.commit_index == index + 1 and core.role == Role.FOLLOWER
    handoffs = [m for m in drain(core) if m.type == MT.TIMEOUT_NOW]
    assert [(m.src, m.dst) for m in handoffs] == [(1, 2)]


def test_a_removed_leader_with_no_caught_up_voter_just_steps_down() -> None:
    # Neither 2 nor 3 holds the entry appended after C_new: a TIMEOUT_NOW would start an
    # election the target could lose to a log it lacks; step down as before and let the
    # election timeout pick a leader (§5.4.1 up-to-date votes decide).
    core = make_core()
    elect(core)
    index, _ = core.propose_conf_change(remove(1))
    drain(core)
    for peer in (2, 3):  # C_old,new commits; the leader appends C_new
        core.step(Message(MT.APPEND_RESPONSE, peer, 1, core.term, index=index))
    assert core.role == Role.LEADER and core.membership_index == index + 1
    core.propose([b"x"])
    drain(core)
    for peer in (2, 3):
        core.step(Message(MT.APPEND_RESPONSE, peer, 1, core.term, index=index + 1))
    assert core.commit_index == index + 1 and core.role == Role.FOLLOWER
    assert core.leader_id == 0
    assert not [m for m in drain(core) if m.type == MT.TIMEOUT_NOW]
    for _ in range(100):
        core.tick()
    assert core.role == Role.FOLLOWER  # a removed node never campaigns


def test_transfer_to_a_learner_or_witness_is_refused() -> None:
    core = make_core(1, voters=(1, 2, 3, 4), witnesses=(4,))
    elect(core)
    core.propose_conf_change(add_learner(5))
    ack_all(core)
    for target in (4, 5):
        with pytest.raises(ConfigError, match="that can lead"):
            core.transfer_leadership(target)


# ---------------------------------------------------------------------- witnesses


def test_a_witness_stores_metadata_only_and_never_leads() -> None:
    witness = make_core(3, witnesses=(3,))
    joint = apply_change(Membership.of((1, 2, 3), witnesses=(3,)), [add_learner(4)])
    witness.step(Message(MT.APPEND, 1, 3, 1, entries=[
        Entry(1, 1, b"", 1), Entry(1, 2, b"payload"), config_entry(1, 3, joint)]))
    stored = witness.log.slice(1, 4)
    assert [e.data for e in stored[:2]] == [b"", b""] and stored[2].data  # CONFIG kept whole
    assert witness.membership == joint and witness.is_witness
    for _ in range(200):
        witness.tick()
    assert witness.role == Role.FOLLOWER
    witness.step(Message(MT.TIMEOUT_NOW, 1, 3, 1))
    assert witness.role == Role.FOLLOWER
    assert witness.ignored["timeout_now to a node that cannot lead"] == 1
    # It votes (for an up-to-date log) like any voter.
    witness.step(Message(MT.VOTE, 2, 3, 2, log_term=1, index=3))
    assert any(m.type == MT.VOTE_RESPONSE and not m.reject for m in drain(witness))


def test_leader_sends_a_witness_metadata_only_and_no_further_than_a_full_voter() -> None:
    # Rule W2: with full voters {1, 2} and witness 3, the witness gets an entry only once 2
    # holds it, unless 2 has been silent for an election timeout.
    core = make_core(1, witnesses=(3,))
    elect(core)
    index = core.propose([b"cmd"])[0]
    sent = drain(core)
    assert not [m for m in sent if m.dst == 3 and m.entries]
    core.step(Message(MT.APPEND_RESPONSE, 2, 1, core.term, index=index))
    to_witness = [m for m in drain(core) if m.dst == 3 and m.entries]
    assert to_witness and all(e.data == b"" for e in to_witness[0].entries)
    assert to_witness[-1].entries[-1].index == index
    # Follower 2 goes silent: after an election timeout the witness gets everything.
    core.step(Message(MT.APPEND_RESPONSE, 3, 1, core.term, index=index))
    second = core.propose([b"more"])[0]
    drain(core)
    assert core.commit_index < second
    for _ in range(TIMING.election_timeout_ticks + 1):
        core.tick()
        core.step(Message(MT.HEARTBEAT_RESPONSE, 3, 1, core.term))
    sent = drain(core)
    assert any(m.dst == 3 and m.entries and m.entries[-1].index == second for m in sent)
    core.step(Message(MT.APPEND_RESPONSE, 3, 1, core.term, index=second))
    drain(core)
    assert core.commit_index == second  # {1, 3}: the cluster runs on its tolerated failure


def test_two_full_copies_and_a_witness_lose_nothing_when_the_leader_dies() -> None:
    # The failing case of a plain witness: the leader commits with {leader, witness} while the
    # other full copy is alive but behind, then the leader's disk is lost: the command is
    # gone, and the witness (rightly) refuses to elect the survivor. Rule W2 makes the witness
    # wait for the other full copy, so nothing committed is lost and the survivor is elected.
    sim = Simulation(n=3, seed=11, witnesses=(3,))
    leader = sim.wait_leader()
    other = ({1, 2} - {leader}).pop()
    before = sim.propose(b"before")[0]
    assert sim.run_until(lambda: sim.applied_everywhere(before), 5_000)
    sim.cut(leader, other)  # the other full copy stops receiving, for less than a timeout
    index, _, term = sim.propose(b"x")
    sim.run_for(30)  # election timeout: 15 ticks of 10 ms
    assert sim.core(3).log.last_index < index  # W2: the witness was not sent it
    assert not sim.is_committed(index, term)
    sim.crash(leader)
    sim.nodes[leader].joined = False  # its disk is lost for good: never restarted
    sim.heal()
    assert sim.run_until(lambda: sim.leader() == other, 10_000)
    after = sim.propose(b"after")[0]
    assert sim.run_until(lambda: sim.applied_everywhere(after, [other, 3]), 5_000)
    commands = [c for c in sim.nodes[other].applied if not c.startswith(b"{")]
    assert commands == [b"before", b"after"]  # "x" was never committed, so never acked
    sim.checker.check_state(other, sim.nodes[other].applied_index, sim.nodes[other].applied)


def test_a_witness_gets_snapshots_without_state_machine_data() -> None:
    sim = Simulation(n=3, seed=5, witnesses=(3,), snapshot_entries=5, snapshot_trailing=0)
    sim.wait_leader()
    sim.crash(3)
    for i in range(30):
        sim.propose(b"c%d" % i)
        sim.run_for(20)
    sim.restart(3)
    leader = sim.leader()
    assert leader is not None
    target = sim.core(leader).commit_index
    assert sim.run_until(lambda: sim.nodes[3].applied_index >= target, 5_000)
    assert sim.core(3).snapshot_stats["installed"] >= 1
    assert sim.nodes[3].disk_snapshot is not None and sim.nodes[3].disk_snapshot.data == b""
    assert decode_membership(sim.nodes[3].disk_snapshot.configuration).witnesses == {3}


# ---------------------------------------------------------------------- snapshots, restart


def test_snapshot_envelope_carries_the_configuration_and_old_envelopes_still_read() -> None:
    plain = Snapshot(7, 2, b"state")
    v1 = encode_snapshot(plain)
    assert v1[4:6] == b"\x01\x00" and decode_snapshot(v1) == plain
    configured = Snapshot(7, 2, b"state", configuration=encode_membership(BASE))
    v2 = encode_snapshot(configured)
    assert v2[4:6] == b"\x02\x00"
    decoded = decode_snapshot(v2)
    assert decoded == configured and decode_membership(decoded.configuration) == BASE
    with pytest.raises(DecodeError):
        decode_snapshot(v2[:-1])
    corrupt = bytearray(v2)
    corrupt[40] ^= 1
    with pytest.raises(DecodeError):
        decode_snapshot(bytes(corrupt))


def test_compact_records_the_configuration_as_of_the_snapshot_index() -> None:
    core = make_core()
    elect(core)
    core.propose_conf_change(add_learner(4, "h:4"))
    ack_all(core)
    at = core.commit_index
    core.propose_conf_change(promote(4))  # in force after `at`, not at it
    drain(core)
    core.compact(Snapshot(at, core.log.term(at), b"sm"))
    envelope = core._envelope()
    snapshot = decode_snapshot(envelope)
    assert decode_membership(snapshot.configuration) == core.configuration_at(at)
    assert decode_membership(snapshot.configuration).learners == {4}


def test_restart_rebuilds_the_configuration_from_snapshot_and_log() -> None:
    learner = apply_change(BASE, [add_learner(4, "h:4")])
    joint = apply_change(learner, [promote(4)])
    snapshot = Snapshot(5, 1, b"sm", configuration=encode_membership(learner))
    entries = [config_entry(1, 6, joint), Entry(1, 7, b"x")]
    core = make_core(1, hard_state=HardState(1, 0, 5), entries=entries, applied=5,
                     snapshot=snapshot)
    assert core.membership == joint and core.membership_index == 6
    assert core.configuration_at(5) == learner
    # Without the log entry: the snapshot's configuration; without either: the bootstrap one.
    assert make_core(1, hard_state=HardState(1, 0, 5), applied=5,
                     snapshot=snapshot).membership == learner
    assert make_core(1).membership == Membership.of((1, 2, 3))


def test_existing_callers_passing_voters_only_still_work() -> None:
    core = RaftCore(RaftConfig(2, (1, 2, 3)))
    assert core.membership.voters == {1, 2, 3} and core.status()["membership"]["voters"] == [
        1, 2, 3]
    with pytest.raises(ConfigError):
        RaftConfig(4, (1, 2, 3))
    with pytest.raises(ConfigError, match="witnesses must be fewer"):
        RaftConfig(1, (1, 2), witnesses=(2,))


# ---------------------------------------------------------------------- simulator stories


def test_grow_a_cluster_from_one_node_and_replace_every_original_member() -> None:
    sim = Simulation(n=1, seed=21, spares=3)
    sim.wait_leader()

    def committed_change(ops: list[Any]) -> None:
        for _ in range(50):
            try:
                sim.change_membership(ops)
                break
            except (ConfChangeInProgress, NotLeader, MembershipError):
                sim.run_for(100)
        assert sim.run_until(
            lambda: (leader := sim.leader()) is not None
            and not sim.core(leader).conf_change_pending, 10_000)

    for node in (2, 3, 4):
        committed_change([add_learner(node, sim.address(node))])
        sim.propose(b"w%d" % node)
        committed_change([promote(node)])
    committed_change([remove(1)])
    assert sim.run_until(lambda: sim.leader() not in (None, 1), 10_000)
    leader = sim.leader()
    assert leader is not None
    assert sim.core(leader).membership.voters == {2, 3, 4}
    last = sim.propose(b"final")[0]
    assert sim.run_until(lambda: sim.applied_everywhere(last, [2, 3, 4]), 5_000)
    assert [c for c in sim.nodes[4].applied if c.startswith(b"w")] == [b"w2", b"w3", b"w4"]
