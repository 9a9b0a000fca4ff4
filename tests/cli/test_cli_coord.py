"""`engine lock NAME -- COMMAND`, `engine watch PREFIX`, `engine lease grant|revoke|list` and
`engine elect NAME VALUE` against a one-node `serve` process, run as a user would."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from cli_support import Nodes, run, until_ok

from engine.aio.local_cluster import free_udp_ports


def test_lock_watch_lease_and_elect(key_file: Path, nodes: Nodes) -> None:
    port = free_udp_ports(1)[0]
    common = ("--members", f"1=127.0.0.1:{port}", "--cluster-key-file", str(key_file))
    nodes.start("--node-id", "1", *common)
    assert until_ok("kv", *common, "put", "ready", "1").returncode == 0

    # The command runs holding the lock, sees its token, and its exit status is lock's.
    script = ("import os, sys; print(os.environ['ENGINE_LOCK_TOKEN']); "
              "sys.exit(int(os.environ['ENGINE_LOCK_TOKEN']) + 4)")
    first = run("lock", *common, "jobs", "--", sys.executable, "-c", script)
    second = run("lock", *common, "jobs", "--", sys.executable, "-c", script)
    assert first.stdout.strip() == "1" and first.returncode == 5, first.stderr
    assert second.stdout.strip() == "2" and second.returncode == 6, second.stderr

    granted = run("lease", *common, "grant", "30")
    assert granted.returncode == 0, granted.stderr
    lease_id = json.loads(granted.stdout)["id"]
    listed = json.loads(run("lease", *common, "list").stdout)
    assert [row["id"] for row in listed] == [lease_id]
    assert json.loads(run("lease", *common, "revoke", str(lease_id)).stdout) == {
        "revoked": True}
    assert json.loads(run("lease", *common, "list").stdout) == []

    elected = run("elect", *common, "svc", "node-a", "--hold", "0")
    assert elected.returncode == 0, elected.stderr
    assert json.loads(elected.stdout)["value"] == "node-a"

    assert run("kv", *common, "put", "cfg/a", "1").returncode == 0
    assert run("kv", *common, "delete", "cfg/a").returncode == 0
    watched = run("watch", *common, "cfg/", "--start-revision", "1", "--count", "2")
    assert watched.returncode == 0, watched.stderr
    events = [json.loads(line) for line in watched.stdout.splitlines()]
    assert [(e["type"], e["key"], e["value"]) for e in events] == [
        ("put", "cfg/a", "1"), ("delete", "cfg/a", None)]
    assert events[0]["revision"] < events[1]["revision"]
