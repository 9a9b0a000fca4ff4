"""engine.SyncClient: engine.Client for scripts, without asyncio.

    with engine.SyncClient(["127.0.0.1:7001", "127.0.0.1:7002"], cluster_key=key) as c:
        c.put(b"k", b"v"); c.get(b"k"); c.cas(b"k", b"v", b"w"); c.delete(b"k")

It runs an engine.Client on an event loop of its own, in a daemon thread, and each method
blocks until the coroutine of the same name is done, with the same arguments, results and
errors (timeout= included). One SyncClient may be used from several threads.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import threading
import time
from collections.abc import Callable, Coroutine, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

from engine.aio.client import Client
from engine.aio.coord_client import Lease, LeaseInfo, Lock
from engine.aio.txn import AsyncTransaction
from engine.errors import Stopped, TransactionConflict
from engine.kv import commands
from engine.txn.hlc import Timestamp

T = TypeVar("T")


class SyncClient:
    """Blocking twin of engine.Client (same constructor arguments)."""

    def __init__(self, addresses: list[str], **options: Any) -> None:
        self._client = Client(addresses, **options)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever,
                                        name="engine-sync-client", daemon=True)
        self._thread.start()
        try:
            self._run(self._client.open())
        except BaseException:
            self._stop_loop()
            raise

    @property
    def client(self) -> Client:
        """The engine.Client underneath (its counters, addresses, attempt_timeout)."""
        return self._client

    def __enter__(self) -> SyncClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        if not self._loop.is_closed():
            txn = self._client._txn
            if txn is not None:   # committed transactions' intents resolved first
                asyncio.run_coroutine_threadsafe(txn.drain(), self._loop).result()
            self._loop.call_soon_threadsafe(self._client.close)
            self._stop_loop()

    def _stop_loop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join()
        self._loop.close()

    def _run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        if self._loop.is_closed():
            coroutine.close()
            raise Stopped("SyncClient is closed")
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result()

    # ------------------------------------------------------------------ transactions

    @contextmanager
    def transaction(self, *, isolation: str = "serializable",
                    parallel_commits: bool = False) -> Iterator[SyncTransaction]:
        """engine.Client.transaction, blocking: committed when the block exits normally."""
        manager = self._client.transaction(isolation=isolation,
                                           parallel_commits=parallel_commits)
        tx = self._run(manager.__aenter__())
        try:
            yield SyncTransaction(tx, self._run)
        except BaseException as exc:
            if not self._run(manager.__aexit__(type(exc), exc, exc.__traceback__)):
                raise
        else:
            self._run(manager.__aexit__(None, None, None))

    def run_transaction(self, fn: Callable[[SyncTransaction], T], *,
                        isolation: str = "serializable", parallel_commits: bool = False,
                        max_attempts: int = 20, backoff_s: float = 0.002) -> T:
        """fn(tx) in a transaction, run again (jittered exponential backoff) on
        TransactionConflict; its result."""
        for attempt in range(max_attempts):
            try:
                with self.transaction(isolation=isolation,
                                      parallel_commits=parallel_commits) as tx:
                    result = fn(tx)
                return result
            except TransactionConflict:
                if attempt == max_attempts - 1:
                    raise
                time.sleep(backoff_s * (2 ** min(attempt, 6)) * random.random())
        raise TransactionConflict(f"no commit in {max_attempts} attempts")

    def now(self) -> Timestamp:
        return self._client.now()

    # ------------------------------------------------------------------ engine.Client's API

    def put(self, key: bytes, value: bytes, *, prev: bool = False,
            timestamp: Timestamp | None = None,
            timeout: float | None = None, lease: Any = None,
            fence: Any = None) -> commands.WriteResult:
        return self._run(self._client.put(key, value, prev=prev, timestamp=timestamp,
                                          timeout=timeout, lease=lease, fence=fence))

    # Coordination (docs/coordination.md); keepalives run on the client's own loop thread.

    def grant_lease(self, ttl_s: float, *, timeout: float | None = None) -> LeaseInfo:
        return self._run(self._client.grant_lease(ttl_s, timeout=timeout))

    def keepalive(self, lease: Any, *, timeout: float | None = None) -> LeaseInfo:
        return self._run(self._client.keepalive(lease, timeout=timeout))

    def revoke(self, lease: Any, *, timeout: float | None = None) -> bool:
        return self._run(self._client.revoke(lease, timeout=timeout))

    def leases(self, *, timeout: float | None = None) -> list[dict[str, int]]:
        return self._run(self._client.leases(timeout=timeout))

    @contextlib.contextmanager
    def lease(self, ttl_s: float, *, timeout: float | None = None) -> Iterator[Lease]:
        """`with c.lease(ttl_s) as lease`: granted, kept alive, revoked on exit."""
        held = self._client.lease(ttl_s, timeout=timeout)
        self._run(held.grant())
        try:
            yield held
        finally:
            self._run(held.revoke())

    @contextlib.contextmanager
    def lock(self, name: bytes, *, ttl_s: float = 10.0, shared: bool = False,
             capacity: int = 0, timeout: float | None = None) -> Iterator[Lock]:
        """`with c.lock(name, ttl_s=10) as lock`: held with lock.token, released on exit."""
        held = self._client.lock(name, ttl_s=ttl_s, shared=shared, capacity=capacity,
                                 timeout=timeout)
        self._run(held.acquire())
        try:
            yield held
        finally:
            self._run(held.release())

    def get(self, key: bytes, *, at: Timestamp | None = None, mode: str = "linearizable",
            timeout: float | None = None) -> bytes | None:
        return self._run(self._client.get(key, at=at, mode=mode, timeout=timeout))

    def get_entry(self, key: bytes, *, at: Timestamp | None = None,
                  mode: str = "linearizable", timeout: float | None = None) -> commands.Entry:
        return self._run(self._client.get_entry(key, at=at, mode=mode, timeout=timeout))

    def delete(self, key: bytes, *, prev: bool = False,
               timeout: float | None = None) -> commands.WriteResult:
        return self._run(self._client.delete(key, prev=prev, timeout=timeout))

    def cas(self, key: bytes, expected: bytes | None | Any = commands.UNSET,
            new: bytes | None = None, *, expected_revision: int | None = None,
            value: bytes | None = None, timeout: float | None = None) -> bool:
        return self._run(self._client.cas(key, expected, new,
                                          expected_revision=expected_revision, value=value,
                                          timeout=timeout))

    def scan(self, start: bytes, end: bytes | None = None, *, limit: int | None = None,
             mode: str = "linearizable", timeout: float | None = None
             ) -> list[commands.KeyValue]:
        return self._run(self._client.scan(start, end, limit=limit, mode=mode,
                                           timeout=timeout))

    def scan_prefix(self, prefix: bytes, *, limit: int | None = None,
                    mode: str = "linearizable", timeout: float | None = None
                    ) -> list[commands.KeyValue]:
        return self._run(self._client.scan_prefix(prefix, limit=limit, mode=mode,
                                                  timeout=timeout))

    def call(self, command: bytes, *, timeout: float | None = None,
             idempotent: bool = False) -> bytes:
        return self._run(self._client.call(command, timeout=timeout, idempotent=idempotent))

    def query(self, query: bytes, *, mode: str = "linearizable",
              timeout: float | None = None) -> bytes:
        return self._run(self._client.query(query, mode=mode, timeout=timeout))

    def status(self, address: str | None = None, *,
               timeout: float | None = None) -> dict[str, Any]:
        return self._run(self._client.status(address, timeout=timeout))

    def snapshot(self, path: str | None = None, *, timeout: float | None = None) -> bytes:
        return self._run(self._client.snapshot(path, timeout=timeout))

    def members(self, *, timeout: float | None = None) -> dict[str, Any]:
        return self._run(self._client.members(timeout=timeout))

    def transfer_leadership(self, to: int, *, timeout: float = 10.0) -> None:
        return self._run(self._client.transfer_leadership(to, timeout=timeout))

    def add_member(self, node_id: int, address: str, *, learner: bool = False,
                   witness: bool = False, timeout: float = 60.0) -> dict[str, Any]:
        return self._run(self._client.add_member(node_id, address, learner=learner,
                                                 witness=witness, timeout=timeout))

    def remove_member(self, node_id: int, *, timeout: float = 60.0) -> dict[str, Any]:
        return self._run(self._client.remove_member(node_id, timeout=timeout))

    def promote(self, node_id: int, *, timeout: float = 60.0) -> dict[str, Any]:
        return self._run(self._client.promote(node_id, timeout=timeout))

    def admin(self, address: str, op: int, spec: dict[str, Any] | None = None, *,
              wait: float | None = None, timeout: float | None = None) -> None:
        return self._run(self._client.admin(address, op, spec, wait=wait, timeout=timeout))


class SyncTransaction:
    """engine.aio.txn.AsyncTransaction, blocking (SyncClient.transaction)."""

    def __init__(self, tx: AsyncTransaction,
                 run: Callable[[Coroutine[Any, Any, Any]], Any]) -> None:
        self._tx = tx
        self._run = run

    @property
    def id(self) -> str:
        return self._tx.id

    def get(self, key: bytes) -> bytes | None:
        value: bytes | None = self._run(self._tx.get(key))
        return value

    def put(self, key: bytes, value: bytes) -> None:
        self._tx.put(key, value)

    def delete(self, key: bytes) -> None:
        self._tx.delete(key)

    def scan(self, start: bytes, end: bytes = b"",
             limit: int | None = None) -> list[tuple[bytes, bytes]]:
        rows: list[tuple[bytes, bytes]] = self._run(self._tx.scan(start, end, limit))
        return rows
