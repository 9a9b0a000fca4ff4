"""Segmented write-ahead log: the durable Raft (later Paxos) state of one node.

Layout. The directory holds segments named ``wal-<seq:010d>-<first_index:020d>.log``: `seq`
numbers segments consecutively (replay order); `first_index` is the log's last index + 1 when
the segment was created. (Truncate-on-conflict can move the log's end backwards, so the index
alone would not order segments; etcd names its segments seq-index for the same reason.)

Each segment is a sequence of records, little-endian::

    u32 body length | u32 crc | u8 type | body

where crc = zlib.crc32 over the length field, the type byte and the body. Record types:

  HEADER    first record of every segment: magic, version, seq, first_index, and a copy of the
            snapshot marker and hard state at creation, so deleting older segments (compaction)
            never loses them (etcd writes its state at the head of each new segment too).
  SAVE      one whole save(): optional hard state (term, vote, commit) and optional entries
            as columns: first index, count, terms[u64], kinds[u8], lengths[u32], then data.
            Entries replace the stored suffix from their first index (Raft §5.3 conflicts).
  SNAPSHOT  compaction marker (index, term, keep_suffix): entries <= index are covered by a
            state-machine snapshot; keep_suffix says whether the entries after it survive
            (Raft Figure 13, InstallSnapshot steps 6-7).

One save() is ONE record, written with one os.write and made durable with one fdatasync
(group commit). Because a record never spans two saves, a crash can only tear the last record
of the last segment, and replay tells a torn tail from corruption (scan_segment_bytes):

  * a bad record (short header, length running past end of file, bad checksum) is a torn
    tail only if it is in the last segment, NO valid record follows it anywhere in that
    segment (find_valid_frame scans forward byte by byte, skipping zeros quickly), and it
    does not verify with one bit of its length field flipped. The bytes cut are first
    written, fsynced, to ``<segment>.<offset>.broken`` beside the segment (never
    overwritten), a WARNING names the file, offset and byte count, and then the segment is
    cut there. Zeros alone after the records are preallocated space, cut silently;
  * anything else (a bad record followed by a valid one, any defect in an older segment, an
    unknown record type, missing segment numbers) raises WalCorruptError (a StorageError)
    naming file and offset, and the node refuses to start: `python -m engine wal check
    --data-dir DIR` reports the damage, `wal repair` is described in docs/reliability.md.

Limit (shared with every WAL): damage confined to the last record of the last segment that
leaves it looking torn (its tail zeroed or cut off, a flipped bit in its body) cannot be told
from a crash during that save; its bytes are then moved aside and logged, never destroyed.

Checksum choice: zlib.crc32 (stdlib). A faster crc32c is not worth a new dependency: the
checksum is far below 1% of a save (an fsync costs milliseconds) and of replay (dominated by
building Entry objects; docs/performance.md, "WAL checksum"); the format has one checksum
and never falls back to another.

Segments are preallocated to segment_bytes (posix_fallocate, when fsync=True): records are
written in place and the zeros after them mark the end, which replay cuts like a torn tail
of the last segment; a full segment is truncated to its records before the next one is
created, so only the last segment ever ends in zeros (see _preallocate for why).

`fsync=False` skips every fsync: fast, for benchmarks only, and NOT durable (a process crash
loses nothing, but after a machine crash several unsynced records may be torn, which open()
then reports as corruption).

Snapshots. State-machine snapshots live beside the segments as ``snap-<index:020d>-<term:020d>
.snap`` files holding the checksummed envelope of engine.replication.snapshot (BLAKE2b-256 over
header and data). `write_snapshot_file` writes one to a temporary file, fsyncs it, renames it
into place and fsyncs the directory, then deletes older snapshot files; it touches no WAL
state, so a node may run it on another thread while saves continue. The driver then calls
`compact(index, term)` (on the WAL's thread) with an index at or below the snapshot's, and
only then trims the in-memory log. open() loads the newest snapshot file (RecoveredState
.snapshot), verifies its checksum (a corrupt newest snapshot is a StorageError, never
silently skipped) and, if the log stops short of it (a crash between the snapshot and the
entries it covers reaching the log), compacts the WAL at the snapshot so the next save
follows it without a gap.

Threading: one writer. save(), compact() and close() must be called from one thread at a time
(the node's storage executor); they are not safe against each other.
"""

from __future__ import annotations

import fcntl
import logging
import os
import re
import struct
import zlib
from array import array
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from engine.errors import DecodeError, StorageError, WalCorruptError
from engine.messages import Entry
from engine.replication.snapshot import decode_snapshot
from engine.types import HardState, Snapshot

MAGIC = b"EWAL"
FORMAT_VERSION = 1
DEFAULT_SEGMENT_BYTES = 64 * 1024 * 1024
MAX_RECORD_BODY_BYTES = (1 << 32) - 1
LOCK_NAME = "LOCK"   # flock held by the process that has the WAL open (one writer per directory)

RECORD_HEADER = 1
RECORD_SAVE = 2
RECORD_SNAPSHOT = 3

_SAVE_HARD_STATE = 0x01
_SAVE_ENTRIES = 0x02

_FRAME = struct.Struct("<IIB")                # length, crc, type
_FRAME_SIZE = _FRAME.size                     # 9
_U32 = struct.Struct("<I")
_HEADER_BODY = struct.Struct("<4sHQQQQQQQ")   # magic, version, seq, first_index,
                                              # snapshot index/term, hard state term/vote/commit
_HARD_STATE = struct.Struct("<QQQ")
_FLAGS_HARD_STATE = struct.Struct("<BQQQ")     # a save record's flags, then its hard state
_ENTRIES_FLAG = bytes((_SAVE_ENTRIES,))        # the flags of a save record of entries only
_ENTRIES_HEAD = struct.Struct("<QI")          # first index, count
_ONE_ENTRY = struct.Struct("<QIQBI")           # _ENTRIES_HEAD + the columns of one entry
_LENGTH_TYPE = struct.Struct("<IB")            # what a frame's crc covers before the body
_SNAPSHOT_BODY = struct.Struct("<QQB")        # index, term, keep_suffix

