"""engine.host.Host's save batch when a group is removed and hosted again (a replica moved
away and back, or rebuilt in place) while the group's save is queued or in flight: each
completion reaches only the driver whose save it was, and a removed group's unwritten save
leaves the batch."""

from __future__ import annotations

from typing import Any

from engine.driver import PENDING
from engine.host import Host
from engine.types import HardState


class FakeDriver:
    """The part of engine.driver.Driver a Host calls."""

    def __init__(self) -> None:
        self.inbox: list[Any] = []
        self.received_since_turn = 0
        self.running = False
        self.persisted_calls = 0
        self.storage: Any = None

    def start(self, core: Any, transport: Any, storage: Any, *, applied: int,
              **options: Any) -> None:
        self.storage = storage
        self.running = True

    def schedule_turn(self) -> None:
        """Turns are run by the test."""

    def persisted(self) -> None:
        self.persisted_calls += 1

    def stop(self) -> None:
        self.running = False

    def save(self, term: int) -> None:
        """What Driver._save does: the group's storage answers PENDING (the host's batch)."""
        assert self.storage.save([], HardState(term, 0, 0), sync=True) is PENDING


class FakeWal:
    """save_many as engine.aio.wal.WriteAheadLog checks it, completing later (PENDING)."""

    def __init__(self) -> None:
        self.batches: list[list[int]] = []

    def save_many(self, batch: list[tuple[int, list[Any], Any]], *, sync: bool) -> object:
        groups = [group for group, _, _ in batch]
        if len(set(groups)) != len(groups):
            raise ValueError(f"a group appears twice in one save_many: {groups}")
        self.batches.append(groups)
        return PENDING


class FakeTransport:
    def send(self, messages: list[Any]) -> None:
        """Nothing is sent here."""

    def flush(self) -> None:
        """Nothing is sent here."""


def make_host() -> tuple[Host, FakeWal]:
    wal = FakeWal()
    host = Host(1, transport=FakeTransport(), storage=wal, call_soon=lambda turn: None)
    return host, wal


def test_a_completion_reaches_only_the_driver_that_saved() -> None:
    host, wal = make_host()
    old = FakeDriver()
    host.add_group(7, old, core=None, applied=0)  # type: ignore[arg-type]
    old.save(1)
    host.run_turn()
    assert wal.batches == [[7]]
    host.remove_group(7)
    new = FakeDriver()
    host.add_group(7, new, core=None, applied=0)  # type: ignore[arg-type]
    new.save(2)   # queued behind the batch in flight: not written yet
    host.persisted()
    # The completed batch held the old driver's save, not the new one's: the new driver
    # must not be told its save is durable before its own batch completes.
    assert new.persisted_calls == 0
    assert old.persisted_calls == 0
    assert wal.batches == [[7], [7]]
    host.persisted()
    assert new.persisted_calls == 1


def test_a_removed_groups_unwritten_save_leaves_the_batch() -> None:
    host, wal = make_host()
    old = FakeDriver()
    host.add_group(7, old, core=None, applied=0)  # type: ignore[arg-type]
    other = FakeDriver()
    host.add_group(8, other, core=None, applied=0)  # type: ignore[arg-type]
    old.save(1)
    other.save(1)
    host.remove_group(7)
    new = FakeDriver()
    host.add_group(7, new, core=None, applied=0)  # type: ignore[arg-type]
    new.save(2)
    host.run_turn()   # one batch: group 7 once (the new driver's), group 8
    assert sorted(wal.batches[0]) == [7, 8]
    host.persisted()
    assert (new.persisted_calls, other.persisted_calls, old.persisted_calls) == (1, 1, 0)
