"""The README's quickstart is what CI runs (its test command appears verbatim in .ci/run), and
every example in the README runs."""

from __future__ import annotations

import ast
import json
import os
import re
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from engine.aio.local_cluster import free_udp_ports

ROOT = Path(__file__).resolve().parent.parent


def quickstart_commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    section = text.split("## Quickstart", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```sh\n(.*?)\n```", section, flags=re.S)


def test_quickstart_has_exactly_two_commands() -> None:
    commands = quickstart_commands()
    assert len(commands) == 2, commands
    assert all("\n" not in command for command in commands)
    assert "python -m engine bench" in commands[0]
    assert "pytest" in commands[1]


def test_ci_runs_the_readme_test_command_verbatim() -> None:
    test_command = quickstart_commands()[1]
    ci_lines = (ROOT / ".ci" / "run").read_text().splitlines()
    assert test_command in ci_lines


# ---------------------------------------------------------------- every example is run
#
# Method: each ```python block of the README runs in a fresh interpreter (a subprocess with a
# timeout, so a hung example fails instead of hanging the suite). A block that runs itself
# (`asyncio.run(...)`) runs as it is; what its `print(...)  # VALUE` lines promise must be
# printed. Any other block is a fragment that continues "your cluster" with top-level awaits:
# it runs inside a 3-node LocalCluster that provides the names such fragments use (`engine`,
# `members`, `key`, `leader`), its placeholder addresses (10.0.0.N:PORT) mapped to free
# loopback ports. The shell block that starts a cluster runs under bash, its ports mapped to
# free ones; the Quickstart's two install commands are not run here (the first installs
# and runs the 10-second benchmark, which tests/bench covers; the second is this suite).

EXAMPLE_TIMEOUT_S = 120  # a stuck example fails; the slowest takes a few seconds


def fenced_blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", (ROOT / "README.md").read_text(), flags=re.S)


def run_python(source: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", source], capture_output=True, text=True,
                          timeout=EXAMPLE_TIMEOUT_S, cwd=cwd, stdin=subprocess.DEVNULL)


def promised_output(block: str) -> list[str]:
    """The repr of every value a `print(...)  # VALUE` comment promises, in order."""
    promised: list[str] = []
    for comment in re.findall(r"^\s*print\(.*\)\s*#\s*(.+?)\s*$", block, flags=re.M):
        value = ast.literal_eval(comment)
        promised.extend(repr(v) for v in (value if isinstance(value, tuple) else (value,)))
    return promised


FRAGMENT_HARNESS = '''
import asyncio, json
import engine
from engine.aio.local_cluster import free_udp_ports

async def example(engine, members, key, leader):
{body}
    return locals()

async def main():
    async with engine.LocalCluster(n=3) as cluster:
        leader = await cluster.wait_leader()
        if leader.node_id != 1:  # a fixed leader: the fragment may remove any other node
            await leader.transfer_leadership(1)
            leader = await cluster.wait_leader(among=[1])
        names = await example(engine, dict(cluster.members), cluster.cluster_key, leader)
        for value in names.values():  # nodes the fragment started
            if isinstance(value, engine.Node) and value.running:
                await value.stop()
        print(json.dumps(leader.members()))

asyncio.run(main())
'''


def fragment_script(block: str) -> str:
    placeholders = sorted(set(re.findall(r"10\.0\.0\.\d+:\d+", block)))
    ports = free_udp_ports(len(placeholders))
    for placeholder, port in zip(placeholders, ports, strict=True):
        block = block.replace(placeholder, f"127.0.0.1:{port}")
    return FRAGMENT_HARNESS.format(body=textwrap.indent(block, "    "))


@pytest.mark.parametrize("index", range(len(fenced_blocks("python"))))
def test_readme_python_example_runs(index: int, tmp_path: Path) -> None:
    block = fenced_blocks("python")[index]
    if "asyncio.run(" in block:
        result = run_python(block, tmp_path)
    else:
        result = run_python(fragment_script(block), tmp_path)
    assert result.returncode == 0, result.stderr
    printed = iter(result.stdout.splitlines())
    for expected in promised_output(block):  # in order
        assert any(line.strip() == expected for line in printed), (expected, result.stdout)
    if "remove_member(2)" in block:  # the membership example's end state
        final = json.loads(result.stdout.splitlines()[-1])
        assert sorted(final["voters"]) == [1, 3, 4], final


def test_readme_has_python_examples_of_both_kinds() -> None:
    blocks = fenced_blocks("python")
    assert any("asyncio.run(" in block for block in blocks)
    assert any("asyncio.run(" not in block for block in blocks)


def server_blocks() -> list[str]:
    return [block for block in fenced_blocks("sh") if "engine serve" in block]


def test_every_readme_shell_block_is_run_or_is_a_quickstart_install() -> None:
    quickstart = quickstart_commands()
    for block in fenced_blocks("sh"):
        assert block.strip() in quickstart or block in server_blocks(), block


@pytest.mark.parametrize("index", range(len(server_blocks())))
def test_readme_server_cluster_shell_example_runs(index: int, tmp_path: Path) -> None:
    block = server_blocks()[index]
    placeholders = sorted(set(re.findall(r"127\.0\.0\.1:\d+", block)))
    ports = free_udp_ports(len(placeholders))
    for placeholder, port in zip(placeholders, ports, strict=True):
        block = block.replace(placeholder, f"127.0.0.1:{port}")
    # The servers it starts in the background are stopped (SIGTERM) when the script ends.
    script = "set -eu\ntrap 'kill $(jobs -p) 2>/dev/null; wait' EXIT\n" + block
    process = subprocess.Popen(["bash", "-c", script], cwd=tmp_path, text=True,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               stdin=subprocess.DEVNULL, start_new_session=True)
    try:
        stdout, stderr = process.communicate(timeout=EXAMPLE_TIMEOUT_S)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    assert process.returncode == 0, (stdout, stderr)
    assert "Traceback" not in stderr and "error:" not in stderr, stderr
    if "get greeting" in block:
        assert '"hello"' in stdout.splitlines(), stdout
