"""engine.Node's leadership events (log lines, notifications of a leader change): the
LeaderEvents component (node._events).

`LeaderEvents.note` runs once per Ready and once per tick (three attribute reads and a
comparison when nothing changed). When the term or the leader this node knows changes it
logs one structured line (engine.logs.log_event, logger `engine.node`):

    term_changed      the term (Paxos: the promised ballot) moved; fields term, previous_term
    leader_elected    this node became the leader; fields node_id, term
    leader_lost       this node stopped being the leader; fields node_id, term, leader_id
    leader_changed    another leader (or none, leader_id 0) is known; fields node_id, term,
                      leader_id

and tells the subscribers: `async for leader_id in node.leader_changes()` (like hashicorp/raft's
LeaderCh; 0 means no leader is known) and callbacks registered with `on_leader_change`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING

from engine.logs import log_event

if TYPE_CHECKING:
    from engine.driver import Driver

logger = logging.getLogger("engine.node")

LeaderCallback = Callable[[int, int], None]


class _LeaderWatch:
    """The latest (leader id, term) and a version counter; waiters are woken on a change."""

    __slots__ = ("leader_id", "term", "version", "_changed")

    def __init__(self) -> None:
        self.leader_id = 0
        self.term = 0
        self.version = 0
        self._changed: asyncio.Event | None = None

    def publish(self, leader_id: int, term: int) -> None:
        self.leader_id, self.term = leader_id, term
        self.version += 1
        if self._changed is not None:
            self._changed.set()
            self._changed = None

    async def wait_after(self, version: int) -> None:
        while self.version == version:
            if self._changed is None:
                self._changed = asyncio.Event()
            await self._changed.wait()


class LeaderEvents:
    """Node's leadership observer (see the module docstring), a component of engine.aio.node
    .Node (node._events) that owns its state: the term and leader last noted, the watch
    behind leader_changes(), the on_leader_change callbacks and leader_changes_total. It
    reads the core through the node's driver."""

    def __init__(self, node_id: int, driver: Driver) -> None:
        self.node_id = node_id
        self._driver = driver
        # The term and leader last noted (read per Ready: two attributes, not a tuple).
        self.seen_term = 0
        self.seen_leader = 0
        self._watch: _LeaderWatch | None = None
        self._callbacks: tuple[LeaderCallback, ...] = ()
        self.changes_total = 0

    def note(self) -> None:
        """Once per Ready and per tick: log and publish a change of term or leader."""
        core = self._driver.core
        if core.leader_id != self.seen_leader or core.term != self.seen_term:
            self.changed(core.term, core.leader_id)

    def changed(self, term: int, leader_id: int) -> None:
        previous_term, previous_leader = self.seen_term, self.seen_leader
        self.seen_term, self.seen_leader = term, leader_id
        me = self.node_id
        if term != previous_term:
            log_event(logger, "term_changed", f"node {me}: term {previous_term} -> {term}",
                      node_id=me, term=term, previous_term=previous_term)
        if leader_id == previous_leader:
            return
        self.changes_total += 1
        if previous_leader == me:
            log_event(logger, "leader_lost", f"node {me} is no longer the leader (term {term})",
                      level=logging.WARNING, node_id=me, term=term, leader_id=leader_id)
        if leader_id == me:
            log_event(logger, "leader_elected", f"node {me} is the leader (term {term})",
                      node_id=me, term=term)
        elif previous_leader != me or leader_id:
            what = f"node {leader_id} leads" if leader_id else "no leader"
            log_event(logger, "leader_changed", f"node {me}: {what} (term {term})",
                      node_id=me, term=term, leader_id=leader_id)
        if self._watch is not None:
            self._watch.publish(leader_id, term)
        for callback in self._callbacks:
            try:
                callback(leader_id, term)
            except Exception:  # the user's callback: report, keep the node going
                logger.exception("leader-change callback %r raised", callback)

    def on_leader_change(self, callback: LeaderCallback) -> Callable[[], None]:
        """Call `callback(leader_id, term)` on the loop at each change of the leader this node
        knows (leader_id 0: none). It must not block. Returns a function that unsubscribes."""
        self._callbacks = (*self._callbacks, callback)

        def unsubscribe() -> None:
            self._callbacks = tuple(c for c in self._callbacks if c is not callback)
        return unsubscribe

    async def leader_changes(self) -> AsyncIterator[int]:
        """The leader this node knows now (0: none), then each change of it.

        A slow consumer is not queued for: it gets the newest leader when it asks again
        (intermediate changes coalesce, nothing grows without bound)."""
        watch = self._watch
        if watch is None:
            watch = self._watch = _LeaderWatch()
            watch.publish(self.seen_leader, self.seen_term)
        version = watch.version
        last = watch.leader_id
        yield last
        while True:
            await watch.wait_after(version)
            version = watch.version
            if watch.leader_id != last:
                last = watch.leader_id
                yield last


