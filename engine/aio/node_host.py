"""NodeHost: one process hosting many consensus groups (DESIGN.md §1).

One UDP socket, one write-ahead log, one tick timer and one turn (engine.host.Host) for every
group this process replicates; each group is an engine.Node in hosted mode, with its own core,
state machine, proposals, reads, membership and serving, over the host's I/O:

  * the socket: every message carries its group id (engine.messages, `Message.group`, inside
    the authenticated frame); `_on_messages` hands each group its own;
  * the WAL: each group's Ready joins the host's batch, saved with ONE record and at most one
    fsync per turn for all of them (engine.aio.wal.WriteAheadLog.save_many): the number of
    fsyncs per second does not grow with the number of groups;
  * the timer: one tick for every group.

A message for a group this process does not host is dropped and counted
(`counters["unknown_group_messages"]`); a client request for one is answered with an error
naming the group, so the client re-routes.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Callable, Mapping
from typing import Any

from engine import errors
from engine.aio.node import Node, _open_storage, _ThreadJobs, next_tick_at
from engine.aio.wal import RecoveredState
from engine.config import NodeConfig
from engine.driver import InlineJobs
from engine.host import Host
from engine.messages import ClientStatus, Message, MessageType
from engine.types import StateMachine

logger = logging.getLogger("engine.node")

_CLIENT_REQUEST = int(MessageType.CLIENT_REQUEST)
_CLIENT_RESPONSE = int(MessageType.CLIENT_RESPONSE)
_LIVENESS = int(MessageType.LIVENESS)


class _GroupTransportView:
    """What a hosted Node's serving and membership parts see as their transport: the host's
    UDP transport with the group id stamped on what they send, and peers that are only ever
    added (the socket serves every group; one group's configuration change must not make
    the transport forget a process another group still needs)."""

    def __init__(self, group: int, transport: Any, host: NodeHost) -> None:
        self._group = group
        self._transport = transport
        self._host = host

    def send(self, messages: Any, *, now: bool = False) -> None:
        messages = list(messages)
        for message in messages:
            message.group = self._group
        self._transport.send(messages, now=now)

    def send_to_address(self, address: Any, messages: Any) -> None:
        messages = list(messages)
        for message in messages:
            message.group = self._group
        self._transport.send_to_address(address, messages)

    def update_peers(self, peers: Mapping[int, Any]) -> None:
        self._host.add_peers(peers)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


class HostedGroup:
    """A hosted Node's handle on its NodeHost (engine.aio.node.Node, `_hosted`)."""

    def __init__(self, node_host: NodeHost, group: int, recovered: Any) -> None:
        assert node_host.host is not None and node_host.transport is not None
        self.node_host = node_host
        self.group = group
        self.recovered = recovered
        group_call_soon = node_host.host.group_call_soon
        awake = node_host.awake

        def call_soon(callback: Callable[[], None]) -> None:
            # Any input (a message, a proposal, a read) schedules the group's turn: it ticks
            # again from the next tick on, until its core is quiet.
            awake.add(group)
            group_call_soon(callback)

        self.call_soon = call_soon
        self.transport = _GroupTransportView(group, node_host.transport, node_host)
        self.storage = node_host.storage

    def start(self, node: Node, core: Any, *, applied: int, membership: Any,
              lease_window: int) -> None:
        node_host = self.node_host
        assert node_host.host is not None
        node_host.host.add_group(
            self.group, node.driver, core, applied=applied,
            storage_jobs=node_host.storage_jobs, snapshot_jobs=node_host.snapshot_jobs,
            membership=membership, lease_window=lease_window)

    def stop(self, node: Node) -> None:
        node_host = self.node_host
        if node_host.host is not None and self.group in node_host.host.groups:
            node_host.host.remove_group(self.group)
        node_host.nodes.pop(self.group, None)

    def crash(self) -> None:
        self.node_host.crash()


