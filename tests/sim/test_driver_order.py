"""The driver's Ready order (engine/driver.py, "The turn"), pinned on a scripted core with a
storage whose save completes later (as the simulator's and a slow disk's do).

A follower's Ready (new entries and their acks) applies its committed entries only after the
save completed and the acks went out; a leader's Ready (no acks to send) applies them before
its own save, while its followers write (Raft thesis §10.2.1). The swarm cannot tell the
follower's order from its reverse (committed entries are durable on a quorum either way), so
this test holds it; a reordering that breaks durability (acks before the save) the swarm
catches, through the same driver.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any, Literal

import pytest

from engine.driver import PENDING, Driver
from engine.messages import Entry, EntryKind, Message, MessageType
from engine.testing.sim import SimulationFailure, run_swarm
from engine.types import HardState, Ready

# Seeds tried for the planted reordering; it needs a crash after an early ack, which a
# fraction of the seeds draws.
SEEDS_TO_CATCH = 40


class ScriptedCore:
    """A core whose next Ready is given by the test."""

    def __init__(self, log: list[str]) -> None:
        self.node_id, self.role, self.leader_id = 2, "follower", 1
        self.commit_index = self.applied_index = 0
        self._log = log
        self.next: Ready | None = None

    def tick(self) -> None: ...
    def step(self, message: Any) -> None: ...
    def has_ready(self) -> bool:
        return self.next is not None

    def ready(self) -> Ready:
        ready, self.next = self.next, None
        assert ready is not None
        return ready

    def advance(self, ready: Ready) -> None:
        self._log.append("advance")


class Recorder:
    """Transport, Storage and StateMachine in one, writing what happens to `log`."""

    def __init__(self, log: list[str]) -> None:
        self.log = log

    def send(self, messages: list[Message], now: bool = False) -> None:
        self.log.extend(f"send {MessageType(message.type).name}" for message in messages)

    def flush(self) -> None: ...

    def save(self, entries: list[Any], hard_state: Any, *, sync: bool) -> object:
        self.log.append(f"save {len(entries)} sync={sync}")
        return PENDING

    def apply(self, index: int, command: bytes) -> bytes:
        self.log.append(f"apply {index}")
        return b""


def _driver() -> tuple[Driver, ScriptedCore, list[str]]:
    log: list[str] = []
    recorder = Recorder(log)
    turns: list[Callable[[], None]] = []
    driver = Driver(2, recorder, clock=lambda: 0.0, call_soon=turns.append,  # type: ignore[arg-type]
                    request_timeout_s=1.0, max_entry_bytes=1024, max_pending_proposals=8)
    core = ScriptedCore(log)
    driver.start(core, recorder, recorder, applied=0)  # type: ignore[arg-type]
    return driver, core, log


def _entries(*indexes: int) -> list[Entry]:
    return [Entry(term=1, index=i, kind=EntryKind.NORMAL, data=b"x") for i in indexes]


def test_a_follower_acks_then_applies_after_its_save_completes() -> None:
    driver, core, log = _driver()
    ack = Message(MessageType.APPEND_RESPONSE, src=2, dst=1, term=1, index=3)
    core.next = Ready(hard_state=HardState(term=1, vote=0, commit=2), entries=_entries(3),
                      messages_after_persist=[ack], committed_entries=_entries(1, 2),
                      must_sync=True)
    driver.run_turn()
    assert log == ["save 1 sync=True"]    # nothing applied while the save is in flight
    driver.persisted()
    assert log == ["save 1 sync=True", "send APPEND_RESPONSE", "apply 1", "apply 2", "advance"]


def test_a_leader_applies_its_committed_entries_before_its_own_save() -> None:
    driver, core, log = _driver()
    append = Message(MessageType.APPEND, src=2, dst=1, term=1, index=2, entries=_entries(3))
    core.next = Ready(entries=_entries(3), messages=[append], committed_entries=_entries(1, 2),
                      must_sync=True)
    driver.run_turn()
    assert log == ["send APPEND", "apply 1", "apply 2", "save 1 sync=True"]
    driver.persisted()
    assert log[-1] == "advance"


@pytest.mark.parametrize(("protocol", "check"), [
    ("raft", r"leader \d+ committed \d+ held by"),
    ("paxos", r"beyond the chosen prefix"),
])
def test_the_swarm_catches_acks_sent_before_the_save(
    monkeypatch: pytest.MonkeyPatch, protocol: Literal["raft", "paxos"], check: str,
) -> None:
    """A planted reordering in the shipped driver: a follower's acks (promises about durable
    state) leave before its save. A crash then loses entries a leader counted: the
    simulator, which runs this driver, catches it in one of the first seeds, and the seed
    that did passes with the honest driver."""
    save = Driver._save

    def acks_first(self: Driver, ready: Ready) -> object:
        if ready.messages_after_persist:
            self.transport.send(ready.messages_after_persist, now=True)
            ready.messages_after_persist = []
        return save(self, ready)

    monkeypatch.setattr(Driver, "_save", acks_first)
    for seed in range(SEEDS_TO_CATCH):
        try:
            run_swarm(seed, protocol=protocol)
        except SimulationFailure as failure:
            assert re.search(check, str(failure)), str(failure)
            break
    else:
        pytest.fail(f"acks before the save not caught in {SEEDS_TO_CATCH} {protocol} seeds")
    monkeypatch.undo()
    run_swarm(seed, protocol=protocol)
