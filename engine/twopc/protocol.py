"""Classic two-phase commit, presumed abort, as a sans-IO Coordinator and Participant.

Roles and words follow Gray & Lamport, "Consensus on Transaction Commit" (TODS 2006): the
coordinator is their transaction manager (TM), a participant their resource manager (RM).
The presumed-abort rules are those of R* (Mohan, Lindsay, Obermarck, TODS 1986).

Protocol (Gray & Lamport §3):
  1. The coordinator sends PREPARE to every participant.
  2. A participant prepares its resource (tpc_prepare), force-writes a Prepared record and only
     then votes yes (VOTE yes); or it rolls back and votes no (no log write needed: presumed
     abort).
  3. All yes: the coordinator force-writes its Commit record, and only then sends
     DECISION commit. Any no, or a vote timeout: abort; nothing is written and nobody need
     acknowledge (presumed abort: no record means abort).
  4. A participant force-writes its commit Outcome, commits its resource, and then sends ACK.
     Once every participant acked, the coordinator writes End (not forced) and forgets.

Durability ("persist before send"; Gray & Lamport §3, stable storage):
  - a participant's Prepared record before its yes VOTE: after a crash it must still honour
    the promise, and recover knows whom to ask;
  - the coordinator's Commit record before any DECISION commit: after a crash it must still
    answer "commit" to anyone who asks; a coordinator without the record answers "abort"
    (presumed abort), which is right only because commit was never sent without it;
  - a participant's commit Outcome before its ACK: the ACK lets the coordinator forget.
Both go in `Ready.records` with `must_sync`; the messages that depend on them are in
`Ready.messages_after_persist`. Abort Outcome records are written unforced (presumed abort).

Blocking. A participant that voted yes may not decide alone (its vote promised to do what the
coordinator decides). If the decision does not arrive within decision_timeout_ticks it runs
cooperative termination (R* §2.1; Bernstein, Hadzilacos, Goodman §7.4): it asks the
coordinator and the other participants. A peer that knows the outcome says so; a peer that
has not voted yes aborts on the spot and says "abort" (it will now vote no). If every peer it
hears from is itself prepared and undecided, it stays blocked until the coordinator comes back
(or a peer learns the decision): 2PC's blocking window, which Paxos Commit (Gray & Lamport
§4) and the replicated transaction record close.

Sans-IO: the cores never do I/O, never read a clock (time is `tick()`), and never call the
resource: they ask their driver to (`Ready.resource_calls`). The driver processes a Ready in
this order:
  1. persist `records` (fsync first if `must_sync`);
  2. perform `resource_calls` in order; for a "prepare" call, report the outcome with
     `Participant.prepare_result(txid, ok)` (ok=False if tpc_prepare raised);
  3. send `messages_after_persist`; `messages` may be sent at any time;
  4. `outcomes` (txid, committed) are decisions the application may now learn.
"""

from __future__ import annotations

import random
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass, field

from engine.errors import ConfigError, InvariantViolation, Overloaded, Rejected
from engine.twopc.resource import Xid, xid_of

# --------------------------------------------------------------------------- messages


@dataclass(frozen=True, slots=True)
class Prepare:
    src: int
    dst: int
    txid: str
    participants: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class Vote:
    src: int
    dst: int
    txid: str
    yes: bool


@dataclass(frozen=True, slots=True)
class Decision:
    src: int
    dst: int
    txid: str
    commit: bool


@dataclass(frozen=True, slots=True)
class Ack:
    src: int
    dst: int
    txid: str


@dataclass(frozen=True, slots=True)
class DecisionRequest:
    """Cooperative termination: "what was decided for txid?" (to the coordinator or a peer)."""

    src: int
    dst: int
    txid: str


Message = Prepare | Vote | Decision | Ack | DecisionRequest

# --------------------------------------------------------------------------- durable records


@dataclass(frozen=True, slots=True)
class CommitRecord:
    """Coordinator: the commit decision (forced before any DECISION commit)."""

    txid: str
    participants: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class EndRecord:
    """Coordinator: every participant acknowledged the commit; the transaction is forgotten."""

    txid: str


