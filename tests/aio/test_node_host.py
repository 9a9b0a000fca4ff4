"""NodeHost: many groups in one process over one socket, one WAL and one timer."""

from __future__ import annotations

import asyncio
import secrets
from pathlib import Path
from typing import Any

import engine
from engine.aio.local_cluster import free_udp_ports
from engine.aio.node import Node
from engine.aio.node_host import NodeHost
from engine.config import NodeConfig
from engine.kv.commands import decode_result, encode_put, encode_query

GROUPS = 4


def _configs(data_dir: Path | None) -> list[NodeConfig]:
    ports = free_udp_ports(3)
    members = {i + 1: f"127.0.0.1:{port}" for i, port in enumerate(ports)}
    key = secrets.token_bytes(32)
    return [NodeConfig(node_id=i, members=members, cluster_key=key,
                       data_dir=None if data_dir is None else str(data_dir / f"n{i}"))
            for i in members]


async def _start(configs: list[NodeConfig], groups: int) -> list[NodeHost]:
    hosts = [NodeHost(config) for config in configs]
    for host in hosts:
        await host.start()
    for group in range(1, groups + 1):
        for host in hosts:
            await host.add_group(group, engine.KVStore())
    return hosts


async def _leaders(hosts: list[NodeHost], groups: int) -> dict[int, Node]:
    for _ in range(400):
        found = {g: [h.nodes[g] for h in hosts if str(h.nodes[g].core.role) == "leader"]
                 for g in range(1, groups + 1)}
        if all(found.values()):
            return {g: nodes[0] for g, nodes in found.items()}
        await asyncio.sleep(0.025)
    raise AssertionError("not every group elected a leader")


def _value(result: bytes) -> bytes | None:
    return decode_result(result).value


async def test_groups_replicate_independently_over_one_socket() -> None:
    hosts = await _start(_configs(None), GROUPS)
    try:
        leaders = await _leaders(hosts, GROUPS)
        await asyncio.gather(*[
            leaders[g].propose(encode_put(b"k", b"group %d" % g)) for g in leaders])
        for group, leader in leaders.items():
            assert _value(await leader.read(encode_query(b"k"))) == b"group %d" % group
        # Every group's messages crossed the one socket of each process, none went astray.
        assert all(h.host is not None and h.host.counters["unknown_group_messages"] == 0
                   for h in hosts)
        assert len({h.transport for h in hosts}) == len(hosts)
    finally:
        for host in hosts:
            await host.stop()


async def test_one_batch_saves_every_group_of_a_turn(tmp_path: Path) -> None:
    """Group commit across groups: proposals to two groups led by one process, made in one
    loop turn, reach the WAL in ONE save_many (one record, one fsync)."""
    hosts = await _start(_configs(tmp_path), GROUPS)
    try:
        leaders = await _leaders(hosts, GROUPS)
        # Quiet first: no traffic is in flight that could split the turn.
        await _until(lambda: all(n.core.quiet for h in hosts for n in h.nodes.values())
                     and all(not h.awake for h in hosts), "every group quiet")
        host = next(h for h in hosts
                    if sum(leaders[g] is h.nodes[g] for g in leaders) >= 2)
        led = [g for g in leaders if leaders[g] is host.nodes[g]][:2]
        batches: list[list[int]] = []
        save_many = host.storage.save_many

        def recording(saves: Any, *, sync: bool) -> Any:
            saves = list(saves)
            batches.append([group for group, entries, _ in saves if entries])
            return save_many(saves, sync=sync)

        host.storage.save_many = recording
        futures = [leaders[g].submit(encode_put(b"k", b"v")) for g in led]   # one loop turn
        await asyncio.gather(*futures)
        assert sorted(led) in [sorted(groups) for groups in batches], batches
        assert host.host is not None
        counters = host.host.counters
        assert counters["syncs"] <= counters["batches"]
    finally:
        for host in hosts:
            await host.stop()


