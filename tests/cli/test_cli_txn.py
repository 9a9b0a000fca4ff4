"""`engine txn OPERATIONS`: a transaction across the two ranges of three real `serve --shards
2` processes, from an argument and from stdin; a malformed list is a usage error."""

from __future__ import annotations

import json
from pathlib import Path

from cli_support import Nodes, one_line_error, run, until_ok

from engine.aio.local_cluster import free_udp_ports


def test_txn_reads_and_writes_across_ranges(key_file: Path, nodes: Nodes) -> None:
    ports = free_udp_ports(3)
    members = ",".join(f"{i}=127.0.0.1:{port}" for i, port in enumerate(ports, 1))
    common = ("--members", members, "--cluster-key-file", str(key_file))
    bad = run("txn", *common, '[["get"]]')
    assert "is not one of" in one_line_error(bad, 2)
    for node_id in (1, 2, 3):
        nodes.start("--node-id", str(node_id), *common, "--shards", "2", "--no-fsync")
    # Ranges [, key5) and [key5, ): key1 and key9 are in different groups.
    first = until_ok("txn", *common, '[["put","key1","a"],["put","key9","b"]]')
    assert first.returncode == 0, first.stderr
    assert json.loads(first.stdout) == {"reads": [], "outcome": "committed"}
    ops = b'[["get","key1"],["get","key9"],["put","key9","c"],["scan","key","kez"]]'
    second = run("txn", *common, "-", stdin=ops)
    assert second.returncode == 0, second.stderr
    assert json.loads(second.stdout) == {"outcome": "committed", "reads": [
        {"op": "get", "key": "key1", "value": "a"},
        {"op": "get", "key": "key9", "value": "b"},
        {"op": "scan", "start": "key", "rows": [{"key": "key1", "value": "a"},
                                                {"key": "key9", "value": "c"}]}]}
