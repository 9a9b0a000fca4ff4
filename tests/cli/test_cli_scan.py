"""`engine kv scan START [END] [--prefix] [--limit N]`: keys in order with their values, in
JSON or as a table, --hex for any bytes, one-line usage errors for bad ranges and limits.

Method: a one-node `serve` process and the command line run as a user would.
"""

from __future__ import annotations

import json
from pathlib import Path

from cli_support import Nodes, one_line_error, put_all, run, until_ok

from engine.aio.local_cluster import free_udp_ports
from engine.cli import exitcodes


def test_kv_scan(key_file: Path, nodes: Nodes) -> None:
    port = free_udp_ports(1)[0]
    members = f"1=127.0.0.1:{port}"
    common = ("--members", members, "--cluster-key-file", str(key_file))
    nodes.start("--node-id", "1", *common)
    assert until_ok("kv", *common, "put", "ready", "1").returncode == 0
    put_all(members, key_file, {b"user/b": b"2", b"user/a": b"1", b"user0": b"3",
                                b"\xff\x00": b"\x80"})

    prefix = run("kv", *common, "scan", "user/", "--prefix")
    assert prefix.returncode == 0, prefix.stderr
    assert json.loads(prefix.stdout) == [{"key": "user/a", "value": "1"},
                                         {"key": "user/b", "value": "2"}]
    ranged = run("kv", *common, "scan", "ready", "user0")
    assert [row["key"] for row in json.loads(ranged.stdout)] == ["ready", "user/a", "user/b"]
    limited = run("kv", *common, "scan", "user/", "--limit", "1")
    assert json.loads(limited.stdout) == [{"key": "user/a", "value": "1"}]
    table = run("kv", *common, "--output", "table", "scan", "user/", "--prefix")
    assert table.stdout.split("\n")[0].split() == ["KEY", "VALUE"]
    assert table.stdout.split("\n")[1].split() == ["user/a", "1"]
    # Any bytes with --hex (START and END in hex too); without it, a clear refusal.
    binary = run("kv", *common, "--hex", "scan", "ff")
    assert json.loads(binary.stdout) == [{"key": "ff00", "value": "80"}]
    refused = one_line_error(run("kv", *common, "scan", "user0"), exitcodes.USAGE)
    assert "the key" in refused and "--hex" in refused

    for bad in (["scan", "b", "a"], ["scan", "a", "--limit", "0"],
                ["scan", "a", "b", "--prefix"]):
        one_line_error(run("kv", *common, *bad), exitcodes.USAGE)
