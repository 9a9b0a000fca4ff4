"""Host: the consensus groups of one process under one turn (DESIGN.md §1).

One engine.driver.Driver drives one group: its core, its state machine, its outcome tables.
A Host runs many of them the way one process must: one transport, one storage, one turn.

The turn
--------
A group's driver asks for a turn through the `call_soon` the host gave it; the host collects
those requests and runs ONE host turn for all of them on the shell's scheduler:

  1. every group that asked runs its own turn (engine.driver: ticks, messages, the proposal
     batch, the ReadIndex round, its Ready). A group's `messages` go to the shared transport
     stamped with its group id; its `entries` and `hard_state` go to the host's batch, and its
     save answers PENDING, so the driver holds everything that depends on durability;
  2. the transport is flushed: one datagram per peer process carries every group's messages,
     before the write, so followers write while the leaders write (Raft thesis §10.2.1);
  3. the batch is saved with ONE `save_many` and at most one sync for every group (group
     commit across groups: the number of fsyncs per second does not grow with the number of
     groups);
  4. when that save completes (now, or later for a storage that answers PENDING), each group
     in the batch continues (Driver.persisted: acks and votes out, late applies, advance), and
     the transport is flushed again.

A batch is in flight at most once: groups that reach a Ready while one is in flight queue in
the next batch, which is saved when the first completes. Each group's own order is the
driver's (engine.driver, "The turn"), so everything the simulator proves about one driver
holds for each group of a host.

Messages carry their group (engine.messages: `Message.group`); `receive` routes each to its
group's driver. A message for a group this process does not host is counted and handed to
`on_unknown_group` (the shell may create a replica for it, or drop it).

Quiescence
----------
`tick` ticks every hosted group. Quiescing idle groups (CockroachDB's quiescence, DESIGN.md
§1 item 5) is the shell's choice: it ticks only the groups it keeps awake.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from engine.driver import PENDING, Driver
from engine.messages import Message
from engine.types import HardState, Snapshot


class GroupTransport:
    """engine.driver.Transport for one group of a host: stamps the group id and leaves the
    flush to the host turn (one datagram per peer for all groups)."""

    __slots__ = ("group", "_send", "_host")

    def __init__(self, group: int, transport: Any, host: Host) -> None:
        self.group = group
        self._send = transport.send
        self._host = host

    def send(self, messages: list[Message], now: bool = False) -> None:
        group = self.group
        if group:
            for message in messages:
                message.group = group
        self._send(messages)
        if now:
            self._host.flush_due = True

    def flush(self) -> None:
        self._host.flush_due = True


class GroupStorage:
    """engine.driver.Storage for one group of a host: saves join the host's batch (answered
    PENDING; the host calls Driver.persisted when the batch is durable); snapshots and
    compaction go to the shared storage under the group's id."""

    __slots__ = ("group", "_host", "_storage")

    def __init__(self, group: int, storage: Any, host: Host) -> None:
        self.group = group
        self._host = host
        self._storage = storage

    def save(self, entries: list[Any], hard_state: HardState | None, *, sync: bool) -> object:
        self._host.queue_save(self.group, entries, hard_state, sync)
        return PENDING

    def save_snapshot(self, snapshot: Snapshot, envelope: bytes) -> None:
        self._storage.save_snapshot(snapshot, envelope, group=self.group)

    def compact(self, index: int, term: int) -> None:
        self._storage.compact(index, term, group=self.group)

    def install_snapshot(self, snapshot: Snapshot, envelope: bytes) -> None:
        # Raft Figure 13 steps 6-7: the snapshot file, then the log compacted at it.
        self._storage.save_snapshot(snapshot, envelope, group=self.group)
        self._storage.compact(snapshot.index, snapshot.term, group=self.group)


