"""RaftCore: the sans-IO Raft state machine (etcd-io/raft's raft.go + rawnode.go, in Python).

Theory of operation
-------------------
Rule 1: every state transition of a Raft node lives in this file. progress.py, log.py and
quorum.py are bookkeeping with no protocol decisions.
Rule 2: no I/O, no clock, no global randomness. Time is `tick()`; the only randomness is the
election timeout, drawn from a random.Random seeded with (config.seed, node_id).

Inputs: `step(message)` (network), `tick()` (timer), `propose(commands)`, `read_index(ctx)`.
Output: a `Ready` (engine.types.Ready) collected by `ready()` and acknowledged by
`advance(ready)` once the driver has done what it asks:
  - `entries` / `hard_state` to persist (one fsync);
  - `messages` may go out at once: the leader replicates in parallel with its own fsync
    (thesis §10.2.1), so its new entries are in `messages` of the same Ready;
  - `messages_after_persist` promise durable state (append acks, vote grants, vote requests
    carrying our own vote) and go out only after that fsync (thesis §3.8);
  - `committed_entries` to apply; `read_states` to serve once applied >= index.
The leader's own match index is its *persisted* index, which moves only in advance().

step() follows etcd's shape: (1) the term (Raft §5.1: a higher term makes us a follower, a
lower term is answered or ignored), (2) role-independent messages (votes), (3) the role's
handler `_step_<role>`, which calls `_on_<message>` handlers. A message that cannot be used
is ignored and counted in `ignored[reason]`; step() never raises on remote input.

Snapshots and compaction (Raft §7, Figure 13). The driver snapshots the state machine at
some applied index and, once the snapshot is durable, calls `compact(snapshot, compact_to)`:
the core keeps the snapshot (its checksummed envelope, engine.replication.snapshot) to send to
followers whose next entry was compacted away, and drops its log through compact_to (<= the
snapshot's index, so trailing entries can stay for followers slightly behind). Such a follower
gets the snapshot in chunks (SnapshotSender / SnapshotReceiver); once the envelope is complete
and its checksum verified the follower installs it: the log restarts after (index, term)
unless it already holds that entry, commit and applied jump to index, and the Ready carries
`snapshot` for the driver to persist (before anything else in that Ready) and to restore the
state machine from. The install is acknowledged (APPEND_RESPONSE) only after that persist.
A restarted core gets the snapshot it recovered (`snapshot=`, with applied >= its index) and
the (index, term) its stored log starts after (`log_start=`).

Leadership transfer (thesis §3.10): `transfer_leadership(target)` makes the leader refuse
proposals (TransferInProgress, retriable), catch the target up, then send TIMEOUT_NOW; the
target campaigns at once, skipping pre-vote, with VOTE context b"transfer" so voters ignore
their leader lease (§4.2.3). The transfer is abandoned after an election timeout.

Lease reads (thesis §6.4.1, only with check_quorum): every heartbeat broadcast is a numbered
round; followers echo its number. A quorum acknowledging round r sent at tick s means no other
leader can be elected before s + election_timeout ticks of the followers' clocks, because they
ignore votes that long after hearing from us (§4.2.3; with lease_read they also ignore them for
an election timeout after a restart, which forgets who the leader was). `lease_read_index()`
returns (commit index, s) while ticks - s < election_timeout - lease_drift_ticks; a
TIMEOUT_NOW sent this term ends lease reads for the term (its votes bypass the followers'
lease).

Membership changes (thesis ch. 4; engine/raft/membership.py). The configuration in force is
the newest CONFIG entry in the log (or the snapshot's, or RaftConfig's bootstrap one): it
takes effect when appended, not when committed (§4.1), and a truncated CONFIG entry reverts
it. `propose_conf_change(ops)` on the leader validates the change (MembershipError), refuses
a second change while one is in flight (ConfChangeInProgress) and appends:
  * learner-only changes: one simple configuration (quorums do not change, §4.2.1);
  * voter changes: C_old,new (§4.3). While joint, elections (JointTally) and commitment
    (config_committed_index) need a majority of both halves; once C_old,new commits the
    leader appends C_new itself (_maybe_leave_joint); a leader that is not a voter of C_new
    keeps leading without counting itself and steps down once C_new commits (§4.2.2),
    handing off first: TIMEOUT_NOW to a voter of C_new holding its whole log (§3.10), if any.
Learners get the log and heartbeats but never vote, count, or campaign; promotion is refused
until the learner's match is within RaftConfig.promote_max_lag_entries of the leader's last
index. Any node may message us (a leader or candidate of a configuration we have not
appended yet is legitimate); a leader ignores responses from non-members.

Witnesses. A witness is a voter that stores metadata only (term, index, kind; NORMAL payloads
dropped, CONFIG entries whole) and receives snapshots without state-machine data. It votes
and acks appends like any voter. Three rules:
  W0  a witness never leads: it never campaigns, ignores TIMEOUT_NOW and cannot be a transfer
      target. So every leader is a full node, and a full node only ever receives entries
      with their payloads, from leaders: a full node holding (i, t) holds its command.
  W1  in each half of every configuration witnesses < full voters (Membership.validate), so
      every majority contains a full voter.
  W2  the leader sends a witness an entry only once another full voter acknowledged it (its
      match), unless no other full voter answered for an election timeout (_witness_send_limit).
Argument, with Raft's failure model (disks survive crashes; an ack follows the fsync):
  (a) No committed entry is lost or overwritten, whatever the witnesses. The proof of Leader
      Completeness (§5.4.3; with joint consensus per half, §4.3) reads only terms and indexes:
      a committed entry e is on a majority, the next leader's voters are a majority, a voter
      in both holds e's (index, term) - a witness does - and votes only for a log at least as
      up to date (§5.4.1), which therefore contains e. By W0 that leader is full, so it holds
      e's command and re-replicates it.
  (b) 2 full copies A, B + witness W tolerate losing any one node, disk included:
      - W lost: A and B form every majority; nothing changes.
      - B (a follower) lost: once B is silent for an election timeout W2 lets the leader
        feed W everything, and {A, W} commits: available. Entries committed from then on have
        one full copy: the cluster is running on its one tolerated failure.
      - A (the leader) lost: while B answered, every commit majority held B or held W, and W
        got each entry only after B acked it (W2; B acks after its fsync), so B holds every
        committed command. W's last entry (i, t) was acked by B in term t, so B's log is at
        least as up to date as W's and W votes for B: B leads with {B, W}, losing nothing.
      Without W2 this loses data: A commits e with {A, W} while B is alive but slow, then A's
      disk dies: e's command was only on A, and W (rightly) refuses B, whose log lacks e, so
      the cluster cannot even elect. The window W2 leaves open - B silent for an election
      timeout, {A, W} commits, then A dies before B catches up - is two failures.

Read states: `ReadState(index, context)` with index > 0 is a confirmed read index (§6.4).
ReadState(0, context) means the request was refused (leadership lost, no leader known,
overload) so the driver can fail it fast; a valid read index is always >= 1 because a leader
serves reads only after committing the no-op of its term.
"""

from __future__ import annotations

import dataclasses
import random
from collections import deque
from collections.abc import Sequence
from enum import StrEnum
from typing import Any

from engine.core import Core, LeadershipTransfer, LeaseReads, MembershipChanges
from engine.errors import (
    ConfChangeInProgress,
    ConfigError,
    DecodeError,
    InvariantViolation,
    MembershipError,
    NotLeader,
    Overloaded,
)
from engine.messages import Entry, EntryKind, Message, MessageType, enum_members
from engine.raft import quorum
from engine.raft.config import RaftConfig
from engine.raft.log import RaftLog
from engine.raft.membership import (
    ConfChangeOp,
    ConfChangeType,
    Membership,
    apply_change,
    decode_membership,
    encode_membership,
)
from engine.raft.progress import Progress, ProgressState
from engine.replication.admission import admit_batch
from engine.replication.outbox import Outbox
from engine.replication.reads import ReadIndexQueue
from engine.replication.snapshot import (
    CORRUPT_SNAPSHOT,
    SNAPSHOT_REFUSED,
    SnapshotInbox,
    SnapshotSender,
    encode_snapshot,
    malformed_chunk,
    with_configuration,
)
from engine.replication.timing import randomized_election_timeout, retransmit_ticks
from engine.types import HardState, Ready, Snapshot

_NORMAL = int(EntryKind.NORMAL)
_CONFIG = int(EntryKind.CONFIG)  # plain ints: compared per appended entry

_NONE = 0  # "no node": no leader known / no vote cast
_EMPTY_HARD_STATE = HardState()

_MT = enum_members(MessageType)  # the members as plain attributes (hot path)
_PS = enum_members(ProgressState)
_RAFT_TYPES = frozenset(
    {
        _MT.VOTE,
        _MT.VOTE_RESPONSE,
        _MT.PRE_VOTE,
        _MT.PRE_VOTE_RESPONSE,
        _MT.APPEND,
        _MT.APPEND_RESPONSE,
        _MT.HEARTBEAT,
        _MT.HEARTBEAT_RESPONSE,
        _MT.READ_INDEX,
        _MT.READ_INDEX_RESPONSE,
        _MT.SNAPSHOT,
        _MT.SNAPSHOT_RESPONSE,
        _MT.TIMEOUT_NOW,
    }
)
# Messages that promise durable state: sent only after the Ready's fsync (thesis §3.8).
_AFTER_PERSIST = frozenset(
    {_MT.APPEND_RESPONSE, _MT.VOTE_RESPONSE, _MT.PRE_VOTE_RESPONSE, _MT.VOTE}
)
_TRANSFER_CONTEXT = b"transfer"
# HEARTBEAT.status of the leader's last heartbeat before it goes quiet (quiescence).
QUIESCE_HEARTBEAT = 1
_PEER_RESPONSES = frozenset(
    {_MT.APPEND_RESPONSE, _MT.HEARTBEAT_RESPONSE, _MT.SNAPSHOT_RESPONSE}
)


