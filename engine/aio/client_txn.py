"""Transactions through engine.Client (docs/transactions.md, "Using transactions"): the
asyncio coordinator (engine.aio.txn.TxnRunner) over the client's own routing and request
machinery.

    async with client.transaction() as tx:      # committed on exit, across shards
        v = await tx.get(b"x"); tx.put(b"y", v or b"")
    await client.run_transaction(fn)            # fn(tx) retried on TransactionConflict

Routing. Every transactional key goes to the group of its range (group 0 when the cluster is
not sharded), read from the client's RangeCache, which the first transaction fills with the
whole shard map (one meta query; a map holds few ranges). A transaction's records live in the
group of its anchor key, so messages are addressed to groups, not keys: the coordinator picks
the group when it builds a message. A wrong-shard answer (the range split since the map was
read) refreshes the map; the refused message took effect nowhere, so one naming keys goes
again to the group now owning all of them (the split handed that range their transactional
state), and any other counts as no answer (the coordinator retries; never answered ends in
engine.Timeout, the outcome unknown). A range refuses, before the log and at apply, a
message naming a key it does not own (engine.shard.replica.RangeStateMachine).

Outcomes: engine.TransactionConflict is definite (nothing was written; run_transaction
retries it); engine.Timeout means the commit may or may not have happened.

The servers must run the participant: a sharded cluster's ranges do
(engine.shard.replica.RangeStateMachine); an unsharded cluster needs
`state_machine=engine.TxnKVStore` (its default engine.KVStore answers TXN1 messages
malformed).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, TypeVar

from engine import errors
from engine.aio.txn import AsyncTransaction, TxnRunner
from engine.shard import replica as shard_replica
from engine.txn.hlc import Timestamp
from engine.txn.participant import TXN_MAGIC, decode

if TYPE_CHECKING:
    from engine.aio.client import Client

T = TypeVar("T")
# Re-sends of one message after wrong-shard answers (each after a fresh map).
_REROUTES = 4


class ClientRouter:
    """The coordinator's Router over a client's RangeCache (group 0 while unsharded)."""

    def __init__(self, client: Client) -> None:
        self._client = client

    def group_of(self, key: bytes) -> int:
        if not self._client._sharded:
            return 0
        descriptor = self._client._ranges.lookup(key)
        # A miss goes to the meta group, which answers wrong-shard: the map is read again.
        return 0 if descriptor is None else descriptor.group_id

    def groups_for_span(self, start: bytes, end: bytes) -> list[tuple[int, bytes, bytes]]:
        if not self._client._sharded:
            return [(0, start, end)]
        route = self._client._ranges.route_span(start, end or None)
        pieces = [(p.descriptor.group_id, p.start, p.end or b"") for p in route.pieces]
        pieces.extend((0, low, high or b"") for low, high in route.missing)
        return sorted(pieces, key=lambda piece: piece[1])


class ClientTransactions:
    """The transaction side of one engine.Client: a TxnRunner per commit protocol."""

    def __init__(self, client: Client) -> None:
        self._client = client
        self._router = ClientRouter(client)
        self._runners: dict[bool, TxnRunner] = {}
        self._mapped = False

    def runner(self, parallel_commits: bool = False) -> TxnRunner:
        runner = self._runners.get(parallel_commits)
        if runner is None:
            client = self._client
            runner = self._runners[parallel_commits] = TxnRunner(
                self._router, self._send, limits=client._limits,
                name=f"c{client.client_id:x}", parallel_commits=parallel_commits)
        return runner

    async def _ready(self, parallel_commits: bool) -> TxnRunner:
        if not self._mapped:
            await self._read_map()
            self._mapped = True
        return self.runner(parallel_commits)

    async def _read_map(self) -> None:
        try:
            await self._client.shard_map()
        except errors.Rejected:
            pass   # not sharded: every key is group 0's

    async def _send(self, group: int, message: bytes, query: bool) -> bytes | None:
        for _ in range(_REROUTES):
            try:
                raw = await self._client._txn_request(group, message, query)
            except errors.WrongShard as error:
                await self._after_wrong_shard(error)
            except errors.Timeout:
                return None
            else:
                if not shard_replica.is_wrong_shard(raw):
                    return self._checked(group, raw)
                # Refused at apply (a split between the check and the log).
                await self._after_wrong_shard(shard_replica.decode_wrong_shard(raw))
            # Refused, so it took effect nowhere: a message naming keys goes to the group
            # now owning all of them (a split hands it their transactional state); one
            # about a record, or whose keys now span groups, counts as no answer.
            owner = self._owner(message)
            if owner is None or owner == group:
                return None
            group = owner
        return None

    @staticmethod
    def _checked(group: int, raw: bytes) -> bytes:
        if not raw.startswith(TXN_MAGIC):
            # Not a participant's answer: the group's state machine is not TxnKVStore (an
            # unsharded cluster's default KVStore), so no message of this transaction took
            # effect anywhere; every group of the cluster runs the same state machine.
            raise errors.Rejected(
                f"group {group} does not serve transactions: run a sharded cluster or "
                "state_machine=engine.txn.participant.TxnKVStore (docs/transactions.md)")
        return raw

    def _owner(self, message: bytes) -> int | None:
        """The one group owning every key and span `message` names, per the refreshed map."""
        try:
            keys, spans = shard_replica.txn_message_keys(decode(message))
        except (errors.DecodeError, KeyError, TypeError, ValueError, AttributeError):
            return None
        groups = {self._router.group_of(key) for key in keys}
        for start, end in spans:
            groups.update(g for g, _, _ in self._router.groups_for_span(start, end or b""))
        return groups.pop() if len(groups) == 1 else None

    async def _after_wrong_shard(self, error: errors.WrongShard) -> None:
        self._client._on_wrong_shard(error)
        try:
            await self._client.shard_map()
        except (errors.Rejected, errors.Timeout):
            pass

    @asynccontextmanager
    async def transaction(self, *, isolation: str = "serializable",
                          parallel_commits: bool = False) -> AsyncIterator[AsyncTransaction]:
        runner = await self._ready(parallel_commits)
        async with runner.transaction(isolation=isolation) as tx:
            yield tx

    async def run_transaction(self, fn: Callable[[AsyncTransaction], Awaitable[T]], *,
                              isolation: str = "serializable", parallel_commits: bool = False,
                              max_attempts: int = 20) -> T:
        runner = await self._ready(parallel_commits)
        result: T = await runner.run_transaction(fn, isolation=isolation,
                                                 max_attempts=max_attempts)
        return result

    def now(self) -> Timestamp:
        """A timestamp of the transactions' hybrid logical clock (engine.fs file times)."""
        return self.runner().env.hlc.now()

    async def drain(self) -> None:
        for runner in list(self._runners.values()):
            await runner.drain()
