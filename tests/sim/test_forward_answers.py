"""Answers addressed to an earlier incarnation of a replica (a process restart, a replica
rebuilt in place) can still arrive: the sender's boot epoch authenticates the leader, not
which incarnation of the receiver asked. A forwarded proposal's answer is matched by its seq
alone (CLIENT_RESPONSE echoes the request's seq), a ReadIndex answer by its context: a stale
answer must never acknowledge another command, nor serve a read of this incarnation at an
index the leader confirmed for an older one. The many-groups swarm found both (a Multi-Paxos
seed: an acknowledged command that no replica ever applied; a Raft seed: a read served at
index 23 when 44 was committed before it began)."""

from __future__ import annotations

from typing import Any

import pytest

from engine.driver import Driver
from engine.errors import InvariantViolation, NotLeader
from engine.messages import ClientStatus, Message, MessageType


class FollowerCore:
    """A follower that knows node 1 leads: every proposal is refused (and forwarded)."""

    node_id, role, leader_id = 2, "follower", 1
    commit_index = applied_index = 0

    def tick(self) -> None: ...
    def step(self, message: Any) -> None: ...
    def has_ready(self) -> bool:
        return False

    def propose(self, commands: list[bytes]) -> tuple[int, int, int]:
        raise NotLeader(leader_id=1)

    def read_index(self, context: bytes) -> None:
        """Sent to the leader; its answer comes back through Driver.on_read_state."""


class Wire:
    def __init__(self) -> None:
        self.sent: list[Message] = []

    def send(self, messages: list[Message], now: bool = False) -> None:
        self.sent.extend(messages)

    def flush(self) -> None: ...


class Answer:
    def __init__(self) -> None:
        self.result: Any = None
        self.error: BaseException | None = None
        self.finished = False

    def done(self) -> bool:
        return self.finished

    def set_result(self, result: Any) -> None:
        self.result, self.finished = result, True

    def set_exception(self, exception: BaseException) -> None:
        self.error, self.finished = exception, True


def incarnation(now: float, wire: Wire) -> Driver:
    turns: list[Any] = []
    driver = Driver(2, state_machine=None, clock=lambda: now,  # type: ignore[arg-type]
                    call_soon=turns.append, request_timeout_s=10.0, max_entry_bytes=1 << 20,
                    max_pending_proposals=100)
    driver.start(FollowerCore(), wire, storage=None, applied=0)  # type: ignore[arg-type]
    return driver


def forward(driver: Driver, wire: Wire, command: bytes) -> tuple[Answer, Message]:
    answer = Answer()
    driver.submit(command, answer)
    driver.run_turn()
    request = wire.sent[-1]
    assert request.type == MessageType.CLIENT_REQUEST and request.context == command
    return answer, request


def test_an_answer_to_an_earlier_incarnation_acks_nothing_now() -> None:
    wire = Wire()
    before = incarnation(1.0, wire)
    _, old_request = forward(before, wire, b"x")
    before.stop()          # crash: the leader's answer to x is still on its way
    after = incarnation(2.5, wire)
    answer, request = forward(after, wire, b"y")
    stale = Message(MessageType.CLIENT_RESPONSE, src=1, dst=2, seq=old_request.seq,
                    status=int(ClientStatus.OK))
    after.on_forward_response(stale)
    assert not answer.done(), "an answer for x acknowledged y"
    after.on_forward_response(Message(MessageType.CLIENT_RESPONSE, src=1, dst=2,
                                      seq=request.seq, status=int(ClientStatus.OK)))
    assert answer.done() and answer.error is None


class Query:
    def query(self, query: bytes) -> bytes:
        return b"state"


def test_a_read_index_answer_to_an_earlier_incarnation_serves_no_read_now() -> None:
    wire = Wire()
    before = incarnation(1.0, wire)
    before.state_machine = Query()  # type: ignore[assignment]
    before.enqueue_read(b"q", Answer())
    before.run_turn()
    (old_context,) = before.read_rounds
    before.stop()          # crash: the leader's answer (read index 5) is still on its way
    after = incarnation(2.5, wire)
    after.state_machine = Query()  # type: ignore[assignment]
    after.applied = 10
    answer = Answer()
    after.enqueue_read(b"q", answer)
    after.run_turn()
    after.on_read_state(5, old_context)
    assert not answer.done(), "a read index confirmed for the earlier incarnation served a read"
    (context,) = after.read_rounds
    after.on_read_state(10, context)
    assert answer.done() and answer.result == b"state"


class Checked(Answer):
    """An outcome whose set_result runs a check that fails (as the simulators' reads do)."""

    def set_result(self, result: Any) -> None:
        raise InvariantViolation("stale read")


def test_a_failing_check_in_a_reads_outcome_is_not_reported_as_a_state_machine_error() -> None:
    """Only the state machine's query raising is a StateMachineError for the reader; an
    exception from the outcome itself (a simulator's linearizability check) propagates."""
    wire = Wire()
    driver = incarnation(1.0, wire)
    driver.state_machine = Query()  # type: ignore[assignment]
    driver.applied = 10
    driver.enqueue_read(b"q", Checked())
    driver.run_turn()
    (context,) = driver.read_rounds
    with pytest.raises(InvariantViolation, match="stale read"):
        driver.on_read_state(10, context)
