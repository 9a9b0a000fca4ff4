"""engine.aio.wal: durability format, replay, torn tails, corruption, rolling, compaction."""

from __future__ import annotations

import os
import random
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.aio.wal import (
    DEFAULT_SEGMENT_BYTES,
    RecoveredState,
    WriteAheadLog,
    scan_segment_bytes,
    segment_name,
)
from engine.errors import StorageError, WalCorruptError
from engine.messages import Entry
from engine.types import HardState


def make_entries(first: int, count: int, term: int, size: int = 10, kind: int = 0) -> list:
    return [
        Entry(term, index, bytes([index % 251]) * size + str(index).encode(), kind)
        for index in range(first, first + count)
    ]


def reopen(directory: Path, segment_bytes: int = DEFAULT_SEGMENT_BYTES,
           fsync: bool = True, preallocate: bool = False) -> tuple[WriteAheadLog, RecoveredState]:
    """Most tests look at the on-disk format byte by byte: without preallocated zeros
    (test_preallocated_* cover those)."""
    wal = WriteAheadLog(directory, segment_bytes=segment_bytes, fsync=fsync,
                        preallocate=preallocate)
    return wal, wal.open()


def segments(directory: Path) -> list[Path]:
    return sorted(p for p in directory.iterdir() if p.name.endswith(".log"))


class Oracle:
    """The log a WAL must recover: truncate-on-conflict and Raft Figure 13 compaction."""

    def __init__(self) -> None:
        self.snapshot_index = 0
        self.entries: list = []
        self.hard_state = HardState()

    @property
    def first(self) -> int:
        return self.snapshot_index + 1

    def save(self, entries: list, hard_state: HardState | None) -> None:
        if entries:
            del self.entries[max(entries[0].index - self.first, 0):]
            self.entries += [e for e in entries if e.index >= self.first]
        if hard_state is not None:
            self.hard_state = hard_state

    def compact(self, index: int, term: int) -> None:
        if index <= self.snapshot_index:
            return
        position = index - self.first
        if 0 <= position < len(self.entries) and self.entries[position].term == term:
            self.entries = self.entries[position + 1:]
        else:
            self.entries = []
        self.snapshot_index = index


def test_empty_directory_opens_empty_and_creates_a_segment(tmp_path: Path) -> None:
    wal, recovered = reopen(tmp_path / "new")
    assert recovered.entries == [] and recovered.hard_state == HardState()
    assert recovered.first_index == 1 and recovered.last_index == 0
    assert [p.name for p in segments(tmp_path / "new")] == [segment_name(0, 1)]
    wal.close()
    _, again = reopen(tmp_path / "new")
    assert again.entries == [] and again.first_index == 1


def test_round_trip_and_restart(tmp_path: Path) -> None:
    wal, _ = reopen(tmp_path)
    first = make_entries(1, 5, term=1) + [Entry(1, 6, b"", 1), Entry(1, 7, b"cfg", 2)]
    wal.save(first, HardState(1, 2, 0))
    wal.save(make_entries(8, 3, term=2, size=1000), HardState(2, 3, 7))
    wal.close()
    wal, recovered = reopen(tmp_path)
    assert recovered.entries == first + make_entries(8, 3, term=2, size=1000)
    assert recovered.hard_state == HardState(2, 3, 7)
    assert recovered.truncated_bytes == 0
    # Appending after a restart continues the same log.
    wal.save(make_entries(11, 2, term=2), None)
    wal.close()
    _, recovered = reopen(tmp_path)
    assert [e.index for e in recovered.entries] == list(range(1, 13))
    assert recovered.hard_state == HardState(2, 3, 7)


def test_hard_state_only_saves(tmp_path: Path) -> None:
    wal, _ = reopen(tmp_path)
    wal.save([], HardState(1, 1, 0))
    wal.save([], HardState(2, 0, 0))
    wal.save([], None)  # nothing to persist: no record
    wal.close()
    _, recovered = reopen(tmp_path)
    assert recovered.hard_state == HardState(2, 0, 0) and recovered.entries == []


def test_truncate_on_conflict(tmp_path: Path) -> None:
    wal, _ = reopen(tmp_path)
    wal.save(make_entries(1, 10, term=1), HardState(1, 1, 3))
    replacement = make_entries(4, 2, term=2)   # Raft §5.3: 4.. replaces the old suffix
    wal.save(replacement, HardState(2, 2, 3))
    assert wal.last_index == 5
    wal.close()
    wal, recovered = reopen(tmp_path)
    assert recovered.entries == make_entries(1, 3, term=1) + replacement
    # Overwrite the very first entry, then extend.
    wal.save(make_entries(1, 1, term=3) + make_entries(2, 1, term=3), None)
    wal.close()
    _, recovered = reopen(tmp_path)
    assert recovered.entries == make_entries(1, 2, term=3)


