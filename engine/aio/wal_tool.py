"""`python -m engine wal check|repair --data-dir DIR`: inspect and repair a node's WAL offline.

check   Frames and checksums every segment and replays the log exactly as a starting node
        does, changing nothing. Prints each segment (and with --records each record), then
        the recovered log of each consensus group the WAL holds (group 0 is the
        single-group log). Exit 0 when the log is clean (a torn tail that a start would cut
        is reported, not an error), 7 when it is corrupt (the message names file and offset).

repair  Never drops a record silently. A torn tail is moved to a ``.broken`` file beside its
        segment and cut (what a start does anyway). Corruption in the middle of the log is
        refused unless --truncate-at-corruption is given: then everything from the damaged
        record on (the rest of its segment and every later segment) is moved to ``.broken``
        files, and the number of records and bytes moved is printed. THAT CAN LOSE
        ACKNOWLEDGED WRITES: for a node of a replicated cluster, the right recovery is
        usually to wipe its data directory and let it catch up from its peers (Raft §5.3:
        the leader repairs a follower's log), since a truncated log may have voted or
        acknowledged entries that it no longer holds.

The node must not be running while either command runs.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TextIO

from engine.aio.wal import (
    _FRAME,
    _FRAME_SIZE,
    RECORD_GROUP_BATCH,
    RECORD_GROUP_SNAPSHOT,
    RECORD_HEADER,
    RECORD_SAVE,
    RECORD_SNAPSHOT,
    RecoveredState,
    WriteAheadLog,
    find_valid_frame,
    move_aside,
    scan_segment_bytes,
)
from engine.cli import exitcodes
from engine.errors import StorageError, WalCorruptError

# The command line's exit codes (engine/cli/exitcodes.py): a corrupt log is a storage error.
EXIT_CLEAN = exitcodes.OK
EXIT_CORRUPT = exitcodes.STORAGE
EXIT_USAGE = exitcodes.USAGE

_TYPE_NAMES = {RECORD_HEADER: "header", RECORD_SAVE: "save", RECORD_SNAPSHOT: "snapshot",
               RECORD_GROUP_BATCH: "group batch", RECORD_GROUP_SNAPSHOT: "group snapshot"}


def _report_groups(recovered: dict[int, RecoveredState], out: TextIO) -> None:
    """One line per group: its log, hard state and snapshot (group 0's line reads as the
    single-group log's always has)."""
    for group, state in recovered.items():
        snapshot = state.snapshot
        name = f"group {group}: " if group else ""
        print(f"OK: {name}log {state.first_index}..{state.last_index}, hard state "
              f"{state.hard_state}, snapshot "
              f"{(snapshot.index, snapshot.term) if snapshot else None}", file=out)


def check(directory: str, out: TextIO, *, records: bool = False) -> int:
    """Report every segment (and record) and whether the log replays; changes nothing."""
    if not os.path.isdir(directory):
        print(f"error: {directory} is not a directory", file=out)
        return EXIT_USAGE
    wal = WriteAheadLog(directory, fsync=False)
    try:
        segments = wal._list_segments()
    except StorageError as exc:
        print(f"CORRUPT: {exc}", file=out)
        return EXIT_CORRUPT
    corrupt = False
    for position, segment in enumerate(segments):
        with open(segment.path, "rb") as file:
            data = file.read()
        try:
            scan = scan_segment_bytes(data, segment.path, position == len(segments) - 1)
        except WalCorruptError as exc:
            print(f"{segment.path}: CORRUPT: {exc}", file=out)
            corrupt = True
            continue
        print(f"{segment.path}: {len(scan.records)} records, {scan.end} bytes", file=out)
        if records:
            for record in scan.records:
                print(f"  offset {record.start}: {_TYPE_NAMES[record.type]}, "
                      f"{record.body_end - record.body_start} bytes", file=out)
        if scan.torn:
            print(f"  torn tail at offset {scan.end}: {len(scan.torn)} bytes ({scan.reason}); "
                  "a start or `wal repair` moves them to a .broken file", file=out)
    if corrupt:
        return EXIT_CORRUPT
    try:
        recovered = wal.inspect_groups()
    except StorageError as exc:
        print(f"CORRUPT: {exc}", file=out)
        return EXIT_CORRUPT
    _report_groups(recovered, out)
    return EXIT_CLEAN


@dataclass
class _Moved:
    records: int = 0
    bytes: int = 0


def repair(directory: str, out: TextIO, *, truncate_at_corruption: bool = False) -> int:
    """Cut a torn tail (bytes moved aside); refuse mid-log corruption unless told to cut there."""
    if not os.path.isdir(directory):
        print(f"error: {directory} is not a directory", file=out)
        return EXIT_USAGE
    moved = _Moved()
    while True:
        try:
            WriteAheadLog(directory, fsync=False).inspect_groups()
            break
        except WalCorruptError as exc:
            if not truncate_at_corruption:
                print(f"CORRUPT: {exc}", file=out)
                print("refusing to repair: cutting here would drop the records after it. "
                      "For a replicated node, wipe its data directory and let it catch up "
                      "from its peers; or rerun with --truncate-at-corruption to move "
                      "everything from this record on aside (this can lose acknowledged "
                      "writes).", file=out)
                return EXIT_CORRUPT
            _truncate_at(directory, exc.path, exc.offset, moved, out)
        except StorageError as exc:
            print(f"CORRUPT (not repairable here): {exc}", file=out)
            return EXIT_CORRUPT
    # Cuts a torn tail, moving its bytes aside (logged). No preallocation: the node's own
    # start preallocates its segment.
    wal = WriteAheadLog(directory, preallocate=False)
    recovered = wal.open_groups()
    wal.close()
    truncated = recovered[0].truncated_bytes   # the file's, reported with group 0
    if truncated:
        print(f"torn tail: {truncated} bytes moved to a .broken file", file=out)
    if moved.bytes:
        print(f"moved aside in total: {moved.records} records, {moved.bytes} bytes "
              "(kept in the .broken files)", file=out)
    _report_groups(recovered, out)
    return EXIT_CLEAN


def _truncate_at(directory: str, path: str, offset: int, moved: _Moved, out: TextIO) -> None:
    """Move everything from `offset` of `path` on, and every later segment, to .broken files
    (fsynced), then delete the later segments newest first (a crash part-way leaves a run of
    consecutive segments) and cut `path` at `offset`."""
    wal = WriteAheadLog(directory)
    segments = wal._list_segments()
    position = [segment.path for segment in segments].index(path)
    for segment in segments[position:]:
        start = offset if segment.path == path else 0
        with open(segment.path, "rb") as file:
            data = file.read()
        cut = data[start:].rstrip(b"\0")
        count = _records_in(data, start, damaged=segment.path == path)
        broken = move_aside(segment.path, start, cut)
        moved.records += count
        moved.bytes += len(cut)
        print(f"moved {count} records ({len(cut)} bytes) from {segment.path} offset {start} "
              f"to {broken}", file=out)
    for segment in reversed(segments[position + 1:]):
        os.unlink(segment.path)
    wal._sync_directory()
    with open(path, "r+b") as file:
        file.truncate(offset)
        os.fsync(file.fileno())


def _records_in(data: bytes, start: int, *, damaged: bool) -> int:
    """Saves and snapshot markers from `start` on: the damaged record at `start` plus every
    valid frame found after it."""
    count = 1 if damaged else 0
    found = find_valid_frame(data, start + 1 if damaged else start)
    while found >= 0:
        count += 1
        length = _FRAME.unpack_from(data, found)[0]
        found = find_valid_frame(data, found + _FRAME_SIZE + length)
    return count
