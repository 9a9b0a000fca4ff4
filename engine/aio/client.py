"""engine.Client: an async KV client over UDP for a running cluster (another process).

    async with engine.Client(["127.0.0.1:7001", "127.0.0.1:7002"], cluster_key=key) as c:
        await c.put(b"k", b"v"); await c.get(b"k"); await c.cas(b"k", b"v", b"w")

It finds the leader (following NOT_LEADER hints), retries a request with the SAME session id
and sequence number (so the state machine applies it once, Raft thesis §6.3), and raises
engine.Timeout when the outcome is unknown — never a false "failed". Every method takes a
`timeout=` (seconds, for the whole call, retries included; default: the client's). Retries
wait an exponential backoff with full jitter (backoff_delay), so clients that lost their
leader together do not come back in lockstep. `call(command)` and `query(query)` send raw
commands and queries to a state machine of the user's own (engine.StateMachine).

Sessions: the KV state machine allows one outstanding command per session (client id), and a
session is opened by a REGISTER command whose result is its id; its first command is seq 1.
A Client may run many writes concurrently, so it keeps a pool of sessions: each write borrows
an idle session (registering one when none is idle), uses its next seq (every retry reuses
it), and returns it when the write is answered. Responses are matched by a per-client request number
(Message.seq), separate from the session seq inside the command. A session the cluster evicted
(Limits.max_client_sessions) is replaced by a new one (see _write).

Sharded clusters (docs/sharding.md): a client starts unsharded, every request to group 0 as
for a single-group cluster. A sharded cluster's group 0 is its meta group, which answers
WRONG_SHARD to key-value requests: from then on each key goes to its range's group, found in
a RangeCache (engine.shard.routing) filled from the meta group; leaders and session pools are
kept per group; WRONG_SHARD answers update the cache and the request goes again; scans walk
the ranges in key order. `shard_map()` returns every range.
"""

from __future__ import annotations

import asyncio
import json
import random
from collections.abc import AsyncGenerator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from typing import Any, TypeVar

from engine import errors
from engine._core import codec
from engine.aio import coord_client
from engine.aio.client_txn import ClientTransactions
from engine.aio.txn import AsyncTransaction
from engine.aio.udp import new_boot_epoch
from engine.config import Limits
from engine.coord.watch import WatchEvent
from engine.kv import commands
from engine.messages import AdminOp, ClientOp, ClientStatus, Message, MessageType, enum_members
from engine.shard import meta as shard_meta
from engine.shard import replica as shard_replica
from engine.shard.map import RangeDescriptor
from engine.shard.routing import RangeCache
from engine.txn.hlc import Timestamp
from engine.types import MIN_CLIENT_ID, check_client_id, parse_address

# The enums' members as plain attributes (engine.messages.enum_members): read per request.
_MT = enum_members(MessageType)
T = TypeVar("T")
_OP = enum_members(ClientOp)
_STATUS = enum_members(ClientStatus)
_KV_STATUS = enum_members(commands.Status)
_RESPONSE_TYPES = (_MT.CLIENT_RESPONSE, _MT.ADMIN_RESPONSE)


def backoff_delay(attempt: int, base: float, cap: float) -> float:
    """Seconds to wait before retry number `attempt` (1, 2, ...): exponential backoff with
    full jitter, uniform in [0, min(cap, base * 2**attempt)) (the spread is what keeps many
    clients that failed together from retrying together)."""
    return random.random() * min(cap, base * 2.0 ** min(attempt, 32))


def _local_address(addresses: list[tuple[str, int]]) -> tuple[str, int]:
    """The wildcard address to bind: IPv6 for IPv6 literals, IPv4 otherwise."""
    families = {":" in host for host, _ in addresses}
    if len(families) > 1:
        raise errors.ConfigError("Client addresses mix IPv4 and IPv6: use one family")
    return ("::", 0) if families == {True} else ("0.0.0.0", 0)


class _SessionExpired(errors.Timeout):
    """The outcome is unknown and the session is gone (see Client._write)."""


class _WrongShardAnswer(Exception):
    """A range (or the meta group) answered WRONG_SHARD: nothing was applied by this copy.
    `ambiguous`: an earlier copy of the same request got no definite answer."""

    def __init__(self, error: errors.WrongShard, ambiguous: bool) -> None:
        super().__init__(str(error))
        self.error = error
        self.ambiguous = ambiguous


_NOT_HOSTED = b"is not hosted on node"


def _expire(future: asyncio.Future[Message | None]) -> None:
    if not future.done():
        future.set_result(None)   # no answer in time: the caller retries or gives up


class _ClientProtocol(asyncio.DatagramProtocol):
    def __init__(self, client: Client) -> None:
        self.client = client

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.client._on_datagram(data, addr)

    def error_received(self, exc: Exception) -> None:  # ICMP port unreachable etc.
        self.client.counters["socket_errors"] += 1


