"""`serve --encrypt` and the client commands' `--encrypt` (payload encryption,
docs/security.md): through subprocesses, as a user runs them."""

from __future__ import annotations

import json
import os
from pathlib import Path

from cli_support import Nodes, one_line_error, run, until_ok

from engine.aio.local_cluster import free_udp_ports
from engine.cli import exitcodes


def env_with(**values: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ENGINE_")}
    env.update(values)
    return env


def test_an_encrypting_node_serves_encrypting_clients_only(key_file: Path, nodes: Nodes,
                                                           tmp_path: Path) -> None:
    """The switch as a flag, an ENGINE_ENCRYPT variable and a config-file key alike."""
    (port,) = free_udp_ports(1)
    members = f"1=127.0.0.1:{port}"
    config = tmp_path / "node.toml"
    config.write_text("encrypt = true\n")
    nodes.start("--node-id", "1", "--members", members, "--cluster-key-file", str(key_file),
                "--campaign", "--config", str(config))
    common = ["--members", members, "--cluster-key-file", str(key_file)]
    put = until_ok("kv", *common, "--encrypt", "put", "greeting", "hello")
    assert put.returncode == 0, put.stderr
    get = run("kv", *common, "get", "greeting", env=env_with(ENGINE_ENCRYPT="1"))
    assert json.loads(get.stdout) == "hello"
    status = run("status", *common, "--config", str(config))
    assert status.returncode == exitcodes.OK, status.stdout
    # A cleartext client gets no answer: the node drops and counts its frames (wrong_mode).
    cleartext = run("kv", *common, "--timeout", "1", "get", "greeting",
                    env=env_with(ENGINE_ENCRYPT="no"))
    assert cleartext.returncode == exitcodes.TIMEOUT, cleartext.stderr
    assert run("status", *common, env=env_with()).returncode == exitcodes.UNREACHABLE


def test_a_bad_switch_value_is_a_usage_error() -> None:
    result = run("status", "--members", "1=127.0.0.1:7001", env=env_with(ENGINE_ENCRYPT="maybe"))
    assert "ENGINE_ENCRYPT" in one_line_error(result, exitcodes.USAGE)
