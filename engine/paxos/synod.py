"""Single-decree Paxos (the synod protocol of Paxos Made Simple §2), sans-IO: a write-once
register. Every replica is a proposer, an acceptor and a learner of ONE value.

Theory of operation
-------------------
propose(value) runs phase 1 with a fresh ballot (engine.paxos.ballot, unique per proposer):
PREPARE(b) to every acceptor; an acceptor that has not promised a higher ballot promises b
and answers PROMISE(b, entries = [the value it accepted, Entry.term = its ballot] or []).
With a phase-1 quorum of promises the proposer picks the value accepted in the highest
ballot, or its own if none (§2.2 P2c), and sends ACCEPT(b, [value]). An acceptor accepts
unless it promised a higher ballot; a phase-2 quorum of ACCEPTED(b) means the value is chosen.
The proposer then announces CHOSEN(b, [value]) so the other learners know it; a replica that
already knows the chosen value answers any PREPARE or ACCEPT with CHOSEN.

Duelling proposers (§2.5: two proposers can keep preempting each other forever) make progress
through randomized exponential backoff: a proposer that is refused (a higher ballot exists) or
gets no quorum within `retry_ticks` waits a random number of ticks drawn from a seeded
random.Random in [1, min(backoff_cap_ticks, backoff_base_ticks * 2**attempt)] before trying
again with a higher ballot.

Durability (§2.3: an acceptor must remember what it promised and accepted even if it fails):
promises and acceptances are written through Ready (HardState.term = promised ballot;
Ready.entries = [slot 1: the accepted Entry(ballot, 1, value) or a hole Entry(0, 1, b"",
NOOP), slot 2: the chosen value once learned] with HardState.commit = 2 then), and every
PROMISE / ACCEPTED goes out in messages_after_persist, i.e. only after the fsync. The learned
value is reported once in Ready.committed_entries = [Entry(ballot, 1, value)] and kept in
`.chosen`.

Reads (`learn()`) run the same ballots without a value of our own: phase 1 either reveals an
accepted value, which the reader drives through phase 2 like any proposer (so it is chosen and
learned), or shows that no acceptor of a phase-1 quorum accepted anything. Then nothing can
have been chosen before that quorum promised (any Q2 that chose a value intersects the Q1, and
an acceptor that promised us refuses lower ballots afterwards): the read reports "nothing
chosen yet" as Ready.read_states = [ReadState(index=0, context=b"")].

A proposer may stop at any time (Paxos Made Simple §2.2: "a proposer can abandon a proposal in
the middle of the protocol at any time"): `abandon()` drops the client's value and goes idle,
so a register whose caller gave up stops sending ballots. Acceptor state is untouched.

Message fields: PREPARE term = ballot; PROMISE term = ballot, entries = accepted value,
reject + reject_term = the higher promised ballot; ACCEPT term = ballot, entries = [value];
ACCEPTED term = ballot, reject, reject_term; CHOSEN term = ballot, entries = [value].
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

from engine.errors import ConfigError, InvariantViolation
from engine.messages import Entry, EntryKind, Message, MessageType
from engine.paxos.ballot import MAX_NODE_ID, NO_BALLOT, ballot_node, next_ballot
from engine.types import HardState, ReadState, Ready

_MT = MessageType
_SYNOD_TYPES = frozenset({_MT.PREPARE, _MT.PROMISE, _MT.ACCEPT, _MT.ACCEPTED, _MT.CHOSEN})
_AFTER_PERSIST = frozenset({_MT.PROMISE, _MT.ACCEPTED, _MT.PREPARE})
_ACCEPTED_SLOT = 1
_CHOSEN_SLOT = 2
_EMPTY_HARD_STATE = HardState()


@dataclass(frozen=True, slots=True)
class SynodConfig:
    """acceptors: every replica's id (each is also a proposer and learner)."""

    node_id: int
    acceptors: tuple[int, ...]
    seed: int = 0
    phase1_quorum: int | None = None
    phase2_quorum: int | None = None
    retry_ticks: int = 10
    backoff_base_ticks: int = 2
    backoff_cap_ticks: int = 64
    check_invariants: bool = False

    def __post_init__(self) -> None:
        if len(set(self.acceptors)) != len(self.acceptors) or not self.acceptors:
            raise ConfigError(f"acceptors must be distinct, got {self.acceptors}")
        if any(not 0 < a <= MAX_NODE_ID for a in self.acceptors):
            raise ConfigError(f"acceptor ids must be in [1, {MAX_NODE_ID}]")
        if self.node_id not in self.acceptors:
            raise ConfigError(f"node_id {self.node_id} is not one of {self.acceptors}")
        n = len(self.acceptors)
        if not (1 <= self.q1 <= n and 1 <= self.q2 <= n and self.q1 + self.q2 > n):
            raise ConfigError(
                f"quorums q1={self.q1}, q2={self.q2} must be in [1, {n}] with q1 + q2 > {n}"
            )
        if min(self.retry_ticks, self.backoff_base_ticks, self.backoff_cap_ticks) <= 0:
            raise ConfigError("retry and backoff ticks must be positive")

    @property
    def q1(self) -> int:
        return self.phase1_quorum or len(self.acceptors) // 2 + 1

    @property
    def q2(self) -> int:
        return self.phase2_quorum or len(self.acceptors) // 2 + 1