class Client:
    # Retry backoff (backoff_delay): the first retry waits up to 2 * retry_base_s, each next
    # one up to twice as long, never more than retry_cap_s.
    retry_base_s: float = 0.01
    retry_cap_s: float = 1.0
    # snapshot(): a chunk request unanswered this many times in a row starts the fetch again
    # (the node holding the snapshot may be down).
    snapshot_chunk_attempts: int = 4

    def __init__(
        self, addresses: list[str], *, cluster_key: bytes, cluster_id: int = 0,
        timeout: float = 10.0, attempt_timeout: float = 0.5, client_id: int | None = None,
        limits: Limits | None = None, encrypt_payloads: bool = False,
    ) -> None:
        if not addresses:
            raise errors.ConfigError("Client needs at least one node address")
        self.addresses = [parse_address(a) for a in addresses]
        self.timeout = timeout
        self.attempt_timeout = attempt_timeout
        # Client ids are disjoint from node ids (engine.types.MIN_CLIENT_ID): a client can
        # never be taken for a member.
        self.client_id = (check_client_id(client_id) if client_id is not None
                          else random.randrange(MIN_CLIENT_ID, 1 << 63))
        limits = limits or Limits()
        self._limits = limits
        # Replies may be as large as this (Message.commit of a request: the client opts into
        # answers larger than Limits.max_reply_amplification x its request, e.g. a value).
        self._max_reply_bytes = limits.max_reassembly_bytes
        # A SCAN page must fit one datagram (the client does not reassemble a reply): the
        # datagram less the frame and the largest response message header around the result.
        self._max_scan_page_bytes = (limits.max_datagram_bytes - codec.FRAME_OVERHEAD
                                     - codec.MESSAGE_FIXED_BYTES - 8 * len(codec.U64_FIELDS))
        # encrypt_payloads: as the cluster's nodes (NodeConfig.encrypt_payloads), or every
        # frame is refused (engine/_core/codec_py "Payload encryption").
        self._codec = codec.FrameCodec(cluster_key, cluster_id, limits.max_datagram_bytes,
                                       local_id=self.client_id, encrypt=encrypt_payloads)
        self._frame_budget = limits.max_datagram_bytes - codec.FRAME_OVERHEAD
        self._max_messages = limits.max_messages_per_frame
        # Strictly increasing in this process: (client id, epoch, counter) never repeats, so
        # neither does an AES-GCM nonce under the derived key (engine/_core/codec_py).
        self._epoch = new_boot_epoch()
        self._outbox: dict[tuple[str, int], list[Message]] = {}
        self._flush_handle: asyncio.Handle | None = None
        self._counter = 0
        # Node ids learned from answers, by address: frames name their receiver (a frame
        # for one node cannot be replayed to another); 0 until the node answered once.
        self._node_ids: dict[tuple[str, int], int] = {}
        self._request_number = 0
        # Idle sessions: [session id, next seq]. A timed-out write keeps its seq consumed.
        self._idle_sessions: list[list[int]] = []
        self._leader: tuple[str, int] | None = None
        # Sharded clusters (docs/sharding.md): off until the cluster answers WRONG_SHARD
        # (its group 0 is the meta group); then each key goes to its range's group.
        self._sharded = False
        self._ranges = RangeCache(limits=limits)
        self._txn: ClientTransactions | None = None
        self._group_leaders: dict[int, tuple[str, int]] = {}
        self._group_sessions: dict[int, list[list[int]]] = {}
        self._next_address = 0
        self._waiting: dict[int, asyncio.Future[Message | None]] = {}
        self._transport: asyncio.DatagramTransport | None = None
        self.counters = {"requests": 0, "retries": 0, "redirects": 0, "dropped": 0,
                         "socket_errors": 0, "datagrams_sent": 0, "sessions_opened": 0,
                         "sessions_expired": 0, "wrong_shard": 0, "map_lookups": 0}

    async def __aenter__(self) -> Client:
        await self.open()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        if self._txn is not None:
            await self._txn.drain()   # committed transactions' intents resolved first
        self.close()

    async def open(self) -> None:
        loop = asyncio.get_running_loop()
        transport, _ = await loop.create_datagram_endpoint(
            lambda: _ClientProtocol(self), local_addr=_local_address(self.addresses)
        )
        self._transport = transport  # type: ignore[assignment]

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()
            self._transport = None
        for future in self._waiting.values():
            if not future.done():
                future.set_exception(errors.Stopped("client closed"))
        self._waiting.clear()
        self._outbox.clear()
        if self._flush_handle is not None:
            self._flush_handle.cancel()
            self._flush_handle = None

    # ------------------------------------------------------------------ KV API

    async def put(self, key: bytes, value: bytes, *, prev: bool = False,
                  timestamp: Timestamp | None = None,
                  timeout: float | None = None, lease: Any = None,
                  fence: Any = None) -> commands.WriteResult:
        """Set key to value. The result's `prev` is the value the key held, only with
        prev=True (the cluster then carries it back; see commands.WriteResult).
        `timestamp`: the write's HLC timestamp (the store pushes it above its newest
        version if it is below; docs/transactions.md, "MVCC"). `lease` (a Lease or its id):
        the key is deleted when the lease ends. `fence` (a held Lock, or (name, token)):
        refused with engine.FencingTokenStale once a newer token of that lock exists (the
        check runs in the replicated state machine; docs/coordination.md)."""
        if lease is not None or fence is not None:
            if prev or timestamp is not None:
                raise errors.ConfigError("put with lease= or fence= takes no prev or timestamp")
            return await coord_client.put_ex(self, key, value, lease, fence, timeout)
        stamp = _encoded(timestamp)
        return _write_result(self._check_write(await self._write(
            lambda session, seq: commands.encode_put(key, value, client_id=session, seq=seq,
                                                     previous=prev, timestamp=stamp),
            timeout, key=key)))

    async def get(self, key: bytes, *, at: Timestamp | None = None,
                  mode: str = "linearizable", timeout: float | None = None) -> bytes | None:
        """The value, or None if absent; with `at`, the value as of that HLC timestamp
        (engine.HistoryCompacted if it is older than the history the cluster keeps). `mode`
        is engine.Node.read's: "linearizable" (ReadIndex on the cluster), "lease" (the
        leader answers from its lease, Raft thesis §6.4.1: linearizable only while clock
        rates differ by less than lease_drift_ticks allows) or "stale" (whichever node
        answers, possibly behind)."""
        return (await self._get(key, at, False, mode, timeout)).value

    async def get_entry(self, key: bytes, *, at: Timestamp | None = None,
                        mode: str = "linearizable", timeout: float | None = None
                        ) -> commands.Entry:
        """(value, revision): the value as get returns it and the revision of the write
        that set it (0: no value), for cas(key, expected_revision=revision, value=...)."""
        result = await self._get(key, at, True, mode, timeout)
        return commands.Entry(result.value, result.revision or 0)

    async def _get(self, key: bytes, at: Timestamp | None, revision: bool, mode: str,
                   timeout: float | None) -> commands.KVResult:
        result = commands.check_read(await self._keyed_read(
            key, commands.encode_query(key, at=_encoded(at), revision=revision),
            _read_mode(mode), timeout))
        if not result.ok and result.error:
            raise errors.Rejected(str(result.error))   # a read never enters a log
        return result

    async def delete(self, key: bytes, *, prev: bool = False,
                     timeout: float | None = None) -> commands.WriteResult:
        """Delete key. The result's `existed` says whether it had a value, `prev` is that
        value with prev=True."""
        return _write_result(self._check_write(await self._write(
            lambda session, seq: commands.encode_delete(key, client_id=session, seq=seq,
                                                        previous=prev),
            timeout, key=key)))

    async def cas(self, key: bytes, expected: bytes | None | Any = commands.UNSET,
                  new: bytes | None = None, *, expected_revision: int | None = None,
                  value: bytes | None = None, timeout: float | None = None) -> bool:
        """Set key to `new` if its value is `expected` (None: absent), or with
        cas(key, expected_revision=r, value=v) to v if the key's revision is r (0: absent;
        get_entry reads it). True if it did."""
        commands.encode_cas_call(key, expected, new, expected_revision, value)   # checks
        result = await self._write(lambda session, seq: commands.encode_cas_call(
            key, expected, new, expected_revision, value, client_id=session, seq=seq),
            timeout, key=key)
        if result.status != _KV_STATUS.CAS_MISMATCH:
            self._check_write(result)
        return bool(result.ok)

    async def scan(self, start: bytes, end: bytes | None = None, *, limit: int | None = None,
                   mode: str = "linearizable", timeout: float | None = None
                   ) -> list[commands.KeyValue]:
        """The keys in [start, end) in byte order with their values, at most `limit` of them
        (None: all); end None or b"": to the end of the key space. Pages of one datagram
        each are fetched one after the other (scan_page); each page is a read in `mode`
        (as for get: linearizable by default, after a ReadIndex round), so a scan sees every
        write acknowledged before it began, but pages are read at different moments: it is
        not one atomic read of the range. `timeout` covers every page. ConfigError for a
        limit below 1 or a start after a non-empty end."""
        commands.check_scan_range(start, end, limit)
        loop = asyncio.get_running_loop()
        budget = self.timeout if timeout is None else timeout
        deadline = loop.time() + budget
        found: list[commands.KeyValue] = []
        cursor: bytes | None = start
        while cursor is not None and (limit is None or len(found) < limit):
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise errors.Timeout(f"scan not finished within {budget:.3g} s "
                                     f"({len(found)} keys read)")
            want = None if limit is None else limit - len(found)
            if self._sharded:
                items, cursor, _ = await self._scan_range(cursor, end or None, want, mode,
                                                          deadline)
                found += items
                continue
            page = await self.scan_page(cursor, end, limit=want, mode=mode,
                                        timeout=remaining)
            found += page.items
            cursor = page.resume_key
        return found

    async def _scan_range(self, cursor: bytes, end: bytes | None, limit: int | None,
                          mode: str, deadline: float, max_bytes: int | None = None
                          ) -> tuple[list[commands.KeyValue], bytes | None, int | None]:
        """One page of a sharded scan: the part of [cursor, end) in the range owning
        `cursor`, read linearizably (in `mode`) by that range's group; the next cursor
        (None: the scan is done) and the page's revision. Pages stitch in key order: each
        range's keys, then the next range's from its start."""
        loop = asyncio.get_running_loop()
        attempt = 0
        while True:
            descriptor = await self._route(cursor, deadline)
            piece_end = descriptor.end if end is None or (
                descriptor.end is not None and descriptor.end < end) else end
            room = self._max_scan_page_bytes
            query = commands.encode_scan(
                cursor, piece_end, limit=commands.U32_MAX if limit is None else limit,
                max_bytes=room if max_bytes is None else min(max_bytes, room))
            try:
                result = await self._request(_OP.READ, query, _read_mode(mode),
                                             max(deadline - loop.time(), 0.001),
                                             group=descriptor.group_id)
            except _WrongShardAnswer as exc:
                attempt += 1
                await self._after_wrong_shard(exc.error, cursor, attempt, deadline)
                continue
            page = self._scan_page_of(result)
            if page.resume_key is not None:
                return list(page.items), page.resume_key, page.revision
            if piece_end is None or piece_end == end:
                return list(page.items), None, page.revision
            return list(page.items), piece_end, page.revision

    async def scan_prefix(self, prefix: bytes, *, limit: int | None = None,
                          mode: str = "linearizable", timeout: float | None = None
                          ) -> list[commands.KeyValue]:
        """The keys that start with `prefix`, in order: scan(prefix, prefix_end(prefix))."""
        if not isinstance(prefix, bytes):
            raise errors.ConfigError("scan_prefix takes a bytes prefix")
        return await self.scan(prefix, commands.prefix_end(prefix), limit=limit, mode=mode,
                               timeout=timeout)

    async def scan_page(self, start: bytes, end: bytes | None = None, *,
                        limit: int | None = None, max_bytes: int | None = None,
                        mode: str = "linearizable", timeout: float | None = None
                        ) -> commands.ScanPage:
        """One SCAN round trip: the first keys of [start, end) that fit one reply datagram
        (max_bytes: at most that many bytes of result, capped at the datagram's room) and
        `limit`. page.resume_key is the next page's start (None: the range is done). The
        building block of scan, for callers that page themselves (e.g. range by range).
        In a sharded cluster a page holds keys of one range only (read by that range's
        group): a range's last page says `more` while later ranges meet the span."""
        room = self._max_scan_page_bytes
        budget = self.timeout if timeout is None else timeout
        if not self._sharded:
            query = commands.encode_scan(
                start, end, limit=commands.U32_MAX if limit is None else limit,
                max_bytes=room if max_bytes is None else min(max_bytes, room))
            try:
                result = await self._request(_OP.READ, query, _read_mode(mode), budget)
            except _WrongShardAnswer as exc:
                self._on_wrong_shard(exc.error)   # the meta group: the cluster is sharded
            else:
                return self._scan_page_of(result)
        commands.check_scan_range(start, end, limit)
        deadline = asyncio.get_running_loop().time() + budget
        cursor: bytes | None = start
        items: list[commands.KeyValue] = []
        revision: int | None = None
        while not items and cursor is not None:   # skip ranges with no key in the span
            items, cursor, revision = await self._scan_range(
                cursor, end or None, limit, mode, deadline, max_bytes)
        return commands.ScanPage(items, cursor is not None, revision)

    def _scan_page_of(self, result: Any) -> commands.ScanPage:
        if not result.ok:
            raise errors.Rejected(str(result.error or result.status))   # never in a log
        try:
            return commands.decode_scan_result(result)
        except errors.DecodeError as exc:
            raise errors.StateMachineError(
                f"the cluster's state machine does not answer scans: {exc}") from exc

    # ------------------------------------------------------------------ coordination
    # (engine.aio.coord_client, docs/coordination.md)

    async def grant_lease(self, ttl_s: float, *, timeout: float | None = None
                          ) -> coord_client.LeaseInfo:
        """Grant a lease of ttl_s seconds (on the leader's clock); renew it with keepalive."""
        return await coord_client.grant_lease(self, ttl_s, timeout)

    async def keepalive(self, lease: Any, *, timeout: float | None = None
                        ) -> coord_client.LeaseInfo:
        """Renew a lease for its full TTL; engine.LeaseNotFound if it already ended."""
        return await coord_client.keepalive(self, lease, timeout)

    async def revoke(self, lease: Any, *, timeout: float | None = None) -> bool:
        """End a lease now: its keys are deleted, its locks released. False if gone."""
        return await coord_client.revoke(self, lease, timeout)

    async def leases(self, *, timeout: float | None = None) -> list[dict[str, int]]:
        """The live leases (id, ttl_ms, remaining_ms as last persisted, generation, keys)."""
        return await coord_client.leases(self, timeout)

    def lease(self, ttl_s: float, *, timeout: float | None = None) -> coord_client.Lease:
        """`async with c.lease(ttl_s) as lease`: granted, kept alive in the background,
        revoked on exit."""
        return coord_client.Lease(self, ttl_s, timeout=timeout)

    def lock(self, name: bytes, *, ttl_s: float = 10.0, lease: Any = None,
             shared: bool = False, capacity: int = 0,
             timeout: float | None = None) -> coord_client.Lock:
        """`async with c.lock(name, ttl_s=10) as lock`: waits its turn (FIFO), then holds
        the lock with `lock.token`; released on exit or when its lease ends. shared=True:
        a reader of a read-write lock, or with capacity=N a slot of a counting semaphore."""
        return coord_client.Lock(self, name, ttl_s=ttl_s, lease=lease, shared=shared,
                                 capacity=capacity, timeout=timeout)

    def watch(self, key: bytes, *, prefix: bool = False, start_revision: int | None = None,
              poll_s: float = 0.05) -> AsyncGenerator[WatchEvent, None]:
        """`async for ev in c.watch(key, prefix=True, start_revision=r)`: every change
        (ev.type "put" / "delete", ev.key, ev.value, ev.revision) exactly once, in revision
        order, across leader changes; engine.Compacted if r is older than the history."""
        return coord_client.watch(self, key, prefix=prefix, start_revision=start_revision,
                                  poll_s=poll_s)

    def election(self, name: bytes, *, ttl_s: float = 10.0) -> coord_client.Election:
        """An election: campaign(value), leader(), proclaim(value), resign(), observe()."""
        return coord_client.Election(self, name, ttl_s=ttl_s)

    # ------------------------------------------------------------------ transactions

    def _transactions(self) -> ClientTransactions:
        if self._txn is None:
            self._txn = ClientTransactions(self)
        return self._txn

    def transaction(self, *, isolation: str = "serializable", parallel_commits: bool = False
                    ) -> AbstractAsyncContextManager[AsyncTransaction]:
        """A transaction across shards, committed when the block exits normally
        (engine.aio.client_txn): engine.TransactionConflict (definite, retry) or
        engine.Timeout (unknown outcome). isolation: "serializable" or "snapshot"."""
        return self._transactions().transaction(isolation=isolation,
                                                parallel_commits=parallel_commits)

    async def run_transaction(self, fn: Callable[[AsyncTransaction], Awaitable[T]], *,
                              isolation: str = "serializable", parallel_commits: bool = False,
                              max_attempts: int = 20) -> T:
        """fn(tx) in a transaction, run again on TransactionConflict (fn must be safe to
        re-run: its effects go through tx); its result."""
        return await self._transactions().run_transaction(
            fn, isolation=isolation, parallel_commits=parallel_commits,
            max_attempts=max_attempts)

    def now(self) -> Timestamp:
        """A timestamp of this client's hybrid logical clock (the transactions' clock)."""
        return self._transactions().now()

    async def _txn_request(self, group: int, message: bytes, query: bool) -> bytes:
        """One transaction message to `group`'s leader (every one is idempotent: sent
        again until answered); WrongShard if the group refused it."""
        try:
            if query:
                raw = await self._request(_OP.READ, message, _read_mode("linearizable"),
                                          raw=True, group=group)
            else:
                raw = await self._request(_OP.WRITE, message, 0, raw=True, resend=True,
                                          group=group)
        except _WrongShardAnswer as exc:
            raise exc.error from None
        return bytes(raw)

    async def call(self, command: bytes, *, timeout: float | None = None,
                   idempotent: bool = False) -> bytes:
        """Propose `command` to the cluster's state machine (a user's engine.StateMachine,
        served with its own Node); its apply() result.

        A raw command carries no client session, so a copy sent again could apply twice:
        it goes to other nodes only while the answers are definite (NOT_LEADER, REJECTED),
        and when an attempt gets no answer the call raises Timeout (it may have applied)
        unless `idempotent=True` allows sending it again until the timeout."""
        try:
            return bytes(await self._request(_OP.WRITE, bytes(command), 0, timeout,
                                             raw=True, resend=idempotent))
        except _WrongShardAnswer as exc:   # a sharded cluster's group 0 is its meta group
            raise exc.error from None

    async def query(self, query: bytes, *, mode: str = "linearizable",
                    timeout: float | None = None) -> bytes:
        """Run `query` on the state machine's query() without writing the log (modes as for
        get); its raw answer."""
        try:
            return bytes(await self._request(_OP.READ, bytes(query), _read_mode(mode),
                                             timeout, raw=True))
        except _WrongShardAnswer as exc:
            raise exc.error from None

    async def status(self, address: str | None = None, *,
                     timeout: float | None = None) -> dict[str, Any]:
        """Status of one node (JSON from the node)."""
        target = parse_address(address) if address else self.addresses[0]
        response = await self._exchange(target, _OP.STATUS, self._next_request_number(),
                                        b"", timeout or self.attempt_timeout * 4)
        if response is None:
            raise errors.Timeout(f"no status from {target[0]}:{target[1]}")
        return dict(json.loads(response.context))

    async def snapshot(self, path: str | None = None, *,
                       timeout: float | None = None) -> bytes:
        """A consistent snapshot of the running cluster (Raft): the checksummed envelope
        `snapshot save --data-dir` writes and `snapshot restore` reads, holding every write
        acknowledged before the call. With `path`, also written there durably (temporary
        file, fsync, rename, directory fsync). The leader takes it after a ReadIndex round
        and the client fetches it in chunks of one datagram each
        (engine.aio.snapshot_serving), retrying a chunk that got no answer and starting
        again if the snapshot changed meanwhile (the leader changed, or dropped it idle).

        Raises SnapshotCorrupt if what arrived fails its checksum (nothing is written),
        Timeout if no whole snapshot arrived in time, Rejected if the cluster refuses
        (e.g. a Paxos cluster)."""
        from engine.aio import snapshot_serving as serving
        from engine.aio.wal import replace_file_durably

        loop = asyncio.get_running_loop()
        budget = self.timeout if timeout is None else timeout
        deadline = loop.time() + budget
        want = serving.max_chunk_bytes(self._limits)
        while True:
            target, reply = await self._snapshot_begin(want, deadline, budget)
            assembly = serving.SnapshotAssembly(reply[0], reply[1], reply[2],
                                                self._limits.max_snapshot_bytes)
            assembly.add(reply[3], reply[4])
            while not assembly.complete:
                chunk = await self._snapshot_chunk(
                    target, assembly.index, assembly.term, assembly.received, want, deadline,
                    budget)
                if chunk is None or chunk[:3] != (assembly.index, assembly.term,
                                                  assembly.total):
                    break   # gone from that node, or replaced: start again
                assembly.add(chunk[3], chunk[4])
            if not assembly.complete:
                self.counters["snapshot_restarts"] = self.counters.get("snapshot_restarts", 0) + 1
                continue
            envelope = assembly.envelope()
            if path is not None:
                await loop.run_in_executor(None, replace_file_durably, path, envelope)
            return envelope

    async def _snapshot_begin(self, want: int, deadline: float, budget: float
                              ) -> tuple[tuple[str, int], tuple[int, int, int, int, bytes]]:
        """Ask the leader for a fresh snapshot (following NOT_LEADER hints): the node that
        holds it and the first chunk's answer."""
        from engine.aio import snapshot_serving as serving
        from engine.messages import AdminOp

        loop = asyncio.get_running_loop()
        payload = serving.encode_request(0, 0, 0, want)
        hint: tuple[str, int] | None = None
        attempt = 0
        while True:
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise errors.Timeout(f"no snapshot from the cluster within {budget:.3g} s")
            target = hint or self._leader or self.addresses[
                self._next_address % len(self.addresses)]
            hint = None
            attempt += 1
            # The leader answers after a ReadIndex round and serialising the state machine
            # (about a second per 500k keys): more than one request's worth of waiting.
            response = await self._exchange(
                target, AdminOp.SNAPSHOT_CHUNK, self._next_request_number(), payload,
                min(remaining, max(5.0, 4 * self.attempt_timeout)), _MT.ADMIN)
            if response is not None and response.status == _STATUS.OK:
                self._leader = target
                reply = serving.decode_reply(response.context)
                if reply[0] != 0:
                    return target, reply
            elif response is not None and response.status == _STATUS.NOT_LEADER:
                self.counters["redirects"] += 1
                text = response.context.decode(errors="replace")
                try:
                    hint = parse_address(text) if text else None
                except errors.ConfigError:
                    hint = None
                if hint is not None:
                    continue
            elif response is not None and response.status == _STATUS.REJECTED:
                raise errors.Rejected(response.context.decode(errors="replace"))
            # No answer, busy, or no leader known: the next node, after a backoff.
            self._leader = None
            self._next_address += 1
            self.counters["retries"] += 1
            await self._back_off(attempt, deadline)

    async def _snapshot_chunk(self, target: tuple[str, int], index: int, term: int,
                              offset: int, want: int, deadline: float, budget: float
                              ) -> tuple[int, int, int, int, bytes] | None:
        """The chunk at `offset` from `target`, asked again while unanswered; None if the
        node did not answer SNAPSHOT_CHUNK_ATTEMPTS times in a row (it may be down: the
        caller starts again, at the leader)."""
        from engine.aio import snapshot_serving as serving
        from engine.messages import AdminOp

        loop = asyncio.get_running_loop()
        payload = serving.encode_request(index, term, offset, want)
        for attempt in range(1, self.snapshot_chunk_attempts + 1):
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise errors.Timeout(f"no whole snapshot from the cluster within {budget:.3g} s")
            response = await self._exchange(
                target, AdminOp.SNAPSHOT_CHUNK, self._next_request_number(), payload,
                min(remaining, self.attempt_timeout), _MT.ADMIN)
            if response is None or response.status == _STATUS.UNKNOWN:
                self.counters["retries"] += 1
                await self._back_off(attempt, deadline)
                continue
            if response.status == _STATUS.OK:
                return serving.decode_reply(response.context)
            if response.status == _STATUS.REJECTED:
                raise errors.Rejected(response.context.decode(errors="replace"))
            return None
        return None

    # ------------------------------------------------------------------ plumbing

    def _next_request_number(self) -> int:
        self._request_number += 1
        return self._request_number

    async def _write(self, build: Any, timeout: float | None = None, *,
                     key: bytes | None = None) -> Any:
        """One write in a borrowed session (see the module docstring), sent to the group of
        `key`'s range in a sharded cluster (a session lives in one group).

        The cluster evicts the least recently used session past Limits.max_client_sessions.
        A write answered SESSION_EXPIRED was not applied; the session is dropped and, when no
        earlier attempt can still apply, the write goes again in a new session; otherwise the
        outcome is unknown (_request raises _SessionExpired, a Timeout). A write answered
        WRONG_SHARD was not applied either: it goes again to the range now owning the key,
        unless an earlier copy got no answer (then it may have applied before a split and
        moved with the data, and the outcome is unknown: Timeout)."""
        loop = asyncio.get_running_loop()
        budget = timeout or self.timeout
        deadline = loop.time() + budget
        group = 0
        if self._sharded and key is not None:
            group = (await self._route(key, deadline)).group_id
        pool = self._sessions_of(group)
        session = pool.pop() if pool else None
        wrong_shards = 0
        while True:
            wrong: errors.WrongShard | None = None
            if session is None:
                try:
                    session = await self._open_session(deadline - loop.time(), group)
                except _WrongShardAnswer as exc:
                    wrong = exc.error
            if session is not None and wrong is None:
                session_id, seq = session
                session[1] = seq + 1  # consumed whatever happens: a retry reuses seq
                keep = True
                try:
                    result = await self._request(_OP.WRITE, build(session_id, seq),
                                                 timeout=max(deadline - loop.time(), 0.001),
                                                 group=group)
                    if result.status != _KV_STATUS.SESSION_EXPIRED:
                        return result
                    keep = False
                except _SessionExpired:
                    keep = False
                    raise
                except _WrongShardAnswer as exc:
                    # Not applied by this copy (engine.shard.replica: checked before the
                    # log and again at apply); the session stays usable (a seq skipped).
                    if exc.ambiguous:
                        # An earlier copy got no answer: it may have applied before a split
                        # and moved with the data; sent again to the new range in another
                        # session it could apply twice.
                        raise errors.Timeout(
                            "the range split while this write was retried: it may have "
                            "applied") from None
                    wrong = exc.error
                finally:
                    if keep:
                        pool.append(session)
                    else:
                        self.counters["sessions_expired"] += 1
                session = None
            if wrong is not None:
                if key is None:
                    raise errors.StateMachineError(str(wrong))
                wrong_shards += 1
                await self._after_wrong_shard(wrong, key, wrong_shards, deadline)
                group = (await self._route(key, deadline)).group_id
                pool = self._sessions_of(group)
                session = pool.pop() if pool else None
                continue
            if loop.time() >= deadline:
                raise errors.Timeout(
                    f"the cluster expired every session this write was sent in within "
                    f"{budget} s (it did not apply: Limits.max_client_sessions is "
                    f"too small for the number of writers)")

    async def _open_session(self, timeout: float, group: int = 0) -> list[int]:
        """Register a new session (Raft thesis §6.3): [client id, next seq].

        A retried REGISTER may open two sessions; the unused one is evicted in its turn."""
        if timeout <= 0:
            raise errors.Timeout("no time left to open a client session")
        self.counters["sessions_opened"] += 1
        result = await self._request(_OP.WRITE, commands.encode_register(),
                                     timeout=timeout, group=group)
        try:
            return [commands.decode_client_id(result), 1]
        except errors.DecodeError as exc:
            raise errors.StateMachineError(
                f"the cluster's state machine does not open KV sessions: {exc}") from exc

    @staticmethod
    def _check_write(result: Any) -> Any:
        """A write's result. A refusal by the state machine (malformed, stale) came from
        applying the command, so it is a StateMachineError, never a Rejected (that one
        means "never entered a log", engine.errors)."""
        if not result.ok and getattr(result, "error", None):
            raise errors.StateMachineError(str(result.error))
        return result

    async def _request(self, op: int, payload: bytes, read_mode: int = 0,
                       timeout: float | None = None, *, raw: bool = False,
                       resend: bool = True, group: int = 0) -> Any:
        """`read_mode`: index into engine.aio.node.READ_MODES, carried in Message.index.
        The decoded KV result, or with raw=True the state machine's bytes. resend=False:
        an attempt without a definite answer is not sent again (Timeout)."""
        seq = self._next_request_number()
        loop = asyncio.get_running_loop()
        budget = self.timeout if timeout is None else timeout
        deadline = loop.time() + budget
        self.counters["requests"] += 1
        attempt = 0
        ambiguous = False   # an earlier attempt got no definite answer: it may still apply
        last_rejection = ""
        while True:
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise errors.Timeout(
                    f"no definite answer within {budget:.3g} s (the request may have applied)"
                    + (f"; last answer: rejected ({last_rejection})" if last_rejection else "")
                )
            if ambiguous and not resend:
                raise errors.Timeout("no definite answer (the command may have applied; "
                                     "call(..., idempotent=True) sends it again)")
            leader = self._leader if not group else self._group_leaders.get(group)
            target = leader or self.addresses[self._next_address % len(self.addresses)]
            wait = (min(remaining, self.attempt_timeout * (1 + min(attempt, 4))) if resend
                    else remaining)
            future, timer = self._send_request(target, op, seq, payload, wait,
                                               _MT.CLIENT_REQUEST, read_mode, group)
            try:
                response = await future
            finally:
                self._forget(seq, future, timer)
            attempt += 1
            if response is None:
                # No answer: perhaps the node restarted since this epoch began and refuses
                # it as stale (engine.aio.udp, min_client_epoch); the retry uses a new one.
                self._renew_epoch()
            if response is None or response.status == _STATUS.UNKNOWN:
                # Lost, slow, or the node could not tell: retry (same seq: applied once).
                ambiguous = True
                self.counters["retries"] += 1
                self._set_leader(group, None)
                self._next_address += 1
                await self._back_off(attempt, deadline)
                continue
            status = response.status
            if status == _STATUS.OK:
                self._set_leader(group, target)
                if raw:
                    return response.context
                result = commands.decode_result(response.context)
                if (ambiguous and op == _OP.WRITE
                        and result.status == _KV_STATUS.SESSION_EXPIRED):
                    # This copy found the session gone; an earlier copy may have applied
                    # before the eviction.
                    raise _SessionExpired("the cluster expired this client session while the "
                                          "write was retried: it may have applied")
                return result
            if status == _STATUS.NOT_LEADER:
                self.counters["redirects"] += 1
                hint = response.context.decode(errors="replace")
                new_leader: tuple[str, int] | None = None
                if hint:
                    try:
                        new_leader = parse_address(hint)
                    except errors.ConfigError:
                        new_leader = None
                self._set_leader(group, new_leader)
                if new_leader is None:
                    self._next_address += 1
                    await self._back_off(attempt, deadline)  # an election is probably running
                continue
            if status == _STATUS.WRONG_SHARD:
                self.counters["wrong_shard"] += 1
                try:
                    error = shard_replica.decode_wrong_shard(bytes(response.context))
                except errors.DecodeError as exc:
                    raise errors.EngineError(f"undecodable wrong-shard answer: {exc}") from None
                raise _WrongShardAnswer(error, ambiguous)
            if status == _STATUS.ERROR and group and _NOT_HOSTED in response.context:
                # This node does not host the group (yet: a split's new range starts on
                # its replicas when they apply the split): nothing applied; another node,
                # or this one later.
                self._set_leader(group, None)
                self._next_address += 1
                await self._back_off(attempt, deadline)
                continue
            if status == _STATUS.REJECTED:
                reason = response.context.decode(errors="replace")
                if op == _OP.WRITE and ambiguous:
                    # An earlier attempt of this write may sit in a log and still apply (and
                    # a late answer to it carries the same request number), so this "no" is
                    # about one copy only: retry in the same session until the deadline.
                    self.counters["retries"] += 1
                    last_rejection = reason
                    await self._back_off(attempt, deadline)
                    continue
                raise errors.Rejected(reason)
            if status == _STATUS.ERROR:
                raise errors.StateMachineError(response.context.decode(errors="replace"))
            raise errors.EngineError(f"unknown response status {status}")

    # ------------------------------------------------------------------ shard routing

    def _set_leader(self, group: int, leader: tuple[str, int] | None) -> None:
        if not group:
            self._leader = leader
        elif leader is None:
            self._group_leaders.pop(group, None)
        else:
            self._group_leaders[group] = leader

    def _sessions_of(self, group: int) -> list[list[int]]:
        """The idle sessions of a group (a KV session lives in one group's state)."""
        if not group:
            return self._idle_sessions
        pool = self._group_sessions.get(group)
        if pool is None:
            pool = self._group_sessions[group] = []
        return pool

    def _on_wrong_shard(self, error: errors.WrongShard) -> bool:
        """Learn from a wrong-shard answer; True if the routing cache changed."""
        if error.range_id == 0:
            self._sharded = True   # the meta group answered: this cluster is sharded
            return False
        return self._ranges.on_wrong_shard(error)

    async def _after_wrong_shard(self, error: errors.WrongShard, key: bytes, attempt: int,
                                 deadline: float) -> None:
        """After a wrong-shard answer for `key`: use its hints, else re-read the key's
        range from the meta group (and wait a little if even that did not change the
        route: the meta group is ahead of the range, which is still applying the split)."""
        if self._on_wrong_shard(error):
            return
        before = self._ranges.lookup(key)
        await self._meta_lookup(key, deadline)
        if self._ranges.lookup(key) == before:
            await self._back_off(attempt, deadline)

    async def _route(self, key: bytes, deadline: float) -> RangeDescriptor:
        """The cached range owning `key`, looked up in the meta group on a miss."""
        attempt = 0
        while True:
            descriptor = self._ranges.lookup(key)
            if descriptor is not None:
                return descriptor
            attempt += 1
            await self._meta_lookup(key, deadline)
            descriptor = self._ranges.lookup(key)
            if descriptor is not None:
                return descriptor
            # The meta group's answer is older than a descriptor already seen (a lagging
            # replica answered): ask again.
            await self._back_off(attempt, deadline)

    async def _meta_lookup(self, key: bytes, deadline: float) -> None:
        """Read the range owning `key` from the meta group (linearizable) into the cache."""
        loop = asyncio.get_running_loop()
        remaining = deadline - loop.time()
        if remaining <= 0:
            raise errors.Timeout("no time left to look the key's range up")
        self.counters["map_lookups"] += 1
        raw = await self._request(
            _OP.READ, shard_replica.meta_envelope(shard_meta.encode_query_lookup(key)), 0,
            remaining, raw=True, group=shard_replica.META_GROUP_ID)
        result = shard_meta.decode_result(bytes(raw)).raise_for_status()
        self._ranges.insert_all(result.descriptors)

    async def shard_map(self, *, timeout: float | None = None) -> list[RangeDescriptor]:
        """Every range of a sharded cluster, in key order, read from its meta group
        (linearizable). Rejected if the cluster is not sharded."""
        raw = await self.query(shard_replica.meta_envelope(shard_meta.encode_query_map()),
                               timeout=timeout)
        if shard_replica.is_wrong_shard(raw):
            raise errors.Rejected("this cluster has no meta group (it is not sharded)")
        try:
            result = shard_meta.decode_result(raw).raise_for_status()
        except errors.DecodeError as exc:
            raise errors.Rejected(f"this cluster has no meta group: {exc}") from None
        self._sharded = True
        self._ranges.insert_all(result.descriptors)
        return list(result.descriptors)

    async def _keyed_read(self, key: bytes, query: bytes, read_mode: int,
                          timeout: float | None) -> Any:
        """A read of `key` sent to the group of its range (group 0 while unsharded)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + (self.timeout if timeout is None else timeout)
        attempt = 0
        while True:
            group = (await self._route(key, deadline)).group_id if self._sharded else 0
            try:
                return await self._request(_OP.READ, query, read_mode,
                                            max(deadline - loop.time(), 0.001), group=group)
            except _WrongShardAnswer as exc:
                attempt += 1
                await self._after_wrong_shard(exc.error, key, attempt, deadline)

    async def _back_off(self, attempt: int, deadline: float) -> None:
        """Sleep backoff_delay(attempt), never past the deadline."""
        delay = backoff_delay(attempt, self.retry_base_s, self.retry_cap_s)
        remaining = deadline - asyncio.get_running_loop().time()
        await asyncio.sleep(max(0.0, min(delay, remaining)))

    async def admin(self, address: str, op: int, spec: dict[str, Any] | None = None, *,
                    wait: float | None = None, timeout: float | None = None) -> None:
        """Send an ADMIN op (engine.messages.AdminOp) to one node: up to 3 attempts of `wait`
        seconds each, or of a third of `timeout`. Raises NotLeader (with the leader's address)
        for a leader-only op sent elsewhere, Rejected if refused (fault ops need
        allow_fault_injection), Timeout if there is no answer and OutcomeUnknown if the node
        could not tell (e.g. a leadership transfer not done in time: it may still complete)."""
        target = parse_address(address)
        payload = json.dumps(spec or {}).encode()
        attempt_wait = timeout / 3 if timeout else (wait or self.attempt_timeout)
        for _ in range(3):
            response = await self._exchange(target, op, self._next_request_number(), payload,
                                             attempt_wait, _MT.ADMIN)
            if response is None:
                continue
            if response.status == _STATUS.NOT_LEADER:
                hint = response.context.decode(errors="replace")
                raise errors.NotLeader(f"{address} is not the leader", leader_address=hint or None)
            if response.status == _STATUS.UNKNOWN:
                raise errors.OutcomeUnknown(response.context.decode(errors="replace"))
            if response.status != _STATUS.OK:
                raise errors.Rejected(response.context.decode(errors="replace"))
            return
        raise errors.Timeout(f"no answer to admin op {op} from {address}")

    async def transfer_leadership(self, to: int, *, timeout: float = 10.0) -> None:
        """Ask the current leader to hand leadership to node `to` (Raft thesis §3.10)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        candidates = [_format_address(host, port) for host, port in self.addresses]
        hint: str | None = None
        attempt = 0
        while loop.time() < deadline:
            address = hint or candidates[attempt % len(candidates)]
            attempt += 1
            hint = None
            try:
                await self.admin(address, AdminOp.TRANSFER_LEADER, {"to": to},
                                 wait=max(0.1, min(3.0, deadline - loop.time())))
                return
            except errors.NotLeader as exc:
                hint = exc.leader_address  # ask the node it names next
            except errors.Timeout:
                pass
            await asyncio.sleep(0.05)
        raise errors.Timeout(f"leadership did not move to node {to} within {timeout} s")

    # ------------------------------------------------------------------ membership (Raft §4)

    async def add_member(self, node_id: int, address: str, *, learner: bool = False,
                         witness: bool = False, timeout: float = 60.0) -> dict[str, Any]:
        """Ask the leader to add node `node_id` at `address` (engine.Node.add_member: as a
        learner, then promoted once caught up unless learner=True); returns the committed
        membership. Start that node first with NodeConfig(join=True) / `serve --join`."""
        parse_address(address)
        return await self._membership_op(AdminOp.ADD_MEMBER, {
            "id": node_id, "address": address, "learner": learner, "witness": witness,
        }, timeout)

    async def remove_member(self, node_id: int, *, timeout: float = 60.0) -> dict[str, Any]:
        """Ask the leader to remove node `node_id`; returns the committed membership."""
        return await self._membership_op(AdminOp.REMOVE_MEMBER, {"id": node_id}, timeout)

    async def promote(self, node_id: int, *, timeout: float = 60.0) -> dict[str, Any]:
        """Ask the leader to make learner `node_id` a voter once it is caught up."""
        return await self._membership_op(AdminOp.PROMOTE_MEMBER, {"id": node_id}, timeout)

    async def members(self, *, timeout: float | None = None) -> dict[str, Any]:
        """The membership as the leader sees it (else the newest any node reports), with
        "leader_id" and "index" (its CONFIG entry). Raises Timeout if no node answers."""
        statuses = []
        each = (timeout / len(self.addresses)) if timeout else None
        for host, port in self.addresses:
            try:
                statuses.append(await self.status(_format_address(host, port), timeout=each))
            except errors.EngineError:
                continue
        known = [s for s in statuses if isinstance(s.get("membership"), dict)]
        if not known:
            raise errors.Timeout("no node answered with a membership (is it protocol='raft'?)")
        best = max(known, key=lambda s: (s.get("role") == "leader", s.get("term", 0),
                                         s.get("membership_index", 0)))
        view = dict(best["membership"])
        view["leader_id"] = best.get("leader_id", 0)
        view["index"] = best.get("membership_index", 0)
        return view

    async def _membership_op(self, op: int, spec: dict[str, Any], timeout: float
                             ) -> dict[str, Any]:
        """Send a membership ADMIN op to the leader, following NOT_LEADER hints. The node
        answers when the change is committed; an attempt unanswered for a while is sent
        again (to the next node), which is safe: the node-side operations are idempotent
        outcomes ("node 4 is a voter"), not increments, and every attempt carries one
        request id that the cluster records through its log, so a retry (or a replay) of
        this operation is never applied again once it was."""
        spec["request_id"] = random.getrandbits(64) | 1
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        candidates = list(self.addresses)
        hint: tuple[str, int] | None = None
        attempt = 0
        unanswered = False   # an earlier attempt may be in a log and still commit
        while True:
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise errors.Timeout(f"membership change not confirmed within {timeout} s "
                                     "(it may still complete)")
            target = hint or candidates[attempt % len(candidates)]
            attempt += 1
            hint = None
            spec["timeout"] = remaining
            response = await self._exchange(
                target, op, self._next_request_number(), json.dumps(spec).encode(),
                min(remaining, max(5.0, 4 * self.attempt_timeout)), _MT.ADMIN)
            if response is None:
                unanswered = True
                continue  # lost, slow or down: ask again (the next node)
            if response.status == _STATUS.OK:
                return dict(json.loads(response.context))
            if response.status == _STATUS.NOT_LEADER:
                text = response.context.decode(errors="replace")
                hint = parse_address(text) if text else None
                if hint is None:
                    await asyncio.sleep(0.05)  # an election is probably running
                continue
            error = _membership_error(response)
            if unanswered and isinstance(error, errors.Rejected):
                # A refusal of this copy (e.g. "not a member" once the first removal applied)
                # says nothing about the unanswered one (engine.errors.unfinished).
                raise errors.unfinished(error, may_apply=True)
            raise error

    async def _exchange(self, target: tuple[str, int], op: int, seq: int, payload: bytes,
                        wait: float, kind: int = _MT.CLIENT_REQUEST, *,
                        read_mode: int = 0) -> Message | None:
        """Send one request; its answer, or None if none came within `wait` seconds."""
        future, timer = self._send_request(target, op, seq, payload, wait, kind, read_mode)
        try:
            response = await future
        finally:
            self._forget(seq, future, timer)
        if response is None:
            self._renew_epoch()   # as in _request
        return response

    def _forget(self, seq: int, future: asyncio.Future[Message | None],
                timer: asyncio.TimerHandle) -> None:
        timer.cancel()
        if self._waiting.get(seq) is future:
            del self._waiting[seq]

    def _send_request(self, target: tuple[str, int], op: int, seq: int, payload: bytes,
                      wait: float, kind: int, read_mode: int, group: int = 0
                      ) -> tuple[asyncio.Future[Message | None], asyncio.TimerHandle]:
        """_exchange's first half, for callers that await the future themselves (_request:
        one coroutine less per write); they must _forget(seq, future, timer) after."""
        if self._transport is None:
            raise errors.Stopped("client is not open (use `async with Client(...)`)")
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Message | None] = loop.create_future()
        self._waiting[seq] = future
        outbox = self._outbox.get(target)
        if outbox is None:
            outbox = self._outbox[target] = []
        outbox.append(Message(
            int(kind), src=self.client_id, seq=seq, status=int(op), context=payload,
            index=read_mode, commit=self._max_reply_bytes, group=group,
        ))
        if len(self._waiting) == 1:
            # Nothing else outstanding (one caller, request after request): send now, not at
            # the end of the loop turn. Requests made together in one turn still share
            # datagrams: this first one leaves alone, the rest at the end of the turn.
            self._flush()
        elif self._flush_handle is None:
            self._flush_handle = loop.call_soon(self._flush)
        # A timer handle instead of asyncio.wait_for: no wrapper future per request.
        return future, loop.call_later(wait, _expire, future)

    def _flush(self) -> None:
        """Send what this loop turn's requests queued: one datagram per node for as many
        requests as fit (the node answers them together too), not one per request."""
        self._flush_handle = None
        outbox, self._outbox = self._outbox, {}
        transport = self._transport
        if transport is None:
            return
        for target, messages in outbox.items():
            # One request (one caller, request after request) needs no packing.
            for batch in (messages,) if len(messages) == 1 else self._batches(messages):
                self._counter += 1
                frame = self._codec.encode(self.client_id, self._epoch, self._counter, batch,
                                           self._node_ids.get(target, 0))
                try:
                    transport.sendto(frame, target)
                except OSError:   # e.g. no route: the request times out and is retried
                    self.counters["socket_errors"] += 1
                    continue
                self.counters["datagrams_sent"] += 1

    def _renew_epoch(self) -> None:
        """A fresh epoch (and so a fresh subkey and counter: nonces never repeat)."""
        self._epoch = new_boot_epoch()
        self._counter = 0

    def _batches(self, messages: list[Message]) -> list[list[Message]]:
        budget = self._frame_budget
        limit = self._max_messages
        batches: list[list[Message]] = [[]]
        used = 0
        for message in messages:
            size = codec.encoded_size(message)
            if batches[-1] and (used + size > budget or len(batches[-1]) >= limit):
                batches.append([])
                used = 0
            batches[-1].append(message)
            used += size
        return batches

    def _on_datagram(self, data: bytes, addr: Any) -> None:
        try:
            frame = self._codec.decode(data)
        except errors.DecodeError:
            self.counters["dropped"] += 1
            return
        if frame.messages:
            self._node_ids[addr[:2]] = frame.sender_id
        for message in frame.messages:
            if message.type not in _RESPONSE_TYPES or message.dst != self.client_id:
                self.counters["dropped"] += 1
                continue
            future = self._waiting.get(message.seq)
            if future is not None and not future.done():
                future.set_result(message)


