"""`snapshot save FILE --members ...`: a backup taken from a running cluster of `serve`
processes (engine.Client.snapshot underneath), restored into a new cluster."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

from cli_support import Nodes, get_all, one_line_error, put_all, run, until_ok

import engine
from engine.__main__ import read_cluster_key
from engine.aio.local_cluster import free_udp_ports
from engine.cli import exitcodes
from engine.replication.snapshot import decode_snapshot


def test_online_backup_of_a_running_cluster_restores_into_a_new_cluster(
        key_file: Path, nodes: Nodes, tmp_path: Path) -> None:
    ports = free_udp_ports(3)
    members = ",".join(f"{i}=127.0.0.1:{p}" for i, p in enumerate(ports, 1))
    common = ("--members", members, "--cluster-key-file", str(key_file))
    started = [nodes.start("--node-id", str(i), *common, "--data-dir", str(tmp_path / f"n{i}"),
                           "--snapshot-entries", "50")
               for i in (1, 2, 3)]
    assert until_ok("kv", *common, "put", "k0", "v0").returncode == 0
    written = {f"k{i}".encode(): os.urandom(300).hex().encode() for i in range(300)}
    put_all(members, key_file, written)   # ~180 KB: several chunks, past several snapshots
    assert run("kv", *common, "delete", "k7").returncode == 0
    del written[b"k7"]

    backup = tmp_path / "online.snap"
    saved = run("snapshot", "save", str(backup), *common)
    assert saved.returncode == 0, saved.stderr
    result = json.loads(saved.stdout)
    assert result["file"] == str(backup) and result["bytes"] == backup.stat().st_size
    assert result["index"] >= 302   # every acknowledged write: 301 puts and the delete
    # The same through the library's blocking client.
    with engine.SyncClient(list(dict(p.split("=") for p in members.split(",")).values()),
                           cluster_key=read_cluster_key(str(key_file))) as client:
        again = client.snapshot(str(tmp_path / "sync.snap"))
    assert decode_snapshot(again).index >= result["index"]
    for process in started:   # the old cluster is gone for good
        process.send_signal(signal.SIGKILL)
        process.wait()

    new_members = ",".join(f"{i}=127.0.0.1:{p}" for i, p in enumerate(free_udp_ports(3), 1))
    new = ("--members", new_members, "--cluster-key-file", str(key_file))
    for i in (1, 2, 3):
        restored = run("snapshot", "restore", str(backup), "--data-dir",
                       str(tmp_path / f"new{i}"))
        assert restored.returncode == 0, restored.stderr
        assert json.loads(restored.stdout)["index"] == result["index"]
        nodes.start("--node-id", str(i), *new, "--data-dir", str(tmp_path / f"new{i}"))
    assert until_ok("kv", *new, "put", "after", "restore").returncode == 0
    assert get_all(new_members, key_file, [*written, b"k7"]) == {**written, b"k7": None}


def test_the_flags_pick_online_or_offline_before_the_environment(
        key_file: Path, nodes: Nodes, tmp_path: Path) -> None:
    port = free_udp_ports(1)[0]
    members = f"1=127.0.0.1:{port}"
    common = ("--members", members, "--cluster-key-file", str(key_file))
    nodes.start("--node-id", "1", *common, "--data-dir", str(tmp_path / "n1"))
    assert until_ok("kv", *common, "put", "only", "value").returncode == 0
    env = {**os.environ, "ENGINE_MEMBERS": members, "ENGINE_CLUSTER_KEY_FILE": str(key_file),
           "ENGINE_DATA_DIR": str(tmp_path / "absent")}
    # A node's own settings name both: the data dir wins, unless a flag says --members.
    offline = run("snapshot", "save", str(tmp_path / "a.snap"), env=env)
    assert offline.returncode == exitcodes.USAGE and "absent" in offline.stderr
    online = run("snapshot", "save", str(tmp_path / "b.snap"), "--members", members, env=env)
    assert online.returncode == 0, online.stderr
    offline = run("snapshot", "save", str(tmp_path / "c.snap"), "--data-dir",
                  str(tmp_path / "n1"), env=env)
    assert offline.returncode == 0, offline.stderr


def test_online_save_errors_have_their_exit_codes(key_file: Path, tmp_path: Path) -> None:
    # Nobody listens there: no answer is a timeout, and nothing is written.
    nobody = f"1=127.0.0.1:{free_udp_ports(1)[0]}"
    target = tmp_path / "never.snap"
    line = one_line_error(run("snapshot", "save", str(target), "--members", nobody,
                              "--cluster-key-file", str(key_file), "--timeout", "1"),
                          exitcodes.TIMEOUT)
    assert "no snapshot" in line and not target.exists()
    line = one_line_error(run("snapshot", "save", str(target), env={
        k: v for k, v in os.environ.items() if not k.startswith("ENGINE_")}), exitcodes.USAGE)
    assert "--data-dir" in line and "--members" in line
    line = one_line_error(run("snapshot", "save", str(tmp_path / "no" / "dir.snap"),
                              "--members", nobody, "--cluster-key-file", str(key_file)),
                          exitcodes.USAGE)
    assert "does not exist" in line
