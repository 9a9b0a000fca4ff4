"""The driver: the Ready loop around a sans-IO consensus core, written against interfaces and
doing no I/O of its own (DESIGN.md §1). engine.Node runs it with the real UDP transport, WAL,
event loop and threads; the simulator (engine.testing.sim) runs the very same code with its
simulated network, disk and clock, so every ordering the swarm proves is the one that ships.

The turn
--------
Inputs (datagrams, proposals, reads, ticks) are queued and `run_turn` hands them to the core
in bulk: pending ticks, then every queued message is stepped, all queued proposals go to the
core in ONE `propose(batch)` call, all queued reads share ONE ReadIndex round. Then the core's
Ready is handled (etcd's Ready/Advance contract, engine.types.Ready), in this order:

  1. `ready.messages` go out at once (the leader replicates while it writes its own log, Raft
     thesis §10.2.1);
  2. `ready.snapshot` (from the leader) is installed by a storage job: the snapshot file, the
     log compacted at it, the state machine restored; the rest of the Ready waits for it;
  3. committed entries are applied now if this Ready holds no acks for new entries (a
     leader's Ready: its committed entries are durable on a quorum already, so their callers
     are answered while the new entries are written, as etcd applies in parallel with
     persisting); a follower's are applied in step 5, after its acks;
  4. `ready.entries` + `ready.hard_state` are saved, synced iff `ready.must_sync` (set by the
     core). The storage may complete later (Storage.save returns PENDING, then the shell
     calls `persisted()`); meanwhile no turn runs and inputs queue up into the next batch;
  5. `ready.messages_after_persist` (votes, acks: promises about durable state), the late
     apply, reads whose index is applied, `core.advance(ready)`, the snapshot policy.

Outcomes: a proposal's outcome object (anything with the future surface done / set_result /
set_exception: asyncio futures in Node, SimOutcome in the simulator) is resolved when the
entry at its (index, term) is applied; another term at that index means a new leader
overwrote it (engine.Superseded, a definite no; Raft §5.3, §5.4.3). Every other early end
picks its error with engine.errors.unfinished: a definite failure only for work that never
entered a log nor left this node (`_proposal_queue`, `_waiting_for_leader`, unless the
outcome is in `_sent_before`), else OutcomeUnknown (`_proposals`, `_forwarded`). Deadlines
come from the injected clock.

Interfaces (typing.Protocols below): Transport, Storage, Clock (a `() -> float` in seconds),
JobRunner (work off the turn, then a callback on the turn), a turn scheduler (`call_soon`),
StateMachine (engine.types.StateMachine), Membership (the shell's part of configuration
changes: peers, removal), Hooks (observers at fixed points: ready taken, proposals handed
to the core, persisted, applied, snapshot installed / taken; they observe and never decide
order; engine.profiling.LatencyProfiler and the simulator's checkers are Hooks).

One Driver drives one consensus group (one core, its state machine and its tables). The wire
(Message.group) and the WAL (WriteAheadLog.save_many: every group's Ready in one record and
one fsync) already carry group ids; a turn over many groups is the next step for sharding.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable, Iterable
from operator import attrgetter
from typing import Any, Protocol

from engine import errors
from engine.core import Capabilities, Core, capabilities
from engine.errors import unfinished
from engine.logs import log_event
from engine.messages import ClientOp, ClientStatus, EntryKind, Message, MessageType
from engine.replication.snapshot import encode_snapshot
from engine.types import Ready, Snapshot, StateMachine

logger = logging.getLogger("engine.node")

_NORMAL = int(EntryKind.NORMAL)   # plain ints: compared once per applied entry
_CONFIG = int(EntryKind.CONFIG)
_CLIENT_REQUEST = int(MessageType.CLIENT_REQUEST)
_WRITE = int(ClientOp.WRITE)
_OK, _NOT_LEADER = int(ClientStatus.OK), int(ClientStatus.NOT_LEADER)
_REJECTED, _ERROR = int(ClientStatus.REJECTED), int(ClientStatus.ERROR)
_ENTRY_DATA = attrgetter("data")

# How often expired requests are swept (ticks); a request may outlive its timeout by this.
SWEEP_EVERY_TICKS = 10
# A ReadIndex round not answered within this many ticks is retried with a new context.
READ_RETRY_TICKS = 20
# A turn waits at most this many scheduler rounds for datagrams still arriving (bounds the
# latency group commit adds) ...
MAX_TURN_DEFERRALS = 16
# ... and only after a burst: the loop reads up to 32 datagrams per wake-up (libuv), so a
# wake-up that read fewer than this drained the socket and waiting would only add latency.
BURST_DATAGRAMS = 8


class _Pending:
    """Storage.save's answer when the write completes later (the shell calls persisted())."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "PENDING"


PENDING: Any = _Pending()


# ---------------------------------------------------------------------- interfaces

class Outcome(Protocol):
    """The caller's end of a request (the future surface)."""

    def done(self) -> bool: ...
    def set_result(self, result: Any) -> None: ...
    def set_exception(self, exception: BaseException) -> None: ...


class Transport(Protocol):
    def send(self, messages: list[Message], now: bool = False) -> None: ...
    def flush(self) -> None: ...


class Storage(Protocol):
    """The log's durable home. `save` returns PENDING when it completes later (the shell then
    calls Driver.persisted); anything else means durable now; raising means it failed."""

    def save(self, entries: list[Any], hard_state: Any, *, sync: bool) -> object: ...
    def save_snapshot(self, snapshot: Snapshot, envelope: bytes) -> None: ...
    def compact(self, index: int, term: int) -> None: ...
    def install_snapshot(self, snapshot: Snapshot, envelope: bytes) -> None: ...