def _format_address(host: str, port: int) -> str:
    """"host:port", with an IPv6 literal in brackets ("[::1]:7001")."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _read_mode(mode: str) -> int:
    """The index of a read mode in engine.aio.node.READ_MODES (Message.index on the wire)."""
    from engine.aio.node_reads import READ_MODES

    if mode not in READ_MODES:
        raise errors.ConfigError(f"read mode must be one of {READ_MODES}, got {mode!r}")
    return READ_MODES.index(mode)


def _encoded(timestamp: Timestamp | None) -> bytes | None:
    """The 12-byte encoding of an HLC timestamp argument (None stays None)."""
    if timestamp is None:
        return None
    if not isinstance(timestamp, Timestamp):
        raise errors.ConfigError(f"a timestamp is an engine.txn.hlc.Timestamp, got "
                                 f"{type(timestamp).__name__}")
    return timestamp.encode()


def _write_result(result: commands.KVResult) -> commands.WriteResult:
    """A PUT's or DELETE's KVResult as the caller sees it. The write applied: a result
    without a revision (a store that does not report one) is revision 0, not an error."""
    return commands.WriteResult(result.revision or 0, result.previous, result.existed,
                                result.retained)


_MEMBERSHIP_ERRORS: dict[str, type[errors.EngineError]] = {
    "MembershipError": errors.MembershipError, "ConfChangeInProgress": errors.ConfChangeInProgress,
    "Rejected": errors.Rejected, "ConfigError": errors.ConfigError, "Timeout": errors.Timeout,
    "Stopped": errors.Stopped, "NotLeader": errors.NotLeader,
}


def _membership_error(response: Message) -> errors.EngineError:
    """The typed error a node reported for a membership op (engine.aio.node._error_payload):
    REJECTED is a definite no, UNKNOWN an unknown outcome (Timeout)."""
    try:
        body = json.loads(response.context)
        name, message = str(body["error"]), str(body["message"])
    except (ValueError, TypeError, KeyError):
        name, message = "", response.context.decode(errors="replace")
    if response.status == _STATUS.UNKNOWN:
        return errors.Timeout(message or "outcome unknown")
    return _MEMBERSHIP_ERRORS.get(name, errors.Rejected)(message)
