"""PaxosCore: a sans-IO Multi-Paxos replica (acceptor + proposer + learner) with the RaftCore
surface, so engine.Node drives either protocol (docs/interfaces.md "engine/raft").

Theory of operation
-------------------
Every replica is an acceptor, a learner and (when it leads) the distinguished proposer of
Paxos Made Simple §3. The log is a sequence of slots, each a single-decree Paxos instance.

Ballots. `engine.paxos.ballot`: (round, node_id) packed in a u64, unique per proposer.
HardState.term is the acceptor's *promised* ballot (HardState.vote is unused, 0);
HardState.commit is the chosen-through slot: every slot <= commit is chosen and its value
is held here. `term` (the attribute and status()["term"]) is the promised ballot.

Leader election = phase 1 for every slot at once (PMMC "scout"; Paxos Made Simple §3). A
replica that hears nothing from a leader for a randomized election timeout picks a ballot
above everything it has seen and sends PREPARE(ballot, index = commit + 1). An acceptor
promises if the ballot is not below its promise and answers PROMISE with *every* slot it
holds from `index` on (entries: Entry.term = the ballot it accepted them in) and its
chosen-through `commit` (those entries are known chosen). With a phase-1 quorum of promises
the candidate is leader: for each slot above its commit it re-proposes the known-chosen value,
else the value accepted in the highest ballot (Paxos Made Simple §2.2 P2c), and fills slots
nobody reported with no-ops (PMMC; Paxos Made Live §3), all in its own ballot.

Replication = phase 2. ACCEPT(ballot, entries = a contiguous batch of slots, commit) is
pipelined: up to Limits.max_inflight_messages per acceptor, go-back-N when acks stall (UDP).
An acceptor accepts if the ballot is not below its promise (and then promises it), persists,
and answers ACCEPTED(ballot, seq = first slot, index = last slot) *after* the fsync. An ACCEPT
with no entries is the leader's heartbeat (commit, read context); its ACCEPTED has index 0.
The leader tracks per acceptor the highest slot acked contiguously at its ballot; a slot is
chosen once a phase-2 quorum (the leader's own *persisted* copy included) holds it.

Learning. A slot s <= the leader's commit is chosen with the leader's value, so a follower
marks s chosen when it holds s accepted *in the leader's ballot* (one value per slot per
ballot). Anything else below the leader's commit (a hole, or an older ballot's value) is
fetched with CATCHUP_REQUEST(index = first slot, commit = last slot) from the leader, whose
CATCHUP_RESPONSE(index, entries = chosen slots, commit) installs chosen values. Commit is
piggybacked on ACCEPTs and heartbeats, and CHOSEN(ballot, commit) announces it at once.
Chosen slots are handed to the driver strictly in slot order (Ready.committed_entries).

Value identity (why an 8-byte prefix). The driver resolves a proposal made at
(slot, ballot_at_propose) when the entry applied at that slot carries that `term`, and
fails it as Rejected otherwise. A new leader re-proposing the SAME value under its own ballot
must not turn that into a false Rejected, so a value carries the ballot it was FIRST
proposed in: its identity. Paxos also needs, per slot, the ballot it was *accepted* in. Both
are kept: on the wire and on disk Entry.term = accepted ballot and Entry.data = identity
(8 bytes little-endian) + command; committed entries handed to the driver are
Entry(term = identity, index = slot, data = command, kind). A no-op's identity is the ballot
of the leader that filled the gap, which differs from every earlier proposal's ballot.

Disk layout (what Ready.entries holds). Stored slots are contiguous from the first slot after
the trimmed prefix (slot 1 until a snapshot; see "Snapshots" below), because the WAL
replaces the suffix from the first index of each save and refuses gaps. A slot with nothing
accepted (a hole below a later accepted slot) is stored as Entry(0, slot, b"", NOOP):
ballot 0 never exists, so it means "nothing accepted". When an acceptor changes slot s it
re-saves s .. last (write amplification only for reordered or retransmitted ACCEPTs; a
retransmitted slot already held in the same ballot is not re-saved).

Reads: ReadIndex-style quorum read, not a lease. read_index() records the commit index, then
one heartbeat round must be acknowledged by n - |Q1| + 1 acceptors (the leader included):
that set meets every phase-1 quorum, so no higher ballot can have chosen anything before the
read started, and the read is served once applied >= that index. A new leader serves reads
only after it has chosen every slot it recovered in phase 1. Leases would save the round trip
but need bounded clock drift; the core reads no clock, so quorum reads keep safety without
timing assumptions (the same reason etcd's default is ReadIndex).

Message field uses beyond engine/messages.py: ACCEPTED.seq = first slot of the acked batch;
PROMISE.index echoes PREPARE.index and PROMISE.commit = the acceptor's chosen-through;
a promise holding more than Limits.max_entries_per_message slots is split into PROMISE
messages with seq = part number and status = number of parts (0 or 1: a single message),
and counts once every part arrived (an acceptor's uncommitted window can exceed one message;
refusing such a promise would leave no candidate able to win); PROMISE reject with
reject_term = 0 means "snapshot: I trimmed slots you ask about, catch up first" (reject_hint
= the acceptor's commit; see "Snapshots" below); PREPARE.context = b"force" bypasses leader
stickiness (campaign());
CATCHUP_RESPONSE.index = first slot of entries; READ_INDEX / READ_INDEX_RESPONSE (the Raft
types) carry follower reads with term = ballot. A proposal of a deposed leader may still be
chosen through re-proposal, so its fate is unknown until the slot is chosen (then identity
decides).

Snapshots and log trimming (the RaftCore surface, so engine.Node's snapshot path drives both).
The driver snapshots the state machine at its applied slot and, once the snapshot is durable,
calls `compact(snapshot, compact_to)`: the core keeps the snapshot (its envelope,
engine.replication.snapshot) and drops its slots through compact_to (<= the snapshot's slot, <=
the persisted prefix). Slot s then lives at self._log[s - 1 - self._floor]; `log` is the small
view the driver reads (first_index, persisted_index, term(i)). A Paxos snapshot's `term` is the
ballot this replica's stored copy of slot `index` was accepted in (0: nothing stored): it only
serves the WAL's compaction marker, which keeps the stored slots after `index` iff the WAL
holds slot `index` with that ballot.

Why trimming is safe for an acceptor (Paxos Made Simple §2.3: an acceptor must remember what it
accepted). Only slots <= the snapshot's slot <= applied <= commit are trimmed, and every slot
<= commit is chosen (with the value held here). The accepted values an acceptor reports in
phase 1 only matter for slots the new leader will propose in, i.e. above its commit (P2c).
So an acceptor whose first retained slot is above a PREPARE's index cannot answer for the
slots in between: it must not say "nothing accepted" there (a candidate would fill them with
no-ops over chosen values). It answers PROMISE(reject, reject_term = 0, reject_hint = its
commit) = "snapshot: those slots are chosen, catch up first", does not promise, and is not
counted; the candidate fetches the snapshot from it (CATCHUP_REQUEST below that replica's
first slot starts a snapshot transfer) and campaigns again. Every counted promise therefore
reports every slot from the PREPARE's index, as in plain Multi-Paxos. Slots above a snapshot
are never dropped: installing a snapshot at S keeps the accepted slots above S in memory and,
because the Ready's snapshot carries the ballot the WAL holds at S, on disk too (the WAL
discards its suffix on a ballot mismatch; a forgotten accepted vote could let a later leader
choose another value). If slot S has a change not yet handed to the driver, the install waits
until it is persisted, so the ballot on disk at S is known.

Snapshot transfer is engine.replication.snapshot's chunked SNAPSHOT / SNAPSHOT_RESPONSE
exchange (term = the sender's promised ballot, index + log_term = the snapshot's slot and
ballot, seq = offset, status = total size, context = chunk). Any replica serves it, to a
CATCHUP_REQUEST whose first slot it has trimmed (the values are chosen, so no ballot is
needed). The receiver answers SNAPSHOT_RESPONSE(seq = total) once the snapshot is durable
(after persist), which ends the transfer, then asks for the chosen slots after it. A leader
does not send ACCEPTs for slots it has trimmed: a lagging acceptor's progress skips to the
first retained slot (those slots are chosen; it learns them from the snapshot).

Not implemented yet: reconfiguration.
"""

