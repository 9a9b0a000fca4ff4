"""An in-memory, optimistic, serializable transactional key-value store (the test double of
the replicated transactions, engine.fs.client.TransactionalClient).

Concurrency control is backward-validating OCC (Kung & Robinson, "On Optimistic Methods for
Concurrency Control", 1981): a transaction reads the committed state and buffers its writes;
at commit it is validated against every transaction that committed after it began. If any of
them wrote a key it read (present or absent) or a key inside a range it scanned, it aborts
with engine.TransactionConflict; otherwise its writes install atomically. Its reads then equal
the state at its commit point, so the committed history is serializable in commit order. A
read that meets a key already changed since the transaction began aborts at once: the commit
would fail anyway.

Deterministic interleaving: give clients an Interleaver and a name. Every transaction step
(get, scan, commit) of a named client waits for its turn; the Interleaver lets exactly one
waiting client go at a time, chosen by a seeded generator or a fixed script, once every live
client has reached a step. So a test can replay any interleaving of two file-system
operations (the rename race) step by step, with no timing involved.
"""

from __future__ import annotations

import asyncio
import bisect
import random
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

from engine.errors import TransactionConflict
from engine.txn.hlc import HybridLogicalClock, Timestamp

__all__ = ["Interleaver", "MemoryTransaction", "MemoryTxnClient", "MemoryTxnStore"]

T = TypeVar("T")
# run_transaction's bound on attempts (JuiceFS's TKV client retries a transaction 50 times).
MAX_ATTEMPTS = 50


@dataclass
class _Commit:
    seq: int
    keys: list[bytes]          # sorted


class MemoryTxnStore:
    """The shared committed state: key -> value, plus the commits since the oldest live
    transaction began (what validation compares against)."""

    def __init__(self) -> None:
        self._data: dict[bytes, bytes] = {}
        self._sorted: list[bytes] = []
        self._modified: dict[bytes, int] = {}   # key -> seq of the commit that last wrote it
        self._seq = 0
        self._log: list[_Commit] = []
        self.commits = 0
        self.conflicts = 0
        self.keys_read: list[bytes] = []   # every key a get asked for, in order

    def client(self, *, name: str | None = None, interleaver: Interleaver | None = None,
               physical_ns: Callable[[], int] | None = None,
               max_attempts: int = MAX_ATTEMPTS) -> MemoryTxnClient:
        return MemoryTxnClient(self, name=name, interleaver=interleaver,
                               physical_ns=physical_ns, max_attempts=max_attempts)

    def items(self) -> list[tuple[bytes, bytes]]:
        """Every committed (key, value), in key order."""
        return [(key, self._data[key]) for key in self._sorted]

    def _changed_since(self, key: bytes, seq: int) -> bool:
        return self._modified.get(key, 0) > seq

    def _range_changed_since(self, start: bytes, end: bytes, seq: int) -> bool:
        for commit in reversed(self._log):   # newest first: stop at the reader's start
            if commit.seq <= seq:
                return False
            index = bisect.bisect_left(commit.keys, start)
            if index < len(commit.keys) and commit.keys[index] < end:
                return True
        return False

    def _install(self, writes: dict[bytes, bytes | None]) -> None:
        self._seq += 1
        for key, value in writes.items():
            self._modified[key] = self._seq
            if value is None:
                if key in self._data:
                    del self._data[key]
                    del self._sorted[bisect.bisect_left(self._sorted, key)]
            else:
                if key not in self._data:
                    bisect.insort(self._sorted, key)
                self._data[key] = value
        self._log.append(_Commit(self._seq, sorted(writes)))
        self.commits += 1


