"""NodeHost: many groups in one process over one socket, one WAL and one timer."""

from __future__ import annotations

import asyncio
import secrets
from pathlib import Path

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
    """Group commit across groups: a turn's Readies share one save_many, so the host saves
    fewer batches than its groups saved Readies."""
    hosts = await _start(_configs(tmp_path), GROUPS)
    try:
        leaders = await _leaders(hosts, GROUPS)
        await asyncio.gather(*[
            leaders[1 + i % GROUPS].submit(encode_put(b"k%d" % i, b"v")) for i in range(400)])
        for host in hosts:
            assert host.host is not None
            counters = host.host.counters
            group_saves = sum(node.counters["saves"] for node in host.nodes.values())
            assert counters["batch_groups"] == group_saves
            assert counters["batches"] < group_saves
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
