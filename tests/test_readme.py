"""The README's quickstart is what CI runs: its test command appears verbatim in .ci/run."""

from __future__ import annotations

import re
from pathlib import Path

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
