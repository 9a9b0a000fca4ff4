"""ReadIndex bookkeeping on a leader (Raft thesis §6.4), shared by the cores.

A linearizable read needs (1) the commit index when the read arrived and (2) proof that the
reader was still the leader after that moment: one round of heartbeats acknowledged by a
quorum. Rounds are numbered; a read waits for the acknowledgement of a round sent after it
started. Which round a read waits for, what counts as a quorum of acknowledgements and when a
new leader may start reads at all are the protocol's (engine/raft/core.py: a round per
heartbeat broadcast, joint quorums, the first commit of its term; engine/paxos/core.py: a
round per read, n - |Q1| + 1 acceptors, the end of phase-1 recovery). This module keeps the
reads, answers and refuses them, and bounds how many wait (Limits.max_pending_proposals).

Answers: a read started on this node becomes a ReadState; one a follower forwarded
(READ_INDEX) is answered with READ_INDEX_RESPONSE(index, context), or reject = True, which the
follower turns into ReadState(0, context) ("retry").
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import Any

from engine.errors import NotLeader, Overloaded
from engine.messages import Message, MessageType
from engine.types import ReadState

_READ_INDEX = MessageType.READ_INDEX
_READ_INDEX_RESPONSE = MessageType.READ_INDEX_RESPONSE


class PendingRead:
    """A read waiting for the acknowledgement of heartbeat round `round` (thesis §6.4 step 3);
    served once applied >= `index`."""

    __slots__ = ("round", "index", "requester", "context")

    def __init__(self, round_: int, index: int, requester: int, context: bytes) -> None:
        self.round = round_
        self.index = index
        self.requester = requester
        self.context = context


class ReadIndexQueue:
    """The reads one leader holds: `pending` wait for a heartbeat round, `deferred` wait until
    the leader may serve reads at all. `states` collects this node's answers for the next
    Ready; `send` emits a response to a follower. `round` numbers heartbeat rounds for the
    life of the core; `heartbeat_due` asks the next ready() for a round now."""

    __slots__ = ("node_id", "send", "limit", "round", "heartbeat_due", "pending", "deferred",
                 "states")

    def __init__(self, node_id: int, send: Callable[[Any], None], limit: int) -> None:
        self.node_id = node_id
        self.send = send
        self.limit = limit
        self.round = 0
        self.heartbeat_due = False
        self.pending: deque[PendingRead] = deque()
        self.deferred: list[tuple[int, bytes]] = []
        self.states: list[ReadState] = []

    def count(self) -> int:
        return len(self.pending) + len(self.deferred)

    def full(self) -> bool:
        return len(self.pending) + len(self.deferred) >= self.limit

    def check_local(self) -> None:
        """Overloaded if a read started on this leader would exceed the bound."""
        if self.full():
            raise Overloaded(f"max_pending_proposals={self.limit} reads pending")

    def forward(self, leader_id: int, term: int, context: bytes) -> None:
        """A read started on a follower asks the leader for the read index (thesis §6.4);
        NotLeader when no leader is known."""
        if not leader_id:
            raise NotLeader("no leader known", leader_id=None)
        self.send(Message(_READ_INDEX, self.node_id, leader_id, term, context=context))

    def wait(self, round_: int, index: int, requester: int, context: bytes) -> None:
        self.pending.append(PendingRead(round_, index, requester, context))

    def take_deferred(self) -> list[tuple[int, bytes]]:
        deferred, self.deferred = self.deferred, []
        return deferred

    def confirm(self, confirmed: int, term: int) -> None:
        """Serves, in order, every pending read whose round a quorum acknowledged."""
        pending = self.pending
        while pending and pending[0].round <= confirmed:
            read = pending.popleft()
            self.answer(read.requester, read.index, read.context, term)

    def answer(self, requester: int, index: int, context: bytes, term: int) -> None:
        if requester == self.node_id:
            self.states.append(ReadState(index, context))
        else:
            self.send(Message(_READ_INDEX_RESPONSE, self.node_id, requester, term, index=index,
                              context=context))

    def reject(self, requester: int, context: bytes, term: int) -> None:
        if requester == self.node_id:
            self.states.append(ReadState(0, context))
        else:
            self.send(Message(_READ_INDEX_RESPONSE, self.node_id, requester, term, reject=True,
                              context=context))

    def fail_all(self, term: int) -> None:
        """Leadership is lost or changing: refuse every read not yet confirmed."""
        for read in self.pending:
            self.reject(read.requester, read.context, term)
        for requester, context in self.deferred:
            self.reject(requester, context, term)
        self.pending.clear()
        self.deferred = []
        self.heartbeat_due = False

    def on_response(self, m: Any) -> None:
        """The leader's READ_INDEX_RESPONSE to a read this follower forwarded."""
        self.states.append(ReadState(0 if m.reject or m.index <= 0 else m.index, m.context))
