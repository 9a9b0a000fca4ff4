"""Metrics endpoint, structured event logs and leader-change notifications on a live cluster.

Method: a real LocalCluster over loopback UDP; the metrics are scraped over HTTP and parsed
with prometheus_client's own parser; the log records are captured (caplog) across a leader
crash.
"""

from __future__ import annotations

import asyncio
import io
import json
import logging
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

import engine
from engine.kv import commands
from engine.logs import JsonFormatter, configure_logging, log_event


def _fetch(url: str) -> str:
    with urllib.request.urlopen(url, timeout=10) as response:
        assert response.headers["Content-Type"].startswith("text/plain")
        return str(response.read().decode())


async def scrape(node: engine.Node) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of the node's endpoint: (name, sorted labels) -> value."""
    assert node.metrics is not None and node.metrics.address is not None
    host, port = node.metrics.address
    text = await asyncio.to_thread(_fetch, f"http://{host}:{port}/metrics")
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


async def test_metrics_endpoint_reports_role_indices_latency_and_drops() -> None:
    async with engine.LocalCluster(n=3, metrics_addr="127.0.0.1:0") as cluster:
        leader = await cluster.wait_leader()
        before = await scrape(leader)
        assert before[("engine_role", (("role", "leader"),))] == 1
        assert before[("engine_role", (("role", "follower"),))] == 0
        assert before[("engine_term", ())] == leader.core.term >= 1
        assert before[("engine_leader_id", ())] == leader.node_id
        for _ in range(20):   # one at a time: every turn has a proposal to sample
            await leader.propose(commands.encode_put(b"k", b"v"))
        await leader.read(commands.encode_get_query(b"k"))
        after = await scrape(leader)
        group = (("group", "0"),)
        commit, applied = ("engine_commit_index", group), ("engine_applied_index", group)
        assert after[commit] >= before[commit] + 20
        assert after[applied] >= before[commit] + 20
        assert after[("engine_apply_lag", group)] >= 0
        proposals = ("engine_proposals_total", ())
        assert after[proposals] >= before[proposals] + 20
        assert after[("engine_proposal_seconds_count", ())] >= 20
        assert after[("engine_proposal_seconds_sum", ())] > 0
        assert after[("engine_read_seconds_count", ())] >= 1
        assert after[("engine_client_sessions", ())] == 0
        assert ("engine_datagrams_dropped_total", (("cause", "decode_error"),)) in after
        sent = ("engine_datagrams_sent_total", ())
        assert after[sent] > before[sent]
        info = [key for key in after if key[0] == "engine_node_info"]
        assert dict(info[0][1])["node_id"] == str(leader.node_id)
        # Each node has its own registry and endpoint: a follower says it follows.
        follower = next(n for n in cluster.nodes.values() if n is not leader)
        assert follower.metrics is not leader.metrics
        seen = await scrape(follower)
        assert seen[("engine_role", (("role", "follower"),))] == 1
        assert seen[("engine_leader_id", ())] == leader.node_id


async def test_metrics_of_a_paxos_node() -> None:
    async with engine.LocalCluster(n=3, protocol="paxos", metrics_addr="127.0.0.1:0") as cluster:
        leader = await cluster.wait_leader()
        await leader.propose(commands.encode_put(b"k", b"v"))
        samples = await scrape(leader)
        assert samples[("engine_role", (("role", "leader"),))] == 1
        assert samples[("engine_term", ())] == leader.core.term > 0   # the promised ballot
        assert samples[("engine_commit_index", (("group", "0"),))] >= 1


async def test_metrics_count_dropped_datagrams_by_cause() -> None:
    async with engine.LocalCluster(n=1, metrics_addr="127.0.0.1:0") as cluster:
        node = await cluster.wait_leader()
        host, port = cluster.members[node.node_id].split(":")
        loop = asyncio.get_running_loop()
        transport, _ = await loop.create_datagram_endpoint(asyncio.DatagramProtocol,
                                                           remote_addr=(host, int(port)))
        for _ in range(5):
            transport.sendto(b"not a frame")
        transport.close()
        key = ("engine_datagrams_dropped_total", (("cause", "decode_error"),))
        for _ in range(200):
            if (await scrape(node))[key] >= 5:
                break
            await asyncio.sleep(0.01)
        assert (await scrape(node))[key] >= 5


async def test_wal_save_latency_is_observed_with_a_data_dir(tmp_path: object) -> None:
    async with engine.LocalCluster(n=1, data_dir=str(tmp_path),
                                   metrics_addr="127.0.0.1:0") as cluster:
        node = await cluster.wait_leader()
        await node.propose(commands.encode_put(b"k", b"v"))
        samples = await scrape(node)
        assert samples[("engine_wal_save_seconds_count", ())] >= 1
        assert samples[("engine_wal_syncs_total", ())] >= 1


async def test_metrics_endpoint_answers_404_elsewhere_and_closes_on_stop() -> None:
    async with engine.LocalCluster(n=1, metrics_addr="127.0.0.1:0") as cluster:
        node = await cluster.wait_leader()
        assert node.metrics is not None and node.metrics.address is not None
        host, port = node.metrics.address
        with pytest.raises(urllib.error.HTTPError) as info:
            await asyncio.to_thread(_fetch, f"http://{host}:{port}/other")
        assert info.value.code == 404
        await node.stop()
        assert node.metrics is None
        with pytest.raises(OSError):
            await asyncio.to_thread(_fetch, f"http://{host}:{port}/metrics")


