"""`python -m engine wal check|repair --data-dir DIR`, run as a user would (subprocesses)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from engine.aio.wal import WriteAheadLog
from engine.cli import exitcodes
from engine.messages import Entry
from engine.types import HardState


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "engine", "wal", *args], capture_output=True, text=True,
        timeout=60, stdin=subprocess.DEVNULL,
    )


def build(directory: Path, count: int = 59) -> list[Path]:
    """One-entry saves in segments of about 7 records."""
    wal = WriteAheadLog(directory, segment_bytes=500, fsync=False)
    wal.open()
    for index in range(1, count + 1):
        wal.save([Entry(1, index, b"x" * 20)], HardState(1, 1, index - 1))
    wal.close()
    return sorted(directory.glob("wal-*.log"))


def files(directory: Path) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in directory.iterdir()}


def test_check_reports_every_segment_and_exits_0_when_clean(tmp_path: Path) -> None:
    segments = build(tmp_path)
    result = run("check", "--data-dir", str(tmp_path), "--records")
    assert result.returncode == 0, result.stdout + result.stderr
    for path in segments:
        assert f"{path}: " in result.stdout
    assert result.stdout.count(": save, ") == 59
    assert "OK: log 1..59" in result.stdout


def test_mid_log_corruption_is_reported_and_only_cut_when_asked(tmp_path: Path) -> None:
    segments = build(tmp_path)
    damaged = bytearray(segments[2].read_bytes())
    damaged[104] ^= 0x10            # inside the second save of the third segment (offset 75)
    segments[2].write_bytes(bytes(damaged))
    before = files(tmp_path)

    result = run("check", "--data-dir", str(tmp_path))
    assert result.returncode == exitcodes.STORAGE
    assert f"{segments[2]} at offset 75" in result.stdout, result.stdout

    result = run("repair", "--data-dir", str(tmp_path))
    assert result.returncode == exitcodes.STORAGE and "--truncate-at-corruption" in result.stdout
    assert "wipe its data directory" in result.stdout
    assert files(tmp_path) == before, "a refused repair changes nothing"

    result = run("repair", "--data-dir", str(tmp_path), "--truncate-at-corruption")
    assert result.returncode == 0, result.stdout + result.stderr
    # the damaged save, the 5 after it in its segment and 6 + 6 * 5 + 5 in the later ones
    assert "moved aside in total: 47 records, 4238 bytes" in result.stdout, result.stdout
    assert "OK: log 1..12" in result.stdout
    broken = {p.name: p.read_bytes() for p in tmp_path.glob("*.broken")}
    assert broken[f"{segments[2].name}.75.broken"] == bytes(damaged[75:])
    for path in segments[3:]:
        assert broken[f"{path.name}.0.broken"] == before[path.name]
    assert sorted(tmp_path.glob("wal-*.log")) == segments[:3]
    assert run("check", "--data-dir", str(tmp_path)).returncode == 0


def test_torn_tail_is_reported_by_check_and_moved_aside_by_repair(tmp_path: Path) -> None:
    segments = build(tmp_path, count=10)
    last = segments[-1]
    size = last.stat().st_size
    last.write_bytes(last.read_bytes() + b"\x46\x00\x00\x00\x01\x02")
    result = run("check", "--data-dir", str(tmp_path))
    assert result.returncode == 0
    assert f"torn tail at offset {size}: 6 bytes" in result.stdout, result.stdout
    result = run("repair", "--data-dir", str(tmp_path))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "torn tail: 6 bytes moved" in result.stdout
    assert (tmp_path / f"{last.name}.{size}.broken").read_bytes() == b"\x46\x00\x00\x00\x01\x02"
    assert "OK: log 1..10" in result.stdout


def test_missing_directory_is_a_usage_error(tmp_path: Path) -> None:
    result = run("check", "--data-dir", str(tmp_path / "nope"))
    assert result.returncode == 2 and "not a directory" in result.stdout
