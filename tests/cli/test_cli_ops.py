"""The command line as an operator uses it, through subprocesses: `status` as a health check,
binary-safe kv values, table output, --listen, and one-line errors that name the thing."""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import pytest
from cli_support import Nodes, one_line_error, run, until_ok

from engine.__main__ import _health
from engine.aio.local_cluster import free_udp_ports
from engine.cli import exitcodes


def members_of(ports: list[int]) -> str:
    return ",".join(f"{i}=127.0.0.1:{port}" for i, port in enumerate(ports, 1))


def test_status_exit_code_is_the_cluster_health(key_file: Path, nodes: Nodes) -> None:
    members = members_of(free_udp_ports(3))
    common = ("--members", members, "--cluster-key-file", str(key_file))
    # Nobody serving: every member unreachable, which is not a healthy cluster (exit code 4).
    nobody = run("status", *common)
    assert nobody.returncode == exitcodes.UNREACHABLE, nobody.stdout
    assert all("error" in s for s in json.loads(nobody.stdout).values())
    # One of three: it answers, but without a quorum there is no leader.
    nodes.start("--node-id", "1", *common)
    lonely = until_ok("status", *common, unless=exitcodes.UNREACHABLE)
    assert lonely.returncode == exitcodes.NO_LEADER, lonely.stdout
    for node_id in (2, 3):
        nodes.start("--node-id", str(node_id), *common)
    healthy = until_ok("status", *common)
    assert healthy.returncode == exitcodes.OK, healthy.stdout
    table = run("status", *common, "--output", "table")
    assert table.returncode == exitcodes.OK
    header, *rows = table.stdout.splitlines()
    assert header.split()[:3] == ["ID", "ADDRESS", "ROLE"] and len(rows) == 3
    assert sorted(row.split()[2] for row in rows) == ["follower", "follower", "leader"]


def test_status_calls_a_member_behind_the_leaders_commit_lagging() -> None:
    leader = {"role": "leader", "commit_index": 5000, "applied_index": 5000}
    follower = {"role": "follower", "commit_index": 5000, "applied_index": 3000}
    assert _health({"1": leader, "2": follower}, max_lag=1000) == (exitcodes.LAGGING, {"2"})
    assert _health({"1": leader, "2": follower}, max_lag=2000) == (exitcodes.OK, set())
    assert _health({"1": {"error": "x"}, "2": follower}, 1000)[0] == exitcodes.NO_LEADER
    assert _health({"1": leader, "2": {"error": "x"}}, 1000)[0] == exitcodes.UNREACHABLE


def test_kv_values_are_binary_safe(key_file: Path, nodes: Nodes, tmp_path: Path) -> None:
    port = free_udp_ports(1)[0]
    common = ("--members", f"1=127.0.0.1:{port}", "--cluster-key-file", str(key_file))
    nodes.start("--node-id", "1", *common)
    blob = bytes(range(256)) * 3 + b"\xff\xfe\x00"   # not UTF-8, NULs included
    assert until_ok("kv", *common, "put", "ready", "1").returncode == 0
    assert run("kv", *common, "put", "blob", "-", stdin=blob).returncode == 0
    got = run("kv", *common, "--hex", "get", "626c6f62")   # "blob" in hex
    assert got.returncode == 0 and bytes.fromhex(json.loads(got.stdout)) == blob
    # Without --hex a non-UTF-8 value is refused in one line, never mangled.
    assert "--hex" in one_line_error(run("kv", *common, "get", "blob"), exitcodes.USAGE)
    source = tmp_path / "value.bin"
    source.write_bytes(blob[::-1])
    assert run("kv", *common, "--hex", "put", "00ff", "--file", str(source)).returncode == 0
    got = run("kv", *common, "--hex", "get", "00ff")
    assert bytes.fromhex(json.loads(got.stdout)) == blob[::-1]
    swapped = run("kv", *common, "--hex", "cas", "00ff", blob[::-1].hex(), "00")
    assert json.loads(swapped.stdout) is True
    assert json.loads(run("kv", *common, "--hex", "get", "00ff").stdout) == "00"
    assert run("kv", *common, "--output", "table", "get", "ready").stdout == "1\n"
    assert "not hex" in one_line_error(run("kv", *common, "--hex", "get", "zz"),
                                       exitcodes.USAGE)


