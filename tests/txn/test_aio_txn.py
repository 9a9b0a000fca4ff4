"""engine.aio.txn: the transaction coordinator driven by asyncio, over in-memory groups and
over LocalClusters (3 nodes each, real UDP) whose state machine is TxnKVStore."""

from __future__ import annotations

import asyncio
import random

import pytest

import engine
from engine.aio.txn import AsyncTransaction, Send, TxnRunner
from engine.errors import Timeout, TransactionConflict
from engine.testing.txn_sim import RangeRouter
from engine.txn.participant import TxnKVStore

ACCOUNTS = [f"acct/{i}".encode() for i in range(6)]
ROUTER = RangeRouter([b"acct/2", b"acct/4"])  # three groups, two accounts each


class MemoryGroups:
    """Groups applying each command on arrival; `loss` drops requests (None: unknown)."""

    def __init__(self, n: int, loss: float = 0.0, seed: int = 0) -> None:
        self.groups = [TxnKVStore() for _ in range(n)]
        self.index = [0] * n
        self.loss = loss
        self.rng = random.Random(seed)

    async def send(self, group: int, message: bytes, query: bool) -> bytes | None:
        await asyncio.sleep(0)
        if self.rng.random() < self.loss:
            return None
        if query:
            return self.groups[group].query(message)
        self.index[group] += 1
        return self.groups[group].apply(self.index[group], message)


async def _transfer(runner: TxnRunner, rng: random.Random) -> None:
    a, b = rng.sample(ACCOUNTS, 2)
    amount = rng.randrange(1, 20)

    async def move(tx: AsyncTransaction) -> None:
        va = int(await tx.get(a) or b"0")
        vb = int(await tx.get(b) or b"0")
        if va >= amount:
            tx.put(a, b"%d" % (va - amount))
            tx.put(b, b"%d" % (vb + amount))

    await runner.run_transaction(move)


async def _total(runner: TxnRunner) -> int:
    async def audit(tx: AsyncTransaction) -> int:
        return sum(int(v) for _, v in await tx.scan(b"acct/", b"acct0"))

    total: int = await runner.run_transaction(audit)
    return total


async def _bank(send: Send, *, clients: int, transfers: int,
                parallel_commits: bool = False) -> list[int]:
    runners = [TxnRunner(ROUTER, send, name=f"c{i}", seed=i,
                         parallel_commits=parallel_commits) for i in range(clients)]
    async with runners[0].transaction() as tx:
        for key in ACCOUNTS:
            tx.put(key, b"100")
    totals: list[int] = []

    async def client(i: int) -> None:
        rng = random.Random(i)
        for _ in range(transfers):
            await _transfer(runners[i], rng)
            totals.append(await _total(runners[i]))

    await asyncio.gather(*(client(i) for i in range(clients)))
    for runner in runners:
        await runner.drain()
    totals.append(await _total(runners[0]))
    return totals


@pytest.mark.parametrize("parallel_commits", [False, True])
async def test_bank_over_memory_groups_with_loss_keeps_the_total(parallel_commits: bool) -> None:
    groups = MemoryGroups(3, loss=0.05, seed=7)
    totals = await _bank(groups.send, clients=6, transfers=15,
                         parallel_commits=parallel_commits)
    assert set(totals) == {600}
    assert not any(g.intents for g in groups.groups)


async def test_transaction_block_reads_its_writes_and_commits_on_exit() -> None:
    groups = MemoryGroups(3)
    runner = TxnRunner(ROUTER, groups.send)
    async with runner.transaction() as tx:
        tx.put(b"acct/0", b"a")
        tx.put(b"acct/5", b"b")
        assert await tx.get(b"acct/0") == b"a"
        tx.delete(b"acct/5")
        assert await tx.scan(b"acct/", b"acct0") == [(b"acct/0", b"a")]
    await runner.drain()
    async with runner.transaction() as tx:
        assert await tx.get(b"acct/0") == b"a" and await tx.get(b"acct/5") is None


async def test_a_conflict_is_definite_and_an_error_in_the_block_writes_nothing() -> None:
    groups = MemoryGroups(3)
    runner = TxnRunner(ROUTER, groups.send)
    other = TxnRunner(ROUTER, groups.send, name="other")
    with pytest.raises(TransactionConflict):
        async with runner.transaction() as tx:
            await tx.get(b"acct/0")
            # Another transaction writes what tx read and reads what tx writes: tx's
            # write is pushed above that read, and its refresh finds acct/0 changed.
            async with other.transaction() as tx2:
                await tx2.get(b"acct/3")
                tx2.put(b"acct/0", b"x")
            tx.put(b"acct/3", b"y")
            tx.put(b"acct/1", b"z")
    with pytest.raises(KeyError):
        async with runner.transaction() as tx:
            tx.put(b"acct/4", b"never")
            raise KeyError("the block failed")
    async with runner.transaction() as tx:
        assert await tx.get(b"acct/3") is None and await tx.get(b"acct/4") is None


async def test_every_answer_lost_is_a_timeout_never_a_conflict() -> None:
    async def lost(group: int, message: bytes, query: bool) -> bytes | None:
        return None

    runner = TxnRunner(ROUTER, lost)
    with pytest.raises(Timeout):
        async with runner.transaction() as tx:
            await tx.get(b"acct/0")


async def test_bank_across_three_replicated_groups() -> None:
    """Three LocalClusters of 3 nodes (one per group, TxnKVStore replicated by Raft over UDP)."""
    async with engine.LocalCluster(n=3, state_machine=TxnKVStore) as g0, \
            engine.LocalCluster(n=3, state_machine=TxnKVStore) as g1, \
            engine.LocalCluster(n=3, state_machine=TxnKVStore) as g2:
        clients = []
        for cluster in (g0, g1, g2):
            await cluster.wait_leader()
            clients.append(engine.Client(list(cluster.members.values()),
                                         cluster_key=cluster.cluster_key))
        for client in clients:
            await client.__aenter__()
        try:
            async def send(group: int, message: bytes, query: bool) -> bytes | None:
                try:
                    if query:
                        return await clients[group].query(message)
                    return await clients[group].call(message, idempotent=True)
                except Timeout:
                    return None

            totals = await _bank(send, clients=3, transfers=4, parallel_commits=True)
            assert set(totals) == {600}
        finally:
            for client in clients:
                await client.__aexit__(None, None, None)
