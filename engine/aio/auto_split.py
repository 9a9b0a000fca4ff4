"""Automatic splits (docs/sharding.md, "Automatic splits"): a ShardServer's periodic check
of the ranges it leads against engine.shard.policy, and the split it then runs itself.

Every `period_s` seconds (ShardServer(auto_split_s=), `serve --auto-split-s`) the
process looks at each range whose group it leads:

  * load: the keyed writes the range applied since the last check, per second, against
    Limits.range_split_ops_per_s; the split key is the median of the keys sampled from
    those writes (RangeStateMachine.sampler, engine.shard.policy.KeySampler);
  * size: the bytes of the range's rows against Limits.range_split_bytes. Counting them is
    a walk over the range, so it runs only once the bytes written since the last count
    could have taken the range past the limit (an upper bound: an overwrite counts in
    full); the split key is then the middle row of the range.

A split it decides runs as engine.aio.shard_admin.split does, from inside the process: the
meta group's SPLIT (proposed through the local meta replica, forwarded to the meta leader;
the epoch check refuses it if the range changed since it was read), then RANGE_SPLIT
through the range's own log. A check that finds the map ahead of its range (a split whose
second step did not happen, e.g. the leader changed in between) finishes it. Errors are
logged and the next check tries again: both steps are safe to repeat.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

from engine import errors
from engine.shard import meta as shard_meta
from engine.shard.policy import KeySampler, SplitDecision, SplitReason, decide_split, split_key
from engine.shard.replica import (
    META_GROUP_ID,
    RangeStateMachine,
    encode_split_command,
    meta_envelope,
)

if TYPE_CHECKING:
    from engine.aio.node import Node
    from engine.aio.shard_server import ShardServer

logger = logging.getLogger("engine.shard")

DEFAULT_PERIOD_S = 1.0


class AutoSplitter:
    """The periodic check of one ShardServer (module docstring)."""

    def __init__(self, server: ShardServer, *, period_s: float = DEFAULT_PERIOD_S) -> None:
        self.server = server
        self.period_s = period_s
        self.limits = server.config.limits
        self._handle: asyncio.TimerHandle | None = None
        self._running: asyncio.Task[None] | None = None
        self._last: dict[int, tuple[float, int]] = {}   # group -> (time, writes applied)
        self.splits = 0

    def watch(self, machine: RangeStateMachine, seed: int) -> None:
        """Sample the keys a range applies (for a load split's key)."""
        machine.sampler = KeySampler(seed=seed, limits=self.limits)

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._handle = loop.call_later(self.period_s, self._due)

    def stop(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        if self._running is not None:
            self._running.cancel()

    def _due(self) -> None:
        if not self.server.running:
            return
        loop = asyncio.get_running_loop()
        if self._running is None or self._running.done():
            self._running = loop.create_task(self.check())
        self._handle = loop.call_later(self.period_s, self._due)

    async def check(self) -> None:
        """One pass over the ranges this process leads."""
        loop = asyncio.get_running_loop()
        for group, node in list(self.server.nodes.items()):
            if group == META_GROUP_ID or not node.running or node.core.role != "leader":
                continue
            machine = node.state_machine
            if not isinstance(machine, RangeStateMachine):
                continue
            now = loop.time()
            before_at, before_writes = self._last.get(group, (now, machine.applied_writes))
            self._last[group] = (now, machine.applied_writes)
            elapsed = now - before_at
            ops_per_s = (machine.applied_writes - before_writes) / elapsed if elapsed else 0.0
            decision = self._decide(machine, ops_per_s)
            try:
                await self._finish_or_split(node, machine, decision)
            except (errors.EngineError, OSError) as exc:
                logger.warning("automatic split of range %d failed (tried again): %r",
                               machine.descriptor.range_id, exc)

    def _decide(self, machine: RangeStateMachine, ops_per_s: float) -> SplitDecision | None:
        d = machine.descriptor
        if machine.written_bytes > self.limits.range_split_bytes:
            # The bytes written could have passed the limit: count the range's rows.
            rows = machine.rows()
            machine.written_bytes = size = sum(len(k) + len(v) for k, v in rows)
            if size > self.limits.range_split_bytes and len(rows) > 1:
                key = split_key([rows[len(rows) // 2][0]], d.start, d.end)
                if key is not None:
                    return SplitDecision(SplitReason.SIZE, key)
        samples = machine.sampler.sample() if machine.sampler is not None else []
        decision = decide_split(d, size_bytes=0, ops_per_s=ops_per_s, samples=samples,
                                limits=self.limits)
        if machine.sampler is not None:
            machine.sampler.reset()
        return decision

    async def _finish_or_split(self, node: Node, machine: RangeStateMachine,
                               decision: SplitDecision | None) -> None:
        meta = self.server.meta
        d = machine.descriptor
        found = shard_meta.decode_result(await meta.read(meta_envelope(
            shard_meta.encode_query_lookup(d.start)))).raise_for_status()
        current = found.descriptors[0]
        if current.range_id != d.range_id:
            return
        if current.epoch > d.epoch and current.end != d.end and current.end is not None:
            # The map split this range and the range has not applied it: finish it.
            neighbour = shard_meta.decode_result(await meta.read(meta_envelope(
                shard_meta.encode_query_lookup(current.end)))).raise_for_status()
            await node.propose(encode_split_command(found.map_version, d.epoch, current,
                                                    neighbour.descriptors[0]))
            return
        if decision is None or current.epoch != d.epoch:
            return
        result = shard_meta.decode_result(await meta.propose(meta_envelope(
            shard_meta.encode_split(d.range_id, d.epoch, decision.key,
                                    found.max_range_id + 1, found.max_group_id + 1))))
        if not result.ok:
            return   # the range changed meanwhile: the next check decides again
        left, right = result.descriptors
        await node.propose(encode_split_command(result.map_version, d.epoch, left, right))
        self.splits += 1
        logger.info("range %d split at %r (%s): range %d on group %d", d.range_id,
                    decision.key, decision.reason.value, right.range_id, right.group_id)


__all__ = ["AutoSplitter"]
