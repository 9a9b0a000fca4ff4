"""`serve --metrics-addr` and `--log-format json`: a real server process, scraped over HTTP,
its stderr parsed line by line as JSON.
"""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from engine.aio.local_cluster import free_udp_ports


def free_tcp_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def scrape(port: int) -> dict[str, float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    return {f"{s.name}{sorted(s.labels.items()) if s.labels else ''}": s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def test_serve_exposes_metrics_and_logs_events_as_json(tmp_path: Path) -> None:
    key = tmp_path / "cluster.key"
    key.write_text("ab" * 32)
    (udp_port,), metrics_port = free_udp_ports(1), free_tcp_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "engine", "--log-format", "json", "serve", "--node-id", "1",
         "--members", f"1=127.0.0.1:{udp_port}", "--cluster-key-file", str(key),
         "--metrics-addr", f"127.0.0.1:{metrics_port}", "--campaign"],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        samples: dict[str, float] = {}
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                samples = scrape(metrics_port)
            except OSError:
                time.sleep(0.05)
                continue
            if samples.get("engine_role[('role', 'leader')]") == 1:
                break
            time.sleep(0.05)
        assert samples.get("engine_role[('role', 'leader')]") == 1, samples
        assert samples["engine_term"] >= 1
    finally:
        server.send_signal(signal.SIGTERM)
        _, stderr = server.communicate(timeout=60)
    assert server.returncode == 0, stderr
    records = [json.loads(line) for line in stderr.splitlines()]   # every line is JSON
    elected = [r for r in records if r.get("event") == "leader_elected"]
    assert elected and elected[0]["node_id"] == 1 and elected[0]["logger"] == "engine.node"