def test_kv_get_timeout_exits_timeout_and_does_not_say_it_may_have_applied(
        key_file: Path) -> None:
    common = ("--members", members_of(free_udp_ports(1)), "--cluster-key-file", str(key_file))
    line = one_line_error(run("kv", *common, "--timeout", "1", "get", "k"), exitcodes.TIMEOUT)
    assert "may have applied" not in line and "a read changes nothing" in line


def test_listen_binds_an_address_other_than_the_member_address(key_file: Path,
                                                                nodes: Nodes) -> None:
    port = free_udp_ports(1)[0]
    advertised = f"1=192.0.2.1:{port}"   # TEST-NET-1: an address of no host here
    common = ("--cluster-key-file", str(key_file))
    refused = run("serve", "--node-id", "1", "--members", advertised, *common)
    line = one_line_error(refused, exitcodes.USAGE)
    assert f"192.0.2.1:{port}" in line and "--listen" in line
    nodes.start("--node-id", "1", "--members", advertised, "--listen", f"127.0.0.1:{port}",
                *common)
    local = ("--members", f"1=127.0.0.1:{port}", *common)
    assert until_ok("kv", *local, "put", "k", "v").returncode == 0
    assert json.loads(run("kv", *local, "get", "k").stdout) == "v"


def test_address_in_use_is_a_one_line_error_naming_the_address(key_file: Path) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as taken:
        taken.bind(("127.0.0.1", 0))
        address = f"127.0.0.1:{taken.getsockname()[1]}"
        result = run("serve", "--node-id", "1", "--members", f"1={address}",
                     "--cluster-key-file", str(key_file))
    line = one_line_error(result, exitcodes.USAGE)
    assert address in line and "in use" in line


def test_unresolvable_host_is_a_one_line_error_naming_the_host(key_file: Path) -> None:
    port = free_udp_ports(1)[0]
    members = f"1=127.0.0.1:{port},2=nohost.invalid:7002"   # .invalid never resolves
    for command in (("serve", "--node-id", "1"), ("status",)):
        result = run(*command, "--members", members, "--cluster-key-file", str(key_file))
        assert "'nohost.invalid'" in one_line_error(result, exitcodes.USAGE)


def test_data_dir_that_is_a_file_is_a_one_line_error_naming_the_path(key_file: Path,
                                                                     tmp_path: Path) -> None:
    afile = tmp_path / "not-a-dir"
    afile.write_text("x")
    for data_dir in (afile, afile / "n1"):
        result = run("serve", "--node-id", "1", "--members", "1=127.0.0.1:7001",
                     "--cluster-key-file", str(key_file), "--data-dir", str(data_dir))
        line = one_line_error(result, exitcodes.USAGE)
        assert str(afile) in line and "is a file" in line


def test_version_is_the_installed_package_version() -> None:
    from importlib.metadata import version

    import engine

    result = run("--version")
    assert result.returncode == 0
    assert result.stdout.strip() == f"engine {version('engine')}" == f"engine {engine.__version__}"


@pytest.mark.parametrize(("module", "args"), [
    ("hdrh", ["--duration", "1"]),
    # matplotlib draws --sweep plots at the end of a run: missing, the run must not start.
    ("matplotlib", ["--duration", "1", "--sweep", "concurrency=1,2"]),
])
def test_bench_without_its_extra_is_a_one_line_error(module: str, args: list[str],
                                                     tmp_path: Path) -> None:
    # A directory first on sys.path whose module cannot be imported: the bench extra missing.
    blocker = tmp_path / "blocked"
    (blocker / module).mkdir(parents=True)
    (blocker / module / "__init__.py").write_text(
        f"raise ModuleNotFoundError(name={module!r})\n")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [str(blocker), os.environ.get("PYTHONPATH", "")]))
    line = one_line_error(run("bench", *args, env=env, timeout=30), exitcodes.USAGE)
    assert f"'{module}'" in line and "engine[bench]" in line
    assert run("--help", env=env).returncode == 0   # the other commands do not need it
