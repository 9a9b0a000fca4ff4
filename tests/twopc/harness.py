"""A small deterministic message-passing harness for engine.twopc: seeded loss, reorder,
duplication, crash and restart of any node with exactly its durable state.

Each node has a Storage (records become durable only at a forced write: a crash loses the
unforced tail) and, for participants, a resource (MemoryResource, or any TPCResource). The
driver loop follows engine.twopc.protocol's order: persist, resource calls, then
messages_after_persist.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from engine.twopc import (
    Coordinator,
    Message,
    Participant,
    Ready,
    Record,
    TPCResource,
    TwoPCConfig,
    Xid,
)

COORDINATOR = 1


@dataclass
class Storage:
    durable: list[Record] = field(default_factory=list)
    buffered: list[Record] = field(default_factory=list)

    def write(self, records: list[Record], sync: bool) -> None:
        self.buffered.extend(records)
        if sync:
            self.durable.extend(self.buffered)
            self.buffered.clear()

    def crash(self) -> None:
        self.buffered.clear()


class MemoryResource:
    """A TPCResource whose prepared and finished branches survive a crash; `refuse` holds
    the transactions whose prepare fails (a constraint violation, say)."""

    def __init__(self) -> None:
        self.active: set[Xid] = set()
        self.prepared: set[Xid] = set()
        self.committed: set[str] = set()
        self.rolled_back: set[str] = set()
        self.refuse: set[str] = set()

    def tpc_begin(self, xid: Xid) -> None:
        self.active.add(xid)

    def tpc_prepare(self, xid: Xid) -> None:
        if xid not in self.active or xid.global_transaction_id in self.refuse:
            raise RuntimeError(f"cannot prepare {xid}")
        self.active.remove(xid)
        self.prepared.add(xid)

    def tpc_commit(self, xid: Xid) -> None:
        assert xid in self.prepared, f"commit of {xid} that is not prepared"
        assert xid.global_transaction_id not in self.rolled_back
        self.prepared.remove(xid)
        self.committed.add(xid.global_transaction_id)

    def tpc_rollback(self, xid: Xid) -> None:
        txid = xid.global_transaction_id
        assert txid not in self.committed, f"rollback of committed {xid}"
        if xid in self.active or xid in self.prepared:
            self.rolled_back.add(txid)
        self.active.discard(xid)
        self.prepared.discard(xid)

    def tpc_recover(self) -> list[Xid]:
        return sorted(self.prepared)

    def crash(self) -> None:
        # Work not prepared is lost with the process; prepared branches are durable.
        for xid in self.active:
            self.rolled_back.add(xid.global_transaction_id)
        self.active.clear()


class Cluster:
    def __init__(self, participants: int, *, seed: int = 0, loss: float = 0.0,
                 duplicate: float = 0.0, config: TwoPCConfig | None = None,
                 resources: dict[int, TPCResource] | None = None) -> None:
        self.rng = random.Random(seed)
        self.loss = loss
        self.duplicate = duplicate
        self.config = config or TwoPCConfig(seed=seed)
        self.participant_ids = list(range(COORDINATOR + 1, COORDINATOR + 1 + participants))
        self.storage = {n: Storage() for n in [COORDINATOR, *self.participant_ids]}
        self.resources: dict[int, TPCResource] = resources or {
            n: MemoryResource() for n in self.participant_ids}
        self.coordinator: Coordinator | None = Coordinator(COORDINATOR, self.config)
        self.participants: dict[int, Participant | None] = {
            n: Participant(n, self.config) for n in self.participant_ids}
        self.network: list[Message] = []
        self.coordinator_outcomes: dict[str, bool] = {}
        self.participant_outcomes: dict[tuple[int, str], bool] = {}
        self.prepare_refused: set[str] = set()
        self.ticks = 0

    # ------------------------------------------------------------ driving

    def node(self, node_id: int) -> Coordinator | Participant | None:
        return self.coordinator if node_id == COORDINATOR else self.participants[node_id]

    def process(self, node_id: int, *, send: bool = True) -> None:
        """Run the node's Readies to quiescence. send=False: the node crashes right after
        persisting (its messages are never sent)."""
        core = self.node(node_id)
        assert core is not None
        while True:
            ready: Ready = core.ready()
            if ready.is_empty():
                return
            self.storage[node_id].write(ready.records, ready.must_sync)
            for call in ready.resource_calls:
                assert isinstance(core, Participant)
                resource = self.resources[node_id]
                method = getattr(resource, f"tpc_{call.op}")
                try:
                    method(call.xid)
                except Exception:
                    if call.op != "prepare":
                        raise
                    # tpc_prepare raising is the "no" vote.
                    self.prepare_refused.add(call.xid.global_transaction_id)
                    core.prepare_result(call.xid.global_transaction_id, False)
                else:
                    if call.op == "prepare":
                        core.prepare_result(call.xid.global_transaction_id, True)
            for txid, commit in ready.outcomes:
                if node_id == COORDINATOR:
                    self.coordinator_outcomes[txid] = commit
                else:
                    self.participant_outcomes[(node_id, txid)] = commit
            if send:
                for message in [*ready.messages, *ready.messages_after_persist]:
                    if self.rng.random() >= self.loss:
                        self.network.append(message)
                        if self.rng.random() < self.duplicate:
                            self.network.append(message)

    def start(self, txid: str, members: list[int]) -> None:
        assert self.coordinator is not None
        self.coordinator.begin(txid, members)
        for member in members:
            participant = self.participants[member]
            if participant is not None:
                participant.begin(txid)
                self.process(member)
        self.coordinator.commit(txid)
        self.process(COORDINATOR)

    def deliver(self, index: int | None = None) -> bool:
        """Deliver one message (the oldest, or the one at `index`: reordering)."""
        if not self.network:
            return False
        message = self.network.pop(0 if index is None else index % len(self.network))
        core = self.node(message.dst)
        if core is not None:                     # a message to a down node is lost
            core.step(message)
            self.process(message.dst)
        return True

    def tick_all(self) -> None:
        self.ticks += 1
        for node_id in [COORDINATOR, *self.participant_ids]:
            core = self.node(node_id)
            if core is not None:
                core.tick()
                self.process(node_id)

    def crash(self, node_id: int) -> None:
        self.storage[node_id].crash()
        if node_id == COORDINATOR:
            self.coordinator = None
        else:
            self.participants[node_id] = None
            resource = self.resources[node_id]
            if isinstance(resource, MemoryResource):
                resource.crash()

    def restart(self, node_id: int) -> None:
        records = list(self.storage[node_id].durable)
        if node_id == COORDINATOR:
            assert self.coordinator is None
            self.coordinator = Coordinator(COORDINATOR, self.config, records=records)
        else:
            assert self.participants[node_id] is None
            self.participants[node_id] = Participant(
                node_id, self.config, records=records,
                in_doubt=self.resources[node_id].tpc_recover())
        self.process(node_id)

    def settle(self, rounds: int) -> None:
        """No faults: tick and deliver everything, `rounds` times."""
        for _ in range(rounds):
            self.tick_all()
            while self.deliver():
                pass

    # ------------------------------------------------------------ checks

    def in_doubt(self) -> dict[int, list[Xid]]:
        return {n: self.resources[n].tpc_recover() for n in self.participant_ids
                if self.resources[n].tpc_recover()}
