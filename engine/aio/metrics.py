"""Prometheus metrics of one engine.Node, served over HTTP (NodeConfig.metrics_addr).

Each Node owns its own CollectorRegistry (never prometheus_client's global one: a LocalCluster
runs several nodes in one process, each with its own endpoint). The names, types and labels
are listed in docs/operations.md.

Nothing here runs per write. Most values are read at scrape time from what the node counts
anyway (its counters, the core's indices, the transport's drop counters, snapshot_stats) by
a custom collector. The latency histograms are sampled: one proposal and one ReadIndex read
per loop turn (a turn batches everything that arrived meanwhile, engine.aio.node), and one
observation per WAL group commit (one per fdatasync, never per entry).

The endpoint is a small asyncio HTTP/1.0 handler on the node's loop, so a scrape reads the
node's state on the thread that owns it (a scrape from another thread could see the core
mid-step); GET /metrics (or /) answers the text exposition format, anything else 404.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from engine import __version__
from engine._core import IMPLEMENTATION
from engine.types import parse_address

if TYPE_CHECKING:
    from engine.aio.node import Node

logger = logging.getLogger("engine.metrics")

ROLES = ("follower", "pre_candidate", "candidate", "leader")
# One consensus group per node today; the label keeps the series apart once a node hosts
# several groups.
GROUP = "0"
# Latency buckets in seconds: 50 us to 10 s (the default request timeout).
LATENCY_BUCKETS = (0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025,
                   0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
# A scrape request's header bytes and the time to send them; past either the connection is
# closed (bounded everything, DESIGN.md §5).
_MAX_REQUEST_BYTES = 8192
_REQUEST_TIMEOUT_S = 5.0


class NodeMetrics:
    """The registry of one node, its sampled histograms and its HTTP endpoint."""

    def __init__(self, node: Node) -> None:
        self.node = node
        self.registry = CollectorRegistry()
        self.proposal_seconds = Histogram(
            "engine_proposal_seconds", "Proposal latency, from the turn that hands it to the "
            "core to its outcome (one sampled proposal per loop turn)",
            registry=self.registry, buckets=LATENCY_BUCKETS)
        self.read_seconds = Histogram(
            "engine_read_seconds", "Linearizable (ReadIndex) read latency, from the turn that "
            "starts its round to its answer (one sampled read per loop turn)",
            registry=self.registry, buckets=LATENCY_BUCKETS)
        self.wal_save_seconds = Histogram(
            "engine_wal_save_seconds", "One WAL group commit: write and fdatasync (the write "
            "alone with fsync off)", registry=self.registry, buckets=LATENCY_BUCKETS)
        self.registry.register(_NodeCollector(node))
        self.durable = node.config.data_dir is not None
        self._server: asyncio.Server | None = None

    # ------------------------------------------------------------------ sampling hooks

    def sample_turn(self, proposals: list[Any], reads: list[Any]) -> None:
        """One proposal and one read of this turn's queues (called once per turn)."""
        if proposals:
            self._observe_outcome(proposals[-1][1], self.proposal_seconds)
        if reads:
            self._observe_outcome(reads[-1].future, self.read_seconds)

    def _observe_outcome(self, future: asyncio.Future[Any], histogram: Histogram) -> None:
        loop = future.get_loop()
        started = loop.time()

        def done(settled: asyncio.Future[Any]) -> None:
            if not settled.cancelled() and settled.exception() is None:
                histogram.observe(loop.time() - started)

        future.add_done_callback(done)

    # ------------------------------------------------------------------ HTTP endpoint

    @property
    def address(self) -> tuple[str, int] | None:
        """(host, port) the endpoint listens on, once started."""
        if self._server is None or not self._server.sockets:
            return None
        host, port = self._server.sockets[0].getsockname()[:2]
        return str(host), int(port)

    async def serve(self, address: str) -> None:
        host, port = parse_address(address, allow_any_port=True)
        self._server = await asyncio.start_server(self._handle, host, port,
                                                  limit=_MAX_REQUEST_BYTES)
        logger.info("node %d: metrics on http://%s:%d/metrics", self.node.config.node_id,
                    *(self.address or (host, port)))

    def close(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None

    def exposition(self) -> bytes:
        return generate_latest(self.registry)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), _REQUEST_TIMEOUT_S)
            request_line = head.split(b"\r\n", 1)[0].split()
            path = request_line[1].split(b"?", 1)[0] if len(request_line) >= 2 else b""
            if request_line[:1] == [b"GET"] and path in (b"/", b"/metrics"):
                status, content_type, body = b"200 OK", CONTENT_TYPE_LATEST, self.exposition()
            else:
                status, content_type, body = b"404 Not Found", "text/plain", b"not found\n"
            writer.write(b"HTTP/1.0 " + status + b"\r\nContent-Type: " + content_type.encode()
                         + b"\r\nContent-Length: " + str(len(body)).encode()
                         + b"\r\nConnection: close\r\n\r\n" + body)
            await writer.drain()
        except (TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError,
                ConnectionError):
            pass  # a slow, oversized or vanished scraper: just close
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()