from __future__ import annotations

import dataclasses
import random
from collections import deque
from enum import StrEnum
from typing import Any, NoReturn

from engine.core import Core
from engine.errors import (
    ConfigError,
    InvariantViolation,
    LogIndexError,
    NotLeader,
)
from engine.messages import Entry, EntryKind, Message, MessageType
from engine.paxos.ballot import NO_BALLOT, ballot_node, format_ballot, next_ballot
from engine.paxos.config import PaxosConfig
from engine.replication.admission import admit_batch
from engine.replication.outbox import Outbox
from engine.replication.reads import ReadIndexQueue
from engine.replication.snapshot import (
    SNAPSHOT_REFUSED,
    SnapshotInbox,
    SnapshotSender,
    encode_snapshot,
    malformed_chunk,
)
from engine.replication.timing import (
    randomized_election_timeout,
    retransmit_ticks,
    retry_ticks,
)
from engine.types import HardState, Ready, Snapshot

_MT = MessageType
_NONE = 0
_NOOP = int(EntryKind.NOOP)
_NORMAL = int(EntryKind.NORMAL)
IDENTITY_BYTES = 8
_FORCE = b"force"
# A promise split in more parts than this is malformed (bounds what a sender can make a
# candidate buffer: parts x max_entries_per_message entries).
_MAX_PROMISE_PARTS = 4_096
_EMPTY_HARD_STATE = HardState()

_PAXOS_TYPES = frozenset({
    _MT.PREPARE, _MT.PROMISE, _MT.ACCEPT, _MT.ACCEPTED, _MT.CHOSEN,
    _MT.CATCHUP_REQUEST, _MT.CATCHUP_RESPONSE, _MT.READ_INDEX, _MT.READ_INDEX_RESPONSE,
    _MT.SNAPSHOT, _MT.SNAPSHOT_RESPONSE,
})
# Sent by the owner of the ballot in `term`: the sender must own it.
_BALLOT_OWNER_TYPES = frozenset({_MT.PREPARE, _MT.ACCEPT, _MT.CHOSEN})
# Replies that promise durable acceptor state: only after the Ready's fsync (Paxos Made
# Simple §2.3: an acceptor must remember what it promised and accepted). PREPARE carries the
# candidate's own promise, so it waits for that fsync too.
_AFTER_PERSIST = frozenset({_MT.PROMISE, _MT.ACCEPTED, _MT.PREPARE})


class Role(StrEnum):
    FOLLOWER = "follower"
    CANDIDATE = "candidate"
    LEADER = "leader"

    def __str__(self) -> str:
        return self.value


def _hole(slot: int) -> Any:
    return Entry(NO_BALLOT, slot, b"", _NOOP)


class _Peer:
    """The leader's view of one acceptor's phase-2 progress in the leader's ballot."""

    __slots__ = ("match", "next", "inflight", "acked", "progress_tick", "recent_active",
                 "read_ack")

    def __init__(self, match: int, ticks: int) -> None:
        self.match = match              # every slot in (phase-2 start, match] acked
        self.next = match + 1           # next slot to send
        self.inflight: deque[int] = deque()   # last slot of each unacked ACCEPT, in order
        self.acked: dict[int, int] = {}       # out-of-order acked ranges first -> last
        self.progress_tick = ticks
        self.recent_active = True
        self.read_ack = 0

    def ack(self, lo: int, hi: int, max_ranges: int) -> bool:
        """Records that slots lo..hi were accepted; True if match advanced."""
        if hi <= self.match:
            return False
        if lo > self.match + 1:
            if len(self.acked) < max_ranges:
                self.acked[lo] = max(self.acked.get(lo, 0), hi)
            return False
        self.match = hi
        merged = True
        while merged and self.acked:
            merged = False
            for first in list(self.acked):
                last = self.acked[first]
                if first <= self.match + 1:
                    del self.acked[first]
                    if last > self.match:
                        self.match = last
                        merged = True
        inflight = self.inflight
        while inflight and inflight[0] <= self.match:
            inflight.popleft()
        if self.next <= self.match:
            self.next = self.match + 1
        return True

    def go_back(self, ticks: int) -> None:
        """Go-back-N after a stall: resend everything above match."""
        self.next = self.match + 1
        self.inflight.clear()
        self.acked.clear()
        self.progress_tick = ticks

    def skip_to(self, floor: int) -> None:
        """The leader trimmed its slots through `floor`: they are chosen, so this acceptor
        need not accept them (it learns them from a snapshot); count them as matched, which
        cannot choose anything (floor <= the leader's commit), and send from floor + 1."""
        if self.match < floor:
            self.match = floor
            for first in [f for f, last in self.acked.items() if last <= floor]:
                del self.acked[first]
            inflight = self.inflight
            while inflight and inflight[0] <= floor:
                inflight.popleft()
        if self.next <= floor:
            self.next = floor + 1


class SlotLogView:
    """What engine.Node's snapshot path reads of a core's log (RaftLog's names): the first
    retained slot, the prefix persisted as it is in memory, and each slot's stored ballot."""

    __slots__ = ("_core",)

    def __init__(self, core: PaxosCore) -> None:
        self._core = core

    @property
    def first_index(self) -> int:
        return self._core._floor + 1

    @property
    def last_index(self) -> int:
        return self._core.last_index

    @property
    def persisted_index(self) -> int:
        return self._core._persisted_index()

    def term(self, index: int) -> int:
        """The ballot slot `index` is stored with (0: a hole); valid from first_index - 1 to
        last_index (LogIndexError otherwise)."""
        return self._core._stored_ballot(index)


