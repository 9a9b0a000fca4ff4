"""ShardServer: one process of a sharded key-value cluster (docs/sharding.md).

One engine.aio.node_host.NodeHost (one socket, one WAL, one timer) hosting

  * the meta group, group id 0 (engine.shard.replica.META_GROUP_ID; range groups start at
    1), on every process of the cluster, running engine.shard.replica.MetaReplica: the
    shard map;
  * every range whose replicas include this node, each its own group running
    engine.shard.replica.RangeStateMachine (a KVStore behind the ownership check).

Every replica starts from the same initial map (one range over the whole key space, or a
pre-split one), built into the meta group's and the ranges' initial state rather than their
logs: a restart builds the same initial state from the same configuration and replays the
WAL on top of it.

A split (engine.aio.shard_admin.split) is applied by the meta group and then through the
range's own log; each replica of the range calls back here (RangeStateMachine.on_split) at
the split's index, and this process starts the right-hand group locally, seeded with the
frozen right-hand keys. A replica that restarts, or installs a snapshot of the parent, calls
back again for every child it knows; a child already hosted is left alone.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from typing import Any

from engine.aio.node import Node
from engine.aio.node_host import NodeHost
from engine.config import NodeConfig
from engine.errors import ConfigError
from engine.shard.map import RangeDescriptor, ShardMap, voters
from engine.shard.replica import META_GROUP_ID, MetaReplica, RangeStateMachine
from engine.txn.participant import TxnKVStore

logger = logging.getLogger("engine.shard")


def presplit_keys(shards: int, prefix: bytes = b"key") -> list[bytes]:
    """The split keys of `LocalCluster(shards=N)` and `serve --shards N`: N - 1 keys
    `prefix` + a zero-padded decimal spread evenly over 0 .. 10**width (width the fewest
    digits with 10**width >= N), so keys like b"key%d" % i spread over the ranges. Keys
    below b"key0" fall in the first range, keys above b"key9..." in the last."""
    if shards < 1:
        raise ValueError(f"shards must be at least 1, got {shards}")
    width = max(1, len(str(shards - 1)))
    room = 10 ** width
    return sorted({prefix + b"%0*d" % (width, i * room // shards) for i in range(1, shards)})


def initial_map(node_ids: Sequence[int], shards: int = 1,
                split_keys: Sequence[bytes] | None = None) -> ShardMap:
    """The map a cluster starts from: ranges 1.. on groups 1.., every node a voter."""
    keys = list(split_keys) if split_keys is not None else presplit_keys(shards)
    return ShardMap.presplit(keys, voters(*sorted(node_ids)))


class ShardServer:
    """One process of a sharded cluster: the meta group and this node's ranges on one
    NodeHost (module docstring). `nodes` maps group id -> the hosted engine.Node."""

    def __init__(self, config: NodeConfig, shard_map: ShardMap, *,
                 storage: Any = None, record: bool = False,
                 auto_split_s: float | None = None) -> None:
        """record: keep every map version the meta replica held and every keyed write each
        range applied (tests: engine.testing.shard_invariants). auto_split_s: check the
        ranges this process leads against the split policy that often (seconds;
        engine.aio.auto_split), None: split by command only."""
        from engine.aio.auto_split import AutoSplitter

        self.config = config
        self.auto_split = (None if auto_split_s is None
                           else AutoSplitter(self, period_s=auto_split_s))
        self.record = record
        self.initial_map = shard_map
        self.host = NodeHost(config, storage=storage)
        self._starting: dict[int, asyncio.Task[Node]] = {}
        self.splits_hosted = 0

    @property
    def nodes(self) -> dict[int, Node]:
        return self.host.nodes

    @property
    def meta(self) -> Node:
        return self.host.nodes[META_GROUP_ID]

    @property
    def running(self) -> bool:
        return self.host.running

    async def __aenter__(self) -> ShardServer:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    async def start(self) -> None:
        await self.host.start()
        meta = MetaReplica(self.initial_map)
        if self.record:
            meta.record_maps()
        await self.host.add_group(META_GROUP_ID, meta)
        for descriptor in self.initial_map:
            if descriptor.replica(self.config.node_id) is not None:
                await self._host_range(descriptor, RangeStateMachine(
                    descriptor, map_version=self.initial_map.version,
                    limits=self.config.limits, on_split=self._on_split,
                    participant=TxnKVStore))
        if self.auto_split is not None:
            self.auto_split.start()

    async def _host_range(self, descriptor: RangeDescriptor,
                          machine: RangeStateMachine) -> Node:
        if self.record:
            machine.apply_records = []
        if self.auto_split is not None:
            self.auto_split.watch(machine, seed=descriptor.range_id)
        members = {r.node_id: self.config.members[r.node_id] for r in descriptor.replicas
                   if r.node_id in self.config.members}
        return await self.host.add_group(descriptor.group_id, machine, members=members)

    def _on_split(self, child: RangeDescriptor, map_version: int,
                  rows: list[tuple[bytes, bytes]], base: int, txn_seed: bytes = b"") -> None:
        """A range this node replicates split (or is recovering a split): host the child.
        The new group elects its first leader like any group; a fresh replica waits one
        election timeout before it votes (engine.raft.core, lease reads §6.4.1), so the
        right-hand keys are unavailable for about that long after a split."""
        group = child.group_id
        if (group in self.host.nodes or group in self._starting
                or child.replica(self.config.node_id) is None or not self.host.running):
            return
        machine = RangeStateMachine.seeded(child, rows, map_version=map_version, base=base,
                                           limits=self.config.limits,
                                           on_split=self._on_split, txn_seed=txn_seed,
                                           participant=TxnKVStore)
        task = asyncio.get_running_loop().create_task(self._host_range(child, machine))
        self._starting[group] = task

        def started(done: asyncio.Task[Node]) -> None:
            self._starting.pop(group, None)
            if not done.cancelled() and done.exception() is not None:
                logger.error("node %d could not host range %d (group %d): %r",
                             self.config.node_id, child.range_id, group, done.exception())
                return
            self.splits_hosted += 1

        task.add_done_callback(started)

    def range_machine(self, group: int) -> RangeStateMachine:
        machine = self.host.nodes[group].state_machine
        assert isinstance(machine, RangeStateMachine)
        return machine

    async def stop(self) -> None:
        if self.auto_split is not None:
            self.auto_split.stop()
        for task in list(self._starting.values()):
            await asyncio.gather(task, return_exceptions=True)
        await self.host.stop()

    def crash(self) -> None:
        if self.auto_split is not None:
            self.auto_split.stop()
        for task in self._starting.values():
            task.cancel()
        self.host.crash()


__all__ = ["ShardServer", "initial_map", "presplit_keys"]


async def serve_shards(config: NodeConfig, shards: int, *,
                       auto_split_s: float | None = None) -> None:
    """`python -m engine serve --shards N`: this node of a sharded cluster until SIGTERM or
    SIGINT. Every node, and every restart, must be given the same members and the same N:
    they are the initial map every replica builds (module docstring)."""
    import signal

    from engine.aio.server import FATAL_POLL_S
    from engine.errors import StorageError

    if config.protocol != "raft":
        raise ConfigError("a sharded cluster runs Raft (docs/sharding.md)")
    server = ShardServer(config, initial_map(list(config.members), shards),
                         auto_split_s=auto_split_s)
    await server.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    logger.info("node %d serving the meta group and %d ranges on %s", config.node_id,
                len(server.nodes) - 1, config.members[config.node_id])
    try:
        while not stop.is_set() and server.host.fatal is None:
            try:
                await asyncio.wait_for(stop.wait(), FATAL_POLL_S)
            except TimeoutError:
                pass
    finally:
        fatal = server.host.fatal
        if fatal is None:
            await server.stop()
    if isinstance(fatal, StorageError):
        raise StorageError(f"node {config.node_id} stopped: {fatal}") from None
    if fatal is not None:
        raise fatal
