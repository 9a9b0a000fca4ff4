"""`snapshot save FILE --data-dir DIR` and `snapshot restore FILE --data-dir DIR`: backups of
the KV state machine as one checksummed file.

The file is a snapshot envelope (engine.replication.snapshot: magic, index, term, data, BLAKE2b-256
digest), the same bytes a leader sends a follower, so a backup that was damaged on its way
is refused at restore, never half-restored.

save reads a member's data dir (Raft), and never writes to it: it copies the directory,
recovers the copy as a restarting node would (newest snapshot, then the WAL, a torn tail
cut), and applies the entries up to the commit index the copy recorded. Take it from a
stopped node, or from the leader's directory: a follower's recorded commit index can trail
the cluster's, and the leader records its commit index just after it answers, so a write
acknowledged in the same instant a node is killed can be missing from that node's backup.

`snapshot save FILE --members ...` (engine/__main__.py) takes the same file from the running
cluster instead: the leader snapshots its state machine after a ReadIndex round, so the file
holds every write acknowledged before the command started (engine.aio.snapshot_serving,
engine.Client.snapshot). Both write the version-1 envelope (no membership).

restore initialises an empty data dir of a node of a NEW cluster: the snapshot (without the
old membership: the new cluster's members are the --members its nodes are started with) and
a hard state at the snapshot's term, so the new cluster's terms continue above it. Restore the
same file into every member's data dir, then start them with `serve`.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from typing import Any

from engine.errors import ConfigError, DecodeError, StorageError
from engine.types import HardState, Snapshot


def check_data_dir(path: str) -> None:
    """One-line errors for a data dir path that cannot be a directory."""
    if os.path.exists(path) and not os.path.isdir(path):
        raise ConfigError(f"data dir {path} is a file, not a directory")
    parent = os.path.dirname(os.path.abspath(path))
    while not os.path.exists(parent):
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent):
        raise ConfigError(f"data dir {path}: {parent} is a file, not a directory")


def save(data_dir: str, path: str) -> dict[str, Any]:
    """Write the committed state of `data_dir` to `path`; returns what was written."""
    from engine.aio.wal import WriteAheadLog
    from engine.kv import KVStore
    from engine.messages import EntryKind
    from engine.replication.snapshot import encode_snapshot

    if not os.path.isdir(data_dir):
        raise ConfigError(f"data dir {data_dir} is not a directory")
    with tempfile.TemporaryDirectory(prefix="engine-backup-") as scratch:
        copy = os.path.join(scratch, "data")
        shutil.copytree(data_dir, copy)
        wal = WriteAheadLog(copy, fsync=False, preallocate=False)
        try:
            recovered = wal.open()
        except StorageError as exc:   # name the data dir, not the scratch copy
            raise StorageError(str(exc).replace(copy, data_dir)) from None
        wal.close()
    store = KVStore()
    index = term = 0
    if recovered.snapshot is not None:
        store.restore(recovered.snapshot.data)
        index, term = recovered.snapshot.index, recovered.snapshot.term
    if index == 0 and recovered.snapshot_index > 0:
        raise StorageError(f"data dir {data_dir}: the log is compacted through "
                           f"{recovered.snapshot_index} but holds no snapshot")
    for entry in recovered.entries:
        if entry.index > recovered.hard_state.commit:
            break   # not known to be committed: it may never be
        if entry.index <= index:
            continue
        if entry.kind == EntryKind.NORMAL:
            store.apply(entry.index, entry.data)
        index, term = entry.index, entry.term
    envelope = encode_snapshot(Snapshot(index, term, store.snapshot()))
    _write_durably(path, envelope)
    return {"file": path, "index": index, "term": term, "bytes": len(envelope)}


def restore(path: str, data_dir: str) -> dict[str, Any]:
    """Initialise the empty `data_dir` from the backup at `path`."""
    from engine.aio.wal import WriteAheadLog, write_snapshot_file
    from engine.replication.snapshot import decode_snapshot, encode_snapshot

    try:
        with open(path, "rb") as file:
            envelope = file.read()
    except OSError as exc:
        raise ConfigError(f"cannot read backup {path}: {exc.strerror}") from None
    try:
        snapshot = decode_snapshot(envelope)
    except DecodeError as exc:
        raise ConfigError(f"backup {path} is not a valid snapshot: {exc}") from None
    check_data_dir(data_dir)
    if os.path.isdir(data_dir) and os.listdir(data_dir):
        raise ConfigError(f"data dir {data_dir} is not empty: restore only into a new one")
    os.makedirs(data_dir, exist_ok=True)
    fresh = Snapshot(snapshot.index, snapshot.term, snapshot.data)   # no old membership
    write_snapshot_file(data_dir, fresh.index, fresh.term, encode_snapshot(fresh))
    with WriteAheadLog(data_dir) as wal:
        wal.open()   # attaches the snapshot: the log starts after it
        wal.save([], HardState(term=snapshot.term, vote=0, commit=snapshot.index))
    return {"data_dir": data_dir, "index": snapshot.index, "term": snapshot.term}


def check_backup_path(path: str) -> None:
    """One-line errors for a backup file path that cannot be written, before any work."""
    if os.path.isdir(path):
        raise ConfigError(f"backup file {path} is a directory")
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        raise ConfigError(f"backup file {path}: directory {directory} does not exist")


def _write_durably(path: str, data: bytes) -> None:
    """tmp + fsync + rename + fsync of the directory: a crash leaves the old file or the new."""
    directory = os.path.dirname(os.path.abspath(path))
    check_backup_path(path)
    tmp = f"{path}.tmp"
    with open(tmp, "wb") as file:
        file.write(data)
        file.flush()
        os.fsync(file.fileno())
    os.replace(tmp, path)
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
