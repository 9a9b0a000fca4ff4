"""The fault harness's checks can fail: each is fed something broken and must say so.

A checker that cannot fail proves nothing; these tests break things on purpose: a stale read
in a recorded history, a lost / phantom / applied-despite-fail set element, a traceback in a
node log, an unavailable window, a torn WAL tail, and (end to end, real processes) a total
loss of every node's data, which a run must report as lost writes.
"""

from __future__ import annotations

import asyncio
import random
import time
from pathlib import Path

import pytest

from engine.aio.wal import WriteAheadLog
from engine.messages import Entry
from engine.testing import check_linearizable
from engine.testing.nemesis import (
    RunConfig,
    _Impostor,
    _Nemesis,
    rejected_operations_seen_applied,
    run,
    scan_logs,
)
from engine.testing.process_cluster import (
    ProcessCluster,
    TornTail,
    _reads_as_record,
    free_udp_ports,
    netns_available,
    torn_prefix_length,
)
from engine.testing.workloads import (
    History,
    WorkloadConfig,
    availability,
    check_set,
    final_reads,
)
from engine.types import HardState


def _op(history: History, process: int, f: str, key: str, value: object, kind: str,
        out: object = None, error: str | None = None) -> None:
    invoke = history.invoke(process, f, key, value)
    history.complete(invoke, kind, out if f == "read" else value, error)


def test_stale_read_in_recorded_history_is_not_linearizable() -> None:
    history = History()
    _op(history, 0, "write", "r0-0", "0.1", "ok")
    _op(history, 1, "write", "r0-0", "1.1", "ok")
    _op(history, 2, "read", "r0-0", None, "ok", out="0.1")  # stale: 1.1 was acknowledged
    result = check_linearizable(history.events, model="kv")
    assert result.valid is False and result.key == "r0-0"


def test_timed_out_write_may_apply_later_and_failed_read_is_dropped() -> None:
    history = History()
    _op(history, 0, "write", "k", "0.1", "info", error="timeout")
    _op(history, 1, "read", "k", None, "fail", error="timeout")
    _op(history, 2, "read", "k", None, "ok", out="0.1")
    assert check_linearizable(history.events, model="kv").valid is True


def test_set_check_reports_lost_phantom_and_applied_despite_fail() -> None:
    attempted = {"e0": "ok", "e1": "fail", "e2": "info", "e4": "ok"}
    reads = {1: {"s/e0": "e0", "s/e1": "e1", "s/e2": None, "s/e3": "e3", "s/e4": None},
             2: {"s/e0": "e0", "s/e1": None, "s/e2": "e2", "s/e3": None, "s/e4": "e4"}}
    result = check_set(attempted, ["e3"], reads)
    assert not result.valid
    assert result.lost == ["n1:e4"]
    assert result.unexpected == ["n1:e3"]
    assert result.applied_despite_fail == ["n1:e1"]
    good = check_set({"e0": "ok", "e2": "info"}, ["e3"],
                     {1: {"s/e0": "e0", "s/e2": None, "s/e3": None}})
    assert good.valid and good.acknowledged == 1


def test_definite_failure_check_reports_a_rejected_write_that_was_read_or_cas_matched() -> None:
    history = History()
    _op(history, 0, "write", "k", "0.1", "fail", error="rejected: removed")
    _op(history, 1, "read", "k", None, "ok", out="0.1")        # it applied after all
    _op(history, 2, "cas", "j", ["x", "2.1"], "fail", error="rejected: overloaded")
    _op(history, 3, "cas", "j", ["2.1", "3.1"], "ok")           # matched the rejected value
    _op(history, 4, "add", "s/e1", "e1", "fail", error="rejected: stopped")
    _op(history, 5, "write", "k", "5.1", "fail", error="cas-mismatch")   # not a Rejected
    _op(history, 6, "read", "k", None, "ok", out="5.1")
    found = rejected_operations_seen_applied(history.events)
    assert len(found) == 2 and "write k='0.1'" in found[0] and "cas j='2.1'" in found[1]
    history = History()
    _op(history, 0, "write", "k", "0.1", "fail", error="rejected: removed")
    _op(history, 1, "read", "k", None, "ok", out=None)
    _op(history, 2, "add", "s/e1", "e1", "fail", error="rejected: stopped")
    assert rejected_operations_seen_applied(history.events) == []