class JobRunner(Protocol):
    """Runs `job` off the turn, then `done(result, error)` on the turn's thread."""

    def run(self, job: Callable[[], Any],
            done: Callable[[Any, BaseException | None], None]) -> None: ...


class Membership(Protocol):
    """The shell's side of configuration changes (Raft thesis §4); None for Paxos."""

    def follow(self) -> None: ...                       # a new configuration is in force
    def config_committed(self, entry: Any) -> None: ...  # a CONFIG entry is applied
    def after_apply(self) -> None: ...                  # after each applied batch
    def configuration_at(self, index: int) -> bytes: ...


class Hooks(Protocol):
    """Observers at the driver's fixed points (one call per batch, never per entry)."""

    def enqueued(self, outcome: Any) -> None: ...
    def submitted(self, first: int, live: list[Any]) -> None: ...
    def received(self, messages: Iterable[Any]) -> None: ...
    def ready(self, ready: Ready) -> None: ...
    def persisted(self, ready: Ready) -> None: ...
    def applied(self, ready: Ready) -> None: ...
    def snapshot_installed(self, snapshot: Snapshot) -> None: ...
    def snapshot_taken(self, snapshot: Snapshot) -> None: ...


class InlineJobs:
    """A JobRunner that runs the job at once (in-memory storage; tests)."""

    def run(self, job: Callable[[], Any],
            done: Callable[[Any, BaseException | None], None]) -> None:
        try:
            result = job()
        except Exception as exc:
            done(None, exc)
            return
        done(result, None)


class PendingRead:
    __slots__ = ("query", "future", "deadline")

    def __init__(self, query: bytes, future: Any, deadline: float) -> None:
        self.query = query
        self.future = future
        self.deadline = deadline


def state_machine_fork(state_machine: Any) -> Callable[[], bytes] | None:
    """Freeze the state now; return a function that serialises the frozen copy (run off the
    turn while apply continues), or None if the state machine offers no `snapshot_fork()`."""
    fork = getattr(state_machine, "snapshot_fork", None)
    if fork is None:
        return None
    serialize: Callable[[], bytes] = fork()
    return serialize


# ---------------------------------------------------------------------- the driver

