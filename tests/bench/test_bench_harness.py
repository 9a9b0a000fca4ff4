"""`python -m engine bench` harness: refusals, one short real run per mode, sweep output and
the latency profile. Functional checks only: no figure is asserted (DESIGN.md §7)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import pytest

import engine
from engine import benchmark
from engine.__main__ import build_parser, main
from engine.benchmark import check_arguments
from engine.errors import ConfigError
from engine.messages import Entry, Message, MessageType
from engine.profiling import STAGES, TOTAL_STAGE, LatencyProfiler
from engine.types import Ready


def bench_args(*argv: str) -> argparse.Namespace:
    return build_parser().parse_args(["bench", *argv])


@pytest.mark.parametrize(("argv", "message"), [
    (["--nodes", "4"], "--nodes must be 1, 3, 5 or 7"),
    (["--duration", "0"], "--duration must be positive"),
    (["--warmup", "-1"], "--warmup must not be negative"),
    (["--concurrency", "0"], "--concurrency must be 1..65536"),
    (["--concurrency", "70000"], "--concurrency must be 1..65536"),
    (["--clients", "udp", "--payload", "70000"], "--payload must be 0..64488"),
    (["--clients", "udp", "--concurrency", "2", "--client-processes", "3"],
     "each load generator needs at least one"),
    (["--client-processes", "2"], "applies only to --clients udp"),
    (["--data-dir", "/tmp/x"], "--data-dir needs --fsync"),
    (["--sweep", "nodes=3,5"], "--sweep must look like"),
    (["--sweep", "concurrency=a,b"], "--sweep values must be integers"),
    (["--sweep", "concurrency=1,0"], "--concurrency must be 1..65536"),
])
def test_refuses_impossible_settings(argv: list[str], message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace(".", r"\.")):
        check_arguments(bench_args(*argv))


def test_refusal_is_one_line_and_status_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench", "--nodes", "2"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --nodes must be 1, 3, 5 or 7") and err.count("\n") == 1


def run_json(tmp_path: Path, *argv: str) -> dict[str, Any]:
    out = tmp_path / "result.json"
    assert main(["bench", "--processes", "one", "--warmup", "0.3", "--json", str(out),
                 *argv]) == 0
    return dict(json.loads(out.read_text()))


def check_sane(result: dict[str, Any], concurrency: int) -> None:
    assert result["committed_ops"] > 0
    assert result["ops_per_s"] == pytest.approx(
        result["committed_ops"] / result["conditions"]["duration_s"])
    lat = result["latency_ms"]
    assert 0 < lat["p50"] <= lat["p90"] <= lat["p99"] <= lat["p99.9"] <= lat["max"]
    assert result["conditions"]["concurrency"] == concurrency
    assert result["errors"] == 0
    assert all(v is None or v >= 0 for v in result["cpu_percent"].values())
    cdf = result["latency_cdf"]
    assert [p for p, _ in cdf] == sorted(p for p, _ in cdf)
    assert [v for _, v in cdf] == sorted(v for _, v in cdf)


def test_library_run_in_one_process(tmp_path: Path, capsys: pytest.CaptureFixture[str]
                                    ) -> None:
    result = run_json(tmp_path, "--duration", "1", "--concurrency", "32")
    check_sane(result, 32)
    assert result["conditions"]["processes"] == "all nodes in this process"
    out = capsys.readouterr().out
    assert "committed:" in out and "latency:" in out and "CPU (% of one core)" in out
    # The header names what ran: the version and the core (compiled or the pure twins).
    assert f"engine {engine.__version__} bench:" in out
    assert f"{engine.IMPLEMENTATION} core" in out
    assert result["conditions"]["version"] == engine.__version__


def test_udp_clients_and_fsync(tmp_path: Path) -> None:
    result = run_json(tmp_path, "--duration", "1", "--concurrency", "8", "--clients", "udp",
                      "--client-processes", "1", "--fsync", "--data-dir", str(tmp_path))
    check_sane(result, 8)
    assert result["conditions"]["fsync"] is True
    assert "load generator 1" in result["cpu_percent"]
    assert [p.name for p in tmp_path.iterdir()] == ["result.json"]  # WAL dirs removed


def test_sweep_writes_json_and_plots(tmp_path: Path) -> None:
    out_dir = tmp_path / "sweep"
    assert main(["bench", "--processes", "one", "--warmup", "0.2", "--duration", "0.5",
                 "--sweep", "concurrency=1,8", "--out", str(out_dir)]) == 0
    table = json.loads((out_dir / "sweep.json").read_text())
    assert table["sweep"] == "concurrency"
    assert [row["concurrency"] for row in table["table"]] == [1, 8]
    for point, concurrency in zip(table["points"], [1, 8], strict=True):
        check_sane(point, concurrency)
    for name in ("throughput_vs_concurrency.png", "latency_vs_throughput.png",
                 "latency_cdf.png"):
        assert (out_dir / name).read_bytes().startswith(b"\x89PNG\r\n\x1a\n")


def test_a_plotting_failure_keeps_the_sweeps_json(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The results are written before plotting starts: a plot that fails loses nothing."""
    from matplotlib.figure import Figure

    def broken_savefig(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError("no display for the plots")

    monkeypatch.setattr(Figure, "savefig", broken_savefig)
    out_dir, result = tmp_path / "sweep", tmp_path / "result.json"
    with pytest.raises(RuntimeError, match="no display"):
        main(["bench", "--processes", "one", "--warmup", "0", "--duration", "0.3",
              "--sweep", "concurrency=1,2", "--out", str(out_dir), "--json", str(result)])
    assert [row["concurrency"] for row in
            json.loads((out_dir / "sweep.json").read_text())["table"]] == [1, 2]
    assert len(json.loads(result.read_text())["points"]) == 2
    assert "the plots failed; the results are in" in capsys.readouterr().err


def test_progress_without_a_terminal_is_a_line_every_few_seconds(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """stderr is not a terminal here (captured): plain lines, on each phase change and then
    every PROGRESS_LINE_INTERVAL_S of the run's schedule, not one per update."""
    monkeypatch.setattr(sys.stderr, "isatty", lambda: False)
    interval = benchmark.PROGRESS_LINE_INTERVAL_S
    with benchmark._Progress(4 * interval) as progress:
        for tenth in range(41):
            elapsed = tenth * interval / 10
            progress.update(elapsed, "warmup" if elapsed < interval / 2 else "measuring",
                            ops=tenth * 100)
    lines = capsys.readouterr().err.splitlines()
    assert [line.split()[1] for line in lines] == ["warmup"] + ["measuring"] * 4
    assert lines[0] == f"bench: warmup 0/{4 * interval:.0f} s, 0 ops"
    assert lines[-1].endswith(", 3,500 ops")


def test_profile_reports_every_stage(tmp_path: Path, capsys: pytest.CaptureFixture[str]
                                     ) -> None:
    result = run_json(tmp_path, "--duration", "1", "--concurrency", "16", "--profile")
    profile = result["profile"]
    names = [stage["stage"] for stage in profile["stages"]]
    assert names == [*(s[0] for s in STAGES), "appended locally", TOTAL_STAGE]
    assert profile["proposals"] > 0 and profile["failed"] == 0
    for stage in profile["stages"]:
        assert stage["count"] == profile["proposals"]
        assert stage["p50_ms"] <= stage["p99_ms"] <= stage["max_ms"]
    critical = [s for s in profile["stages"] if s["critical_path"]]
    total = profile["stages"][-1]
    assert sum(s["mean_ms"] for s in critical) == pytest.approx(total["mean_ms"], rel=1e-6)
    assert sum(s["share_of_total"] for s in critical) == pytest.approx(1.0)
    out = capsys.readouterr().out
    for name in names:
        assert name in out


# ---------------------------------------------------------------------------- profiler unit


class FakeFuture:
    def __init__(self) -> None:
        self.callbacks: list[Any] = []
        self.error: BaseException | None = None

    def add_done_callback(self, callback: Any) -> None:
        self.callbacks.append(callback)

    def resolve(self, error: BaseException | None = None) -> None:
        self.error = error
        for callback in self.callbacks:
            callback(self)

    def cancelled(self) -> bool:
        return False

    def exception(self) -> BaseException | None:
        return self.error


def test_profiler_stages_from_hooks() -> None:
    """Two writes through every hook on a fake clock: each stage is the gap we staged."""
    now = [0]
    profiler = LatencyProfiler(cluster_size=3, clock=lambda: now[0])
    a, b, before = FakeFuture(), FakeFuture(), FakeFuture()
    profiler.enqueued(before)  # not recording yet: ignored
    profiler.start()
    profiler.enqueued(a)
    now[0] = 5
    profiler.enqueued(b)
    now[0] = 10
    profiler.submitted(7, [(b"x", a, 0.0), (b"y", b, 0.0), (b"z", before, 0.0)])
    entries = [Entry(term=1, index=i, data=b"x") for i in (7, 8, 9)]
    append = Message(MessageType.APPEND, src=1, dst=2, term=1, entries=entries)
    now[0] = 30
    profiler.ready(Ready(entries=entries, messages=[append]))
    now[0] = 40
    profiler.persisted(Ready(entries=entries))
    now[0] = 100  # a rejected ack and a stale one do not count
    profiler.received([
        Message(MessageType.APPEND_RESPONSE, src=2, dst=1, term=1, index=9, reject=True),
        Message(MessageType.APPEND_RESPONSE, src=3, dst=1, term=1, index=8),
    ])
    committed = Ready(committed_entries=entries[:2])
    now[0] = 150
    profiler.ready(committed)
    now[0] = 160
    profiler.applied(committed)
    now[0] = 200
    a.resolve()
    now[0] = 210
    b.resolve(RuntimeError("failed"))
    before.resolve()
    summary = profiler.summary()
    assert summary["proposals"] == 1 and summary["failed"] == 1
    means = {stage["stage"]: stage["mean_ms"] * 1e6 for stage in summary["stages"]}
    assert means == pytest.approx({
        "queued": 10, "sent": 20, "acknowledged by quorum": 70, "committed": 50,
        "applied": 10, "answered": 40, "appended locally": 30, TOTAL_STAGE: 200,
    })


def test_profiler_single_node_has_zero_network_stages() -> None:
    now = [0]
    profiler = LatencyProfiler(cluster_size=1, clock=lambda: now[0])
    profiler.start()
    future = FakeFuture()
    profiler.enqueued(future)
    now[0] = 3
    profiler.submitted(1, [(b"x", future, 0.0)])
    entries = [Entry(term=1, index=1, data=b"x")]
    now[0] = 4
    profiler.persisted(Ready(entries=entries))
    now[0] = 6
    profiler.ready(Ready(committed_entries=entries))
    profiler.applied(Ready(committed_entries=entries))
    now[0] = 9
    future.resolve()
    means = {s["stage"]: s["mean_ms"] * 1e6 for s in profiler.summary()["stages"]}
    assert means["sent"] == 0 and means["acknowledged by quorum"] == 0
    assert means["committed"] == 3 and means[TOTAL_STAGE] == 9
