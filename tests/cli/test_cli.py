"""The command line: one-line errors for bad input, and the serve/status/kv round trip.

Method: run `python -m engine ...` as a user would (subprocesses), check exit codes, stdout
JSON and that stderr holds one line and no traceback for every bad input.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from engine.aio.local_cluster import free_udp_ports


def run(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "engine", *args], capture_output=True, text=True,
        timeout=timeout, stdin=subprocess.DEVNULL,
    )


@pytest.fixture
def key_file(tmp_path: Path) -> Path:
    path = tmp_path / "cluster.key"
    result = run("keygen", str(path))
    assert result.returncode == 0, result.stderr
    assert len(bytes.fromhex(path.read_text().strip())) == 32
    return path


@pytest.mark.parametrize("args", [
    ["serve", "--node-id", "1", "--members", "1=nonsense", "--cluster-key-file", "KEY"],
    ["serve", "--node-id", "4", "--members", "1=127.0.0.1:7001", "--cluster-key-file", "KEY"],
    ["serve", "--node-id", "1", "--members", "1=127.0.0.1:7001,1=127.0.0.1:7002",
     "--cluster-key-file", "KEY"],
    ["serve", "--node-id", "1", "--members", "1=127.0.0.1:7001", "--cluster-key-file",
     "/nonexistent/key"],
    ["serve", "--node-id", "1", "--members", "1=127.0.0.1:7001", "--cluster-key-file", "SHORT"],
    ["status", "--members", "x=1", "--cluster-key-file", "KEY"],
    ["bench", "--nodes", "4"],
    ["bench", "--concurrency", "0"],
    ["keygen", "KEY"],  # exists already
])
def test_bad_input_gets_one_line_error_and_status_2(args: list[str], key_file: Path,
                                                     tmp_path: Path) -> None:
    short = tmp_path / "short.key"
    short.write_bytes(b"tooshort")
    args = [str(key_file) if a == "KEY" else str(short) if a == "SHORT" else a for a in args]
    result = run(*args)
    assert result.returncode == 2, (result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert "Traceback" not in result.stderr


def test_serve_status_kv_and_clean_sigterm(key_file: Path, tmp_path: Path) -> None:
    ports = free_udp_ports(3)
    members = ",".join(f"{i}=127.0.0.1:{p}" for i, p in enumerate(ports, 1))
    processes = [
        subprocess.Popen(
            [sys.executable, "-m", "engine", "serve", "--node-id", str(i), "--members", members,
             "--cluster-key-file", str(key_file), "--data-dir", str(tmp_path / f"n{i}")],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        for i in (1, 2, 3)
    ]
    try:
        common = ["--members", members, "--cluster-key-file", str(key_file)]
        deadline = time.monotonic() + 20
        while True:
            put = run("kv", *common, "put", "greeting", "hello")
            if put.returncode == 0 or time.monotonic() > deadline:
                break
        assert put.returncode == 0, put.stderr
        assert json.loads(put.stdout) == "ok"
        get = run("kv", *common, "get", "greeting")
        assert json.loads(get.stdout) == "hello"
        cas = run("kv", *common, "cas", "greeting", "hello", "bye")
        assert json.loads(cas.stdout) is True
        cas_again = run("kv", *common, "cas", "greeting", "hello", "nope")
        assert json.loads(cas_again.stdout) is False
        assert json.loads(run("kv", *common, "delete", "greeting").stdout) is True
        assert json.loads(run("kv", *common, "get", "greeting").stdout) is None
        status = json.loads(run("status", *common).stdout)
        assert sorted(status) == ["1", "2", "3"]
        roles = sorted(node["role"] for node in status.values())
        assert roles == ["follower", "follower", "leader"], status
    finally:
        for process in processes:
            process.send_signal(signal.SIGTERM)
        codes = [process.wait(timeout=10) for process in processes]
        errors = [process.stderr.read() for process in processes if process.stderr]
    assert codes == [0, 0, 0], errors
    assert not any("Traceback" in e for e in errors), errors


def test_pure_python_install_flag_is_parsed_like_setup_py() -> None:
    from engine._core import flag

    os.environ["ENGINE_TEST_FLAG"] = "Yes"
    try:
        assert flag("ENGINE_TEST_FLAG")
    finally:
        del os.environ["ENGINE_TEST_FLAG"]
    assert not flag("ENGINE_TEST_FLAG")


def test_transfer_moves_leadership(key_file: Path, tmp_path: Path) -> None:
    ports = free_udp_ports(3)
    members = ",".join(f"{i}=127.0.0.1:{p}" for i, p in enumerate(ports, 1))
    processes = [
        subprocess.Popen(
            [sys.executable, "-m", "engine", "serve", "--node-id", str(i), "--members", members,
             "--cluster-key-file", str(key_file)],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
            text=True,
        )
        for i in (1, 2, 3)
    ]
    try:
        common = ["--members", members, "--cluster-key-file", str(key_file)]
        deadline = time.monotonic() + 20
        leader = None
        while leader is None and time.monotonic() < deadline:
            status = json.loads(run("status", *common).stdout)
            leader = next((int(i) for i, s in status.items() if s.get("role") == "leader"), None)
        assert leader is not None
        target = 1 if leader != 1 else 2
        moved = run("transfer", *common, "--to", str(target))
        assert moved.returncode == 0, moved.stderr
        status = json.loads(run("status", *common).stdout)
        assert status[str(target)]["role"] == "leader", status
        bad = run("transfer", *common, "--to", "9")
        assert bad.returncode == 2 and bad.stderr.startswith("error: ")
    finally:
        for process in processes:
            process.send_signal(signal.SIGTERM)
        for process in processes:
            process.wait(timeout=10)
