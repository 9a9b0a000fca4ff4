"""Latency profiler: where a write's time goes on the leader (`python -m engine bench --profile`).

Theory of operation
-------------------
The driver calls this profiler at its observer points (engine.driver.Hooks: queued, handed to
the core, ready taken, persisted, applied; engine.Node adds acks received) once one is
attached with `node.attach_profiler(profiler)`. Every proposal enqueued while the
profiler is recording gets a row of milestones (time.perf_counter_ns), keyed by its log index
once the core assigned one:

  enqueued     `node.propose()` was called (library call, or a client's request on the leader)
  proposed     the driver handed the turn's batch to the core (`core.propose(batch)`)
  sent         the first APPEND/ACCEPT carrying the entry went to a follower's socket
  persisted    the leader's own copy was written (and fsynced, with --fsync)
  quorum       acks from enough followers arrived that, with the leader, a majority holds it
  committed    the core reported it committed (a Ready with it in committed_entries)
  applied      the state machine applied it
  answered     the caller's continuation ran (library: `await propose()` returned; UDP
               clients: the reply was handed to the socket)

Stages are the gaps between consecutive milestones on the critical path
enqueued -> proposed -> sent -> quorum -> committed -> applied -> answered, so they add up
to the whole latency seen on the leader. `appended locally` (proposed -> persisted) runs in
parallel with replication (Raft thesis §10.2.1: the leader writes while it sends), so it is
reported beside them: when it is the slow path, it shows up as a long `committed` stage
(commit waits for the leader's own copy).

A milestone the leader never observes (e.g. `sent` and `quorum` on a one-node cluster) takes
the previous milestone's time, so its stage is 0. Recording costs a few microseconds per
proposal in the leader's process, so a profiled run is slower than an unprofiled one; the
bench prints both figures' conditions so nobody mistakes one for the other.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Any

import numpy as np
from hdrh.histogram import HdrHistogram

from engine.messages import MessageType

# Milestone slots in a row.
ENQUEUED, PROPOSED, SENT, PERSISTED, QUORUM, COMMITTED, APPLIED, ANSWERED = range(8)
_CRITICAL_PATH = (ENQUEUED, PROPOSED, SENT, QUORUM, COMMITTED, APPLIED, ANSWERED)

# (stage name, from milestone, to milestone, what a person tuning a deployment reads into it)
STAGES: tuple[tuple[str, int, int, str], ...] = (
    ("queued", ENQUEUED, PROPOSED,
     "waiting for the driver's next turn (grows while a WAL write is in flight)"),
    ("sent", PROPOSED, SENT,
     "core append + encoding until the first follower's APPEND is on the socket"),
    ("acknowledged by quorum", SENT, QUORUM,
     "network round trip + followers' receive, append (and fsync) + ack"),
    ("committed", QUORUM, COMMITTED,
     "ack seen until the core reports commit (waits for the leader's own write and turn)"),
    ("applied", COMMITTED, APPLIED,
     "state machine apply (after the Ready's own write is durable)"),
    ("answered", APPLIED, ANSWERED,
     "future resolved until the caller resumes (event-loop scheduling)"),
)
PARALLEL_STAGE = ("appended locally", PROPOSED, PERSISTED,
                  "leader's own log write (fsync with --fsync); runs in parallel with sending")
TOTAL_STAGE = "total on the leader"

_SENDS = frozenset({int(MessageType.APPEND), int(MessageType.ACCEPT)})
_ACKS = frozenset({int(MessageType.APPEND_RESPONSE), int(MessageType.ACCEPTED)})
# Nanoseconds, 1 ns .. 100 s, 3 significant digits.
_HIGHEST_NS = 100_000_000_000


def new_histogram() -> HdrHistogram:
    return HdrHistogram(1, _HIGHEST_NS, 3)


class LatencyProfiler:
    """Collects per-proposal milestones from engine.Node's hooks (see the module docstring).

    Assumes one stable leader during the run (a benchmark): rows are keyed by log index, so
    an index rewritten by a new leader would mix two proposals.
    """

    def __init__(self, cluster_size: int, clock: Any = time.perf_counter_ns) -> None:
        self.clock = clock
        # Followers whose ack, with the leader's own copy, makes a majority.
        self._followers_needed = (cluster_size // 2 + 1) - 1
        self.recording = False
        self._enqueued: dict[Any, int] = {}
        self._rows: dict[int, list[int]] = {}
        self._acked: dict[int, int] = {}
        # High-water marks: every index at or below was stamped for that milestone.
        self._marks = [0] * 8
        self._first_row = 0  # first index with a row: stamping never scans below it
        self._done: list[list[int]] = []
        self.failed = 0

    # ------------------------------------------------------------------ control

    def start(self) -> None:
        """Profile proposals enqueued from now on."""
        self.recording = True

    def stop(self) -> None:
        """Stop taking new proposals; ones already in flight still complete their rows."""
        self.recording = False

    # ------------------------------------------------------------------ hooks (engine.driver.Hooks)

    def enqueued(self, future: Any) -> None:
        if self.recording:
            self._enqueued[future] = self.clock()

    def submitted(self, first: int, live: list[tuple[bytes, Any, float]]) -> None:
        if not self._enqueued:
            return
        now = self.clock()
        for offset, (_, future, _) in enumerate(live):
            started = self._enqueued.pop(future, None)
            if started is None:
                continue
            index = first + offset
            if not self._first_row:
                self._first_row = index
            self._rows[index] = [started, now, 0, 0, 0, 0, 0, 0]
            # A remote client's future (engine.aio.node._AnsweringFuture) answers the moment
            # it settles: observe that; a library caller resumes in a done-callback.
            hook = getattr(future, "observe", None) or future.add_done_callback
            hook(lambda f, i=index: self._answered(i, f))

    def received(self, messages: Iterable[Any]) -> None:
        moved = False
        for message in messages:
            if message.type in _ACKS and not message.reject and message.index:
                if message.index > self._acked.get(message.src, 0):
                    self._acked[message.src] = message.index
                    moved = True
        if moved and self._followers_needed:
            acked = sorted(self._acked.values(), reverse=True)
            if len(acked) >= self._followers_needed:
                self._stamp(QUORUM, acked[self._followers_needed - 1])

    def ready(self, ready: Any) -> None:
        last_sent = 0
        for message in ready.messages:
            if message.type in _SENDS and message.entries:
                last_sent = max(last_sent, message.entries[-1].index)
        if last_sent:
            self._stamp(SENT, last_sent)
        if ready.committed_entries:
            self._stamp(COMMITTED, ready.committed_entries[-1].index)

    def persisted(self, ready: Any) -> None:
        if ready.entries:
            self._stamp(PERSISTED, max(entry.index for entry in ready.entries))

    def applied(self, ready: Any) -> None:
        self._stamp(APPLIED, ready.committed_entries[-1].index)

    def snapshot_installed(self, snapshot: Any) -> None:
        """Not a stage of a proposal's path."""

    def snapshot_taken(self, snapshot: Any) -> None:
        """Not a stage of a proposal's path."""

    # ------------------------------------------------------------------ internals

    def _stamp(self, milestone: int, through: int) -> None:
        mark = self._marks[milestone]
        if through <= mark:
            return
        self._marks[milestone] = through
        rows = self._rows
        if not rows:
            return
        now = self.clock()
        for index in range(max(mark + 1, self._first_row), through + 1):
            row = rows.get(index)
            if row is not None and not row[milestone]:
                row[milestone] = now

    def _answered(self, index: int, future: Any) -> None:
        row = self._rows.pop(index, None)
        if row is None:
            return
        if future.cancelled() or future.exception() is not None:
            self.failed += 1
            return
        row[ANSWERED] = self.clock()
        self._done.append(row)  # the arithmetic waits for summary(): keep this hook cheap

    # ------------------------------------------------------------------ report

    @property
    def completed(self) -> int:
        return len(self._done)

    def stage_durations_ns(self) -> dict[str, np.ndarray]:
        """Every completed write's duration per stage (ns), in completion order."""
        rows = np.asarray(self._done, dtype=np.int64).reshape(-1, 8)
        # An unobserved milestone (0, or stamped before the one it follows) takes the previous
        # milestone's time: its stage has length 0.
        path = rows[:, list(_CRITICAL_PATH)]
        path = np.maximum.accumulate(path, axis=1)
        rows[:, list(_CRITICAL_PATH)] = path
        out = {name: rows[:, end] - rows[:, start] for name, start, end, _ in STAGES}
        persisted = np.where(rows[:, PERSISTED] > 0, rows[:, PERSISTED], rows[:, PROPOSED])
        out[PARALLEL_STAGE[0]] = np.maximum(persisted - rows[:, PROPOSED], 0)
        out[TOTAL_STAGE] = rows[:, ANSWERED] - rows[:, ENQUEUED]
        return out

    def summary(self) -> dict[str, Any]:
        """Per-stage percentiles (ms, HdrHistogram) and each stage's share of the mean total."""
        durations = self.stage_durations_ns()
        total_mean = float(durations[TOTAL_STAGE].mean()) if self.completed else 0.0
        stages = []
        for name, _, _, meaning in (*STAGES, PARALLEL_STAGE):
            stages.append(_stage_summary(name, meaning, durations[name], total_mean,
                                         name != PARALLEL_STAGE[0]))
        stages.append(_stage_summary(TOTAL_STAGE, "enqueued until answered",
                                     durations[TOTAL_STAGE], total_mean, False))
        return {"proposals": self.completed, "failed": self.failed, "stages": stages}


