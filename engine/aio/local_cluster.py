"""engine.LocalCluster: n nodes in one process over real loopback UDP, for tests and demos.

    async with engine.LocalCluster(n=3) as cluster:
        leader = await cluster.wait_leader()
        await leader.propose(engine.kv.encode_put(b"k", b"v"))
        await cluster.stop(2); await cluster.restart(2)
        await cluster.partition({1}, {2, 3}); await cluster.heal()

Membership (Raft): `await cluster.add_node(witness=False)` starts a node that joins the
running cluster (NodeConfig(join=True)) and asks the leader to add it (learner, catch-up,
promotion); `await cluster.remove_node(node_id)` asks the leader to remove one (it goes
quiet, status()["removed"]). Each node keeps the NodeConfig it first started with, so a
restart sees the same bootstrap configuration (the log and snapshots hold the changes).

Sharding (docs/sharding.md): `LocalCluster(n=3, shards=8)` runs each node as an
engine.aio.shard_server.ShardServer (one NodeHost: the meta group, group 0, and the ranges,
groups 1..8, pre-split at engine.aio.shard_server.presplit_keys(8), or at `split_keys=`);
`cluster.nodes` are then the meta group's nodes and `cluster.servers` the processes;
`cluster.client()` routes each key to its range. shards=1 (the default) is one group per
node, as without sharding.

`stop(node_id)` is a crash: the node vanishes mid-flight and a restart recovers only what it
had persisted (its WAL with data_dir set; its in-memory storage otherwise — kept by the cluster
so an in-memory node restarts like one with a disk, which Raft requires for safety).
"""

from __future__ import annotations

import asyncio
import os
import secrets
import socket
from collections.abc import Callable, Iterable
from typing import Any

from engine import errors
from engine.aio.client import Client
from engine.aio.memory_storage import MemoryStorage
from engine.aio.node import Node
from engine.config import NodeConfig


def free_udp_ports(count: int, host: str = "127.0.0.1") -> list[int]:
    """Ports the kernel hands out now (bound together so they are distinct)."""
    sockets = []
    try:
        for _ in range(count):
            family = socket.AF_INET6 if ":" in host else socket.AF_INET
            sock = socket.socket(family, socket.SOCK_DGRAM)
            sock.bind((host, 0))
            sockets.append(sock)
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