async def test_status_names_the_version_and_the_core_implementation() -> None:
    async with engine.LocalCluster(n=1) as cluster:
        status = cluster.nodes[1].status()
        assert status["version"] == engine.__version__
        assert status["core_implementation"] == engine.IMPLEMENTATION in ("cython", "python")


def test_metrics_address_is_validated() -> None:
    with pytest.raises(engine.ConfigError):
        engine.NodeConfig(node_id=1, members={1: "127.0.0.1:7001"}, cluster_key=b"k" * 32,
                          metrics_addr="no-port")


async def test_leader_change_is_logged_and_notified(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="engine")
    async with engine.LocalCluster(n=3) as cluster:
        old = await cluster.wait_leader()
        survivor = next(n for n in cluster.nodes.values() if n is not old)
        changes = survivor.leader_changes()
        assert await anext(changes) == old.node_id
        called: list[tuple[int, int]] = []
        survivor.on_leader_change(lambda leader_id, term: called.append((leader_id, term)))
        old_term = old.core.term
        caplog.clear()
        await cluster.stop(old.node_id)
        new_leader_id = 0
        async with asyncio.timeout(10):
            while new_leader_id in (0, old.node_id):
                new_leader_id = await anext(changes)
        new = cluster.nodes[new_leader_id]
        followers = [n for n in cluster.nodes.values() if n.running and n is not new]
        async with asyncio.timeout(10):
            while any(n.leader_id != new_leader_id for n in followers):
                await asyncio.sleep(0.01)
        assert new.core.term > old_term
        assert called and called[-1] == (new_leader_id, new.core.term)
        events = [(r.event, r.fields) for r in caplog.records  # type: ignore[attr-defined]
                  if hasattr(r, "event")]
        elected = [f for e, f in events if e == "leader_elected"]
        assert {"node_id": new_leader_id, "term": new.core.term} in elected
        assert any(e == "term_changed" and f["term"] == new.core.term for e, f in events)
        for follower in followers:
            assert {"node_id": follower.node_id, "term": new.core.term,
                    "leader_id": new_leader_id} in [f for e, f in events if e == "leader_changed"]
        # The old leader comes back as a follower: it logs that it lost the leadership.
        caplog.clear()
        await cluster.restart(old.node_id)
        await cluster.wait_leader(among={new_leader_id})
        for _ in range(500):
            if cluster.nodes[old.node_id].leader_id == new_leader_id:
                break
            await asyncio.sleep(0.01)
        assert any(getattr(r, "event", "") == "leader_changed"
                   and r.fields["node_id"] == old.node_id  # type: ignore[attr-defined]
                   for r in caplog.records)


async def test_a_leader_that_steps_down_logs_leader_lost(
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="engine")
    async with engine.LocalCluster(n=3) as cluster:
        leader = await cluster.wait_leader()
        target = next(n for n in cluster.nodes if n != leader.node_id)
        await leader.transfer_leadership(target)
        lost = [r for r in caplog.records if getattr(r, "event", "") == "leader_lost"]
        assert lost and lost[-1].fields["node_id"] == leader.node_id  # type: ignore[attr-defined]
        assert lost[-1].levelno == logging.WARNING


async def test_snapshot_taken_is_logged(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="engine")
    async with engine.LocalCluster(n=1, snapshot_entries=10,
                                   snapshot_trailing_entries=0) as cluster:
        node = await cluster.wait_leader()
        for i in range(30):
            await node.propose(commands.encode_put(b"k%d" % i, b"v"))
        for _ in range(500):
            if node.snapshot_stats["taken"]:
                break
            await asyncio.sleep(0.01)
        taken = [r for r in caplog.records if getattr(r, "event", "") == "snapshot_taken"]
        assert taken and taken[0].fields["bytes"] > 0  # type: ignore[attr-defined]


def test_json_formatter_writes_one_object_per_line_with_the_fields() -> None:
    stream = io.StringIO()
    handler = configure_logging("json", "INFO", stream=stream)
    try:
        log_event(logging.getLogger("engine.test"), "leader_elected", "node 1 is the leader",
                  node_id=1, term=3)
        logging.getLogger("engine.test").warning("plain %s", "line")
    finally:
        logging.getLogger().removeHandler(handler)
    first, second = (json.loads(line) for line in stream.getvalue().splitlines())
    assert first["event"] == "leader_elected" and first["term"] == 3
    assert first["logger"] == "engine.test" and first["level"] == "INFO"
    assert first["message"] == "node 1 is the leader"
    assert second["message"] == "plain line" and "event" not in second
    assert isinstance(JsonFormatter().format(logging.makeLogRecord({"msg": "x"})), str)


def test_text_formatter_appends_the_fields() -> None:
    stream = io.StringIO()
    handler = configure_logging("text", logging.INFO, stream=stream)
    try:
        log_event(logging.getLogger("engine.test"), "term_changed", "term 1 -> 2", term=2)
    finally:
        logging.getLogger().removeHandler(handler)
    assert stream.getvalue().rstrip().endswith("term 1 -> 2 event=term_changed term=2")
    with pytest.raises(ValueError):
        configure_logging("xml")


async def test_membership_change_is_logged(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="engine")
    async with engine.LocalCluster(n=3) as cluster:
        await cluster.wait_leader()
        await cluster.add_node()
        changes = [r.fields for r in caplog.records  # type: ignore[attr-defined]
                   if getattr(r, "event", "") == "membership_changed"]
        assert any(f["voters"] == [1, 2, 3, 4] and not f["joint"] for f in changes), changes
        assert any(4 in f["learners"] for f in changes), changes