class _NodeCollector(Collector):
    """Reads the node's own counters and indices at scrape time."""

    def __init__(self, node: Node) -> None:
        self.node = node

    def collect(self) -> Iterator[Metric]:
        node = self.node
        core = node.core
        yield from self._identity(node)
        if core is not None:
            yield from self._consensus(node, core)
        yield from self._counters(node.counters)
        yield from self._snapshots(node.snapshot_stats)
        transport = node.transport
        if transport is not None:
            yield from self._transport(transport.stats())
        # KVStore.session_count; a user's state machine may not keep sessions.
        sessions = getattr(node.state_machine, "session_count", None)
        if callable(sessions):
            sessions = sessions()
        if isinstance(sessions, int):
            yield GaugeMetricFamily("engine_client_sessions",
                                    "Client sessions the state machine keeps (exactly-once)",
                                    value=sessions)

    @staticmethod
    def _identity(node: Node) -> Iterator[Metric]:
        info = GaugeMetricFamily("engine_node_info", "This node (value 1)",
                                 labels=["node_id", "protocol", "version", "core"])
        info.add_metric([str(node.config.node_id), node.config.protocol, __version__,
                         str(IMPLEMENTATION)], 1)
        yield info
        yield GaugeMetricFamily("engine_node_running", "1 while the node runs",
                                value=int(node.running))

    @staticmethod
    def _consensus(node: Node, core: Any) -> Iterator[Metric]:
        role = GaugeMetricFamily("engine_role", "1 for the role this node has now",
                                 labels=["role"])
        current = str(core.role)
        for name in ROLES if current in ROLES else (*ROLES, current):
            role.add_metric([name], int(name == current))
        yield role
        yield GaugeMetricFamily("engine_term", "Raft term (Paxos: promised ballot)",
                                value=core.term)
        yield GaugeMetricFamily("engine_leader_id", "The leader this node knows (0: none)",
                                value=core.leader_id or 0)
        yield CounterMetricFamily("engine_leader_changes", "Changes of the leader this node "
                                  "knows", value=node.leader_changes_total)
        commit, applied = int(core.commit_index), int(node.applied_index)
        for name, text, value in (
            ("engine_commit_index", "Highest log index known committed", commit),
            ("engine_applied_index", "Highest log index applied to the state machine", applied),
            ("engine_apply_lag", "Committed entries not yet applied here", commit - applied),
        ):
            family = GaugeMetricFamily(name, text, labels=["group"])
            family.add_metric([GROUP], value)
            yield family

    @staticmethod
    def _counters(counters: dict[str, int]) -> Iterator[Metric]:
        for key, name, text in (
            ("proposals", "engine_proposals", "Proposals appended to this node's log"),
            ("applied", "engine_applied_entries", "Entries applied to the state machine"),
            ("reads", "engine_reads", "Linearizable reads answered"),
            ("read_rounds", "engine_read_rounds", "ReadIndex rounds started"),
            ("syncs", "engine_wal_syncs", "WAL group commits that needed an fdatasync"),
            ("forwarded", "engine_forwarded_proposals", "Proposals forwarded to the leader"),
            ("client_requests", "engine_client_requests", "Requests from remote clients"),
        ):
            yield CounterMetricFamily(name, text, value=counters.get(key, 0))

    @staticmethod
    def _snapshots(stats: dict[str, float]) -> Iterator[Metric]:
        yield CounterMetricFamily("engine_snapshots_taken", "Snapshots this node took",
                                  value=stats.get("taken", 0))
        yield CounterMetricFamily("engine_snapshots_installed", "Snapshots installed from "
                                  "the leader", value=stats.get("installed", 0))
        yield GaugeMetricFamily("engine_snapshot_last_bytes", "Size of the last snapshot "
                                "taken (envelope bytes)", value=stats.get("last_bytes", 0))
        yield GaugeMetricFamily("engine_snapshot_last_write_seconds", "Time to serialise and "
                                "write the last snapshot", value=stats.get("last_write_s", 0.0))
        yield GaugeMetricFamily("engine_snapshot_last_pause_seconds", "Time the loop paused "
                                "for the last snapshot",
                                value=stats.get("last_pause_ms", 0.0) / 1000.0)

    @staticmethod
    def _transport(stats: dict[str, Any]) -> Iterator[Metric]:
        for key, name in (("datagrams_sent", "engine_datagrams_sent"),
                          ("datagrams_received", "engine_datagrams_received"),
                          ("bytes_sent", "engine_bytes_sent"),
                          ("bytes_received", "engine_bytes_received")):
            yield CounterMetricFamily(name, f"UDP {key.replace('_', ' ')}", value=stats[key])
        dropped = CounterMetricFamily("engine_datagrams_dropped", "Datagrams or messages "
                                      "dropped, by cause (engine.aio.udp.DROP_REASONS)",
                                      labels=["cause"])
        for cause, count in sorted(stats["dropped"].items()):
            dropped.add_metric([cause], count)
        yield dropped
