"""Typed errors of engine. Every error a user can see derives from EngineError.

An ambiguous outcome is never reported as a definite failure: `Timeout` (and its subclass
`OutcomeUnknown`) means "unknown, may or may not have taken effect"; `Rejected` (and its
subclasses) means "definitely did not take effect".

The rule (DESIGN.md §5 "honest errors"), applied in one place, `unfinished()`: a request that
ends without its result gets a definite failure only if it provably never entered a log - it
was refused before being handed to a protocol core and was never forwarded to a leader, by
this attempt or an earlier one. Work appended to a log or forwarded may still commit (the next
leader holds it, Raft §5.4.1 Leader Completeness), so it ends with OutcomeUnknown. The one
proof that appended work never applies is `Superseded`: another entry committed at its index
(Raft §5.3, §5.4.3; Paxos: another value chosen in its slot), and it holds only for a copy
that was never sent anywhere else.
"""

from __future__ import annotations

import copy


class EngineError(Exception):
    """Base class of every error raised by engine."""


class ConfigError(EngineError, ValueError):
    """A configuration value is invalid or inconsistent (raised at construction time)."""


class DecodeError(EngineError, ValueError):
    """A datagram or record is malformed, forged, truncated, oversized or replayed.

    Raised by the codec for anything it cannot accept; the transport drops and counts it.
    """


class WireVersionError(DecodeError):
    """A frame of another wire version (an older or newer release): refused, counted."""


class WrongReceiverError(DecodeError):
    """A frame addressed to another endpoint (e.g. replayed from one node to another)."""


class WrongModeError(DecodeError):
    """An authenticated-only frame where payload encryption is required, or an encrypted one
    where it is not: both ends of a cluster must agree on the mode (docs/security.md)."""


class WrongClusterError(DecodeError):
    """An authenticated frame of another cluster id: a node of a different cluster holds the
    same key (e.g. one bootstrapped with a different member list). Never accepted."""

    def __init__(self, sender_id: int, cluster_id: int, expected_cluster_id: int) -> None:
        super().__init__(
            f"frame of node {sender_id} of cluster {cluster_id:#x}, this is cluster "
            f"{expected_cluster_id:#x}")
        self.sender_id = sender_id
        self.cluster_id = cluster_id
        self.expected_cluster_id = expected_cluster_id


class InvariantViolation(EngineError, AssertionError):
    """A protocol invariant does not hold: a bug in engine, never caused by remote input."""


class StorageError(EngineError):
    """The write-ahead log or hard state on disk is unreadable (names the file and offset)."""


class WalCorruptError(StorageError):
    """A WAL record that is damaged and is not a torn tail (a valid record follows it, or it
    is not in the last segment): the node refuses to start. `path` and `offset` locate it;
    `python -m engine wal check|repair --data-dir DIR` inspects or repairs the log."""

    def __init__(self, message: str, *, path: str, offset: int) -> None:
        super().__init__(message)
        self.path = path
        self.offset = offset


class SnapshotCorrupt(DecodeError, StorageError):
    """A snapshot fetched from a running cluster (engine.Client.snapshot, `snapshot save`)
    failed its checksum or its framing: nothing was written. Malformed data (a DecodeError)
    about stored state (a StorageError: the exit code of a corrupt data dir)."""


class NotLeader(EngineError):
    """This node is not the leader; `leader_id` / `leader_address` hint at who is (or None)."""

    def __init__(
        self, message: str = "not the leader", *, leader_id: int | None = None,
        leader_address: str | None = None,
    ) -> None:
        super().__init__(message)
        self.leader_id = leader_id
        self.leader_address = leader_address


class Rejected(EngineError):
    """The request definitely did not take effect: it never entered a log (refused before it
    was handed to a protocol core and never forwarded), or see Superseded. Safe to retry."""


class Superseded(Rejected):
    """Another entry was committed at this proposal's index (a new leader's log replaced it):
    the proposal can never commit (Raft §5.3 Log Matching, §5.4.3 State Machine Safety: one
    committed entry per index, and an entry never moves to another index; Paxos: one value
    chosen per slot, and a re-proposed value keeps its identity). Definite for the proposal
    that raised it, but a client that retried the same command (same session and seq) may
    have another copy in the log, so a node serving a remote client answers "outcome
    unknown" for it (the client retries, and the state machine's session table answers the
    copy that did apply)."""


class Overloaded(Rejected):
    """Back-pressure: a named limit (pending proposals, uncommitted bytes, ...) is full."""


class EntryTooLarge(Rejected, ValueError):
    """A proposal is larger than max_entry_bytes."""