class MemoryTransaction:
    """One transaction (engine.fs.client.Transaction)."""

    def __init__(self, client: MemoryTxnClient) -> None:
        self._client = client
        self._store = client.store
        self._start = self._store._seq
        self._writes: dict[bytes, bytes | None] = {}
        self._reads: set[bytes] = set()
        self._ranges: list[tuple[bytes, bytes]] = []

    async def get(self, key: bytes) -> bytes | None:
        await self._client._turn()
        self._store.keys_read.append(key)
        if key in self._writes:
            return self._writes[key]
        self._reads.add(key)
        if self._store._changed_since(key, self._start):
            self._conflict(f"key {key!r} changed since the transaction began")
        return self._store._data.get(key)

    def put(self, key: bytes, value: bytes) -> None:
        self._writes[bytes(key)] = bytes(value)

    def delete(self, key: bytes) -> None:
        self._writes[bytes(key)] = None

    async def scan(self, start: bytes, end: bytes, *,
                   limit: int | None = None) -> list[tuple[bytes, bytes]]:
        await self._client._turn()
        store = self._store
        if store._range_changed_since(start, end, self._start):
            self._conflict(f"range [{start!r}, {end!r}) changed since the transaction began")
        merged: dict[bytes, bytes | None] = {}
        lo = bisect.bisect_left(store._sorted, start)
        hi = bisect.bisect_left(store._sorted, end)
        for key in store._sorted[lo:hi]:
            merged[key] = store._data[key]
        for key, value in self._writes.items():
            if start <= key < end:
                merged[key] = value
        out = [(key, value) for key, value in sorted(merged.items()) if value is not None]
        if limit is not None and len(out) > limit:
            out = out[:limit]
            # Only the part of the range the page covered is read (validated).
            self._ranges.append((start, out[-1][0] + b"\x00") if out else (start, start))
        else:
            self._ranges.append((start, end))
        return out

    async def _commit(self) -> None:
        await self._client._turn()
        store = self._store
        for key in self._reads:
            if store._changed_since(key, self._start):
                self._conflict(f"key {key!r} changed since the transaction began")
        for start, end in self._ranges:
            if store._range_changed_since(start, end, self._start):
                self._conflict(f"range [{start!r}, {end!r}) changed since the transaction "
                               "began")
        if self._writes:
            store._install(self._writes)

    def _conflict(self, why: str) -> None:
        self._store.conflicts += 1
        raise TransactionConflict(why)


class MemoryTxnClient:
    """A client of a MemoryTxnStore (engine.fs.client.TransactionalClient)."""

    def __init__(self, store: MemoryTxnStore, *, name: str | None = None,
                 interleaver: Interleaver | None = None,
                 physical_ns: Callable[[], int] | None = None,
                 max_attempts: int = MAX_ATTEMPTS) -> None:
        self.store = store
        self.name = name
        self.interleaver = interleaver
        self.max_attempts = max_attempts
        if physical_ns is None:
            ticks = iter(range(1, 1 << 62))
            physical_ns = ticks.__next__   # a deterministic clock: 1 ns per reading
        self.clock = HybridLogicalClock(physical_ns, max_offset_ns=500_000_000)

    def now(self) -> Timestamp:
        return self.clock.now()

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[MemoryTransaction]:
        tx = MemoryTransaction(self)
        yield tx
        await tx._commit()

    async def run_transaction(self, fn: Callable[[MemoryTransaction], Awaitable[T]]) -> T:
        for attempt in range(self.max_attempts):
            try:
                async with self.transaction() as tx:
                    result = await fn(tx)
                return result
            except TransactionConflict:
                if attempt == self.max_attempts - 1:
                    raise
        raise AssertionError("unreachable")   # max_attempts >= 1

    async def _turn(self) -> None:
        if self.interleaver is not None and self.name is not None:
            await self.interleaver.point(self.name)


class Interleaver:
    """Runs named coroutines one transaction step at a time, in a deterministic order.

    `choose` picks the next client among those waiting: a seed (random.Random), or a script,
    a sequence of names consumed one per step (a name not waiting is skipped; when the script
    runs out, the first waiting name in sorted order goes). `trace` records who went."""

    def __init__(self, choose: int | Sequence[str] = 0) -> None:
        self._rng = random.Random(choose) if isinstance(choose, int) else None
        self._script: Iterator[str] = iter(()) if isinstance(choose, int) else iter(choose)
        self._waiting: dict[str, asyncio.Future[None]] = {}
        self._live: set[str] = set()
        self.trace: list[str] = []

    async def run(self, **coros: Awaitable[Any]) -> dict[str, Any]:
        """Run the coroutines to completion; name -> result, or the exception it raised."""
        self._live = set(coros)

        async def one(name: str, coro: Awaitable[Any]) -> Any:
            try:
                return await coro
            except Exception as error:   # the outcome is reported, not raised
                return error
            finally:
                self._live.discard(name)
                self._release()

        tasks = {name: asyncio.ensure_future(one(name, coro)) for name, coro in coros.items()}
        return {name: await task for name, task in tasks.items()}

    async def point(self, name: str) -> None:
        if name not in self._live:
            return
        future = asyncio.get_running_loop().create_future()
        self._waiting[name] = future
        self._release()
        await future

    def _release(self) -> None:
        if not self._waiting or set(self._waiting) != self._live:
            return
        names = sorted(self._waiting)
        chosen: str | None = None
        if self._rng is not None:
            chosen = self._rng.choice(names)
        else:
            for wanted in self._script:
                if wanted in self._waiting:
                    chosen = wanted
                    break
            if chosen is None:
                chosen = names[0]
        self.trace.append(chosen)
        self._waiting.pop(chosen).set_result(None)