async def test_every_group_recovers_from_the_shared_wal(tmp_path: Path) -> None:
    configs = _configs(tmp_path)
    hosts = await _start(configs, GROUPS)
    try:
        leaders = await _leaders(hosts, GROUPS)
        await asyncio.gather(*[
            leaders[g].propose(encode_put(b"k", b"group %d" % g)) for g in leaders])
    finally:
        for host in hosts:
            await host.stop()
    hosts = [NodeHost(config) for config in configs]
    for host in hosts:
        await host.start()
    try:
        assert hosts[0].recovered_groups() == list(range(1, GROUPS + 1))
        for group in range(1, GROUPS + 1):
            for host in hosts:
                await host.add_group(group, engine.KVStore())
        # Recovered groups start dormant but for the replica their id names, which campaigns
        # (one election per group, not a storm of them); requests to any replica are served.
        results = await asyncio.gather(*[
            hosts[group % 3].nodes[group].propose(encode_put(b"k2", b"v"))
            for group in range(1, GROUPS + 1)])
        assert all(decode_result(result).ok for result in results)
        leaders = await _leaders(hosts, GROUPS)
        for group, leader in leaders.items():
            assert _value(await leader.read(encode_query(b"k"))) == b"group %d" % group
    finally:
        for host in hosts:
            await host.stop()


async def test_messages_for_a_group_not_hosted_are_counted_and_dropped() -> None:
    configs = _configs(None)
    hosts = await _start(configs, 1)
    try:
        leaders = await _leaders(hosts, 1)
        stray = await hosts[1].add_group(9, engine.KVStore())   # on one process only
        stray.campaign()   # its votes reach processes that do not host group 9
        for _ in range(200):
            if all(h.host is not None and h.host.counters["unknown_group_messages"]
                   for h in (hosts[0], hosts[2])):
                break
            await asyncio.sleep(0.01)
        assert all(h.host is not None and h.host.counters["unknown_group_messages"]
                   for h in (hosts[0], hosts[2]))
        # Group 1 is untouched by the stray traffic.
        await leaders[1].propose(encode_put(b"k", b"v"))
    finally:
        for host in hosts:
            await host.stop()


async def _until(predicate: Any, what: str, seconds: float = 10.0) -> None:
    for _ in range(int(seconds / 0.02)):
        if predicate():
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"not within {seconds} s: {what}")


async def test_idle_groups_go_quiet_and_wake_on_a_proposal() -> None:
    hosts = await _start(_configs(None), GROUPS)
    try:
        leaders = await _leaders(hosts, GROUPS)
        # Quiet cores leave the host's ticking set at its next tick.
        await _until(lambda: all(n.core.quiet for h in hosts for n in h.nodes.values())
                     and all(not h.awake for h in hosts),
                     "every replica of every group quiet, no group ticking")
        ticks = {(h.config.node_id, g): n.core.ticks for h in hosts for g, n in h.nodes.items()}
        await asyncio.sleep(0.2)   # twenty ticks of the host's timer
        assert ticks == {(h.config.node_id, g): n.core.ticks
                         for h in hosts for g, n in h.nodes.items()}
        # A quiet leader never serves a lease read: its time stood still.
        assert all(leader.core.lease_read_index() is None for leader in leaders.values())
        await leaders[1].propose(encode_put(b"k", b"v"))
        assert _value(await leaders[1].read(encode_query(b"k"))) == b"v"
        await _until(lambda: all(h.nodes[1].core.quiet for h in hosts), "group 1 quiet again")
        assert all(h.nodes[2].core.quiet for h in hosts)   # untouched by group 1's work
    finally:
        for host in hosts:
            await host.stop()


async def test_quiet_followers_elect_a_new_leader_when_the_leaders_process_dies() -> None:
    """The process-level failure detector: a quiet follower hears nothing from its leader
    by design; when the leader's process is silent for an election timeout its groups wake."""
    hosts = await _start(_configs(None), GROUPS)
    try:
        leaders = await _leaders(hosts, GROUPS)
        await _until(lambda: all(n.core.quiet for h in hosts for n in h.nodes.values()),
                     "every replica of every group quiet")
        victim = hosts[0]
        led = [g for g, leader in leaders.items() if leader is victim.nodes[g]]
        assert led, "the designated first campaigns spread leaders over the processes"
        victim.crash()
        alive = hosts[1:]
        await _until(lambda: all(any(str(h.nodes[g].core.role) == "leader" for h in alive)
                                 for g in led), "new leaders for the dead process's groups")
        assert all(h.counters["groups_woken"] for h in alive)
        for group in led:
            leader = next(h.nodes[group] for h in alive
                          if str(h.nodes[group].core.role) == "leader")
            await leader.propose(encode_put(b"after", b"crash"))
    finally:
        for host in hosts:
            await host.stop()
