"""engine.Client.transaction / run_transaction over real clusters: a sharded LocalCluster
(each range group runs the participant) and an unsharded one running engine's TxnKVStore."""

from __future__ import annotations

import asyncio
import random
import threading
from typing import Any

import pytest

import engine
from engine.aio import shard_admin
from engine.aio.txn import AsyncTransaction
from engine.txn.participant import TxnKVStore

# presplit_keys(4) cuts at key2, key5, key7: these accounts live in all four ranges.
ACCOUNTS = [b"key1a", b"key1b", b"key3", b"key6", b"key8", b"key9"]


async def _bank(clients: list[engine.Client], transfers: int) -> list[int]:
    await clients[0].run_transaction(_fill)
    totals: list[int] = []

    async def audit(tx: AsyncTransaction) -> int:
        return sum([int(await tx.get(key) or b"0") for key in ACCOUNTS])

    async def one(client: engine.Client, seed: int) -> None:
        rng = random.Random(seed)
        for _ in range(transfers):
            a, b = rng.sample(ACCOUNTS, 2)

            async def move(tx: AsyncTransaction, a: bytes = a, b: bytes = b) -> None:
                va, vb = int(await tx.get(a) or b"0"), int(await tx.get(b) or b"0")
                if va >= 7:
                    tx.put(a, b"%d" % (va - 7))
                    tx.put(b, b"%d" % (vb + 7))

            await client.run_transaction(move, parallel_commits=seed % 2 == 1)
            totals.append(await client.run_transaction(audit))

    await asyncio.gather(*(one(c, i) for i, c in enumerate(clients)))
    totals.append(await clients[0].run_transaction(audit))
    return totals


async def _fill(tx: AsyncTransaction) -> None:
    for key in ACCOUNTS:
        tx.put(key, b"100")


async def test_bank_transfers_across_four_ranges_keep_the_total() -> None:
    async with engine.LocalCluster(n=3, shards=4) as cluster:
        await cluster.wait_leader()
        clients = [cluster.client() for _ in range(3)]
        for client in clients:
            await client.__aenter__()
        try:
            totals = await _bank(clients, transfers=5)
            assert set(totals) == {600}
            async with clients[0].transaction() as tx:
                rows = await tx.scan(b"key", b"kez")
            assert [k for k, _ in rows] == sorted(ACCOUNTS)
            # Plain keys and their path are unchanged beside the transactional ones.
            await clients[1].put(b"key4", b"plain")
            assert await clients[1].get(b"key4") == b"plain"
        finally:
            for client in clients:
                await client.__aexit__(None, None, None)


async def test_an_unsharded_cluster_running_txnkvstore_serves_client_transactions() -> None:
    async with engine.LocalCluster(n=3, state_machine=TxnKVStore) as cluster:
        await cluster.wait_leader()
        async with cluster.client() as client:
            async with client.transaction() as tx:
                tx.put(b"x", b"1")
            async with client.transaction(isolation="snapshot") as tx:
                tx.put(b"y", await tx.get(b"x") or b"")
            assert await client.run_transaction(lambda tx: tx.get(b"y")) == b"1"


def test_sync_client_transactions_across_two_ranges() -> None:
    """engine.SyncClient.transaction / run_transaction: the blocking twins, from a thread
    that runs no event loop (the cluster runs on a loop in another thread)."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    cluster = engine.LocalCluster(n=3, shards=2)   # ranges [, key5) and [key5, )

    def run(coroutine: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coroutine, loop).result(timeout=60)

    run(cluster.start())
    try:
        run(cluster.wait_leader())
        with engine.SyncClient(list(cluster.members.values()),
                               cluster_key=cluster.cluster_key) as c:
            with c.transaction() as tx:
                tx.put(b"key1", b"a")
                tx.put(b"key9", b"b")
            with pytest.raises(KeyError), c.transaction() as tx:
                tx.put(b"key1", b"never")
                raise KeyError("the block failed: nothing is written")

            def swap(tx: Any) -> list[tuple[bytes, bytes]]:
                a, b = tx.get(b"key1"), tx.get(b"key9")
                tx.put(b"key1", b)
                tx.put(b"key9", a)
                return list(tx.scan(b"key", b"kez"))

            assert c.run_transaction(swap) == [(b"key1", b"b"), (b"key9", b"a")]  # its writes
            assert c.run_transaction(lambda tx: tx.scan(b"key", b"kez")) == [
                (b"key1", b"b"), (b"key9", b"a")]
    finally:
        run(cluster.close())
        loop.call_soon_threadsafe(loop.stop)
        thread.join()
        loop.close()


async def test_a_cluster_without_the_participant_rejects_transactions_plainly() -> None:
    async with engine.LocalCluster(n=3) as cluster:   # the default state machine, KVStore
        await cluster.wait_leader()
        async with cluster.client() as client:
            with pytest.raises(engine.Rejected, match="does not serve transactions"):
                async with client.transaction() as tx:
                    await tx.get(b"x")
            await client.put(b"x", b"plain")
            assert await client.get(b"x") == b"plain"


async def test_transactions_go_on_after_a_split_with_a_stale_map() -> None:
    """A range with transactional keys splits; the client that wrote them, its map now
    stale, reads and writes them again: refused messages go to the new owner, and the
    right-hand range answers from the state the split handed it."""
    async with engine.LocalCluster(n=3, shards=2) as cluster:   # [, key5) and [key5, )
        await cluster.wait_leader()
        async with cluster.client() as client, cluster.client() as admin:
            async with client.transaction() as tx:
                tx.put(b"key6", b"a")
                tx.put(b"key8", b"b")
            await shard_admin.split(admin, b"key7")

            async def swap(tx: AsyncTransaction) -> None:
                a, b = await tx.get(b"key6"), await tx.get(b"key8")
                tx.put(b"key6", b or b"")
                tx.put(b"key8", a or b"")

            await client.run_transaction(swap)
        async with cluster.client() as fresh:
            async with fresh.transaction() as tx:
                assert await tx.scan(b"key5", b"") == [(b"key6", b"b"), (b"key8", b"a")]
