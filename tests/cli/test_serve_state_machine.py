"""`serve --state-machine MODULE:CLASS`: a user's engine.StateMachine served by `serve`
processes and driven with engine.Client.call / query; a bad spec, a missing module or class,
and an object that is not a state machine are one-line usage errors."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from cli_support import Nodes, one_line_error, run, until_ok

from engine.__main__ import parse_members, read_cluster_key
from engine.aio.client import Client
from engine.aio.local_cluster import free_udp_ports
from engine.cli import exitcodes

HERE = Path(__file__).resolve().parent   # holds counter_machine.py


@pytest.fixture(autouse=True)
def _in_tests_dir(monkeypatch: pytest.MonkeyPatch) -> None:
    # `python -m engine` imports the user's module from the working directory, as a user
    # running it in their project would.
    monkeypatch.chdir(HERE)


def common_args(key_file: Path, n: int) -> tuple[str, ...]:
    members = ",".join(f"{i}=127.0.0.1:{port}" for i, port in enumerate(free_udp_ports(n), 1))
    return ("--members", members, "--cluster-key-file", str(key_file))


def test_three_serve_processes_replicate_a_user_state_machine(key_file: Path,
                                                               nodes: Nodes) -> None:
    common = common_args(key_file, 3)
    for node_id in (1, 2, 3):
        nodes.start("--node-id", str(node_id), *common,
                    "--state-machine", "counter_machine:Counter")
    assert until_ok("status", *common).returncode == exitcodes.OK
    addresses = list(parse_members(common[1]).values())

    async def drive() -> list[bytes]:
        async with Client(addresses, cluster_key=read_cluster_key(str(key_file)),
                          timeout=30) as client:
            return [await client.call(b"5"), await client.call(b"2"),
                    await client.query(b""), await client.query(b"", mode="lease")]

    assert asyncio.run(drive()) == [b"5", b"7", b"7", b"7"]


@pytest.mark.parametrize(("spec", "says"), [
    ("counter_machine.Counter", "expected MODULE:CLASS"),
    ("no_such_module_here:Counter", "no module named 'no_such_module_here'"),
    ("counter_machine:Missing", "has no 'Missing'"),
    ("counter_machine:NotAMachine", "is not an engine.StateMachine (missing query, snapshot"),
    ("counter_machine:NeedsArguments", "NeedsArguments() failed: TypeError"),
])
def test_a_bad_state_machine_is_a_one_line_usage_error(key_file: Path, spec: str,
                                                       says: str) -> None:
    result = run("serve", "--node-id", "1", *common_args(key_file, 1),
                 "--state-machine", spec, timeout=60)
    assert says in one_line_error(result, exitcodes.USAGE)
