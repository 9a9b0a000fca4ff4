"""PaxosCore snapshots and trimming below the applied slot, one rule per test.

The cores run on a tiny hand-driven network (`Net`): every Ready is persisted to a simulated
disk with the WAL's semantics (sim_helpers.Disk: its compaction refuses to forget an accepted
slot above its marker) before its after-persist messages go out, as engine.Node does.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from sim_helpers import Disk, Faults, PaxosSim, decode_values

from engine.config import Limits, TimingConfig
from engine.errors import ConfigError
from engine.messages import Entry, Message, MessageType
from engine.paxos import PaxosConfig, PaxosCore, Role
from engine.paxos.ballot import make_ballot
from engine.paxos.core import IDENTITY_BYTES
from engine.replication.snapshot import decode_snapshot, encode_snapshot
from engine.types import HardState, Snapshot

MT = MessageType
TIMING = TimingConfig(tick_ms=1, heartbeat_interval_ticks=2, election_timeout_ticks=10)
# Small chunks: a snapshot of a few hundred bytes travels in several SNAPSHOT messages.
LIMITS = Limits(max_snapshot_chunk_bytes=64, max_snapshot_inflight_chunks=4)


def config(node: int, n: int = 3, limits: Limits = LIMITS) -> PaxosConfig:
    return PaxosConfig(node, tuple(range(1, n + 1)), TIMING, limits, check_invariants=True)


def value(identity: int, command: bytes) -> bytes:
    return identity.to_bytes(IDENTITY_BYTES, "little") + command


class Net:
    """Cores on a lossless in-order network, each with a disk and an applied list."""

    def __init__(self, n: int = 3, limits: Limits = LIMITS) -> None:
        self.cores = {i: PaxosCore(config(i, n, limits)) for i in range(1, n + 1)}
        self.disks = {i: Disk() for i in self.cores}
        self.applied: dict[int, list[bytes]] = {i: [] for i in self.cores}
        self.installed: dict[int, list[Snapshot]] = {i: [] for i in self.cores}
        self.queue: list[Any] = []
        self.sent: list[Any] = []

    def flush(self, node: int) -> None:
        core, disk = self.cores[node], self.disks[node]
        while core.has_ready():
            ready = core.ready()
            self.queue.extend(ready.messages)
            if ready.snapshot is not None:   # engine.Node._persist_snapshot_ready
                disk.save_snapshot(ready.snapshot)
                disk.compact(ready.snapshot.index, ready.snapshot.term)
                self.installed[node].append(ready.snapshot)
                self.applied[node] = [b"<snapshot>"] * ready.snapshot.index
            disk.save(ready.entries, ready.hard_state)
            self.queue.extend(ready.messages_after_persist)
            self.applied[node].extend(bytes(e.data) for e in ready.committed_entries)
            core.advance(ready)

    def run(self, drop: Callable[[Any], bool] = lambda m: False, max_steps: int = 10_000) -> None:
        for node in self.cores:
            self.flush(node)
        for _ in range(max_steps):
            if not self.queue:
                return
            m = self.queue.pop(0)
            self.sent.append(m)
            if drop(m):
                continue
            self.cores[m.dst].step(m)
            self.flush(m.dst)
        raise AssertionError("the network did not quiesce")

    def tick(self, ticks: int, drop: Callable[[Any], bool] = lambda m: False) -> None:
        for _ in range(ticks):
            for node, core in self.cores.items():
                core.tick()
                self.flush(node)
            self.run(drop)

    def elect(self, node: int = 1) -> int:
        self.cores[node].campaign()
        self.run()
        assert self.cores[node].role == Role.LEADER
        return self.cores[node].ballot

    def snapshot(self, node: int, compact_to: int | None = None) -> Snapshot:
        """engine.driver.Driver.start_snapshot at the applied slot (data names it), then compact."""
        core = self.cores[node]
        index = core.applied_index
        term = core.log.term(index)
        envelope = encode_snapshot(Snapshot(index=index, term=term, data=b"state@%d" % index))
        floor = index if compact_to is None else compact_to
        self.disks[node].compact(floor, core.log.term(floor))
        snapshot = Snapshot(index=index, term=term, data=b"", envelope=envelope)
        core.compact(snapshot, compact_to=floor)
        return snapshot


def to(node: int, *types: MT) -> Callable[[Any], bool]:
    return lambda m: m.dst == node and (not types or m.type in types)


# ---------------------------------------------------------------------- compaction


def test_compact_trims_below_the_snapshot_and_keeps_the_trailing_slots() -> None:
    net = Net()
    ballot = net.elect()
    leader = net.cores[1]
    leader.propose([b"c%d" % i for i in range(20)])
    net.run()
    assert leader.applied_index == 20
    net.snapshot(1, compact_to=15)
    assert (leader.log.first_index, leader.snapshot_index, leader.last_index) == (16, 20, 20)
    assert leader.slot(15) is None and leader.slot(16).data == value(ballot, b"c15")
    # The driver's view: the ballot stored at the floor stays known (the WAL's marker).
    assert leader.log.term(15) == ballot and leader.log.term(20) == ballot
    status = leader.status()
    assert (status["first_index"], status["snapshot_index"]) == (16, 20)
    # The cluster keeps choosing after the trim.
    leader.propose([b"after"])
    net.run()
    assert all(net.applied[i][-1] == b"after" for i in net.cores)


def test_compact_refuses_a_snapshot_beyond_the_applied_slot() -> None:
    net = Net()
    net.elect()
    net.cores[1].propose([b"a", b"b"])
    net.run()
    with pytest.raises(ConfigError, match="beyond applied"):
        net.cores[1].compact(Snapshot(index=3, term=net.cores[1].log.term(2)))


def test_persisted_index_excludes_slots_handed_out_but_not_yet_written() -> None:
    net = Net(n=1)
    net.elect()
    core = net.cores[1]
    core.propose([b"a", b"b", b"c"])
    net.flush(1)
    assert core.log.persisted_index == 3
    core.propose([b"d"])
    ready = core.ready()   # slot 4 handed to the driver, not yet written
    assert core.log.persisted_index == 3
    core.advance(ready)
    assert core.log.persisted_index == 4


# ---------------------------------------------------------------------- phase 1 after a trim


def test_a_promise_below_the_first_retained_slot_says_snapshot_and_is_not_counted() -> None:
    net = Net()
    net.elect(1)
    net.cores[1].propose([b"c%d" % i for i in range(10)])
    # Node 3 misses everything; nodes 1 and 2 choose and trim through 8.
    net.run(drop=to(3))
    net.snapshot(2, compact_to=8)
    acceptor = net.cores[2]
    promised = acceptor.promised
    candidate = net.cores[3]
    candidate.campaign()
    net.flush(3)
    (prepare_to_2,) = [m for m in net.queue if m.type == MT.PREPARE and m.dst == 2]
    net.queue, net.sent = [prepare_to_2], []
    net.run(drop=lambda m: m.dst == 1 or m.type == MT.SNAPSHOT)
    (refusal,) = [m for m in net.sent if m.type == MT.PROMISE and m.src == 2]
    # "snapshot": reject with no higher ballot, the acceptor's commit as the hint, and no
    # promise made (the acceptor cannot report what it accepted in slots 1..8).
    assert refusal.reject and refusal.reject_term == 0 and refusal.reject_hint == 10
    assert acceptor.promised == promised
    assert acceptor.counters["promises_refused_for_snapshot"] == 1
    assert candidate.role == Role.CANDIDATE, "the refusal must not count as a promise"
    (request,) = [m for m in net.sent if m.type == MT.CATCHUP_REQUEST and m.src == 3]
    assert (request.dst, request.index) == (2, 1)


def test_a_candidate_behind_a_trim_catches_up_by_snapshot_then_wins() -> None:
    net = Net()
    net.elect(1)
    net.cores[1].propose([b"c%d" % i for i in range(10)])
    net.run(drop=to(3))
    net.snapshot(1)
    net.snapshot(2)
    isolated = to(1)   # leader 1 is gone: only 2 and 3 take part from here
    net.cores[3].campaign()
    net.run(drop=isolated)
    assert net.installed[3] and net.installed[3][0].index == 10
    assert net.cores[3].commit_index == 10 and net.cores[3].role == Role.CANDIDATE
    net.cores[3].campaign()   # again, now from slot 11
    net.run(drop=isolated)
    assert net.cores[3].role == Role.LEADER
    net.cores[3].propose([b"x"])
    net.run(drop=isolated)
    assert net.applied[2][10:] == [value(net.cores[3].ballot, b"x")[IDENTITY_BYTES:]]


# ---------------------------------------------------------------------- catch-up by snapshot


def test_a_lagging_replica_gets_the_snapshot_in_chunks_and_then_the_slots_after_it() -> None:
    net = Net()
    ballot = net.elect(1)
    leader = net.cores[1]
    leader.propose([b"c%d" % i for i in range(20)])
    net.run(drop=to(2))
    net.snapshot(1, compact_to=15)
    # While node 2 waits for the snapshot the leader sends it no ACCEPT for slots it trimmed
    # (nor any: it would have to store a hole for every slot it missed).
    net.sent = []
    lost_once: set[int] = set()

    def lose_second_chunk(m: Any) -> bool:
        if m.type == MT.SNAPSHOT and m.seq == 64 and 64 not in lost_once:
            lost_once.add(64)
            return True
        return False

    net.tick(30, drop=lose_second_chunk)
    accepts_to_2 = [m for m in net.sent if m.type == MT.ACCEPT and m.dst == 2 and m.entries]
    assert all(m.entries[0].index > 20 for m in accepts_to_2)
    follower = net.cores[2]
    (installed,) = net.installed[2]
    assert decode_snapshot(installed.envelope).data == b"state@20" == installed.data
    assert installed.index == 20 and follower.log.first_index == 21
    chunks = [m for m in net.sent if m.type == MT.SNAPSHOT]
    assert len(chunks) > len(installed.envelope) // 64 + 1, "the lost chunk was resent"
    assert leader.counters["snapshots_sent"] == 1 and not leader._snapshot_senders
    # Node 2 counts in phase 2 again: with node 3 down, 1 and 2 still choose.
    leader.propose([b"after"])
    net.run(drop=to(3))
    assert net.applied[2][-1] == b"after" and follower.applied_index == 21
    assert leader.status()["progress"][2]["match"] == 21
    assert ballot == leader.ballot


def test_installing_a_snapshot_keeps_the_accepted_slots_above_it() -> None:
    net = Net()
    ballot = net.elect(1)
    leader = net.cores[1]
    leader.propose([b"c%d" % i for i in range(20)])
    net.run(drop=to(2))
    leader.propose([b"d%d" % i for i in range(5)])   # slots 21..25 reach node 2
    net.run(drop=lambda m: m.dst == 2 and m.type != MT.ACCEPT)
    follower = net.cores[2]
    assert follower.slot(21).term == ballot and follower.slot(20) is None
    assert [e.index for e in net.disks[2].entries if e.term] == list(range(21, 26))
    net.snapshot(1, compact_to=20)
    # Node 2's catch-up falls below the leader's first slot: the snapshot at slot 25.
    follower._request_catchup(1, 25, force=True)
    net.run()
    (installed,) = net.installed[2]
    assert installed.index == 25
    # Node 2 held slot 25 accepted: the Ready names that ballot, so the WAL marker matches
    # and Disk.compact (which refuses to forget accepted slots) kept nothing it should not.
    assert installed.term == ballot
    assert follower.commit_index == 25 and net.disks[2].floor == 25


def test_a_hole_at_the_snapshot_slot_is_named_by_ballot_zero_so_the_wal_keeps_what_follows(
) -> None:
    net = Net()
    ballot = net.elect(1)
    leader = net.cores[1]
    leader.propose([b"c%d" % i for i in range(20)])
    net.run(drop=to(2))
    leader.propose([b"d%d" % i for i in range(5)])
    net.run(drop=lambda m: m.dst == 2 and m.type != MT.ACCEPT)
    follower = net.cores[2]
    # A snapshot at slot 20, where node 2 holds a hole, with accepted slots 21..25 after it.
    envelope = encode_snapshot(Snapshot(index=20, term=ballot, data=b"state@20"))
    follower.step(Message(MT.SNAPSHOT, 1, 2, ballot, log_term=ballot, index=20, seq=0,
                          status=len(envelope), context=envelope))
    net.flush(2)
    (installed,) = net.installed[2]
    assert (installed.index, installed.term) == (20, 0)
    assert decode_snapshot(installed.envelope).term == 0   # re-encoded to match
    assert [e.index for e in net.disks[2].entries] == list(range(21, 26))
    assert [follower.slot(s).term for s in range(21, 26)] == [ballot] * 5


def test_an_install_waits_until_its_slot_is_persisted() -> None:
    net = Net()
    ballot = net.elect(1)
    net.cores[1].propose([b"c%d" % i for i in range(20)])
    net.run(drop=to(2))
    follower = net.cores[2]
    envelope = encode_snapshot(Snapshot(index=20, term=ballot, data=b"state@20"))
    # Slot 20 changes (a hole stored below slot 21) and is not yet handed to the driver when
    # the snapshot completes: the ballot the WAL will hold at 20 is not known yet.
    follower.step(Message(MT.ACCEPT, 1, 2, ballot, entries=[Entry(ballot, 21, value(ballot,
                                                                                        b"x"))]))
    follower.step(Message(MT.SNAPSHOT, 1, 2, ballot, log_term=ballot, index=20, seq=0,
                          status=len(envelope), context=envelope))
    assert follower.counters["snapshot_installs_deferred"] == 1
    first = follower.ready()
    assert first.snapshot is None and first.entries[-1].index == 21
    net.disks[2].save(first.entries, first.hard_state)
    follower.advance(first)   # now persisted: the install proceeds
    second = follower.ready()
    assert second.snapshot is not None and (second.snapshot.index, second.snapshot.term) == (
        20, 0)
    net.disks[2].save_snapshot(second.snapshot)
    net.disks[2].compact(20, second.snapshot.term)   # keeps slot 21 (else Disk raises)
    assert [e.index for e in net.disks[2].entries] == [21]


def test_a_corrupt_snapshot_is_never_installed_and_is_asked_for_again() -> None:
    net = Net()
    ballot = net.elect(1)
    follower = net.cores[2]
    envelope = bytearray(encode_snapshot(Snapshot(index=5, term=ballot, data=b"state@5")))
    envelope[-1] ^= 0xFF
    follower.step(Message(MT.SNAPSHOT, 1, 2, ballot, log_term=ballot, index=5, seq=0,
                          status=len(envelope), context=bytes(envelope)))
    ready = follower.ready()
    assert ready.snapshot is None and follower.commit_index == 0
    (again,) = [m for m in ready.messages if m.type == MT.SNAPSHOT_RESPONSE]
    assert again.reject and again.seq == 0


def test_a_snapshot_above_max_snapshot_bytes_is_refused_and_the_transfer_stops() -> None:
    net = Net(limits=Limits(max_snapshot_chunk_bytes=64, max_snapshot_bytes=60))
    net.elect(1)
    leader = net.cores[1]
    leader.propose([b"c%d" % i for i in range(5)])
    net.run(drop=to(2))
    net.snapshot(1)
    net.cores[2]._request_catchup(1, 5, force=True)
    net.run()
    assert net.cores[2].commit_index == 0 and not leader._snapshot_senders
    assert leader.ignored["snapshot refused by receiver"] == 1


# ---------------------------------------------------------------------- restart


def test_restart_from_a_snapshot_and_the_slots_stored_after_it() -> None:
    ballot = make_ballot(3, 1)
    entries = [Entry(ballot, slot, value(ballot, b"v%d" % slot)) for slot in range(16, 26)]
    core = PaxosCore(config(2), HardState(term=ballot, commit=22), entries, applied=20,
                     snapshot=Snapshot(index=20, term=ballot, data=b"state@20"),
                     log_start=(15, ballot))
    assert (core.log.first_index, core.last_index, core.commit_index) == (16, 25, 22)
    assert core.log.term(15) == ballot and core.slot(15) is None
    ready = core.ready()
    assert [e.index for e in ready.committed_entries] == [21, 22]
    # Slots 23..25 are accepted, not known chosen: a promise from slot 23 reports them.
    core.advance(ready)
    candidate_ballot = make_ballot(4, 3)
    core.step(Message(MT.PREPARE, 3, 2, candidate_ballot, index=23))
    (promise,) = [m for m in core.ready().messages_after_persist if m.type == MT.PROMISE]
    assert [e.index for e in promise.entries] == [23, 24, 25] and not promise.reject
    # ... and one from below the first stored slot says "snapshot".
    core.step(Message(MT.PREPARE, 3, 2, make_ballot(5, 3), index=10))
    (refusal,) = [m for m in core.ready().messages_after_persist if m.type == MT.PROMISE]
    assert refusal.reject and refusal.reject_term == 0


def test_restart_after_a_crash_between_snapshot_file_and_commit_trims_unchosen_slots() -> None:
    # A snapshot at 20 was installed from a peer and its file written, but neither the WAL's
    # marker nor commit 20 reached the disk: the stored slots 11..20 may hold values that
    # were never chosen, so they go; the accepted slots after 20 stay.
    old, ballot = make_ballot(1, 3), make_ballot(2, 1)
    entries = [Entry(old, slot, value(old, b"stale")) for slot in range(1, 21)]
    entries += [Entry(ballot, slot, value(ballot, b"v")) for slot in range(21, 24)]
    core = PaxosCore(config(2), HardState(term=ballot, commit=10), entries, applied=20,
                     snapshot=Snapshot(index=20, term=ballot, data=b"state@20"),
                     log_start=(0, 0))
    assert (core.log.first_index, core.commit_index, core.last_index) == (21, 20, 23)
    assert core.log.term(20) == old   # what the WAL holds at 20: its later marker matches


def test_restart_refuses_an_applied_slot_below_the_snapshot() -> None:
    with pytest.raises(ConfigError, match="applied"):
        PaxosCore(config(2), HardState(term=1, commit=20), [], applied=5,
                  snapshot=Snapshot(index=20, term=1, data=b""))


def test_whole_cluster_restart_from_snapshots_and_trimmed_wals_keeps_every_value() -> None:
    sim = PaxosSim(3, seed=21, snapshot_entries=5, snapshot_trailing=2)
    assert sim.run_until(lambda: sim.leader() is not None, 5_000)
    for _ in range(6):
        leader = sim.leader()
        if leader is not None:
            sim.propose(leader, 4)
        sim.run_for(100)
    assert sim.run_until(lambda: all(len(sim.applied[i]) >= 20 for i in sim.node_ids), 5_000)
    before = list(sim.applied[1][:20])
    assert all(sim.disks[i].floor > 0 and sim.disks[i].snapshot for i in sim.node_ids)
    for node in sim.node_ids:
        sim.crash(node)
    for node in sim.node_ids:
        sim.restart(node)
    assert sim.stats["restarts_from_snapshot"] == 3
    leader = None
    while leader is None:
        assert sim.run_until(lambda: sim.leader() is not None, 5_000)
        leader = sim.leader()
    sim.propose(leader, 1)
    assert sim.run_until(lambda: all(len(sim.applied[i]) >= 21 for i in sim.node_ids), 5_000)
    assert all(sim.applied[i][:20] == before for i in sim.node_ids)
    for node in sim.node_ids:
        snapshot = sim.disks[node].snapshot
        assert snapshot is not None
        assert decode_values(snapshot.data) == sim.applied[node][:snapshot.index]


def test_a_crashed_replica_rejoins_by_snapshot_under_loss() -> None:
    sim = PaxosSim(3, seed=22, faults=Faults(loss=0.1, max_delay=10), snapshot_entries=4,
                   snapshot_trailing=0)
    assert sim.run_until(lambda: sim.leader() is not None, 5_000)
    lagging = next(i for i in sim.node_ids if i != sim.leader())
    sim.crash(lagging)
    for _ in range(10):
        leader = sim.leader()
        if leader is not None:
            sim.propose(leader, 3)
        sim.run_for(60)
    sim.restart(lagging)
    target = max(len(sim.applied[i]) for i in sim.node_ids)
    assert sim.run_until(lambda: len(sim.applied[lagging]) >= target, 10_000)
    assert sim.cores[lagging].counters["snapshots_installed"] >= 1
