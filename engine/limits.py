"""Named bounds (Limits) and protocol time (TimingConfig): what a core, a codec and a driver
are configured with.

Every queue, window and batch has its named limit in `Limits` (DESIGN.md §5 "Bounded
everything"). Exceeding one is back-pressure (engine.Overloaded) or a DecodeError, never
unbounded growth. Users reach both through engine.config (and engine.Limits,
engine.TimingConfig); the cores import them from here, below the cores.
"""

from __future__ import annotations

from dataclasses import dataclass

from engine import wire
from engine.errors import ConfigError

# Limits for which 0 means "none" rather than nothing at all.
_ZERO_OK = frozenset({"mvcc_retention_s"})


@dataclass(frozen=True, slots=True)
class Limits:
    """Named bounds; one place for all of them."""

    # Wire: 65,000 bytes fits a loopback datagram (MTU 65,536). On a real Ethernet network
    # set 1,400 (1,500 MTU minus IP/UDP headers) so no datagram is IP-fragmented.
    max_datagram_bytes: int = 65_000
    max_messages_per_frame: int = wire.MAX_MESSAGES_PER_FRAME
    max_entries_per_message: int = wire.MAX_ENTRIES_PER_MESSAGE
    max_context_bytes: int = wire.MAX_CONTEXT_BYTES
    # A proposal larger than this is refused at propose time (EntryTooLarge).
    max_entry_bytes: int = 16 * 1024 * 1024
    # Raft replication window per follower (pipelining): appends in flight and their bytes.
    max_inflight_messages: int = 256
    max_inflight_bytes: int = 32 * 1024 * 1024
    # One append carries at most this many payload bytes.
    max_append_bytes: int = 256 * 1024
    # Back-pressure on the leader: proposals waiting and log bytes not yet committed.
    max_pending_proposals: int = 65_536
    max_uncommitted_bytes: int = 256 * 1024 * 1024
    # Committed entries handed to the state machine per Ready. Small on purpose: answers go
    # out (and the answered callers' next proposals come in) while the rest is applied, so
    # batches overlap instead of moving in lock step (docs/performance.md, "Apply batch").
    max_apply_batch: int = 256
    # Reassembly of chunked frames: concurrent partial frames per sender, total bytes.
    max_reassembly_frames: int = 64
    max_reassembly_bytes: int = wire.MAX_REASSEMBLY_BYTES
    # Client sessions kept by a state machine for exactly-once (Raft thesis §6.3).
    max_client_sessions: int = 100_000
    # Bytes of one session's cached last result (for its retries). A larger result (a value
    # read or replaced, asked for) is cached without its payload and a retry is answered
    # "applied, result not retained" with its revision. With max_client_sessions this bounds
    # the session table: sessions x (28 + max(this, 11)) bytes (KVStore.session_bytes_bound).
    max_session_result_bytes: int = 1_024
    # Replay window per sender (frames older than this many counters are refused).
    replay_window_frames: int = 1_024
    # Raft snapshot transfer (chunked over UDP): bytes per SNAPSHOT message, chunks in flight
    # per follower, and the largest snapshot a follower accepts (its reassembly buffer).
    max_snapshot_chunk_bytes: int = 60 * 1024
    max_snapshot_inflight_chunks: int = 64
    max_snapshot_bytes: int = 4 * 1024 * 1024 * 1024
    # Replay across restarts (docs/reliability.md, "Authenticated wire and cluster identity"):
    # a node refuses client frames whose epoch (the client's clock at its start, ns) is older
    # than its own boot time minus this bound, so a request captured before a restart cannot
    # be replayed after it (except one captured within this bound before the restart, and
    # then only once). It is also the largest backward clock skew of a client against a node
    # that is tolerated; a client whose frames get no answer renews its epoch.
    max_client_clock_skew_s: int = 60
    # Replies do not amplify: an answer to a client may be at most this many times the size
    # of its request unless the request opted into more (Message.index = max reply bytes).
    max_reply_amplification: int = 4
    # Sharding (docs/sharding.md). A range is split once its data passes range_split_bytes
    # (a range is snapshotted and moved whole, in memory: 64 MiB is ~1,100 snapshot chunks,
    # the original CockroachDB range size) or its load passes range_split_ops_per_s (the
    # default of CockroachDB's kv.range_split.load_qps_threshold); the split key is the
    # median of at most max_split_key_samples sampled keys.
    range_split_bytes: int = 64 * 1024 * 1024
    range_split_ops_per_s: int = 2_500
    max_split_key_samples: int = 1_024
    # Range descriptors (and the stale spans it remembers) a client's routing cache holds.
    max_range_cache_entries: int = 65_536
    # Hybrid logical clocks (engine.txn.hlc): the largest offset between two nodes' physical
    # clocks that is tolerated. A timestamp received from further ahead than this is refused
    # (engine.ClockOffsetError) and a read's uncertainty interval is this wide. 500 ms is
    # CockroachDB's --max-offset default; NTP-synchronised hosts are typically within a few ms.
    max_clock_offset_ms: int = 500
    # Coordination (engine.coord, docs/coordination.md). Leases alive at once; lock holders
    # and waiters over all locks; lock names remembered (a free lock keeps its newest fencing
    # token until evicted, oldest first); change events a WatchLog retains for watches that
    # start in the past (etcd keeps history until compaction; here a ring of this many
    # events); events buffered per watcher before it falls back to reading the retained
    # history (back-pressure; past that history, WatchOverflow).
    max_leases: int = 1_000_000
    max_lock_entries: int = 1_000_000
    max_lock_names: int = 1_000_000
    watch_history_events: int = 100_000
    max_watch_buffer_events: int = 1_024
    # The bytes (keys and values, WATCH_EVENT_OVERHEAD_BYTES each) that ring may hold: a
    # KVStore records every write there and snapshots it, so this bounds what watch
    # history adds to a snapshot; the oldest events go first past it.
    watch_history_bytes: int = 8 * 1024 * 1024
    # MVCC (engine.kv.store, docs/transactions.md "MVCC"): a KVStore keeps the versions a
    # write or delete replaced while they may still be read at a timestamp: reads at any
    # timestamp at or above the horizon are answered, older ones raise HistoryCompacted. The
    # horizon trails the newest timestamp in the group's log by mvcc_retention_s (measured
    # in the log's HLC timestamps, never a clock), and moves up earlier whenever the kept
    # versions would pass max_mvcc_history_bytes (keys, values and a fixed
    # per-version overhead; KVStore.history_bytes). Replicas must share both.
    # mvcc_retention_s = 0 keeps no history: reads at a timestamp below the latest one are
    # refused, and an overwrite costs what it costs without MVCC.
    mvcc_retention_s: int = 60
    max_mvcc_history_bytes: int = 16 * 1024 * 1024

    def __post_init__(self) -> None:
        for name in self.__dataclass_fields__:
            value = getattr(self, name)
            if not isinstance(value, int) or value < 0 or (value == 0 and name not in _ZERO_OK):
                raise ConfigError(f"Limits.{name} must be a positive int, got {value!r}")
        if not 512 <= self.max_datagram_bytes <= 65_507:
            raise ConfigError(
                f"Limits.max_datagram_bytes must be in [512, 65507], got {self.max_datagram_bytes}"
            )



@dataclass(frozen=True, slots=True)
class TimingConfig:
    """Protocol time in ticks; the driver ticks every tick_ms milliseconds."""

    tick_ms: int = 10
    heartbeat_interval_ticks: int = 5          # 50 ms
    election_timeout_ticks: int = 30           # randomized in [T, 2T): 300-600 ms

    def __post_init__(self) -> None:
        if self.tick_ms <= 0:
            raise ConfigError(f"tick_ms must be positive, got {self.tick_ms}")
        if self.heartbeat_interval_ticks <= 0:
            raise ConfigError("heartbeat_interval_ticks must be positive")
        if self.election_timeout_ticks <= self.heartbeat_interval_ticks:
            raise ConfigError(
                "election_timeout_ticks must exceed heartbeat_interval_ticks "
                f"({self.election_timeout_ticks} <= {self.heartbeat_interval_ticks})"
            )
