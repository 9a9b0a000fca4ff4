"""An asyncio driver for the sans-IO transaction coordinator (engine.txn.coordinator) over
any way of reaching the groups (docs/transactions.md, "Replicated transactions").

    runner = TxnRunner(router, send)        # send(group, message, query) -> answer | None
    async with runner.transaction() as tx:  # committed on exit
        v = await tx.get(b"x"); tx.put(b"y", v or b"")
    await runner.run_transaction(fn)        # fn(tx) is retried on TransactionConflict

`send` delivers one encoded transaction message (engine.txn.participant.encode) to a replica
of `group` able to apply it (the leader: `engine.Client.call` for a command,
`Client.query` for a query) and returns the encoded answer, or None if it does not know
whether it arrived (a timeout: the coordinator retries, every command being idempotent).
engine.Client.transaction runs it over the client's routing (engine.aio.client_txn); tests
also drive it over in-memory groups and over LocalClusters whose state machine is TxnKVStore.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

from engine.errors import TransactionConflict
from engine.limits import Limits
from engine.txn.coordinator import (
    Call,
    Mark,
    Router,
    Steps,
    Transaction,
    TxnEnv,
    UncertaintyRestart,
    Wait,
)
from engine.txn.hlc import HybridLogicalClock
from engine.txn.participant import DEFAULT_EXPIRY_NS, decode, encode

Send = Callable[[int, bytes, bool], Awaitable[bytes | None]]


async def drive(steps: Steps, send: Send) -> Any:
    """Perform a coordinator generator's effects until it returns; its exceptions propagate."""
    value: Any = None
    while True:
        try:
            effect = steps.send(value)
        except StopIteration as stop:
            return stop.value
        if isinstance(effect, Call):
            value = await _one(effect, send)
        elif isinstance(effect, list):
            value = list(await asyncio.gather(*(_one(c, send) for c in effect)))
        elif isinstance(effect, Wait):
            await asyncio.sleep(effect.ns / 1e9)
            value = None
        elif isinstance(effect, Mark):
            value = None
        else:
            raise TypeError(f"unknown coordinator effect {effect!r}")


async def _one(call: Call, send: Send) -> dict[str, Any] | None:
    answer = await send(call.group, encode(call.message), call.query)
    return None if answer is None else decode(answer)


class AsyncTransaction:
    """The awaitable face of one transaction attempt: get and scan are awaited, put and
    delete are buffered (the interface engine.fs expects)."""

    def __init__(self, tx: Transaction, send: Send) -> None:
        self._tx = tx
        self._send = send

    @property
    def id(self) -> str:
        return self._tx.id

    async def get(self, key: bytes) -> bytes | None:
        value: bytes | None = await drive(self._tx.get(key), self._send)
        return value

    def put(self, key: bytes, value: bytes) -> None:
        self._tx.put(key, value)

    def delete(self, key: bytes) -> None:
        self._tx.delete(key)

    async def scan(self, start: bytes, end: bytes = b"",
                   limit: int | None = None) -> list[tuple[bytes, bytes]]:
        rows: list[tuple[bytes, bytes]] = await drive(self._tx.scan(start, end, limit),
                                                      self._send)
        return rows


class TxnRunner:
    def __init__(self, router: Router, send: Send, *, limits: Limits | None = None,
                 expiry_ns: int = DEFAULT_EXPIRY_NS, name: str = "tx",
                 physical_ns: Callable[[], int] = time.time_ns, seed: int | None = None,
                 parallel_commits: bool = False) -> None:
        limits = limits or Limits()
        offset_ns = limits.max_clock_offset_ms * 1_000_000
        self.env = TxnEnv(router, HybridLogicalClock(physical_ns, max_offset_ns=offset_ns),
                          uncertainty_ns=offset_ns, expiry_ns=expiry_ns,
                          parallel_commits=parallel_commits)
        self._send = send
        self._name = name
        self._count = 0
        self._rng = random.Random(seed)
        # Asynchronous intent resolution after commits (awaited by drain()).
        self._resolving: set[asyncio.Task[Any]] = set()

    def _next_id(self) -> str:
        self._count += 1
        return f"{self._name}.{self._count}.{self._rng.getrandbits(32):08x}"

    @asynccontextmanager
    async def transaction(self, *, isolation: str = "serializable",
                          _read_ts: int | None = None,
                          _limit: int | None = None) -> AsyncIterator[AsyncTransaction]:
        """Commit on a clean exit; TransactionConflict (definitely not committed: retry) or
        engine.Timeout (unknown). An exception in the block aborts: nothing was written."""
        tx = Transaction(self.env, self._next_id(), isolation=isolation, read_ts=_read_ts,
                         uncertainty_limit=_limit)
        if _read_ts is not None and _read_ts < tx.start:
            tx.read_ts = tx.start
        try:
            yield AsyncTransaction(tx, self._send)
        except UncertaintyRestart as restart:
            raise _Restart(restart.ts, tx.uncertainty_limit) from None
        finish = await drive(tx.commit(), self._send)
        if finish is not None:
            task = asyncio.ensure_future(drive(finish, self._send))
            self._resolving.add(task)
            task.add_done_callback(self._resolving.discard)

    async def run_transaction(self, fn: Callable[[AsyncTransaction], Awaitable[Any]], *,
                              isolation: str = "serializable", max_attempts: int = 20,
                              backoff_s: float = 0.002) -> Any:
        """fn(tx) in a transaction, retried with jittered exponential backoff on
        TransactionConflict and at a higher timestamp after an uncertainty restart."""
        read_ts: int | None = None
        limit: int | None = None
        for attempt in range(max_attempts):
            try:
                async with self.transaction(isolation=isolation, _read_ts=read_ts,
                                            _limit=limit) as tx:
                    result = await fn(tx)
                return result
            except _Restart as restart:
                read_ts, limit = restart.ts, restart.limit
            except TransactionConflict:
                if attempt == max_attempts - 1:
                    raise
                read_ts = limit = None
                await asyncio.sleep(backoff_s * (2 ** min(attempt, 6)) * self._rng.random())
        raise TransactionConflict(f"no commit in {max_attempts} attempts")

    async def drain(self) -> None:
        """Wait for the asynchronous resolution of committed transactions."""
        while self._resolving:
            await asyncio.gather(*list(self._resolving), return_exceptions=True)


class _Restart(TransactionConflict):
    """An uncertainty restart leaving a transaction block: definitely not committed;
    run_transaction restarts above `ts` with the first attempt's limit."""

    def __init__(self, ts: int, limit: int) -> None:
        super().__init__("uncertainty restart: a value inside the read's uncertainty interval")
        self.ts = ts
        self.limit = limit