def test_availability_counts_definite_answers_in_the_window() -> None:
    history = History()
    _op(history, 0, "write", "k", "0.1", "ok")
    _op(history, 1, "cas", "k", ["x", "1.1"], "fail", error="cas-mismatch")
    _op(history, 2, "read", "k", None, "fail", error="timeout")
    _op(history, 3, "write", "k", "3.1", "info", error="timeout")
    start, end = history.events[0]["time"], history.events[-1]["time"] + 1
    assert availability(history.events, start, end) == (2, 4)
    assert availability(history.events, end, end + 10) == (0, 0)


def test_log_scan_finds_traceback_and_invariant_violation(tmp_path: Path) -> None:
    cluster = ProcessCluster(tmp_path, n=2)
    cluster.log_path(1).write_text("ok line\nTraceback (most recent call last):\n")
    cluster.log_path(2).write_text("engine.errors.InvariantViolation: two leaders in term 3\n")
    found = scan_logs(cluster)
    assert len(found) == 2 and "n1.log" in found[0] and "two leaders" in found[1]


def test_node_that_exits_on_its_own_is_reaped_and_reported(tmp_path: Path) -> None:
    cluster = ProcessCluster(tmp_path, n=2, python="/bin/false")  # every start exits with 1
    nemesis = _Nemesis(cluster, History(), random.Random(0))
    cluster.start_all()
    for process in cluster.processes.values():
        process.wait()
    nemesis.reap()
    assert sorted(nemesis.crashed) == [(1, 1), (2, 1)]
    assert cluster.running() == []
    cluster.stop_all()


# Preallocated (zeros after the records, as in a node's WAL), small enough to copy quickly.
SEGMENT_BYTES = 64 * 1024


def _write_wal(directory: Path, saves: int) -> list[bytes]:
    wal = WriteAheadLog(str(directory), segment_bytes=SEGMENT_BYTES)
    wal.open()
    datas = []
    for index in range(1, saves + 1):
        data = b"entry-%d" % index
        datas.append(data)
        wal.save([Entry(index=index, term=1, data=data)], HardState(term=1, commit=index))
    wal.close()
    return datas


@pytest.mark.parametrize("seed", range(12))
def test_torn_wal_tail_is_cut_and_loses_nothing_acknowledged(tmp_path: Path, seed: int) -> None:
    cluster = ProcessCluster(tmp_path, n=1)
    datas = _write_wal(cluster.data_dir(1), 5)
    before = cluster.recovered_state(1)
    tail = cluster.append_torn_tail(1, random.Random(seed))
    assert tail is not None and tail.data
    assert cluster.check_torn_tail(1, tail, before) is None
    wal = WriteAheadLog(str(cluster.data_dir(1)))
    recovered = wal.open()
    wal.close()
    assert [e.data for e in recovered.entries] == datas


def _write_wal_ending_in_zeros(directory: Path) -> None:
    """A WAL whose last record is a hard-state-only save, whose body ends in the zero high
    bytes of its u64 commit index (what a node's last save usually is)."""
    wal = WriteAheadLog(str(directory), segment_bytes=SEGMENT_BYTES)
    wal.open()
    wal.save([Entry(index=1, term=1, data=b"x")], HardState(term=1, commit=0))
    wal.save([], HardState(term=1, vote=1, commit=1))
    wal.close()


def test_torn_prefix_of_a_record_ending_in_zeros_stops_before_its_last_nonzero_byte() -> None:
    record = b"\x19\0\0\0" + b"\xab" * 6 + b"\x01" + b"\0" * 7
    rng = random.Random(3)
    lengths = {torn_prefix_length(record, rng) for _ in range(2000)}
    assert min(lengths) == 4 and max(lengths) == 9   # byte 10 is the last non-zero one


@pytest.mark.parametrize("seed", range(40))
def test_torn_copy_of_a_record_ending_in_zeros_is_never_completed_into_a_valid_record(
        tmp_path: Path, seed: int) -> None:
    cluster = ProcessCluster(tmp_path, n=1)
    _write_wal_ending_in_zeros(cluster.data_dir(1))
    before = cluster.recovered_state(1)
    tail = cluster.append_torn_tail(1, random.Random(seed))
    assert tail is not None
    if tail.kind == "torn":
        assert _reads_as_record(tail.data + b"\0" * 64) is False
    assert cluster.check_torn_tail(1, tail, before) is None


