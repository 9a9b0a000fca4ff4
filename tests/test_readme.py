"""The README's quickstart is what CI runs (its test command appears verbatim in .ci/run), and
every example in the README runs."""

from __future__ import annotations

import ast
import json
import os
import re
import shlex
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


RUN_MARK = "<!-- run by tests/test_readme.py -->"


def marked_python_examples() -> list[str]:
    """The README's Python blocks preceded by RUN_MARK, in order."""
    text = (ROOT / "README.md").read_text()
    return re.findall(re.escape(RUN_MARK) + r"\n```python\n(.*?)\n```", text, flags=re.S)


def test_readme_python_examples_are_marked_to_run() -> None:
    assert len(marked_python_examples()) == 2
    assert (ROOT / "README.md").read_text().count(RUN_MARK) == len(marked_python_examples())


def test_readme_python_examples_run() -> None:
    """Each marked block runs as written, with `engine`, and `addresses` and `key` of a
    cluster running in another thread (what the text says a block may assume)."""
    import asyncio
    import contextlib
    import io
    import threading

    import engine

    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    cluster = engine.LocalCluster(n=3)

    def run(coroutine: object) -> object:
        return asyncio.run_coroutine_threadsafe(coroutine, loop).result(timeout=60)  # type: ignore[arg-type]

    run(cluster.start())
    try:
        run(cluster.wait_leader())
        for example in marked_python_examples():
            namespace = {"engine": engine, "addresses": list(cluster.members.values()),
                         "key": cluster.cluster_key}
            output = io.StringIO()
            with contextlib.redirect_stdout(output):
                exec(compile(example, "README.md", "exec"), namespace)
            assert output.getvalue().strip(), example
    finally:
        run(cluster.close())
        loop.call_soon_threadsafe(loop.stop)
        thread.join()
        loop.close()

# ---------------------------------------------------------------- every example is run
#
# Method: each ```python block of the README runs in a fresh interpreter (a subprocess with a
# timeout, so a hung example fails instead of hanging the suite). A program runs as it is;
# what its `print(...)  # VALUE` lines promise must be printed. A block with top-level awaits
# is a fragment that continues "your cluster": it runs inside a 3-node LocalCluster that
# provides the names such fragments use (`engine`, `members`, `key`, `leader`), its
# placeholder addresses (10.0.0.N:PORT) mapped to free loopback ports. The shell block that
# starts a cluster runs under bash, its ports mapped to free ones; the Quickstart's two
# install commands are not run here (the first installs and runs the 10-second benchmark,
# which tests/bench covers; the second is this suite).

EXAMPLE_TIMEOUT_S = 120  # a stuck example fails; the slowest takes a few seconds


def fenced_blocks(language: str) -> list[str]:
    """The README's blocks in `language`, except those marked RUN_MARK (they need a cluster
    running in another thread and are run by test_readme_python_examples_run)."""
    readme = (ROOT / "README.md").read_text()
    text = re.sub(re.escape(RUN_MARK) + r"\n```python\n.*?```", "", readme, flags=re.S)
    return re.findall(rf"```{language}\n(.*?)```", text, flags=re.S)


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


def to_free_ports(text: str, pattern: str) -> tuple[str, list[str]]:
    """Every distinct address matching `pattern` -> its own free loopback UDP port."""
    placeholders = sorted(set(re.findall(pattern, text)))
    ports = free_udp_ports(len(placeholders)) if placeholders else []
    mapping = {p: f"127.0.0.1:{port}" for p, port in zip(placeholders, ports, strict=True)}
    return re.sub(pattern, lambda match: mapping[match.group(0)], text), list(mapping.values())


def fragment_script(block: str) -> str:
    block, _ = to_free_ports(block, r"\b10\.0\.0\.\d+:\d+\b")
    return FRAGMENT_HARNESS.format(body=textwrap.indent(block, "    "))


@pytest.mark.parametrize("index", range(len(fenced_blocks("python"))))
def test_readme_python_example_runs(index: int, tmp_path: Path) -> None:
    block = fenced_blocks("python")[index]
    if runs_on_its_own(block):
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


def runs_on_its_own(block: str) -> bool:
    """A program, not a fragment: it compiles without top-level await (a fragment must
    compile with it)."""
    try:
        compile(block, "<README>", "exec")
    except SyntaxError:
        compile(block, "<README>", "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)
        return False
    return True


def test_readme_has_python_examples_of_both_kinds() -> None:
    kinds = {runs_on_its_own(block) for block in fenced_blocks("python")}
    assert kinds == {True, False}


def server_blocks() -> list[str]:
    return [block for block in fenced_blocks("sh") if "engine serve" in block]


def test_every_readme_shell_block_is_run_or_is_a_quickstart_install() -> None:
    quickstart = quickstart_commands()
    for block in fenced_blocks("sh"):
        assert block.strip() in quickstart or block in server_blocks(), block


WAIT_FOR_LEADER = """
import asyncio, sys
import engine
from engine.__main__ import read_cluster_key

async def main() -> None:  # a linearizable read succeeds once a leader serves
    key = read_cluster_key(sys.argv[1])
    async with engine.Client(sys.argv[2:], cluster_key=key, timeout=90) as client:
        await client.get(b"probe")

asyncio.run(main())
"""


@pytest.mark.parametrize("index", range(len(server_blocks())))
def test_readme_server_cluster_shell_example_runs(index: int, tmp_path: Path) -> None:
    block = server_blocks()[index]
    block, addresses = to_free_ports(block, r"\b127\.0\.0\.1:\d+\b")
    # The client commands that follow the servers' start rely on the client's 10 s timeout
    # to cover the servers' start and first election; on a loaded machine four interpreters
    # starting at once can take longer, so the script waits for a leader before them.
    lines = block.splitlines()
    last_server = max(i for i, line in enumerate(lines) if line.rstrip().endswith("&"))
    (key_file,) = re.findall(r"engine keygen (\S+)", block)
    probe = [sys.executable, "-c", WAIT_FOR_LEADER, key_file, *addresses]
    lines.insert(last_server + 1, shlex.join(probe))
    # The servers it starts in the background are stopped (SIGTERM) when the script ends.
    script = "set -eu\ntrap 'kill $(jobs -p) 2>/dev/null; wait' EXIT\n" + "\n".join(lines)
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
    if "get greeting" in block:  # the value put before, in any output format
        assert any(line.strip().strip('"') == "hello" for line in stdout.splitlines()), stdout