_SEGMENT_RE = re.compile(r"^wal-(\d{10})-(\d{20})\.log$")
_SNAPSHOT_RE = re.compile(r"^snap-(\d{20})-(\d{20})\.snap$")
_TMP_SUFFIX = ".tmp"
_BROKEN_SUFFIX = ".broken"
_SCAN_WINDOW = 1 << 20   # candidate offsets checked per vectorized pass (find_valid_frame)
RECOVERY_HINT = ("inspect it with `python -m engine wal check --data-dir {directory}`; "
                 "see docs/reliability.md (Durability) before `wal repair`")

logger = logging.getLogger(__name__)


def snapshot_name(index: int, term: int) -> str:
    return f"snap-{index:020d}-{term:020d}.snap"


def _list_snapshots(directory: str) -> list[tuple[int, int, str]]:
    """(index, term, path) of every snapshot file, oldest first."""
    found = []
    for name in os.listdir(directory):
        match = _SNAPSHOT_RE.match(name)
        if match:
            found.append((int(match.group(1)), int(match.group(2)),
                          os.path.join(directory, name)))
    found.sort()
    return found


def _write_and_close(fd: int, data: bytes, fsync: bool) -> None:
    """Write all of `data` to the new file `fd`, fsync it if asked, close it."""
    try:
        _write_all(fd, data)
        if fsync:
            os.fsync(fd)
    finally:
        os.close(fd)


def replace_file_durably(path: str, data: bytes, *, fsync: bool = True) -> None:
    """Replace the file at `path` with `data` so that a crash leaves the old or the new
    content, never a mix: write a temporary file, fsync it, rename it over `path`, fsync the
    directory (the rename is durable only once its directory is)."""
    tmp_path = path + _TMP_SUFFIX
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_CLOEXEC", 0)
    _write_and_close(os.open(tmp_path, flags, 0o644), data, fsync)
    os.rename(tmp_path, path)
    if fsync:
        _fsync_directory(os.path.dirname(path) or ".")


def write_snapshot_file(directory: str, index: int, term: int, envelope: bytes,
                        fsync: bool = True) -> str:
    """Durably writes a snapshot envelope (tmp + fsync + rename + directory fsync) and then
    deletes older snapshot files. Safe to call from a thread other than the WAL's."""
    path = os.path.join(directory, snapshot_name(index, term))
    replace_file_durably(path, envelope, fsync=fsync)
    for old_index, _, old_path in _list_snapshots(directory):
        if old_index < index:
            try:
                os.unlink(old_path)
            except FileNotFoundError:
                pass  # another writer pruned it first
    return path


def read_snapshot_file(path: str) -> Snapshot:
    """Loads and verifies a snapshot file; StorageError if it is corrupt."""
    with open(path, "rb") as file:
        envelope = file.read()
    try:
        snapshot = decode_snapshot(envelope)
    except DecodeError as exc:
        raise StorageError(f"snapshot file {path} is corrupt: {exc}") from exc
    match = _SNAPSHOT_RE.match(os.path.basename(path))
    if match and (int(match.group(1)), int(match.group(2))) != (snapshot.index, snapshot.term):
        raise StorageError(f"snapshot file {path} holds ({snapshot.index}, {snapshot.term})")
    return Snapshot(snapshot.index, snapshot.term, snapshot.data, envelope,
                    configuration=snapshot.configuration)


def _log_holds(recovered: RecoveredState, snapshot: Snapshot) -> bool:
    """Whether the recovered log holds the snapshot's last entry, (index, term)."""
    position = snapshot.index - recovered.first_index
    return 0 <= position < len(recovered.entries) and \
        recovered.entries[position].term == snapshot.term


def make_directory_durably(directory: str) -> None:
    """os.makedirs, then fsync the parent of every directory it created: an fsync of a file
    does not make its directory's entry durable, nor that directory's own entry."""
    missing = []
    path = os.path.abspath(directory)
    while not os.path.isdir(path):
        missing.append(path)
        parent = os.path.dirname(path)
        if parent == path:
            break
        path = parent
    os.makedirs(directory, exist_ok=True)
    for created in reversed(missing):
        _fsync_directory(os.path.dirname(created))


def _fsync_directory(directory: str) -> None:
    fd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def segment_name(seq: int, first_index: int) -> str:
    return f"wal-{seq:010d}-{first_index:020d}.log"


def _frame(record_type: int, body: bytes) -> bytes:
    size = len(body)
    if size > MAX_RECORD_BODY_BYTES:
        raise ValueError(f"WAL record body of {size} bytes exceeds u32")
    # The crc covers length, type and body: crc32(body, crc32(length + type)) is the crc32
    # of their concatenation.
    crc = zlib.crc32(body, zlib.crc32(_LENGTH_TYPE.pack(size, record_type)))
    return _FRAME.pack(size, crc, record_type) + body


def _header_body(seq: int, first_index: int, snapshot_index: int, snapshot_term: int,
                 hard_state: HardState) -> bytes:
    return _HEADER_BODY.pack(
        MAGIC, FORMAT_VERSION, seq, first_index, snapshot_index, snapshot_term,
        hard_state.term, hard_state.vote, hard_state.commit,
    )