@dataclass(frozen=True, slots=True)
class PreparedRecord:
    """Participant: prepared and voting yes (forced before the VOTE)."""

    txid: str
    coordinator: int
    participants: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class OutcomeRecord:
    """Participant: the decision learned (commit forced before the ACK; abort unforced)."""

    txid: str
    commit: bool


Record = CommitRecord | EndRecord | PreparedRecord | OutcomeRecord


@dataclass(frozen=True, slots=True)
class ResourceCall:
    """A tpc_* call the driver makes on the participant's resource: op is "begin",
    "prepare", "commit" or "rollback"."""

    op: str
    xid: Xid


@dataclass(slots=True)
class Ready:
    """Output since the last `ready()`; processed in the order of the module docstring."""

    records: list[Record] = field(default_factory=list)
    must_sync: bool = False
    resource_calls: list[ResourceCall] = field(default_factory=list)
    messages: list[Message] = field(default_factory=list)
    messages_after_persist: list[Message] = field(default_factory=list)
    outcomes: list[tuple[str, bool]] = field(default_factory=list)

    def is_empty(self) -> bool:
        return not (self.records or self.resource_calls or self.messages
                    or self.messages_after_persist or self.outcomes)


@dataclass(frozen=True, slots=True)
class TwoPCConfig:
    """Timeouts in ticks (the driver's clock) and the named bounds of one node.

    vote_timeout_ticks: the coordinator aborts a transaction whose votes are not all in.
    decision_timeout_ticks: a prepared participant starts cooperative termination after this
    (randomized in [T, 2T) from `seed`, so peers do not ask in lock step).
    retry_ticks: PREPARE, DECISION commit and DECISION_REQUEST are resent at this interval
    (the network may lose them).
    max_transactions: open transactions per coordinator (begin raises Overloaded beyond).
    max_remembered_outcomes: decided transactions a participant keeps answering for (oldest
    forgotten first; a forgotten one is never answered "abort" by a participant).
    """

    vote_timeout_ticks: int = 20
    decision_timeout_ticks: int = 20
    retry_ticks: int = 5
    max_transactions: int = 65_536
    max_remembered_outcomes: int = 100_000
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("vote_timeout_ticks", "decision_timeout_ticks", "retry_ticks",
                     "max_transactions", "max_remembered_outcomes"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"TwoPCConfig.{name} must be positive")


# --------------------------------------------------------------------------- coordinator


@dataclass(slots=True)
class _CoordinatorTxn:
    participants: tuple[int, ...]
    phase: str = "open"                     # open -> voting -> committed (abort: forgotten)
    yes_votes: set[int] = field(default_factory=set)
    acked: set[int] = field(default_factory=set)
    elapsed_ticks: int = 0


