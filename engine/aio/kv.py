"""engine.KV: a typed key-value API over an in-process engine.Node running a KVStore.

    kv = engine.KV(node)
    await kv.put(b"k", b"v")             # WriteResult(revision, prev=None unless prev=True)
    await kv.get(b"k")                   # b"v" (linearizable: ReadIndex, no log write)
    await kv.cas(b"k", b"v", b"w")       # True: swapped
    (await kv.delete(b"k")).existed      # True: it existed
    await kv.scan(b"a", b"b")            # [KeyValue(key, value), ...] of [a, b), in order

The commands are encoded here (engine.kv.commands), replicated with Node.propose and read
with Node.read, so errors are Node's: engine.Timeout (unknown outcome), engine.Rejected and
its subclasses (definitely not applied), engine.Stopped. Proposals from the node itself are
never re-sent (Node.propose), so they carry no client session.
"""

from __future__ import annotations

from typing import Any

from engine import errors
from engine.kv import KVStore, commands
from engine.txn.hlc import Timestamp


class KV:
    """The KV store of `node` (whose state machine must be an engine.KVStore).

    `read_mode` is the default mode of get (engine.Node.read: "linearizable", "lease" or
    "stale"); every method takes `timeout=` in seconds (default NodeConfig.request_timeout_s).
    """

    def __init__(self, node: Any, *, read_mode: str = "linearizable") -> None:
        if not isinstance(node.state_machine, KVStore):
            raise errors.ConfigError(
                f"engine.KV needs a node running engine.KVStore, not "
                f"{type(node.state_machine).__name__} (use node.propose / node.read)")
        self.node = node
        self.read_mode = read_mode

    async def put(self, key: bytes, value: bytes, *, prev: bool = False,
                  timestamp: Timestamp | None = None,
                  timeout: float | None = None) -> commands.WriteResult:
        """Set key to value. The result's `prev` is the value the key held, only with
        prev=True. `timestamp`: the write's HLC timestamp (docs/transactions.md, "MVCC")."""
        return _write_result(await self._write(commands.encode_put(
            key, value, previous=prev, timestamp=None if timestamp is None
            else timestamp.encode()), timeout))

    async def get(self, key: bytes, *, at: Timestamp | None = None, mode: str | None = None,
                  timeout: float | None = None) -> bytes | None:
        """The value of key (None: absent); with `at`, as of that HLC timestamp
        (engine.HistoryCompacted below the kept history)."""
        return (await self._get(key, at, False, mode, timeout)).value

    async def get_entry(self, key: bytes, *, at: Timestamp | None = None,
                        mode: str | None = None, timeout: float | None = None
                        ) -> commands.Entry:
        """(value, revision) of key: the revision of the write that set the value, 0 if
        absent (see cas's expected_revision)."""
        result = await self._get(key, at, True, mode, timeout)
        return commands.Entry(result.value, result.revision or 0)

    async def _get(self, key: bytes, at: Timestamp | None, revision: bool, mode: str | None,
                   timeout: float | None) -> commands.KVResult:
        query = commands.encode_query(key, at=None if at is None else at.encode(),
                                      revision=revision)
        answer = await self.node.read(query, mode=mode or self.read_mode, timeout=timeout)
        return _checked(commands.check_read(commands.decode_result(answer)))

    async def delete(self, key: bytes, *, prev: bool = False,
                     timeout: float | None = None) -> commands.WriteResult:
        """Remove key. The result's `existed` says whether it had a value, `prev` is that
        value with prev=True."""
        return _write_result(await self._write(
            commands.encode_delete(key, previous=prev), timeout))

    async def cas(self, key: bytes, expected: bytes | None | Any = commands.UNSET,
                  new: bytes | None = None, *, expected_revision: int | None = None,
                  value: bytes | None = None, timeout: float | None = None) -> bool:
        """Set key to `new` if its value is `expected` (None: absent), or to `value` if its
        revision is `expected_revision` (0: absent); True if it did."""
        command = commands.encode_cas_call(key, expected, new, expected_revision, value)
        result = await self._write(command, timeout, allow=commands.Status.CAS_MISMATCH)
        return result.ok

    async def scan(self, start: bytes, end: bytes | None = None, *, limit: int | None = None,
                   mode: str | None = None, timeout: float | None = None
                   ) -> list[commands.KeyValue]:
        """The keys of [start, end) in order with their values (end None or b"": to the end
        of the key space), at most `limit`; paged like engine.Client.scan (each page one
        read in `mode`, not one atomic read of the range)."""
        commands.check_scan_range(start, end, limit)
        found: list[commands.KeyValue] = []
        cursor: bytes | None = start
        page_bytes = self.node.config.limits.max_datagram_bytes
        while cursor is not None and (limit is None or len(found) < limit):
            query = commands.encode_scan(
                cursor, end, limit=commands.U32_MAX if limit is None else limit - len(found),
                max_bytes=page_bytes)
            answer = await self.node.read(query, mode=mode or self.read_mode, timeout=timeout)
            page = commands.decode_scan_result(_checked(commands.decode_result(answer)))
            found += page.items
            cursor = page.resume_key
        return found

    async def scan_prefix(self, prefix: bytes, *, limit: int | None = None,
                          mode: str | None = None, timeout: float | None = None
                          ) -> list[commands.KeyValue]:
        """The keys that start with `prefix`, in order."""
        return await self.scan(prefix, commands.prefix_end(prefix), limit=limit, mode=mode,
                               timeout=timeout)

    async def _write(self, command: bytes, timeout: float | None,
                     allow: commands.Status | None = None) -> commands.KVResult:
        result = commands.decode_result(await self.node.propose(command, timeout=timeout))
        if not result.ok and result.status != allow:
            # The command entered the log and applied as a refusal: never a Rejected, which
            # means "never entered a log" (engine.errors.unfinished).
            raise errors.StateMachineError(result.error or str(result.status))
        return result


def _write_result(result: commands.KVResult) -> commands.WriteResult:
    return commands.WriteResult(result.revision or 0, result.previous, result.existed,
                                result.retained)


def _checked(result: commands.KVResult) -> commands.KVResult:
    if not result.ok:
        raise errors.Rejected(result.error or str(result.status))
    return result