class Host:
    """Many groups' drivers in one process: one transport, one storage, one turn.

    `transport`: engine.driver.Transport shared by every group (messages carry their group).
    `storage`: `save_many([(group, entries, hard_state), ...], sync=) -> PENDING | other`
    (engine.aio.wal.WriteAheadLog, MemoryStorage, the simulator's disk), plus per-group
    `save_snapshot(..., group=)` and `compact(..., group=)`.
    `call_soon`: the shell's scheduler (loop.call_soon; the simulator's turn queue).
    """

    def __init__(self, node_id: int, *, transport: Any, storage: Any,
                 call_soon: Callable[[Callable[[], None]], object],
                 die: Callable[[BaseException], None] | None = None) -> None:
        self.node_id = node_id
        self.transport = transport
        self.storage = storage
        self._call_soon = call_soon
        self._die = die
        self.groups: dict[int, Driver] = {}
        self.running = True
        self.flush_due = False
        self._turn_scheduled = False
        self._callbacks: list[Callable[[], None]] = []
        # The save batch being built this turn with the driver that queued each save, and
        # the (group, driver) pairs of the batch in flight (at most one batch). A completion
        # is owed to the driver that saved, not to whichever driver hosts the group by then
        # (a group removed and hosted again meanwhile).
        self._batch: list[tuple[int, list[Any], HardState | None]] = []
        self._batch_drivers: list[Driver | None] = []
        self._batch_sync = False
        self._in_flight: list[tuple[int, Driver | None]] | None = None
        self.on_unknown_group: Callable[[Message], None] | None = None
        self.counters: dict[str, int] = {
            "turns": 0, "group_turns": 0, "batches": 0, "batch_groups": 0, "syncs": 0,
            "unknown_group_messages": 0,
        }

    # ------------------------------------------------------------------ groups

    def group_call_soon(self, callback: Callable[[], None]) -> None:
        """The `call_soon` every group's driver is built with: its turn joins the host's."""
        self._callbacks.append(callback)
        if not self._turn_scheduled:
            self._turn_scheduled = True
            self._call_soon(self.run_turn)

    def add_group(self, group: int, driver: Driver, core: Any, *, applied: int,
                  **start_options: Any) -> None:
        """Bind `driver` (built with call_soon=host.group_call_soon) to `core` over the
        host's transport and storage as group `group`, and start it."""
        if group in self.groups:
            raise ValueError(f"group {group} is already hosted")
        driver.start(core, GroupTransport(group, self.transport, self),
                     GroupStorage(group, self.storage, self), applied=applied,
                     **start_options)
        self.groups[group] = driver
        driver.schedule_turn()

    def remove_group(self, group: int) -> Driver:
        """Stop hosting `group`: its driver stops; its save not yet written leaves the batch
        (nothing waits for it, and a driver hosting the group again saves under the same id,
        which one save_many may hold only once); a save of it in flight completes unheard."""
        driver = self.groups.pop(group)
        driver.stop()
        if any(g == group for g, _, _ in self._batch):
            kept = [(item, owner) for item, owner in zip(self._batch, self._batch_drivers,
                                                         strict=True) if item[0] != group]
            self._batch = [item for item, _ in kept]
            self._batch_drivers = [owner for _, owner in kept]
        return driver

    # ------------------------------------------------------------------ inputs

    def receive(self, messages: Iterable[Message]) -> None:
        """Route consensus messages to their groups and schedule their turns."""
        groups = self.groups
        touched: list[Driver] = []
        for message in messages:
            driver = groups.get(message.group)
            if driver is None:
                self.counters["unknown_group_messages"] += 1
                if self.on_unknown_group is not None:
                    self.on_unknown_group(message)
                continue
            if not driver.inbox:
                touched.append(driver)
            driver.inbox.append(message)
        for driver in touched:
            # One datagram's worth for each group it touched (the driver's group-commit
            # deferral counts deliveries, engine.driver.BURST_DATAGRAMS).
            driver.received_since_turn += 1
            driver.schedule_turn()

    def tick(self) -> None:
        """One clock tick for every hosted group."""
        for driver in list(self.groups.values()):
            if driver.running:
                driver.tick()

    # ------------------------------------------------------------------ the turn

    def run_turn(self) -> None:
        self._turn_scheduled = False
        if not self.running:
            return
        self.counters["turns"] += 1
        callbacks, self._callbacks = self._callbacks, []
        self.counters["group_turns"] += len(callbacks)
        for callback in callbacks:
            callback()
        self._flush()
        if self._batch and self._in_flight is None:
            self._save_batch()
        self._flush()

    def queue_save(self, group: int, entries: list[Any], hard_state: HardState | None,
                   sync: bool) -> None:
        self._batch.append((group, entries, hard_state))
        self._batch_drivers.append(self.groups.get(group))
        self._batch_sync = self._batch_sync or sync

    def _flush(self) -> None:
        if self.flush_due:
            self.flush_due = False
            self.transport.flush()

    def _save_batch(self) -> None:
        batch, sync = self._batch, self._batch_sync
        self._in_flight = [(group, driver) for (group, _, _), driver
                           in zip(batch, self._batch_drivers, strict=True)]
        self._batch, self._batch_drivers, self._batch_sync = [], [], False
        self.counters["batches"] += 1
        self.counters["batch_groups"] += len(batch)
        if sync:
            self.counters["syncs"] += 1
        try:
            done = self.storage.save_many(batch, sync=sync)
        except Exception as exc:
            # Nothing that depends on this write may be acknowledged (DESIGN.md §5).
            self._in_flight = None
            self.running = False
            if self._die is None:
                raise
            self._die(exc)
            return
        if done is not PENDING:
            self.persisted()

    def persisted(self) -> None:
        """The batch in flight is durable (the shell calls this for a PENDING save)."""
        groups, self._in_flight = self._in_flight, None
        if groups is None or not self.running:
            return
        hosted = self.groups
        for group, driver in groups:
            if driver is not None and hosted.get(group) is driver:
                driver.persisted()
        if self._batch:
            # Readies that queued while the batch was in flight: the next batch now.
            self._save_batch()
        self._flush()

    def stop(self) -> None:
        self.running = False
        for driver in self.groups.values():
            driver.stop()


__all__ = ["GroupStorage", "GroupTransport", "Host"]