class Coordinator:
    """The transaction manager. `records`: its durable log, for a restart."""

    def __init__(self, node_id: int, config: TwoPCConfig | None = None, *,
                 records: Iterable[Record] = ()) -> None:
        self.node_id = node_id
        self.config = config or TwoPCConfig()
        self._txns: dict[str, _CoordinatorTxn] = {}
        self._ready = Ready()
        ended = set()
        committed: dict[str, tuple[int, ...]] = {}
        for record in records:
            if isinstance(record, CommitRecord):
                committed[record.txid] = record.participants
            elif isinstance(record, EndRecord):
                ended.add(record.txid)
        for txid, participants in committed.items():
            if txid not in ended:
                # A logged commit survives the crash: finish it (R* presumed abort).
                self._txns[txid] = _CoordinatorTxn(participants, "committed")
                self._send_decision(txid, True, participants, after_persist=False)

    def state(self, txid: str) -> str:
        txn = self._txns.get(txid)
        return txn.phase if txn else "unknown"

    def begin(self, txid: str, participants: Iterable[int]) -> None:
        if txid in self._txns:
            raise Rejected(f"transaction {txid!r} is already open")
        if len(self._txns) >= self.config.max_transactions:
            raise Overloaded(f"{len(self._txns)} open transactions "
                             f"(TwoPCConfig.max_transactions={self.config.max_transactions})")
        members = tuple(dict.fromkeys(participants))
        if not members:
            raise ConfigError("a transaction needs at least one participant")
        self._txns[txid] = _CoordinatorTxn(members)

    def commit(self, txid: str) -> None:
        """Phase 1: ask every participant to prepare. The outcome arrives in Ready.outcomes."""
        txn = self._open(txid)
        txn.phase = "voting"
        txn.elapsed_ticks = 0
        self._send_prepare(txid, txn, txn.participants)

    def rollback(self, txid: str) -> None:
        self._open(txid)
        self._abort(txid)

    def _open(self, txid: str) -> _CoordinatorTxn:
        txn = self._txns.get(txid)
        if txn is None or txn.phase != "open":
            raise Rejected(f"transaction {txid!r} is not open here ({self.state(txid)})")
        return txn

    def step(self, message: Message) -> None:
        txn = self._txns.get(message.txid)
        if isinstance(message, Vote):
            if txn is None:
                if message.yes:
                    # No record: never committed, or committed and acked by all (then this
                    # vote is stale and the participant ignores the answer). Presumed abort.
                    self._reply(message, commit=False)
            elif txn.phase == "committed":
                self._reply(message, commit=True)
            elif txn.phase == "voting" and message.src in txn.participants:
                if not message.yes:
                    self._abort(message.txid)
                else:
                    txn.yes_votes.add(message.src)
                    if len(txn.yes_votes) == len(txn.participants):
                        self._decide_commit(message.txid, txn)
        elif isinstance(message, Ack):
            if txn is not None and txn.phase == "committed":
                txn.acked.add(message.src)
                if len(txn.acked) == len(txn.participants):
                    # Not forced: losing it only means resending commit after a restart.
                    self._ready.records.append(EndRecord(message.txid))
                    del self._txns[message.txid]
        elif isinstance(message, DecisionRequest):
            if txn is None:
                self._reply(message, commit=False)          # presumed abort
            elif txn.phase == "committed":
                self._reply(message, commit=True)
            # open or voting: undecided; the decision goes to every participant anyway.

    def tick(self) -> None:
        for txid, txn in list(self._txns.items()):
            if txn.phase == "open":
                continue
            txn.elapsed_ticks += 1
            if txn.phase == "voting" and txn.elapsed_ticks >= self.config.vote_timeout_ticks:
                self._abort(txid)
            elif txn.elapsed_ticks % self.config.retry_ticks == 0:
                if txn.phase == "voting":
                    self._send_prepare(txid, txn, [p for p in txn.participants
                                                   if p not in txn.yes_votes])
                else:
                    self._send_decision(txid, True, [p for p in txn.participants
                                                     if p not in txn.acked],
                                        after_persist=False)

    def ready(self) -> Ready:
        ready, self._ready = self._ready, Ready()
        return ready

    def _decide_commit(self, txid: str, txn: _CoordinatorTxn) -> None:
        txn.phase = "committed"
        txn.elapsed_ticks = 0
        # Gray & Lamport §3: the decision is on stable storage before anyone hears it.
        self._ready.records.append(CommitRecord(txid, txn.participants))
        self._ready.must_sync = True
        self._send_decision(txid, True, txn.participants, after_persist=True)
        self._ready.outcomes.append((txid, True))

    def _abort(self, txid: str) -> None:
        txn = self._txns.pop(txid)
        # Presumed abort: nothing logged, no acks; a participant that misses this asks and
        # gets "abort" from the absence of a record. Sent in the open phase too, so active
        # branches are released without waiting for their application.
        self._send_decision(txid, False, txn.participants, after_persist=False)
        self._ready.outcomes.append((txid, False))

    def _send_prepare(self, txid: str, txn: _CoordinatorTxn, to: Iterable[int]) -> None:
        self._ready.messages.extend(
            Prepare(self.node_id, p, txid, txn.participants) for p in to)

    def _send_decision(self, txid: str, commit: bool, to: Iterable[int], *,
                       after_persist: bool) -> None:
        out = self._ready.messages_after_persist if after_persist else self._ready.messages
        out.extend(Decision(self.node_id, p, txid, commit) for p in to)

    def _reply(self, message: Message, *, commit: bool) -> None:
        # A commit answer may rest on a Commit record still in this Ready: after persist.
        out = self._ready.messages_after_persist if commit else self._ready.messages
        out.append(Decision(self.node_id, message.src, message.txid, commit))


