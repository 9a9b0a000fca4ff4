"""Jepsen-style fault injection against real `serve` processes: nemeses, runs and their checks.

    from engine.testing.nemesis import RunConfig, run
    result = asyncio.run(run(RunConfig(protocol="raft", nodes=5, mix="crash", seed=7,
                                       fault_s=20.0, out_dir=Path("/tmp/run"))))
    assert result.ok, result.report()

or `python -m engine.testing.nemesis --protocol paxos --nodes 5 --mix network --seed 7`.

A run (Jepsen's phases, etcd suite shape, ../shared/anchors-testing.md §1):

  1. start n nodes (engine.testing.process_cluster), wait for a leader;
  2. quiet window: the workload (engine.testing.workloads) runs with no fault — availability
     is measured here;
  3. fault phase: every `interval_s` the nemesis alternates "inject one fault of the mix" and
     "heal it" (Jepsen's start/stop flip-flop), the workload keeps running;
  4. heal everything (resume, restart and wait until the restarted nodes serve, clear
     filters, links up), recovery period;
  5. a second quiet window (availability measured again);
  6. stop the workload; final reads of every register key and set element on every node.

Checks (RunResult.failures lists every one that failed):
  * linearizability of the register history (check_linearizable, model "kv"), the final reads
    included;
  * the grow-only set: no acknowledged element lost, nothing that was never attempted, nothing
    whose add definitely failed (workloads.check_set), read on every node;
  * no "Traceback" or "InvariantViolation" in any node's log, no node exited on its own;
  * no operation answered with a definite failure (errors.Rejected) is seen applied
    (rejected_operations_seen_applied);
  * what the nemeses found (_Nemesis.findings): a torn WAL tail the WAL did not handle, a
    wrong-members split brain, a clock step that left the cluster without progress;
  * availability: in each quiet window at least `min_availability` (99 %) of operations got a
    definite answer.

Nemeses (NEMESES; a mix is a list of their names, MIXES):
  kill-one, kill-leader, kill-minority,  kill -9; healed by a restart on the same WAL
  kill-all
  pause-one, pause-leader                SIGSTOP; healed by SIGCONT
  kill-torn-wal                          kill -9 one node, append a torn or bit-flipped copy of
                                         its WAL's last record, restart (see
                                         ProcessCluster.append_torn_tail for why a copy);
                                         the WAL must recover what it held before
  wrong-members                          an impostor reusing a member's id on a new port with
                                         a wrong member list takes writes until the heal; it
                                         must commit nothing, no two real members may lead in
                                         one term, no real member may hold its keys
  partition-majority                     a random minority | the majority (both directions)
  partition-leader                       the leader alone | everybody else
  partition-bridge                       two halves that cannot talk, one node talks to both
  partition-one-way                      a minority stops hearing the rest; they still hear it
  packet-loss / packet-duplicate /       on every node: 20 % loss / 20 % duplication /
  packet-delay                           40-60 ms delay with jitter, which reorders (Jepsen's
                                         netem defaults, anchors-testing.md §1)
  netns-link-down                        (ProcessCluster(netns=True) only) a minority's links
                                         set down in the kernel: each node of it alone
  clock-skew                             every node's logical clock runs at its own rate
                                         (ADMIN "tick_scale"), all within the lease's drift
                                         bound (see LEASE_SAFE_FOLLOWER_SCALE)
  clock-skew-partition-leader            followers' clocks fast (within the bound), the
                                         leader slow or fast, then the leader isolated: the
                                         case where a lease read could be stale
  clock-step                             restart a node with its wall clock an hour back, kill
                                         others down to a quorum that needs it: a write must
                                         commit within PROGRESS_DEADLINE_S
  clock-skew-beyond                      harness self-test, in no mix: the same with the
                                         followers' clocks 4x fast, far beyond the bound;
                                         with lease reads the checker must be able to catch
                                         the stale reads that follow
  wipe-all                               harness self-test, in no mix: kill -9 every node and
                                         delete its data; the checks must report the loss

Clocks: the engine reads the wall clock only for a transport's boot epoch (clock-step steps
it); what leases depend on is clock RATE (Raft thesis §6.4.1), so the skew nemeses skew
rates, not offsets. Run them with lease reads
(WorkloadConfig(read_mode="lease"), mix "clock"); docs/reliability.md has the bound.

Not here, on purpose: "lose unsynced writes on restart" (kill -9 cannot lose them: the page
cache survives the process; see ProcessCluster.append_torn_tail).

Reproducing: the seed fixes the fault schedule, the nemesis targets and the workload's choices.
Real processes on a real scheduler are not deterministic, so a seed reproduces a run's shape,
not its exact interleaving; a failing run leaves the history and the node logs in out_dir.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import random
import shutil
import sys
import tempfile
import time
import traceback
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from engine import errors
from engine.config import TimingConfig
from engine.testing.linearizability import CheckResult, check_linearizable
from engine.testing.process_cluster import ProcessCluster, free_udp_ports
from engine.testing.workloads import (
    SET_PREFIX,
    History,
    SetCheck,
    Workload,
    WorkloadConfig,
    availability,
    check_set,
    final_reads,
)

LOG_PATTERNS = ("Traceback", "InvariantViolation")
IMPOSTOR_PREFIX = "impostor/"     # keys the wrong-members impostor writes
CLOCK_STEP_PREFIX = "clock-step/"  # the write the clock-step nemesis waits for

PROCESS_NEMESES = ["kill-one", "kill-leader", "kill-minority", "kill-all", "pause-one",
                   "pause-leader", "kill-torn-wal"]
NETWORK_NEMESES = ["partition-majority", "partition-leader", "partition-bridge",
                   "partition-one-way", "packet-loss", "packet-duplicate", "packet-delay"]
CLOCK_NEMESES = ["clock-skew", "clock-skew-partition-leader"]
# Node identity: a wrong member list, a wall clock stepped back (boot epochs). In "all" only:
# the "clock" mix is the lease-read mix (clock rates), "crash" the process faults.
IDENTITY_NEMESES = ["wrong-members", "clock-step"]
MIXES: dict[str, list[str]] = {
    "crash": PROCESS_NEMESES,
    "network": NETWORK_NEMESES,
    "clock": CLOCK_NEMESES,
    "identity": IDENTITY_NEMESES,
    "all": PROCESS_NEMESES + NETWORK_NEMESES + CLOCK_NEMESES + IDENTITY_NEMESES,
}

# The lease bound for the serve defaults (TimingConfig(), lease_drift_ticks=None): a leader
# serves lease reads for T - d of its ticks after a heartbeat round a quorum acknowledged
# (T = election_timeout_ticks = 30, d = lease_drift_ticks = T // 5 = 6), measured on its
# ticks AND its loop's monotonic clock; a follower refuses votes for T of ITS ticks after it
# last heard the leader (§4.2.3). No new leader can exist while the old one's lease holds as
# long as T * follower_scale > T - d, i.e. follower_scale > (T - d) / T = 0.8, whatever the
# leader's scale (its real-time cross-check caps the lease even when its ticks run slow).
_T = TimingConfig().election_timeout_ticks
LEASE_SAFE_FOLLOWER_SCALE = (_T - max(2, _T // 5)) / _T
# Skews the nemeses draw: within the bound with a margin for scheduling noise, and beyond it.
SKEW_WITHIN = (LEASE_SAFE_FOLLOWER_SCALE + 0.05, 2.0)
# 4x fast: elections 75-150 ms after the last heartbeat, inside a lease of up to 240 ms; not
# faster, or the followers would time out between two heartbeats (every 50 ms) even when
# nothing is partitioned, and there would be no lease left to break.
SKEW_BEYOND_FOLLOWER_SCALE = 0.25


@dataclass
class RunConfig:
    protocol: str = "raft"
    nodes: int = 3
    mix: str | list[str] = "crash"
    seed: int = 0
    fault_s: float = 20.0           # length of the fault phase
    interval_s: float = 2.5         # between two nemesis steps (inject, heal, inject, ...)
    quiet_s: float = 3.0            # each fault-free window
    recovery_s: float = 3.0         # after the final heal, before the second quiet window
    min_availability: float = 0.99
    netns: bool = False
    workload: WorkloadConfig = field(default_factory=WorkloadConfig)
    out_dir: Path | None = None     # where to leave history + logs on failure (None: a tmp dir)
    keep: bool = False              # keep out_dir even when the run passed
    check_time_limit_s: float = 30.0

    def nemeses(self) -> list[str]:
        names = MIXES[self.mix] if isinstance(self.mix, str) else list(self.mix)
        unknown = [n for n in names if n not in NEMESES]
        if unknown:
            raise errors.ConfigError(f"unknown nemeses {unknown}; known: {sorted(NEMESES)}")
        return names


@dataclass
class RunResult:
    config: RunConfig
    failures: list[str]
    linearizability: CheckResult | None
    set_check: SetCheck | None
    availability: dict[str, tuple[int, int]]
    faults: list[str]
    operations: int
    outcomes: dict[str, int]      # workload completions by type ("ok", "fail", "info")
    elapsed_s: float
    out_dir: Path | None          # kept on failure (or with keep=True), else None
    # Reads the nodes served from a leader lease (counters of the nodes alive at the end;
    # a restart resets a node's count), so a lease run can show it exercised leases.
    lease_reads: int = 0

    @property
    def ok(self) -> bool:
        return not self.failures

    def report(self) -> str:
        c = self.config
        mix = c.mix if isinstance(c.mix, str) else "+".join(c.mix)
        lines = [f"{c.protocol} n={c.nodes} mix={mix} seed={c.seed}: "
                 f"{'PASS' if self.ok else 'FAIL'} in {self.elapsed_s:.1f} s, "
                 f"{self.operations} ops, {len(self.faults)} nemesis steps; workload "
                 + ", ".join(f"{k} {v}" for k, v in sorted(self.outcomes.items()))
                 + (f"; {self.lease_reads} lease reads" if self.lease_reads else "")]
        if self.linearizability is not None:
            lines.append("  " + self.linearizability.summary())
        if self.set_check is not None:
            lines.append("  " + self.set_check.summary())
        for window, (answered, total) in self.availability.items():
            share = answered / total if total else 1.0
            lines.append(f"  availability {window}: {answered}/{total} = {share:.1%}")
        lines.append("  faults: " + ", ".join(self.faults))
        lines += [f"  FAILED: {failure}" for failure in self.failures]
        if self.out_dir is not None:
            lines.append(f"  history and logs: {self.out_dir}")
        return "\n".join(lines)


# ---------------------------------------------------------------------------- nemeses


class _Nemesis:
    """Injects faults into a ProcessCluster and remembers how to heal them."""

    def __init__(self, cluster: ProcessCluster, history: History, rng: random.Random) -> None:
        self.cluster = cluster
        self.history = history
        self.rng = rng
        self.killed: set[int] = set()
        self.torn: set[int] = set()     # killed nodes whose WAL gets a torn tail on restart
        self.filtered: set[int] = set()
        self.links_down: set[int] = set()
        self.skewed: set[int] = set()     # nodes with a tick_scale set (healed by clear)
        self.log: list[str] = []
        self.crashed: list[tuple[int, int]] = []  # (node, exit code): exited on its own
        self.heals = 0                   # heals so far; a finding names the heal it came from
        self.findings: list[str] = []    # what a nemesis saw go wrong (checked by run())
        self.impostor: _Impostor | None = None   # wrong-members: running until the heal
        self.impostor_keys: list[str] = []       # what impostors acknowledged (read at the end)

    def reap(self) -> None:
        """Take nodes whose process ended on its own out of play (they stay down: a node
        that cannot restart is a finding, not something to paper over)."""
        for node_id, code in self.cluster.crashed():
            self.crashed.append((node_id, code))
            self._note("exited", {"node": node_id, "code": code})

    def _note(self, f: str, value: Any) -> None:
        self.history.nemesis(f, value)
        self.log.append(f"{f}:{value}" if value is not None else f)

    def minority(self) -> list[int]:
        ids = self.cluster.node_ids
        return self.rng.sample(ids, self.rng.randint(1, (len(ids) - 1) // 2))

    async def leader(self) -> int:
        leader = await self.cluster.find_leader()
        return leader if leader is not None else self.rng.choice(self.cluster.running())

    async def inject(self, name: str) -> None:
        await NEMESES[name](self)

    async def heal(self) -> None:
        """Undo every active fault. A torn WAL tail the WAL does not handle is a finding
        (self.findings, naming this heal), not an exception: the node still restarts, and a
        second heal (the run's final one) never damages the same WAL twice."""
        cluster = self.cluster
        self.heals += 1
        if self.impostor is not None:
            await self._stop_impostor(self.impostor)
            self.impostor = None
        for node_id in sorted(cluster.paused):
            cluster.resume(node_id)
        if self.links_down:
            cluster.link_down(sorted(self.links_down), down=False)
            self.links_down.clear()
        restarted = sorted(self.killed)
        self.killed.clear()
        for node_id in restarted:
            if node_id in cluster.processes:
                continue
            if node_id in self.torn:
                self.torn.discard(node_id)
                self._tear_tail(node_id)
            cluster.start(node_id)
        await asyncio.sleep(0.5)  # a node that cannot start dies within this
        self.reap()
        # The recovery period starts once the restarted processes serve: starting Python
        # takes seconds on a loaded 2-core machine (7 s seen in a CI-like run), which is not
        # the protocol's recovery. One that never serves is left to the checks.
        await cluster.wait_serving(restarted)
        for node_id in sorted(self.filtered | self.skewed):
            if node_id in cluster.processes:
                await cluster.clear_faults(node_id)
        self.filtered.clear()
        self.skewed.clear()
        self._note("heal", self.heals)

    def _tear_tail(self, node_id: int) -> None:
        """Append a torn or bit-flipped copy of the node's last WAL record (stopped node) and
        check, on a copy, that its WAL recovers exactly what it held before."""
        cluster = self.cluster
        before = cluster.recovered_state(node_id)
        tail = cluster.append_torn_tail(node_id, self.rng)
        if tail is None:
            return
        self._note("torn-wal-tail", {"node": node_id, "kind": tail.kind,
                                     "bytes": len(tail.data), "heal": self.heals})
        problem = cluster.check_torn_tail(node_id, tail, before)
        if problem is not None:
            self.findings.append(f"heal {self.heals}, node {node_id}: {problem}")

    async def _stop_impostor(self, impostor: _Impostor) -> None:
        impostor.stop.set()
        await asyncio.gather(impostor.writer, impostor.monitor, return_exceptions=True)
        self.cluster.stop_impostor()
        self.impostor_keys += impostor.acknowledged
        self._note("impostor-stopped", {"acknowledged": len(impostor.acknowledged),
                                        "heal": self.heals})
        if impostor.acknowledged:
            # Its own quorum needs a real member's acknowledgements (impostor_members).
            self.findings.append(
                f"split brain (wrong-members, heal {self.heals}): the impostor {impostor.what} "
                f"committed {len(impostor.acknowledged)} writes, so real members accepted "
                f"its log, e.g. {impostor.acknowledged[:3]}")
        for term, leaders in sorted(impostor.leaders.items()):
            if len(leaders) > 1:
                self.findings.append(
                    f"split brain (wrong-members, heal {self.heals}): real members "
                    f"{sorted(leaders)} all led in term {term} while the impostor "
                    f"{impostor.what} ran")

    # -- the faults

    def _kill(self, ids: list[int]) -> None:
        for node_id in ids:
            if node_id in self.cluster.processes:
                self.cluster.kill(node_id)
                self.killed.add(node_id)

    async def _partition(self, groups: list[list[int]], one_way: bool = False) -> None:
        if one_way:  # groups[0] stops hearing groups[1]; groups[1] still hears groups[0]
            for node_id in groups[0]:
                await self.cluster.set_faults(node_id, drop_from=groups[1])
                self.filtered.add(node_id)
            return
        await self.cluster.partition(groups)
        self.filtered.update(i for g in groups for i in g)

    async def _packets(self, loss: float = 0.0, duplicate: float = 0.0, delay_ms: float = 0.0,
                       jitter_ms: float = 0.0) -> None:
        for node_id in self.cluster.running():
            await self.cluster.set_faults(node_id, loss=loss, duplicate=duplicate,
                                          delay_ms=delay_ms, jitter_ms=jitter_ms,
                                          seed=self.rng.getrandbits(32))
            self.filtered.add(node_id)

    async def _skew(self, scales: dict[int, float]) -> None:
        for node_id, scale in scales.items():
            if node_id in self.cluster.processes:
                await self.cluster.set_tick_scale(node_id, scale)
                self.skewed.add(node_id)

    async def _skew_and_isolate_leader(self, follower_scale: tuple[float, float],
                                       name: str = "clock-skew-partition-leader") -> None:
        leader = await self.leader()
        rest = [i for i in self.cluster.node_ids if i != leader]
        scales = {i: round(self.rng.uniform(*follower_scale), 3) for i in rest}
        scales[leader] = round(self.rng.uniform(*SKEW_WITHIN), 3)
        # The skew first: the followers must already run fast when they stop hearing it.
        await self._skew(scales)
        await self._partition([[leader], rest])
        self._note(name, {"leader": leader, "tick_scale": {str(i): s for i, s in scales.items()}})


async def _kill_one(n: _Nemesis) -> None:
    target = n.rng.choice(n.cluster.running())
    n._kill([target])
    n._note("kill", [target])


async def _kill_leader(n: _Nemesis) -> None:
    target = await n.leader()
    n._kill([target])
    n._note("kill-leader", [target])


async def _kill_minority(n: _Nemesis) -> None:
    targets = n.minority()
    n._kill(targets)
    n._note("kill", sorted(targets))


async def _kill_all(n: _Nemesis) -> None:
    targets = n.cluster.running()
    n._kill(targets)
    n._note("kill", sorted(targets))


async def _kill_torn_wal(n: _Nemesis) -> None:
    target = n.rng.choice(n.cluster.running())
    n._kill([target])
    n.torn.add(target)
    n._note("kill-torn-wal", [target])


async def _pause_one(n: _Nemesis) -> None:
    target = n.rng.choice(n.cluster.running())
    n.cluster.pause(target)
    n._note("pause", [target])


async def _pause_leader(n: _Nemesis) -> None:
    target = await n.leader()
    n.cluster.pause(target)
    n._note("pause-leader", [target])


async def _partition_majority(n: _Nemesis) -> None:
    minority = n.minority()
    majority = [i for i in n.cluster.node_ids if i not in minority]
    await n._partition([sorted(minority), majority])
    n._note("partition", [sorted(minority), majority])


async def _partition_leader(n: _Nemesis) -> None:
    leader = await n.leader()
    rest = [i for i in n.cluster.node_ids if i != leader]
    await n._partition([[leader], rest])
    n._note("partition-leader", [[leader], rest])


async def _partition_bridge(n: _Nemesis) -> None:
    """Jepsen's bridge: halves A and B cannot talk; the bridge node talks to both, so each
    side sees a majority through it (for 3 nodes: 1 | 2 | 3 with 2 in the middle)."""
    ids = n.cluster.node_ids[:]
    n.rng.shuffle(ids)
    bridge, rest = ids[0], ids[1:]
    half = len(rest) // 2
    a, b = sorted(rest[:half]), sorted(rest[half:])
    await n._partition([a, b])  # the bridge is in no group: it hears everyone
    n._note("partition-bridge", {"a": a, "bridge": bridge, "b": b})


async def _partition_one_way(n: _Nemesis) -> None:
    deaf = sorted(n.minority())
    rest = [i for i in n.cluster.node_ids if i not in deaf]
    await n._partition([deaf, rest], one_way=True)
    n._note("partition-one-way", {"deaf": deaf, "to": rest})


async def _packet_loss(n: _Nemesis) -> None:
    await n._packets(loss=0.2)
    n._note("packet", {"loss": 0.2})


async def _packet_duplicate(n: _Nemesis) -> None:
    await n._packets(duplicate=0.2)
    n._note("packet", {"duplicate": 0.2})


async def _packet_delay(n: _Nemesis) -> None:
    await n._packets(delay_ms=40.0, jitter_ms=20.0)
    n._note("packet", {"delay_ms": 40.0, "jitter_ms": 20.0})


async def _clock_skew(n: _Nemesis) -> None:
    scales = {i: round(n.rng.uniform(*SKEW_WITHIN), 3) for i in n.cluster.running()}
    await n._skew(scales)
    n._note("clock-skew", {str(i): s for i, s in scales.items()})


async def _clock_skew_partition_leader(n: _Nemesis) -> None:
    await n._skew_and_isolate_leader((SKEW_WITHIN[0], 1.0))


async def _clock_skew_beyond(n: _Nemesis) -> None:
    """Harness self-test, in no mix: followers' clocks far beyond the lease's drift bound,
    then the leader isolated; lease reads on it can then be stale (docs/reliability.md)."""
    scale = SKEW_BEYOND_FOLLOWER_SCALE
    await n._skew_and_isolate_leader((scale, scale), "clock-skew-beyond")


async def _wipe_all(n: _Nemesis) -> None:
    """Harness self-test, in no mix: kill every node and delete its data directory, a total
    loss the engine does not claim to survive; a run with it must report lost writes."""
    targets = n.cluster.running()
    n._kill(targets)
    for node_id in targets:
        shutil.rmtree(n.cluster.data_dir(node_id), ignore_errors=True)
    n._note("wipe-all", targets)


async def _netns_link_down(n: _Nemesis) -> None:
    targets = sorted(n.minority())
    n.cluster.link_down(targets)
    n.links_down.update(targets)
    n._note("link-down", targets)


@dataclass
class _Impostor:
    """A wrong-members node while it runs: its writer and the leader monitor."""

    what: str
    stop: asyncio.Event
    acknowledged: list[str]
    leaders: dict[int, set[int]]    # term or ballot -> real members that said they led in it
    writer: asyncio.Task[None] = field(init=False)
    monitor: asyncio.Task[None] = field(init=False)


def impostor_members(cluster: ProcessCluster, rng: random.Random,
                     address: str) -> tuple[int, dict[int, str]]:
    """The impostor's id and wrong member list: a real member's id reused on a new port, with
    (a) a list of itself and one real member (a two-node cluster whose quorum needs that
    member) or (b) itself plus every real member but the one whose id it took. Either way
    it can commit nothing unless real members vote for it and accept its entries."""
    ids = cluster.running()
    reused = rng.choice(ids)
    others = [i for i in cluster.node_ids if i != reused]
    chosen = [rng.choice(others)] if rng.random() < 0.5 else others
    return reused, {reused: address, **{i: cluster.members[i] for i in chosen}}


async def _impostor_writer(impostor: _Impostor, cluster: ProcessCluster, address: str,
                           tag: str) -> None:
    async with cluster.client([address], attempt_timeout=0.1, timeout=0.3) as client:
        for count in itertools.count():
            if impostor.stop.is_set():
                return
            key = f"{IMPOSTOR_PREFIX}{tag}-{count}"
            try:
                await client.put(key.encode(), b"impostor")
                impostor.acknowledged.append(key)
            except errors.EngineError:
                await asyncio.sleep(0.05)


async def _leader_monitor(impostor: _Impostor, cluster: ProcessCluster) -> None:
    """Every 100 ms: which real members say they lead, in which term (or ballot)."""
    while not impostor.stop.is_set():
        for node_id, status in (await cluster.statuses(wait=0.3)).items():
            if status.get("role") == "leader":
                term = int(status.get("term", status.get("ballot", 0)) or 0)
                impostor.leaders.setdefault(term, set()).add(node_id)
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(impostor.stop.wait(), 0.1)


async def _wrong_members(n: _Nemesis) -> None:
    """An extra node with the cluster's key and a wrong member list takes writes until the
    heal; see impostor_members. The checks: it commits nothing, no two real members lead in
    one term meanwhile, no real member ever holds its keys, and the usual history checks."""
    cluster = n.cluster
    if cluster.uses_netns or n.impostor is not None:
        n._note("wrong-members-skipped", "netns" if cluster.uses_netns else "running")
        return
    address = f"127.0.0.1:{free_udp_ports(1)[0]}"
    reused, members = impostor_members(cluster, n.rng, address)
    cluster.start_impostor(reused, members)
    what = f"node {reused} at {address} with members {sorted(members)}"
    impostor = _Impostor(what, asyncio.Event(), [], {})
    impostor.writer = asyncio.ensure_future(
        _impostor_writer(impostor, cluster, address, str(cluster.impostor_starts)))
    impostor.monitor = asyncio.ensure_future(_leader_monitor(impostor, cluster))
    n.impostor = impostor
    n._note("wrong-members", {"node": reused, "address": address,
                              "members": sorted(members)})


# An election round lasts at most 2T (timeouts randomized in [T, 2T), Raft §5.2; the Paxos
# core's phase-1 timeouts likewise) and fails only on a split vote, which randomized timeouts
# make the exception (Raft §9.3); the client retries every attempt timeout. 20 rounds.
_T_MAX_S = 2 * TimingConfig().election_timeout_ticks * TimingConfig().tick_ms / 1000
PROGRESS_DEADLINE_S = 20 * _T_MAX_S
CLOCK_STEP_S = -3600.0


async def _clock_step(n: _Nemesis) -> None:
    """Restart one node with its wall clock an hour back (ENGINE_TEST_CLOCK_OFFSET_S), then
    kill as many others as leave exactly a quorum that includes it: the cluster must elect a
    leader and commit a write within PROGRESS_DEADLINE_S, or a finding says it did not."""
    cluster = n.cluster
    running = cluster.running()
    quorum = len(cluster.node_ids) // 2 + 1
    if len(running) < quorum:
        n._note("clock-step-skipped", {"running": running})
        return
    stepped = n.rng.choice(running)
    cluster.kill(stepped)
    cluster.start(stepped, clock_offset_s=CLOCK_STEP_S)
    n._note("clock-step", {"node": stepped, "offset_s": CLOCK_STEP_S})
    await cluster.wait_serving([stepped])
    others = [i for i in running if i != stepped]
    victims = sorted(n.rng.sample(others, len(running) - quorum))
    n._kill(victims)
    n._note("kill", victims)
    alive = [cluster.members[i] for i in cluster.running()]
    started = time.monotonic()
    async with cluster.client(alive, attempt_timeout=0.25,
                              timeout=PROGRESS_DEADLINE_S) as client:
        try:
            await client.put(f"{CLOCK_STEP_PREFIX}{n.heals}".encode(), b"progress")
        except errors.EngineError as exc:
            n.findings.append(
                f"clock-step (before heal {n.heals + 1}): node {stepped} restarted with its "
                f"clock {CLOCK_STEP_S:+.0f} s, nodes {victims} down: no write committed "
                f"within {PROGRESS_DEADLINE_S:.0f} s ({type(exc).__name__}: {exc})")
            return
    n._note("clock-step-progress", {"s": round(time.monotonic() - started, 2)})


NEMESES: dict[str, Callable[[_Nemesis], Awaitable[None]]] = {
    "kill-one": _kill_one,
    "kill-leader": _kill_leader,
    "kill-minority": _kill_minority,
    "kill-all": _kill_all,
    "kill-torn-wal": _kill_torn_wal,
    "pause-one": _pause_one,
    "pause-leader": _pause_leader,
    "partition-majority": _partition_majority,
    "partition-leader": _partition_leader,
    "partition-bridge": _partition_bridge,
    "partition-one-way": _partition_one_way,
    "packet-loss": _packet_loss,
    "packet-duplicate": _packet_duplicate,
    "packet-delay": _packet_delay,
    "netns-link-down": _netns_link_down,
    "clock-skew": _clock_skew,
    "clock-skew-partition-leader": _clock_skew_partition_leader,
    "clock-skew-beyond": _clock_skew_beyond,
    "wipe-all": _wipe_all,
    "wrong-members": _wrong_members,
    "clock-step": _clock_step,
}


# ---------------------------------------------------------------------------- checks


def scan_logs(cluster: ProcessCluster, patterns: tuple[str, ...] = LOG_PATTERNS) -> list[str]:
    """One line per node log that contains a pattern: where and the first matching line."""
    found = []
    for node_id in cluster.node_ids:
        text = cluster.log_text(node_id)
        for pattern in patterns:
            position = text.find(pattern)
            if position >= 0:
                line_start = text.rfind("\n", 0, position) + 1
                line_end = text.find("\n", position)
                line = text[line_start:line_end if line_end >= 0 else None]
                found.append(f"n{node_id}.log contains {pattern!r}: {line.strip()[:200]}")
    return found


def rejected_operations_seen_applied(events: list[dict[str, Any]]) -> list[str]:
    """One line per operation answered with a definite failure (engine.errors.Rejected: the
    work provably never entered a log, recorded "fail" with error "rejected: ...") whose
    value was nevertheless seen applied: read by an acknowledged read (the final reads
    included) or taken as the expected value of an acknowledged cas. Written values are
    unique per key (engine.testing.workloads), so a sighting means it applied."""
    invoked: dict[Any, dict[str, Any]] = {}
    rejected: dict[tuple[str, str], dict[str, Any]] = {}
    seen: dict[tuple[str, str], dict[str, Any]] = {}
    for event in events:
        if event["process"] == "nemesis":
            continue
        if event["type"] == "invoke":
            invoked[event["process"]] = event
            continue
        invoke = invoked.pop(event["process"], None)
        if invoke is None:
            continue
        f, key, value = invoke["f"], invoke["key"], invoke["value"]
        if event["type"] == "fail" and str(event.get("error", "")).startswith("rejected"):
            written = value[1] if f == "cas" else value
            if f in ("write", "cas", "add"):
                rejected[(key, str(written))] = invoke
        elif event["type"] == "ok":
            if f == "read" and event["value"] is not None:
                seen.setdefault((key, str(event["value"])), event)
            elif f == "cas":
                seen.setdefault((key, str(value[0])), event)
    return [f"{invoke['f']} {key}={written!r} (process {invoke['process']}) was answered "
            f"Rejected but applied: seen by process {seen[(key, written)]['process']}"
            + (f" on node {seen[(key, written)]['node']}" if "node" in seen[(key, written)]
               else "")
            for (key, written), invoke in rejected.items() if (key, written) in seen]


def write_history(path: Path, events: list[dict[str, Any]]) -> None:
    with open(path, "w", encoding="utf-8") as stream:
        for event in events:
            stream.write(json.dumps(event, separators=(",", ":")) + "\n")


# ---------------------------------------------------------------------------- the run


async def _impostor_keys_on_members(nemesis: _Nemesis, alive: dict[int, str]) -> list[str]:
    """Read every key a wrong-members impostor acknowledged on every real member (outside
    the run's history): a real member holding one applied the impostor's log."""
    if not nemesis.impostor_keys:
        return []
    reads = await final_reads(History(), alive, nemesis.cluster.key, nemesis.impostor_keys)
    return [f"split brain (wrong-members): node {node} holds the impostor's {key}"
            for node, seen in sorted(reads.items()) for key, value in sorted(seen.items())
            if value is not None]


async def _sleep_until(deadline: float) -> None:
    await asyncio.sleep(max(0.0, deadline - time.monotonic()))


async def _fault_phase(nemesis: _Nemesis, names: list[str], config: RunConfig) -> None:
    end = time.monotonic() + config.fault_s
    active = False
    while True:
        step_at = time.monotonic() + config.interval_s
        if step_at > end:
            break
        await _sleep_until(step_at)
        nemesis.reap()
        if active:
            await nemesis.heal()
        else:
            await nemesis.inject(nemesis.rng.choice(names))
        active = not active
    await _sleep_until(end)


async def run(config: RunConfig) -> RunResult:
    """One run (see the module docstring). Everything that goes wrong, including the run
    itself breaking (no leader at the start, a harness error), is in RunResult.failures."""
    names = config.nemeses()
    if "netns-link-down" in names and not config.netns:
        raise errors.ConfigError("netns-link-down needs RunConfig(netns=True)")
    started = time.monotonic()
    rng = random.Random(config.seed)
    out_dir = config.out_dir or Path(tempfile.mkdtemp(prefix="engine-nemesis-"))
    cluster = ProcessCluster(out_dir, config.nodes, config.protocol, netns=config.netns,
                             seed=config.seed)
    history = History()
    failures: list[str] = []
    lin: CheckResult | None = None
    set_result: SetCheck | None = None
    windows: dict[str, tuple[int, int]] = {}
    lease_reads = 0
    nemesis = _Nemesis(cluster, history, random.Random(rng.getrandbits(64)))
    workload: Workload | None = None
    try:
        cluster.start_all()
        await cluster.leader_id(timeout=15.0)
        workload = Workload(list(cluster.members.values()), cluster.key, config.workload,
                            random.Random(rng.getrandbits(64)), history)
        workload.start()
        quiet1 = (time.monotonic_ns(), 0)
        await asyncio.sleep(config.quiet_s)
        quiet1 = (quiet1[0], time.monotonic_ns())
        try:
            await _fault_phase(nemesis, names, config)
        finally:
            await nemesis.heal()
        await asyncio.sleep(config.recovery_s)
        quiet2 = (time.monotonic_ns(), 0)
        await asyncio.sleep(config.quiet_s)
        quiet2 = (quiet2[0], time.monotonic_ns())
        await workload.stop()
        lease_reads = sum(int(status.get("counters", {}).get("lease_reads", 0))
                          for status in (await cluster.statuses(wait=1.0)).values())

        # Final reads: every register key and every set element (plus probes), every node.
        register_keys = sorted({e["key"] for e in history.events
                                if e["process"] != "nemesis" and not e["key"].startswith(
                                    SET_PREFIX)})
        highest = workload.highest_element
        probes = [f"e{i}" for i in range(highest) if f"e{i}" not in workload.set_attempted]
        probes.append(f"e{highest}")
        set_keys = [SET_PREFIX + e for e in sorted(workload.set_attempted)] + \
            [SET_PREFIX + p for p in probes]
        nemesis.reap()  # a node that died is reported; read through the living ones
        alive = {i: a for i, a in cluster.members.items() if i in cluster.processes}
        reads = await final_reads(history, alive, cluster.key, register_keys + set_keys)

        # Checks.
        register_events = [e for e in history.events if e["process"] == "nemesis"
                           or not e["key"].startswith(SET_PREFIX)]
        lin = check_linearizable(register_events, model="kv",
                                 time_limit_s=config.check_time_limit_s)
        if lin.valid is not True:
            failures.append(f"register history: {lin.summary()}\n{lin.explanation}")
        set_reads = {node: {k: v for k, v in seen.items() if k.startswith(SET_PREFIX)}
                     for node, seen in reads.items()}
        set_result = check_set(workload.set_attempted, probes, set_reads)
        if not set_result.valid:
            detail = {name: getattr(set_result, name)[:10] for name in
                      ("lost", "unexpected", "applied_despite_fail", "wrong_value",
                       "unreadable") if getattr(set_result, name)}
            failures.append(f"{set_result.summary()} {detail}")
        failures += [f"definite failure applied: {line}"
                     for line in rejected_operations_seen_applied(history.events)]
        failures += await _impostor_keys_on_members(nemesis, alive)
        for name, (start, end) in (("before faults", quiet1), ("after recovery", quiet2)):
            answered, total = availability(history.events, start, end)
            windows[name] = (answered, total)
            if total == 0 or answered < config.min_availability * total:
                failures.append(f"availability {name}: {answered}/{total} operations answered "
                                f"(< {config.min_availability:.0%})")
    except Exception as exc:  # a broken run is a failed run, with its history and logs kept
        failures.append("run aborted: " + "".join(
            traceback.format_exception(type(exc), exc, exc.__traceback__)).strip())
    finally:
        if workload is not None:
            await workload.stop()  # idempotent; after an abort its clients must not linger
        nemesis.reap()
        crashed = nemesis.crashed
        cluster.stop_all()
    failures += nemesis.findings
    failures += [f"node {node} exited on its own with code {code}" for node, code in crashed]
    failures += [f"node {node} exited with code {code} on SIGTERM"
                 for node, code in cluster.exit_codes if (node, code) not in crashed
                 and code not in (0, -15)]
    failures += scan_logs(cluster)
    operations = sum(1 for e in history.events if e["type"] == "invoke"
                     and e["process"] != "nemesis")
    outcomes: dict[str, int] = {}
    for event in history.events:
        if event["process"] != "nemesis" and event["type"] != "invoke" and "node" not in event:
            kind = event["type"] + ("/" + event["error"].split(":")[0] if "error" in event else "")
            outcomes[kind] = outcomes.get(kind, 0) + 1
    kept: Path | None = None
    write_history(out_dir / "history.jsonl", history.events)
    if failures or config.keep:
        kept = out_dir
        (out_dir / "failures.txt").write_text("\n".join(failures) + "\n")
    elif config.out_dir is None:
        shutil.rmtree(out_dir, ignore_errors=True)
    return RunResult(config, failures, lin, set_result, windows, nemesis.log, operations,
                     outcomes, time.monotonic() - started, kept, lease_reads)


# ---------------------------------------------------------------------------- command line


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m engine.testing.nemesis",
        description="Fault-injection run against real serve processes (Jepsen-style).")
    parser.add_argument("--protocol", default="raft", choices=["raft", "paxos"])
    parser.add_argument("--nodes", type=int, default=3)
    parser.add_argument("--mix", default="crash",
                        help=f"{', '.join(MIXES)} or a comma-separated list of "
                             f"{', '.join(NEMESES)}")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--fault-s", type=float, default=20.0)
    parser.add_argument("--interval-s", type=float, default=2.5)
    parser.add_argument("--quiet-s", type=float, default=3.0)
    parser.add_argument("--recovery-s", type=float, default=3.0)
    parser.add_argument("--netns", action="store_true", help="nodes in network namespaces")
    parser.add_argument("--read-mode", default="linearizable", choices=["linearizable", "lease"],
                        help="register reads (use lease with --mix clock)")
    parser.add_argument("--attempt-timeout-s", type=float, default=0.25,
                        help="client attempt timeout (0.05 moves writers to a new leader "
                             "inside an old lease)")
    parser.add_argument("--out", type=Path, default=None, help="output directory (kept)")
    args = parser.parse_args(argv)
    mix: str | list[str] = args.mix if args.mix in MIXES else args.mix.split(",")
    config = RunConfig(protocol=args.protocol, nodes=args.nodes, mix=mix, seed=args.seed,
                       fault_s=args.fault_s, interval_s=args.interval_s, quiet_s=args.quiet_s,
                       recovery_s=args.recovery_s, netns=args.netns, out_dir=args.out,
                       keep=args.out is not None,
                       workload=WorkloadConfig(read_mode=args.read_mode,
                                               attempt_timeout_s=args.attempt_timeout_s))
    try:
        result = asyncio.run(run(config))
    except errors.EngineError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(result.report())
    return 0 if result.ok else 1


if __name__ == "__main__":
    sys.exit(main())