class NodeHost:
    """One process's groups over one socket, one WAL and one timer.

    `config` is the process's: node id, members (node id -> address of each process),
    data directory, cluster key, timing, limits. Each group gets that config (the same
    members unless `add_group` is told otherwise).

        async with NodeHost(config) as host:
            node = await host.add_group(7, engine.KVStore())
            await node.propose(command)
    """

    def __init__(self, config: NodeConfig, *, storage: Any = None,
                 clock_ns: Callable[[], int] | None = None) -> None:
        self.config = config
        self.storage = storage
        self._clock_ns = clock_ns
        self.transport: Any = None
        self.host: Host | None = None
        self.nodes: dict[int, Node] = {}
        self.storage_jobs: Any = InlineJobs()
        self.snapshot_jobs: Any = None
        self._recovered: dict[int, Any] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._tick_handle: asyncio.TimerHandle | None = None
        self._next_tick_at = 0.0
        self._peers: dict[int, Any] = {}
        self.fatal: BaseException | None = None
        # Quiescence: the groups that tick (the rest are quiet: their cores' time stands
        # still); per peer process, the tick it was last heard from and the tick its silence
        # last woke the groups it leads.
        self.awake: set[int] = set()
        self.ticks = 0
        self._heard: dict[int, int] = {}
        self._woken_for: dict[int, int] = {}
        self.counters: dict[str, int] = {"liveness_wakes": 0, "groups_woken": 0}

    async def __aenter__(self) -> NodeHost:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    @property
    def running(self) -> bool:
        return self.host is not None and self.host.running

    async def start(self) -> None:
        """Open the WAL (every group's state), bind the socket, start the timer."""
        from engine.aio.identity import open_identity, store_cluster_id
        from engine.aio.udp import UdpTransport, wall_clock_ns

        if self.host is not None:
            raise errors.EngineError("host already started")
        config = self.config
        self._loop = loop = asyncio.get_running_loop()
        if self.storage is None:
            self.storage = _open_storage(config)
        self._recovered = await loop.run_in_executor(None, self.storage.open_groups)
        try:
            identity = await loop.run_in_executor(
                None, open_identity, config, self._clock_ns or wall_clock_ns)
            self._peers = {n: a for n, a in config.members.items() if n != config.node_id}
            self.transport = UdpTransport(
                config.node_id, config.listen or config.address_of(config.node_id),
                dict(self._peers), config.cluster_key,
                cluster_id=identity.cluster_id, limits=config.limits, epoch=identity.epoch,
                on_messages=self._on_messages, min_client_epoch=identity.min_client_epoch,
                on_cluster_id=lambda cluster_id: store_cluster_id(config, cluster_id),
                encrypt_payloads=config.encrypt_payloads,
            )
            await self.transport.start()
        except BaseException:
            self.storage.close()
            raise
        if config.data_dir is not None:
            self.storage_jobs = _ThreadJobs(loop, "engine-wal")
        self.snapshot_jobs = _ThreadJobs(loop, "engine-snap")
        self.host = Host(config.node_id, transport=self.transport, storage=self.storage,
                         call_soon=loop.call_soon, die=self._die)
        self._next_tick_at = loop.time()
        self._schedule_tick()

    def recovered_groups(self) -> list[int]:
        """The groups the WAL holds state for (to add again after a restart)."""
        return sorted(g for g, state in self._recovered.items() if _has_state(state))

    async def add_group(self, group: int, state_machine: StateMachine | None = None, *,
                        members: Mapping[int, str] | None = None, **config: Any) -> Node:
        """Host group `group` here (its state recovered from the WAL, if any) and start it.
        `members`: the group's replicas (default: the process's members); other keywords
        replace NodeConfig fields for this group."""
        if self.host is None:
            raise errors.Stopped("host is not running")
        if group in self.nodes:
            raise ValueError(f"group {group} is already hosted")
        if members is not None:
            config["members"] = dict(members)
        if self.config.protocol == "raft":
            config.setdefault("quiesce", True)
        group_config = dataclasses.replace(self.config, **config) if config else self.config
        recovered = self._recovered.pop(group, None)
        if recovered is None:
            recovered = RecoveredState()   # a group the WAL has never seen
        node = Node(group_config, state_machine,
                    _hosted=HostedGroup(self, group, recovered))
        self.nodes[group] = node
        try:
            await node.start()
        except BaseException:
            self.nodes.pop(group, None)
            raise
        voters = sorted(group_config.members)
        if voters[group % len(voters)] == self.config.node_id:
            # The replica named by the group's id campaigns at once, the others start
            # dormant: thousands of groups created or restarted together do not start
            # thousands of competing elections, and their leaders spread over the processes.
            # A new group's replicas vote at once (term 0: no lease rests on them); restarted
            # ones wake on the vote request and vote after their lease wait (Raft thesis
            # §6.4.1). Pre-vote keeps a restarted replica from disturbing a live leader. Any
            # replica may win later elections.
            node.campaign()
        return node

    def node(self, group: int) -> Node:
        return self.nodes[group]

    def add_peers(self, peers: Mapping[int, Any]) -> None:
        """A group's configuration names these processes: the socket learns any new one."""
        new = {n: a for n, a in peers.items()
               if n != self.config.node_id and self._peers.get(n) != a}
        if new and self.transport is not None:
            self._peers.update(new)
            self.transport.update_peers(dict(self._peers))

    # ------------------------------------------------------------------ the loop

    def _on_messages(self, messages: list[Message], address: Any) -> None:
        nodes = self.nodes
        head = messages[0]
        src = head.src
        if src in self._peers:
            self._heard[src] = self.ticks   # every datagram from a peer says it is up
            if head.type == _LIVENESS:
                messages = [m for m in messages if m.type != _LIVENESS]
                if not messages:
                    return
        first = messages[0].group
        if all(m.group == first for m in messages):
            node = nodes.get(first)
            if node is not None:
                node._on_messages(messages, address)
            else:
                self._unknown_group(messages, address)
            return
        by_group: dict[int, list[Message]] = {}
        for message in messages:
            by_group.setdefault(message.group, []).append(message)
        for group, group_messages in by_group.items():
            node = nodes.get(group)
            if node is not None:
                node._on_messages(group_messages, address)
            else:
                self._unknown_group(group_messages, address)

    def _unknown_group(self, messages: list[Message], address: Any) -> None:
        assert self.host is not None
        self.host.counters["unknown_group_messages"] += len(messages)
        for message in messages:
            if message.type == _CLIENT_REQUEST:
                # A definite no: the request reached no group, nothing was applied.
                self.transport.send_to_address(address, [Message(
                    _CLIENT_RESPONSE, src=self.config.node_id, dst=message.src,
                    seq=message.seq, status=int(ClientStatus.ERROR),
                    context=f"group {message.group} is not hosted on node "
                            f"{self.config.node_id}".encode(),
                    group=message.group)])

    def _schedule_tick(self) -> None:
        assert self._loop is not None
        self._next_tick_at = next_tick_at(
            self._next_tick_at, self.config.timing.tick_ms / 1000.0, self._loop.time())
        self._tick_handle = self._loop.call_at(self._next_tick_at, self._on_tick)

    def _on_tick(self) -> None:
        if not self.running:
            return
        self.ticks += 1
        nodes, awake = self.nodes, self.awake
        for group in list(awake):
            node = nodes.get(group)
            if node is None:
                awake.discard(group)
                continue
            driver = node.driver
            core = driver.core
            if core is None or (getattr(core, "quiet", False) and not driver.turn_scheduled):
                # Its time stands still until an input wakes it: every input schedules a
                # turn (HostedGroup.call_soon puts it back here); a turn already scheduled
                # may wake it, so it stays until that turn ran.
                awake.discard(group)
                continue
            node._on_tick()
        timing = self.config.timing
        if self.ticks % timing.heartbeat_interval_ticks == 0:
            self._send_liveness()
        self._wake_groups_of_silent_peers(timing.election_timeout_ticks)
        self._schedule_tick()

    def _send_liveness(self) -> None:
        """One LIVENESS per peer process per heartbeat interval, whatever the number of
        groups: the coalesced heartbeat that lets idle groups stay quiet."""
        me = self.config.node_id
        self.transport.send([Message(_LIVENESS, src=me, dst=peer) for peer in self._peers],
                            now=True)

    def _wake_groups_of_silent_peers(self, timeout_ticks: int) -> None:
        """A quiet follower hears nothing from its leader by design, so it learns of the
        leader's failure here: once the leader's process has been silent for an election
        timeout, every quiet group it leads wakes, ticks and (after its own election
        timeout) campaigns. Repeated every election timeout while the silence lasts."""
        ticks = self.ticks
        for peer in self._peers:
            heard = self._heard.get(peer, 0)
            if ticks - heard < timeout_ticks:
                continue
            if ticks - self._woken_for.get(peer, -timeout_ticks) < timeout_ticks:
                continue
            self._woken_for[peer] = ticks
            self.counters["liveness_wakes"] += 1
            for group, node in self.nodes.items():
                core = node.driver.core
                if core is not None and getattr(core, "quiet", False) \
                        and core.leader_id == peer:
                    core.wake()
                    self.awake.add(group)
                    self.counters["groups_woken"] += 1

    # ------------------------------------------------------------------ stopping

    def status(self) -> dict[str, Any]:
        assert self.host is not None
        return {"node_id": self.config.node_id, "groups": sorted(self.nodes),
                "awake_groups": len(self.awake),
                "counters": {**self.host.counters, **self.counters},
                "transport": self.transport.stats() if self.transport is not None else {}}

    async def stop(self) -> None:
        """Stop every group (pending requests fail with Stopped), then the socket and WAL."""
        host = self.host
        if host is None:
            return
        for node in list(self.nodes.values()):
            await node.stop()
        while host._in_flight is not None and self.fatal is None:
            await asyncio.sleep(0.001)
        host.stop()
        self._shutdown(crashed=False)

    def crash(self) -> None:
        """Stop at once as a killed process would (tests): unsynced writes are lost."""
        host = self.host
        if host is None:
            return
        host.stop()
        for node in list(self.nodes.values()):
            node.driver.stop()
            node.driver.fail_everything(errors.Stopped("node crashed"))
        self._shutdown(crashed=True)

    def _shutdown(self, *, crashed: bool) -> None:
        if self._tick_handle is not None:
            self._tick_handle.cancel()
        self.nodes.clear()
        self.host = None
        if self.transport is not None:
            self.transport.close()
        for jobs in (self.storage_jobs, self.snapshot_jobs):
            if isinstance(jobs, _ThreadJobs):
                jobs.shutdown()
        abandon = getattr(self.storage, "abandon", None)
        if crashed and abandon is not None:
            abandon()
        else:
            self.storage.close()

    def _die(self, exc: BaseException) -> None:
        logger.critical("node %d stopping after a fatal error: %r", self.config.node_id, exc)
        self.fatal = exc
        self.crash()


def _has_state(recovered: Any) -> bool:
    """The WAL holds something of this group: entries, a snapshot or a term."""
    return bool(recovered.entries or recovered.snapshot is not None
                or recovered.hard_state.term)


__all__ = ["HostedGroup", "NodeHost"]
