"""Recovery fuzz: random damage to a WAL of acknowledged writes never makes a node start with
fewer acknowledged records than the damage allows.

A WAL of saves (entries, hard states, both, a truncate-on-conflict, a compaction marker; small
segments so there are several) is built once. Each case damages a copy (a flipped bit
anywhere, a zeroed range, a truncation, sometimes two of them; the last segment sometimes
followed by preallocated zeros) and opens it. The outcome must be one of:

  * refused: WalCorruptError naming the damaged file, the offset and `wal check`;
  * kept: the recovered log and hard state are exactly the pristine ones;
  * cut: the damage is one a crash can leave (scan_segment_bytes' documented limit): it lies
    in the last segment and either starts in its last record, or only zeroes or cuts off
    bytes through the end of the data. Then recovery must hold exactly the saves before the
    damaged record, and the bytes cut must be in a .broken file beside the segment.

Anything else (fewer records than that, different records, nothing moved aside) fails and
prints the case's seed; `pytest ... -k 'fuzz and <chunk>'` reruns the chunk deterministically.

The same holds for a WAL of many groups (save_many batches of random subsets of groups, one
group's compaction): "the pristine log" is then every group's log and hard state.
"""

from __future__ import annotations

import functools
import os
import random
import shutil
import tempfile
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from engine.aio.wal import RecoveredState, WriteAheadLog, scan_segment_bytes
from engine.errors import WalCorruptError
from engine.messages import Entry
from engine.types import HardState

SEGMENT_BYTES = 400
CHUNKS = 8
CASES_PER_CHUNK = 700      # 5,600 corruptions per suite run
PAD = 2048                 # preallocated zeros after the last segment's records


GROUPS = (0, 1, 7)          # the groups of the many-group WAL


@dataclass(frozen=True)
class State:
    first_index: int
    entries: tuple[Entry, ...]
    hard_state: HardState


EMPTY = State(1, (), HardState())
Groups = tuple[tuple[int, State], ...]    # every group with a non-empty state, in order


@dataclass(frozen=True)
class Pristine:
    files: tuple[tuple[str, bytes], ...]      # segment name, bytes; oldest first
    # For the last segment: (start, end, states after the saves before this record).
    last_records: tuple[tuple[int, int, Groups], ...]
    final: Groups


def _groups(states: dict[int, State]) -> Groups:
    return tuple(sorted((group, state) for group, state in states.items() if state != EMPTY))


def _recovered(recovered: dict[int, RecoveredState]) -> Groups:
    return _groups({group: State(state.first_index, tuple(state.entries), state.hard_state)
                    for group, state in recovered.items()})


def _entries(first: int, count: int, term: int) -> list[Entry]:
    return [Entry(term, index, bytes([index % 251]) * (index % 17) + str(index).encode(),
                  index % 3) for index in range(first, first + count)]


class _Group:
    """One group's pristine log as the builder saves it."""

    def __init__(self) -> None:
        self.first = 1
        self.entries: list[Entry] = []
        self.hard_state = HardState()
        self.term = 1

    def state(self) -> State:
        return State(self.first, tuple(self.entries), self.hard_state)

    def next_save(self, step: int, rng: random.Random) -> tuple[list[Entry], HardState | None]:
        last = self.first + len(self.entries) - 1
        kind = step % 4
        batch: list[Entry] = []
        if kind != 1:
            conflict = step == 40 and last - 2 >= self.first   # 40: Raft §5.3 conflict
            start = last + 1 if not conflict else last - 2
            self.term += conflict
            batch = _entries(start, 1 + rng.randrange(4), self.term)
        new_hard = HardState(self.term, 1, max(0, last - 1)) if kind != 2 else None
        if batch:
            del self.entries[batch[0].index - self.first:]
            self.entries += batch
        if new_hard is not None:
            self.hard_state = new_hard
        return batch, new_hard

    def compact(self, index: int) -> int:
        term = self.entries[index - self.first].term
        self.entries = self.entries[index - self.first + 1:]
        self.first = index + 1
        return term