# --------------------------------------------------------------------------- participant


@dataclass(slots=True)
class _ParticipantTxn:
    phase: str = "active"                   # active -> preparing -> prepared
    coordinator: int = 0
    participants: tuple[int, ...] = ()
    elapsed_ticks: int = 0
    ask_at_ticks: int = 0


class Participant:
    """A resource manager. For a restart, `records` is its durable log and `in_doubt` what
    its resource's tpc_recover() returned: the protocol resolves every one of them."""

    def __init__(self, node_id: int, config: TwoPCConfig | None = None, *,
                 records: Iterable[Record] = (), in_doubt: Iterable[Xid] = ()) -> None:
        self.node_id = node_id
        self.config = config or TwoPCConfig()
        self._rng = random.Random(self.config.seed * 1_000_003 + node_id)
        self._txns: dict[str, _ParticipantTxn] = {}
        self._outcomes: OrderedDict[str, bool] = OrderedDict()
        self._ready = Ready()
        prepared: dict[str, PreparedRecord] = {}
        # Every outcome in the log, not only the remembered tail: a commit forgotten from
        # memory must never be taken for a lost abort below.
        logged: dict[str, bool] = {}
        for record in records:
            if isinstance(record, PreparedRecord):
                prepared[record.txid] = record
            elif isinstance(record, OutcomeRecord):
                logged[record.txid] = record.commit
                self._remember(record.txid, record.commit)
        recovered = {xid.global_transaction_id for xid in in_doubt}
        for txid in sorted(recovered):
            known = logged.get(txid)
            if known is not None:
                # Decided before the crash, not yet applied to the resource: apply it now.
                self._call("commit" if known else "rollback", txid)
            elif txid in prepared:
                record = prepared[txid]
                self._txns[txid] = _ParticipantTxn(
                    "prepared", record.coordinator, record.participants,
                    ask_at_ticks=1)  # in doubt: ask at the first tick
            else:
                # Prepared in the resource but no Prepared record: the yes vote was never
                # sent (it follows the record), so aborting alone is allowed.
                self._call("rollback", txid)
                self._decide(txid, False, apply=False)
        for txid in prepared:
            if txid not in recovered and txid not in logged:
                # The resource no longer holds it and no commit Outcome was forced: it was
                # rolled back (its unforced abort record was lost).
                self._remember(txid, False)

    # ------------------------------------------------------------ inputs

    def state(self, txid: str) -> str:
        txn = self._txns.get(txid)
        if txn is not None:
            return txn.phase
        known = self._outcomes.get(txid)
        return "unknown" if known is None else ("committed" if known else "aborted")

    def in_doubt(self) -> list[str]:
        """Prepared and undecided: only the coordinator (or a peer who knows) can finish it."""
        return sorted(t for t, txn in self._txns.items() if txn.phase == "prepared")

    def begin(self, txid: str) -> None:
        if txid in self._txns or txid in self._outcomes:
            raise Rejected(f"transaction {txid!r} already known here ({self.state(txid)})")
        self._txns[txid] = _ParticipantTxn()
        self._call("begin", txid)

    def rollback(self, txid: str) -> None:
        """Unilateral abort: allowed only before voting yes."""
        txn = self._txns.get(txid)
        if txn is None or txn.phase == "prepared":
            raise Rejected(f"transaction {txid!r} cannot be rolled back here "
                           f"({self.state(txid)}): a prepared participant waits for the decision")
        self._decide(txid, False)

    def prepare_result(self, txid: str, ok: bool) -> None:
        """The driver's report of a "prepare" resource call."""
        txn = self._txns.get(txid)
        if txn is None or txn.phase != "preparing":
            if ok and self._outcomes.get(txid) is False:
                self._call("rollback", txid)     # aborted while the prepare was running
            return
        if not ok:
            self._decide(txid, False)
            self._ready.messages.append(Vote(self.node_id, txn.coordinator, txid, False))
            return
        txn.phase = "prepared"
        txn.elapsed_ticks = 0
        txn.ask_at_ticks = self._decision_timeout()
        # Gray & Lamport §3: prepared state on stable storage before the yes vote.
        self._ready.records.append(PreparedRecord(txid, txn.coordinator, txn.participants))
        self._ready.must_sync = True
        self._ready.messages_after_persist.append(Vote(self.node_id, txn.coordinator, txid, True))

    def step(self, message: Message) -> None:
        txid = message.txid
        txn = self._txns.get(txid)
        known = self._outcomes.get(txid)
        if isinstance(message, Prepare):
            if known is not None:
                if not known:
                    self._ready.messages.append(Vote(self.node_id, message.src, txid, False))
            elif txn is None:
                # Never begun here (or begun and lost in a crash before preparing): no.
                self._ready.messages.append(Vote(self.node_id, message.src, txid, False))
            elif txn.phase == "active":
                txn.phase = "preparing"
                txn.coordinator = message.src
                txn.participants = message.participants
                self._call("prepare", txid)
            elif txn.phase == "prepared":
                self._ready.messages_after_persist.append(
                    Vote(self.node_id, message.src, txid, True))
        elif isinstance(message, Decision):
            if known is not None:
                if message.commit and not known:
                    raise InvariantViolation(
                        f"participant {self.node_id} aborted {txid!r} and was told commit")
                if message.commit:
                    self._ready.messages_after_persist.append(
                        Ack(self.node_id, message.src, txid))
                # An abort for a committed transaction is a stale presumed-abort answer.
            elif txn is None:
                if message.commit:
                    # Committed and forgotten here; the coordinator still waits for an ack.
                    self._ready.messages.append(Ack(self.node_id, message.src, txid))
            elif message.commit:
                if txn.phase != "prepared":
                    raise InvariantViolation(
                        f"participant {self.node_id} told commit {txid!r} while {txn.phase}")
                self._decide(txid, True)
                self._ready.messages_after_persist.append(Ack(self.node_id, message.src, txid))
            else:
                self._decide(txid, False)
        elif isinstance(message, DecisionRequest):
            if known is not None:
                self._answer(message, known)
            elif txn is not None and txn.phase in ("active", "preparing"):
                # Not voted yes: may abort alone, and then answers abort (cooperative
                # termination; it will vote no if PREPARE still comes).
                self._decide(txid, False)
                self._answer(message, False)
            # prepared: as uncertain as the asker; unknown: silent (it may be a forgotten
            # commit, so "abort" would be a lie).
        elif isinstance(message, Vote | Ack):
            pass                                 # coordinator messages; not ours

    def tick(self) -> None:
        for txid, txn in self._txns.items():
            if txn.phase != "prepared":
                continue
            txn.elapsed_ticks += 1
            if txn.elapsed_ticks >= txn.ask_at_ticks:
                # Blocked: ask the coordinator and every other participant.
                txn.ask_at_ticks = txn.elapsed_ticks + self.config.retry_ticks
                for peer in (txn.coordinator, *txn.participants):
                    if peer != self.node_id:
                        self._ready.messages.append(DecisionRequest(self.node_id, peer, txid))

    def ready(self) -> Ready:
        ready, self._ready = self._ready, Ready()
        return ready

    # ------------------------------------------------------------ helpers

    def _decision_timeout(self) -> int:
        timeout = self.config.decision_timeout_ticks
        return timeout + self._rng.randrange(timeout)

    def _answer(self, message: Message, commit: bool) -> None:
        out = self._ready.messages_after_persist if commit else self._ready.messages
        out.append(Decision(self.node_id, message.src, message.txid, commit))

    def _call(self, op: str, txid: str) -> None:
        self._ready.resource_calls.append(ResourceCall(op, xid_of(txid, self.node_id)))

    def _decide(self, txid: str, commit: bool, *, apply: bool = True) -> None:
        self._txns.pop(txid, None)
        self._remember(txid, commit)
        self._ready.records.append(OutcomeRecord(txid, commit))
        if commit:
            self._ready.must_sync = True         # forced before the ACK (R* presumed abort)
        if apply:
            self._call("commit" if commit else "rollback", txid)
        self._ready.outcomes.append((txid, commit))

    def _remember(self, txid: str, commit: bool) -> None:
        self._outcomes[txid] = commit
        self._outcomes.move_to_end(txid)
        while len(self._outcomes) > self.config.max_remembered_outcomes:
            self._outcomes.popitem(last=False)
