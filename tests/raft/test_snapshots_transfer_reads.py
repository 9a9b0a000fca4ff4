"""Rule tests on one RaftCore, plus simulator scenarios.

Snapshots (Raft §7, Figure 13, chunked over a lossy network), leadership transfer (thesis
§3.10) and lease reads (§6.4.1). Method as in test_paper.py: hand-written messages in, the
Ready out; the scenarios use engine.testing.sim with its global invariants.
"""

from __future__ import annotations

from typing import Any

import pytest

from engine.config import Limits, TimingConfig
from engine.errors import ConfigError, DecodeError, NotLeader
from engine.messages import Entry, Message, MessageType
from engine.raft import RaftConfig, RaftCore, Role
from engine.raft.core import TransferInProgress
from engine.raft.progress import ProgressState
from engine.replication.snapshot import (
    SnapshotReceiver,
    SnapshotSender,
    decode_snapshot,
    encode_snapshot,
)
from engine.testing.sim import FaultConfig, Simulation
from engine.types import HardState, Snapshot

MT = MessageType
TIMING = TimingConfig(tick_ms=10, heartbeat_interval_ticks=2, election_timeout_ticks=10)


def make_core(node_id: int = 1, voters: tuple[int, ...] = (1, 2, 3), *,
              limits: Limits | None = None, check_quorum: bool = True,
              lease_read: bool = False, **kwargs: Any) -> RaftCore:
    config = RaftConfig(node_id, voters, TIMING, limits or Limits(), pre_vote=False,
                        check_quorum=check_quorum, check_invariants=True, lease_read=lease_read)
    return RaftCore(config, **kwargs)


def drain(core: RaftCore) -> list[Any]:
    """The driver loop with instant persistence; returns every message sent."""
    out: list[Any] = []
    while core.has_ready():
        ready = core.ready()
        out += ready.messages + ready.messages_after_persist
        core.advance(ready)
    return out


def elect(core: RaftCore) -> None:
    """Makes core the leader of term 1 with its no-op committed by follower 2."""
    core.campaign()
    drain(core)
    core.step(Message(MT.VOTE_RESPONSE, 2, core.node_id, core.term))
    drain(core)
    ack(core, 2)
    assert core.role == Role.LEADER and core.commit_index == core.log.last_index


def ack(core: RaftCore, peer: int) -> None:
    core.step(Message(MT.APPEND_RESPONSE, peer, core.node_id, core.term,
                      index=core.log.last_index))
    drain(core)


def of_type(messages: list[Any], kind: MessageType, dst: int | None = None) -> list[Any]:
    return [m for m in messages if m.type == kind and (dst is None or m.dst == dst)]


# ---------------------------------------------------------------------- envelope


