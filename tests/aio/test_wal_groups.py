"""engine.aio.wal holding many consensus groups in one log: save_many (one record, one
fsync), per-group compaction markers and snapshots, segment deletion below every group's
floor, replay per group, and version 1 WALs read as group 0. MemoryStorage, its twin."""

from __future__ import annotations

import io
import os
import struct
import zlib
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.aio import wal_tool
from engine.aio.memory_storage import MemoryStorage
from engine.aio.wal import (
    FORMAT_VERSION,
    RECORD_HEADER,
    WriteAheadLog,
    read_snapshot_file,
    scan_segment_bytes,
)
from engine.errors import WalCorruptError
from engine.messages import Entry
from engine.replication.snapshot import encode_snapshot
from engine.types import HardState, Snapshot


def entries(first: int, count: int, term: int, tag: int = 0) -> list[Entry]:
    return [Entry(term, index, bytes([tag]) * 7 + str(index).encode(), 0)
            for index in range(first, first + count)]


def segments(directory: Path) -> list[Path]:
    return sorted(p for p in directory.iterdir() if p.name.endswith(".log"))


def open_wal(directory: Path, segment_bytes: int = 64 << 20,
             fsync: bool = False) -> WriteAheadLog:
    wal = WriteAheadLog(directory, segment_bytes=segment_bytes, fsync=fsync,
                        preallocate=False)
    wal.open_groups()
    return wal


def logs(directory: Path, segment_bytes: int = 64 << 20) -> dict[int, tuple]:
    """Every group's (first index, entries, hard state) after a restart."""
    wal = WriteAheadLog(directory, segment_bytes=segment_bytes, fsync=False,
                        preallocate=False)
    try:
        return {group: (state.first_index, state.entries, state.hard_state)
                for group, state in wal.open_groups().items()}
    finally:
        wal.close()