class PaxosCore:
    """One Multi-Paxos replica, restartable from its persisted HardState and slots."""

    def __init__(
        self,
        config: PaxosConfig,
        hard_state: HardState = _EMPTY_HARD_STATE,
        entries: list[Any] | None = None,
        applied: int = 0,
        snapshot: Snapshot | None = None,
        log_start: tuple[int, int] | None = None,
    ) -> None:
        """hard_state and entries come from storage; snapshot is the newest durable snapshot
        (the state machine was restored from it, so applied >= snapshot.index); log_start is
        the (slot, ballot) the stored entries follow (default: the snapshot's, else (0, 0))."""
        self.config = config
        self.node_id = config.node_id
        self.voters: tuple[int, ...] = tuple(sorted(config.voters))
        self.peers: tuple[int, ...] = tuple(v for v in self.voters if v != self.node_id)
        self._timing = config.timing
        self._limits = config.limits
        self._q1 = config.q1
        self._q2 = config.q2
        self._read_quorum = config.read_quorum
        self._rng = random.Random(f"paxos:{config.seed}:{config.node_id}")

        # Slot s lives at self._log[s - 1 - self._floor]; None = nothing accepted (a hole).
        # Slots <= _floor were trimmed (covered by the snapshot); _floor_ballot is the ballot
        # slot _floor was stored with (the WAL's compaction marker).
        self._snapshot: Snapshot | None = None
        self._snapshot_envelope = b""
        self.snapshot_index = 0
        self.snapshot_term = 0
        if snapshot is not None:
            self._set_snapshot(snapshot)
        self._floor, self._floor_ballot, self._log, commit = self._restore_log(
            list(entries or []), hard_state, applied, snapshot, log_start)
        self.promised = hard_state.term
        self.commit_index = commit
        self.applied_index = applied
        self._applying = applied  # handed to the driver; applied <= _applying <= commit
        self._unstable_from = self.last_index + 1
        self._hard_state_emitted = HardState(self.promised, _NONE, hard_state.commit)
        # (first slot saved, last slot saved, ballot if saved as leader) per Ready handed out,
        # for advance() and persisted_index.
        self._persist_marks: deque[tuple[int, int, int]] = deque()
        self.log = SlotLogView(self)

        self.role = Role.FOLLOWER
        self.leader_id = _NONE
        self.ballot = NO_BALLOT        # our own ballot while candidate or leader
        self._max_seen = self.promised
        self._outbox = Outbox(_AFTER_PERSIST)
        self._send = self._outbox.send

        self._ticks = 0
        self._election_elapsed = 0
        self._heartbeat_elapsed = 0
        self._randomized_election_timeout = 0
        # Candidate: promises by acceptor -> (its commit, its entries from prepare index).
        self._prepare_index = 0
        self._promises: dict[int, tuple[int, list[Any]]] = {}
        # Multi-message promises (PROMISE.seq / .status) being received: per sender, the
        # number of parts and the parts so far (reset with every campaign).
        self._promise_parts: dict[int, tuple[int, dict[int, list[Any]]]] = {}
        # Leader.
        self._peers: dict[int, _Peer] = {}
        self._self_match = 0
        self._phase2_start = 0
        self._recovered_end = 0
        self._uncommitted_bytes = 0
        # Quorum reads: a round per read; reads wait in `deferred` until every slot
        # recovered in phase 1 is chosen (see "Reads").
        self._reads = ReadIndexQueue(self.node_id, self._send, config.limits.max_pending_proposals)
        # Learner catch-up: the highest chosen-through announced to us and the tick of the
        # outstanding request (one at a time, retried).
        self._known_commit = self.commit_index
        self._catchup_sent_tick: int | None = None
        # Snapshot transfer: ours to peers whose catch-up fell below our first slot (one per
        # peer), the envelope being received, a verified one waiting for its slot to be
        # persisted (see "Snapshots"), and the one for the driver to install (Ready.snapshot)
        # with the replica that sent it (answered once the install is durable).
        self._snapshot_senders: dict[int, SnapshotSender] = {}
        # A second sender (the leader and a replica answering our catch-up request) is
        # refused while the transfer in progress advanced within an election timeout.
        self._snapshot_inbox = SnapshotInbox(config.limits.max_snapshot_bytes,
                                             exclusive_ticks=config.timing.election_timeout_ticks)
        self._snapshot_waiting: tuple[Snapshot, int] | None = None
        self._pending_snapshot: Snapshot | None = None

        self.ignored: dict[str, int] = {}
        self.counters: dict[str, int] = {
            "campaigns": 0, "leader_changes": 0, "reproposals": 0, "noop_fills": 0,
            "catchup_requests": 0, "catchup_entries": 0, "go_back": 0, "promises": 0,
            "compactions": 0, "snapshots_sent": 0, "snapshot_chunks_sent": 0,
            "snapshot_retransmits": 0, "snapshots_installed": 0, "snapshot_installs_deferred": 0,
            "promises_refused_for_snapshot": 0, "peers_resumed_after_trim": 0,
        }
        self._promised_checked = self.promised
        self._commit_checked = self.commit_index
        self._reset_election_timeout()
        self._maybe_check_invariants()

    @staticmethod
    def _restore_log(
        entries: list[Any], hard_state: HardState, applied: int, snapshot: Snapshot | None,
        log_start: tuple[int, int] | None,
    ) -> tuple[int, int, list[Any], int]:
        """(floor, floor ballot, slots after the floor, commit) from what storage recovered."""
        if log_start is None:
            log_start = (snapshot.index, snapshot.term) if snapshot is not None else (0, 0)
        floor, floor_ballot = log_start
        snapshot_index = 0 if snapshot is None else snapshot.index
        if floor > snapshot_index:
            raise ConfigError(f"stored slots start after {floor}, past snapshot {snapshot_index}")
        commit = max(hard_state.commit, snapshot_index)
        log: list[Any] = []
        for position, entry in enumerate(entries):
            if entry.index != floor + position + 1:
                raise ConfigError(
                    f"paxos slots must be contiguous from {floor + 1}: slot {entry.index} at "
                    f"{position}"
                )
            if entry.term == NO_BALLOT:
                log.append(None)
            elif len(entry.data) < IDENTITY_BYTES or (
                    entry.index > commit and entry.term > hard_state.term):
                # (Chosen slots installed by catch-up keep their source's ballot.)
                raise ConfigError(f"stored slot {entry.index} is malformed ({entry!r})")
            else:
                log.append(entry)
        if snapshot_index > floor and (snapshot_index > hard_state.commit
                                       or snapshot_index > floor + len(log)):
            # A snapshot installed from a peer whose commit (and WAL marker) did not reach the
            # disk before a crash: the stored slots through it may hold values that were never
            # chosen, so they are trimmed (the slots after it are kept: accepted votes). Also
            # a snapshot beyond every stored slot: the slots restart after it.
            cut = snapshot_index - floor
            if cut <= len(log):
                stored = log[cut - 1]
                floor_ballot = NO_BALLOT if stored is None else stored.term
            else:
                floor_ballot = snapshot.term if snapshot is not None else 0
            del log[:cut]
            floor = snapshot_index
        if commit > floor + len(log) or any(e is None for e in log[:commit - floor]):
            raise ConfigError(f"persisted commit {commit} covers unknown slots")
        if not max(floor, snapshot_index) <= applied <= commit:
            raise ConfigError(
                f"applied {applied} outside [{max(floor, snapshot_index)}, commit {commit}]")
        return floor, floor_ballot, log, commit

    # ------------------------------------------------------------------ public surface

    @property
    def term(self) -> int:
        """The promised ballot (RaftCore.term's counterpart)."""
        return self.promised

    @property
    def last_index(self) -> int:
        return self._floor + len(self._log)

    def tick(self) -> None:
        """One logical tick: the leader's heartbeat timer, everyone else's election timer."""
        self._ticks += 1
        self._maybe_install_waiting_snapshot()
        if self.role == Role.LEADER:
            self._tick_leader()
        else:
            self._tick_election()
        self._maybe_retry_catchup()
        self._tick_snapshot_senders()
        self._maybe_check_invariants()

    def step(self, message: Any) -> None:
        """One message from the network; never raises on remote input (drops and counts)."""
        self._maybe_install_waiting_snapshot()
        reason = self._ignore_message(message)
        if reason is None:
            self._step(message)
        else:
            self._count_ignored(reason)
        self._maybe_check_invariants()

    def campaign(self) -> None:
        """Start phase 1 now with a ballot above any seen (benchmarks, tests, transfers)."""
        self._campaign(force=True)
        self._maybe_check_invariants()

    def propose(self, commands: list[bytes]) -> tuple[int, int, int]:
        """Assigns a batch of commands to the next slots; returns (first, last, ballot)."""
        if self.role != Role.LEADER:
            raise NotLeader(leader_id=self.leader_id or None)
        if not commands:
            raise ValueError("propose needs at least one command")
        batch_bytes = admit_batch(self._limits, commands, self.last_index - self.commit_index,
                                  self._uncommitted_bytes, "slots")
        ballot = self.ballot
        prefix = ballot.to_bytes(IDENTITY_BYTES, "little")
        first = self.last_index + 1
        self._log.extend(
            Entry(ballot, first + i, prefix + command) for i, command in enumerate(commands)
        )
        self._mark_unstable(first)
        self._uncommitted_bytes += batch_bytes
        for peer in self.peers:
            self._send_accepts(peer)
        self._maybe_check_invariants()
        return first, self.last_index, ballot

    def read_index(self, context: bytes) -> None:
        """Starts a linearizable quorum read; the answer arrives as a ReadState."""
        if self.role == Role.LEADER:
            self._reads.check_local()
            self._start_read(self.node_id, context)
        else:
            self._reads.forward(self.leader_id, self.promised, context)
        self._maybe_check_invariants()

    def has_ready(self) -> bool:
        return bool(
            self._pending_snapshot is not None
            or self._reads.heartbeat_due
            or self._outbox.messages
            or self._outbox.messages_after_persist
            or self._reads.states
            or self._unstable_from <= self.last_index
            or self.commit_index > self._applying
            or self.promised != self._hard_state_emitted.term
            or self.commit_index != self._hard_state_emitted.commit
        )

    def ready(self) -> Ready:
        """Everything the driver must persist, send and apply (engine.types.Ready)."""
        reads = self._reads
        if reads.heartbeat_due:
            self._bcast_heartbeat()
        ready = Ready()
        if self._pending_snapshot is not None:
            # Persisted (snapshot file, then the WAL's marker) and restored before anything
            # else in this Ready (engine.types.Ready).
            ready.snapshot, self._pending_snapshot = self._pending_snapshot, None
        hard_state = self._hard_state()
        if hard_state != self._hard_state_emitted:
            # A promise must be durable before anything depends on it (Paxos Made Simple
            # §2.3); the commit index alone is volatile.
            ready.must_sync = hard_state.term != self._hard_state_emitted.term
            ready.hard_state = hard_state
            self._hard_state_emitted = hard_state
        log = self._log
        floor = self._floor
        last = floor + len(log)
        if self._unstable_from <= last:
            lo = self._unstable_from
            ready.entries = [
                e if e is not None else _hole(lo + i)
                for i, e in enumerate(log[lo - 1 - floor:])
            ]
            leading = self.ballot if self.role == Role.LEADER else NO_BALLOT
            self._persist_marks.append((lo, last, leading))
            self._unstable_from = last + 1
            ready.must_sync = True
        ready.messages, ready.messages_after_persist = self._outbox.take()
        if self.commit_index > self._applying:
            hi = min(self.commit_index, self._applying + self._limits.max_apply_batch)
            ready.committed_entries = [
                Entry(int.from_bytes(e.data[:IDENTITY_BYTES], "little"), e.index,
                      e.data[IDENTITY_BYTES:], e.kind)
                for e in log[self._applying - floor:hi - floor]
            ]
            self._applying = hi
        ready.read_states, reads.states = reads.states, []
        return ready

    def advance(self, ready: Ready) -> None:
        """The driver persisted, sent and applied `ready`."""
        if ready.entries:
            if not self._persist_marks:
                raise InvariantViolation("advance() of a Ready this core did not hand out")
            _, last, leading = self._persist_marks.popleft()
            if self.role == Role.LEADER and leading == self.ballot:
                # Our own acceptance counts only once durable (the leader is an acceptor;
                # it writes in parallel with replicating, Raft thesis §10.2.1).
                self._self_match = max(self._self_match, min(last, self.last_index))
        if ready.committed_entries:
            self.applied_index = max(self.applied_index, ready.committed_entries[-1].index)
        if self.role == Role.LEADER:
            self._maybe_commit()
        self._maybe_install_waiting_snapshot()
        self._maybe_check_invariants()

    def compact(self, snapshot: Snapshot, compact_to: int | None = None) -> None:
        """The driver made `snapshot` durable (state machine applied through its slot, WAL
        compaction marker written). Keeps it for replicas that need it and trims the slots
        through compact_to (default and maximum: the snapshot's slot; also capped at the
        persisted prefix, whose stored ballots the WAL's marker names). Safe for the acceptor:
        every trimmed slot is chosen (<= applied <= commit); see "Snapshots" above."""
        if snapshot.index > self.applied_index:
            raise ConfigError(
                f"snapshot at {snapshot.index} beyond applied slot {self.applied_index}")
        if snapshot.index > self.snapshot_index:
            self._set_snapshot(snapshot)
        upto = snapshot.index if compact_to is None else min(compact_to, snapshot.index)
        upto = min(upto, self._persisted_index())
        if upto > self._floor:
            self._floor_ballot = self._stored_ballot(upto)
            del self._log[:upto - self._floor]
            self._floor = upto
            self.counters["compactions"] += 1
        self._maybe_check_invariants()

    def status(self) -> dict[str, Any]:
        status: dict[str, Any] = {
            "node_id": self.node_id,
            "protocol": "paxos",
            "role": str(self.role),
            "term": self.promised,
            "ballot": format_ballot(self.promised),
            "leader_id": self.leader_id,
            "commit_index": self.commit_index,
            "applied_index": self.applied_index,
            "last_index": self.last_index,
            "first_index": self._floor + 1,
            "persisted_index": self._persisted_index(),
            "snapshot_index": self.snapshot_index,
            "snapshot_term": self.snapshot_term,
            "snapshots": {
                "sent": self.counters["snapshots_sent"],
                "installed": self.counters["snapshots_installed"],
                "chunks_sent": self.counters["snapshot_chunks_sent"],
                "retransmits": self.counters["snapshot_retransmits"],
                "transfers_in_progress": len(self._snapshot_senders),
            },
            "phase1_quorum": self._q1,
            "phase2_quorum": self._q2,
            "counters": dict(self.counters),
            "ignored": dict(self.ignored),
        }
        if self.role == Role.LEADER:
            status["progress"] = {
                peer: {"match": pr.match, "next": pr.next, "inflight": len(pr.inflight)}
                for peer, pr in self._peers.items()
            }
            status["recovered_end"] = self._recovered_end
            status["uncommitted_bytes"] = self._uncommitted_bytes
            status["pending_reads"] = self._reads.count()
        return status

    def slot(self, index: int) -> Any:
        """The stored Entry of a slot (accepted ballot, identity-prefixed data) or None
        (nothing accepted, trimmed below the snapshot, or beyond the log)."""
        if self._floor < index <= self.last_index:
            return self._log[index - 1 - self._floor]
        return None

    def _stored_ballot(self, index: int) -> int:
        if index == self._floor:
            return self._floor_ballot
        if not self._floor < index <= self.last_index:
            raise LogIndexError(
                f"slot {index} outside the stored slots [{self._floor}, {self.last_index}]")
        entry = self._log[index - 1 - self._floor]
        return NO_BALLOT if entry is None else int(entry.term)

    def _persisted_index(self) -> int:
        """The longest prefix of slots stored on disk exactly as in memory: below the first
        slot changed since the last Ready and below every Ready still being written."""
        persisted = self._unstable_from - 1
        for first, _, _ in self._persist_marks:
            persisted = min(persisted, first - 1)
        return max(persisted, self._floor)

    # ------------------------------------------------------------------ step: ballot first

    def _ignore_message(self, m: Any) -> str | None:
        if m.type not in _PAXOS_TYPES:
            return "unsupported message type"
        if m.src == self.node_id or m.src not in self.voters:
            return "unknown sender"
        if m.dst != self.node_id:
            return "wrong destination"
        if m.type in _BALLOT_OWNER_TYPES and (m.term <= 0 or ballot_node(m.term) != m.src):
            return "ballot not owned by sender"
        if len(m.entries) > self._limits.max_entries_per_message:
            return "too many entries"
        return None

    def _step(self, m: Any) -> None:
        kind = m.type
        if m.term > self._max_seen:
            self._max_seen = m.term
        if kind == _MT.ACCEPT:
            self._on_accept(m)
        elif kind == _MT.ACCEPTED:
            self._on_accepted(m)
        elif kind == _MT.CHOSEN:
            self._on_chosen(m)
        elif kind == _MT.PREPARE:
            self._on_prepare(m)
        elif kind == _MT.PROMISE:
            self._on_promise(m)
        elif kind == _MT.CATCHUP_REQUEST:
            self._on_catchup_request(m)
        elif kind == _MT.CATCHUP_RESPONSE:
            self._on_catchup_response(m)
        elif kind == _MT.READ_INDEX:
            self._on_read_index(m)
        elif kind == _MT.SNAPSHOT:
            self._on_snapshot(m)
        elif kind == _MT.SNAPSHOT_RESPONSE:
            self._on_snapshot_response(m)
        else:
            self._reads.on_response(m)

    def _on_higher_ballot(self, ballot: int) -> None:
        """A ballot above ours exists: a candidate or leader of a lower ballot cannot win
        any more (its phase 1 or 2 is refused by the acceptors that promised it)."""
        if ballot > self._max_seen:
            self._max_seen = ballot
        if self.role != Role.FOLLOWER and ballot > self.ballot:
            self._become_follower(_NONE)

    # ------------------------------------------------------------------ phase 1

    def _tick_election(self) -> None:
        self._election_elapsed += 1
        if self._election_elapsed >= self._randomized_election_timeout:
            self._campaign(force=False)

    def _campaign(self, force: bool) -> None:
        self._become_follower(_NONE)
        ballot = next_ballot(max(self.promised, self._max_seen), self.node_id)
        self.role = Role.CANDIDATE
        self.ballot = ballot
        self.promised = ballot  # our own promise, persisted before PREPARE goes out
        self._max_seen = ballot
        self.counters["campaigns"] += 1
        self._prepare_index = self.commit_index + 1
        self._promises = {self.node_id: (self.commit_index, [])}  # own slots read at the end
        self._promise_parts = {}
        if len(self._promises) >= self._q1:
            self._become_leader()
            return
        context = _FORCE if force else b""
        for peer in self.peers:
            self._send(Message(_MT.PREPARE, self.node_id, peer, ballot,
                               index=self._prepare_index, commit=self.commit_index,
                               context=context))

    def _on_prepare(self, m: Any) -> None:
        """Paxos Made Simple §2.2 phase 1(b): promise ballots not below any promised."""
        ballot = m.term
        if ballot < self.promised:
            self._send(Message(_MT.PROMISE, self.node_id, m.src, ballot, index=m.index,
                               reject=True, reject_term=self.promised))
            return
        if ballot > self.promised and m.context != _FORCE and self._leader_is_live(m.src):
            # Leader stickiness (Raft thesis §4.2.3 analogue): a replica that hears from a
            # live leader does not let a partitioned replica's new ballot depose it.
            self._count_ignored("prepare while the leader is live")
            return
        if m.index < 1:
            self._count_ignored("malformed prepare")
            return
        if m.index <= self._floor:
            # We trimmed slots the candidate asks about: they are chosen, but we can no
            # longer report what we accepted there, and "nothing accepted" would let it fill
            # them with no-ops. Say "snapshot" (catch up first) and do not promise, so this
            # reply is never counted in its phase-1 quorum (see "Snapshots" above).
            self.counters["promises_refused_for_snapshot"] += 1
            self._send(Message(_MT.PROMISE, self.node_id, m.src, ballot, index=m.index,
                               reject=True, reject_term=NO_BALLOT,
                               reject_hint=self.commit_index))
            return
        if ballot > self.promised:
            self.promised = ballot
            self._on_higher_ballot(ballot)
            self.leader_id = _NONE
            self._election_elapsed = 0
        held = [e for e in self._log[m.index - 1 - self._floor:] if e is not None]
        self.counters["promises"] += 1
        per_message = self._limits.max_entries_per_message
        if len(held) <= per_message:
            self._send(Message(_MT.PROMISE, self.node_id, m.src, ballot, index=m.index,
                               commit=self.commit_index, entries=held))
            return
        # More accepted slots than one message may carry: send the promise in parts (see
        # the module docstring); the candidate needs all of them (P2c needs every slot).
        parts = -(-len(held) // per_message)
        for part in range(parts):
            self._send(Message(_MT.PROMISE, self.node_id, m.src, ballot, index=m.index,
                               commit=self.commit_index, seq=part, status=parts,
                               entries=held[part * per_message:(part + 1) * per_message]))

    def _leader_is_live(self, candidate: int) -> bool:
        if self.role == Role.LEADER:
            return True
        return (self.leader_id not in (_NONE, candidate)
                and self._election_elapsed < self._timing.election_timeout_ticks)

    def _on_promise(self, m: Any) -> None:
        if self.role != Role.CANDIDATE or m.term != self.ballot:
            if m.reject and m.reject_term > self.ballot:
                self._on_higher_ballot(m.reject_term)
            else:
                self._count_ignored("stale promise")
            return
        if m.reject:
            if m.reject_term > self.ballot:
                self._on_higher_ballot(m.reject_term)
            elif m.reject_term == 0 and m.reject_hint > self.commit_index:
                self._request_catchup(m.src, m.reject_hint, force=True)
            return
        if m.src in self._promises:
            self._count_ignored("duplicate promise")
            return
        for entry in m.entries:
            if (entry.index < m.index or not 0 < entry.term <= m.term
                    or len(entry.data) < IDENTITY_BYTES):
                self._count_ignored("malformed promise")
                return
        entries = self._assemble_promise(m)
        if entries is None:
            return
        self._promises[m.src] = (m.commit, entries)
        if m.commit > self._known_commit:
            self._known_commit = m.commit
        if len(self._promises) >= self._q1:
            self._become_leader()

    def _assemble_promise(self, m: Any) -> list[Any] | None:
        """The promised slots of m.src once every part of its promise arrived, else None."""
        parts = m.status
        if parts <= 1:
            return list(m.entries)
        if m.seq >= parts or parts > _MAX_PROMISE_PARTS:
            self._count_ignored("malformed promise")
            return None
        expected, received = self._promise_parts.setdefault(m.src, (parts, {}))
        if parts != expected:
            self._count_ignored("malformed promise")
            return None
        received[m.seq] = list(m.entries)  # a duplicated part just replaces itself
        if len(received) < parts:
            return None
        del self._promise_parts[m.src]
        return [entry for part in range(parts) for entry in received[part]]

    def _become_leader(self) -> None:
        """Phase 1 is complete: adopt, re-propose and fill (Paxos Made Simple §3, PMMC)."""
        ballot = self.ballot
        start = self.commit_index + 1
        # slot -> (known chosen, accepted ballot, entry)
        best: dict[int, tuple[bool, int, Any]] = {}
        floor = self._floor
        own = [e for e in self._log[start - 1 - floor:] if e is not None]
        promises = list(self._promises.values())
        promises.append((self.commit_index, own))
        for promise_commit, entries in promises:
            for entry in entries:
                slot = entry.index
                if slot < start:
                    continue
                chosen = slot <= promise_commit
                current = best.get(slot)
                if (current is None or (chosen and not current[0])
                        or (not current[0] and not chosen and entry.term > current[1])):
                    best[slot] = (chosen, entry.term, entry)
        end = max(best, default=start - 1)
        prefix = ballot.to_bytes(IDENTITY_BYTES, "little")
        del self._log[start - 1 - floor:]
        for slot in range(start, end + 1):
            found = best.get(slot)
            if found is None:
                self._log.append(Entry(ballot, slot, prefix, _NOOP))
                self.counters["noop_fills"] += 1
            else:
                entry = found[2]
                self._log.append(Entry(ballot, slot, entry.data, entry.kind))
                self.counters["reproposals"] += 1
        self._mark_unstable(start)
        self.role = Role.LEADER
        self.leader_id = self.node_id
        self.counters["leader_changes"] += 1
        self._promises = {}
        self._promise_parts = {}
        self._phase2_start = start
        self._recovered_end = end
        self._self_match = self.commit_index
        self._uncommitted_bytes = 0
        self._heartbeat_elapsed = 0
        self._election_elapsed = 0
        self._peers = {peer: _Peer(self.commit_index, self._ticks) for peer in self.peers}
        for peer in self.peers:
            if not self._send_accepts(peer):
                self._send_heartbeat(peer, b"")

    # ------------------------------------------------------------------ phase 2: acceptor

    def _on_accept(self, m: Any) -> None:
        """Paxos Made Simple §2.2 phase 2(b): accept unless promised a higher ballot."""
        ballot = m.term
        if ballot < self.promised:
            self._send(Message(_MT.ACCEPTED, self.node_id, m.src, ballot, seq=0, index=0,
                               reject=True, reject_term=self.promised, context=m.context))
            return
        entries = m.entries
        if entries and not self._valid_batch(entries, ballot):
            self._count_ignored("malformed accept")
            return
        if ballot > self.promised:
            self.promised = ballot  # accepting a ballot implies promising it
        self._follow(ballot, m.src)
        if entries:
            self._store_accepted(entries)
            self._send(Message(_MT.ACCEPTED, self.node_id, m.src, ballot,
                               seq=entries[0].index, index=entries[-1].index))
        else:
            self._send(Message(_MT.ACCEPTED, self.node_id, m.src, ballot, context=m.context))
        self._learn_commit(m.commit, ballot, m.src, may_catch_up=not entries)

    def _valid_batch(self, entries: Any, ballot: int) -> bool:
        expected = entries[0].index
        if expected < 1:
            return False
        for entry in entries:
            if (entry.index != expected or entry.term != ballot
                    or len(entry.data) < IDENTITY_BYTES):
                return False
            expected += 1
        return True

    def _follow(self, ballot: int, leader: int) -> None:
        if self.role != Role.FOLLOWER and ballot > self.ballot:
            self._become_follower(leader)
        self.leader_id = leader
        self._election_elapsed = 0

    def _store_accepted(self, entries: Any) -> None:
        log = self._log
        floor = self._floor
        last = floor + len(log)
        lo = entries[0].index
        commit = self.commit_index
        if lo == last + 1 and lo > commit:
            log.extend(entries)  # the common case: the next batch, in order
            self._mark_unstable(lo)
            return
        if lo > last + 1:
            log.extend([None] * (lo - last - 1))
            self._mark_unstable(last + 1)
            last = lo - 1
        for entry in entries:
            slot = entry.index
            if slot <= commit:
                continue  # chosen already (or trimmed): the same value (P2c), keep it
            if slot <= last:
                held = log[slot - 1 - floor]
                if held is not None and held.term == entry.term:
                    continue  # one value per slot per ballot: a retransmission
                log[slot - 1 - floor] = entry
            else:
                log.append(entry)
                last = slot
            self._mark_unstable(slot)

    def _learn_commit(self, leader_commit: int, ballot: int, leader: int,
                      may_catch_up: bool) -> None:
        """Slots held in the leader's ballot up to its chosen-through are chosen."""
        if leader_commit > self._known_commit:
            self._known_commit = leader_commit
        log = self._log
        floor = self._floor
        limit = min(leader_commit, floor + len(log))
        commit = self.commit_index
        while commit < limit:
            entry = log[commit - floor]
            if entry is None or entry.term != ballot:
                break
            commit += 1
        self.commit_index = commit
        if may_catch_up and commit < leader_commit:
            self._request_catchup(leader, leader_commit, force=False)

    def _on_chosen(self, m: Any) -> None:
        if m.term < self.promised:
            self._count_ignored("stale chosen")
            return
        self._on_higher_ballot(m.term)
        if self.role == Role.FOLLOWER:
            self._follow(m.term, m.src)
        self._learn_commit(m.commit, m.term, m.src, may_catch_up=True)

    # ------------------------------------------------------------------ phase 2: leader

    def _send_accepts(self, peer: int) -> bool:
        """Fills the peer's window with ACCEPTs (pipelining); True if any was sent."""
        pr = self._peers[peer]
        log = self._log
        floor = self._floor
        if pr.next <= floor:
            # The slots it needs next were trimmed (chosen): it learns them from a snapshot
            # (its catch-up request below our first slot starts one). Until it reports one
            # (SNAPSHOT_RESPONSE or a catch-up request from above our floor) it gets
            # heartbeats and CHOSEN only; ACCEPTs from floor + 1 would make it store a hole
            # for every slot it missed.
            return False
        last = floor + len(log)
        limits = self._limits
        max_inflight = limits.max_inflight_messages
        max_bytes = limits.max_append_bytes
        max_count = limits.max_entries_per_message
        sent = False
        while pr.next <= last and len(pr.inflight) < max_inflight:
            lo = pr.next
            hi = lo
            size = len(log[lo - 1 - floor].data)
            while hi < last and hi - lo + 1 < max_count:
                size += len(log[hi - floor].data)
                if size > max_bytes:
                    break
                hi += 1
            self._outbox.messages.append(Message(
                _MT.ACCEPT, self.node_id, peer, self.ballot, commit=self.commit_index,
                entries=log[lo - 1 - floor:hi - floor]))
            pr.inflight.append(hi)
            pr.next = hi + 1
            sent = True
        return sent

    def _on_accepted(self, m: Any) -> None:
        if m.reject:
            if m.reject_term > self.ballot:
                was_leader = self.role == Role.LEADER
                self._on_higher_ballot(m.reject_term)
                if was_leader:
                    # Preempted (PMMC): run phase 1 again above the ballot that beat us
                    # rather than wait a whole election timeout with no leader.
                    self._campaign(force=False)
            else:
                self._count_ignored("stale accept reject")
            return
        if self.role != Role.LEADER or m.term != self.ballot:
            self._count_ignored("stale accepted")
            return
        pr = self._peers[m.src]
        pr.recent_active = True
        if m.index == 0:  # a heartbeat ack
            if len(m.context) == 8 and self._reads.pending:
                pr.read_ack = max(pr.read_ack, int.from_bytes(m.context, "little"))
                self._advance_reads()
            if pr.match < self.last_index and not pr.inflight:
                self._send_accepts(m.src)
            return
        lo, hi = m.seq, m.index
        if not 1 <= lo <= hi <= self.last_index:
            self._count_ignored("accepted range outside the log")
            return
        if pr.ack(lo, hi, self._limits.max_inflight_messages):
            pr.progress_tick = self._ticks
            self._maybe_commit()
        self._send_accepts(m.src)

    def _maybe_commit(self) -> bool:
        """A slot is chosen once a phase-2 quorum accepted it in our ballot; every slot
        above the phase-2 start carries our ballot, so the q2-th largest match is chosen."""
        matches = [self._self_match]
        matches.extend(pr.match for pr in self._peers.values())
        matches.sort(reverse=True)
        chosen = matches[self._q2 - 1]
        if chosen <= self.commit_index:
            return False
        previous = self.commit_index
        self.commit_index = chosen
        self._known_commit = max(self._known_commit, chosen)
        # Only our own proposals (above the recovered slots) count against the budget.
        own_from = max(previous, self._recovered_end)
        if own_from < chosen:
            self._uncommitted_bytes = max(0, self._uncommitted_bytes - sum(
                len(e.data) - IDENTITY_BYTES
                for e in self._log[own_from - self._floor:chosen - self._floor]))
        if self._reads.deferred and chosen >= self._recovered_end:
            for requester, context in self._reads.take_deferred():
                self._start_read(requester, context)
        for peer in self.peers:
            if not self._send_accepts(peer):
                self._outbox.messages.append(
                    Message(_MT.CHOSEN, self.node_id, peer, self.ballot, commit=chosen))
        return True

    def _tick_leader(self) -> None:
        self._heartbeat_elapsed += 1
        self._election_elapsed += 1
        timing = self._timing
        if self._election_elapsed >= timing.election_timeout_ticks:
            self._election_elapsed = 0
            active = 1 + sum(1 for pr in self._peers.values() if pr.recent_active)
            if active < self._q2:
                # Without a phase-2 quorum for an election timeout we cannot choose anything
                # and may be deposed already: stop claiming leadership (check-quorum).
                self._become_follower(_NONE)
                return
            for pr in self._peers.values():
                pr.recent_active = False
        if self._heartbeat_elapsed >= timing.heartbeat_interval_ticks:
            self._heartbeat_elapsed = 0
            self._recover_stalled()
            self._bcast_heartbeat()

    def _recover_stalled(self) -> None:
        stall_ticks = retry_ticks(self._timing)
        for peer, pr in self._peers.items():
            if pr.match < pr.next - 1 and self._ticks - pr.progress_tick >= stall_ticks:
                pr.go_back(self._ticks)
                self.counters["go_back"] += 1
                self._send_accepts(peer)

    def _bcast_heartbeat(self) -> None:
        reads = self._reads
        reads.heartbeat_due = False
        context = reads.round.to_bytes(8, "little") if reads.pending else b""
        for peer in self.peers:
            self._send_heartbeat(peer, context)

    def _send_heartbeat(self, peer: int, context: bytes) -> None:
        self._outbox.messages.append(Message(
            _MT.ACCEPT, self.node_id, peer, self.ballot, commit=self.commit_index,
            context=context))

    # ------------------------------------------------------------------ catch-up (learners)

    def _request_catchup(self, target: int, hi: int, force: bool) -> None:
        sent = self._catchup_sent_tick
        retry = retry_ticks(self._timing)
        if not force and sent is not None and self._ticks - sent < retry:
            return
        self._catchup_sent_tick = self._ticks
        self.counters["catchup_requests"] += 1
        self._outbox.messages.append(Message(
            _MT.CATCHUP_REQUEST, self.node_id, target, self.promised,
            index=self.commit_index + 1, commit=hi))

    def _maybe_retry_catchup(self) -> None:
        if (self._catchup_sent_tick is not None and self.commit_index < self._known_commit
                and self.leader_id not in (_NONE, self.node_id)):
            self._request_catchup(self.leader_id, self._known_commit, force=False)

    def _on_catchup_request(self, m: Any) -> None:
        lo = m.index
        if lo < 1:
            self._count_ignored("malformed catch-up request")
            return
        floor = self._floor
        if lo <= floor:
            # The slots it wants were trimmed: they are in our snapshot.
            self._start_snapshot_transfer(m.src)
            return
        if self.role == Role.LEADER:
            # It holds every slot below lo chosen: a phase-2 progress waiting for it to learn
            # our trimmed slots (see _send_accepts) may resume after them.
            self._resume_peer(m.src, lo - 1)
        hi = min(m.commit, self.commit_index)
        entries: list[Any] = []
        if lo <= hi:
            limits = self._limits
            budget = limits.max_append_bytes
            count = min(hi - lo + 1, limits.max_entries_per_message)
            size = 0
            for entry in self._log[lo - 1 - floor: lo - 1 - floor + count]:
                size += len(entry.data)
                if entries and size > budget:
                    break
                entries.append(entry)
        self._outbox.messages.append(Message(
            _MT.CATCHUP_RESPONSE, self.node_id, m.src, self.promised, index=lo,
            commit=self.commit_index, entries=entries))

    def _on_catchup_response(self, m: Any) -> None:
        if self.role == Role.LEADER:
            self._count_ignored("catch-up response as leader")
            return
        self._catchup_sent_tick = None
        if m.commit > self._known_commit:
            self._known_commit = m.commit
        entries = m.entries
        if not entries:
            return
        first = entries[0].index
        if first < 1 or first > self.commit_index + 1 or entries[-1].index > m.commit:
            self._count_ignored("catch-up response out of range")
            return
        for offset, entry in enumerate(entries):
            if (entry.index != first + offset or entry.term <= 0
                    or len(entry.data) < IDENTITY_BYTES):
                self._count_ignored("malformed catch-up response")
                return
        log = self._log
        floor = self._floor
        installed = 0
        for entry in entries:
            slot = entry.index
            if slot <= self.commit_index:
                continue
            if slot <= floor + len(log):
                log[slot - 1 - floor] = entry
            else:
                log.append(entry)
            self._mark_unstable(slot)
            self.commit_index = slot
            installed += 1
        self.counters["catchup_entries"] += installed
        if self.commit_index < self._known_commit:
            self._request_catchup(m.src, self._known_commit, force=True)

    # ------------------------------------------------------------------ snapshots

    def _set_snapshot(self, snapshot: Snapshot) -> None:
        if snapshot.envelope and snapshot.data:
            # Only the envelope is sent to peers: do not keep a second copy of the state.
            snapshot = dataclasses.replace(snapshot, data=b"")
        self._snapshot = snapshot
        self._snapshot_envelope = snapshot.envelope
        self.snapshot_index = snapshot.index
        self.snapshot_term = snapshot.term

    def _envelope(self) -> bytes:
        snapshot = self._snapshot
        if snapshot is None:
            return b""
        if not self._snapshot_envelope:
            self._snapshot_envelope = encode_snapshot(snapshot)
        return self._snapshot_envelope

    def _resume_peer(self, peer: int, chosen_through: int) -> None:
        """The leader learnt that `peer` holds every slot through `chosen_through` chosen:
        if its progress waits below our first slot, skip it there and send ACCEPTs again."""
        pr = self._peers.get(peer)
        if pr is None or pr.next > self._floor or chosen_through < self._floor:
            return
        pr.skip_to(min(chosen_through, self.commit_index))
        pr.progress_tick = self._ticks
        self.counters["peers_resumed_after_trim"] += 1
        self._send_accepts(peer)

    def _start_snapshot_transfer(self, peer: int) -> None:
        envelope = self._envelope()
        if not envelope or self.snapshot_index < self._floor:
            # compact() and install keep a snapshot covering the trimmed slots.
            self._fail(f"slots through {self._floor} trimmed without a snapshot covering them")
        sender = self._snapshot_senders.get(peer)
        if sender is not None and sender.index == self.snapshot_index:
            return  # in progress (retransmitted from tick); a catch-up retry changes nothing
        limits = self._limits
        sender = SnapshotSender(self.snapshot_index, self.snapshot_term, envelope,
                                limits.max_snapshot_chunk_bytes,
                                limits.max_snapshot_inflight_chunks, self._ticks)
        self._snapshot_senders[peer] = sender
        self.counters["snapshots_sent"] += 1
        self._send_snapshot_chunks(peer, sender)

    def _send_snapshot_chunks(self, peer: int, sender: SnapshotSender) -> None:
        chunks = sender.chunk_messages(self.node_id, peer, self.promised)
        self.counters["snapshot_chunks_sent"] += len(chunks)
        self._outbox.messages.extend(chunks)

    def _tick_snapshot_senders(self) -> None:
        if not self._snapshot_senders:
            return
        # Lost chunks or acks: go back to the acknowledged offset (UDP). Longer than a round
        # trip; a transfer with no progress for many election timeouts is given up (the
        # receiver's next catch-up request starts a new one).
        retransmit = retransmit_ticks(self._timing)
        give_up = 8 * self._timing.election_timeout_ticks
        for peer, sender in list(self._snapshot_senders.items()):
            if self._ticks - sender.progress_tick >= give_up:
                del self._snapshot_senders[peer]
            elif sender.maybe_retransmit(self._ticks, retransmit):
                self.counters["snapshot_retransmits"] += 1
                self._send_snapshot_chunks(peer, sender)

    def _on_snapshot_response(self, m: Any) -> None:
        sender = self._snapshot_senders.get(m.src)
        if sender is None or m.index != sender.index:
            self._count_ignored("stale snapshot response")
            return
        if m.status == SNAPSHOT_REFUSED:
            # It will never take this snapshot (Limits.max_snapshot_bytes): stop streaming.
            del self._snapshot_senders[m.src]
            self._count_ignored("snapshot refused by receiver")
            return
        if not m.reject and m.seq == sender.total:
            # Installed and durable there (sent after its persist): the transfer is done.
            del self._snapshot_senders[m.src]
            if self.role == Role.LEADER:
                self._resume_peer(m.src, m.index)
            return
        # Any replica may answer a catch-up request with a transfer, so rejects of several
        # chunks can ask for the same offset: start over at most once per offset and
        # retransmit interval, or every chunk of the resent window would rewind it again.
        ignored = sender.on_response(m, self._ticks, retransmit_ticks(self._timing))
        if ignored is not None:
            self._count_ignored(ignored)
            return
        self._send_snapshot_chunks(m.src, sender)

    def _on_snapshot(self, m: Any) -> None:
        """A chunk of a peer's snapshot (chunked transfer: engine.replication.snapshot)."""
        if malformed_chunk(m):
            self._count_ignored("malformed snapshot chunk")
            return
        if self.role == Role.LEADER:
            # A leader knows every chosen slot it needs (its phase 1 recovered them).
            self._count_ignored("snapshot chunk as leader")
            return
        waiting = self._snapshot_waiting
        if m.index <= self.commit_index or (waiting is not None
                                            and waiting[0].index >= m.index):
            # Nothing to install (or already received): tell the sender to stop.
            self._snapshot_inbox.receiver = None
            if m.index <= self.commit_index:
                self._outbox.messages.append(Message(
                    _MT.SNAPSHOT_RESPONSE, self.node_id, m.src, self.promised, index=m.index,
                    seq=m.status))
            return
        # A refused second sender stops; it starts over if our next catch-up request still
        # falls below its first slot.
        reply, snapshot, ignored = self._snapshot_inbox.offer(
            m, self.node_id, self.promised, self._ticks)
        if ignored is not None:
            self._count_ignored(ignored)
        if snapshot is None:
            self._outbox.messages.append(reply)
            return
        self._snapshot_waiting = (snapshot, m.src)
        self._maybe_install_waiting_snapshot()
        if self._snapshot_waiting is not None:
            self.counters["snapshot_installs_deferred"] += 1

    def _maybe_install_waiting_snapshot(self) -> None:
        """Installs a received snapshot once the WAL's ballot at its slot is known: no Ready
        still being written, and slot S unchanged since the last Ready (or beyond the log)."""
        waiting = self._snapshot_waiting
        if waiting is None:
            return
        snapshot, source = waiting
        if snapshot.index <= self.commit_index or self.role == Role.LEADER:
            self._snapshot_waiting = None   # learnt meanwhile (catch-up, phase 1)
            return
        index = snapshot.index
        last = self.last_index
        if self._persist_marks or (index <= last and self._unstable_from <= index):
            return
        self._snapshot_waiting = None
        self._install_snapshot(snapshot, source)

    def _install_snapshot(self, snapshot: Snapshot, source: int) -> None:
        """Every slot through snapshot.index is chosen with the state it holds: trim them,
        keep the accepted slots after it (acceptor state: never forgotten), and hand the
        snapshot to the driver (Ready.snapshot: persisted, then the state machine restored).

        The WAL keeps the stored slots after S only if it holds slot S with the marker's
        ballot, so the Ready's snapshot names the ballot our disk holds at S (the caller made
        sure it is known); re-encoded when it differs from the sender's."""
        index = snapshot.index
        total = len(snapshot.envelope)   # what the sender's transfer counts to
        floor = self._floor
        last = self.last_index
        if index <= last:
            stored = self._stored_ballot(index)
            del self._log[:index - floor]
        else:
            stored = snapshot.term  # nothing stored at or after S: the WAL drops all of it
            self._log = []
        if stored != snapshot.term:
            snapshot = dataclasses.replace(snapshot, term=stored, envelope=b"")
            snapshot = dataclasses.replace(snapshot, envelope=encode_snapshot(snapshot))
        self._floor = index
        self._floor_ballot = stored
        self._unstable_from = max(self._unstable_from, index + 1)
        self.commit_index = index
        self._known_commit = max(self._known_commit, index)
        self.applied_index = self._applying = index
        self._set_snapshot(snapshot)
        self._pending_snapshot = snapshot
        self.counters["snapshots_installed"] += 1
        # Answered once the snapshot is durable: ends the sender's transfer.
        self._outbox.messages_after_persist.append(Message(
            _MT.SNAPSHOT_RESPONSE, self.node_id, source, self.promised, index=index,
            seq=total))
        if self._known_commit > index:
            target = self.leader_id if self.leader_id not in (_NONE, self.node_id) else source
            self._request_catchup(target, self._known_commit, force=True)

    # ------------------------------------------------------------------ reads

    def _on_read_index(self, m: Any) -> None:
        if self.role != Role.LEADER or self._reads.full():
            self._reads.reject(m.src, m.context, self.promised)
            return
        self._start_read(m.src, m.context)

    def _start_read(self, requester: int, context: bytes) -> None:
        reads = self._reads
        if self.commit_index < self._recovered_end:
            # Slots chosen by earlier leaders may still be unknown to us: wait for recovery.
            reads.deferred.append((requester, context))
            return
        reads.round += 1
        reads.wait(reads.round, self.commit_index, requester, context)
        if self._read_quorum <= 1:
            self._advance_reads()
        else:
            reads.heartbeat_due = True

    def _advance_reads(self) -> None:
        acks = [self._reads.round]
        acks.extend(pr.read_ack for pr in self._peers.values())
        acks.sort(reverse=True)
        self._reads.confirm(acks[self._read_quorum - 1], self.ballot)

    # ------------------------------------------------------------------ roles and helpers

    def _become_follower(self, leader_id: int) -> None:
        self._reads.fail_all(self.promised)
        self.role = Role.FOLLOWER
        self.leader_id = leader_id
        self.ballot = NO_BALLOT
        self._promises = {}
        self._promise_parts = {}
        self._peers = {}
        self._recovered_end = 0
        self._uncommitted_bytes = 0
        self._election_elapsed = 0
        self._reset_election_timeout()

    def _reset_election_timeout(self) -> None:
        self._randomized_election_timeout = randomized_election_timeout(self._timing, self._rng)

    def _mark_unstable(self, slot: int) -> None:
        if slot < self._unstable_from:
            self._unstable_from = slot

    def _hard_state(self) -> HardState:
        return HardState(self.promised, _NONE, self.commit_index)

    def _count_ignored(self, reason: str) -> None:
        self.ignored[reason] = self.ignored.get(reason, 0) + 1

    def _maybe_check_invariants(self) -> None:
        if self.config.check_invariants:
            self._check_invariants()

    def _fail(self, what: str) -> NoReturn:
        raise InvariantViolation(
            f"paxos node {self.node_id} ballot {format_ballot(self.promised)}: {what}")

    def _check_invariants(self) -> None:
        """Local invariants; explicit raises so they survive python -O. Runs after every
        input in tests and simulation, so it reads each attribute once and scans only the
        slots that can still change (those above the commit index)."""
        fail = self._fail
        log = self._log
        floor = self._floor
        last = floor + len(log)
        promised, commit = self.promised, self.commit_index
        if promised < self._promised_checked:
            fail(f"promised ballot went back from {format_ballot(self._promised_checked)}")
        self._promised_checked = promised
        if commit < self._commit_checked:
            fail(f"commit went back from {self._commit_checked} to {commit}")
        self._commit_checked = commit
        if not floor <= self.applied_index <= self._applying <= commit <= last:
            fail(f"floor {floor} <= applied {self.applied_index} <= applying {self._applying} "
                 f"<= commit {commit} <= last {last} does not hold")
        # Trimming forgets accepted values, so only chosen slots a snapshot covers may go.
        if floor and not floor <= self.snapshot_index <= commit:
            fail(f"slots through {floor} trimmed; snapshot at {self.snapshot_index}, commit "
                 f"{commit}")
        if self._unstable_from <= floor:
            fail(f"trimmed slot {self._unstable_from} not persisted")
        for offset, entry in enumerate(log[commit - floor:]):
            if entry is not None and entry.term > promised:
                fail(f"slot {commit + offset + 1} accepted in ballot {entry.term} above the "
                     "promise")
        if self.role == Role.LEADER:
            if self.ballot != self.promised or ballot_node(self.ballot) != self.node_id:
                fail("leader does not hold the promise of its own ballot")
            if self.leader_id != self.node_id:
                fail(f"leader names {self.leader_id} as leader")
            # Only slots above the commit index can still change: scanning from there keeps
            # the check O(uncommitted slots) rather than O(slots since the election).
            for slot in range(max(self._phase2_start, self.commit_index + 1), last + 1):
                entry = log[slot - 1 - floor]
                if entry is None or entry.term != self.ballot:
                    fail(f"leader slot {slot} is not in its ballot")
            for peer, pr in self._peers.items():
                if not self._phase2_start - 1 <= pr.match < pr.next <= last + 1:
                    fail(f"progress of {peer}: match {pr.match} next {pr.next}")
            if self._self_match > last:
                fail(f"self match {self._self_match} beyond the log")
        else:
            if self._peers or self._reads.count():
                fail(f"{self.role} keeps leader state")
            if self.leader_id == self.node_id:
                fail(f"{self.role} names itself leader")
            if self.role == Role.CANDIDATE and (
                    self.ballot != self.promised or ballot_node(self.ballot) != self.node_id):
                fail("candidate does not hold the promise of its own ballot")


# The driver's view of this core (engine.core): mypy checks that PaxosCore satisfies it.
_CORE: type[Core] = PaxosCore