def test_envelope_round_trips_and_detects_any_corruption() -> None:
    snapshot = Snapshot(7, 3, b"state" * 100)
    envelope = encode_snapshot(snapshot)
    assert decode_snapshot(envelope) == snapshot
    for position in (0, 10, 40, len(envelope) // 2, len(envelope) - 1):
        corrupt = bytearray(envelope)
        corrupt[position] ^= 0x01
        with pytest.raises(DecodeError):
            decode_snapshot(bytes(corrupt))
    with pytest.raises(DecodeError):
        decode_snapshot(envelope[:-1])


def test_sender_window_is_bounded_and_goes_back_on_gap_and_timeout() -> None:
    envelope = bytes(range(256)) * 4  # 1024 bytes, 100-byte chunks, window of 3
    sender = SnapshotSender(5, 2, envelope, 100, 3, now_tick=0)
    assert [offset for offset, _ in sender.next_chunks()] == [0, 100, 200]
    assert sender.next_chunks() == []  # window full until an ack
    assert sender.on_ack(100, gap=False, now_tick=1)
    assert [offset for offset, _ in sender.next_chunks()] == [300]
    # Chunk 100 was lost: the follower reports a gap at 100 for each later chunk; go back once.
    sender.on_ack(100, gap=True, now_tick=2)
    assert [offset for offset, _ in sender.next_chunks()] == [100, 200, 300]
    sender.on_ack(100, gap=True, now_tick=2)
    assert sender.next_chunks() == []
    # Everything in flight lost: the timeout resends from the acknowledged offset.
    assert not sender.maybe_retransmit(now_tick=5, retransmit_ticks=5)
    assert sender.maybe_retransmit(now_tick=7, retransmit_ticks=5)
    assert [offset for offset, _ in sender.next_chunks()] == [100, 200, 300]


def test_receiver_takes_only_contiguous_bytes_and_verifies() -> None:
    envelope = encode_snapshot(Snapshot(9, 4, b"x" * 300))
    receiver = SnapshotReceiver(9, 4, len(envelope))
    assert not receiver.add(200, envelope[200:300])  # gap
    assert receiver.add(0, envelope[0:150])
    assert receiver.add(100, envelope[100:250])      # overlapping duplicate extends
    assert receiver.received == 250
    receiver.add(250, envelope[250:])
    assert receiver.complete and receiver.finish().data == b"x" * 300


# ---------------------------------------------------------------------- compaction


def test_compact_keeps_trailing_entries_and_never_passes_applied() -> None:
    core = make_core(node_id=1, voters=(1,))
    core.campaign()
    drain(core)
    for i in range(10):
        core.propose([b"c%d" % i])
    drain(core)
    assert core.applied_index == 11
    with pytest.raises(ConfigError):
        core.compact(Snapshot(12, 1, b"s"))
    core.compact(Snapshot(11, 1, b"s"), compact_to=8)
    assert core.snapshot_index == 11 and core.log.first_index == 9
    assert core.log.term(8) == 1  # the consistency check still knows the term below


def leader_with_compacted_log(limits: Limits | None = None) -> tuple[RaftCore, bytes]:
    core = make_core(limits=limits)
    elect(core)
    for i in range(20):
        core.propose([b"command-%d" % i])
        drain(core)
        ack(core, 2)
    state = b"S" * 5000
    core.compact(Snapshot(core.applied_index, core.term, state))
    return core, state


def deliver_snapshot(leader: RaftCore, follower: RaftCore, lose: set[int] = frozenset()
                     ) -> int:
    """Shuttles SNAPSHOT / responses between the two cores; drops the chunks whose offsets
    are in `lose` the first time. Returns the number of chunks delivered."""
    delivered = 0
    pending = of_type(drain(leader), MT.SNAPSHOT, follower.node_id)
    lost: set[int] = set()
    for _ in range(1000):
        if not pending:
            leader.tick()
            pending = of_type(drain(leader), MT.SNAPSHOT, follower.node_id)
            if not pending:
                break
            continue
        m = pending.pop(0)
        if m.seq in lose and m.seq not in lost:
            lost.add(m.seq)
            continue
        follower.step(m)
        delivered += 1
        for reply in drain(follower):
            if reply.dst == leader.node_id:
                leader.step(reply)
        pending += of_type(drain(leader), MT.SNAPSHOT, follower.node_id)
        if leader._progress[follower.node_id].state != ProgressState.SNAPSHOT:
            break
    return delivered


def test_lagging_follower_receives_snapshot_in_chunks_despite_losses() -> None:
    limits = Limits(max_snapshot_chunk_bytes=1000, max_snapshot_inflight_chunks=3)
    leader, state = leader_with_compacted_log(limits)
    follower = make_core(node_id=3, limits=limits)
    follower.step(Message(MT.HEARTBEAT, 1, 3, leader.term))
    leader.step(Message(MT.HEARTBEAT_RESPONSE, 3, 1, leader.term))
    assert leader._progress[3].state == ProgressState.SNAPSHOT
    deliver_snapshot(leader, follower, lose={1000, 3000})
    ready_snapshot = follower.snapshot_stats["installed"]
    assert ready_snapshot == 1
    assert follower.commit_index == leader.snapshot_index == follower.snapshot_index
    assert follower.log.first_index == leader.snapshot_index + 1
    assert leader._progress[3].match == leader.snapshot_index
    assert leader._progress[3].state == ProgressState.REPLICATE
    assert leader.snapshot_stats["chunks_sent"] > 6  # 6 chunks + resends of the lost ones


def test_install_is_reported_in_ready_and_acked_only_after_persist() -> None:
    limits = Limits(max_snapshot_chunk_bytes=100_000)
    leader, state = leader_with_compacted_log(limits)
    follower = make_core(node_id=3, limits=limits)
    leader.step(Message(MT.HEARTBEAT_RESPONSE, 3, 1, leader.term))
    (chunk,) = of_type(drain(leader), MT.SNAPSHOT, 3)
    follower.step(chunk)
    ready = follower.ready()
    assert ready.snapshot is not None and ready.snapshot.data == state
    assert ready.snapshot.index == leader.snapshot_index
    assert not of_type(ready.messages, MT.APPEND_RESPONSE)
    (response,) = of_type(ready.messages_after_persist, MT.APPEND_RESPONSE)
    assert response.index == leader.snapshot_index
    assert ready.committed_entries == []  # the state machine is restored, not replayed


def test_follower_rejects_corrupt_snapshot_and_asks_from_the_start() -> None:
    leader, _ = leader_with_compacted_log(Limits(max_snapshot_chunk_bytes=100_000))
    follower = make_core(node_id=3)
    leader.step(Message(MT.HEARTBEAT_RESPONSE, 3, 1, leader.term))
    (chunk,) = of_type(drain(leader), MT.SNAPSHOT, 3)
    corrupt = bytearray(chunk.context)
    corrupt[100] ^= 0xFF
    follower.step(Message(MT.SNAPSHOT, 1, 3, chunk.term, log_term=chunk.log_term,
                          index=chunk.index, seq=0, status=chunk.status, context=bytes(corrupt)))
    ready = follower.ready()
    assert ready.snapshot is None and follower.commit_index == 0
    (reply,) = of_type(ready.messages, MT.SNAPSHOT_RESPONSE)
    assert reply.reject and reply.seq == 0
    assert follower.snapshot_stats["corrupt"] == 1


def test_follower_resumes_a_partial_snapshot_from_a_new_transfer() -> None:
    limits = Limits(max_snapshot_chunk_bytes=1000, max_snapshot_inflight_chunks=2)
    leader, _ = leader_with_compacted_log(limits)
    follower = make_core(node_id=3, limits=limits)
    leader.step(Message(MT.HEARTBEAT_RESPONSE, 3, 1, leader.term))
    first, second = of_type(drain(leader), MT.SNAPSHOT, 3)
    follower.step(first)
    follower.step(second)
    drain(follower)  # the acks are lost
    # The leader times out and retransmits from 0: the follower answers with 2000.
    for _ in range(TIMING.election_timeout_ticks):
        leader.tick()
    retransmitted = of_type(drain(leader), MT.SNAPSHOT, 3)
    assert retransmitted[0].seq == 0
    follower.step(retransmitted[0])
    (ack_message,) = of_type(drain(follower), MT.SNAPSHOT_RESPONSE)
    assert ack_message.seq == 2000 and not ack_message.reject


def test_snapshot_at_or_below_commit_is_not_installed() -> None:
    follower = make_core(node_id=2, hard_state=HardState(1, 1, 21),
                         entries=[Entry(1, i, b"") for i in range(1, 22)])
    envelope = encode_snapshot(Snapshot(15, 1, b"s"))
    follower.step(Message(MT.SNAPSHOT, 1, 2, 1, log_term=1, index=15, seq=0,
                          status=len(envelope), context=envelope))
    ready = follower.ready()
    assert ready.snapshot is None and follower.log.first_index == 1
    assert of_type(ready.messages_after_persist, MT.APPEND_RESPONSE)[0].index == 21


def test_snapshot_whose_last_entry_the_log_holds_keeps_the_log() -> None:
    # Figure 13 step 6: the entries after the snapshot's last entry are retained.
    follower = make_core(node_id=2, hard_state=HardState(1, 1, 3),
                         entries=[Entry(1, i, b"") for i in range(1, 10)])
    envelope = encode_snapshot(Snapshot(6, 1, b"s"))
    follower.step(Message(MT.SNAPSHOT, 1, 2, 1, log_term=1, index=6, seq=0,
                          status=len(envelope), context=envelope))
    ready = follower.ready()
    assert ready.snapshot is None and follower.log.last_index == 9
    assert follower.commit_index == 6


def test_restart_from_snapshot_and_log_tail() -> None:
    snapshot = Snapshot(10, 2, b"s")
    tail = [Entry(2, i, b"t") for i in range(8, 13)]
    core = make_core(node_id=2, hard_state=HardState(2, 1, 12), entries=tail, applied=10,
                     snapshot=snapshot, log_start=(7, 2))
    assert core.log.first_index == 8 and core.log.last_index == 12
    assert [e.index for e in core.ready().committed_entries] == [11, 12]
    with pytest.raises(ConfigError):
        make_core(node_id=2, applied=5, snapshot=snapshot)


# ---------------------------------------------------------------------- transfer (§3.10)


def test_transfer_to_up_to_date_target_sends_timeout_now_and_refuses_proposals() -> None:
    core = make_core()
    elect(core)
    ack(core, 3)
    core.transfer_leadership(3)
    (timeout_now,) = of_type(drain(core), MT.TIMEOUT_NOW)
    assert timeout_now.dst == 3 and timeout_now.term == core.term
    with pytest.raises(TransferInProgress):
        core.propose([b"x"])
    assert core.lease_read_index() is None  # no lease reads after TIMEOUT_NOW this term


def test_transfer_catches_the_target_up_first() -> None:
    core = make_core()
    elect(core)
    core.propose([b"a"])
    drain(core)
    core.transfer_leadership(3)  # the target is behind: no TIMEOUT_NOW yet
    assert not of_type(drain(core), MT.TIMEOUT_NOW)
    core.step(Message(MT.HEARTBEAT_RESPONSE, 3, 1, core.term))
    assert of_type(drain(core), MT.APPEND, 3)  # catching it up
    core.step(Message(MT.APPEND_RESPONSE, 3, 1, core.term, index=core.log.last_index))
    assert of_type(drain(core), MT.TIMEOUT_NOW, 3)


def test_transfer_is_abandoned_after_an_election_timeout() -> None:
    core = make_core()
    elect(core)
    core.propose([b"a"])
    drain(core)
    core.transfer_leadership(3)
    for _ in range(TIMING.election_timeout_ticks - 1):
        core.tick()
        core.step(Message(MT.HEARTBEAT_RESPONSE, 2, 1, core.term))
    assert core.lead_transferee == 3
    core.tick()
    assert core.lead_transferee == 0 and core.role == Role.LEADER
    core.propose([b"b"])  # accepted again


def test_transfer_target_checks() -> None:
    core = make_core()
    with pytest.raises(NotLeader):
        core.transfer_leadership(2)
    elect(core)
    with pytest.raises(ConfigError):
        core.transfer_leadership(9)
    core.transfer_leadership(1)  # to ourselves: nothing to do
    assert core.lead_transferee == 0


def test_timeout_now_makes_the_target_campaign_at_once_past_leases() -> None:
    target = make_core(node_id=3, lease_read=True)
    target.step(Message(MT.HEARTBEAT, 1, 3, 1))
    drain(target)
    target.step(Message(MT.TIMEOUT_NOW, 1, 3, 1))
    assert target.role == Role.CANDIDATE and target.term == 2
    votes = of_type(drain(target), MT.VOTE)
    assert {m.dst for m in votes} == {1, 2} and all(m.context == b"transfer" for m in votes)
    # A voter that just heard from the leader grants it anyway (the lease is bypassed) ...
    voter = make_core(node_id=2, lease_read=True)
    voter.step(Message(MT.HEARTBEAT, 1, 2, 1))
    drain(voter)
    voter.step(votes[0] if votes[0].dst == 2 else votes[1])
    (grant,) = of_type(drain(voter), MT.VOTE_RESPONSE)
    assert not grant.reject
    # ... but ignores an ordinary vote request while its leader's lease holds (§4.2.3).
    other = make_core(node_id=2, lease_read=True)
    other.step(Message(MT.HEARTBEAT, 1, 2, 1))
    drain(other)
    other.step(Message(MT.VOTE, 3, 2, 2, log_term=0, index=0))
    assert not of_type(drain(other), MT.VOTE_RESPONSE) and other.term == 1


def test_timeout_now_from_a_non_leader_is_ignored() -> None:
    core = make_core(node_id=3)
    core.step(Message(MT.HEARTBEAT, 1, 3, 1))
    core.step(Message(MT.TIMEOUT_NOW, 2, 3, 1))
    assert core.role == Role.FOLLOWER and core.term == 1


# ---------------------------------------------------------------------- lease reads (§6.4.1)


def heartbeat_round(core: RaftCore, ackers: tuple[int, ...]) -> None:
    for _ in range(TIMING.heartbeat_interval_ticks):
        core.tick()
    for m in of_type(drain(core), MT.HEARTBEAT):
        if m.dst in ackers:
            core.step(Message(MT.HEARTBEAT_RESPONSE, m.dst, 1, core.term, context=m.context))
    drain(core)


def test_lease_needs_check_quorum_and_a_quorum_acked_round() -> None:
    without = make_core(check_quorum=False)
    elect(without)
    heartbeat_round(without, (2, 3))
    assert without.lease_read_index() is None
    core = make_core(lease_read=True)
    elect(core)
    assert core.lease_read_index() is None  # no heartbeat round acknowledged yet
    heartbeat_round(core, (2,))
    lease = core.lease_read_index()
    assert lease is not None and lease[0] == core.commit_index


def test_lease_expires_before_an_election_timeout_minus_drift() -> None:
    core = make_core(lease_read=True)
    elect(core)
    heartbeat_round(core, (2, 3))
    sent_tick = core.lease_read_index()[1]  # type: ignore[index]
    drift = core.config.lease_drift_ticks_or_default
    # No more acks: the lease must end strictly before election_timeout - drift ticks.
    while core.lease_read_index() is not None:
        core.tick()
        drain(core)
    assert core._ticks - sent_tick == TIMING.election_timeout_ticks - drift
    assert core.role == Role.LEADER  # still leader: the lease ends before check-quorum


def test_restarted_follower_waits_an_election_timeout_before_voting() -> None:
    # It adopted term 2 before the restart: it may have acknowledged a leader's lease.
    core = make_core(node_id=2, lease_read=True, hard_state=HardState(2, 0, 0))
    core.step(Message(MT.VOTE, 3, 2, 5, log_term=0, index=0))
    assert core.term == 2 and not of_type(drain(core), MT.VOTE_RESPONSE)
    for _ in range(TIMING.election_timeout_ticks):
        core.tick()
    drain(core)
    core.step(Message(MT.VOTE, 3, 2, 5, log_term=0, index=0))
    assert core.term == 5


def test_a_node_that_never_adopted_a_term_votes_at_once() -> None:
    """Term 0 on disk: it never answered any leader, so no lease rests on it (a new group
    elects its first leader in one round trip)."""
    core = make_core(node_id=2, lease_read=True)
    core.step(Message(MT.VOTE, 3, 2, 5, log_term=0, index=0))
    votes = of_type(drain(core), MT.VOTE_RESPONSE)
    assert core.term == 5 and votes and not votes[0].reject


# ---------------------------------------------------------------------- simulator scenarios


def replicate(sim: Simulation, count: int, prefix: bytes = b"c") -> int:
    last = 0
    for i in range(count):
        last = sim.propose(prefix + b"%d" % i)[1]
    up = [i for i in sim.node_ids if sim.nodes[i].up]
    assert sim.run_until(lambda: sim.applied_everywhere(last, up), max_time=5_000)
    return last


def test_deposed_partitioned_leader_never_serves_a_stale_lease_or_index_read() -> None:
    sim = Simulation(n=5, seed=11, lease_read=True)
    old = sim.wait_leader()
    replicate(sim, 3)
    sim.run_for(100)
    assert sim.lease_read(old) is not None  # the lease holds while the cluster is healthy
    majority = set(sim.node_ids) - {old}
    sim.partition({old}, majority)
    partitioned_at = sim.now
    index_reads: list[bytes] = []
    lease_served_at: list[int] = []
    new_leader_at: int | None = None
    # Every 5 ms the isolated old leader is asked for a lease read and a ReadIndex read, and
    # the majority side writes. sim.lease_read / the read path hand every served read index
    # to the checker, which fails the run if it is below what was committed anywhere.
    while sim.now < partitioned_at + 3_000:
        if sim.core(old).role == Role.LEADER:
            if sim.lease_read(old) is not None:
                lease_served_at.append(sim.now)
            index_reads.append(sim.read(old))
        new = sim.leader()
        if new is not None and new != old:
            new_leader_at = new_leader_at or sim.now
            try:
                sim.propose(b"new-%d" % sim.now, new)
            except NotLeader:
                pass
        sim.run_for(5)
    assert new_leader_at is not None and sim.core(old).role != Role.LEADER
    assert sim.checker.committed_index > sim.core(old).commit_index
    # The old leader served lease reads for a while after the partition (its lease was
    # still valid), but never once a new leader existed; its ReadIndex reads never succeeded.
    assert lease_served_at and max(lease_served_at) < new_leader_at
    assert index_reads and all(sim.read_results.get(c, 0) == 0 for c in index_reads)


def test_snapshot_install_under_loss_brings_a_restarted_node_back() -> None:
    faults = FaultConfig(loss=0.2, duplicate=0.1, delay_min_ms=1, delay_max_ms=20)
    limits = Limits(max_snapshot_chunk_bytes=128, max_snapshot_inflight_chunks=4)
    sim = Simulation(n=3, seed=12, faults=faults, limits=limits, snapshot_entries=10)
    leader = sim.wait_leader()
    lagging = next(i for i in sim.node_ids if i != leader)
    sim.crash(lagging)
    for i in range(60):
        while True:
            try:
                sim.propose(b"v%d" % i)
                break
            except Exception:  # noqa: BLE001 - leader change under loss: retry
                sim.run_for(50)
                sim.wait_leader()
        sim.run_for(5)
    assert sim.run_until(lambda: sim.leader() is not None and sim.core(
        sim.leader()).log.first_index > 2, max_time=5_000)  # type: ignore[arg-type]
    sim.restart(lagging)
    target = sim.checker.committed_index
    assert sim.run_until(lambda: sim.nodes[lagging].applied_index >= target, max_time=20_000)
    assert sim.stats["snapshots_installed"] >= 1
    assert sim.stats["snapshot_chunks_sent"] > 10


def test_transfer_in_the_simulator_hands_over_without_losing_commits() -> None:
    sim = Simulation(n=3, seed=13)
    old = sim.wait_leader()
    last = replicate(sim, 5)
    target = next(i for i in sim.node_ids if i != old)
    sim.transfer_leadership(target)
    assert sim.run_until(lambda: sim.leader() == target, max_time=1_000)
    assert sim.stats["transfers_completed"] == 1
    replicate(sim, 5, prefix=b"after")
    assert sim.checker.committed_index > last