def test_save_many_is_one_record_and_one_fsync(tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    wal = open_wal(tmp_path, fsync=True)
    syncs = []
    monkeypatch.setattr(os, "fsync", syncs.append)
    monkeypatch.setattr(os, "fdatasync", syncs.append, raising=False)
    records_before = len(scan_segment_bytes(segments(tmp_path)[0].read_bytes(), "", True)
                         .records)
    wal.save_many([(group, entries(1, 2, 1, group), HardState(1, group, 0))
                   for group in range(64)])
    assert len(syncs) == 1
    records = scan_segment_bytes(segments(tmp_path)[0].read_bytes(), "", True).records
    assert len(records) == records_before + 1
    wal.close()
    recovered = logs(tmp_path)
    assert sorted(recovered) == list(range(64))
    for group in range(64):
        assert recovered[group] == (1, entries(1, 2, 1, group), HardState(1, group, 0))


def test_save_is_group_zero_and_open_returns_it(tmp_path: Path) -> None:
    wal = open_wal(tmp_path)
    wal.save(entries(1, 3, 1), HardState(1, 1, 2))
    wal.save_many([(5, entries(1, 1, 2, 5), None), (0, entries(4, 1, 1), None)])
    assert (wal.last_index, wal.last_index_of(5)) == (4, 1)
    wal.close()
    wal = WriteAheadLog(tmp_path, fsync=False)
    recovered = wal.open()
    wal.close()
    assert recovered.entries == entries(1, 3, 1) + entries(4, 1, 1)
    assert recovered.hard_state == HardState(1, 1, 2)
    assert logs(tmp_path)[5] == (1, entries(1, 1, 2, 5), HardState())


def test_save_many_validates_each_group_before_writing(tmp_path: Path) -> None:
    wal = open_wal(tmp_path)
    wal.save_many([(1, entries(1, 2, 1), None)])
    with pytest.raises(ValueError, match="gap"):
        wal.save_many([(2, entries(1, 1, 1), None), (1, entries(5, 1, 1), None)])
    with pytest.raises(ValueError, match="twice"):
        wal.save_many([(1, entries(3, 1, 1), None), (1, entries(4, 1, 1), None)])
    with pytest.raises(ValueError, match="outside"):
        wal.save_many([(1 << 32, entries(1, 1, 1), None)])
    wal.close()
    assert logs(tmp_path) == {0: (1, [], HardState()), 1: (1, entries(1, 2, 1), HardState())}


def test_groups_replay_independently_across_rolls_and_conflicts(tmp_path: Path) -> None:
    wal = open_wal(tmp_path, segment_bytes=300)
    expected: dict[int, list[Entry]] = {0: [], 1: [], 9: []}
    for step in range(40):
        batch = []
        for group in expected:
            if (step + group) % 3:
                log = expected[group]
                start = len(log) + 1 if step != 30 else max(len(log) - 1, 1)  # §5.3 conflict
                new = entries(start, 2, 1 + (step >= 30), group)
                del log[start - 1:]
                log += new
                batch.append((group, new, HardState(step, group, 0)))
        wal.save_many(batch)
    wal.close()
    assert len(segments(tmp_path)) > 3
    recovered = logs(tmp_path, 300)
    for group, log in expected.items():
        assert recovered[group][1] == log


def test_compaction_deletes_segments_only_below_every_groups_floor(tmp_path: Path) -> None:
    wal = open_wal(tmp_path, segment_bytes=200)
    for index in range(1, 31):
        wal.save_many([(0, entries(index, 1, 1), None), (1, entries(index, 1, 1, 1), None)])
    oldest = segments(tmp_path)[0]
    many = len(segments(tmp_path))
    assert many > 5
    wal.compact(30, 1)                 # group 0 is covered; group 1 still needs every segment
    assert segments(tmp_path)[0] == oldest
    assert wal.groups_pinning_segments() == [1]
    wal.compact(20, 1, group=1)        # now only segments holding group 1's 21.. stay
    kept = len(segments(tmp_path))
    assert 1 < kept < many
    wal.compact(30, 1, group=1)
    assert len(segments(tmp_path)) == 1
    assert wal.groups_pinning_segments() == []
    wal.close()
    recovered = logs(tmp_path, 200)
    assert recovered[0] == (31, [], HardState())
    assert recovered[1] == (31, [], HardState())


def test_compaction_marker_of_one_group_leaves_the_others(tmp_path: Path) -> None:
    wal = open_wal(tmp_path)
    wal.save_many([(0, entries(1, 5, 1), None), (3, entries(1, 5, 2, 3), None)])
    wal.compact(3, 2, group=3)          # keeps the suffix (Raft Figure 13 step 6)
    wal.compact(2, 9, group=0)          # a conflicting term discards group 0's log (step 7)
    assert (wal.snapshot_index_of(3), wal.last_index_of(3)) == (3, 5)
    assert (wal.snapshot_index, wal.last_index) == (2, 2)
    wal.close()
    recovered = logs(tmp_path)
    assert recovered[3] == (4, entries(4, 2, 2, 3), HardState())
    assert recovered[0] == (3, [], HardState())


def test_snapshot_files_are_per_group(tmp_path: Path) -> None:
    wal = open_wal(tmp_path)
    wal.save_many([(0, entries(1, 4, 1), None), (2, entries(1, 4, 1, 2), None)])
    for group, index in ((0, 2), (2, 3), (2, 4)):
        snapshot = Snapshot(index, 1, b"state of %d" % group)
        wal.save_snapshot(snapshot, encode_snapshot(snapshot), group=group)
    snapshot = Snapshot(6, 1, b"installed")   # a group known only by its snapshot
    wal.save_snapshot(snapshot, encode_snapshot(snapshot), group=8)
    names = sorted(p.name for p in tmp_path.iterdir() if p.name.endswith(".snap"))
    assert names == ["snap-00000000000000000002-00000000000000000001.snap",
                     "snap-g0000000002-00000000000000000004-00000000000000000001.snap",
                     "snap-g0000000008-00000000000000000006-00000000000000000001.snap"]
    wal.close()
    wal = WriteAheadLog(tmp_path, fsync=False)
    recovered = wal.open_groups()
    wal.close()
    assert {group: state.snapshot.index for group, state in recovered.items()
            if state.snapshot} == {0: 2, 2: 4, 8: 6}
    # the log of group 8 starts after its snapshot, so its next save has no gap
    assert (recovered[8].first_index, recovered[2].first_index) == (7, 1)
    assert read_snapshot_file(str(tmp_path / names[1])).data == b"state of 2"


def test_duplicated_batch_record_replays_harmlessly(tmp_path: Path) -> None:
    wal = open_wal(tmp_path)
    wal.save_many([(0, entries(1, 2, 1), HardState(1, 0, 1)), (4, entries(1, 3, 1, 4), None)])
    wal.save_many([(4, entries(4, 1, 1, 4), HardState(1, 4, 2))])
    wal.close()
    before = logs(tmp_path)
    path = segments(tmp_path)[0]
    data = path.read_bytes()
    for record in scan_segment_bytes(data, "", True).records[1:]:
        path.write_bytes(data[:record.body_end] + data[record.start:])
        assert logs(tmp_path) == before
        path.write_bytes(data)


def test_corrupt_batch_followed_by_a_valid_record_names_file_and_offset(tmp_path: Path) -> None:
    wal = open_wal(tmp_path)
    wal.save_many([(0, entries(1, 2, 1), None), (4, entries(1, 3, 1, 4), None)])
    wal.save_many([(4, entries(4, 1, 1, 4), None), (6, entries(1, 1, 1, 6), None)])
    wal.close()
    path = segments(tmp_path)[0]
    data = bytearray(path.read_bytes())
    first_batch = scan_segment_bytes(bytes(data), "", True).records[1]
    data[first_batch.body_start + 20] ^= 0x10
    path.write_bytes(bytes(data))
    with pytest.raises(WalCorruptError) as caught:
        WriteAheadLog(tmp_path, fsync=False).open_groups()
    assert caught.value.path == str(path) and caught.value.offset == first_batch.start
    assert f"{path} at offset {first_batch.start}" in str(caught.value)


def test_torn_last_batch_is_cut_and_moved_aside(tmp_path: Path) -> None:
    wal = open_wal(tmp_path)
    wal.save_many([(0, entries(1, 2, 1), None), (4, entries(1, 3, 1, 4), None)])
    wal.save_many([(4, entries(4, 1, 1, 4), None), (6, entries(1, 1, 1, 6), None)])
    wal.close()
    path = segments(tmp_path)[0]
    data = path.read_bytes()
    last = scan_segment_bytes(data, "", True).records[-1]
    path.write_bytes(data[:last.body_end - 5])
    recovered = logs(tmp_path)
    assert recovered == {0: (1, entries(1, 2, 1), HardState()),
                         4: (1, entries(1, 3, 1, 4), HardState())}
    assert (tmp_path / f"{path.name}.{last.start}.broken").exists()


def test_records_missing_from_an_older_segments_end_are_corruption(tmp_path: Path) -> None:
    wal = open_wal(tmp_path, segment_bytes=150)
    for index in range(1, 8):
        wal.save_many([(3, entries(index, 1, 1, 3), None)])
    wal.close()
    first = segments(tmp_path)[0]
    records = scan_segment_bytes(first.read_bytes(), "", True).records
    assert len(records) > 2
    first.write_bytes(first.read_bytes()[:records[-1].start])   # a whole record gone
    with pytest.raises(WalCorruptError, match="group 3") as caught:
        WriteAheadLog(tmp_path, segment_bytes=150, fsync=False).open_groups()
    assert caught.value.path == str(first)


def _as_version_1(path: Path) -> None:
    """Rewrite a one-group segment's header in the version 1 layout (no group rows); every
    other record of a one-group WAL is the same in both versions."""
    data = path.read_bytes()
    length, _, record_type = struct.unpack_from("<IIB", data, 0)
    assert record_type == RECORD_HEADER
    body = bytearray(data[9:9 + length - 4])         # without the (empty) row count
    assert struct.unpack_from("<H", body, 4)[0] == FORMAT_VERSION
    struct.pack_into("<H", body, 4, 1)
    size_type = struct.pack("<IB", len(body), RECORD_HEADER)
    crc = zlib.crc32(bytes(body), zlib.crc32(size_type))
    path.write_bytes(struct.pack("<IIB", len(body), crc, RECORD_HEADER) + bytes(body)
                     + data[9 + length:])


def test_a_version_1_wal_opens_as_group_zero_and_grows_in_version_2(tmp_path: Path) -> None:
    wal = open_wal(tmp_path, segment_bytes=200)
    for index in range(1, 13):
        wal.save(entries(index, 1, 1), HardState(1, 1, index - 1))
    wal.compact(3, 1)
    wal.close()
    expected = logs(tmp_path, 200)
    for path in segments(tmp_path):
        _as_version_1(path)
    assert logs(tmp_path, 200) == expected
    wal = open_wal(tmp_path, segment_bytes=200)
    for index in range(13, 20):
        wal.save_many([(0, entries(index, 1, 1), None), (2, entries(index - 12, 1, 1, 2),
                                                           None)])
    wal.close()
    recovered = logs(tmp_path, 200)
    assert recovered[0][1] == expected[0][1] + entries(13, 7, 1)
    assert recovered[2][1] == entries(1, 7, 1, 2)


def test_a_newer_version_is_refused_naming_it(tmp_path: Path) -> None:
    wal = open_wal(tmp_path)
    wal.close()
    path = segments(tmp_path)[0]
    data = bytearray(path.read_bytes())
    length = struct.unpack_from("<I", data, 0)[0]
    struct.pack_into("<H", data, 9 + 4, FORMAT_VERSION + 1)
    struct.pack_into("<I", data, 4, zlib.crc32(bytes(data[9:9 + length]),
                                               zlib.crc32(bytes(data[0:4]) + bytes(data[8:9]))))
    path.write_bytes(bytes(data))
    with pytest.raises(WalCorruptError, match=f"version {FORMAT_VERSION + 1}.*newer engine"):
        WriteAheadLog(tmp_path, fsync=False).open_groups()


def test_wal_check_reports_every_group(tmp_path: Path) -> None:
    wal = open_wal(tmp_path)
    wal.save_many([(0, entries(1, 2, 1), HardState(1, 0, 1)), (7, entries(1, 4, 1, 7), None)])
    wal.close()
    out = io.StringIO()
    assert wal_tool.check(str(tmp_path), out) == wal_tool.EXIT_CLEAN
    assert "OK: log 1..2" in out.getvalue()
    assert "OK: group 7: log 1..4" in out.getvalue()
    assert "group batch" in (lambda o: (wal_tool.check(str(tmp_path), o, records=True),
                                        o.getvalue())[1])(io.StringIO())


# ---------------------------------------------------------------- the in-memory twin

_saves = st.lists(st.tuples(
    st.sampled_from([0, 1, 5]), st.integers(0, 3), st.integers(1, 3), st.booleans(),
    st.integers(0, 4)), max_size=25)


@settings(max_examples=40, deadline=None)
@given(operations=_saves)
def test_memory_storage_recovers_what_the_wal_recovers(operations: list, tmp_path_factory:
                                                       pytest.TempPathFactory) -> None:
    directory = tmp_path_factory.mktemp("twin")
    wal = open_wal(directory, segment_bytes=256)
    memory = MemoryStorage()
    for group, count, term, with_hard_state, back in operations:
        last = wal.last_index_of(group)
        if count == 0 and back:                    # a compaction of a held entry
            index = max(last - back, 0)
            if index > wal.snapshot_index_of(group):
                held_term = term if index > last else 1
                wal.compact(index, held_term, group=group)
                memory.compact(index, held_term, group=group)
            continue
        start = max(last + 1 - back, wal.snapshot_index_of(group) + 1, 1)
        batch = [Entry(1, index, b"x", 0) for index in range(start, start + count)]
        hard_state = HardState(term, group, 0) if with_hard_state else None
        wal.save_many([(group, batch, hard_state)])
        memory.save_many([(group, batch, hard_state)])
    wal.close()
    on_disk = logs(directory, 256)
    in_memory = {group: (state.first_index, state.entries, state.hard_state)
                 for group, state in memory.open_groups().items()}
    assert {g: v for g, v in on_disk.items() if v != (1, [], HardState())} == \
        {g: v for g, v in in_memory.items() if v != (1, [], HardState())}
    assert memory.open().entries == on_disk[0][1]