def _encode_entries(entries: list[Any]) -> bytes:
    """Columns, so replay decodes each column with one struct call instead of one per entry."""
    count = len(entries)
    try:
        if count == 1:  # the common Ready under light load: one struct call
            entry = entries[0]
            data = entry.data
            return _ONE_ENTRY.pack(entry.index, 1, entry.term, entry.kind, len(data)) + data
        datas = [entry.data for entry in entries]
        return b"".join((
            _ENTRIES_HEAD.pack(entries[0].index, count),
            struct.pack(f"<{count}Q", *[entry.term for entry in entries]),
            struct.pack(f"<{count}B", *[entry.kind for entry in entries]),
            struct.pack(f"<{count}I", *[len(data) for data in datas]),
            *datas,
        ))
    except struct.error as exc:
        raise ValueError(f"entry field out of range for the WAL format: {exc}") from exc


@dataclass
class RecoveredState:
    """What open() found: the last hard state and the log after the snapshot marker.

    entries[i].index == first_index + i; snapshot_index == first_index - 1 and snapshot_term is
    the term of that entry (0, 0 when nothing was ever compacted).
    """

    hard_state: HardState = field(default_factory=HardState)
    entries: list[Any] = field(default_factory=list)
    first_index: int = 1
    snapshot_index: int = 0
    snapshot_term: int = 0
    # Bytes of a torn save cut from the last segment at open (0 if clean; the zeros of
    # preallocated space after the records are cut too but not counted).
    truncated_bytes: int = 0
    # The newest state-machine snapshot (index >= snapshot_index), None if there is none.
    snapshot: Snapshot | None = None

    @property
    def last_index(self) -> int:
        return self.first_index + len(self.entries) - 1


@dataclass
class _Segment:
    seq: int
    first_index: int
    path: str


@dataclass
class _Record:
    type: int
    start: int      # offset of the frame in its file
    data: bytes     # the whole file
    body_start: int
    body_end: int

    @property
    def body(self) -> memoryview:
        return memoryview(self.data)[self.body_start:self.body_end]


