"""docs/walkthrough.md runs as written and shows what its text promises.

Method: every ```sh block of the page, in order, in ONE bash process (`set -eo pipefail`; a
marker line echoed before each block splits the output), in an empty directory, with the
page's ports replaced by free ones and `python` this interpreter. The blocks wait by polling
`status` exit codes (bounded in the page itself); the whole run is bounded by RUN_TIMEOUT_S.
Then the output of each block is checked against the text: a healthy table, metrics that
moved (parsed with prometheus_client's parser), a new leader in a higher term in `status`
and in the log lines, and the data read back from the restored node.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from engine.aio.local_cluster import free_udp_ports

ROOT = Path(__file__).resolve().parents[2]
PAGE = ROOT / "docs" / "walkthrough.md"
# Elections, 30-odd short-lived processes and two bounded 120 s waits of the page's own: on a
# loaded 2-core machine it takes well under a minute; a hang fails instead of stalling.
RUN_TIMEOUT_S = 400
MARK = "@@walkthrough-block"
NODE_PORT = re.compile(r"127\.0\.0\.1:(70\d\d)\b")
METRICS_PORT = re.compile(r"127\.0\.0\.1:(91\d\d)\b")


def page_blocks() -> list[str]:
    return re.findall(r"```sh\n(.*?)\n```", PAGE.read_text(), flags=re.S)


def free_tcp_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def on_free_ports(script: str) -> str:
    """The page's ports (70xx: nodes, UDP; 91xx: metrics, TCP) swapped for free ones."""
    nodes = sorted(set(NODE_PORT.findall(script)))
    udp = dict(zip(nodes, map(str, free_udp_ports(len(nodes))), strict=True))
    tcp = {port: str(free_tcp_port()) for port in sorted(set(METRICS_PORT.findall(script)))}
    script = NODE_PORT.sub(lambda m: f"127.0.0.1:{udp[m[1]]}", script)
    return METRICS_PORT.sub(lambda m: f"127.0.0.1:{tcp[m[1]]}", script)


def run_page(workdir: Path) -> list[str]:
    """Run every block; the output (stdout and stderr) of each, in order."""
    blocks = page_blocks()
    script = "set -eo pipefail\n" + "".join(
        f"echo '{MARK} {i}'\n{block}\n" for i, block in enumerate(blocks))
    bin_dir = workdir / "bin"
    bin_dir.mkdir()
    (bin_dir / "python").symlink_to(sys.executable)
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"}
    for name in [n for n in env if n.startswith("ENGINE_") and n != "ENGINE_NO_EXTENSIONS"]:
        del env[name]
    try:
        result = subprocess.run(["bash", "-c", on_free_ports(script)], cwd=workdir, env=env,
                                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True, timeout=RUN_TIMEOUT_S)
    finally:
        kill_leftover_nodes(workdir)
    logs = "".join(f"\n--- {log.name}\n{log.read_text()}" for log in workdir.glob("*.log"))
    assert result.returncode == 0, result.stdout + logs
    parts = re.split(rf"^{MARK} \d+\n", result.stdout, flags=re.M)
    assert len(parts) == len(blocks) + 1, result.stdout
    return parts[1:]


def kill_leftover_nodes(workdir: Path) -> None:
    """The `serve` processes of a run that failed midway (by the pids the page recorded)."""
    for pid_file in workdir.glob("*.pid"):
        pid = int(pid_file.read_text())
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue   # gone
        if b"serve" in cmdline:
            os.kill(pid, signal.SIGKILL)


def table_rows(text: str) -> dict[str, list[str]]:
    """`status --output table` rows by node id (ID ADDRESS ROLE TERM LEADER ...)."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.split()[:2] == ["ID", "ADDRESS"])
    rows = {}
    for line in lines[start + 1:]:
        fields = line.split()
        if not fields or not fields[0].isdigit():
            break
        rows[fields[0]] = fields
    return rows


def metrics(text: str) -> dict[str, float]:
    return {sample.name: sample.value
            for family in text_string_to_metric_families(text) for sample in family.samples}


def test_the_walkthrough_runs_and_shows_what_it_says(tmp_path: Path) -> None:
    (start, wait, define_scrape, write, kill, logs, restore, stop) = run_page(tmp_path)
    assert "wrote a 32-byte cluster key" in start
    healthy = table_rows(wait)
    assert sorted(row[2] for row in healthy.values()) == ["follower", "follower", "leader"]
    assert len({row[3] for row in healthy.values()}) == 1   # one term

    before = metrics(define_scrape)
    write_lines = write.splitlines()
    assert write_lines[0] == '"ok"' and write_lines[1] == '"hello"', write
    after = metrics("\n".join(write_lines[2:]))
    for name in ("engine_commit_index", "engine_applied_index"):
        assert after[name] >= before[name] + 11, (before, after)

    old_leader = re.search(r"killing the leader, node (\d)", kill)
    assert old_leader is not None, kill
    old_term = int(healthy[old_leader[1]][3])
    rows = table_rows(kill)
    assert "no answer" in " ".join(rows[old_leader[1]])
    (new_leader,) = [node for node, row in rows.items() if row[2] == "leader"]
    new_term = int(rows[new_leader][3])
    assert new_leader != old_leader[1] and new_term > old_term
    elected = re.findall(r"event=leader_elected node_id=(\d+) term=(\d+)", logs)
    assert elected[-1] == (new_leader, str(new_term)), logs   # sorted by time: the newest
    assert re.search(rf"event=leader_changed .*leader_id={new_leader}\b", logs), logs

    assert re.search(r'"index": \d+', restore), restore
    assert restore.splitlines()[-2:] == ['"hello"', '"value10"'], restore
    assert stop == ""
