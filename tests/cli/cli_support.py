"""Helpers of the command-line tests: run `python -m engine ...` as a user would."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from pathlib import Path
from typing import Any


def run(*args: str, timeout: float = 60, env: dict[str, str] | None = None,
        stdin: bytes | None = None) -> subprocess.CompletedProcess[str]:
    """`python -m engine ARGS`; stdout/stderr as text (stdin as bytes when given)."""
    result = subprocess.run(
        [sys.executable, "-m", "engine", *args], capture_output=True, timeout=timeout,
        input=stdin, stdin=None if stdin is not None else subprocess.DEVNULL, env=env,
    )
    return subprocess.CompletedProcess(result.args, result.returncode,
                                       result.stdout.decode(errors="replace"),
                                       result.stderr.decode(errors="replace"))


def one_line_error(result: subprocess.CompletedProcess[str], code: int) -> str:
    """The single stderr line of a failed command (never a traceback)."""
    assert result.returncode == code, (result.returncode, result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    return lines[0]


class Nodes:
    """`serve` processes started by a test, stopped (by pid) at its end."""

    def __init__(self) -> None:
        self.processes: list[subprocess.Popen[bytes]] = []

    def start(self, *args: str, python_args: tuple[str, ...] = ("-m", "engine")
              ) -> subprocess.Popen[bytes]:
        process = subprocess.Popen([sys.executable, *python_args, "serve", *args],
                                   stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                   stderr=subprocess.PIPE)
        self.processes.append(process)
        return process

    def stop_all(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                process.terminate()
        for process in self.processes:
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def until_ok(*args: str, deadline_s: float = 30, unless: int | None = None
             ) -> subprocess.CompletedProcess[str]:
    """Repeat a command until it exits 0 (a cluster electing its first leader), or with a
    code other than `unless` when that is given."""
    deadline = time.monotonic() + deadline_s
    while True:
        result = run(*args)
        done = result.returncode == 0 if unless is None else result.returncode != unless
        if done or time.monotonic() > deadline:
            return result


def put_all(members: str, key_file: Path, items: dict[bytes, bytes],
            timeout: float = 30) -> None:
    """Acknowledged writes through engine.Client (faster than a process per write)."""

    async def go() -> None:
        async with _client(members, key_file, timeout) as client:
            for key, value in items.items():
                await client.put(key, value)

    asyncio.run(go())


def get_all(members: str, key_file: Path, keys: list[bytes],
            timeout: float = 30) -> dict[bytes, bytes | None]:
    async def go() -> dict[bytes, bytes | None]:
        async with _client(members, key_file, timeout) as client:
            return {key: await client.get(key) for key in keys}

    return asyncio.run(go())


def _client(members: str, key_file: Path, timeout: float) -> Any:
    from engine.__main__ import parse_members, read_cluster_key
    from engine.aio.client import Client

    return Client(list(parse_members(members).values()),
                  cluster_key=read_cluster_key(str(key_file)), timeout=timeout)
