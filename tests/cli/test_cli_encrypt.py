"""`serve --encrypt` and the client commands' `--encrypt` (payload encryption,
docs/security.md): through subprocesses, as a user runs them."""

from __future__ import annotations

import json
from pathlib import Path

from cli_support import Nodes, run, until_ok

from engine.aio.local_cluster import free_udp_ports
from engine.cli import exitcodes


def test_an_encrypting_node_serves_encrypting_clients_only(key_file: Path, nodes: Nodes
                                                           ) -> None:
    (port,) = free_udp_ports(1)
    members = f"1=127.0.0.1:{port}"
    nodes.start("--node-id", "1", "--members", members, "--cluster-key-file", str(key_file),
                "--campaign", "--encrypt")
    common = ["--members", members, "--cluster-key-file", str(key_file)]
    put = until_ok("kv", *common, "--encrypt", "put", "greeting", "hello")
    assert put.returncode == 0, put.stderr
    get = run("kv", *common, "--encrypt", "get", "greeting")
    assert json.loads(get.stdout) == "hello"
    status = run("status", *common, "--encrypt")
    assert status.returncode == exitcodes.OK, status.stdout
    # A cleartext client gets no answer: the node drops and counts its frames (wrong_mode).
    cleartext = run("kv", *common, "--timeout", "1", "get", "greeting")
    assert cleartext.returncode == exitcodes.TIMEOUT, cleartext.stderr
    assert run("status", *common).returncode == exitcodes.UNREACHABLE
