"""The README's server-cluster example runs as written (ports swapped for free ones, `engine`
for `python -m engine`, which is what the console script runs)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

from engine.aio.local_cluster import free_udp_ports

ROOT = Path(__file__).resolve().parents[2]


def server_cluster_example() -> str:
    text = (ROOT / "README.md").read_text()
    section = text.split("As a server cluster", 1)[1]
    return re.search(r"```sh\n(.*?)\n```", section, flags=re.S).group(1)  # type: ignore[union-attr]


def test_readme_server_cluster_example_runs(tmp_path: Path) -> None:
    script = server_cluster_example()
    for default, port in zip((7001, 7002, 7003), free_udp_ports(3), strict=True):
        script = script.replace(f":{default}", f":{port}")
    script = re.sub(r"^engine ", f"{sys.executable} -m engine ", script, flags=re.M)
    env = {k: v for k, v in os.environ.items() if not k.startswith("ENGINE_")}
    # The three servers are this shell's jobs: it stops them (by job) when the example ends.
    wrapped = f"set -e\ntrap 'kill %1 %2 %3; wait' EXIT\n{script}\n"
    result = subprocess.run(["bash", "-c", wrapped], cwd=tmp_path, env=env, text=True,
                            capture_output=True, timeout=120, stdin=subprocess.DEVNULL)
    assert result.returncode == 0, (result.stdout, result.stderr)
    lines = result.stdout.splitlines()
    assert lines[0].startswith("wrote a 32-byte cluster key")
    assert json.loads(lines[1]) == "ok" and json.loads(lines[2]) == "hello"
    assert any(line.split()[:3] == ["ID", "ADDRESS", "ROLE"] for line in lines)
    assert json.loads(result.stdout[result.stdout.rindex("{"):]) == {"leader": 2}