class ClockOffsetError(Rejected):
    """A peer's hybrid logical clock is further ahead of this node's physical clock than
    Limits.max_clock_offset_ms allows (Kulkarni et al. 2014 assume a bound; CockroachDB's
    --max-offset): the message carrying it is refused and the HLC is not advanced, so one
    bad clock cannot drag every node's timestamps into the future. Definite: nothing was
    done with the message. `node_id` names the peer, `offset_ns` how far ahead it is."""

    def __init__(self, node_id: int | None, offset_ns: int, max_clock_offset_ms: int) -> None:
        who = "an unnamed peer" if node_id is None else f"node {node_id}"
        super().__init__(
            f"clock of {who} is {offset_ns / 1e6:.3f} ms ahead, beyond "
            f"max_clock_offset_ms={max_clock_offset_ms}: refusing to serve it")
        self.node_id = node_id
        self.offset_ns = offset_ns
        self.max_clock_offset_ms = max_clock_offset_ms


class HistoryCompacted(Rejected):
    """A read at an HLC timestamp older than the versions the store still keeps
    (Limits.mvcc_retention_s, Limits.max_mvcc_history_bytes). `oldest_wall_ns` and
    `oldest_logical` are the oldest timestamp that can still be read
    (engine.txn.hlc.Timestamp(oldest_wall_ns, oldest_logical)); nothing was changed."""

    def __init__(self, oldest_wall_ns: int, oldest_logical: int) -> None:
        super().__init__(f"history before HLC timestamp ({oldest_wall_ns}, {oldest_logical}) "
                         "was garbage-collected; read at that timestamp or later")
        self.oldest_wall_ns = oldest_wall_ns
        self.oldest_logical = oldest_logical

    def __reduce__(self) -> tuple[object, ...]:
        return (type(self), (self.oldest_wall_ns, self.oldest_logical))


class Timeout(EngineError, TimeoutError):
    """No answer in time: the outcome is unknown (the command may or may not have been applied)."""


class OutcomeUnknown(Timeout):
    """The request entered a log (appended, or forwarded to a leader) and this node can no
    longer follow it before its deadline: it stopped, was removed from the cluster, or the
    leader changed under a forwarded command it must not re-send. It may still apply. A
    Timeout, so `except Timeout` handles every unknown outcome."""


class Stopped(EngineError):
    """The node or client was stopped while the request was pending. A request that had
    entered a log raises StoppedOutcomeUnknown (also an OutcomeUnknown): it may still apply."""


class StoppedOutcomeUnknown(Stopped, OutcomeUnknown):
    """Stopped while the request was in a log or forwarded: the outcome is unknown."""


class LogIndexError(EngineError, IndexError):
    """An index outside the range held by the in-memory log (compacted or not yet appended)."""


class StateMachineError(EngineError):
    """The state machine raised while applying this command (the message says what)."""


class MembershipError(Rejected, ValueError):
    """A membership change is refused as invalid or unsafe (removing the last voter, adding
    an existing member, promoting a learner that is not caught up, ...): definite, nothing
    was appended."""


class ConfChangeInProgress(Rejected):
    """Another membership change is not committed yet (or this leader has not committed an
    entry of its term): only one change may be in flight. Definite; retry once it commits."""


class WrongShard(Rejected):
    """The key is outside the range this replica serves (the range split, merged or moved
    since the sender's descriptor): nothing was applied. `key` is the key asked for,
    `range_id` and `epoch` name the range that answered as this replica knows it now (the
    epoch is newer than the one the sender used), and `descriptors` carry the descriptors
    it knows for the key's neighbourhood (engine.shard.map.RangeDescriptor; may be empty),
    so a routing cache (engine.shard.routing.RangeCache) replaces its entry without a meta
    lookup (CockroachDB's RangeKeyMismatchError, TiKV's EpochNotMatch). Definite: the check
    runs before the write is proposed, and again when it applies, where a refused write
    changes nothing on any replica."""

    def __init__(
        self, key: bytes, *, range_id: int, epoch: int, descriptors: tuple[object, ...] = (),
    ) -> None:
        super().__init__(
            f"key {key!r} is outside range {range_id} at epoch {epoch}: refresh the range")
        self.key = key
        self.range_id = range_id
        self.epoch = epoch
        self.descriptors = descriptors

    def __reduce__(self) -> tuple[object, ...]:
        # copy.copy (unfinished()) and pickle rebuild from the keyword fields.
        return (_rebuild, (type(self), (self.key,), {
            "range_id": self.range_id, "epoch": self.epoch, "descriptors": self.descriptors}))


class EpochMismatch(Rejected):
    """A shard-map change named an epoch of its range that is no longer current (another
    split, merge or replica change won): the meta group refused it and changed nothing.
    `current_epoch` is the range's epoch now (0: the range no longer exists); re-read the
    descriptor and decide again (optimistic concurrency, CockroachDB's descriptor CPut)."""

    def __init__(self, range_id: int, *, expected_epoch: int, current_epoch: int) -> None:
        now = f"now {current_epoch}" if current_epoch else "it no longer exists"
        super().__init__(
            f"range {range_id}: change expected epoch {expected_epoch}, {now}")
        self.range_id = range_id
        self.expected_epoch = expected_epoch
        self.current_epoch = current_epoch

    def __reduce__(self) -> tuple[object, ...]:
        return (_rebuild, (type(self), (self.range_id,), {
            "expected_epoch": self.expected_epoch, "current_epoch": self.current_epoch}))