class Synod:
    """One replica of a write-once register (see the module docstring)."""

    IDLE, PREPARING, ACCEPTING, BACKOFF = "idle", "preparing", "accepting", "backoff"

    def __init__(
        self, config: SynodConfig, hard_state: HardState = _EMPTY_HARD_STATE,
        entries: list[Any] | None = None,
    ) -> None:
        self.config = config
        self.node_id = config.node_id
        self.peers = tuple(a for a in config.acceptors if a != config.node_id)
        self._rng = random.Random(f"synod:{config.seed}:{config.node_id}")
        # Acceptor state (durable).
        self.promised = hard_state.term
        self.accepted_ballot = NO_BALLOT
        self.accepted_value = b""
        self.chosen: bytes | None = None
        self.chosen_ballot = NO_BALLOT
        for entry in entries or []:
            if entry.index == _ACCEPTED_SLOT and entry.term != NO_BALLOT:
                self.accepted_ballot, self.accepted_value = entry.term, bytes(entry.data)
            elif entry.index == _CHOSEN_SLOT and hard_state.commit >= _CHOSEN_SLOT:
                self.chosen, self.chosen_ballot = bytes(entry.data), entry.term
        if self.accepted_ballot > self.promised:
            raise ConfigError("stored accepted ballot above the stored promise")
        # Proposer state (volatile).
        self.state = self.IDLE
        self.value: bytes | None = None      # what our client asked for
        self.ballot = NO_BALLOT
        self._max_seen = self.promised
        self._promises: dict[int, tuple[int, bytes]] = {}
        self._accepts: set[int] = set()
        self._proposal = b""
        self._elapsed = 0
        self._backoff_left = 0
        self.attempts = 0
        # Ready bookkeeping.
        self._dirty = False
        self._emitted = HardState(self.promised, 0, _CHOSEN_SLOT if self.chosen else 0)
        self._messages: list[Any] = []
        self._after_persist: list[Any] = []
        self._learned_unreported = False
        self._nothing_chosen_unreported = False
        self.counters = {"ballots": 0, "preempted": 0, "timeouts": 0, "backoff_ticks": 0}
        self._promised_checked = self.promised

    # ------------------------------------------------------------------ public surface

    def propose(self, value: bytes) -> None:
        """Try to get `value` chosen; `.chosen` is the outcome (maybe another's value)."""
        if self.chosen is not None:
            self._learned_unreported = True  # report it again to this caller
            return
        if self.value is None:
            self.value = bytes(value)
        if self.state == self.IDLE:
            self._start_ballot()
        self._maybe_check()

    def learn(self) -> None:
        """Read the register: `.chosen` once known, or a ReadState(0) if nothing is chosen."""
        if self.chosen is not None:
            self._learned_unreported = True
            return
        if self.state == self.IDLE:
            self._start_ballot()
        self._maybe_check()

    def abandon(self) -> None:
        """Stop proposing and reading (Paxos Made Simple §2.2); acceptor state is kept."""
        self.value = None
        if self.state != self.IDLE:
            self.state = self.IDLE
            self._promises, self._accepts = {}, set()

    def tick(self) -> None:
        if self.chosen is not None or self.state == self.IDLE:
            return
        if self.state == self.BACKOFF:
            self._backoff_left -= 1
            self.counters["backoff_ticks"] += 1
            if self._backoff_left <= 0:
                self._start_ballot()
        else:
            self._elapsed += 1
            if self._elapsed >= self.config.retry_ticks:
                self.counters["timeouts"] += 1
                self._back_off()
        self._maybe_check()

    def step(self, m: Any) -> None:
        if m.type not in _SYNOD_TYPES or m.src not in self.config.acceptors \
                or m.src == self.node_id or m.dst != self.node_id or m.term <= 0:
            return
        if m.term > self._max_seen:
            self._max_seen = m.term
        kind = m.type
        if kind == _MT.CHOSEN:
            if len(m.entries) == 1:
                self._learn(m.term, bytes(m.entries[0].data))
        elif kind in (_MT.PREPARE, _MT.ACCEPT) and ballot_node(m.term) != m.src:
            pass  # a ballot is only used by its owner
        elif self.chosen is not None and kind in (_MT.PREPARE, _MT.ACCEPT):
            self._send(Message(_MT.CHOSEN, self.node_id, m.src, self.chosen_ballot,
                               entries=[Entry(self.chosen_ballot, 1, self.chosen)]))
        elif kind == _MT.PREPARE:
            self._on_prepare(m)
        elif kind == _MT.ACCEPT:
            self._on_accept(m)
        elif kind == _MT.PROMISE:
            self._on_promise(m)
        else:
            self._on_accepted(m)
        self._maybe_check()

    def has_ready(self) -> bool:
        return bool(self._dirty or self._messages or self._after_persist
                    or self._learned_unreported or self._nothing_chosen_unreported)

    def ready(self) -> Ready:
        ready = Ready()
        hard_state = HardState(self.promised, 0, _CHOSEN_SLOT if self.chosen is not None else 0)
        if hard_state != self._emitted:
            ready.hard_state = hard_state
            self._emitted = hard_state
            ready.must_sync = True   # a promise or the chosen value (Paxos Made Simple §2.3)
        if self._dirty:
            ready.entries = [Entry(self.accepted_ballot, _ACCEPTED_SLOT, self.accepted_value,
                                   int(EntryKind.NORMAL) if self.accepted_ballot
                                   else int(EntryKind.NOOP))]
            if self.chosen is not None:
                ready.entries.append(Entry(self.chosen_ballot, _CHOSEN_SLOT, self.chosen))
            self._dirty = False
            ready.must_sync = True
        ready.messages, self._messages = self._messages, []
        ready.messages_after_persist, self._after_persist = self._after_persist, []
        if self._learned_unreported and self.chosen is not None:
            ready.committed_entries = [Entry(self.chosen_ballot, 1, self.chosen)]
            self._learned_unreported = False
        if self._nothing_chosen_unreported:
            ready.read_states = [ReadState(0, b"")]
            self._nothing_chosen_unreported = False
        return ready

    def advance(self, ready: Ready) -> None:
        """Nothing to acknowledge: the synod has no pipelined state."""

    # ------------------------------------------------------------------ proposer

    def _start_ballot(self) -> None:
        self.ballot = next_ballot(max(self.promised, self._max_seen), self.node_id)
        self._max_seen = self.ballot
        self.counters["ballots"] += 1
        self.attempts += 1
        self.state = self.PREPARING
        self._elapsed = 0
        self._promises = {}
        self._accepts = set()
        # Our own acceptor promises our ballot (persisted before PREPARE goes out).
        self._promise(self.ballot)
        self._promises[self.node_id] = (self.accepted_ballot, self.accepted_value)
        for peer in self.peers:
            self._send(Message(_MT.PREPARE, self.node_id, peer, self.ballot))
        self._maybe_phase2()

    def _back_off(self) -> None:
        """Randomized exponential backoff (seeded) so duelling proposers stop colliding."""
        self.state = self.BACKOFF
        cap = min(self.config.backoff_cap_ticks,
                  self.config.backoff_base_ticks << min(self.attempts, 16))
        self._backoff_left = self._rng.randint(1, cap)

    def _on_promise(self, m: Any) -> None:
        if m.reject:
            self._on_refused(m)
            return
        if self.state != self.PREPARING or m.term != self.ballot or m.src in self._promises:
            return
        if m.entries:
            entry = m.entries[0]
            if not 0 < entry.term <= m.term:
                return  # malformed: an accepted ballot is below the promised one
            self._promises[m.src] = (entry.term, bytes(entry.data))
        else:
            self._promises[m.src] = (NO_BALLOT, b"")
        self._maybe_phase2()

    def _maybe_phase2(self) -> None:
        if self.state != self.PREPARING or len(self._promises) < self.config.q1:
            return
        # Paxos Made Simple §2.2 P2c: the value of the highest-numbered accepted proposal
        # among the quorum, or any value (ours) if none was accepted.
        highest, value = max(self._promises.values(), key=lambda p: p[0])
        if highest == NO_BALLOT and self.value is None:
            # A read (learn()): no acceptor of this Q1 accepted anything, so nothing was
            # chosen before they promised (every Q2 intersects this Q1).
            self.state = self.IDLE
            self._nothing_chosen_unreported = True
            return
        self._proposal = value if highest != NO_BALLOT else (self.value or b"")
        self.state = self.ACCEPTING
        self._elapsed = 0
        if self.promised == self.ballot:
            self._accept(self.ballot, self._proposal)
            self._accepts.add(self.node_id)
        for peer in self.peers:
            self._send(Message(_MT.ACCEPT, self.node_id, peer, self.ballot,
                               entries=[Entry(self.ballot, 1, self._proposal)]))
        self._maybe_chosen()

    def _on_accepted(self, m: Any) -> None:
        if m.reject:
            self._on_refused(m)
            return
        if self.state != self.ACCEPTING or m.term != self.ballot:
            return
        self._accepts.add(m.src)
        self._maybe_chosen()

    def _maybe_chosen(self) -> None:
        if self.state == self.ACCEPTING and len(self._accepts) >= self.config.q2:
            self._learn(self.ballot, self._proposal)
            for peer in self.peers:
                self._send(Message(_MT.CHOSEN, self.node_id, peer, self.ballot,
                                   entries=[Entry(self.ballot, 1, self._proposal)]))

    def _on_refused(self, m: Any) -> None:
        if m.reject_term > self._max_seen:
            self._max_seen = m.reject_term
        if self.state in (self.PREPARING, self.ACCEPTING) and m.term == self.ballot \
                and m.reject_term > self.ballot:
            self.counters["preempted"] += 1
            self._back_off()

    def _learn(self, ballot: int, value: bytes) -> None:
        if self.chosen is not None:
            if self.chosen != value and self.config.check_invariants:
                raise InvariantViolation(
                    f"synod node {self.node_id}: learned {value!r} after {self.chosen!r}")
            return
        self.chosen, self.chosen_ballot = value, ballot
        self.state = self.IDLE
        self._dirty = True
        self._learned_unreported = True

    # ------------------------------------------------------------------ acceptor

    def _on_prepare(self, m: Any) -> None:
        if m.term < self.promised:
            self._send(Message(_MT.PROMISE, self.node_id, m.src, m.term, reject=True,
                               reject_term=self.promised))
            return
        self._promise(m.term)
        entries = ([Entry(self.accepted_ballot, 1, self.accepted_value)]
                   if self.accepted_ballot else [])
        self._send(Message(_MT.PROMISE, self.node_id, m.src, m.term, entries=entries))

    def _on_accept(self, m: Any) -> None:
        if m.term < self.promised or len(m.entries) != 1:
            self._send(Message(_MT.ACCEPTED, self.node_id, m.src, m.term, reject=True,
                               reject_term=self.promised))
            return
        self._promise(m.term)
        self._accept(m.term, bytes(m.entries[0].data))
        self._send(Message(_MT.ACCEPTED, self.node_id, m.src, m.term))

    def _promise(self, ballot: int) -> None:
        if ballot > self.promised:
            self.promised = ballot
            if self.state in (self.PREPARING, self.ACCEPTING) and ballot > self.ballot:
                self.counters["preempted"] += 1
                self._back_off()

    def _accept(self, ballot: int, value: bytes) -> None:
        if (ballot, value) != (self.accepted_ballot, self.accepted_value):
            self.accepted_ballot, self.accepted_value = ballot, value
            self._dirty = True

    def _send(self, m: Any) -> None:
        (self._after_persist if m.type in _AFTER_PERSIST else self._messages).append(m)

    def _maybe_check(self) -> None:
        if not self.config.check_invariants:
            return
        if self.promised < self._promised_checked:
            raise InvariantViolation(f"synod node {self.node_id}: promise went back")
        self._promised_checked = self.promised
        if self.accepted_ballot > self.promised:
            raise InvariantViolation(f"synod node {self.node_id}: accepted above promise")