def _check_configuration(snapshot: Snapshot) -> None:
    """A received snapshot's configuration must decode (DecodeError otherwise)."""
    if snapshot.configuration:
        decode_membership(snapshot.configuration)


def _metadata_only(entry: Any) -> Any:
    """What a witness stores: term, index and kind; CONFIG entries whole (it must know the
    configuration), every other payload dropped."""
    if entry.kind == EntryKind.CONFIG or not entry.data:
        return entry
    return Entry(entry.term, entry.index, b"", entry.kind)


class TransferInProgress(Overloaded):
    """The leader is handing leadership over (thesis §3.10) and takes no proposals meanwhile:
    a definite no; retry shortly (on the new leader, or here if the transfer is abandoned)."""


class Role(StrEnum):
    FOLLOWER = "follower"
    PRE_CANDIDATE = "pre_candidate"
    CANDIDATE = "candidate"
    LEADER = "leader"

    def __str__(self) -> str:
        return self.value


_ROLE = enum_members(Role)  # Role's members as plain attributes (hot path)


class RaftCore:
    """One Raft node, restartable from its persisted HardState and log entries."""

    def __init__(
        self,
        config: RaftConfig,
        hard_state: HardState = _EMPTY_HARD_STATE,
        entries: list[Any] | None = None,
        applied: int = 0,
        *,
        snapshot: Snapshot | None = None,
        log_start: tuple[int, int] | None = None,
    ) -> None:
        """hard_state and entries come from storage; snapshot is the newest durable snapshot
        (the state machine was restored from it, so applied >= snapshot.index); log_start is
        the (index, term) the stored entries follow (default: the snapshot's, else (0, 0))."""
        self.config = config
        self.node_id = config.node_id
        # Membership (see "Membership changes" above): the configuration history of the log,
        # (index of the CONFIG entry, configuration) ascending; the first item is the base
        # (the snapshot's configuration at its index, else the bootstrap one at 0).
        self._configs: list[tuple[int, Membership]] = [(0, config.bootstrap_membership())]
        self.membership: Membership = self._configs[0][1]
        self.membership_index = 0
        self.voters: tuple[int, ...] = ()
        self.peers: tuple[int, ...] = ()
        self._halves: tuple[frozenset[int], ...] = ()
        self._voter_lists: tuple[tuple[int, ...], ...] = ()
        self._witness_peers: frozenset[int] = frozenset()
        self._witness_envelope: tuple[int, bytes] = (0, b"")
        self._timing = config.timing
        self._limits = config.limits
        self._rng = random.Random(f"raft:{config.seed}:{config.node_id}")

        if log_start is None:
            log_start = (snapshot.index, snapshot.term) if snapshot is not None else (0, 0)
        if snapshot is not None and not log_start[0] <= snapshot.index:
            raise ConfigError(f"log starts after {log_start[0]}, past snapshot {snapshot.index}")
        self.log = RaftLog(list(entries or []), log_start[0] + 1, log_start[1])
        # The newest durable snapshot (Snapshot with its envelope) and its index/term.
        self._snapshot: Snapshot | None = None
        self._snapshot_envelope = b""
        self.snapshot_index = 0
        self.snapshot_term = 0
        if snapshot is not None:
            self._set_snapshot(snapshot)
            if self.log.last_index < snapshot.index:
                # The log is entirely covered: it restarts after the snapshot.
                self.log.restore(snapshot.index, snapshot.term)
            if applied < snapshot.index:
                raise ConfigError(f"applied {applied} below snapshot index {snapshot.index}")
            hard_state = HardState(
                hard_state.term, hard_state.vote, max(hard_state.commit, snapshot.index)
            )
        if hard_state.commit > self.log.last_index:
            raise ConfigError(
                f"persisted commit {hard_state.commit} beyond last log index {self.log.last_index}"
            )
        self._rebuild_configs(snapshot, entries or [])
        if not self.log.first_index - 1 <= applied <= hard_state.commit:
            raise ConfigError(f"applied {applied} outside [0, commit {hard_state.commit}]")
        if hard_state.term < self.log.last_term:
            raise ConfigError(
                f"persisted term {hard_state.term} below last log term {self.log.last_term}"
            )

        self.term = hard_state.term
        self.vote = hard_state.vote
        self.commit_index = hard_state.commit
        self.applied_index = applied
        # Committed entries handed to the driver but not yet acknowledged by advance().
        # Invariant: applied_index <= _applying <= commit_index.
        self._applying = applied
        self.leader_id = _NONE
        self.role = _ROLE.FOLLOWER
        self._hard_state_emitted = HardState(self.term, self.vote, self.commit_index)

        self._outbox = Outbox(_AFTER_PERSIST)
        self._send = self._outbox.send

        self._election_elapsed = 0
        self._heartbeat_elapsed = 0
        # Quiescence: an idle group's time stands still (tick is a no-op) until an input
        # wakes it (wake()); see RaftConfig.quiesce and _can_quiesce. A quiescing core also
        # starts quiet (dormant, CockroachDB's lazily initialised replicas): after a restart
        # of thousands of groups, only those someone uses elect a leader, and nobody's
        # election timeouts fire together.
        self.quiet = config.quiesce
        self._randomized_election_timeout = 0
        self._ticks = 0
        self._progress: dict[int, Progress] = {}
        self._set_membership_fields()
        self._votes = quorum.JointTally(self._halves)
        # Leader: index of its term's no-op and the payload bytes not yet committed.
        self._term_start_index = 0
        self._uncommitted_bytes = 0
        # Leader: followers owed a commit notice (see _bcast_commit), sent on the next tick
        # unless an append or a heartbeat tells them first.
        self._notices_due: set[int] = set()
        # ReadIndex (thesis §6.4): every heartbeat broadcast is a numbered round; a read
        # started while round r was the last sent needs an ack of round >= r + 1. Reads wait
        # in `deferred` until this leader's term has a committed entry (§6.4 step 1).
        self._reads = ReadIndexQueue(self.node_id, self._send, config.limits.max_pending_proposals)
        # Lease reads (§6.4.1): the tick each recent heartbeat round was sent.
        self._round_ticks: deque[tuple[int, int]] = deque()
        timing = self._timing
        self._lease_ticks = timing.election_timeout_ticks - config.lease_drift_ticks_or_default
        # Leadership transfer (§3.10): the target, ticks since it started, and the last term
        # in which we sent TIMEOUT_NOW (no lease reads for the rest of that term).
        self.lead_transferee = _NONE
        self._transfer_elapsed = 0
        self._timeout_now_term = 0
        # Snapshot install: the partial envelope being received, the snapshot for the next
        # Ready, and counters for tests and the simulator's coverage.
        self._snapshot_inbox = SnapshotInbox(config.limits.max_snapshot_bytes)
        self._pending_snapshot: Snapshot | None = None
        self.snapshot_stats = {"sent": 0, "installed": 0, "chunks_sent": 0,
                               "retransmits": 0, "corrupt": 0}

        self.ignored: dict[str, int] = {}
        self._max_term_checked = self.term
        self._commit_checked = self.commit_index
        self._reset_randomized_election_timeout()
        self._maybe_check_invariants()

    # ------------------------------------------------------------------ public surface

    def tick(self) -> None:
        """Advances logical time by one tick (election timer or heartbeat timer); a quiet
        core's time stands still (see `quiet`)."""
        if self.quiet:
            return
        self._ticks += 1
        if self.role == _ROLE.LEADER:
            self._tick_heartbeat()
        else:
            self._tick_election()
        self._maybe_step_down_removed()
        self._maybe_check_invariants()

    def step(self, message: Any) -> None:
        """Advances the state machine with one message from the network."""
        reason = self._ignore_message(message)
        if reason is None:
            if self.quiet and not (message.type == _MT.HEARTBEAT
                                   and message.status == QUIESCE_HEARTBEAT):
                self.wake()
            self._step(message)
            self._maybe_step_down_removed()
        else:
            self._count_ignored(reason)
        self._maybe_check_invariants()

    def propose(self, commands: list[bytes]) -> tuple[int, int, int]:
        """Appends a batch of commands on the leader; returns (first_index, last_index, term)."""
        if self.quiet:
            self.wake()   # a follower too: with no leader known it campaigns in time
        if self.role != _ROLE.LEADER:
            raise NotLeader(leader_id=self.leader_id or None)
        if not commands:
            raise ValueError("propose needs at least one command")
        if self.lead_transferee != _NONE:
            raise TransferInProgress(
                f"leadership transfer to {self.lead_transferee} in progress; retry shortly"
            )
        # Entries of earlier terms are not this leader's proposals (etcd counts the same way).
        pending = self.log.last_index - max(self.commit_index, self._term_start_index - 1)
        batch_bytes = admit_batch(
            self._limits, commands, pending, self._uncommitted_bytes, "entries")
        term = self.term
        # The store's fast path: no Entry object per command (the log keeps terms and payloads
        # in arrays and chunks; Entry objects are made only when entries are read).
        first, last = self.log.append_payloads(term, _NORMAL, commands)
        self._uncommitted_bytes += batch_bytes
        self._bcast_append()
        self._maybe_check_invariants()
        return first, last, term

    def campaign(self) -> None:
        """Starts an election now (etcd's Campaign / MsgHup), with pre-vote if configured."""
        if self.quiet:
            self.wake()
        if self.role != _ROLE.LEADER:
            self._election_elapsed = 0
            self._campaign(pre_vote=self.config.pre_vote)
        self._maybe_check_invariants()

    def read_index(self, context: bytes) -> None:
        """Starts a linearizable read (thesis §6.4); the answer arrives as a ReadState."""
        if self.quiet:
            self.wake()
        if self.role == _ROLE.LEADER:
            self._reads.check_local()
            self._start_read(self.node_id, context)
        else:
            self._reads.forward(self.leader_id, self.term, context)
        self._maybe_check_invariants()

    @property
    def ticks(self) -> int:
        """Ticks since this core was created (its only notion of time)."""
        return self._ticks

    def lease_read_index(self) -> tuple[int, int] | None:
        """Lease read (thesis §6.4.1): (read index, tick the lease's heartbeat round was sent)
        if this leader's lease holds now, else None (use read_index). Serve the read once
        applied >= read index. The core measures the lease in ticks; a driver whose ticks can
        lag real time must also check real time since that tick (engine.aio.node does)."""
        if (
            self.role != _ROLE.LEADER
            or self.quiet   # a quiet leader's ticks stand still: its lease cannot be measured
            or not self.config.check_quorum
            or self.lead_transferee != _NONE
            or self._timeout_now_term == self.term
            or self.log.term(self.commit_index) != self.term  # §6.4 step 1: no-op committed
        ):
            return None
        if self._sole_voter():
            return self.commit_index, self._ticks
        sent = self._lease_round_tick()
        if sent is None or self._ticks - sent >= self._lease_ticks:
            return None
        return self.commit_index, sent

    # ------------------------------------------------------------------ quiescence

    def wake(self) -> None:
        """Leave quiescence: time runs again from a fresh start. A leader needs a new
        heartbeat round before it may serve a lease read (its old rounds are forgotten) and
        counts every peer active for one more election timeout, as a new leader does; a
        follower waits a whole election timeout before it campaigns."""
        if not self.quiet:
            return
        self.quiet = False
        self._election_elapsed = 0
        self._heartbeat_elapsed = 0
        self._round_ticks.clear()
        if self.role == _ROLE.LEADER:
            for pr in self._progress.values():
                pr.recent_active = True

    def _can_quiesce(self) -> bool:
        """Nothing left to do but heartbeats: every entry is this term's or older, committed
        and held by every peer, no read, transfer, configuration change, snapshot or commit
        notice is in flight."""
        log = self.log
        last = log.last_index
        if (self.commit_index != last or log.term(last) != self.term
                or self.lead_transferee != _NONE or self._notices_due
                or self._reads.count() or self.conf_change_pending
                or self._pending_snapshot is not None):
            return False
        return all(pr.match == last and not len(pr.inflights) and pr.state != _PS.SNAPSHOT
                   for pr in self._progress.values())

    def _quiesce(self) -> None:
        """The leader goes quiet and tells every peer to (CockroachDB's quiescence): a
        HEARTBEAT marked QUIESCE_HEARTBEAT with the commit and the last entry, so a follower
        quiets only when its log ends where the leader's does."""
        last = self.log.last_index
        for peer in self.peers:
            self._send(Message(_MT.HEARTBEAT, self.node_id, peer, self.term,
                               log_term=self.term, index=last, commit=self.commit_index,
                               status=QUIESCE_HEARTBEAT))
        self.quiet = True

    def transfer_leadership(self, target: int) -> None:
        """Hands leadership to `target` (thesis §3.10); the outcome shows in role/leader_id.

        Raises NotLeader on a non-leader and ConfigError for a target that is not a voter.
        Transferring to ourselves is a no-op; a new target replaces a pending transfer.
        """
        if self.role != _ROLE.LEADER:
            raise NotLeader(leader_id=self.leader_id or None)
        if self.quiet:
            self.wake()
        if target == self.node_id:
            return
        if target not in self._progress or not self.membership.can_lead(target):
            raise ConfigError(
                f"cannot transfer leadership to {target}: not a voter that can lead "
                "(learners and witnesses cannot)"
            )
        if self.lead_transferee == target:
            return
        self.lead_transferee = target
        self._transfer_elapsed = 0
        pr = self._progress[target]
        if pr.match == self.log.last_index:
            self._send_timeout_now(target)
        else:
            # §3.10 step 1: bring the target's log up to date first.
            self._maybe_send_append(target, send_if_empty=True)
        self._maybe_check_invariants()

    # ------------------------------------------------------------------ membership API

    def propose_conf_change(
        self, change: ConfChangeOp | Sequence[ConfChangeOp], request_id: int = 0
    ) -> tuple[int, int]:
        """Appends a membership change on the leader; returns the (index, term) of its CONFIG
        entry. A change of voters appends C_old,new (thesis §4.3) and, once that commits, the
        leader appends C_new by itself; a learner-only change is one simple entry. The change
        is done when `membership` is not joint and membership_index <= commit_index.

        Raises NotLeader; TransferInProgress; ConfChangeInProgress (another change is not
        committed yet, or this leader has not committed an entry of its term: retry);
        MembershipError for an invalid or unsafe change (definite, nothing appended).
        A non-zero `request_id` (an ADMIN operation's) is recorded in the new configuration
        (Membership.requests), so a replay of the operation is recognised through the log.
        """
        if self.role != _ROLE.LEADER:
            raise NotLeader(leader_id=self.leader_id or None)
        if self.quiet:
            self.wake()
        if self.lead_transferee != _NONE:
            raise TransferInProgress(
                f"leadership transfer to {self.lead_transferee} in progress; retry shortly"
            )
        ops = [change] if isinstance(change, ConfChangeOp) else list(change)
        if self.conf_change_pending:
            # One change in flight (thesis §4.3, etcd pendingConfIndex): a second change
            # decided against an uncommitted configuration could skip a joint step.
            raise ConfChangeInProgress(
                f"configuration at {self.membership_index} not committed (commit "
                f"{self.commit_index}{', joint' if self.membership.joint else ''}); retry"
            )
        if self.commit_index < self._term_start_index:
            # etcd: a new leader may still hold an uncommitted config of an earlier term.
            raise ConfChangeInProgress("this leader has not committed an entry of its term yet")
        new = apply_change(self.membership, ops).with_request(request_id)
        for op in ops:
            if op.type == ConfChangeType.PROMOTE:
                self._check_caught_up(op.node_id)
        index = self._append_config(new)
        self._bcast_append()
        self._maybe_check_invariants()
        return index, self.term

    @property
    def conf_change_pending(self) -> bool:
        """A configuration entry is not committed yet, or C_new is still to be appended."""
        return self.membership_index > self.commit_index or self.membership.joint

    @property
    def is_witness(self) -> bool:
        """This node stores log metadata only; its driver applies no NORMAL entries (their
        payloads are empty here) and restores no state machine from snapshots."""
        return self.membership.is_witness(self.node_id)

    @property
    def is_learner(self) -> bool:
        return self.node_id in self.membership.learners

    def configurations(self) -> list[tuple[int, Membership]]:
        """The configuration history the log holds: (index of its CONFIG entry, membership),
        oldest first; the first item is the base (snapshot's or bootstrap's)."""
        return list(self._configs)

    def configuration_at(self, index: int) -> Membership:
        """The configuration in force at `index` (>= the log's first index - 1): what a
        snapshot taken at `index` must carry (Snapshot.configuration =
        encode_membership(core.configuration_at(index)))."""
        for config_index, membership in reversed(self._configs):
            if config_index <= index:
                return membership
        return self._configs[0][1]

    def compact(self, snapshot: Snapshot, compact_to: int | None = None) -> None:
        """The driver made `snapshot` durable (state machine applied through its index, WAL
        compaction marker written). Keeps it for followers that need it and drops the log
        through compact_to (default and maximum: the snapshot's index; it is also capped at
        the persisted prefix, since unpersisted entries are still owed to the driver)."""
        if snapshot.index > self.applied_index:
            raise ConfigError(
                f"snapshot at {snapshot.index} beyond applied index {self.applied_index}"
            )
        if snapshot.index > self.snapshot_index:
            if self.log.term(snapshot.index) not in (0, snapshot.term):
                raise ConfigError(
                    f"snapshot ({snapshot.index}, {snapshot.term}) does not match the log"
                )
            if not snapshot.configuration:
                # A snapshot must carry the configuration as of its index (Raft Figure 13
                # "last config"): fill it in; _envelope() adds it to a given envelope (once,
                # when a follower first needs it: a driver should pass it, see
                # configuration_at).
                snapshot = dataclasses.replace(
                    snapshot,
                    configuration=encode_membership(self.configuration_at(snapshot.index)),
                )
            self._set_snapshot(snapshot)
        upto = snapshot.index if compact_to is None else min(compact_to, snapshot.index)
        upto = min(upto, self.log.persisted_index, self.log.unstable_index - 1)
        self.log.compact(upto)
        self._compact_configs(upto)
        self._maybe_check_invariants()

    def has_ready(self) -> bool:
        return bool(
            self._pending_snapshot is not None
            or self._reads.heartbeat_due
            or self._outbox.messages
            or self._outbox.messages_after_persist
            or self._reads.states
            or self.log.unstable_index <= self.log.last_index
            or self.commit_index > self._applying
            or self._hard_state_changed()
        )

    def _hard_state_changed(self) -> bool:
        # Asked twice per driver turn: the fields are compared without building a HardState.
        emitted = self._hard_state_emitted
        return (self.commit_index != emitted.commit or self.term != emitted.term
                or self.vote != emitted.vote)

    def ready(self) -> Ready:
        """Collects everything the driver must persist, send and apply (see module docstring)."""
        reads = self._reads
        if reads.heartbeat_due:
            self._bcast_heartbeat()
        snapshot, self._pending_snapshot = self._pending_snapshot, None
        hard_state = None
        must_sync = False
        if self._hard_state_changed():
            emitted = self._hard_state_emitted
            hard_state = self._hard_state_emitted = self._hard_state()
            must_sync = hard_state.term != emitted.term or hard_state.vote != emitted.vote
        committed: list[Any] = []
        if self.commit_index > self._applying:
            hi = min(self.commit_index, self._applying + self._limits.max_apply_batch)
            committed = self.log.slice(self._applying + 1, hi + 1)
            self._applying = hi
        messages, messages_after_persist = self._outbox.take()
        ready = Ready(
            hard_state=hard_state, entries=self.log.take_unstable(), messages=messages,
            messages_after_persist=messages_after_persist, committed_entries=committed,
            read_states=reads.states, snapshot=snapshot,
        )
        ready.must_sync = must_sync or bool(ready.entries)
        reads.states = []
        return ready

    def advance(self, ready: Ready) -> None:
        """The driver persisted, sent and applied `ready`."""
        if ready.entries:
            last = ready.entries[-1]
            self.log.persisted_to(last.index, last.term)
        if ready.committed_entries:
            self.applied_index = max(self.applied_index, ready.committed_entries[-1].index)
        if self.role == _ROLE.LEADER and self._maybe_commit():
            # The leader's own fsync can complete a quorum (§10.2.1); tell the followers.
            self._bcast_commit()
        self._maybe_step_down_removed()
        self._maybe_check_invariants()

    def status(self) -> dict[str, Any]:
        status: dict[str, Any] = {
            "node_id": self.node_id,
            "role": str(self.role),
            "term": self.term,
            "vote": self.vote,
            "leader_id": self.leader_id,
            "commit_index": self.commit_index,
            "applied_index": self.applied_index,
            "quiet": self.quiet,
            "last_index": self.log.last_index,
            "last_term": self.log.last_term,
            "persisted_index": self.log.persisted_index,
            "log_truncations": self.log.truncations,
            "first_index": self.log.first_index,
            "snapshot_index": self.snapshot_index,
            "snapshot_term": self.snapshot_term,
            "snapshots": dict(self.snapshot_stats),
            "ignored": dict(self.ignored),
            "membership": self.membership.to_dict(),
            "membership_index": self.membership_index,
            "conf_change_pending": self.conf_change_pending,
            "witness": self.is_witness,
            "learner": self.is_learner,
        }
        if self.role == _ROLE.LEADER:
            status["progress"] = {
                peer: {
                    "match": pr.match,
                    "next": pr.next,
                    "state": pr.state.name.lower(),
                    "inflight": len(pr.inflights),
                }
                for peer, pr in self._progress.items()
            }
            status["uncommitted_bytes"] = self._uncommitted_bytes
            status["pending_reads"] = self._reads.count()
            status["lead_transferee"] = self.lead_transferee
            status["lease"] = self.lease_read_index() is not None
        return status

    # ------------------------------------------------------------------ step: term first

    def _ignore_message(self, m: Any) -> str | None:
        """Why a message cannot be used at all (malformed or misrouted), or None."""
        if m.type not in _RAFT_TYPES:
            return "unsupported message type"
        # Any other node may write to us: a leader or candidate of a configuration we have not
        # appended yet is legitimate (thesis §4.1); leader-side handlers ignore responses from
        # nodes outside the configuration.
        if m.src == self.node_id or m.src <= 0:
            return "unknown sender"
        if m.dst != self.node_id:
            return "wrong destination"
        if m.term <= 0:
            return "zero term"
        return None

    def _step(self, m: Any) -> None:
        # Raft §5.1: terms order everything.
        if m.term > self.term:
            if m.type in (_MT.VOTE, _MT.PRE_VOTE) and self._in_leader_lease(m):
                # Thesis §4.2.3: a node that hears from a live leader disregards votes, so a
                # partitioned node rejoining cannot depose a working leader.
                self._count_ignored("vote while leader lease holds")
                return
            if m.type == _MT.PRE_VOTE:
                pass  # A pre-vote never changes our term (thesis §9.6).
            elif m.type == _MT.PRE_VOTE_RESPONSE and not m.reject:
                pass  # Granted pre-votes carry the future term we asked for.
            elif m.type in (_MT.APPEND, _MT.HEARTBEAT, _MT.SNAPSHOT):
                self._become_follower(m.term, m.src)
            else:
                self._become_follower(m.term, _NONE)
        elif m.term < self.term:
            self._on_stale_term(m)
            return

        if m.type in (_MT.VOTE, _MT.PRE_VOTE):
            self._on_vote(m)
        elif m.type == _MT.READ_INDEX_RESPONSE:
            self._reads.on_response(m)
        elif self.role == _ROLE.LEADER:
            self._step_leader(m)
        elif self.role == _ROLE.FOLLOWER:
            self._step_follower(m)
        else:
            self._step_candidate(m)

    def _in_leader_lease(self, m: Any) -> bool:
        if m.context == _TRANSFER_CONTEXT:
            return False
        timeout = self._timing.election_timeout_ticks
        # With lease reads a restarted node does not know whether it followed a leader whose
        # lease still holds: it waits one election timeout before voting (§6.4.1). Not a node
        # at term 0: it never adopted a term, so it never acknowledged any leader (a term is
        # durable before any answer depends on it) and belongs to no lease's quorum.
        heard_leader = self.leader_id != _NONE or (
            self.config.lease_read and self._ticks < timeout and self.term > 0
        )
        return self.config.check_quorum and heard_leader and self._election_elapsed < timeout

    def _on_stale_term(self, m: Any) -> None:
        if (self.config.check_quorum or self.config.pre_vote) and m.type in (
            _MT.APPEND,
            _MT.HEARTBEAT,
            _MT.SNAPSHOT,
        ):
            # A deposed leader (e.g. back from a partition) learns our term and steps down;
            # with check-quorum/pre-vote it could otherwise never hear it (etcd raft.go).
            self._send(Message(_MT.APPEND_RESPONSE, self.node_id, m.src, self.term))
        elif m.type == _MT.PRE_VOTE:
            # Tell the pre-candidate our term so it can catch up (thesis §9.6).
            self._send(Message(_MT.PRE_VOTE_RESPONSE, self.node_id, m.src, self.term, reject=True))
        else:
            self._count_ignored("stale term")

    def _on_vote(self, m: Any) -> None:
        """Raft §5.2 (one vote per term) and §5.4.1 (only for an up-to-date log)."""
        can_vote = (
            self.vote == m.src
            or (self.vote == _NONE and self.leader_id == _NONE)
            or (m.type == _MT.PRE_VOTE and m.term > self.term)
        )
        response_type = _MT.VOTE_RESPONSE if m.type == _MT.VOTE else _MT.PRE_VOTE_RESPONSE
        if can_vote and self.log.is_up_to_date(m.log_term, m.index):
            self._send(Message(response_type, self.node_id, m.src, m.term))
            if m.type == _MT.VOTE:
                self._election_elapsed = 0
                self.vote = m.src
        else:
            self._send(Message(response_type, self.node_id, m.src, self.term, reject=True))

    # ------------------------------------------------------------------ roles

    def _step_follower(self, m: Any) -> None:
        if m.type == _MT.APPEND:
            self._election_elapsed = 0
            self.leader_id = m.src
            self._on_append(m)
        elif m.type == _MT.HEARTBEAT:
            self._election_elapsed = 0
            self.leader_id = m.src
            self._on_heartbeat(m)
        elif m.type == _MT.SNAPSHOT:
            self._election_elapsed = 0
            self.leader_id = m.src
            self._on_snapshot(m)
        elif m.type == _MT.TIMEOUT_NOW:
            self._on_timeout_now(m)
        elif m.type == _MT.READ_INDEX:
            # Only the leader serves reads; one hop only, so refuse and let the asker retry.
            self._reads.reject(m.src, m.context, self.term)
        else:
            self._count_ignored(f"{MessageType(m.type).name} as follower")

    def _step_candidate(self, m: Any) -> None:
        my_response = (
            _MT.PRE_VOTE_RESPONSE if self.role == _ROLE.PRE_CANDIDATE else _MT.VOTE_RESPONSE
        )
        if m.type == _MT.APPEND:
            self._become_follower(m.term, m.src)  # Raft §5.2: a leader of our term exists.
            self._on_append(m)
        elif m.type == _MT.HEARTBEAT:
            self._become_follower(m.term, m.src)
            self._on_heartbeat(m)
        elif m.type == _MT.SNAPSHOT:
            self._become_follower(m.term, m.src)
            self._on_snapshot(m)
        elif m.type == my_response:
            self._on_vote_response(m)
        elif m.type == _MT.READ_INDEX:
            self._reads.reject(m.src, m.context, self.term)
        else:
            self._count_ignored(f"{MessageType(m.type).name} as {self.role}")

    def _step_leader(self, m: Any) -> None:
        if m.src not in self._progress and m.type in _PEER_RESPONSES:
            self._count_ignored("response from a non-member")
            return
        if m.type == _MT.APPEND_RESPONSE:
            self._on_append_response(m)
        elif m.type == _MT.HEARTBEAT_RESPONSE:
            self._on_heartbeat_response(m)
        elif m.type == _MT.READ_INDEX:
            self._on_read_index(m)
        elif m.type == _MT.SNAPSHOT_RESPONSE:
            self._on_snapshot_response(m)
        else:
            self._count_ignored(f"{MessageType(m.type).name} as leader")

    # ------------------------------------------------------------------ elections

    def _tick_election(self) -> None:
        self._election_elapsed += 1
        if self._election_elapsed >= self._randomized_election_timeout and self._promotable():
            self._election_elapsed = 0
            self._campaign(pre_vote=self.config.pre_vote)
        # A node that may not campaign keeps counting: once it has not heard from a leader
        # for an election timeout it grants votes again (the lease check, thesis §4.2.3).

    def _campaign(self, pre_vote: bool, transfer: bool = False) -> None:
        if not self._promotable():
            # Learners never campaign (thesis §4.2.1); witnesses never lead.
            self._count_ignored("campaign by a learner, witness or non-member")
            return
        if pre_vote:
            self._become_pre_candidate()
            vote_type, vote_term = _MT.PRE_VOTE, self.term + 1
        else:
            self._become_candidate()
            vote_type, vote_term = _MT.VOTE, self.term
        self._votes.record(self.node_id, True)
        if self._votes.result() == quorum.WON:  # a single-node cluster
            if pre_vote:
                self._campaign(pre_vote=False)
            else:
                self._become_leader()
            return
        last_index, last_term = self.log.last_index, self.log.last_term
        context = _TRANSFER_CONTEXT if transfer else b""
        # Every member, learners too: votes count only from the voters of both halves of our
        # configuration (thesis §4.3), but a member we know as a learner may be a voter in a
        # newer configuration we lack (§4.1) and must learn our term, or two candidates that
        # ignore each other's stale requests could step through terms in lockstep for ever.
        for peer in self.peers:
            self._send(
                Message(
                    vote_type, self.node_id, peer, vote_term, log_term=last_term,
                    index=last_index, context=context,
                )
            )

    def _on_vote_response(self, m: Any) -> None:
        if not self._votes.record(m.src, not m.reject):
            self._count_ignored("duplicate vote")
            return
        result = self._votes.result()
        if result == quorum.WON:
            if self.role == _ROLE.PRE_CANDIDATE:
                self._campaign(pre_vote=False)
            else:
                self._become_leader()
        elif result == quorum.LOST:
            self._become_follower(self.term, _NONE)

    def _reset(self, term: int) -> None:
        if term != self.term:
            self.term = term
            self.vote = _NONE
        self._reads.fail_all(self.term)
        self.leader_id = _NONE
        self._election_elapsed = 0
        self._heartbeat_elapsed = 0
        self._reset_randomized_election_timeout()
        self._votes = quorum.JointTally(self._halves)
        self._progress = {}
        self._uncommitted_bytes = 0
        self._notices_due.clear()
        self.lead_transferee = _NONE
        self._transfer_elapsed = 0
        self._round_ticks.clear()

    def _become_follower(self, term: int, leader_id: int) -> None:
        self._reset(term)
        self.leader_id = leader_id
        self.role = _ROLE.FOLLOWER

    def _become_pre_candidate(self) -> None:
        # Thesis §9.6: no term change and no vote until a quorum says we could win.
        self._reads.fail_all(self.term)
        self._votes = quorum.JointTally(self._halves)
        self.leader_id = _NONE
        self.role = _ROLE.PRE_CANDIDATE

    def _become_candidate(self) -> None:
        self._reset(self.term + 1)
        self.vote = self.node_id
        self.role = _ROLE.CANDIDATE

    def _become_leader(self) -> None:
        if not self._promotable():
            raise InvariantViolation(f"node {self.node_id} cannot lead in {self.membership}")
        self._reset(self.term)
        self.leader_id = self.node_id
        self.role = _ROLE.LEADER
        limits = self._limits
        next_index = self.log.last_index + 1
        for peer in self.peers:
            pr = Progress(next_index, limits.max_inflight_messages, limits.max_inflight_bytes)
            pr.recent_active = True
            pr.heard_tick = self._ticks
            self._progress[peer] = pr
        # Raft §5.4.2 / §8: commit an entry of our own term so earlier entries commit too and
        # reads can be served.
        self._term_start_index = next_index
        self.log.append([Entry(self.term, next_index, b"", int(EntryKind.NOOP))])
        self._bcast_append()

    def _reset_randomized_election_timeout(self) -> None:
        self._randomized_election_timeout = randomized_election_timeout(self._timing, self._rng)

    # ------------------------------------------------------------------ follower: log

    def _on_append(self, m: Any) -> None:
        if m.index < self.commit_index:
            # Everything up to our commit is known to match; answer so the leader moves on.
            self._send(
                Message(
                    _MT.APPEND_RESPONSE, self.node_id, m.src, self.term, index=self.commit_index
                )
            )
            return
        reason = self._ignore_append(m)
        if reason is not None:
            self._count_ignored(reason)
            return
        if self.log.match_term(m.index, m.log_term):
            entries = m.entries
            last_new = m.index + len(entries)
            conflict = self.log.find_conflict(entries)
            if conflict:
                if conflict <= self.commit_index:
                    # A leader never overwrites committed entries (Raft §5.4): a safety bug
                    # elsewhere or a forged peer; never apply it.
                    if self.config.check_invariants:
                        raise InvariantViolation(
                            f"node {self.node_id}: append from {m.src} conflicts at {conflict} "
                            f"<= commit {self.commit_index}"
                        )
                    self._count_ignored("append conflicts with committed entry")
                    return
                # Raft §5.3: delete the conflicting entry and all that follow it.
                self._append_from_leader(entries[conflict - m.index - 1 :])
            self._commit_to(min(m.commit, last_new))
            self._send(Message(_MT.APPEND_RESPONSE, self.node_id, m.src, self.term, index=last_new))
            return
        # Raft §5.3 with the fast-backtracking hint (etcd findConflictByTerm): the largest
        # index whose term is <= the leader's previous term may match; skip whole terms.
        hint_index, hint_term = self.log.find_conflict_by_term(
            min(m.index, self.log.last_index), m.log_term
        )
        self._send(
            Message(
                _MT.APPEND_RESPONSE,
                self.node_id,
                m.src,
                self.term,
                index=m.index,
                reject=True,
                reject_hint=hint_index,
                reject_term=hint_term,
            )
        )

    def _ignore_append(self, m: Any) -> str | None:
        """Remote input guard: entries must follow the previous entry, with sane terms."""
        if m.index < 0 or m.log_term < 0 or m.log_term > m.term or m.commit < 0:
            return "malformed append"
        if len(m.entries) > self._limits.max_entries_per_message:
            return "append too long"
        expected_index, previous_term = m.index + 1, m.log_term
        for entry in m.entries:
            if entry.index != expected_index or not previous_term <= entry.term <= m.term:
                return "malformed append entries"
            if entry.kind == _CONFIG:
                try:
                    decode_membership(entry.data)
                except DecodeError:
                    return "malformed configuration entry"
            expected_index += 1
            previous_term = entry.term
        return None

    def _on_heartbeat(self, m: Any) -> None:
        # The leader sends min(match, commit), so the entries it commits here match ours.
        if m.commit > self.log.last_index:
            self._count_ignored("heartbeat commit beyond log")
        else:
            self._commit_to(m.commit)
        if m.status == QUIESCE_HEARTBEAT:
            # Quiet only with a log that ends where the leader's does (Log Matching, §5.3:
            # same index and term), so nothing is owed to us while we sleep.
            log = self.log
            if (self.config.quiesce and m.index == log.last_index
                    and log.term(m.index) == m.log_term and self.commit_index == m.commit):
                self.quiet = True
                self._election_elapsed = 0
            elif self.quiet:
                self.wake()
            return
        if not m.context:
            return  # a commit notice (_bcast_commit): not a heartbeat round, no answer
        self._send(
            Message(_MT.HEARTBEAT_RESPONSE, self.node_id, m.src, self.term, context=m.context)
        )

    def _commit_to(self, index: int) -> None:
        if index > self.commit_index:
            self.commit_index = index

    # ------------------------------------------------------------------ leader: replication

    def _tick_heartbeat(self) -> None:
        self._heartbeat_elapsed += 1
        self._election_elapsed += 1
        if self.lead_transferee != _NONE:
            self._transfer_elapsed += 1
            if self._transfer_elapsed >= self._timing.election_timeout_ticks:
                # §3.10: the target did not take over within an election timeout; resume.
                self.lead_transferee = _NONE
                self._count_ignored("leadership transfer abandoned")
        self._retransmit_snapshots()
        if self._notices_due:
            self._send_due_notices()
        if self._election_elapsed >= self._timing.election_timeout_ticks:
            self._election_elapsed = 0
            if self.config.check_quorum:
                if not self._quorum_active():
                    # Thesis §6.2: without a quorum for an election timeout we may be deposed
                    # already; stop serving.
                    self._become_follower(self.term, _NONE)
                    return
                for pr in self._progress.values():
                    pr.recent_active = False
        if self._heartbeat_elapsed >= self._timing.heartbeat_interval_ticks:
            self._heartbeat_elapsed = 0
            if self.config.quiesce and self._can_quiesce():
                self._quiesce()
                return
            self._recover_stalled_windows()
            self._bcast_heartbeat()

    def _quorum_active(self) -> bool:
        active = [peer for peer, pr in self._progress.items() if pr.recent_active]
        active.append(self.node_id)
        return quorum.has_quorum(self._halves, active)

    def _recover_stalled_windows(self) -> None:
        """A REPLICATE window whose appends were all lost would never be acked: fall back to
        PROBE (resend from match + 1) when acks stopped for the stall period (UDP, not TCP)."""
        stall_ticks = retransmit_ticks(self._timing)
        for pr in self._progress.values():
            if (
                pr.state == _PS.REPLICATE
                and len(pr.inflights)
                and self._ticks - pr.progress_tick >= stall_ticks
            ):
                pr.become_probe()

    def _bcast_append(self) -> None:
        for peer in self.peers:
            self._maybe_send_append(peer, send_if_empty=True)

    def _bcast_commit(self) -> None:
        """The commit index advanced; the followers learn it from the leader (§5.3).

        A follower with entries due gets them, the commit riding along, and a PROBE one its
        probe, as etcd does. A REPLICATE follower with nothing due that holds every committed
        entry is owed a commit notice instead of etcd's empty APPEND: that APPEND's answer
        would tell us nothing new and cost both sides a datagram per commit. The notice is
        not sent now but on the next tick, and only if no append or heartbeat carried the
        commit meanwhile: under a steady load the next append always does, and a follower
        woken for nothing takes a core from the processes on the write path
        (docs/performance.md, "Commit notices"). An idle follower learns the commit at most a
        tick late; a read at it waits for a heartbeat round, which carries the commit anyway
        (§6.4). One still behind learns the commit with its next append, or from the notice its
        ack earns when it reaches the commit index.
        """
        for peer in self.peers:
            pr = self._progress.get(peer)
            if pr is None:
                continue
            if pr.state != _PS.REPLICATE:
                self._maybe_send_append(peer, send_if_empty=True)
            elif (not self._maybe_send_append(peer, send_if_empty=False)
                  and pr.match >= self.commit_index):
                self._notices_due.add(peer)

    def _send_due_notices(self) -> None:
        """Tick: the commit notices no append or heartbeat made unnecessary (_bcast_commit)."""
        for peer in sorted(self._notices_due):  # sorted: the simulator replays exactly
            pr = self._progress.get(peer)
            if pr is not None and pr.match >= self.commit_index:
                self._send_commit_notice(peer)
        self._notices_due.clear()

    def _send_commit_notice(self, peer: int) -> None:
        """A HEARTBEAT without a round context: the follower commits and does not answer.
        Only for a peer known to hold the commit index (so commit = min(match, commit))."""
        self._send(Message(_MT.HEARTBEAT, self.node_id, peer, self.term, commit=self.commit_index))

    def _maybe_send_append(self, peer: int, send_if_empty: bool) -> bool:
        """Sends the next batch of entries to peer unless its window is paused (etcd)."""
        pr = self._progress.get(peer)
        if pr is None or pr.is_paused():
            return False
        log = self.log
        last_index = log.last_index
        if not send_if_empty and pr.next > last_index:
            return False  # nothing due: most calls after an ack (_bcast_commit, the refill)
        if pr.next < log.first_index:
            # Raft §7: the entries this follower needs were compacted; send the snapshot.
            return self._start_snapshot(peer, pr)
        prev_index = pr.next - 1
        max_entries = self._limits.max_entries_per_message
        if peer in self._witness_peers:
            # Metadata only, and no further than another full voter holds (rule W2).
            hi = min(log.last_index, self._witness_send_limit(), pr.next + max_entries - 1)
            entries = [_metadata_only(entry) for entry in log.slice(pr.next, hi + 1)]
        else:
            entries = log.slice(pr.next, last_index + 1, self._limits.max_append_bytes)
            if len(entries) > max_entries:
                entries = entries[:max_entries]
        if not entries and not send_if_empty:
            return False
        # Any append to a follower owed a notice carries the commit (its prev index is at or
        # past the follower's match, which is at or past the commit): no notice needed.
        self._notices_due.discard(peer)
        self._send(
            Message(
                _MT.APPEND,
                self.node_id,
                peer,
                self.term,
                log_term=log.term(prev_index),
                index=prev_index,
                commit=self.commit_index,
                entries=entries,
            )
        )
        if entries:
            last_sent = entries[-1].index
            if peer in self._witness_peers:  # metadata only: what actually went out
                size = sum(len(entry.data) for entry in entries)
            else:  # from the log's offsets, not a pass over the entries
                size = log.payload_bytes(entries[0].index, last_sent + 1)
            pr.sent_entries(last_sent, size, len(entries), self._ticks)
        elif pr.state == _PS.PROBE:
            pr.probe_sent = True
        return True

    def _bcast_heartbeat(self) -> None:
        reads = self._reads
        reads.heartbeat_due = False
        # Every broadcast is a numbered round (ReadIndex confirmation and lease, §6.4).
        reads.round += 1
        self._record_round_tick()
        context = reads.round.to_bytes(8, "little")
        for peer in self.peers:
            pr = self._progress[peer]
            if pr.match >= self.commit_index:
                self._notices_due.discard(peer)  # this heartbeat carries the whole commit
            # etcd: never tell a follower to commit past what it is known to hold.
            self._send(
                Message(
                    _MT.HEARTBEAT,
                    self.node_id,
                    peer,
                    self.term,
                    commit=min(pr.match, self.commit_index),
                    context=context,
                )
            )

    def _on_append_response(self, m: Any) -> None:
        pr = self._progress[m.src]
        pr.recent_active = True
        pr.heard_tick = self._ticks
        if m.index > self.log.last_index:
            self._count_ignored("append response beyond log")
            return
        if m.reject:
            self._on_append_reject(m, pr)
            return
        was_paused = pr.is_paused()
        matched_before = pr.match
        updated = pr.maybe_update(m.index, self._ticks)
        if pr.state == _PS.SNAPSHOT and pr.match >= pr.snapshot.index:
            # The follower installed the snapshot (or has its entries anyway): probe from
            # there; if we compacted past it meanwhile, this starts a newer snapshot (etcd).
            pr.become_probe()
            was_paused = True
        elif not updated:
            self._count_ignored("stale append response")
            return
        if pr.state == _PS.PROBE:
            pr.become_replicate(self._ticks)
        elif pr.state == _PS.REPLICATE:
            pr.inflights.free_le(m.index)
        if m.src == self.lead_transferee and pr.match == self.log.last_index:
            self._send_timeout_now(m.src)  # §3.10: the target is up to date
        notify = False
        if self._maybe_commit():
            self._bcast_commit()
        elif was_paused:
            self._maybe_send_append(m.src, send_if_empty=True)
        else:
            # The commit advanced while this ack was in flight: the follower was told a lower
            # one, and now holds every committed entry (see _bcast_commit).
            notify = matched_before < self.commit_index <= pr.match
        # Fill the window (pipelining, thesis §10.2.2); an append carries the commit too.
        while self._maybe_send_append(m.src, send_if_empty=False):
            notify = False
        if notify:
            self._notices_due.add(m.src)
        if (
            updated and self._witness_peers and m.src not in self._witness_peers
            and self.membership.is_voter(m.src)
        ):
            self._feed_witnesses()

    def _on_append_reject(self, m: Any, pr: Progress) -> None:
        if pr.state == _PS.SNAPSHOT:
            self._count_ignored("append reject during snapshot")
            return
        next_probe = m.reject_hint
        if m.reject_term > 0:
            # The leader skips every entry of a term newer than the follower's hint term.
            next_probe, _ = self.log.find_conflict_by_term(m.reject_hint, m.reject_term)
        if not pr.maybe_decrease_to(m.index, next_probe):
            self._count_ignored("stale append reject")
            return
        if pr.state == _PS.REPLICATE:
            pr.become_probe()
        self._maybe_send_append(m.src, send_if_empty=True)

    def _on_heartbeat_response(self, m: Any) -> None:
        pr = self._progress[m.src]
        pr.recent_active = True
        pr.heard_tick = self._ticks
        pr.probe_sent = False  # etcd: a live follower may be probed again.
        if pr.match < self.log.last_index or pr.state == _PS.PROBE:
            self._maybe_send_append(m.src, send_if_empty=True)
        if len(m.context) == 8:
            acked = int.from_bytes(m.context, "little")
            if acked <= self._reads.round:  # never trust a round we did not send
                pr.read_ack = max(pr.read_ack, acked)
            if self._reads.pending:
                self._advance_reads()

    def _maybe_commit(self) -> bool:
        """Raft §5.3/§5.4.2: commit the largest index on a quorum, only if of our term."""
        # Thesis §4.3: a majority of each half; the leader counts only where it is a voter.
        progress, me, persisted = self._progress, self.node_id, self.log.persisted_index
        index = -1
        for half in self._voter_lists:
            half_index = quorum.committed_index(
                [persisted if v == me else progress[v].match for v in half]
            )
            index = half_index if index < 0 else min(index, half_index)
        if index <= self.commit_index or self.log.term(index) != self.term:
            return False
        previous = self.commit_index
        self.commit_index = index
        self._on_commit_advanced(previous)
        return True

    def _on_commit_advanced(self, previous: int) -> None:
        lo = max(previous + 1, self._term_start_index)
        if lo <= self.commit_index:
            self._uncommitted_bytes -= self.log.payload_bytes(lo, self.commit_index + 1)
            self._uncommitted_bytes = max(self._uncommitted_bytes, 0)
        if previous < self._term_start_index <= self.commit_index:
            # §6.4 step 1: reads wait for the first commit of this leader's term.
            for requester, context in self._reads.take_deferred():
                self._start_read(requester, context)
        self._maybe_leave_joint()

    # ------------------------------------------------------------------ ReadIndex (§6.4)

    def _on_read_index(self, m: Any) -> None:
        if self._reads.full():
            self._reads.reject(m.src, m.context, self.term)
            return
        self._start_read(m.src, m.context)

    def _start_read(self, requester: int, context: bytes) -> None:
        reads = self._reads
        if self.log.term(self.commit_index) != self.term:
            reads.deferred.append((requester, context))
            return
        if self._sole_voter():
            reads.answer(requester, self.commit_index, context, self.term)
            return
        # §6.4 steps 2-3: record the commit index, then confirm leadership with a heartbeat
        # round; one round (sent in the next ready()) serves every read started before it.
        reads.wait(reads.round + 1, self.commit_index, requester, context)
        reads.heartbeat_due = True

    def _advance_reads(self) -> None:
        self._reads.confirm(self._confirmed_round(), self.term)

    def _confirmed_round(self) -> int:
        """The newest heartbeat round acknowledged by a quorum (of both halves, §4.3)."""
        acks = {peer: pr.read_ack for peer, pr in self._progress.items()}
        acks[self.node_id] = self._reads.round
        return int(quorum.config_committed_index(self._halves, acks))

    # ------------------------------------------------------------------ lease (§6.4.1)

    def _record_round_tick(self) -> None:
        ticks = self._round_ticks
        ticks.append((self._reads.round, self._ticks))
        # Rounds older than the lease are useless; keep at most one election timeout of them.
        horizon = self._ticks - self._timing.election_timeout_ticks
        while len(ticks) > 1 and ticks[0][1] < horizon:
            ticks.popleft()

    def _lease_round_tick(self) -> int | None:
        """Send tick of the newest heartbeat round a quorum (us included) acknowledged."""
        confirmed = self._confirmed_round()
        for round_, tick in reversed(self._round_ticks):
            if round_ <= confirmed:
                return tick if round_ == confirmed else None
        return None

    # ------------------------------------------------------------------ transfer (§3.10)

    def _send_timeout_now(self, target: int) -> None:
        # The votes TIMEOUT_NOW triggers bypass the followers' lease: no lease reads for the
        # rest of this term, even if the transfer fails (a late TIMEOUT_NOW can still land).
        self._timeout_now_term = self.term
        self._send(Message(_MT.TIMEOUT_NOW, self.node_id, target, self.term))

    def _on_timeout_now(self, m: Any) -> None:
        if m.src != self.leader_id:
            self._count_ignored("timeout_now from a non-leader")
            return
        if not self._promotable():
            self._count_ignored("timeout_now to a node that cannot lead")
            return
        # §3.10 step 2: campaign at once, no pre-vote, votes marked as a transfer.
        self._campaign(pre_vote=False, transfer=True)

    # ------------------------------------------------------------------ snapshots (§7)

    def _set_snapshot(self, snapshot: Snapshot) -> None:
        self._snapshot = snapshot
        self._snapshot_envelope = b""
        self.snapshot_index = snapshot.index
        self.snapshot_term = snapshot.term

    def _envelope(self) -> bytes:
        snapshot = self._snapshot
        if snapshot is None:
            return b""
        if not self._snapshot_envelope:
            envelope = getattr(snapshot, "envelope", b"")
            if envelope and snapshot.configuration:
                envelope = with_configuration(envelope, snapshot.configuration)
            self._snapshot_envelope = envelope or encode_snapshot(snapshot)
        return self._snapshot_envelope

    def _witness_snapshot_envelope(self) -> bytes:
        """A witness gets the snapshot's metadata only: index, term, configuration."""
        if self._witness_envelope[0] != self.snapshot_index:
            snapshot = self._snapshot
            configuration = snapshot.configuration if snapshot is not None else b""
            envelope = encode_snapshot(
                Snapshot(self.snapshot_index, self.snapshot_term, b"", configuration=configuration)
            )
            self._witness_envelope = (self.snapshot_index, envelope)
        return self._witness_envelope[1]

    def _start_snapshot(self, peer: int, pr: Progress) -> bool:
        envelope = self._envelope()
        if envelope and self.membership.is_witness(peer):
            envelope = self._witness_snapshot_envelope()
        if not envelope or self.snapshot_index < self.log.first_index - 1:
            # Cannot happen for a log compacted by compact(); never send a stale snapshot.
            self._count_ignored("no snapshot covering the compacted log")
            return False
        limits = self._limits
        sender = SnapshotSender(
            self.snapshot_index, self.snapshot_term, envelope,
            limits.max_snapshot_chunk_bytes, limits.max_snapshot_inflight_chunks, self._ticks,
        )
        pr.become_snapshot(sender)
        self.snapshot_stats["sent"] += 1
        self._send_snapshot_chunks(peer, sender)
        return True

    def _send_snapshot_chunks(self, peer: int, sender: SnapshotSender) -> None:
        chunks = sender.chunk_messages(self.node_id, peer, self.term)
        self.snapshot_stats["chunks_sent"] += len(chunks)
        self._outbox.messages.extend(chunks)

    def _retransmit_snapshots(self) -> None:
        # Lost chunks or acks: go back to the acknowledged offset (UDP, not TCP).
        ticks = retransmit_ticks(self._timing)
        for peer, pr in self._progress.items():
            sender = pr.snapshot
            if sender is not None and sender.maybe_retransmit(self._ticks, ticks):
                self.snapshot_stats["retransmits"] += 1
                self._send_snapshot_chunks(peer, sender)

    def _on_snapshot_response(self, m: Any) -> None:
        pr = self._progress[m.src]
        pr.recent_active = True
        pr.heard_tick = self._ticks
        sender = pr.snapshot
        if sender is None or m.index != sender.index:
            self._count_ignored("stale snapshot response")
            return
        if m.status == SNAPSHOT_REFUSED:
            # The follower will never take this snapshot (Limits.max_snapshot_bytes): stop
            # streaming; the next append attempt (heartbeat response) offers it again.
            self._count_ignored("snapshot refused by follower")
            pr.become_probe()
            pr.probe_sent = True
            return
        ignored = sender.on_response(m, self._ticks)
        if ignored is not None:
            self._count_ignored(ignored)
            return
        self._send_snapshot_chunks(m.src, sender)

    def _on_snapshot(self, m: Any) -> None:
        """A chunk of the leader's snapshot (Raft Figure 13, in chunks: replication.snapshot)."""
        if malformed_chunk(m) or not 0 < m.log_term <= m.term:
            self._count_ignored("malformed snapshot chunk")
            return
        if m.index <= self.commit_index:
            # Figure 13: nothing to install; tell the leader where we are.
            self._snapshot_inbox.receiver = None
            self._send(
                Message(_MT.APPEND_RESPONSE, self.node_id, m.src, self.term,
                        index=self.commit_index)
            )
            return
        if self.log.match_term(m.index, m.log_term):
            # Figure 13 step 6: our log holds the snapshot's last entry; keep what follows.
            self._snapshot_inbox.receiver = None
            self._commit_to(m.index)
            self._send(Message(_MT.APPEND_RESPONSE, self.node_id, m.src, self.term, index=m.index))
            return
        reply, snapshot, ignored = self._snapshot_inbox.offer(
            m, self.node_id, self.term, self._ticks, _check_configuration)
        if ignored is not None:
            if ignored == CORRUPT_SNAPSHOT:
                self.snapshot_stats["corrupt"] += 1
            self._count_ignored(ignored)
        if snapshot is None:
            self._outbox.messages.append(reply)
            return
        self._install_snapshot(snapshot, snapshot.envelope)
        # Sent only after the Ready carrying the snapshot is persisted (_AFTER_PERSIST).
        self._send(Message(_MT.APPEND_RESPONSE, self.node_id, m.src, self.term, index=m.index))

    def _install_snapshot(self, snapshot: Snapshot, envelope: bytes) -> None:
        """Figure 13 steps 7-8: discard the log, restore the state machine from the snapshot
        (by the driver, via Ready.snapshot), and continue after its last entry."""
        self.log.restore(snapshot.index, snapshot.term)
        # The configuration is the snapshot's (a snapshot from a leader that did not record
        # one keeps the configuration we had at that index, best effort).
        membership = (
            decode_membership(snapshot.configuration) if snapshot.configuration
            else self.configuration_at(snapshot.index)
        )
        self._configs = [(snapshot.index, membership)]
        self._on_membership_changed()
        self.commit_index = snapshot.index
        self.applied_index = self._applying = snapshot.index
        self._set_snapshot(snapshot)
        self._snapshot_envelope = envelope
        self._pending_snapshot = snapshot
        self.snapshot_stats["installed"] += 1

    # ------------------------------------------------------------------ membership

    def _rebuild_configs(self, snapshot: Snapshot | None, entries: list[Any]) -> None:
        """Restart: the configuration is the snapshot's, then every CONFIG entry after it."""
        base_index = 0
        if snapshot is not None and snapshot.configuration:
            try:
                self._configs = [(snapshot.index, decode_membership(snapshot.configuration))]
            except DecodeError as exc:
                raise ConfigError(f"snapshot at {snapshot.index}: {exc}") from None
            base_index = snapshot.index
        for entry in entries:
            if entry.kind == EntryKind.CONFIG and entry.index > base_index:
                try:
                    self._configs.append((entry.index, decode_membership(entry.data)))
                except DecodeError as exc:
                    raise ConfigError(f"configuration entry at {entry.index}: {exc}") from None

    def _set_membership_fields(self) -> None:
        """Derived views of the newest configuration (thesis §4.1: in force once appended)."""
        self.membership_index, self.membership = self._configs[-1]
        membership = self.membership
        self.voters = tuple(sorted(membership.all_voters))
        self.peers = tuple(sorted(membership.members - {self.node_id}))
        self._halves = membership.halves
        self._voter_lists = tuple(tuple(sorted(half)) for half in membership.halves)
        self._witness_peers = membership.witnesses - {self.node_id}

    def _on_membership_changed(self) -> None:
        self._set_membership_fields()
        if self.role != _ROLE.LEADER:
            return
        limits = self._limits
        for peer in self.peers:
            if peer not in self._progress:
                # A new member: probe from the configuration entry that added it (etcd).
                pr = Progress(
                    self.log.last_index, limits.max_inflight_messages, limits.max_inflight_bytes
                )
                pr.recent_active = True
                pr.heard_tick = self._ticks
                self._progress[peer] = pr
        members = self.membership.members
        for peer in [p for p in self._progress if p not in members]:
            del self._progress[peer]
        if self.lead_transferee != _NONE and not self.membership.can_lead(self.lead_transferee):
            self.lead_transferee = _NONE
            self._count_ignored("leadership transfer target left the voters")

    def _append_config(self, membership: Membership) -> int:
        """Leader: appends a CONFIG entry; it takes effect now (thesis §4.1). The caller
        broadcasts."""
        index = self.log.last_index + 1
        payload = encode_membership(membership)
        self.log.append([Entry(self.term, index, payload, int(EntryKind.CONFIG))])
        self._uncommitted_bytes += len(payload)
        self._configs.append((index, membership))
        self._on_membership_changed()
        return index

    def _append_from_leader(self, entries: list[Any]) -> None:
        """Follower: appends (after truncating a conflicting suffix, Raft §5.3) and follows
        every configuration entry appended or truncated away (thesis §4.1)."""
        if self.is_witness:
            entries = [_metadata_only(entry) for entry in entries]
        first = entries[0].index
        changed = False
        while len(self._configs) > 1 and self._configs[-1][0] >= first:
            self._configs.pop()  # a truncated configuration reverts (thesis §4.1)
            changed = True
        self.log.append(entries)
        for entry in entries:
            if entry.kind == _CONFIG:
                # Validated in _ignore_append.
                self._configs.append((entry.index, decode_membership(entry.data)))
                changed = True
        if changed:
            self._on_membership_changed()

    def _compact_configs(self, upto: int) -> None:
        """Keeps the configuration in force at `upto` and every later one."""
        configs = self._configs
        keep = 0
        for i, (index, _) in enumerate(configs):
            if index <= upto:
                keep = i
        del configs[:keep]

    def _check_caught_up(self, node: int) -> None:
        """Thesis §4.2.1: a new voter must hold (nearly) the whole log first, or the cluster
        could stall waiting for it to catch up."""
        pr = self._progress.get(node)
        lag = self.log.last_index - (pr.match if pr is not None else 0)
        limit = self.config.promote_max_lag_entries
        if pr is None or lag > limit:
            raise MembershipError(
                f"learner {node} is not caught up: match {pr.match if pr else 0}, leader's last "
                f"index {self.log.last_index} (lag {lag} > promote_max_lag_entries={limit})"
            )

    def _maybe_leave_joint(self) -> None:
        """Leader: C_old,new committed, so append C_new (thesis §4.3)."""
        index, membership = self._configs[-1]
        if membership.joint and index <= self.commit_index:
            self._append_config(membership.leave_joint())

    def _maybe_step_down_removed(self) -> None:
        """Thesis §4.2.2: a leader that is not a voter of C_new steps down once C_new is
        committed (until then it manages the cluster without counting itself). It hands off
        first (§3.10, as §4.2.2 suggests): TIMEOUT_NOW to a voter of C_new holding its whole
        log, so the cluster need not wait an election timeout for a new leader.

        Safety: TIMEOUT_NOW only makes the target campaign now, in term + 1, through the
        ordinary vote (§5.2, one vote per term, §5.4.1 up-to-date logs): it wins only with a
        majority of its configuration - C_new, which it holds (it holds our whole log; were it
        joint, a majority of both halves, §4.3). We become a follower of this term and never
        campaign again (_promotable: no voter of a committed C_new), so we neither compete nor
        count. The target's log equals ours, so it holds every committed entry (Leader
        Completeness) and every voter finds it up to date. Leases (§4.2.3, §6.4.1): its votes
        carry the transfer context and bypass them; _send_timeout_now ends our lease reads for
        this term, and we stop leading in the same step anyway. The message survives the
        step-down: _become_follower keeps the outbox, and ready() hands it out - usually
        in the Ready that also carries C_new to apply, so a driver that goes quiet when it
        applies its own removal must send that Ready's messages first."""
        if (
            self.role == _ROLE.LEADER
            and not self.membership.is_voter(self.node_id)
            and not self.conf_change_pending
        ):
            target = self._hand_off_target()
            if target != _NONE:
                self._send_timeout_now(target)
            else:
                self._count_ignored("removed leader: no caught-up voter to hand off to")
            self._become_follower(self.term, _NONE)

    def _hand_off_target(self) -> int:
        """The voter of C_new (one that can lead: no witness) whose match is our last index,
        the most recently heard first, then the lowest id; _NONE if none is caught up (then a
        TIMEOUT_NOW could start an election the target loses to a longer log: let the
        election timeout choose, as before)."""
        best, best_key = _NONE, (-1, 0)
        last_index = self.log.last_index
        for peer, pr in self._progress.items():
            if pr.match != last_index or not self.membership.can_lead(peer):
                continue
            key = (pr.heard_tick, -peer)
            if key > best_key:
                best, best_key = peer, key
        return best

    def _witness_send_limit(self) -> int:
        """Witness rule W2 (see "Witnesses"): the last index a witness may be sent: the
        highest match of the other full voters heard from within an election timeout, or
        the whole log when none is (then the cluster is running on its one tolerated
        failure and the witness must help commit)."""
        timeout = self._timing.election_timeout_ticks
        best = -1
        witnesses = self.membership.witnesses
        for voter in self.membership.all_voters:
            if voter == self.node_id or voter in witnesses:
                continue
            pr = self._progress.get(voter)
            if pr is not None and self._ticks - pr.heard_tick < timeout:
                best = max(best, pr.match)
        return self.log.last_index if best < 0 else best

    def _feed_witnesses(self) -> None:
        """A full voter's match moved: witnesses may now be sent more (rule W2)."""
        for peer in self._witness_peers:
            if peer in self._progress:
                while self._maybe_send_append(peer, send_if_empty=False):
                    pass

    def _promotable(self) -> bool:
        """This node may campaign: a full voter of the configuration in force, or of the one
        before it while that newer one is not known committed. The second case is a leader
        that appended a C_new without itself and crashed: C_new may never commit, the other
        voters may need its vote yet lack C_new (so it refuses theirs, §5.4.1), and only it can
        finish the change. It counts votes by C_new, where it is no voter, and leads until
        C_new commits (thesis §4.2.2), then steps down."""
        if self.membership.can_lead(self.node_id):
            return True
        configs = self._configs
        return (
            self.membership_index > self.commit_index
            and len(configs) >= 2
            and configs[-2][1].can_lead(self.node_id)
        )

    def _sole_voter(self) -> bool:
        return self._halves == (frozenset((self.node_id,)),)

    # ------------------------------------------------------------------ helpers

    def _hard_state(self) -> HardState:
        return HardState(self.term, self.vote, self.commit_index)

    def _count_ignored(self, reason: str) -> None:
        self.ignored[reason] = self.ignored.get(reason, 0) + 1

    def _check_membership_invariants(self, fail: Any) -> None:
        """The configuration in force is the newest CONFIG entry of the log (thesis §4.1)."""
        configs, log = self._configs, self.log
        if (self.membership_index, self.membership) != configs[-1]:
            fail("membership is not the newest configuration of the log")
        indexes = [index for index, _ in configs]
        if indexes != sorted(set(indexes)) or indexes[-1] > log.last_index:
            fail(f"configuration history {indexes} out of order or beyond the log")
        for index in indexes[1:]:
            if index >= log.first_index and log.term(index) == 0:
                fail(f"configuration at {index} not in the log")
        if self.role == _ROLE.LEADER:
            if self.membership.is_witness(self.node_id):
                fail("a witness leads")
            if set(self._progress) != set(self.peers):
                fail(f"progress for {sorted(self._progress)}, members {list(self.peers)}")
            # One change in flight; a new leader may also inherit C_old,new and C_new, both
            # not yet known committed (the old leader appended C_new after committing C_old,new).
            pending = [c for c in configs[1:] if c[0] > self.commit_index]
            if len(pending) > 2 or (
                len(pending) == 2 and pending[1][1] != pending[0][1].leave_joint()
            ):
                fail(f"configuration changes uncommitted: {[i for i, _ in pending]}")

    def _maybe_check_invariants(self) -> None:
        if self.config.check_invariants:
            self._check_invariants()

    def _check_invariants(self) -> None:
        """Local invariants; explicit raises so they survive python -O."""

        def fail(what: str) -> None:
            raise InvariantViolation(f"raft node {self.node_id} term {self.term}: {what}")

        log = self.log
        if self.term < self._max_term_checked:
            fail(f"term went back from {self._max_term_checked}")
        self._max_term_checked = self.term
        if self.commit_index < self._commit_checked:
            fail(f"commit went back from {self._commit_checked} to {self.commit_index}")
        self._commit_checked = self.commit_index
        if not self.applied_index <= self._applying <= self.commit_index <= log.last_index:
            fail(
                f"applied {self.applied_index} <= applying {self._applying} <= commit "
                f"{self.commit_index} <= last {log.last_index} does not hold"
            )
        if not log.first_index - 1 <= log.persisted_index <= log.last_index:
            fail(f"persisted index {log.persisted_index} outside the log")
        if self.snapshot_index > self.commit_index:
            fail(f"snapshot index {self.snapshot_index} above commit {self.commit_index}")
        if log.first_index - 1 > self.applied_index:
            fail(f"log compacted to {log.first_index - 1} beyond applied {self.applied_index}")
        if self.lead_transferee != _NONE and self.role != _ROLE.LEADER:
            fail(f"{self.role} with a leadership transfer pending")
        if log.last_term > self.term:
            fail(f"last log term {log.last_term} above current term")
        self._check_membership_invariants(fail)
        if self.role == _ROLE.LEADER:
            if self.leader_id != self.node_id or self.vote != self.node_id:
                fail(f"leader with leader_id {self.leader_id} vote {self.vote}")
            if (
                self._term_start_index >= log.first_index
                and log.term(self._term_start_index) != self.term
            ):
                fail("leader's log lost the no-op of its term")  # (unless compacted, §7)
            for peer, pr in self._progress.items():
                if not pr.match < pr.next <= log.last_index + 1:
                    fail(
                        f"progress of {peer}: match {pr.match} next {pr.next} last {log.last_index}"
                    )
        else:
            if self._progress or self._reads.count():
                fail(f"{self.role} keeps leader state")
            if self.leader_id == self.node_id:
                fail(f"{self.role} names itself leader")
            if self.role == _ROLE.CANDIDATE and self.vote != self.node_id:
                fail("candidate did not vote for itself")
            if self.role != _ROLE.FOLLOWER and self.leader_id != _NONE:
                fail(f"{self.role} with a leader")


# The driver's view of this core (engine.core): mypy checks that RaftCore satisfies each.
_CORE: type[Core] = RaftCore
_MEMBERSHIP: type[MembershipChanges] = RaftCore
_TRANSFER: type[LeadershipTransfer] = RaftCore
_LEASE_READS: type[LeaseReads] = RaftCore
