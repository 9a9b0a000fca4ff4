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
        from engine.aio.local_cluster import free_udp_ports

        original_arg = cluster.members_arg
        cluster.members[4] = f"127.0.0.1:{free_udp_ports(1)[0]}"
        cluster.members_arg = f"{original_arg},4={cluster.members[4]}"
        log = open(tmp_path / "n4.log", "ab")  # noqa: SIM115 - lives with the process
        cluster.processes[4] = subprocess.Popen(
            [sys.executable, "-m", "engine", "-v", "serve", "--node-id", "4", "--join",
             "--members", cluster.members_arg, "--cluster-key-file", str(cluster.key_file),
             "--data-dir", str(tmp_path / "n4")],
            stdin=subprocess.DEVNULL, stdout=log, stderr=log)
        added = await asyncio.to_thread(subprocess.run, [
            sys.executable, "-m", "engine", "members", "--members", original_arg,
            "--cluster-key-file", str(cluster.key_file), "add", "--id", "4",
            "--address", cluster.members[4]], capture_output=True, text=True, timeout=60)
        assert added.returncode == 0, added.stderr + cluster.logs()
        before_kill = len(acknowledged)
        cluster.kill(1)
        deadline = time.monotonic() + 15
        while len(acknowledged) < before_kill + 100:
            assert time.monotonic() < deadline, "writes did not continue\n" + cluster.logs()
            await asyncio.sleep(0.1)
        stop.set()
        await asyncio.gather(*writers)
        await read_all(cluster, acknowledged)
        async with cluster.client() as client:
            view = await client.members()
        assert view["voters"] == [1, 2, 3, 4]
    finally:
        cluster.stop_all()