class Driver:
    """One group's Ready loop (see the module docstring)."""

    # Slots, not an instance dict: with this many attributes the dict's keys are not shared
    # between instances, so every attribute read on the per-write path (submit, apply) and in
    # the turn would be a hash lookup, and method loads on the driver would not specialise.
    __slots__ = (
        "node_id", "state_machine", "clock", "_call_soon", "request_timeout_s",
        "max_entry_bytes", "max_pending_proposals", "snapshot_entries", "snapshot_bytes",
        "snapshot_trailing_entries", "_die", "core", "caps", "transport", "storage",
        "storage_jobs", "snapshot_jobs", "membership", "hooks", "metrics", "on_leadership",
        "running", "witness", "applied", "ticks", "pending_ticks", "persisting",
        "_persisting_ready", "turn_scheduled", "received_since_turn", "_turn_deferrals",
        "inbox", "proposal_queue", "proposals", "waiting_for_leader", "forwarded",
        "forwarded_to", "forward_seq", "sent_before", "retry_safe", "read_queue",
        "read_rounds", "reads_waiting_apply", "read_seq", "tick_clock", "counters",
        "since_snapshot_entries", "since_snapshot_bytes", "snapshotting", "compaction_due",
        "snapshot_stats",
    )

    def __init__(
        self, node_id: int, state_machine: StateMachine, *, clock: Callable[[], float],
        call_soon: Callable[[Callable[[], None]], object], request_timeout_s: float,
        max_entry_bytes: int, max_pending_proposals: int,
        snapshot_entries: int = 0, snapshot_bytes: int = 0, snapshot_trailing_entries: int = 0,
        die: Callable[[BaseException], None] | None = None,
    ) -> None:
        self.node_id = node_id
        self.state_machine = state_machine
        self.clock = clock
        self._call_soon = call_soon
        self.request_timeout_s = request_timeout_s
        self.max_entry_bytes = max_entry_bytes
        self.max_pending_proposals = max_pending_proposals
        self.snapshot_entries = snapshot_entries
        self.snapshot_bytes = snapshot_bytes
        self.snapshot_trailing_entries = snapshot_trailing_entries
        self._die = die or self._raise
        # Bound in start(): the core, its capabilities and the I/O the shell provides.
        self.core: Any = None
        self.caps: Capabilities = Capabilities(None, None, None)
        self.transport: Any = None
        self.storage: Any = None
        self.storage_jobs: JobRunner = InlineJobs()
        self.snapshot_jobs: JobRunner = InlineJobs()
        self.membership: Membership | None = None
        self.hooks: Any = None            # a Hooks, or None (one test per batch)
        self.metrics: Any = None          # sample_turn(proposal_queue, read_queue), durable
        self.on_leadership: Callable[[], None] | None = None
        self.running = False
        self.witness = False              # holds no payloads: applies and snapshots none
        self.applied = 0
        self.ticks = 0
        self.pending_ticks = 0
        self.persisting = 0               # storage work in flight: turns wait
        self._persisting_ready: tuple[Ready, bool] | None = None
        self.turn_scheduled = False
        self.received_since_turn = 0
        self._turn_deferrals = 0
        self.inbox: list[Message] = []
        # Proposals queued this turn: (command, outcome, deadline).
        self.proposal_queue: list[tuple[bytes, Any, float]] = []
        # Proposals in the log: index -> (term, outcome, deadline).
        self.proposals: dict[int, tuple[int, Any, float]] = {}
        # Proposals waiting for a leader to forward to.
        self.waiting_for_leader: deque[tuple[bytes, Any, float]] = deque()
        # Proposals forwarded to node forwarded_to: seq -> (command, outcome, deadline).
        self.forwarded: dict[int, tuple[bytes, Any, float]] = {}
        self.forwarded_to = 0
        self.forward_seq = 0
        # Outcomes of proposals queued again after a copy was forwarded (a retry-safe command
        # re-sent to a new leader): whatever ends them, their outcome is unknown. A list of
        # ids would outlive the outcomes; a set of the objects holds them only while pending.
        self.sent_before: set[Any] = set()
        self.retry_safe: Callable[[bytes], bool] | None = getattr(
            state_machine, "retry_safe", None)
        # Reads: queued this turn; in a ReadIndex round (context -> (reads, tick sent));
        # waiting for apply to reach their index (index, reads).
        self.read_queue: list[PendingRead] = []
        self.read_rounds: dict[bytes, tuple[list[PendingRead], int]] = {}
        self.reads_waiting_apply: list[tuple[int, list[PendingRead]]] = []
        self.read_seq = 0
        # Lease reads: (core tick, clock time when the core had processed it), recent ones.
        self.tick_clock: deque[tuple[int, float]] = deque(maxlen=128)
        self.counters: dict[str, int] = {
            "proposals": 0, "proposal_batches": 0, "applied": 0, "readies": 0, "saves": 0,
            "syncs": 0,
            "reads": 0, "read_rounds": 0, "forwarded": 0, "reforwarded": 0,
            "client_requests": 0, "replies_too_large": 0,
        }
        # Snapshots: what was applied since the last one; one snapshot at a time.
        self.since_snapshot_entries = 0
        self.since_snapshot_bytes = 0
        self.snapshotting = False
        self.compaction_due: tuple[Snapshot, int] | None = None
        self.snapshot_stats: dict[str, float] = {
            "taken": 0, "installed": 0, "last_pause_ms": 0.0, "max_pause_ms": 0.0,
            "last_write_s": 0.0, "last_bytes": 0,
        }

    @staticmethod
    def _raise(exc: BaseException) -> None:
        raise exc

    def start(self, core: Core, transport: Transport, storage: Storage, *, applied: int,
              storage_jobs: JobRunner | None = None, snapshot_jobs: JobRunner | None = None,
              membership: Membership | None = None, lease_window: int = 128) -> None:
        """Bind the core and the shell's I/O; resolve the core's capabilities once."""
        self.core = core
        self.caps = capabilities(core)
        self.transport = transport
        self.storage = storage
        self.storage_jobs = storage_jobs or InlineJobs()
        self.snapshot_jobs = snapshot_jobs or InlineJobs()
        self.membership = membership
        self.applied = applied
        self.tick_clock = deque(maxlen=lease_window)
        # A forwarded proposal's answer is matched by its seq alone, a ReadIndex answer by
        # its context (read_seq), and an answer sent to an earlier incarnation of this
        # replica (a restart, a replica rebuilt in place) may still arrive: both count from
        # above every value an earlier incarnation used, the clock in nanoseconds (monotonic
        # across the processes of one machine, and no incarnation forwards or reads a
        # billion times a second), so a stale answer acknowledges nothing and serves no read
        # (Raft thesis §6.4: a read waits for a round confirmed after it began).
        base = int(self.clock() * 1e9)
        self.forward_seq = max(self.forward_seq, base)
        self.read_seq = max(self.read_seq, base)
        self.running = True

    # ------------------------------------------------------------------ inputs

    def schedule_turn(self) -> None:
        if not self.turn_scheduled:
            self.turn_scheduled = True
            self._call_soon(self.run_turn)

    def receive(self, message: Message) -> None:
        """A message for the core (the shell routes client and admin traffic itself)."""
        self.inbox.append(message)

    def tick(self, advance_core: bool = True) -> None:
        """One clock tick; advance_core=False for a node that went quiet (thesis §4.2.3)."""
        self.ticks += 1
        if not advance_core:
            pass
        elif not self.persisting:
            self.core.tick()
            self.note_core_tick()
        else:
            self.pending_ticks += 1
        if self.ticks % SWEEP_EVERY_TICKS == 0:
            self.expire_requests()
        self.retry_reads()
        # A turn only when the tick left work for one: an idle group's tick costs no turn
        # (a host ticks thousands of groups).
        if self.pending_ticks or self.read_queue or self.core.has_ready():
            self.schedule_turn()

    def submit(self, command: bytes, outcome: Any, timeout: float | None = None) -> None:
        """Queue `command` for this turn's proposal batch (checks first: EntryTooLarge,
        Overloaded are raised here, before anything is queued)."""
        if len(command) > self.max_entry_bytes:
            raise errors.EntryTooLarge(
                f"command of {len(command)} bytes exceeds max_entry_bytes="
                f"{self.max_entry_bytes}"
            )
        queue = self.proposal_queue
        if len(self.proposals) + len(queue) >= self.max_pending_proposals:
            raise errors.Overloaded(f"{self.max_pending_proposals} proposals pending "
                                    f"(Limits.max_pending_proposals)")
        # The clock is a callable attribute, not a method: called through a local, since a
        # method-style load of it (self.clock()) never specialises.
        clock = self.clock
        queue.append((command, outcome, clock() + (timeout or self.request_timeout_s)))
        if self.hooks is not None:  # hook: queued
            self.hooks.enqueued(outcome)
        if not self.turn_scheduled:
            self.turn_scheduled = True
            self._call_soon(self.run_turn)

    def enqueue_read(self, query: bytes, outcome: Any, timeout: float | None = None) -> None:
        """Queue a read for this turn's shared ReadIndex round (Raft thesis §6.4)."""
        deadline = self.clock() + (timeout or self.request_timeout_s)
        self.read_queue.append(PendingRead(query, outcome, deadline))
        self.schedule_turn()

    def wait_for_apply(self, index: int, query: bytes, outcome: Any,
                       timeout: float | None = None) -> None:
        """Answer `query` once this node applied through `index` (a lease read, §6.4.1)."""
        deadline = self.clock() + (timeout or self.request_timeout_s)
        self.reads_waiting_apply.append((index, [PendingRead(query, outcome, deadline)]))

    # ------------------------------------------------------------------ the turn

    def run_turn(self) -> None:
        self.turn_scheduled = False
        if not self.running or self.persisting:
            return  # inputs stay queued; the turn after the storage work takes them
        if (self.received_since_turn >= BURST_DATAGRAMS
                and self._turn_deferrals < MAX_TURN_DEFERRALS):
            # Group commit: a burst of datagrams arrived since this turn was scheduled, so
            # more are probably waiting in the socket. Let the shell read them first: one
            # Ready, one fsync, for all (docs/performance.md, "Group commit").
            self.received_since_turn = 0
            self._turn_deferrals += 1
            self.schedule_turn()
            return
        self.received_since_turn = 0
        self._turn_deferrals = 0
        core = self.core
        try:
            if self.pending_ticks:
                for _ in range(self.pending_ticks):
                    core.tick()
                self.note_core_tick()
                self.pending_ticks = 0
            if self.inbox:
                inbox, self.inbox = self.inbox, []
                for message in inbox:
                    core.step(message)
            if self.metrics is not None:
                self.metrics.sample_turn(self.proposal_queue, self.read_queue)
            if self.proposal_queue:
                self.submit_proposals()
            if self.waiting_for_leader or self.forwarded:
                self.forward_waiting()   # (also follows a leader change, see there)
            if self.read_queue:
                self.start_read_round()
            if core.has_ready():
                self.handle_ready(core.ready())
                if self.core is core and not self.persisting and core.has_ready():
                    # More committed entries than one Ready carries (max_apply_batch): the
                    # next part comes after the callbacks this one made ready (the answered
                    # callers' next proposals), so the pipeline stays full.
                    self.schedule_turn()
        except errors.InvariantViolation as exc:
            self._die(exc)
            raise

    def submit_proposals(self) -> None:
        transfer = self.caps.transfer
        if transfer is not None and transfer.lead_transferee:
            # Leadership transfer (§3.10): proposals wait here (at most an election timeout)
            # and then go to the new leader, or to us if the transfer is abandoned.
            return
        queue, self.proposal_queue = self.proposal_queue, []
        # A caller that cancelled its outcome before this turn is not proposed at all. One
        # pass takes the commands; the queue itself is the batch unless one was cancelled.
        commands = [item[0] for item in queue if not item[1].done()]
        if not commands:
            return
        live = (queue if len(commands) == len(queue)
                else [item for item in queue if not item[1].done()])
        try:
            self.propose_batch(live, commands)
        except errors.NotLeader as exc:
            self.waiting_for_leader.extend(live)
            if exc.leader_id is not None:
                self.forward_waiting()
        except errors.Rejected:
            pass   # answered by propose_batch

    def propose_batch(self, live: list[tuple[bytes, Any, float]],
                      commands: list[bytes] | None = None) -> tuple[int, int, int]:
        """Hand `live` (command, outcome, deadline) to the core in one propose() call and
        track their outcomes; returns (first, last, term). `commands`, if given, are live's
        commands already taken out. NotLeader: nothing was touched; Rejected (Overloaded,
        EntryTooLarge: nothing appended): the outcomes are answered."""
        try:
            first, last, term = self.core.propose(
                [item[0] for item in live] if commands is None else commands)
        except errors.NotLeader:
            raise
        except errors.Rejected as exc:
            sent_before = self.sent_before
            for _, outcome, _ in live:
                outcome.set_exception(unfinished(exc, may_apply=outcome in sent_before))
            raise
        self.counters["proposals"] += len(live)
        self.counters["proposal_batches"] += 1
        if last - first + 1 != len(live):
            raise errors.InvariantViolation(
                f"core appended {last - first + 1} entries for {len(live)} proposals"
            )
        # index -> (term, outcome, deadline); the lengths are equal (checked above), so zip
        # need not compare them again.
        self.proposals.update(
            zip(range(first, last + 1), [(term, item[1], item[2]) for item in live], strict=False)
        )
        if self.hooks is not None:  # hook: handed to the core
            self.hooks.submitted(first, live)
        return first, last, term

    def handle_ready(self, ready: Ready) -> None:
        self.counters["readies"] += 1
        if self.on_leadership is not None:
            self.on_leadership()
        hooks = self.hooks
        if hooks is not None:  # hook: ready taken (sent, committed)
            hooks.ready(ready)
        membership = self.membership
        if membership is not None:
            membership.follow()  # before sending: this Ready may address new members
        if ready.messages:
            # Sent before the apply below: applying our own removal makes this node go quiet
            # (no peers), and this Ready may carry the hand-off's TIMEOUT_NOW. With entries,
            # out now, not at the end of the turn: followers write in parallel with the
            # leader's write (Raft thesis §10.2.1).
            self.transport.send(ready.messages, now=bool(ready.entries))
        if ready.snapshot is not None:
            self.install_snapshot_ready(ready)
            return
        self._handle_ready_body(ready)

    def _handle_ready_body(self, ready: Ready) -> None:
        # Committed entries are already durable on a quorum (a core counts its own copy only
        # after its fsync), so they are applied — and their callers answered — while this
        # Ready's own writes are in flight. Not when this Ready also holds acks for its new
        # entries (a follower): the leader's commit, and so its callers, wait for those
        # acks, nobody here waits for the apply, so the acks go first (after_persist).
        apply_late = bool(ready.messages_after_persist) and bool(ready.entries)
        if ready.committed_entries and not apply_late:
            self.apply_ready(ready)
        if not ready.entries:
            # The remote callers' answers, queued as their outcomes settled, leave now, ahead
            # of this Ready's commit notices and of the commit-index write.
            self.transport.flush()
        for read_state in ready.read_states:
            self.on_read_state(read_state.index, read_state.context)
        if self.reads_waiting_apply:
            self.serve_applied_reads()
        if ready.entries or ready.hard_state is not None:
            try:
                done = self._save(ready)
            except Exception as exc:
                # Nothing that depends on this write may be acknowledged (DESIGN.md §5).
                self._die(exc)
                return
            if done is PENDING:
                self.persisting += 1
                self._persisting_ready = (ready, apply_late)
                return
            if self.hooks is not None:  # hook: persisted
                self.hooks.persisted(ready)
        self.after_persist(ready, apply_late)

    def _save(self, ready: Ready) -> object:
        """One write and, if the core says the Ready needs one, one sync (group commit)."""
        sync = ready.must_sync   # set by the core (engine.types.Ready)
        metrics = self.metrics
        timed = sync and metrics is not None and metrics.durable
        started = self.clock() if timed else 0.0
        done = self.storage.save(ready.entries, ready.hard_state, sync=sync)
        self.counters["saves"] += 1
        if timed:
            metrics.wal_save_seconds.observe(self.clock() - started)
        if sync:
            self.counters["syncs"] += 1
        return done

    def persisted(self) -> None:
        """The storage completed the save it answered PENDING (the shell calls this)."""
        pending = self._persisting_ready
        if pending is None or not self.running:
            return
        self._persisting_ready = None
        self.persisting -= 1
        ready, apply_late = pending
        if self.hooks is not None:  # hook: persisted
            self.hooks.persisted(ready)
        self.after_persist(ready, apply_late)
        if self.running:
            self.schedule_turn()

    def after_persist(self, ready: Ready, apply_late: bool = False) -> None:
        """The Ready's entries and hard state are durable: promises may go out, then the
        committed entries left for after them are applied."""
        if ready.messages_after_persist:
            # Acks and votes: the turn is their batch, so they need not wait.
            self.transport.send(ready.messages_after_persist, now=True)
        if apply_late and ready.committed_entries:
            self.apply_ready(ready)
            if self.reads_waiting_apply:
                self.serve_applied_reads()
        if self.core is None or not self.running:
            return
        self.core.advance(ready)
        self.maybe_snapshot(ready.committed_entries)

    def apply_ready(self, ready: Ready) -> None:
        self.apply(ready.committed_entries)
        if self.hooks is not None:  # hook: applied
            self.hooks.applied(ready)
        if self.membership is not None:
            # After the whole batch: the entries committed after our removal are answered.
            self.membership.after_apply()

    def apply(self, entries: list[Any]) -> None:
        apply = self.state_machine.apply
        take_pending = self.proposals.pop
        normal = _NORMAL
        membership = self.membership
        # A witness holds no payloads (engine.raft.core "Witnesses"): it applies nothing.
        apply_normal = not self.witness
        for entry in entries:
            index = entry.index
            result: Any = b""
            kind = entry.kind
            if kind == normal:
                if apply_normal:
                    try:
                        result = apply(index, entry.data)
                    except Exception as exc:  # the user's state machine: report, keep going
                        logger.exception("state machine raised at index %d", index)
                        result = errors.StateMachineError(
                            f"apply at index {index} raised {exc!r}")
            elif kind == _CONFIG and membership is not None:
                # Never applied to the state machine (like NOOP); the shell follows it.
                membership.config_committed(entry)
            self.applied = index
            pending = take_pending(index, None)
            if pending is None:
                continue
            term, outcome, _ = pending
            if outcome.done():
                continue
            if term != entry.term:
                # Another entry committed at our index: ours never commits (Raft §5.3, §5.4.3).
                outcome.set_exception(unfinished(errors.Superseded(
                    f"entry {index} was replaced by a new leader (term {entry.term})"
                ), may_apply=outcome in self.sent_before))
            elif type(result) is bytes or not isinstance(result, Exception):
                outcome.set_result(result)
            else:
                outcome.set_exception(result)
        self.counters["applied"] += len(entries)

    # ------------------------------------------------------------------ forwarding

    def forward_waiting(self) -> None:
        """Send the proposals waiting for a leader to the one now known (or propose them
        here if we lead), after following a leader change (follow_new_leader)."""
        leader_id = self.core.leader_id
        if not leader_id:
            return
        if self.forwarded and leader_id != self.forwarded_to:
            self.follow_new_leader(leader_id)
        if leader_id == self.node_id:
            # We became leader meanwhile: propose them here.
            self.proposal_queue.extend(self.waiting_for_leader)
            self.waiting_for_leader.clear()
            self.submit_proposals()
            return
        messages = []
        while self.waiting_for_leader:
            command, outcome, deadline = self.waiting_for_leader.popleft()
            if outcome.done():
                continue
            self.forward_seq += 1
            self.forwarded[self.forward_seq] = (command, outcome, deadline)
            messages.append(Message(
                _CLIENT_REQUEST, src=self.node_id, dst=leader_id,
                seq=self.forward_seq, status=_WRITE, context=command,
            ))
        if messages:
            self.forwarded_to = leader_id
            self.counters["forwarded"] += len(messages)
            self.transport.send(messages)

    def follow_new_leader(self, leader_id: int) -> None:
        """Node `leader_id` leads now, not node forwarded_to, and proposals forwarded to that
        one are unanswered. It may have appended them and the new leader may commit them
        (Raft §5.4.1 Leader Completeness), or they may be lost: nothing tells which. A
        retry-safe command (a session command, Raft thesis §6.3) goes again, to the new
        leader; any other ends now with OutcomeUnknown instead of waiting for its deadline."""
        retry_safe = self.retry_safe
        old = self.forwarded_to
        forwarded, self.forwarded = self.forwarded, {}
        again: list[tuple[bytes, Any, float]] = []
        for command, outcome, deadline in forwarded.values():
            if outcome.done():
                continue
            if retry_safe is not None and retry_safe(command):
                self.sent_before.add(outcome)
                again.append((command, outcome, deadline))
            else:
                outcome.set_exception(unfinished(errors.NotLeader(
                    f"node {old} stopped leading (node {leader_id} leads) before it answered; "
                    "the command carries no session, so it is not sent again"),
                    may_apply=True))
        # Ahead of the proposals that never left: these are older.
        self.waiting_for_leader.extendleft(reversed(again))
        self.counters["reforwarded"] += len(again)

    def on_forward_response(self, message: Message) -> None:
        pending = self.forwarded.pop(message.seq, None)
        if pending is None:
            return
        command, outcome, deadline = pending
        if outcome.done():
            return
        status = message.status
        if status == _OK:
            outcome.set_result(message.context)
        elif status == _NOT_LEADER:
            # Definitely not applied there: forward again once a leader is known.
            self.waiting_for_leader.append((command, outcome, deadline))
            self.schedule_turn()
        elif status == _REJECTED:
            # Definite for the copy the leader refused; an earlier copy (before a leader
            # change) may still apply.
            outcome.set_exception(unfinished(
                errors.Rejected(message.context.decode(errors="replace")),
                may_apply=outcome in self.sent_before))
        elif status == _ERROR:
            outcome.set_exception(
                errors.StateMachineError(message.context.decode(errors="replace")))
        else:
            outcome.set_exception(errors.OutcomeUnknown("the leader could not tell the outcome"))

    # ------------------------------------------------------------------ reads (Raft §6.4)

    def note_core_tick(self) -> None:
        lease = self.caps.lease_reads
        if lease is not None:
            self.tick_clock.append((lease.ticks, self.clock()))

    def lease_read_index(self, election_timeout_ticks: int, lease_drift_ticks: int,
                         tick_s: float) -> int | None:
        """The leader's lease read index (§6.4.1), if its lease holds in ticks AND on the
        clock: the heartbeat round it rests on was sent less than the lease ago."""
        lease = self.caps.lease_reads
        result = lease.lease_read_index() if lease is not None else None
        if result is None:
            return None
        index, sent_tick = result
        # A lower bound of the time the lease's heartbeat round was sent: when the core had
        # processed a tick at or before the one it was sent at (ticks can lag the clock).
        sent_at = None
        for tick, at in reversed(self.tick_clock):
            if tick <= sent_tick:
                sent_at = at
                break
        if sent_at is None:
            return None
        lease_ticks = election_timeout_ticks - lease_drift_ticks
        if self.clock() - sent_at >= lease_ticks * tick_s:
            return None
        self.counters["lease_reads"] = self.counters.get("lease_reads", 0) + 1
        return int(index)

    def start_read_round(self) -> None:
        reads, self.read_queue = self.read_queue, []
        reads = [r for r in reads if not r.future.done()]
        if not reads:
            return
        self.read_seq += 1
        context = self.read_seq.to_bytes(8, "little") + self.node_id.to_bytes(8, "little")
        try:
            self.core.read_index(context)
        except errors.NotLeader:
            # No leader known yet: keep them queued; retry_reads re-tries every tick.
            self.read_queue.extend(reads)
            return
        except errors.Rejected as exc:
            # Overloaded: too many rounds unanswered (a leader out of reach). Nothing was
            # started; a read never enters a log, so the refusal is definite.
            for read in reads:
                read.future.set_exception(exc)
            return
        self.counters["read_rounds"] += 1
        self.read_rounds[context] = (reads, self.ticks)

    def retry_reads(self) -> None:
        if not self.read_rounds:
            return
        stale = [c for c, (_, sent) in self.read_rounds.items()
                 if self.ticks - sent >= READ_RETRY_TICKS]
        for context in stale:
            reads, _ = self.read_rounds.pop(context)
            self.read_queue.extend(r for r in reads if not r.future.done())

    def on_read_state(self, index: int, context: bytes) -> None:
        round_ = self.read_rounds.pop(context, None)
        if round_ is None:
            return
        reads = round_[0]
        if index == 0:  # the leader refused (e.g. no entry committed in its term yet): retry
            self.read_queue.extend(r for r in reads if not r.future.done())
            return
        if index <= self.applied:
            self.answer_reads(reads)
        else:
            self.reads_waiting_apply.append((index, reads))

    def serve_applied_reads(self) -> None:
        ready: list[tuple[int, list[PendingRead]]] = []
        waiting: list[tuple[int, list[PendingRead]]] = []
        for index, reads in self.reads_waiting_apply:
            (ready if index <= self.applied else waiting).append((index, reads))
        self.reads_waiting_apply = waiting
        for _, reads in ready:
            self.answer_reads(reads)

    def answer_reads(self, reads: list[PendingRead]) -> None:
        query = self.state_machine.query
        for read in reads:
            if read.future.done():
                continue
            try:
                result = query(read.query)
            except Exception as exc:   # the user's state machine: the reader's error
                read.future.set_exception(errors.StateMachineError(f"query raised {exc!r}"))
            else:
                read.future.set_result(result)
            self.counters["reads"] += 1

    # ------------------------------------------------------------------ snapshots (Raft §7)

    def maybe_snapshot(self, entries: list[Any]) -> None:
        if self.compaction_due is not None and self.core.applied_index >= (
                self.compaction_due[0].index):
            snapshot, floor = self.compaction_due
            self.compaction_due = None
            self.snapshot_done(snapshot, floor)
        if not entries or not self.snapshot_entries:
            return
        self.since_snapshot_entries += len(entries)
        # Summed in C (map over attrgetter): no Python frame per applied entry.
        self.since_snapshot_bytes += sum(map(len, map(_ENTRY_DATA, entries)))
        if (self.since_snapshot_entries >= self.snapshot_entries
                or (self.snapshot_bytes and self.since_snapshot_bytes >= self.snapshot_bytes)):
            self.start_snapshot()

    def start_snapshot(self) -> bool:
        """Snapshot the state machine at the applied index: serialise and write it off the
        turn (snapshot_jobs), then compact the log (storage_jobs; turns wait), then the core."""
        core = self.core
        index = self.applied
        if (self.snapshotting or not self.snapshot_entries or index <= core.snapshot_index
                or index < core.log.first_index - 1):
            return False
        term = core.log.term(index)
        started = self.clock()
        # A witness has no state machine data: its snapshots carry none (thesis §4 witness).
        serialize = None if self.witness else state_machine_fork(self.state_machine)
        data = self.state_machine.snapshot() if serialize is None and not self.witness else b""
        # Raft Figure 13 "last config": the snapshot carries the configuration at its index,
        # so a restart from it (or a follower installing it) keeps the membership.
        configuration = (self.membership.configuration_at(index)
                         if self.membership is not None else b"")
        pause_ms = (self.clock() - started) * 1000.0
        stats = self.snapshot_stats
        stats["last_pause_ms"] = pause_ms
        stats["max_pause_ms"] = max(stats["max_pause_ms"], pause_ms)
        self.since_snapshot_entries = self.since_snapshot_bytes = 0
        self.snapshotting = True
        # Keep snapshot_trailing_entries below the snapshot for followers slightly behind;
        # never compact past what this node's log has persisted.
        floor = min(index - self.snapshot_trailing_entries, core.log.persisted_index)
        floor = max(floor, core.log.first_index - 1)
        floor_term = core.log.term(floor)
        storage, clock = self.storage, self.clock

        def write() -> Snapshot:
            """Off the turn: serialise (if forked), checksum, write durably."""
            begun = clock()
            payload = serialize() if serialize is not None else data
            snapshot = Snapshot(index, term, payload, configuration=configuration)
            envelope = encode_snapshot(snapshot)
            storage.save_snapshot(snapshot, envelope)
            stats["last_write_s"] = clock() - begun
            stats["last_bytes"] = len(envelope)
            # The core only needs the envelope (to send to followers), not a second copy.
            return Snapshot(index, term, b"", envelope, configuration=configuration)

        def written(snapshot: Snapshot | None, error: BaseException | None) -> None:
            if error is not None or snapshot is None:
                self._die(error or errors.StorageError("snapshot write failed"))
                return
            if not self.running:
                return
            self.storage_job(lambda: storage.compact(floor, floor_term),
                             lambda: self.snapshot_done(snapshot, floor))

        self.snapshot_jobs.run(write, written)
        return True

    def snapshot_done(self, snapshot: Snapshot, floor: int) -> None:
        if self.core.applied_index < snapshot.index:
            # The state machine applies before the core hears of it (advance() follows the
            # persist): compact once the core caught up, in maybe_snapshot.
            self.compaction_due = (snapshot, floor)
            return
        self.snapshotting = False
        stats = self.snapshot_stats
        stats["taken"] += 1
        self.core.compact(snapshot, compact_to=floor)
        if self.hooks is not None:  # hook: snapshot taken
            self.hooks.snapshot_taken(snapshot)
        log_event(logger, "snapshot_taken",
                  f"node {self.node_id}: snapshot at index {snapshot.index}",
                  node_id=self.node_id, index=snapshot.index, term=snapshot.term,
                  bytes=int(stats["last_bytes"]), write_s=round(stats["last_write_s"], 6),
                  pause_ms=round(stats["last_pause_ms"], 3), log_floor=floor)

    def install_snapshot_ready(self, ready: Ready) -> None:
        """A snapshot from the leader: the snapshot file, the log compacted at it and the
        state machine restored (one storage job), then the rest of the Ready as usual."""
        snapshot = ready.snapshot
        assert snapshot is not None
        storage, state_machine, witness = self.storage, self.state_machine, self.witness

        def install() -> None:
            envelope = snapshot.envelope or encode_snapshot(snapshot)
            storage.install_snapshot(snapshot, envelope)
            if not witness:  # a witness's snapshots carry no state machine data
                state_machine.restore(snapshot.data)

        def finish() -> None:
            self.applied = snapshot.index
            self.snapshot_stats["installed"] += 1
            log_event(logger, "snapshot_installed",
                      f"node {self.node_id}: installed the leader's snapshot at index "
                      f"{snapshot.index}", node_id=self.node_id, index=snapshot.index,
                      term=snapshot.term, bytes=len(snapshot.envelope))
            self.since_snapshot_entries = self.since_snapshot_bytes = 0
            for index in [i for i in self.proposals if i <= snapshot.index]:
                _, outcome, _ = self.proposals.pop(index)
                if not outcome.done():
                    outcome.set_exception(errors.OutcomeUnknown(
                        f"entry {index} was covered by a snapshot from the leader: outcome "
                        "unknown here"))
            if self.hooks is not None:  # hook: snapshot installed
                self.hooks.snapshot_installed(snapshot)
            ready.snapshot = None
            ready.messages = []   # already sent
            self._handle_ready_body(ready)

        self.storage_job(install, finish)

    def storage_job(self, job: Callable[[], object], on_done: Callable[[], None]) -> None:
        """Run storage work (snapshot install, compaction) through storage_jobs. Turns wait
        until it is done, so nothing else touches the storage at the same time."""
        self.persisting += 1

        def finished(_: object, error: BaseException | None) -> None:
            self.persisting -= 1
            if error is not None:
                self._die(error)
                return
            if self.running:
                on_done()
                self.schedule_turn()

        self.storage_jobs.run(job, finished)

    # ------------------------------------------------------------------ timeouts and ends

    def expire_requests(self) -> None:
        now = self.clock()
        timeout = errors.Timeout
        for index in [i for i, (_, f, d) in self.proposals.items() if d <= now or f.done()]:
            _, outcome, _ = self.proposals.pop(index)
            if not outcome.done():
                outcome.set_exception(timeout(f"proposal at index {index} not applied in time"))
        for seq in [s for s, (_, f, d) in self.forwarded.items() if d <= now or f.done()]:
            _, outcome, _ = self.forwarded.pop(seq)
            if not outcome.done():
                outcome.set_exception(timeout("no answer from the leader in time"))
        if self.waiting_for_leader:
            keep: deque[tuple[bytes, Any, float]] = deque()
            for item in self.waiting_for_leader:
                if item[2] <= now and not item[1].done():
                    # Never sent anywhere (unless an earlier copy was): a definite no.
                    item[1].set_exception(unfinished(
                        errors.NotLeader("no leader known in time"),
                        may_apply=item[1] in self.sent_before))
                elif not item[1].done():
                    keep.append(item)
            self.waiting_for_leader = keep
        self.sent_before = {f for f in self.sent_before if not f.done()}
        self.expire_reads(now)

    def expire_reads(self, now: float) -> None:
        def expire(reads: list[PendingRead]) -> list[PendingRead]:
            alive = []
            for read in reads:
                if read.future.done():
                    continue
                if read.deadline <= now:
                    read.future.set_exception(errors.Timeout("read not served in time"))
                else:
                    alive.append(read)
            return alive

        self.read_queue = expire(self.read_queue)
        for context, (reads, sent) in list(self.read_rounds.items()):
            alive = expire(reads)
            if alive:
                self.read_rounds[context] = (alive, sent)
            else:
                del self.read_rounds[context]
        self.reads_waiting_apply = [
            (index, alive) for index, reads in self.reads_waiting_apply
            if (alive := expire(reads))
        ]

    def fail_everything(self, error: errors.EngineError) -> None:
        """End every pending request because of `error` (stop, crash, removal): appended or
        forwarded proposals with an unknown outcome, the rest with `error` (engine.errors
        .unfinished; reads never enter a log)."""
        sent_before = self.sent_before
        held: list[Any] = []   # never handed to a core nor forwarded
        held += [f for _, f, _ in self.proposal_queue if f not in sent_before]
        held += [f for _, f, _ in self.waiting_for_leader if f not in sent_before]
        held += [r.future for r in self.read_queue]
        for reads, _ in self.read_rounds.values():
            held += [r.future for r in reads]
        for _, reads in self.reads_waiting_apply:
            held += [r.future for r in reads]
        sent: list[Any] = []   # appended, forwarded, or a copy of them was
        sent += [f for _, f, _ in self.proposal_queue if f in sent_before]
        sent += [f for _, f, _ in self.waiting_for_leader if f in sent_before]
        sent += [f for _, f, _ in self.proposals.values()]
        sent += [f for _, f, _ in self.forwarded.values()]
        for outcomes, may_apply in ((held, False), (sent, True)):
            for outcome in outcomes:
                if not outcome.done():
                    outcome.set_exception(unfinished(error, may_apply=may_apply))
        self.proposal_queue.clear()
        self.proposals.clear()
        self.waiting_for_leader.clear()
        self.forwarded.clear()
        self.read_queue.clear()
        self.read_rounds.clear()
        self.reads_waiting_apply.clear()

    def stop(self) -> None:
        """No more turns; storage completions still in flight are ignored."""
        self.running = False
        self._persisting_ready = None


__all__ = [
    "Driver", "PENDING", "Outcome", "Transport", "Storage", "JobRunner", "Membership",
    "Hooks", "InlineJobs", "PendingRead", "state_machine_fork",
    "SWEEP_EVERY_TICKS", "READ_RETRY_TICKS",
]