class TransactionConflict(Rejected):
    """A transaction was aborted because another committed transaction wrote a key it read
    (or a key inside a range it scanned) after it read it: committing it would not be
    serializable (optimistic concurrency control, Kung & Robinson 1981: validate the read set
    at commit). Definite: none of its writes took effect. Retry the whole transaction
    (engine.fs's client protocol, run_transaction, does)."""


class InvalidShardChange(Rejected, ValueError):
    """A shard-map change the meta group refuses whatever the epochs (a split key outside
    the range, a merge of ranges that are not adjacent or whose replica sets differ,
    removing the last voter, a reused range or group id, a malformed command, ...):
    definite, nothing changed."""


class LeaseNotFound(Rejected):
    """The lease does not exist (never granted, revoked or expired): nothing was done. A key
    cannot be attached to it and a lock cannot be waited for under it; grant a new one."""

    def __init__(self, lease_id: int) -> None:
        super().__init__(f"lease {lease_id} does not exist (revoked, expired or never granted)")
        self.lease_id = lease_id

    def __reduce__(self) -> tuple[object, ...]:
        return (_rebuild, (type(self), (self.lease_id,), {}))


class LockKindMismatch(Rejected, ValueError):
    """A lock name is used as another kind of lock than its holders and waiters use (a mutex
    acquired as a semaphore, or a semaphore with another capacity): nothing was done."""


class NotElectionLeader(Rejected):
    """Proclaim or resign by a lease that does not lead the election (it never won, resigned,
    or its lease ended): nothing was done (etcd's ErrElectionNotLeader)."""


class FencingTokenStale(Rejected):
    """A write fenced by a lock token is refused: a newer token of that lock exists (the
    writer's grant is over, another holder may be writing; Kleppmann 2016, Chubby's
    sequencers), or the token was never granted. Definite: the write changed nothing.
    `lock` names the lock, `token` the refused token, `newest_token` the newest token the
    fence knows of that lock (0: none)."""

    def __init__(self, lock: bytes, token: int, newest_token: int, reason: str = "") -> None:
        super().__init__(
            f"fencing token {token} of lock {lock!r} refused: "
            + (reason or f"token {newest_token} is newer"))
        self.lock = lock
        self.token = token
        self.newest_token = newest_token
        self.reason = reason

    def __reduce__(self) -> tuple[object, ...]:
        return (_rebuild, (type(self), (self.lock, self.token, self.newest_token, self.reason),
                           {}))


class Compacted(Rejected):
    """A watch or history read asked for revisions older than the retained history: nothing
    was delivered. `oldest_revision` is the oldest revision still available; start there (or
    later, after reading the current state) to watch again."""

    def __init__(self, requested_revision: int, oldest_revision: int) -> None:
        super().__init__(
            f"revision {requested_revision} is compacted; the oldest available revision is "
            f"{oldest_revision}")
        self.requested_revision = requested_revision
        self.oldest_revision = oldest_revision

    def __reduce__(self) -> tuple[object, ...]:
        return (_rebuild, (type(self), (self.requested_revision, self.oldest_revision), {}))


class WatchOverflow(EngineError):
    """A watcher fell further behind than its bounded buffer and the retained history allow:
    the watch is cancelled rather than lose an event. Every event before `resume_revision`
    was delivered and none at or after it; a new watch from `resume_revision` continues
    without a gap (or raises Compacted if that history is gone too)."""

    def __init__(self, resume_revision: int) -> None:
        super().__init__(
            f"watcher fell behind and was cancelled; resume from revision {resume_revision}")
        self.resume_revision = resume_revision

    def __reduce__(self) -> tuple[object, ...]:
        return (_rebuild, (type(self), (self.resume_revision,), {}))


def _rebuild(kind: type[EngineError], args: tuple[object, ...],
             keywords: dict[str, object]) -> EngineError:
    return kind(*args, **keywords)


def unfinished(cause: EngineError, *, may_apply: bool) -> EngineError:
    """The error for a request that ends without its result (see the module docstring).

    `cause` says why it ends (Stopped, MembershipError for a removed node, NotLeader,
    Overloaded, Superseded, ...). `may_apply`: some copy of the request was handed to a
    protocol core or forwarded to a leader and is not proved never to apply (a Superseded
    copy is proved; any other copy is not). Then the outcome is unknown: OutcomeUnknown
    (StoppedOutcomeUnknown when the node stopped) naming the cause. Otherwise the cause
    itself, a fresh copy per request."""
    if not may_apply:
        return copy.copy(cause)
    kind = StoppedOutcomeUnknown if isinstance(cause, Stopped) else OutcomeUnknown
    return kind(f"{cause}; the request had entered a log or was forwarded, so it may still "
                "apply")
