"""What engine.FileSystem needs from a client: serializable transactions and a clock.

The file system is written against these protocols, not against one client class, so it runs
unchanged on any store that offers them: engine.testing.memory_txn (an in-memory optimistic
store, the test double) and the replicated, sharded transactions of engine.Client (DESIGN.md §3:
`async with c.transaction() as tx`).

The contract the namespace relies on:

* A transaction sees its own writes, and it is serializable: it commits only if it could have
  run alone at its commit point. In particular every key it read with `get` (present or
  absent) and every range it read with `scan` is unchanged by other transactions at commit,
  or it fails. The ancestor walk of rename depends on this (docs/filesystem.md).
* Leaving the `async with` block normally commits; a commit that loses raises
  engine.TransactionConflict and none of its writes take effect. Leaving it by an exception
  aborts: nothing is written, the exception propagates.
* `run_transaction(fn)` runs `fn(tx)` in a fresh transaction, committing when fn returns, and
  on TransactionConflict runs it again (fn must be safe to re-run: all its effects go through
  tx). Any other exception ends it.
* `now()` is the client's hybrid logical clock (engine.txn.hlc): file times are HLC
  timestamps, ordered consistently with causality across clients.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from typing import Protocol, TypeVar

from engine.txn.hlc import Timestamp

__all__ = ["Transaction", "TransactionalClient"]

T = TypeVar("T")


class Transaction(Protocol):
    """One transaction's view: reads see the snapshot plus this transaction's writes."""

    async def get(self, key: bytes) -> bytes | None:
        """The value of key, or None if absent. The read (even of an absent key) is validated
        at commit."""
        ...

    def put(self, key: bytes, value: bytes) -> None:
        """Buffer a write; it takes effect at commit."""
        ...

    def delete(self, key: bytes) -> None:
        """Buffer a deletion; it takes effect at commit."""
        ...

    async def scan(self, start: bytes, end: bytes, *,
                   limit: int | None = None) -> list[tuple[bytes, bytes]]:
        """(key, value) pairs with start <= key < end in byte order, at most limit of them.
        The range read is validated at commit: a key inserted, changed or deleted inside it
        (up to the last key returned, when the limit cut the page) fails the commit."""
        ...


class TransactionalClient(Protocol):
    """The client a FileSystem runs on."""

    def transaction(self) -> AbstractAsyncContextManager[Transaction]:
        """A new serializable transaction, committed when the block exits normally."""
        ...

    async def run_transaction(self, fn: Callable[[Transaction], Awaitable[T]]) -> T:
        """fn(tx) in a transaction, re-run on engine.TransactionConflict up to a bounded
        number of attempts (then the last conflict is raised)."""
        ...

    def now(self) -> Timestamp:
        """A timestamp of this client's hybrid logical clock."""
        ...