class WriteAheadLog:
    """Durable log + hard state. Not thread-safe: one caller at a time (the node's writer)."""

    def __init__(self, directory: str | os.PathLike[str],
                 segment_bytes: int = DEFAULT_SEGMENT_BYTES, fsync: bool = True, *,
                 preallocate: bool = True) -> None:
        if segment_bytes <= 0:
            raise ValueError(f"segment_bytes must be positive, got {segment_bytes}")
        self.directory = os.fspath(directory)
        self.segment_bytes = segment_bytes
        self.fsync = fsync
        self._fd: int | None = None
        self._lock_fd: int | None = None   # flock on LOCK_NAME while open
        self._segments: list[_Segment] = []
        self._segment_size = 0
        self._failed: BaseException | None = None
        # Live view of the stored log, enough to validate saves and decide compaction:
        # terms of entries snapshot_index+1 .. last_index.
        self._terms: array[int] = array("Q")
        self._snapshot_index = 0
        self._snapshot_term = 0
        self._hard_state = HardState()
        # Counters for benchmarks and tests.
        self.syncs = 0
        self._unsynced = False   # a record was written since the last fdatasync
        self._preallocated = False   # the current segment has zeros after its records
        self.preallocate = preallocate
        self.saves = 0
        self.bytes_written = 0
        self._read_only = False   # inspect(): replay without cutting or deleting anything

    # ------------------------------------------------------------------ properties

    @property
    def last_index(self) -> int:
        return self._snapshot_index + len(self._terms)

    @property
    def first_index(self) -> int:
        return self._snapshot_index + 1

    @property
    def snapshot_index(self) -> int:
        return self._snapshot_index

    @property
    def hard_state(self) -> HardState:
        return self._hard_state

    @property
    def segment_paths(self) -> list[str]:
        return [segment.path for segment in self._segments]

    # ------------------------------------------------------------------ open / close

    def open(self) -> RecoveredState:
        """Replay every segment (cutting a torn tail) and get ready to append."""
        if self._fd is not None:
            raise StorageError(f"WAL in {self.directory} is already open")
        if self.fsync:
            make_directory_durably(self.directory)
        else:
            os.makedirs(self.directory, exist_ok=True)
        self._lock_directory()
        try:
            self._remove_temporary_files()
            recovered = self._open_log()
            return self._attach_snapshot(recovered)
        except BaseException:
            self._unlock_directory()
            raise

    def _lock_directory(self) -> None:
        """Take the data directory for this WAL alone: two processes appending to one log
        would interleave records and each would acknowledge writes the other overwrites."""
        path = os.path.join(self.directory, LOCK_NAME)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise StorageError(
                f"data directory {self.directory} is in use by another WAL (process or node): "
                f"{path} is locked") from None
        self._lock_fd = fd

    def _unlock_directory(self) -> None:
        if self._lock_fd is not None:
            fd, self._lock_fd = self._lock_fd, None
            os.close(fd)   # closing the descriptor releases the flock

    def inspect(self) -> RecoveredState:
        """Replay the log and verify the newest snapshot as open() does, changing nothing on
        disk (no cut, no compaction, no new segment): what `wal check` runs. A torn tail that
        open() would cut shows in truncated_bytes; corruption raises WalCorruptError."""
        if not os.path.isdir(self.directory):
            raise StorageError(f"WAL directory {self.directory} does not exist")
        self._read_only = True
        try:
            segments = self._list_segments()
            recovered = self._replay(segments) if segments else RecoveredState()
            return self._attach_snapshot(recovered)
        finally:
            self._read_only = False

    def load_snapshot(self) -> Snapshot | None:
        """The newest snapshot file, verified; None if there is none."""
        snapshots = _list_snapshots(self.directory)
        if not snapshots:
            return None
        return read_snapshot_file(snapshots[-1][2])

    def save_snapshot(self, snapshot: Snapshot, envelope: bytes) -> None:
        """write_snapshot_file into this WAL's directory (any thread)."""
        write_snapshot_file(self.directory, snapshot.index, snapshot.term, envelope,
                            fsync=self.fsync)

    def _attach_snapshot(self, recovered: RecoveredState) -> RecoveredState:
        snapshot = self.load_snapshot()
        if snapshot is None:
            # A log compacted with no snapshot file is the driver's to judge (engine.Node
            # refuses to start from it: the state below the floor would be missing).
            return recovered
        if snapshot.index < recovered.snapshot_index:
            raise StorageError(
                f"WAL in {self.directory} is compacted through {recovered.snapshot_index} but "
                f"the newest snapshot is at {snapshot.index}"
            )
        recovered.snapshot = snapshot
        if snapshot.index == recovered.snapshot_index or _log_holds(recovered, snapshot):
            return recovered   # the entries after the snapshot's (index, term) stay
        # The snapshot is newer than the log (an installed snapshot whose WAL marker did not
        # reach the disk), or the log holds another term at the snapshot's index: Raft §7
        # (Figure 13, InstallSnapshot step 7) discards a log that conflicts with the snapshot.
        # Restart the log after it so the next save has no gap.
        if not self._read_only:
            self.compact(snapshot.index, snapshot.term)
        recovered.entries = []
        recovered.first_index = snapshot.index + 1
        recovered.snapshot_index, recovered.snapshot_term = snapshot.index, snapshot.term
        return recovered

    def _open_log(self) -> RecoveredState:
        segments = self._list_segments()
        if not segments:
            self._segments = []
            self._create_segment(seq=0, first_index=1)
            return RecoveredState()
        recovered = self._replay(segments)   # drops a last segment whose header was torn
        self._segments = segments
        if not segments:
            # Nothing durable was ever written (the first header was torn): start afresh.
            self._create_segment(seq=0, first_index=1)
            return recovered
        self._snapshot_index = recovered.snapshot_index
        self._snapshot_term = recovered.snapshot_term
        self._hard_state = recovered.hard_state
        self._terms = array("Q", [entry.term for entry in recovered.entries])
        last = segments[-1]
        # Not O_APPEND: the segment's space is preallocated, records go at _segment_size.
        self._fd = os.open(last.path, os.O_WRONLY | getattr(os, "O_CLOEXEC", 0))
        self._segment_size = os.fstat(self._fd).st_size   # replay cut any zero tail
        os.lseek(self._fd, self._segment_size, os.SEEK_SET)
        self._preallocate(self._fd, self._segment_size)
        return recovered

    def close(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            try:
                if self._unsynced and self.fsync and self._failed is None:
                    _sync_data(fd)   # a graceful stop keeps even the volatile commit index
                    self._unsynced = False
            finally:
                os.close(fd)
        self._unlock_directory()

    def abandon(self) -> None:
        """Close without the graceful sync, as a process exit would (a simulated crash):
        what was written but not fsynced is only in the page cache."""
        if self._fd is not None:
            fd, self._fd = self._fd, None
            os.close(fd)
        self._unlock_directory()

    def __enter__(self) -> WriteAheadLog:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # ------------------------------------------------------------------ writes

    def save(self, entries: list[Any], hard_state: HardState | None = None, *,
             sync: bool = True) -> None:
        """Persist one Ready: entries (replacing the stored suffix from entries[0].index) and
        the hard state, as one record, one write and one fsync (group commit).

        sync=False writes the record without waiting for the disk (etcd's MustSync is false:
        only the commit index changed, which Raft treats as volatile state). The next synced
        record makes it durable too (fdatasync covers every earlier write to the file), and a
        segment is synced before it is closed, so an unsynced record can only be lost as the
        torn tail of the last segment, never in the middle of the log.

        On an I/O error the WAL refuses every later call (the state on disk is unknown until
        a restart replays it): StorageError.
        """
        if not entries and hard_state is None:
            return
        self._check_usable()
        # Body: flags, the hard state if present, the entries if any.
        if hard_state is not None:
            flags = _SAVE_HARD_STATE | (_SAVE_ENTRIES if entries else 0)
            body = _FLAGS_HARD_STATE.pack(flags, hard_state.term, hard_state.vote,
                                          hard_state.commit)
        else:
            body = _ENTRIES_FLAG
        if entries:
            self._check_entries(entries)
            body += _encode_entries(entries)
        record = _frame(RECORD_SAVE, body)
        if sync:
            self._guarded(self._append_durably, record)
        else:
            self._guarded(self._append, record)
        if entries:
            self._replace_suffix(entries)
        if hard_state is not None:
            self._hard_state = hard_state
        self.saves += 1

    def compact(self, index: int, term: int) -> None:
        """Record that a state-machine snapshot covers the log through (index, term), then
        delete the segments holding only entries <= index.

        Raft Figure 13 (InstallSnapshot 6-7): if the log holds (index, term), the entries after
        it stay; otherwise the whole log is discarded and the next entry is index + 1.
        A snapshot at or below the current one is ignored.
        """
        self._check_usable()
        if index <= self._snapshot_index:
            return
        keep_suffix = index <= self.last_index and self._term_at(index) == term
        record = _frame(RECORD_SNAPSHOT, _SNAPSHOT_BODY.pack(index, term, int(keep_suffix)))
        self._guarded(self._append_durably, record)
        if keep_suffix:
            del self._terms[:index - self._snapshot_index]
        else:
            self._terms = array("Q")
        self._snapshot_index = index
        self._snapshot_term = term
        self._guarded(self._delete_segments_below, index)

    # ------------------------------------------------------------------ internals: writing

    def _check_usable(self) -> None:
        if self._failed is not None:
            raise StorageError(
                f"WAL in {self.directory} failed earlier ({self._failed}); restart to recover"
            )
        if self._fd is None:
            raise StorageError(f"WAL in {self.directory} is not open")

    def _guarded(self, operation: Any, *args: Any) -> None:
        try:
            operation(*args)
        except OSError as exc:
            # Postgres' fsyncgate lesson: after a failed write or fsync the page cache may
            # have dropped the data; never retry and report success. Stop here.
            self._failed = exc
            raise StorageError(f"WAL write in {self.directory} failed: {exc}") from exc

    def _check_entries(self, entries: list[Any]) -> None:
        first = entries[0].index
        for offset, entry in enumerate(entries):
            if entry.index != first + offset:
                raise ValueError(
                    f"entries to save must be contiguous: index {entry.index} at position "
                    f"{offset} after first index {first}"
                )
        if first > self.last_index + 1:
            raise ValueError(
                f"entries start at {first} but the log ends at {self.last_index}: a gap"
            )
        if first < 1:
            raise ValueError(f"entry index must be >= 1, got {first}")

    def _replace_suffix(self, entries: list[Any]) -> None:
        # Raft §5.3: entries from `first` on replace whatever is stored from there.
        keep = max(entries[0].index - self.first_index, 0)
        skip = max(self.first_index - entries[0].index, 0)   # already under the snapshot
        if keep == len(self._terms) and not skip and len(entries) == 1:
            self._terms.append(entries[0].term)   # the common case: one entry at the end
            return
        del self._terms[keep:]
        self._terms.extend(entry.term for entry in entries[skip:])

    def _term_at(self, index: int) -> int:
        return self._terms[index - self.first_index]

    def _append_durably(self, record: bytes) -> None:
        fd = self._append(record)
        if self.fsync:
            # fdatasync: the data and the file size, which is all replay needs.
            _sync_data(fd)
            self.syncs += 1
            self._unsynced = False

    def _preallocate(self, fd: int, used: int, *, sync: bool = True) -> None:
        """Give the segment its whole size up front (zeros after the records; replay reads an
        all-zero tail of the last segment as its end). An fdatasync after a write inside the
        file need not commit a new file size and block allocation to the filesystem journal
        as an append does, and the journal is shared by every process on the disk
        (docs/performance.md, "WAL preallocation"). etcd's WAL preallocates its segments the
        same way."""
        self._preallocated = False
        if not (self.fsync and self.preallocate) or used >= self.segment_bytes:
            return
        try:
            os.posix_fallocate(fd, used, self.segment_bytes - used)
        except (AttributeError, OSError):   # no fallocate here (filesystem or platform)
            return
        self._preallocated = True
        if sync:
            os.fsync(fd)
            self.syncs += 1

    def _append(self, record: bytes) -> int:
        """Write one record to the current segment (rolling first if it is full)."""
        if self._segment_size >= self.segment_bytes:
            self._roll()
        fd = self._fd
        if fd is None:
            raise StorageError(f"WAL in {self.directory} is not open")
        _write_all(fd, record)
        self._segment_size += len(record)
        self.bytes_written += len(record)
        self._unsynced = True
        return fd

    def _roll(self) -> None:
        """Start a new segment; its header carries the snapshot marker and hard state.

        The full segment is first cut to its records (dropping its preallocated zeros: only
        the last segment may end in zeros, see _scan_segment) and synced, which also makes an
        unsynced record durable before it stops being the tail (see save())."""
        if self._fd is not None and self.fsync:
            if self._preallocated:
                os.ftruncate(self._fd, self._segment_size)
                os.fsync(self._fd)   # the new size with the data
                self.syncs += 1
            elif self._unsynced:
                _sync_data(self._fd)
                self.syncs += 1
        self._unsynced = False
        previous = self._segments[-1]
        self._create_segment(seq=previous.seq + 1, first_index=self.last_index + 1)

    def _create_segment(self, seq: int, first_index: int) -> None:
        """Write the header to a temporary file, fsync it, rename it into place and fsync the
        directory, so a segment is never visible with a half-written header."""
        name = segment_name(seq, first_index)
        path = os.path.join(self.directory, name)
        tmp_path = path + _TMP_SUFFIX
        header = _frame(RECORD_HEADER, _header_body(
            seq, first_index, self._snapshot_index, self._snapshot_term, self._hard_state,
        ))
        flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_CLOEXEC", 0)
        fd = os.open(tmp_path, flags, 0o644)
        try:
            _write_all(fd, header)
            self._preallocate(fd, len(header), sync=False)
            if self.fsync:
                os.fsync(fd)   # the header and the preallocated size
                self.syncs += 1
        finally:
            os.close(fd)
        os.rename(tmp_path, path)
        self._sync_directory()
        new_fd = os.open(path, os.O_WRONLY | getattr(os, "O_CLOEXEC", 0))
        os.lseek(new_fd, len(header), os.SEEK_SET)
        if self._fd is not None:
            os.close(self._fd)
        self._fd = new_fd
        self._segment_size = len(header)
        self.bytes_written += len(header)
        self._segments.append(_Segment(seq, first_index, path))

    def _delete_segments_below(self, index: int) -> None:
        """Delete segments 0..k where k is the last one whose successor starts at or below
        index + 1. Every entry >= the successor's first_index was written after the successor
        was created, so the survivors hold every entry > index; the successor's header holds
        the hard state. The current segment is never deleted."""
        segments = self._segments
        cut = 0
        for position in range(len(segments) - 1):
            if segments[position + 1].first_index <= index + 1:
                cut = position + 1
        if cut == 0:
            return
        # Oldest first: a crash part-way leaves a consecutive run that still replays.
        for segment in segments[:cut]:
            os.unlink(segment.path)
        del segments[:cut]
        self._sync_directory()

    def _sync_directory(self) -> None:
        if not self.fsync:
            return
        fd = os.open(self.directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
        try:
            os.fsync(fd)
            self.syncs += 1
        finally:
            os.close(fd)

    # ------------------------------------------------------------------ internals: replay

    def _remove_temporary_files(self) -> None:
        removed = False
        for name in os.listdir(self.directory):
            if name.startswith(("wal-", "snap-")) and name.endswith(_TMP_SUFFIX):
                os.unlink(os.path.join(self.directory, name))
                removed = True
        if removed:
            self._sync_directory()

    def _list_segments(self) -> list[_Segment]:
        segments = []
        for name in os.listdir(self.directory):
            match = _SEGMENT_RE.match(name)
            if match:
                segments.append(_Segment(
                    int(match.group(1)), int(match.group(2)), os.path.join(self.directory, name)
                ))
        segments.sort(key=lambda segment: segment.seq)
        for before, after in zip(segments, segments[1:], strict=False):
            if after.seq != before.seq + 1:
                raise StorageError(
                    f"WAL segment missing between {before.path} and {after.path}"
                )
        return segments

    def _replay(self, segments: list[_Segment]) -> RecoveredState:
        # Pass 1: frame and checksum every record (cutting a torn tail of the last segment)
        # and find the newest snapshot marker, which is the floor of the recovered log.
        scanned: list[tuple[_Segment, list[_Record]]] = []
        truncated = 0
        snapshot_index = snapshot_term = 0
        for position, segment in enumerate(segments):
            is_last = position == len(segments) - 1
            records, cut = self._scan_segment(segment, is_last)
            truncated += cut
            if not records:
                # Only possible for the last segment (a torn header was cut to nothing).
                if not self._read_only:
                    os.unlink(segment.path)
                    self._sync_directory()
                segments.pop()
                break
            for record in records:
                marker = self._snapshot_of(segment, record)
                if marker is not None and marker[0] > snapshot_index:
                    snapshot_index, snapshot_term = marker
            scanned.append((segment, records))
        if not segments:
            return RecoveredState(truncated_bytes=truncated)

        # Pass 2: apply records in order to a log that starts after the newest snapshot.
        first_index = snapshot_index + 1
        entries: list[Any] = []
        hard_state = HardState()
        log_end = scanned[0][0].first_index - 1 if scanned else 0
        floor = 0   # the newest snapshot marker replayed so far
        previous: tuple[_Segment, list[_Record]] | None = None
        for segment, records in scanned:
            if previous is not None and log_end != segment.first_index - 1:
                # A segment is created when the log ends at its first_index - 1 (_roll), so
                # the older one lost records from its end (cut at a record boundary).
                raise _corrupt(previous[0].path, previous[1][-1].body_end,
                               f"WAL corrupt: the log ends at index {log_end} after this "
                               f"segment but the next one starts at {segment.first_index}: "
                               "records missing from its end")
            previous = (segment, records)
            for record in records:
                try:
                    if record.type == RECORD_HEADER:
                        header = _HEADER_BODY.unpack(record.body)
                        hard_state = HardState(*header[6:9])
                        floor = max(floor, header[4])
                    elif record.type == RECORD_SAVE:
                        hard_state = self._replay_save(record, first_index, entries,
                                                       hard_state)
                        # entries at or below the snapshot floor do not move the log's end
                        log_end = max(_save_log_end(record, log_end), floor)
                    elif record.type == RECORD_SNAPSHOT:
                        index, _, keep_suffix = _SNAPSHOT_BODY.unpack(record.body)
                        floor = max(floor, index)
                        if not keep_suffix:
                            entries.clear()   # the log was discarded at this snapshot
                            log_end = index
                except (struct.error, ValueError) as exc:
                    raise _invalid_record(segment, record, exc) from exc
        return RecoveredState(
            hard_state=hard_state, entries=entries, first_index=first_index,
            snapshot_index=snapshot_index, snapshot_term=snapshot_term,
            truncated_bytes=truncated,
        )

    @staticmethod
    def _replay_save(record: _Record, first_index: int, entries: list[Any],
                     hard_state: HardState) -> HardState:
        body = record.body
        flags = body[0]
        if flags & ~(_SAVE_HARD_STATE | _SAVE_ENTRIES):
            raise ValueError(f"unknown save flags {flags:#x}")
        offset = 1
        if flags & _SAVE_HARD_STATE:
            hard_state = HardState(*_HARD_STATE.unpack_from(body, offset))
            offset += _HARD_STATE.size
        if not flags & _SAVE_ENTRIES:
            if offset != len(body):
                raise ValueError("trailing bytes after hard state")
            return hard_state
        start, count = _ENTRIES_HEAD.unpack_from(body, offset)
        offset += _ENTRIES_HEAD.size
        terms = struct.unpack_from(f"<{count}Q", body, offset)
        offset += 8 * count
        kinds = struct.unpack_from(f"<{count}B", body, offset)
        offset += count
        lengths = struct.unpack_from(f"<{count}I", body, offset)
        offset += 4 * count
        if offset + sum(lengths) != len(body):
            raise ValueError("entry lengths do not add up to the record size")
        last_index = first_index + len(entries) - 1
        if start > last_index + 1:
            raise ValueError(f"entries start at {start} but the log ends at {last_index}")
        # Raft §5.3: these entries replace the stored suffix from `start`; those at or below
        # the snapshot floor are already covered by the snapshot.
        del entries[max(start - first_index, 0):]
        data = record.data   # slicing the file's bytes makes each entry's own bytes
        base = record.body_start + offset
        index = start
        for term, kind, length in zip(terms, kinds, lengths, strict=True):
            if index >= first_index:
                entries.append(Entry(term, index, data[base:base + length], kind))
            base += length
            index += 1
        return hard_state

    def _scan_segment(self, segment: _Segment, is_last: bool) -> tuple[list[_Record], int]:
        """Frame and checksum a segment. Returns its records and how many tail bytes were cut
        (only from the last segment: a torn tail, moved aside first; see scan_segment_bytes)."""
        with open(segment.path, "rb") as file:
            data = file.read()
        scan = scan_segment_bytes(data, segment.path, is_last)
        if scan.records:
            self._check_header(segment, scan.records[0])
        elif not is_last:
            raise _corrupt(segment.path, 0, f"WAL segment {segment.path} is empty but not the "
                                            "last segment")
        if scan.end < len(data) and not self._read_only:
            if scan.torn:
                # Never destroy bytes: the cut goes to a file beside the segment first.
                broken = move_aside(segment.path, scan.end, scan.torn, fsync=self.fsync)
                logger.warning(
                    "WAL torn tail cut: %d bytes at offset %d of %s (%s), moved to %s",
                    len(scan.torn), scan.end, segment.path, scan.reason, broken,
                )
            # A torn write of the last, unacknowledged save: cut it (DESIGN.md §5).
            with open(segment.path, "r+b") as file:
                file.truncate(scan.end)
                if self.fsync:
                    os.fsync(file.fileno())
                    self.syncs += 1
        return scan.records, len(scan.torn)

    @staticmethod
    def _check_header(segment: _Segment, record: _Record) -> None:
        magic, version, seq, first_index = _HEADER_BODY.unpack(record.body)[:4]
        if magic != MAGIC or version != FORMAT_VERSION:
            raise WalCorruptError(
                f"WAL segment {segment.path} has magic {magic!r} version {version}; "
                f"expected {MAGIC!r} version {FORMAT_VERSION}", path=segment.path, offset=0,
            )
        if (seq, first_index) != (segment.seq, segment.first_index):
            raise WalCorruptError(
                f"WAL segment {segment.path} header says seq {seq} first index {first_index}",
                path=segment.path, offset=0,
            )

    @staticmethod
    def _snapshot_of(segment: _Segment, record: _Record) -> tuple[int, int] | None:
        try:
            if record.type == RECORD_HEADER:
                index, term = _HEADER_BODY.unpack(record.body)[4:6]
                return index, term
            if record.type == RECORD_SNAPSHOT:
                index, term, keep = _SNAPSHOT_BODY.unpack(record.body)
                if keep not in (0, 1):
                    raise ValueError(f"keep_suffix flag {keep}")
                return index, term
        except (struct.error, ValueError) as exc:
            raise _invalid_record(segment, record, exc) from exc
        return None


def _write_all(fd: int, data: bytes) -> None:
    written = os.write(fd, data)
    if written == len(data):   # a regular file takes a small record in one write
        return
    view = memoryview(data)[written:]
    while view:
        written = os.write(fd, view)
        view = view[written:]


def _sync_data(fd: int) -> None:
    # Looked up at call time so tests can count calls by patching os.fdatasync / os.fsync.
    sync = getattr(os, "fdatasync", None) or os.fsync
    sync(fd)


def _save_log_end(record: _Record, log_end: int) -> int:
    """The log's last index after a (replayed, so well-formed) save record."""
    body = record.body
    if not body[0] & _SAVE_ENTRIES:
        return log_end
    offset = 1 + (_HARD_STATE.size if body[0] & _SAVE_HARD_STATE else 0)
    start, count = _ENTRIES_HEAD.unpack_from(body, offset)
    return int(start + count - 1)


def _invalid_record(segment: _Segment, record: _Record, exc: Exception) -> WalCorruptError:
    return WalCorruptError(
        f"WAL record in {segment.path} at offset {record.start} is invalid: {exc}; "
        + RECOVERY_HINT.format(directory=os.path.dirname(segment.path)),
        path=segment.path, offset=record.start,
    )


@dataclass
class SegmentScan:
    """What framing one segment found: its records, the offset where they end, and the
    torn tail after them (the bytes a crash left there, trailing zeros stripped: b"" when
    only zeros follow, i.e. preallocated space)."""

    records: list[_Record]
    end: int
    torn: bytes = b""
    reason: str = ""


def scan_segment_bytes(data: bytes, path: str, is_last: bool) -> SegmentScan:
    """Frame and checksum one segment's bytes; never modifies anything.

    A bad record (short header, length past end of file, bad checksum) is a torn tail only
    if it is in the last segment, no valid record follows it anywhere in the segment, and it
    does not verify with one bit of its length field flipped (a complete record, damaged).
    One save() is one record written by one write, so a crash can tear only the last one;
    anything else is corruption: WalCorruptError naming the file and offset."""
    view = memoryview(data)
    size = len(data)
    records: list[_Record] = []
    offset = 0
    reason = ""
    while offset < size:
        reason = _frame_defect(data, view, offset)
        if reason:
            break
        length, _, record_type = _FRAME.unpack_from(data, offset)
        if record_type not in (RECORD_HEADER, RECORD_SAVE, RECORD_SNAPSHOT):
            raise _corrupt(path, offset, f"WAL record of unknown type {record_type}")
        if (record_type == RECORD_HEADER) != (offset == 0):
            raise _corrupt(path, offset, f"WAL segment {path}: header record misplaced")
        end = offset + _FRAME_SIZE + length
        records.append(_Record(record_type, offset, data, offset + _FRAME_SIZE, end))
        offset = end
    if offset == size:
        return SegmentScan(records, offset)
    if data.count(0, offset) == size - offset:
        if not is_last:
            raise _corrupt(path, offset, "WAL corrupt: zero-filled tail, which is not the "
                                         "last segment")
        return SegmentScan(records, offset)   # preallocated space after the records
    following = find_valid_frame(data, offset + 1)
    where = f"; a valid record follows at offset {following}" if following >= 0 else ""
    if not is_last:
        raise _corrupt(path, offset, f"WAL corrupt: {reason}, which is not the last "
                                     f"segment{where}")
    if following >= 0:
        raise _corrupt(path, offset, f"WAL corrupt: {reason}{where}, so it is not a torn "
                                     "write")
    if _verifies_with_a_length_bit_flipped(data, offset):
        raise _corrupt(path, offset, f"WAL corrupt: {reason}, but the record verifies with "
                                     "one bit of its length field flipped: a complete record, "
                                     "damaged, not a torn write")
    torn = data[offset:].rstrip(b"\0")
    return SegmentScan(records, offset, torn, reason)


def _corrupt(path: str, offset: int, what: str) -> WalCorruptError:
    return WalCorruptError(
        f"{what} (in {path} at offset {offset}); "
        + RECOVERY_HINT.format(directory=os.path.dirname(path) or "."),
        path=path, offset=offset,
    )


def _frame_defect(data: bytes, view: memoryview, offset: int) -> str:
    """Why the frame at offset is not a complete record with a good checksum ("" if it is)."""
    size = len(data)
    if size - offset < _FRAME_SIZE:
        return "short record header"
    length, crc = _FRAME.unpack_from(data, offset)[:2]
    end = offset + _FRAME_SIZE + length
    if end > size:
        return f"record of {length} bytes runs past end of file"
    if zlib.crc32(view[offset + 8:end], zlib.crc32(view[offset:offset + 4])) != crc:
        return f"bad checksum on a record of {length} bytes"
    return ""


def find_valid_frame(data: bytes, start: int) -> int:
    """The offset of the first frame at or after `start` whose fields are plausible and whose
    checksum verifies, or -1.

    Every offset is a candidate, so the structural checks (type byte, a length that fits,
    the body's shape: _plausible_frames) run vectorized over a window of offsets at a time;
    only the survivors get a checksum. A window of zeros (preallocated space) or of one
    repeated byte costs a few numpy passes, not a Python step per byte."""
    size = len(data)
    view = memoryview(data)
    array_ = np.frombuffer(data, dtype=np.uint8)
    for window in range(start, size - _FRAME_SIZE + 1, _SCAN_WINDOW):
        stop = min(window + _SCAN_WINDOW, size - _FRAME_SIZE + 1)
        for offset in _plausible_frames(array_, window, stop).tolist():
            crc = _U32.unpack_from(data, offset + 4)[0]
            end = offset + _FRAME_SIZE + _U32.unpack_from(data, offset)[0]
            if zlib.crc32(view[offset + 8:end], zlib.crc32(view[offset:offset + 4])) == crc:
                return int(offset)
    return -1


def _plausible_frames(data: np.ndarray[Any, Any], start: int, stop: int) -> np.ndarray[Any, Any]:
    """Offsets in [start, stop) where a save or snapshot frame could begin: the type byte, a
    length that ends within the data and a body shaped like the type's (sorted)."""
    size = len(data)
    types = data[start + 8:stop + 8]
    offsets = np.flatnonzero((types == RECORD_SAVE) | (types == RECORD_SNAPSHOT)) + start
    lengths = _u32_at(data, offsets)
    keep = offsets + _FRAME_SIZE + lengths <= size
    offsets, lengths = offsets[keep], lengths[keep]
    is_snapshot = data[offsets + 8] == RECORD_SNAPSHOT
    snapshots = offsets[is_snapshot & (lengths == _SNAPSHOT_BODY.size)]
    saves = ~is_snapshot & (lengths > 0)
    offsets, lengths = offsets[saves], lengths[saves]
    flags = data[offsets + _FRAME_SIZE]
    hard_states = offsets[(flags == _SAVE_HARD_STATE) & (lengths == _FLAGS_HARD_STATE.size)]
    with_entries = (flags == _SAVE_ENTRIES) | (flags == _SAVE_ENTRIES | _SAVE_HARD_STATE)
    offsets, lengths, flags = offsets[with_entries], lengths[with_entries], flags[with_entries]
    head = np.where(flags & _SAVE_HARD_STATE, 1 + _HARD_STATE.size, 1)
    fits = lengths >= head + _ENTRIES_HEAD.size
    offsets, lengths, head = offsets[fits], lengths[fits], head[fits]
    counts = _u32_at(data, offsets + _FRAME_SIZE + head + 8)   # after the first index
    # terms u64, kinds u8 and lengths u32 per entry
    entries = offsets[(counts > 0) & (head + _ENTRIES_HEAD.size + 13 * counts <= lengths)]
    return np.sort(np.concatenate((snapshots, hard_states, entries)))


def _u32_at(data: np.ndarray[Any, Any], offsets: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
    """The little-endian u32 at each offset (every offset + 3 inside data), as int64."""
    value = data[offsets].astype(np.int64)
    for byte in (1, 2, 3):
        value |= data[offsets + byte].astype(np.int64) << (8 * byte)
    return value


def _verifies_with_a_length_bit_flipped(data: bytes, offset: int) -> bool:
    """A torn write leaves a record's length either right or unwritten; a length one bit away
    from one under which the whole record verifies is a damaged complete record."""
    if len(data) - offset < _FRAME_SIZE:
        return False
    length, crc, record_type = _FRAME.unpack_from(data, offset)
    view = memoryview(data)
    body = offset + _FRAME_SIZE
    for bit in range(32):
        candidate = length ^ (1 << bit)
        if body + candidate > len(data):
            continue
        prefix = zlib.crc32(_LENGTH_TYPE.pack(candidate, record_type))
        if zlib.crc32(view[body:body + candidate], prefix) == crc:
            return True
    return False


def move_aside(path: str, offset: int, data: bytes, *, fsync: bool = True) -> str:
    """Durably write bytes cut from `path` at `offset` to a new file beside it
    (``<path>.<offset>.broken``, never overwriting one) and return that file's path."""
    base = f"{path}.{offset}"
    broken = base + _BROKEN_SUFFIX
    attempt = 0
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)
    while True:
        try:
            fd = os.open(broken, flags, 0o644)
            break
        except FileExistsError:
            attempt += 1
            broken = f"{base}-{attempt}{_BROKEN_SUFFIX}"
    _write_and_close(fd, data, fsync)
    if fsync:
        _fsync_directory(os.path.dirname(broken) or ".")
    return broken
