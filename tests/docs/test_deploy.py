"""The deployment files in deploy/ run commands the command line accepts.

Method: no docker engine or systemd manager is needed. The compose file that
deploy/compose.py generates is parsed with PyYAML and every service's command is parsed by
engine.__main__'s own argument parser (an unknown or missing flag fails), then checked against
the service's network address, published port, volume and secret. The systemd unit's
ExecStart is parsed the same way after systemd's specifiers are expanded, and the unit goes
through `systemd-analyze verify`. docs/deployment.md shows both files verbatim: checked too.
"""

from __future__ import annotations

import argparse
import importlib.util
import ipaddress
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml

from engine.__main__ import build_parser, parse_members

ROOT = Path(__file__).resolve().parents[2]
UNIT = ROOT / "deploy" / "engine@.service"
GUIDE = ROOT / "docs" / "deployment.md"


def load_compose_module() -> ModuleType:
    spec = importlib.util.spec_from_file_location("deploy_compose", ROOT / "deploy" / "compose.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


compose_module = load_compose_module()


def serve_flags() -> set[str]:
    parser = build_parser()
    (commands,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return set(commands.choices["serve"]._option_string_actions)


def parse_serve(argv: list[str]) -> argparse.Namespace:
    """`python -m engine ARGV` as main() would parse it; an unknown flag fails the test, and
    so does an abbreviated one (argparse would accept `--node` for `--node-id`)."""
    flags = [arg.partition("=")[0] for arg in argv if arg.startswith("--")]
    assert set(flags) <= serve_flags(), set(flags) - serve_flags()
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:  # argparse's way of refusing
        raise AssertionError(f"python -m engine refuses {argv}") from exc
    assert args.command == "serve"
    return args


def fenced_blocks(text: str, language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", text, flags=re.S)


@pytest.mark.parametrize("nodes", [1, 3, 5])
def test_compose_services_run_serve_with_flags_the_parser_accepts(nodes: int) -> None:
    document = yaml.safe_load(compose_module.render(nodes))
    services: dict[str, Any] = document["services"]
    assert sorted(services) == sorted(f"node{i}" for i in range(1, nodes + 1))
    subnet = ipaddress.ip_network(document["networks"]["engine"]["ipam"]["config"][0]["subnet"])
    host_ports = set()
    for name, service in services.items():
        args = parse_serve(service["command"])
        assert name == f"node{args.node_id}"
        members = parse_members(args.members)
        assert sorted(members) == list(range(1, nodes + 1))
        # The node's own member address is the fixed address it has on the network.
        own_ip = service["networks"]["engine"]["ipv4_address"]
        assert ipaddress.ip_address(own_ip) in subnet
        host, _, port = members[args.node_id].rpartition(":")
        assert host == own_ip
        # Its UDP port is the one published, and over UDP.
        (published,) = service["ports"]
        host_port, _, container = published.partition(":")
        assert container == f"{port}/udp"
        host_ports.add(int(host_port))
        # The WAL lives on the node's own named volume, the key is the compose secret.
        (volume,) = service["volumes"]
        volume_name, _, target = volume.partition(":")
        assert target == args.data_dir and volume_name in document["volumes"]
        (secret,) = service["secrets"]
        assert secret in document["secrets"]
        assert args.cluster_key_file == f"/run/secrets/{secret}"
        assert not args.no_fsync  # a deployment is durable
    assert len(host_ports) == nodes
    member_lists = {parse_serve(s["command"]).members for s in services.values()}
    assert len(member_lists) == 1  # every node is given the same members


def test_compose_image_entrypoint_is_python_m_engine() -> None:
    build = yaml.safe_load(compose_module.render())["services"]["node1"]["build"]
    dockerfile = (ROOT / build["context"] / build["dockerfile"]).read_text()
    entrypoints = re.findall(r"^ENTRYPOINT (.*)$", dockerfile, flags=re.M)
    assert [yaml.safe_load(e) for e in entrypoints] == [["python", "-m", "engine"]]


def test_compose_script_prints_the_document_shown_in_the_guide() -> None:
    printed = subprocess.run(
        [sys.executable, str(ROOT / "deploy" / "compose.py")], capture_output=True,
        text=True, timeout=60, check=True,
    ).stdout
    assert printed == compose_module.render(3)
    assert compose_module.render(3) in fenced_blocks(GUIDE.read_text(), "yaml")


def unit_sections(text: str) -> dict[str, dict[str, str]]:
    """systemd's unit syntax: [Section] then Key=Value lines, # comments."""
    sections: dict[str, dict[str, str]] = {}
    current: dict[str, str] | None = None
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], {})
            continue
        key, sep, value = line.partition("=")
        assert sep and current is not None, f"not a unit line: {line!r}"
        assert key not in current, f"{key} set twice"
        current[key] = value
    return sections


def test_systemd_unit_execstart_is_a_serve_the_parser_accepts() -> None:
    sections = unit_sections(UNIT.read_text())
    service = sections["Service"]
    assert sections["Install"]["WantedBy"] == "multi-user.target"
    # Expand what systemd would for instance 7: %i, %d (credentials) and the environment.
    command = service["ExecStart"]
    for placeholder, value in {
        "%i": "7", "%d": "/run/credentials/engine@7.service",
        "${ENGINE_MEMBERS}": "7=10.0.0.7:7001,8=10.0.0.8:7001,9=10.0.0.9:7001",
        "%S": "/var/lib",
    }.items():
        command = command.replace(placeholder, value)
    assert "%" not in command and "$" not in command, command
    argv = shlex.split(command)
    assert argv[1:3] == ["-m", "engine"]
    args = parse_serve(argv[3:])
    assert args.node_id == 7 and args.data_dir == "/var/lib/engine/n7"
    assert args.cluster_key_file == "/run/credentials/engine@7.service/cluster.key"
    # The credential it reads is the key systemd loads for it; the data dir is its state dir.
    assert service["LoadCredential"] == "cluster.key:/etc/engine/cluster.key"
    assert service["StateDirectory"] == "engine"
    assert not args.no_fsync


def test_systemd_unit_is_shown_verbatim_in_the_guide() -> None:
    assert UNIT.read_text() in fenced_blocks(GUIDE.read_text(), "ini")


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="needs systemd-analyze")
def test_systemd_analyze_verifies_the_unit(tmp_path: Path) -> None:
    # The unit names the interpreter of an install in /opt/engine; verify checks that the
    # executable exists, so point it at this interpreter.
    text = UNIT.read_text()
    assert "ExecStart=/opt/engine/bin/python " in text
    unit = tmp_path / "engine@1.service"
    unit.write_text(text.replace("/opt/engine/bin/python", sys.executable))
    result = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True,
                            text=True, timeout=60)
    # verify exits 0 even for unknown keys and bad values: it only warns, on stderr.
    assert result.returncode == 0 and result.stderr.strip() == "", result.stderr