class LocalCluster:
    """n nodes of one cluster in this process, on free loopback UDP ports (see the module
    docstring). `async with LocalCluster(n=3) as cluster:` starts them and stops them after.

    protocol: "raft" or "paxos". data_dir: each node's WAL in data_dir/n<id> (None: in
    memory, kept across stop/restart). state_machine: a factory called once per node
    (default engine.KVStore). cluster_key: random when omitted. node_options: further
    NodeConfig fields for every node (timing=, limits=, fsync=, ...).
    """

    def __init__(
        self, n: int = 3, protocol: str = "raft", data_dir: str | os.PathLike[str] | None = None,
        state_machine: Callable[[], Any] | None = None, *, cluster_key: bytes | None = None,
        host: str = "127.0.0.1", shards: int = 1,
        split_keys: Iterable[bytes] | None = None, auto_split_s: float | None = None,
        **node_options: Any,
    ) -> None:
        if n < 1:
            raise errors.ConfigError(f"a cluster needs at least one node, got n={n}")
        if state_machine is None:
            from engine.kv import KVStore

            state_machine = KVStore
        if shards < 1:
            raise errors.ConfigError(f"shards must be at least 1, got {shards}")
        if (shards > 1 or split_keys is not None) and protocol != "raft":
            raise errors.ConfigError("a sharded cluster runs Raft (docs/sharding.md)")
        self.n = n
        self.shards = shards
        self.split_keys = None if split_keys is None else sorted(split_keys)
        self.auto_split_s = auto_split_s
        self.servers: dict[int, Any] = {}
        # Tests: the servers keep every map version and every keyed write applied
        # (engine.aio.shard_server.ShardServer, record=).
        self.record_shards = False
        self.protocol = protocol
        self.data_dir = None if data_dir is None else os.fspath(data_dir)
        self.state_machine_factory = state_machine
        self.cluster_key = cluster_key or secrets.token_bytes(32)
        ports = free_udp_ports(n, host)
        bracketed = f"[{host}]" if ":" in host else host   # an IPv6 literal
        self.members = {node_id: f"{bracketed}:{port}" for node_id, port in enumerate(ports, 1)}
        self._node_options = node_options
        self._storages: dict[int, MemoryStorage] = {}
        # The NodeConfig each node first started with (its bootstrap configuration must not
        # change across restarts, Raft thesis §4.1).
        self._configs: dict[int, NodeConfig] = {}
        self.nodes: dict[int, Node] = {}
        self._groups: list[set[int]] | None = None

    def client(self, **options: Any) -> Client:
        """An engine.Client for this cluster: its members' addresses and key, and payload
        encryption when the nodes use it (`async with cluster.client() as c: ...`); options
        are Client's keywords (timeout=, attempt_timeout=, ...)."""
        options.setdefault("encrypt_payloads",
                           bool(self._node_options.get("encrypt_payloads", False)))
        return Client(list(self.members.values()), cluster_key=self.cluster_key, **options)

    def config(self, node_id: int) -> NodeConfig:
        """The NodeConfig node `node_id` starts (or started) with."""
        known = self._configs.get(node_id)
        if known is not None:
            return known
        data_dir = None if self.data_dir is None else os.path.join(self.data_dir, f"n{node_id}")
        return NodeConfig(
            node_id=node_id, members=dict(self.members), protocol=self.protocol,
            data_dir=data_dir, cluster_key=self.cluster_key, **self._node_options,
        )

    async def start(self) -> None:
        """Start every member (`async with` does this)."""
        for node_id in self.members:
            await self._start_node(node_id)

    async def _start_node(self, node_id: int) -> Node:
        storage = None
        if self.data_dir is None:
            storage = self._storages.setdefault(node_id, MemoryStorage())
        config = self._configs.setdefault(node_id, self.config(node_id))
        if self.sharded:
            from engine.aio.shard_server import ShardServer, initial_map

            server = ShardServer(config, initial_map(
                list(self.members), self.shards, self.split_keys), storage=storage,
                record=self.record_shards, auto_split_s=self.auto_split_s)
            await server.start()
            self.servers[node_id] = server
            node = server.meta
        else:
            node = Node(config, self.state_machine_factory(), storage=storage)
            await node.start()
        self.nodes[node_id] = node
        if self._groups is not None:
            self._apply_partition_to(node_id)
        return node

    @property
    def sharded(self) -> bool:
        return self.shards > 1 or self.split_keys is not None or self.auto_split_s is not None

    async def close(self) -> None:
        """Stop every running node (leaving `async with` does this)."""
        for server in list(self.servers.values()):
            if server.running:
                await server.stop()
        for node in list(self.nodes.values()):
            if node.running:
                await node.stop()

    async def __aenter__(self) -> LocalCluster:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    # ------------------------------------------------------------------ membership

    async def start_joining(self, node_id: int | None = None, *, witness: bool = False) -> Node:
        """Start a new node as a learner of this cluster (NodeConfig(join=True)): it gets no
        vote until the leader adds and promotes it (add_node does both)."""
        if self.sharded:
            # A node joining a sharded cluster would receive ranges by moves (not built,
            # docs/sharding.md).
            raise errors.ConfigError("a sharded LocalCluster cannot add nodes")
        if node_id is None:
            node_id = max(self.members) + 1
        if node_id in self.members:
            raise errors.ConfigError(f"node {node_id} is already in this cluster")
        host = self.members[min(self.members)].rpartition(":")[0]
        self.members[node_id] = f"{host}:{free_udp_ports(1, host)[0]}"
        data_dir = None if self.data_dir is None else os.path.join(self.data_dir, f"n{node_id}")
        self._configs[node_id] = NodeConfig(
            node_id=node_id, members=dict(self.members), protocol=self.protocol,
            data_dir=data_dir, cluster_key=self.cluster_key, join=True, witness=witness,
            **self._node_options,
        )
        return await self._start_node(node_id)

    async def add_node(self, node_id: int | None = None, *, witness: bool = False,
                       learner: bool = False, timeout: float = 30.0) -> Node:
        """start_joining, then the leader's Node.add_member (retried on NotLeader)."""
        node = await self.start_joining(node_id, witness=witness)
        await self._on_leader(timeout, lambda leader: leader.add_member(
            node.node_id, self.members[node.node_id], learner=learner, witness=witness,
            timeout=timeout))
        return node

    async def remove_node(self, node_id: int, *, timeout: float = 30.0) -> None:
        """The leader's Node.remove_member(node_id) (retried on NotLeader); the node is no
        longer counted in `members` (it stays running, quiet, until close())."""
        self._node(node_id)
        await self._on_leader(timeout, lambda leader: leader.remove_member(
            node_id, timeout=timeout))
        self.members.pop(node_id, None)

    async def _on_leader(self, timeout: float, operation: Callable[[Node], Any]) -> Any:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            leader = await self.wait_leader(max(0.1, deadline - loop.time()))
            try:
                return await operation(leader)
            except errors.NotLeader:
                if loop.time() > deadline:
                    raise
                await asyncio.sleep(0.05)

    # ------------------------------------------------------------------ faults

    async def stop(self, node_id: int) -> None:
        """Crash one node: it stops at once; only what it persisted survives a restart."""
        server = self.servers.get(node_id)
        if server is not None:
            server.crash()
        else:
            self._node(node_id).crash()
        await asyncio.sleep(0)

    async def restart(self, node_id: int) -> Node:
        """Start a crashed or stopped node again from its persisted state."""
        node = self._node(node_id)
        if node.running:
            raise errors.EngineError(f"node {node_id} is running; stop it first")
        return await self._start_node(node_id)

    async def partition(self, *groups: Iterable[int]) -> None:
        """Cut the network into groups; nodes talk only within their group. Nodes not named
        form one more group."""
        sets = [set(group) for group in groups]
        named = set().union(*sets) if sets else set()
        for node_id in named:
            if node_id not in self.members:
                raise errors.ConfigError(f"unknown node {node_id} in partition")
        rest = set(self.members) - named
        if rest:
            sets.append(rest)
        self._groups = sets
        for node_id in self.nodes:
            self._apply_partition_to(node_id)
        await asyncio.sleep(0)

    async def heal(self) -> None:
        """Undo partition(): every node hears every other again."""
        self._groups = None
        for node in self.nodes.values():
            if node.transport is not None:
                node.transport.set_fault_filter(None, None)
        await asyncio.sleep(0)

    def _apply_partition_to(self, node_id: int) -> None:
        assert self._groups is not None
        # A removed node (no longer in members) is cut off from everyone.
        mine = next((group for group in self._groups if node_id in group), {node_id})
        others = set(self.members) - mine
        transport = self.nodes[node_id].transport
        if transport is not None:
            transport.set_fault_filter(others, others)

    # ------------------------------------------------------------------ queries

    def _node(self, node_id: int) -> Node:
        try:
            return self.nodes[node_id]
        except KeyError:
            raise errors.ConfigError(f"no node {node_id} in this cluster") from None

    def leader(self) -> Node | None:
        """The running node that is leader in the highest term, if any."""
        best: Node | None = None
        best_term = -1
        for node in self.nodes.values():
            if node.running and node.core is not None and node.core.role == "leader":
                if node.core.term > best_term:
                    best, best_term = node, node.core.term
        return best

    async def wait_leader(self, timeout: float = 10.0, *, among: Iterable[int] | None = None
                          ) -> Node:
        """Wait until a leader exists (optionally one of `among`) that a majority of running
        nodes follow in its term."""
        wanted = set(among) if among is not None else None
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while loop.time() < deadline:
            leader = self.leader()
            if leader is not None and (wanted is None or leader.node_id in wanted):
                term = leader.core.term
                followers = sum(
                    1 for node in self.nodes.values()
                    if node.running and node.core.term == term
                    and node.core.leader_id == leader.node_id
                )
                if followers >= len(self.members) // 2 + 1:
                    return leader
            await asyncio.sleep(0.01)
        raise errors.Timeout(f"no leader within {timeout} s")