def _stage_summary(name: str, meaning: str, values_ns: np.ndarray, total_mean: float,
                   on_critical_path: bool) -> dict[str, Any]:
    histogram = new_histogram()
    clipped = np.clip(values_ns, 1, _HIGHEST_NS)
    distinct, counts = np.unique(clipped, return_counts=True)
    for value, count in zip(distinct.tolist(), counts.tolist(), strict=True):
        histogram.record_value(value, count)
    count = len(values_ns)
    mean = float(values_ns.mean()) if count else 0.0
    out: dict[str, Any] = {
        "stage": name, "meaning": meaning, "count": count,
        "critical_path": on_critical_path,
        "mean_ms": mean / 1e6,
        "share_of_total": (mean / total_mean) if (on_critical_path and total_mean) else None,
    }
    for percentile in (50, 90, 99, 99.9):
        out[f"p{percentile}_ms"] = (
            histogram.get_value_at_percentile(percentile) / 1e6 if count else None)
    out["max_ms"] = histogram.get_max_value() / 1e6 if count else None
    return out


def format_summary(summary: dict[str, Any]) -> str:
    """A table a person can read: where does a proposal's time go on the leader?"""
    lines = [
        f"latency profile on the leader ({summary['proposals']:,} proposals"
        + (f", {summary['failed']} failed" if summary["failed"] else "") + "):",
        f"  {'stage':<24}{'share':>7}{'mean':>10}{'p50':>10}{'p90':>10}{'p99':>10}"
        f"{'p99.9':>10}{'max':>10}",
    ]

    def ms(value: float | None) -> str:
        return "-" if value is None else f"{value:.3f}"

    for stage in summary["stages"]:
        share = stage["share_of_total"]
        name = stage["stage"] if stage["critical_path"] else f"({stage['stage']})"
        lines.append(
            f"  {name:<24}{'' if share is None else f'{100 * share:.0f}%':>7}"
            f"{ms(stage['mean_ms']):>10}{ms(stage['p50_ms']):>10}{ms(stage['p90_ms']):>10}"
            f"{ms(stage['p99_ms']):>10}{ms(stage['p99.9_ms']):>10}{ms(stage['max_ms']):>10}"
        )
    lines.append("  (times in ms; stages without parentheses add up to the total; share = of "
                 "the mean total)")
    for stage in summary["stages"]:
        lines.append(f"  {stage['stage']}: {stage['meaning']}")
    return "\n".join(lines)