def test_save_refuses_gaps_and_non_contiguous_entries(tmp_path: Path) -> None:
    wal, _ = reopen(tmp_path)
    wal.save(make_entries(1, 3, term=1), None)
    with pytest.raises(ValueError, match="gap"):
        wal.save(make_entries(5, 1, term=1), None)
    with pytest.raises(ValueError, match="contiguous"):
        wal.save([Entry(1, 4, b""), Entry(1, 6, b"")], None)
    wal.close()


def test_fsync_once_per_save(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    wal, _ = reopen(tmp_path)
    calls: list[int] = []

    def count(fd: int) -> None:
        calls.append(fd)

    monkeypatch.setattr(os, "fsync", count)
    monkeypatch.setattr(os, "fdatasync", count, raising=False)
    wal.save(make_entries(1, 1024, term=1), HardState(1, 1, 0))
    assert len(calls) == 1
    wal.save([], HardState(1, 1, 1))
    assert len(calls) == 2
    wal.save(make_entries(1025, 1, term=1), None)
    assert len(calls) == 3
    wal.save([], None)
    assert len(calls) == 3
    wal.close()


def test_unsynced_saves_are_synced_by_the_next_roll_or_close(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """save(sync=False) (a commit-index-only Ready) writes without waiting for the disk; the
    segment is fdatasynced before a roll leaves it and on close, so an unsynced record can
    only ever be the torn tail of the last segment."""
    wal, _ = reopen(tmp_path)
    synced: list[int] = []
    real_sync = os.fdatasync

    def count(fd: int) -> None:
        synced.append(fd)
        real_sync(fd)

    monkeypatch.setattr(os, "fdatasync", count)
    wal.save(make_entries(1, 3, term=1), HardState(1, 1, 0))
    assert len(synced) == 1
    wal.save([], HardState(1, 1, 3), sync=False)
    assert len(synced) == 1                       # not waited for
    old_segment = wal._fd
    wal.segment_bytes = 1                         # the next save rolls
    wal.save(make_entries(4, 21, term=1), None)
    # the old segment's unsynced tail first, then the save itself (the new segment's header
    # and the directory go through os.fsync)
    assert synced[1] == old_segment and len(synced) == 3
    assert len(segments(tmp_path)) == 2
    wal.segment_bytes = 1 << 20
    wal.save([], HardState(1, 1, 24), sync=False)
    before_close = len(synced)
    wal.close()
    assert len(synced) == before_close + 1        # close syncs the unsynced commit
    _, recovered = reopen(tmp_path)
    assert recovered.hard_state == HardState(1, 1, 24)
    assert [e.index for e in recovered.entries] == list(range(1, 25))


def test_preallocated_segments_restart_roll_and_cut_torn_tails(tmp_path: Path) -> None:
    """Segments get their whole size up front; records are written in place, replay stops at
    the zeros after them (not counted as torn), a roll cuts the full segment to its records
    (only the last segment may end in zeros) and a torn save over the zeros is cut."""
    wal, _ = reopen(tmp_path, segment_bytes=4096, preallocate=True)
    wal.save(make_entries(1, 5, term=1), HardState(1, 1, 0))
    (first,) = segments(tmp_path)
    assert first.stat().st_size == 4096
    wal.close()
    wal, recovered = reopen(tmp_path, segment_bytes=4096, preallocate=True)
    assert [e.index for e in recovered.entries] == [1, 2, 3, 4, 5]
    assert recovered.truncated_bytes == 0
    assert first.stat().st_size == 4096          # preallocated again after the cut
    wal.save(make_entries(6, 200, term=1), None)  # past segment_bytes: the next save rolls
    used = wal._segment_size
    wal.save(make_entries(206, 1, term=1), HardState(1, 1, 200))
    assert len(segments(tmp_path)) == 2
    assert first.stat().st_size == used           # no zeros left in a non-last segment
    assert segments(tmp_path)[1].stat().st_size == 4096
    wal.close()
    # A torn save over the zeros of the last segment: cut, counted, nothing else lost.
    last = segments(tmp_path)[1]
    data = bytearray(last.read_bytes())
    end = len(data.rstrip(b"\0"))
    data[end:end + 7] = b"\x30\x00\x00\x00\xaa\xbb\xcc"
    last.write_bytes(bytes(data))
    _, recovered = reopen(tmp_path, segment_bytes=4096, preallocate=True)
    assert [e.index for e in recovered.entries] == list(range(1, 207))
    assert recovered.truncated_bytes == 7
    assert recovered.hard_state == HardState(1, 1, 200)


def test_fsync_false_never_syncs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []
    monkeypatch.setattr(os, "fsync", calls.append)
    monkeypatch.setattr(os, "fdatasync", calls.append, raising=False)
    wal, _ = reopen(tmp_path, fsync=False, segment_bytes=200)
    for first in range(1, 50, 7):
        wal.save(make_entries(first, 7, term=1), HardState(1, 1, first))
    wal.close()
    assert calls == [] and len(segments(tmp_path)) > 1


def test_segment_rolling(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    wal, _ = reopen(tmp_path, segment_bytes=400)
    expected: list = []
    for first in range(1, 101, 5):
        batch = make_entries(first, 5, term=1 + first // 30)
        wal.save(batch, HardState(1 + first // 30, 1, first))
        expected += batch
    files = segments(tmp_path)
    assert len(files) > 5
    # Each segment ends before it grows past one save beyond segment_bytes.
    assert all(path.stat().st_size < 400 + 200 for path in files)
    # Names: consecutive seq, first_index = last index + 1 when created.
    names = [path.name for path in files]
    assert names[0] == segment_name(0, 1)
    assert [int(name[4:14]) for name in names] == list(range(len(names)))
    wal.close()
    _, recovered = reopen(tmp_path, segment_bytes=400)
    assert recovered.entries == expected
    assert recovered.hard_state == HardState(4, 1, 96)


def test_rolling_fsyncs_new_file_and_directory(tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    wal, _ = reopen(tmp_path, segment_bytes=100)
    wal.save(make_entries(1, 10, term=1), None)   # past segment_bytes: next save rolls
    synced: list[str] = []
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        synced.append("dir" if os.path.isdir(f"/proc/self/fd/{fd}") else "file")
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "fdatasync", fsync, raising=False)
    wal.save(make_entries(11, 1, term=1), None)
    # new segment's header, the directory entry of the new segment, the save itself
    assert synced == ["file", "dir", "file"]
    wal.close()


def test_truncate_on_conflict_across_segments(tmp_path: Path) -> None:
    wal, _ = reopen(tmp_path, segment_bytes=300)
    wal.save(make_entries(1, 20, term=1), None)
    wal.save(make_entries(21, 20, term=1), None)
    wal.save(make_entries(41, 20, term=1), None)
    assert len(segments(tmp_path)) == 3
    wal.save(make_entries(5, 3, term=2), HardState(2, 0, 4))   # back into segment 0's range
    wal.save(make_entries(8, 30, term=2), None)                # rolls with a lower index name
    wal.close()
    _, recovered = reopen(tmp_path, segment_bytes=300)
    assert recovered.entries == make_entries(1, 4, term=1) + make_entries(5, 33, term=2)


# ---------------------------------------------------------------------------- torn tails


def _three_saves(directory: Path) -> tuple[list, int]:
    """Three saves; returns the entries of the first two and the file size before the third."""
    wal, _ = reopen(directory)
    wal.save(make_entries(1, 3, term=1), HardState(1, 1, 0))
    wal.save(make_entries(4, 2, term=1), HardState(1, 1, 2))
    size_before_last = segments(directory)[0].stat().st_size
    wal.save(make_entries(6, 4, term=2, size=30), HardState(2, 2, 5))
    wal.close()
    return make_entries(1, 5, term=1), size_before_last


def test_torn_tail_at_every_byte_is_cut(tmp_path: Path) -> None:
    source = tmp_path / "source"
    survivors, boundary = _three_saves(source)
    full = segments(source)[0].read_bytes()
    for cut in range(boundary, len(full)):
        directory = tmp_path / f"cut{cut}"
        directory.mkdir()
        (directory / segments(source)[0].name).write_bytes(full[:cut])
        wal, recovered = reopen(directory)
        assert recovered.entries == survivors, cut
        assert recovered.hard_state == HardState(1, 1, 2), cut
        # Zeros at the end of the cut are not counted (they could be preallocated space).
        assert recovered.truncated_bytes == len(full[boundary:cut].rstrip(b"\0"))
        assert segments(directory)[0].stat().st_size == boundary
        # The log goes on after the cut, and a second restart sees it.
        wal.save(make_entries(6, 1, term=3), None)
        wal.close()
        _, again = reopen(directory)
        assert again.entries == survivors + make_entries(6, 1, term=3)


def test_torn_tail_with_garbage_or_zeros_is_cut(tmp_path: Path) -> None:
    rng = random.Random(7)
    for filler in ("garbage", "zeros"):
        directory = tmp_path / filler
        survivors, boundary = _three_saves(directory)
        path = segments(directory)[0]
        data = bytearray(path.read_bytes())
        # The last record's body was only partly written (same length, wrong bytes), or the
        # file was extended with zeros that were never written.
        if filler == "garbage":
            for position in range(boundary + 20, len(data)):
                data[position] = rng.randrange(256)
        else:
            data[boundary:] = bytes(len(data) - boundary + 37)
        path.write_bytes(bytes(data))
        _, recovered = reopen(directory)
        assert recovered.entries == survivors
        assert path.stat().st_size == boundary


def test_flipped_bit_in_a_middle_record_is_a_storage_error(tmp_path: Path) -> None:
    source = tmp_path / "source"
    wal, _ = reopen(source)
    wal.save(make_entries(1, 3, term=1), HardState(1, 1, 0))
    start = segments(source)[0].stat().st_size
    wal.save(make_entries(4, 3, term=1), HardState(1, 1, 2))
    end = segments(source)[0].stat().st_size
    wal.save(make_entries(7, 3, term=1), HardState(1, 1, 5))
    wal.close()
    full = segments(source)[0].read_bytes()
    # Every bit of the middle record but the length field's (a length pointing past end of
    # file reads as a torn tail; see the module docstring): checked at start and end bytes
    # of each field and at every 7th body byte to keep the test fast.
    positions = sorted(set(range(4, 12)) | set(range(12, end - start, 7)) | {end - start - 1})
    for position in positions:
        for bit in (0, 5):
            data = bytearray(full)
            data[start + position] ^= 1 << bit
            directory = tmp_path / f"flip{position}-{bit}"
            directory.mkdir()
            path = directory / segments(source)[0].name
            path.write_bytes(bytes(data))
            with pytest.raises(StorageError) as info:
                reopen(directory)
            message = str(info.value)
            assert str(path) in message and f"offset {start}" in message, message
            assert path.read_bytes() == bytes(data), "a corrupt WAL must not be modified"


def test_flipped_length_bits_in_a_middle_record_are_detected(tmp_path: Path) -> None:
    wal, _ = reopen(tmp_path / "source")
    wal.save(make_entries(1, 3, term=1), None)
    start = segments(tmp_path / "source")[0].stat().st_size
    wal.save(make_entries(4, 3, term=1), None)
    wal.save(make_entries(7, 3, term=1), None)
    wal.close()
    full = segments(tmp_path / "source")[0].read_bytes()
    # Low bits of the length move the record end inside the file: a bad checksum followed by
    # more bytes, which is corruption, not a torn tail.
    for bit in range(5):
        data = bytearray(full)
        data[start] ^= 1 << bit
        directory = tmp_path / f"len{bit}"
        directory.mkdir()
        (directory / segments(tmp_path / "source")[0].name).write_bytes(bytes(data))
        with pytest.raises(StorageError, match=f"offset {start}"):
            reopen(directory)


def test_damage_in_an_older_segment_is_a_storage_error(tmp_path: Path) -> None:
    wal, _ = reopen(tmp_path, segment_bytes=200)
    for first in range(1, 60, 6):
        wal.save(make_entries(first, 6, term=1), None)
    wal.close()
    older = segments(tmp_path)[0]
    size = older.stat().st_size
    with open(older, "r+b") as file:
        file.truncate(size - 3)   # a short tail anywhere but the last segment is corruption
    with pytest.raises(StorageError, match="not the last segment"):
        reopen(tmp_path, segment_bytes=200)


def test_missing_middle_segment_is_a_storage_error(tmp_path: Path) -> None:
    wal, _ = reopen(tmp_path, segment_bytes=200)
    for first in range(1, 60, 6):
        wal.save(make_entries(first, 6, term=1), None)
    wal.close()
    segments(tmp_path)[2].unlink()
    with pytest.raises(StorageError, match="segment missing"):
        reopen(tmp_path)


def test_torn_header_of_the_last_segment_removes_it(tmp_path: Path) -> None:
    wal, _ = reopen(tmp_path, segment_bytes=100)
    wal.save(make_entries(1, 10, term=1), HardState(1, 1, 0))
    wal.close()
    # A new segment whose header write was torn (possible without the rename protocol).
    torn = tmp_path / segment_name(1, 11)
    torn.write_bytes(b"\x05\x00")
    wal, recovered = reopen(tmp_path, segment_bytes=100)
    assert recovered.entries == make_entries(1, 10, term=1)
    # b"\x05\x00": the zero is not counted (it could be preallocated space).
    assert recovered.truncated_bytes == 1 and not torn.exists()
    wal.save(make_entries(11, 1, term=1), None)
    wal.close()
    _, recovered = reopen(tmp_path)
    assert recovered.entries == make_entries(1, 11, term=1)


def test_only_segment_with_a_torn_header_starts_afresh(tmp_path: Path) -> None:
    (tmp_path / segment_name(0, 1)).write_bytes(b"\x30\x00\x00\x00\x01")
    wal, recovered = reopen(tmp_path)
    assert recovered.entries == [] and recovered.first_index == 1
    wal.save(make_entries(1, 2, term=1), None)
    wal.close()
    _, recovered = reopen(tmp_path)
    assert recovered.entries == make_entries(1, 2, term=1)


def test_empty_older_segment_is_a_storage_error(tmp_path: Path) -> None:
    wal, _ = reopen(tmp_path, segment_bytes=100)
    wal.save(make_entries(1, 10, term=1), None)
    wal.save(make_entries(11, 10, term=1), None)
    wal.close()
    segments(tmp_path)[0].write_bytes(b"")
    with pytest.raises(StorageError, match="empty but not the last"):
        reopen(tmp_path)


def test_leftover_temporary_segment_is_removed(tmp_path: Path) -> None:
    wal, _ = reopen(tmp_path)
    wal.save(make_entries(1, 2, term=1), None)
    wal.close()
    (tmp_path / (segment_name(1, 3) + ".tmp")).write_bytes(b"half a header")
    _, recovered = reopen(tmp_path)
    assert recovered.entries == make_entries(1, 2, term=1)
    assert not list(tmp_path.glob("*.tmp"))


# ---------------------------------------------------------------------------- compaction


def test_compaction_deletes_whole_segments_below_the_snapshot(tmp_path: Path) -> None:
    wal, _ = reopen(tmp_path, segment_bytes=300)
    for first in range(1, 101, 10):
        wal.save(make_entries(first, 10, term=1), HardState(1, 1, first + 9))
    before = segments(tmp_path)
    firsts = [int(path.name[15:35]) for path in before]
    wal.compact(55, 1)
    after = segments(tmp_path)
    # Exactly the segments whose successor starts at or below 56 are gone.
    kept_from = max(i for i, first in enumerate(firsts) if first <= 56)
    assert kept_from > 2
    # (the compaction marker itself may have rolled a new segment after them)
    assert after[:len(before) - kept_from] == before[kept_from:]
    assert not any(path.exists() for path in before[:kept_from])
    wal.save(make_entries(101, 5, term=2), None)
    wal.close()
    wal, recovered = reopen(tmp_path, segment_bytes=300)
    assert recovered.snapshot_index == 55 and recovered.snapshot_term == 1
    assert recovered.first_index == 56
    assert recovered.entries == make_entries(56, 45, term=1) + make_entries(101, 5, term=2)
    assert recovered.hard_state == HardState(1, 1, 100)
    # Compacting past the end discards the log (Raft Figure 13: snapshot from the leader).
    wal.compact(500, 7)
    assert wal.last_index == 500
    wal.save(make_entries(501, 2, term=7), None)
    wal.close()
    _, recovered = reopen(tmp_path, segment_bytes=300)
    assert recovered.first_index == 501 and recovered.entries == make_entries(501, 2, term=7)
    assert (recovered.snapshot_index, recovered.snapshot_term) == (500, 7)


def test_compaction_with_a_conflicting_term_discards_the_log(tmp_path: Path) -> None:
    wal, _ = reopen(tmp_path)
    wal.save(make_entries(1, 10, term=1), None)
    wal.compact(5, 2)   # our entry 5 has term 1: Raft Figure 13 step 7
    assert wal.last_index == 5
    wal.close()
    wal, recovered = reopen(tmp_path)
    assert recovered.entries == [] and recovered.first_index == 6
    wal.save(make_entries(6, 1, term=2), None)
    wal.compact(3, 1)   # older than the current snapshot: ignored
    wal.close()
    _, recovered = reopen(tmp_path)
    assert recovered.entries == make_entries(6, 1, term=2)


def test_storage_error_poisons_the_wal(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    wal, _ = reopen(tmp_path)

    def failing(fd: int) -> None:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(os, "fsync", failing)
    monkeypatch.setattr(os, "fdatasync", failing, raising=False)
    with pytest.raises(StorageError, match="Input/output"):
        wal.save(make_entries(1, 1, term=1), None)
    monkeypatch.undo()
    with pytest.raises(StorageError, match="failed earlier"):
        wal.save(make_entries(1, 1, term=1), None)
    wal.close()


operation = st.one_of(
    st.tuples(st.just("save"), st.integers(0, 12), st.integers(0, 6), st.booleans()),
    st.tuples(st.just("compact"), st.integers(0, 8), st.integers(0, 1), st.booleans()),
    st.tuples(st.just("restart"), st.just(0), st.just(0), st.just(False)),
)


@settings(max_examples=60, deadline=None)
@given(st.lists(operation, max_size=25))
def test_random_histories_replay_to_the_oracle(tmp_path_factory: pytest.TempPathFactory,
                                               ops: list) -> None:
    directory = tmp_path_factory.mktemp("wal")
    oracle = Oracle()
    wal, _ = reopen(directory, segment_bytes=150)
    term = 1
    for name, a, b, flag in ops:
        if name == "save":
            last = oracle.snapshot_index + len(oracle.entries)
            first = max(1, last + 1 - a)   # overlap up to a entries: truncate-on-conflict
            term += int(flag)
            hard_state = HardState(term, 1, 0) if flag or b == 0 else None
            batch = make_entries(first, b, term=term)
            wal.save(batch, hard_state)
            oracle.save(batch, hard_state)
        elif name == "compact":
            index = oracle.snapshot_index + a
            position = index - oracle.first
            in_log = 0 <= position < len(oracle.entries)
            # flag: the term our log holds at index (keep the suffix); else a term it does not
            compact_term = oracle.entries[position].term if in_log and flag else 10**6 + b
            wal.compact(index, compact_term)
            oracle.compact(index, compact_term)
        else:
            wal.close()
            wal, recovered = reopen(directory, segment_bytes=150)
            assert recovered.entries == oracle.entries
            assert recovered.first_index == oracle.first
            assert recovered.hard_state == oracle.hard_state
    wal.close()
    _, recovered = reopen(directory, segment_bytes=150)
    assert recovered.entries == oracle.entries
    assert recovered.first_index == oracle.first
    assert recovered.hard_state == oracle.hard_state


# ---------------------------------------------------------------------- snapshot files


def _snapshot(index: int, term: int, data: bytes = b"state") -> tuple[object, bytes]:
    from engine.replication.snapshot import encode_snapshot
    from engine.types import Snapshot

    snapshot = Snapshot(index, term, data)
    return snapshot, encode_snapshot(snapshot)


def test_snapshot_file_is_durable_verified_and_replaces_older_ones(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from engine.aio.wal import write_snapshot_file

    synced: list[int] = []
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(fd), real_fsync(fd)))
    wal = WriteAheadLog(tmp_path)
    wal.open()
    first, first_envelope = _snapshot(5, 1)
    wal.save_snapshot(first, first_envelope)
    assert len(synced) >= 2  # the file, then the directory after the rename
    second, second_envelope = _snapshot(9, 2, b"newer")
    write_snapshot_file(str(tmp_path), 9, 2, second_envelope)
    assert sorted(p.name for p in tmp_path.glob("*.snap")) == [
        "snap-00000000000000000009-00000000000000000002.snap"
    ]
    assert wal.load_snapshot() == second
    wal.close()


def test_corrupt_snapshot_file_is_a_storage_error(tmp_path: Path) -> None:
    wal = WriteAheadLog(tmp_path)
    wal.open()
    snapshot, envelope = _snapshot(3, 1, b"x" * 100)
    wal.save_snapshot(snapshot, envelope)
    wal.close()
    (path,) = tmp_path.glob("*.snap")
    data = bytearray(path.read_bytes())
    data[60] ^= 0x04
    path.write_bytes(bytes(data))
    with pytest.raises(StorageError, match="corrupt"):
        WriteAheadLog(tmp_path).open()


def test_open_returns_snapshot_and_log_after_compaction(tmp_path: Path) -> None:
    wal = WriteAheadLog(tmp_path)
    wal.open()
    wal.save(make_entries(1, 10, 1), HardState(1, 1, 10))
    snapshot, envelope = _snapshot(8, 1)
    wal.save_snapshot(snapshot, envelope)
    wal.compact(6, 1)  # trailing entries 7..8 stay below the snapshot
    wal.close()
    recovered = WriteAheadLog(tmp_path).open()
    assert recovered.snapshot == snapshot
    assert (recovered.snapshot_index, recovered.snapshot_term) == (6, 1)
    assert [e.index for e in recovered.entries] == [7, 8, 9, 10]


def test_snapshot_newer_than_the_log_restarts_the_log_after_it(tmp_path: Path) -> None:
    # An installed snapshot whose WAL marker never reached the disk (crash in between).
    wal = WriteAheadLog(tmp_path)
    wal.open()
    wal.save(make_entries(1, 3, 1), HardState(1, 1, 3))
    snapshot, envelope = _snapshot(20, 2)
    wal.save_snapshot(snapshot, envelope)
    wal.close()
    reopened = WriteAheadLog(tmp_path)
    recovered = reopened.open()
    assert recovered.entries == [] and recovered.first_index == 21
    reopened.save(make_entries(21, 1, 2), None)  # no gap
    reopened.close()
    assert [e.index for e in WriteAheadLog(tmp_path).open().entries] == [21]


# ------------------------------------------------------- torn tail vs corruption (recovery)


def _acknowledged_records(directory: Path, count: int = 200) -> tuple[bytes, list[int]]:
    """`count` saves of one entry each (the last segment's records) followed by zeros, the
    preallocated space of a segment. Returns the segment's bytes and each save's offset."""
    wal, _ = reopen(directory)
    offsets = []
    for index in range(1, count + 1):
        offsets.append(segments(directory)[0].stat().st_size)
        wal.save(make_entries(index, 1, term=1), HardState(1, 1, index - 1))
    wal.close()
    path = segments(directory)[0]
    path.write_bytes(path.read_bytes() + bytes(64 * 1024))
    return path.read_bytes(), offsets


def test_flipped_length_bit_in_a_middle_record_refuses_to_start_instead_of_cutting(
        tmp_path: Path) -> None:
    """Bit 20 of a middle record's length points past the records into the preallocated
    zeros: a valid record follows it, so it is corruption, never a torn tail."""
    data, offsets = _acknowledged_records(tmp_path)
    path = segments(tmp_path)[0]
    damaged = bytearray(data)
    damaged[offsets[100] + 2] ^= 1 << 4    # bit 20 of the u32 length
    path.write_bytes(bytes(damaged))
    with pytest.raises(WalCorruptError) as info:
        reopen(tmp_path)
    message = str(info.value)
    assert str(path) in message and f"offset {offsets[100]}" in message, message
    assert f"valid record follows at offset {offsets[101]}" in message, message
    assert "python -m engine wal check --data-dir" in message, message
    assert (info.value.path, info.value.offset) == (str(path), offsets[100])
    assert path.read_bytes() == bytes(damaged), "a corrupt WAL must not be modified"
    assert not list(tmp_path.glob("*.broken"))


def test_flipped_length_bit_in_the_last_record_is_corruption_not_a_torn_tail(
        tmp_path: Path) -> None:
    data, offsets = _acknowledged_records(tmp_path, count=20)
    path = segments(tmp_path)[0]
    for bit in (3, 20, 31):
        damaged = bytearray(data)
        damaged[offsets[-1] + bit // 8] ^= 1 << (bit % 8)
        path.write_bytes(bytes(damaged))
        with pytest.raises(WalCorruptError, match=f"offset {offsets[-1]}.*|length field"):
            reopen(tmp_path)
        assert path.read_bytes() == bytes(damaged)


def test_zeroed_header_of_the_last_record_is_a_torn_tail_moved_aside_and_logged(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """What a crash leaves when the page holding a record's header never reached the disk
    but its body did: nothing valid follows, so it is a torn tail; its bytes are kept."""
    data, offsets = _acknowledged_records(tmp_path)
    path = segments(tmp_path)[0]
    damaged = bytearray(data)
    last = offsets[-1]
    damaged[last:last + 9] = bytes(9)
    path.write_bytes(bytes(damaged))
    with caplog.at_level("WARNING", logger="engine.aio.wal"):
        wal, recovered = reopen(tmp_path)
    wal.close()
    assert [e.index for e in recovered.entries] == list(range(1, 200))
    assert recovered.hard_state == HardState(1, 1, 198)
    cut = bytes(damaged[last:]).rstrip(b"\0")
    assert recovered.truncated_bytes == len(cut)
    (broken,) = tmp_path.glob("*.broken")
    assert broken.name == f"{path.name}.{last}.broken"
    assert broken.read_bytes() == cut
    assert path.stat().st_size == last
    (record,) = [r for r in caplog.records if "torn tail" in r.getMessage()]
    text = record.getMessage()
    assert str(path) in text and f"offset {last}" in text and f"{len(cut)} bytes" in text
    assert str(broken) in text


def test_torn_tails_never_overwrite_an_earlier_broken_file(tmp_path: Path) -> None:
    data, offsets = _acknowledged_records(tmp_path, count=5)
    path = segments(tmp_path)[0]
    for attempt in range(2):
        path.write_bytes(data[:offsets[-1]] + b"\x30\x00\x00\x00\xaa" + bytes([attempt + 1]))
        wal, recovered = reopen(tmp_path)
        wal.close()
        assert recovered.last_index == 4
    assert sorted(p.read_bytes()[-1] for p in tmp_path.glob("*.broken")) == [1, 2]


def test_duplicated_records_replay_to_the_same_state(tmp_path: Path) -> None:
    """A crash-and-retry can leave one save written twice, the copy right after it: replaying
    a copy of any hard-state or entries record there (the last one included) changes
    nothing."""
    source = tmp_path / "source"
    wal, _ = reopen(source)
    bounds = [segments(source)[0].stat().st_size]
    saves = [(make_entries(1, 3, term=1), HardState(1, 1, 0)), ([], HardState(1, 1, 2)),
             (make_entries(4, 2, term=2), None), (make_entries(3, 2, term=3), HardState(3, 2, 2)),
             ([], HardState(3, 2, 4))]
    for entries, hard_state in saves:
        wal.save(entries, hard_state)
        bounds.append(segments(source)[0].stat().st_size)
    wal.close()
    _, expected = reopen(source)
    full = segments(source)[0].read_bytes()
    for record in range(len(saves)):
        where = bounds[record + 1]
        copy = full[bounds[record]:where]
        directory = tmp_path / f"dup{record}"
        directory.mkdir()
        (directory / segments(source)[0].name).write_bytes(full[:where] + copy + full[where:])
        _, recovered = reopen(directory)
        assert recovered.entries == expected.entries, record
        assert recovered.hard_state == expected.hard_state, record
        assert recovered.truncated_bytes == 0


def test_log_conflicting_with_the_snapshot_at_its_index_is_discarded(tmp_path: Path) -> None:
    """A snapshot installed from a leader whose WAL marker did not reach the disk, over a log
    that holds another term at the snapshot's index: Raft §7 (Figure 13 step 7) discards
    that log; the entries after the index belong to another history."""
    wal = WriteAheadLog(tmp_path)
    wal.open()
    wal.save(make_entries(1, 10, 1), HardState(2, 1, 3))
    snapshot, envelope = _snapshot(8, 2)
    wal.save_snapshot(snapshot, envelope)
    wal.close()
    reopened = WriteAheadLog(tmp_path)
    recovered = reopened.open()
    assert recovered.snapshot == snapshot
    assert recovered.entries == [] and recovered.first_index == 9
    assert (recovered.snapshot_index, recovered.snapshot_term) == (8, 2)
    reopened.save(make_entries(9, 1, 2), None)  # no gap
    reopened.close()
    again = WriteAheadLog(tmp_path).open()
    assert [(e.index, e.term) for e in again.entries] == [(9, 2)]


def test_creating_the_data_directory_fsyncs_its_parents(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    synced: list[str] = []
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    wal = WriteAheadLog(tmp_path / "a" / "b")
    wal.open()
    wal.close()
    # each new directory's entry is made durable in its parent
    assert str(tmp_path) in synced and str(tmp_path / "a") in synced


@pytest.mark.parametrize("owner", ["node", "register"])
def test_node_and_register_data_directories_are_created_durably(
        owner: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from engine.aio.node import _open_storage
    from engine.aio.register import RegisterFile
    from engine.config import NodeConfig

    synced: list[str] = []
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    directory = tmp_path / "data"
    if owner == "node":
        _open_storage(NodeConfig(node_id=1, members={1: "127.0.0.1:7001"},
                                 data_dir=str(directory), cluster_key=bytes(32)))
    else:
        RegisterFile(str(directory), 1).load()
    assert directory.is_dir() and str(tmp_path) in synced


def test_older_segment_cut_at_a_record_boundary_is_corruption(tmp_path: Path) -> None:
    """Framing cannot see a segment that lost whole records from its end; the next segment's
    first index (the log's end when it was created) can."""
    wal, _ = reopen(tmp_path, segment_bytes=200)
    for first in range(1, 60, 6):
        wal.save(make_entries(first, 6, term=1), HardState(1, 1, first))
    wal.close()
    older = segments(tmp_path)[1]
    data = older.read_bytes()
    last = scan_segment_bytes(data, str(older), False).records[-1]
    older.write_bytes(data[:last.start])
    with pytest.raises(WalCorruptError, match=f"{older} at offset {last.start}"):
        reopen(tmp_path)


def test_forward_scan_finds_each_record_type_at_any_offset_and_nothing_in_filler() -> None:
    """find_valid_frame checks candidates a window at a time: records straddling a window
    edge are found, and zeros or one repeated byte (what fills a torn tail) hold none."""
    from engine.aio.wal import (
        _FLAGS_HARD_STATE,
        _SCAN_WINDOW,
        _SNAPSHOT_BODY,
        RECORD_SAVE,
        RECORD_SNAPSHOT,
        _encode_entries,
        _frame,
        find_valid_frame,
    )

    records = [
        _frame(RECORD_SAVE, b"\x02" + _encode_entries(make_entries(5, 1, term=1))),
        _frame(RECORD_SAVE, _FLAGS_HARD_STATE.pack(1, 3, 1, 2)),
        _frame(RECORD_SNAPSHOT, _SNAPSHOT_BODY.pack(5, 1, 1)),
        _frame(RECORD_SAVE, _FLAGS_HARD_STATE.pack(3, 3, 1, 2) + _encode_entries(
            make_entries(5, 3, term=1))),
    ]
    for record in records:
        for pad in (0, 1, 7, _SCAN_WINDOW - 3, _SCAN_WINDOW + 5):
            data = bytes(pad) + record + bytes(5)
            assert find_valid_frame(data, 0) == pad, (record, pad)
            assert find_valid_frame(data, pad + 1) == -1
    for filler in (0, 1, 2, 3):
        assert find_valid_frame(bytes([filler]) * (3 * _SCAN_WINDOW), 1) == -1


async def test_node_with_a_flipped_length_bit_refuses_to_start_and_loses_no_put(
        tmp_path: Path) -> None:
    """End to end: one node, 200 acknowledged puts, stopped; bit 20 of the length of the
    middle record of its active segment flipped (past the records, into the preallocated
    zeros): the restart must refuse, naming file and offset; undone, every put is there."""
    import engine
    from engine.kv import commands

    async with engine.LocalCluster(n=1, data_dir=tmp_path) as cluster:
        leader = await cluster.wait_leader()
        for i in range(200):
            result = await leader.propose(commands.encode_put(b"k%d" % i, b"v"))
            assert commands.decode_result(result).ok
        await cluster.stop(leader.node_id)
        (path,) = segments(tmp_path / f"n{leader.node_id}")
        pristine = path.read_bytes()
        records = scan_segment_bytes(pristine, str(path), True).records
        assert len(records) > 200
        middle = records[len(records) // 2].start
        damaged = bytearray(pristine)
        damaged[middle + 2] ^= 1 << 4     # bit 20 of the u32 length
        path.write_bytes(bytes(damaged))
        with pytest.raises(WalCorruptError, match=f"{path} at offset {middle}"):
            await cluster.restart(leader.node_id)
        assert path.read_bytes() == bytes(damaged)
        path.write_bytes(pristine)
        node = await cluster.restart(leader.node_id)
        await cluster.wait_leader()
        # a leader applies its log once an entry of its term commits (Raft §5.4.2)
        await node.propose(commands.encode_put(b"after", b"restart"))
        for i in range(200):
            query = commands.encode_get_query(b"k%d" % i)
            assert commands.decode_result(node.state_machine.query(query)).value == b"v"


def test_a_second_wal_on_the_same_data_directory_is_refused(tmp_path: Path) -> None:
    """Two writers on one log would interleave records, each acknowledging writes the other
    overwrites: the directory is locked while a WAL has it open, and free again once closed."""
    first = WriteAheadLog(tmp_path / "n1", fsync=False)
    first.open()
    try:
        with pytest.raises(StorageError, match="in use by another WAL"):
            WriteAheadLog(tmp_path / "n1", fsync=False).open()
    finally:
        first.close()
    second = WriteAheadLog(tmp_path / "n1", fsync=False)
    second.open()
    second.close()
