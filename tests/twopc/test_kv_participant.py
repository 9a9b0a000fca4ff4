"""The KV state machine (engine.KVStore) as a 2PC participant: any deterministic state machine
takes part through the tpc_* shape, with its commands held as the prepared branch and applied
in order at commit."""

from __future__ import annotations

from harness import COORDINATOR, Cluster

from engine.kv import commands
from engine.kv.store import KVStore
from engine.twopc import Xid


class StateMachineParticipant:
    """tpc_* over a StateMachine: a branch buffers encoded commands; prepare holds them
    (here in memory, which survives the harness's crash of the protocol node; a replicated
    deployment would log them), commit applies them in order."""

    def __init__(self, machine: KVStore) -> None:
        self.machine = machine
        self.index = 0
        self.active: dict[Xid, list[bytes]] = {}
        self.prepared: dict[Xid, list[bytes]] = {}

    def tpc_begin(self, xid: Xid) -> None:
        self.active[xid] = []

    def put(self, xid: Xid, key: bytes, value: bytes) -> None:
        self.active[xid].append(commands.encode_put(key, value))

    def tpc_prepare(self, xid: Xid) -> None:
        self.prepared[xid] = self.active.pop(xid)

    def tpc_commit(self, xid: Xid) -> None:
        for command in self.prepared.pop(xid):
            self.index += 1
            assert commands.decode_result(self.machine.apply(self.index, command)).ok

    def tpc_rollback(self, xid: Xid) -> None:
        self.active.pop(xid, None)
        self.prepared.pop(xid, None)

    def tpc_recover(self) -> list[Xid]:
        return sorted(self.prepared)

    def get(self, key: bytes) -> bytes | None:
        return commands.decode_result(self.machine.query(commands.encode_query(key))).value


def test_a_transaction_across_two_kv_stores_commits_at_both_or_neither() -> None:
    shards = {2: StateMachineParticipant(KVStore()), 3: StateMachineParticipant(KVStore())}
    cluster = Cluster(2, resources=dict(shards))
    assert cluster.coordinator is not None
    cluster.coordinator.begin("t", [2, 3])
    for node, key in ((2, b"a"), (3, b"b")):
        participant = cluster.participants[node]
        assert participant is not None
        participant.begin("t")
        cluster.process(node)
        shards[node].put(Xid(0, "t", str(node)), key, b"1")
    # Before the decision nothing is visible at either store.
    cluster.coordinator.commit("t")
    cluster.process(COORDINATOR)
    assert shards[2].get(b"a") is None and shards[3].get(b"b") is None
    cluster.settle(3)
    assert cluster.coordinator_outcomes == {"t": True}
    assert shards[2].get(b"a") == b"1" and shards[3].get(b"b") == b"1"
    assert cluster.in_doubt() == {}