@functools.cache
def pristine(many_groups: bool = False) -> Pristine:
    """One operation per record: a save (save_many of a random subset of GROUPS) or a
    compaction."""
    with tempfile.TemporaryDirectory() as scratch:
        wal = WriteAheadLog(scratch, segment_bytes=SEGMENT_BYTES, fsync=False)
        wal.open()
        groups = {group: _Group() for group in (GROUPS if many_groups else (0,))}
        states = [_groups({})]   # states[j]: after the first j operations
        rng = random.Random(11)
        for step in range(60 if not many_groups else 90):
            if step == 25:
                group = 1 if many_groups else 0
                wal.compact(12, groups[group].compact(12), group=group)   # keeps the suffix
            elif many_groups:
                chosen = [group for group in GROUPS if rng.random() < 0.6] or [GROUPS[0]]
                wal.save_many([(group, *groups[group].next_save(step, rng))
                               for group in chosen])
            else:
                wal.save(*groups[0].next_save(step, rng))
            states.append(_groups({group: log.state() for group, log in groups.items()}))
        wal.close()
        names = sorted(name for name in os.listdir(scratch) if name.endswith(".log"))
        files = tuple((name, Path(scratch, name).read_bytes()) for name in names)
    assert len(files) >= 4, "the fuzz needs several segments"
    # Every surviving non-header record is one operation, in order: map the last segment's.
    counts = [len(scan_segment_bytes(data, name, True).records) - 1 for name, data in files]
    before_last = len(states) - 1 - counts[-1]
    last_records = []
    for position, record in enumerate(scan_segment_bytes(files[-1][1], "", True).records):
        # the header (position 0) and the first save both follow `before_last` operations
        state = states[before_last + max(position - 1, 0)]
        last_records.append((record.start, record.body_end, state))
    return Pristine(files, tuple(last_records), states[-1])


def _damage(data: bytearray, rng: random.Random, pristine_data: bytes) -> str:
    kind = rng.choice(("flip", "flip", "frame-flip", "zero", "truncate"))
    if kind in ("flip", "frame-flip"):
        if kind == "frame-flip":   # aim at the length/crc/type fields of a record
            starts = [r.start for r in scan_segment_bytes(pristine_data, "", True).records]
            position = min(rng.choice(starts) + rng.randrange(9), len(data) - 1)
        else:
            position = rng.randrange(len(data))
        bit = rng.randrange(8)
        data[position] ^= 1 << bit
        return f"{kind} bit {bit} of byte {position}"
    if kind == "zero":
        start = rng.randrange(len(data))
        length = rng.choice((1, 4, 9, rng.randrange(1, 64), len(data)))
        data[start:start + length] = bytes(len(data[start:start + length]))
        return f"zero {length} bytes at {start}"
    cut = rng.randrange(len(data))
    del data[cut:]
    return f"truncate at {cut}"


def _crash_like(pristine_data: bytes, damaged: bytes, start: int) -> bool:
    """From `start` on, every byte is the pristine one or zero (or cut off): a torn write."""
    tail = damaged[start:]
    original = pristine_data[start:start + len(tail)].ljust(len(tail), b"\0")
    return all(byte in (0, was) for byte, was in zip(tail, original, strict=True))


