"""A forwarded proposal's answer is matched by its seq alone (CLIENT_RESPONSE echoes the
request's seq), and an answer addressed to an earlier incarnation of the forwarding replica
(a process restart, a replica rebuilt in place) can still arrive: the sender's boot epoch
authenticates the leader, not which incarnation of the receiver asked. Such a stale answer
must never acknowledge another command. The many-groups swarm found it (a Multi-Paxos seed:
an acknowledged command that no replica ever applied)."""

from __future__ import annotations

from typing import Any

from engine.driver import Driver
from engine.errors import NotLeader
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