def test_torn_tail_check_accepts_a_valid_duplicate_and_reports_a_changed_state(
        tmp_path: Path) -> None:
    cluster = ProcessCluster(tmp_path, n=1)
    _write_wal(cluster.data_dir(1), 3)
    before = cluster.recovered_state(1)
    segment = sorted(cluster.data_dir(1).glob("wal-*.log"))[-1]
    data = segment.read_bytes()
    end = len(data.rstrip(b"\0"))
    last = data.rfind(b"entry-3") - 25 - 9 - 25   # frame + flags/hard state + entry head
    assert _reads_as_record(data[last:end])
    with open(segment, "r+b") as stream:   # an exact copy of the last save: valid, harmless
        stream.seek(end)
        stream.write(data[last:end])
    duplicate = TornTail(segment.name, end, data[last:end], "torn")
    assert cluster.check_torn_tail(1, duplicate, before) is None
    other = ProcessCluster(tmp_path / "other", n=1)
    _write_wal(other.data_dir(1), 2)
    problem = cluster.check_torn_tail(1, duplicate, other.recovered_state(1))
    assert problem is not None and "different state" in problem


async def test_failed_torn_tail_check_names_its_heal_and_the_final_heal_never_tears_again(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cluster = ProcessCluster(tmp_path, n=1, python="/bin/false")  # every start exits at once
    _write_wal(cluster.data_dir(1), 3)
    nemesis = _Nemesis(cluster, History(), random.Random(0))
    monkeypatch.setattr(cluster, "check_torn_tail", lambda *args: "still there")
    nemesis.killed.add(1)
    nemesis.torn.add(1)
    await nemesis.heal()
    await nemesis.heal()   # the run's final heal after a failed one
    assert nemesis.findings == ["heal 1, node 1: still there"]
    torn = [f for f in nemesis.log if f.startswith("torn-wal-tail")]
    assert len(torn) == 1 and "'heal': 1" in torn[0], nemesis.log
    cluster.stop_all()


@pytest.mark.parametrize("protocol", ["raft", "paxos"])
async def test_run_reports_lost_writes_after_total_data_loss(protocol: str,
                                                             tmp_path: Path) -> None:
    config = RunConfig(protocol=protocol, nodes=3, mix=["wipe-all"], seed=5, fault_s=2.0,
                       interval_s=1.5, quiet_s=1.5, recovery_s=2.0, out_dir=tmp_path,
                       workload=WorkloadConfig(register_groups=1, set_clients=1))
    result = await run(config)
    assert not result.ok
    assert result.set_check is not None and result.set_check.lost, result.report()
    assert result.linearizability is not None and result.linearizability.valid is False
    assert (tmp_path / "history.jsonl").exists() and (tmp_path / "failures.txt").exists()


# Kernel-level partitions need root and `ip netns` (the CI machine has both); on a machine
# without them the test is not generated at all rather than skipped.
if netns_available():
    async def test_netns_link_down_partitions_are_survived(tmp_path: Path) -> None:
        config = RunConfig(protocol="raft", nodes=3, mix=["netns-link-down"],
                           seed=11, fault_s=8.0, interval_s=2.0, quiet_s=2.0, recovery_s=2.0,
                           netns=True, out_dir=tmp_path)
        result = await run(config)
        assert result.ok, result.report()
        assert any(f.startswith("link-down") for f in result.faults), result.report()


async def test_final_reads_give_up_on_a_dead_node_quickly() -> None:
    history = History()
    port = free_udp_ports(1)[0]  # nothing listens there
    started = time.monotonic()
    reads = await final_reads(history, {1: f"127.0.0.1:{port}"}, b"k" * 32,
                              [f"s/e{i}" for i in range(500)], timeout_s=0.3)
    assert reads == {1: {}}
    assert time.monotonic() - started < 5.0
    completions = [e for e in history.events if e["type"] != "invoke"]
    assert 32 <= len(completions) <= 48 and all(e["type"] == "fail" for e in completions)
    assert check_set({"e0": "ok"}, [], reads).unreadable == ["n1:e0"]


async def test_impostor_that_commits_or_two_real_leaders_in_one_term_is_split_brain(
        tmp_path: Path) -> None:
    cluster = ProcessCluster(tmp_path, n=3)
    nemesis = _Nemesis(cluster, History(), random.Random(0))

    async def done() -> None:
        return None

    impostor = _Impostor("node 2 at 127.0.0.1:9 with members [1, 2]", asyncio.Event(),
                         ["impostor/1-0"], {4: {1}, 5: {1, 3}})
    impostor.writer = asyncio.ensure_future(done())
    impostor.monitor = asyncio.ensure_future(done())
    await nemesis._stop_impostor(impostor)
    assert len(nemesis.findings) == 2, nemesis.findings
    assert "committed 1 writes" in nemesis.findings[0]
    assert "[1, 3] all led in term 5" in nemesis.findings[1]
    assert nemesis.impostor_keys == ["impostor/1-0"]
