"""Operator actions on a sharded cluster, driven through an engine.Client (docs/sharding.md):
`shard_map` (what `python -m engine shards list` prints) and `split`.

A split of the range owning `key`, at `key`, in two steps, each through a log:

  1. the meta group applies SPLIT(range, epoch, key, new range id, new group id): the epoch
     check makes it the one change of that range at that epoch (two racing splits: one
     wins), and the ids are allocated there (above every id ever allocated, so two splits of
     different ranges never share a group id). From here the map names the new group;
  2. the range's own group applies RANGE_SPLIT(map version, parent epoch, left, right)
     (engine.shard.replica): from that log index the range owns [start, key), and each of
     its replicas starts the right-hand group seeded with the keys of [key, end) as of that
     index. A write the range applied before it moves with the data; one after it is
     refused (WRONG_SHARD) and the client sends it to the new range.

Between the two steps a client that read the new map finds the new group not hosted yet and
retries; one with the old map still writes to the range, before its split (step 2), which is
correct. Both steps are safe to repeat: the meta step, if the first copy applied, is refused
with EPOCH_MISMATCH and the map already shows the split; the range step answers OK again.
A coordinator that stops between them leaves the map ahead of the range: running the same
split again finishes it (the key is then a range start: `split` sends step 2 to the range
ending at it).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

from engine import errors
from engine.shard import meta as shard_meta
from engine.shard import replica as shard_replica
from engine.shard.map import RangeDescriptor
from engine.wire import ClientOp


@dataclass(frozen=True, slots=True)
class SplitOutcome:
    left: RangeDescriptor
    right: RangeDescriptor
    map_version: int
    finished_only: bool = False   # the meta step had applied before (a repeated split)


async def _meta_query(client: Any, query: bytes, timeout: float | None) -> shard_meta.MetaResult:
    raw = await client.query(shard_replica.meta_envelope(query), timeout=timeout)
    if shard_replica.is_wrong_shard(raw):
        raise errors.Rejected("this cluster has no meta group (it is not sharded)")
    try:
        result = shard_meta.decode_result(raw)
    except errors.DecodeError as exc:
        raise errors.Rejected(f"this cluster has no meta group: {exc}") from None
    return result.raise_for_status()


async def shard_map(client: Any, *, timeout: float | None = None) -> list[RangeDescriptor]:
    """Every range in key order, read linearizably from the meta group."""
    return list(await client.shard_map(timeout=timeout))


async def split(client: Any, key: bytes, *, timeout: float = 30.0) -> SplitOutcome:
    """Split the range owning `key` at `key` (module docstring). InvalidShardChange if
    `key` is the start of the whole key space; EpochMismatch if the range changed under
    this split (read the map again and decide again)."""
    if not isinstance(key, bytes) or not key:
        raise errors.ConfigError("a split key must be non-empty bytes")
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout

    def left_s() -> float:
        return max(deadline - loop.time(), 0.001)

    found = await _meta_query(client, shard_meta.encode_query_lookup(key), left_s())
    owner = found.descriptors[0]
    if owner.start == key:
        # Split at this key in the map already: finish the range step if it is missing.
        ranges = await _meta_query(client, shard_meta.encode_query_map(), left_s())
        left = next((r for r in ranges.descriptors if r.end == key), None)
        if left is None:
            raise errors.InvalidShardChange(f"{key!r} starts the key space: nothing to split")
        await _range_split(client, ranges.map_version, left, owner, left_s())
        return SplitOutcome(left, owner, ranges.map_version, finished_only=True)
    command = shard_meta.encode_split(owner.range_id, owner.epoch, key,
                                      found.max_range_id + 1, found.max_group_id + 1)
    raw = await client.call(shard_replica.meta_envelope(command), timeout=left_s(),
                            idempotent=True)
    result = shard_meta.decode_result(raw)
    if result.status == shard_meta.MetaStatus.EPOCH_MISMATCH:
        # Our own earlier copy may have applied (a retry): then the map shows our split.
        again = await _meta_query(client, shard_meta.encode_query_lookup(key), left_s())
        mine = again.descriptors[0]
        if mine.start != key or mine.range_id != found.max_range_id + 1:
            result.raise_for_status()
        ranges = await _meta_query(client, shard_meta.encode_query_map(), left_s())
        left = next(r for r in ranges.descriptors if r.end == key)
        await _range_split(client, ranges.map_version, left, mine, left_s())
        return SplitOutcome(left, mine, ranges.map_version)
    result.raise_for_status()
    left, right = result.descriptors
    await _range_split(client, result.map_version, left, right, left_s())
    return SplitOutcome(left, right, result.map_version)


async def _range_split(client: Any, map_version: int, left: RangeDescriptor,
                       right: RangeDescriptor, timeout: float) -> None:
    """Step 2 through the range's own log (safe to repeat)."""
    command = shard_replica.encode_split_command(map_version, left.epoch - 1, left, right)
    raw = await client._request(ClientOp.WRITE, command, 0, timeout, raw=True,
                                group=left.group_id)
    status, current = shard_replica.decode_split_result(bytes(raw))
    if status != shard_replica.SPLIT_OK:
        epoch = 0 if current is None else current.epoch
        raise errors.EpochMismatch(left.range_id, expected_epoch=left.epoch - 1,
                                   current_epoch=epoch)


__all__ = ["SplitOutcome", "shard_map", "split"]
