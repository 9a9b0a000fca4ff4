"""The messages a core produces for its next Ready, in the two queues of the Ready contract
(engine.types.Ready): `messages`, which the driver may send at once (a leader's appends go out
while it writes its own log, Raft thesis §10.2.1), and `messages_after_persist`, which promise
durable state (votes, promises, acks of appended entries) and leave only after the Ready's
fsync (Raft thesis §3.8; Paxos Made Simple §2.3: an acceptor answers only what it will
remember). Which types promise durable state is the protocol's, given at construction.
"""

from __future__ import annotations

from collections.abc import Set
from typing import Any


class Outbox:
    __slots__ = ("messages", "messages_after_persist", "_after_persist_types")

    def __init__(self, after_persist_types: Set[int]) -> None:
        self.messages: list[Any] = []
        self.messages_after_persist: list[Any] = []
        self._after_persist_types = after_persist_types

    def send(self, m: Any) -> None:
        """Queues `m` by its type: after the persist if it promises durable state."""
        if m.type in self._after_persist_types:
            self.messages_after_persist.append(m)
        else:
            self.messages.append(m)

    def take(self) -> tuple[list[Any], list[Any]]:
        """(messages, messages_after_persist) for a Ready; the queues start empty again."""
        taken = self.messages, self.messages_after_persist
        self.messages, self.messages_after_persist = [], []
        return taken
