"""engine.testing.memory_txn: the optimistic serializable store the file system is tested on.

Its guarantees are what the namespace's correctness argument leans on, so each is pinned:
reads validated at commit (a lost update aborts), absent reads and scanned ranges validated
(phantoms abort), a limited scan validated only over the page it returned, writes atomic
and invisible until commit, an exception aborts, run_transaction retries a conflict, and the
Interleaver replays a schedule exactly.
"""

from __future__ import annotations

import pytest

import engine
from engine.testing.memory_txn import Interleaver, MemoryTxnStore


def test_transaction_conflict_is_a_definite_rejection() -> None:
    assert issubclass(engine.TransactionConflict, engine.Rejected)
    assert "TransactionConflict" in engine.__all__ and "FileSystem" in engine.__all__
    assert engine.FileSystem is engine.fs.FileSystem


async def test_writes_are_invisible_until_commit_and_visible_to_their_own_transaction() -> None:
    store = MemoryTxnStore()
    client = store.client()
    async with client.transaction() as tx:
        tx.put(b"k", b"1")
        assert await tx.get(b"k") == b"1"
        assert await tx.scan(b"a", b"z") == [(b"k", b"1")]
        assert store.items() == []
    assert store.items() == [(b"k", b"1")]


async def test_an_exception_aborts_the_transaction() -> None:
    store = MemoryTxnStore()
    with pytest.raises(FileNotFoundError):
        async with store.client().transaction() as tx:
            tx.put(b"k", b"1")
            raise FileNotFoundError
    assert store.items() == []


async def test_a_lost_update_aborts_the_later_committer() -> None:
    store = MemoryTxnStore()
    client = store.client()
    async with client.transaction() as setup:
        setup.put(b"n", b"0")
    with pytest.raises(engine.TransactionConflict):
        async with client.transaction() as first:
            value = await first.get(b"n")
            async with client.transaction() as second:
                second.put(b"n", b"second")
            first.put(b"n", (value or b"") + b"+1")
    assert store.items() == [(b"n", b"second")]


async def test_an_absent_read_and_a_scanned_range_are_validated() -> None:
    store = MemoryTxnStore()
    client = store.client()
    with pytest.raises(engine.TransactionConflict):
        async with client.transaction() as reader:
            assert await reader.get(b"x") is None
            async with client.transaction() as writer:
                writer.put(b"x", b"1")
            reader.put(b"y", b"1")
    with pytest.raises(engine.TransactionConflict):
        async with client.transaction() as scanner:
            assert await scanner.scan(b"d/", b"d0") == []
            async with client.transaction() as writer:
                writer.put(b"d/new", b"1")     # a phantom in the scanned range
            scanner.put(b"z", b"1")


async def test_a_limited_scan_is_validated_only_over_its_page() -> None:
    store = MemoryTxnStore()
    client = store.client()
    async with client.transaction() as setup:
        for key in (b"d/a", b"d/b", b"d/c"):
            setup.put(key, b"")
    async with client.transaction() as scanner:
        assert [key for key, _ in await scanner.scan(b"d/", b"d0", limit=1)] == [b"d/a"]
        async with client.transaction() as writer:
            writer.put(b"d/z", b"")            # past the page: no conflict
        scanner.put(b"out", b"1")
    assert (b"out", b"1") in store.items()


async def test_run_transaction_retries_a_conflict_and_bounds_the_attempts() -> None:
    store = MemoryTxnStore()
    client = store.client()
    other = store.client()
    calls = 0

    async def increment(tx: object) -> int:
        nonlocal calls
        calls += 1
        value = int(await tx.get(b"n") or b"0")   # type: ignore[attr-defined]
        if calls == 1:   # a concurrent writer commits in between, once
            async with other.transaction() as sneaky:
                sneaky.put(b"n", b"10")
        tx.put(b"n", str(value + 1).encode())     # type: ignore[attr-defined]
        return value + 1

    assert await client.run_transaction(increment) == 11 and calls == 2

    bounded = store.client(max_attempts=3)
    attempts = 0

    async def always_loses(tx: object) -> None:
        nonlocal attempts
        attempts += 1
        await tx.get(b"n")                        # type: ignore[attr-defined]
        async with other.transaction() as sneaky:
            sneaky.put(b"n", str(attempts).encode())
        tx.put(b"n", b"mine")                     # type: ignore[attr-defined]

    with pytest.raises(engine.TransactionConflict):
        await bounded.run_transaction(always_loses)
    assert attempts == 3


async def test_the_interleaver_replays_a_script_exactly() -> None:
    async def steps(client: object, key: bytes) -> None:
        async with client.transaction() as tx:    # type: ignore[attr-defined]
            await tx.get(key)
            await tx.get(key)
            tx.put(key, b"1")

    traces = []
    for _ in range(2):
        store = MemoryTxnStore()
        interleaver = Interleaver(["B", "A", "B", "A", "A", "B"])
        a = store.client(name="A", interleaver=interleaver)
        b = store.client(name="B", interleaver=interleaver)
        results = await interleaver.run(A=steps(a, b"a"), B=steps(b, b"b"))
        assert results == {"A": None, "B": None}
        traces.append(interleaver.trace)
    assert traces[0] == traces[1] == ["B", "A", "B", "A", "A", "B"]
