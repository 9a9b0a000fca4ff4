"""Real processes: 3 `serve` nodes with WALs under a write load; a 4th joins through
`python -m engine members add`, then one original node is killed -9: writes continue and no
acknowledged write is lost (Raft thesis ch. 4 over real UDP and fsync)."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from pathlib import Path

from tests.proc.test_processes import ProcessCluster, read_all, write_load


async def join_by_cli(cluster: ProcessCluster, tmp_path: Path, node_id: int, *,
                      witness: bool = False) -> None:
    """Start `serve --join` for a new node (members = the existing ones plus itself) and add
    it with `python -m engine members add`; asserts the command succeeded."""
    from engine.aio.local_cluster import free_udp_ports

    original_arg = cluster.members_arg
    cluster.members[node_id] = f"127.0.0.1:{free_udp_ports(1)[0]}"
    cluster.members_arg = f"{original_arg},{node_id}={cluster.members[node_id]}"
    kind = ["--witness"] if witness else []
    log = open(tmp_path / f"n{node_id}.log", "ab")  # noqa: SIM115 - lives with the process
    cluster.processes[node_id] = subprocess.Popen(
        [sys.executable, "-m", "engine", "-v", "serve", "--node-id", str(node_id), "--join",
         *kind, "--members", cluster.members_arg, "--cluster-key-file", str(cluster.key_file),
         "--data-dir", str(tmp_path / f"n{node_id}")],
        stdin=subprocess.DEVNULL, stdout=log, stderr=log)
    added = await asyncio.to_thread(subprocess.run, [
        sys.executable, "-m", "engine", "members", "--members", original_arg,
        "--cluster-key-file", str(cluster.key_file), "add", "--id", str(node_id), *kind,
        "--address", cluster.members[node_id]], capture_output=True, text=True, timeout=60)
    assert added.returncode == 0, added.stderr + cluster.logs()


async def writes_continue(cluster: ProcessCluster, acknowledged: dict[bytes, bytes],
                          count: int = 100, timeout: float = 15.0) -> None:
    target = len(acknowledged) + count
    deadline = time.monotonic() + timeout
    while len(acknowledged) < target:
        assert time.monotonic() < deadline, "writes did not continue\n" + cluster.logs()
        await asyncio.sleep(0.1)


async def test_add_a_fourth_node_by_cli_then_kill_an_original(tmp_path: Path) -> None:
    cluster = ProcessCluster(tmp_path, n=3)
    try:
        cluster.start_all()
        await cluster.leader_id()
        acknowledged: dict[bytes, bytes] = {}
        stop = asyncio.Event()
        writers = [asyncio.create_task(write_load(cluster, acknowledged, stop, w))
                   for w in range(4)]
        await asyncio.sleep(1.0)
        # Node 4 joins: members = the existing ones plus itself, started as a learner.
        await join_by_cli(cluster, tmp_path, 4)
        cluster.kill(1)
        await writes_continue(cluster, acknowledged)
        stop.set()
        await asyncio.gather(*writers)
        await read_all(cluster, acknowledged)
        async with cluster.client() as client:
            view = await client.members()
        assert view["voters"] == [1, 2, 3, 4]
    finally:
        cluster.stop_all()


async def test_two_full_nodes_and_a_witness_survive_a_full_node_killed(tmp_path: Path) -> None:
    """Witness members over real processes: 2 full `serve` nodes, a third
    joins by `members add --witness`; kill -9 the full follower: the leader and the witness
    keep committing (after rule W2's election-timeout wait) and no acknowledged write is lost."""
    cluster = ProcessCluster(tmp_path, n=2)
    try:
        cluster.start_all()
        leader = await cluster.leader_id()
        acknowledged: dict[bytes, bytes] = {}
        stop = asyncio.Event()
        writers = [asyncio.create_task(write_load(cluster, acknowledged, stop, w))
                   for w in range(4)]
        await asyncio.sleep(0.5)
        await join_by_cli(cluster, tmp_path, 3, witness=True)
        async with cluster.client() as client:
            view = await client.members()
        assert view["voters"] == [1, 2, 3] and view["witnesses"] == [3], view
        cluster.kill(next(i for i in (1, 2) if i != leader))
        await writes_continue(cluster, acknowledged)
        stop.set()
        await asyncio.gather(*writers)
        await read_all(cluster, acknowledged)
    finally:
        cluster.stop_all()
