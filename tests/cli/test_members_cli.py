"""`python -m engine members add|remove|promote|list` against `serve` processes, and its
one-line errors (the style of `transfer`): a refusal exits REJECTED, bad input USAGE."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from engine.aio.local_cluster import free_udp_ports
from engine.cli.exitcodes import REJECTED, USAGE


def run(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "engine", *args], capture_output=True,
                          text=True, timeout=timeout, stdin=subprocess.DEVNULL)


def serve(node_id: int, members: str, key: Path, data: Path, *extra: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "engine", "serve", "--node-id", str(node_id), "--members",
         members, "--cluster-key-file", str(key), "--data-dir", str(data / f"n{node_id}"),
         *extra],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def one_line_error(result: subprocess.CompletedProcess[str], code: int = USAGE) -> str:
    assert result.returncode == code, (result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    return lines[0]


def test_members_add_list_remove(tmp_path: Path) -> None:
    key = tmp_path / "cluster.key"
    assert run("keygen", str(key)).returncode == 0
    ports = free_udp_ports(4)
    addresses = {i: f"127.0.0.1:{p}" for i, p in enumerate(ports, 1)}
    original = ",".join(f"{i}={addresses[i]}" for i in (1, 2, 3))
    processes = [serve(i, original, key, tmp_path) for i in (1, 2, 3)]
    try:
        common = ["--members", original, "--cluster-key-file", str(key)]
        deadline = time.monotonic() + 20
        while run("kv", *common, "--timeout", "2", "put", "k", "v").returncode != 0:
            assert time.monotonic() < deadline, "no leader"
        # The 4th node joins as a learner (members = the existing ones plus itself).
        processes.append(serve(4, f"{original},4={addresses[4]}", key, tmp_path, "--join"))
        added = run("members", *common, "add", "--id", "4", "--address", addresses[4])
        assert added.returncode == 0, added.stderr
        assert json.loads(added.stdout)["voters"] == [1, 2, 3, 4]
        listed = run("members", *common, "list")
        assert listed.returncode == 0, listed.stderr
        view = json.loads(listed.stdout)
        assert view["voters"] == [1, 2, 3, 4] and view["addresses"]["4"] == addresses[4]
        # Refusals are one line, exit status REJECTED (the cluster said no); bad input USAGE.
        assert "already a member" in one_line_error(
            run("members", *common, "add", "--id", "2", "--address", "127.0.0.1:1"), REJECTED)
        assert "not a member" in one_line_error(
            run("members", *common, "remove", "--id", "9"), REJECTED)
        assert "not a learner" in one_line_error(
            run("members", *common, "promote", "--id", "9"), REJECTED)
        assert "host:port" in one_line_error(
            run("members", *common, "add", "--id", "5", "--address", "nowhere"))
        removed = run("members", *common, "remove", "--id", "4")
        assert removed.returncode == 0, removed.stderr
        assert json.loads(removed.stdout)["voters"] == [1, 2, 3]
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()


@pytest.mark.parametrize("args", [
    ["serve", "--node-id", "1", "--members", "1=127.0.0.1:7001", "--cluster-key-file", "KEY",
     "--protocol", "paxos", "--join"],
    ["members", "--members", "x=1", "--cluster-key-file", "KEY", "list"],
])
def test_members_bad_input_is_one_line(args: list[str], tmp_path: Path) -> None:
    key = tmp_path / "cluster.key"
    assert run("keygen", str(key)).returncode == 0
    one_line_error(run(*[str(key) if a == "KEY" else a for a in args]))
