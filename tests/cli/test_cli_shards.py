"""`engine serve --shards N` and `engine shards list|split KEY`: a sharded cluster of three
real processes, split live from the command line, every key still readable after.

Method: three `serve --shards 2` processes and the command line run as a user would.
"""

from __future__ import annotations

import json
from pathlib import Path

from cli_support import Nodes, put_all, run, until_ok

from engine.aio.local_cluster import free_udp_ports


def test_shards_list_and_split(key_file: Path, nodes: Nodes) -> None:
    ports = free_udp_ports(3)
    members = ",".join(f"{i}=127.0.0.1:{port}" for i, port in enumerate(ports, 1))
    common = ("--members", members, "--cluster-key-file", str(key_file))
    for node_id in (1, 2, 3):
        nodes.start("--node-id", str(node_id), *common, "--shards", "2", "--no-fsync")
    listed = until_ok("shards", *common, "list")
    assert listed.returncode == 0, listed.stderr
    ranges = json.loads(listed.stdout)
    assert [(r["start"], r["end"], r["group"]) for r in ranges] == [
        ("", "key5", 1), ("key5", None, 2)]
    items = {b"key%d" % i: b"v%d" % i for i in range(10)}
    put_all(members, key_file, items)

    split = run("shards", *common, "split", "key7")
    assert split.returncode == 0, split.stderr
    done = json.loads(split.stdout)
    assert done["right"]["start"] == "key7" and done["right"]["group"] == 3
    assert not done["already_split"]
    after = json.loads(run("shards", *common, "list").stdout)
    assert [(r["start"], r["epoch"]) for r in after] == [("", 1), ("key5", 2), ("key7", 2)]
    scan = run("kv", *common, "scan", "key")
    assert [row["key"] for row in json.loads(scan.stdout)] == sorted(
        k.decode() for k in items)
