"""`serve` after a fatal storage error, and `snapshot save` / `snapshot restore`.

The disk fills up through a fault hook, not a real full disk: the node runs under a launcher
that makes the WAL's write raise ENOSPC while a marker file exists (what a full disk gives).
"""

from __future__ import annotations

import json
import signal
import textwrap
from pathlib import Path

from cli_support import Nodes, get_all, one_line_error, put_all, run, until_ok

from engine.aio.local_cluster import free_udp_ports
from engine.cli import exitcodes

# A dead node exits within serve's poll interval plus its stop; the rest is process teardown
# on a loaded machine.
EXIT_BOUND_S = 30


def full_disk_launcher(tmp_path: Path, marker: Path) -> Path:
    launcher = tmp_path / "full_disk_serve.py"
    launcher.write_text(textwrap.dedent(f"""
        import errno, os, sys
        import engine.aio.wal as wal
        from engine.__main__ import main

        real_write_all = wal._write_all

        def write_all(fd, data):
            if os.path.exists({str(marker)!r}):
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            return real_write_all(fd, data)

        wal._write_all = write_all
        sys.exit(main(sys.argv[1:]))
    """))
    return launcher


def test_serve_exits_with_the_storage_code_after_a_failed_wal_write_and_restarts_intact(
        key_file: Path, nodes: Nodes, tmp_path: Path) -> None:
    marker = tmp_path / "disk-is-full"
    members = f"1=127.0.0.1:{free_udp_ports(1)[0]}"
    common = ("--members", members, "--cluster-key-file", str(key_file))
    serve = ("--node-id", "1", *common, "--data-dir", str(tmp_path / "n1"))
    node = nodes.start(*serve, python_args=(str(full_disk_launcher(tmp_path, marker)),))
    assert until_ok("kv", *common, "put", "k0", "v0").returncode == 0
    written = {f"k{i}".encode(): f"v{i}".encode() for i in range(20)}
    put_all(members, key_file, written)
    marker.touch()
    failed = run("kv", *common, "--timeout", "2", "put", "lost", "x")
    assert failed.returncode != 0
    # The node stops and the process exits, so a supervisor restarts it (a process idling
    # with its port closed would serve nothing and look alive).
    code = node.wait(timeout=EXIT_BOUND_S)
    stderr = node.stderr.read().decode() if node.stderr else ""
    assert code == exitcodes.STORAGE, stderr
    assert "No space left on device" in stderr.strip().splitlines()[-1]
    assert "Traceback" not in stderr
    # Space is back: a plain restart serves every acknowledged write.
    marker.unlink()
    nodes.start(*serve)
    assert until_ok("kv", *common, "get", "k0").returncode == 0
    assert get_all(members, key_file, list(written)) == written


def test_backup_of_a_killed_cluster_restores_into_a_new_cluster(
        key_file: Path, nodes: Nodes, tmp_path: Path) -> None:
    ports = free_udp_ports(3)
    members = ",".join(f"{i}=127.0.0.1:{p}" for i, p in enumerate(ports, 1))
    common = ("--members", members, "--cluster-key-file", str(key_file))
    started = [nodes.start("--node-id", str(i), *common, "--data-dir", str(tmp_path / f"n{i}"),
                           "--snapshot-entries", "25", "--snapshot-bytes", "100000")
               for i in (1, 2, 3)]
    assert until_ok("kv", *common, "put", "k0", "v0").returncode == 0
    written = {f"k{i}".encode(): f"v{i}".encode() for i in range(60)}
    put_all(members, key_file, written)   # past two snapshots: the backup joins both parts
    assert run("kv", *common, "delete", "k7").returncode == 0
    del written[b"k7"]
    status = json.loads(run("status", *common).stdout)
    leader = next(int(i) for i, s in status.items() if s.get("role") == "leader")
    for process in started:
        process.send_signal(signal.SIGKILL)
        process.wait()

    backup = tmp_path / "backup.snap"
    saved = run("snapshot", "save", str(backup), "--data-dir", str(tmp_path / f"n{leader}"))
    assert saved.returncode == 0, saved.stderr
    assert json.loads(saved.stdout)["index"] >= 61

    new_members = ",".join(f"{i}=127.0.0.1:{p}" for i, p in enumerate(free_udp_ports(3), 1))
    new = ("--members", new_members, "--cluster-key-file", str(key_file))
    for i in (1, 2, 3):
        restored = run("snapshot", "restore", str(backup), "--data-dir",
                       str(tmp_path / f"new{i}"))
        assert restored.returncode == 0, restored.stderr
        nodes.start("--node-id", str(i), *new, "--data-dir", str(tmp_path / f"new{i}"))
    assert until_ok("kv", *new, "put", "after", "restore").returncode == 0
    assert get_all(new_members, key_file, [*written, b"k7"]) == {**written, b"k7": None}
    # The backup is checksummed, and a restore never overwrites a data dir.
    damaged = tmp_path / "damaged.snap"
    data = bytearray(backup.read_bytes())
    data[len(data) // 2] ^= 1
    damaged.write_bytes(bytes(data))
    refused = run("snapshot", "restore", str(damaged), "--data-dir", str(tmp_path / "fresh"))
    assert refused.returncode == exitcodes.USAGE and str(damaged) in refused.stderr
    reused = run("snapshot", "restore", str(backup), "--data-dir", str(tmp_path / "new1"))
    assert reused.returncode == exitcodes.USAGE and "not empty" in reused.stderr


def test_a_node_restored_alone_serves_the_backup(key_file: Path, tmp_path: Path,
                                                 nodes: Nodes) -> None:
    """Restore needs no source: the backup file is all (here a one-node cluster's)."""
    port = free_udp_ports(1)[0]
    common = ("--members", f"1=127.0.0.1:{port}", "--cluster-key-file", str(key_file))
    source = nodes.start("--node-id", "1", *common, "--data-dir", str(tmp_path / "src"))
    assert until_ok("kv", *common, "put", "only", "value").returncode == 0
    source.send_signal(signal.SIGKILL)
    source.wait()
    backup = tmp_path / "one.snap"
    assert run("snapshot", "save", str(backup), "--data-dir", str(tmp_path / "src")
               ).returncode == 0
    assert run("snapshot", "restore", str(backup), "--data-dir", str(tmp_path / "dst")
               ).returncode == 0
    nodes.start("--node-id", "1", *common, "--data-dir", str(tmp_path / "dst"))
    got = until_ok("kv", *common, "get", "only")
    assert json.loads(got.stdout) == "value", got.stderr


def test_snapshot_errors_are_one_line_and_name_the_path(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-dir"
    line = one_line_error(run("snapshot", "save", str(tmp_path / "b.snap"), "--data-dir",
                              str(missing)), exitcodes.USAGE)
    assert str(missing) in line
    line = one_line_error(run("snapshot", "restore", str(tmp_path / "absent.snap"),
                              "--data-dir", str(tmp_path / "d")), exitcodes.USAGE)
    assert "absent.snap" in line