class Directory:
    """The WAL directory the cases share: a file is rewritten only when its bytes change, and
    what recovery created (.broken files) is removed, so a case costs a few small writes."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.files: dict[str, bytes] = {}

    def reset(self, files: dict[str, bytes]) -> None:
        for name in os.listdir(self.path):
            if name not in files:
                os.unlink(self.path / name)
        for name, data in files.items():
            if self.files.get(name) != data:
                (self.path / name).write_bytes(data)
        self.files = dict(files)

    def forget(self, name: str) -> None:
        """Recovery may have changed this file."""
        self.files.pop(name, None)


@pytest.fixture
def wal_directory(tmp_path: Path) -> Iterator[Directory]:
    # tmpfs when there is one: a case is a handful of small file writes.
    shm = Path("/dev/shm")
    if shm.is_dir() and os.access(shm, os.W_OK):
        path = Path(tempfile.mkdtemp(dir=shm, prefix="wal-fuzz-"))
        yield Directory(path)
        shutil.rmtree(path, ignore_errors=True)
    else:
        yield Directory(tmp_path)


def _intact_after(pristine_data: bytes, damaged: bytes, records: tuple[tuple[int, int, Groups],
                  ...], start: int) -> bool:
    """Whether a record after the one at `start` is intact in the damaged bytes."""
    return any(begin > start and damaged[begin:end] == pristine_data[begin:end]
               for begin, end, _ in records)


def _run_case(store: Directory, base: Pristine, seed: int) -> str:
    rng = random.Random(seed)
    directory = store.path
    padded = [bytearray(data) for _, data in base.files]
    if rng.random() < 0.5:
        padded[-1] += bytes(PAD)
    pristine_bytes = [bytes(data) for data in padded]
    damaged = [bytearray(data) for data in padded]
    notes = []
    for _ in range(2 if rng.random() < 0.1 else 1):
        target = rng.choices(range(len(damaged)), weights=[len(d) + 64 for d in damaged])[0]
        notes.append(f"segment {target}: "
                     + _damage(damaged[target], rng, base.files[target][1]))
    store.reset({name: bytes(data) for (name, _), data in zip(base.files, damaged, strict=True)})
    store.forget(base.files[-1][0])
    where = f"case seed {seed} ({'; '.join(notes)})"

    wal = WriteAheadLog(directory, segment_bytes=SEGMENT_BYTES, fsync=False,
                        preallocate=False)
    try:
        recovered = wal.open_groups()
    except WalCorruptError as exc:
        damaged_names = [name for (name, _), data, was in
                         zip(base.files, damaged, pristine_bytes, strict=True) if data != was]
        assert os.path.basename(exc.path) in damaged_names, f"{where}: {exc}"
        assert f"{exc.path} at offset {exc.offset}" in str(exc), f"{where}: {exc}"
        assert "python -m engine wal check --data-dir" in str(exc), f"{where}: {exc}"
        return "refused"
    wal.close()
    state = _recovered(recovered)
    if state == base.final:
        return "kept"
    # Fewer records: allowed only for damage a crash can leave in the last segment.
    changed = [i for i, (data, was) in enumerate(zip(damaged, pristine_bytes, strict=True))
               if data != was]
    assert changed == [len(damaged) - 1], \
        f"{where}: started with fewer records after damage to an older segment"
    last, was = bytes(damaged[-1]), pristine_bytes[-1]
    first_diff = next((i for i, (a, b) in enumerate(zip(last, was, strict=False)) if a != b),
                      min(len(last), len(was)))
    start, _, expected = next((r for r in base.last_records if r[0] <= first_diff < r[1]),
                              base.last_records[-1])
    is_last_record = start == base.last_records[-1][0]
    # A record is a torn tail only if nothing valid follows it (DESIGN.md §5).
    assert is_last_record or _crash_like(was, last, first_diff) \
        or not _intact_after(was, last, base.last_records, start), (
        f"{where}: started with fewer records ({state}) though the damage at byte "
        f"{first_diff} of the last segment is followed by intact records")
    assert state == expected, (
        f"{where}: recovered logs {state} are not the saves before the damaged record at "
        f"offset {start}")
    cut = last[start:].rstrip(b"\0")
    if cut:
        broken = directory / f"{base.files[-1][0]}.{start}.broken"
        assert broken.read_bytes() == cut, f"{where}: the cut bytes were not moved aside"
    return "cut"


@pytest.mark.parametrize("many_groups", [False, True], ids=["one-group", "many-groups"])
@pytest.mark.parametrize("chunk", range(CHUNKS))
def test_recovery_keeps_every_acknowledged_record_or_refuses(
        chunk: int, many_groups: bool, wal_directory: Directory) -> None:
    base = pristine(many_groups)
    outcomes: Counter[str] = Counter()
    for case in range(CASES_PER_CHUNK):
        outcomes[_run_case(wal_directory, base, seed=chunk * 1_000_003 + case)] += 1
    assert sum(outcomes.values()) == CASES_PER_CHUNK
    # Every outcome is exercised, so the fuzz cannot pass by refusing (or keeping) everything.
    assert outcomes["refused"] and outcomes["kept"] and outcomes["cut"], outcomes
