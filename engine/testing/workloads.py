"""Client workloads for fault-injection runs, recorded as Jepsen histories, and their checks.

History (Jepsen's shape, what engine.testing.check_linearizable and `python -m engine check`
read): one dict per event, {"process", "type": invoke|ok|fail|info, "f", "key", "value",
"time" (ns, monotonic)}, plus "error" on a completion that was not a plain success and "node"
for reads pinned to one node. How a client outcome is recorded:

  * ok                          -> "ok" (a read carries the value it saw)
  * cas that did not match      -> "fail" (definitely not applied; the system was available)
  * engine.Rejected             -> "fail" (a definite no), error "rejected"
  * engine.Timeout on a write   -> "info": it may have applied, now or later. The process is
    then retired and a fresh process id continues (Jepsen: a process never invokes again
    after an "info").
  * engine.Timeout on a read    -> "fail", error "timeout". Reads change nothing, so a read
    whose answer never came can be left out of the history entirely, which is what "fail"
    means to the checker (Jepsen's etcd and Maelstrom clients do the same). Recording it as
    "info" would be equally correct and only cost the checker time.
  * any other engine error      -> "info" for writes, "fail" for reads, with the error name.

Workloads:

  * register: keys "r<group>-<generation>", each worked by one group of clients with random
    read (WorkloadConfig.read_mode: ReadIndex or lease) / write / cas until the key has seen
    `ops_per_key` invocations (<= 200, Jepsen's etcd suite), then the group moves to a fresh
    key. Written values are unique per key
    ("<process>.<n>"), so a stale or lost value is visible to the checker.
  * grow-only set: "add" = cas(key "s/<element>", expected absent, element). Elements are
    unique; the final reads look up every attempted element, plus probe elements that were
    never attempted, on every node. A retried add that applied twice would answer "cas
    mismatch" and be recorded "fail" although it applied: such an element, present at the end,
    is reported as applied-despite-fail (Jepsen's redisraft "duplicate application" class).
"""

from __future__ import annotations

import asyncio
import itertools
import random
import time
from collections.abc import Awaitable
from dataclasses import dataclass, field
from typing import Any

from engine import errors
from engine.aio.client import Client
from engine.types import MIN_CLIENT_ID

REGISTER = "register"
SET = "set"
SET_PREFIX = "s/"


class History:
    """Events in the order they happened (appended from one event loop)."""

    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []
        self._processes = itertools.count()

    def new_process(self) -> int:
        return next(self._processes)

    def invoke(self, process: int, f: str, key: str, value: Any, **extra: Any) -> dict[str, Any]:
        event = {"process": process, "type": "invoke", "f": f, "key": key, "value": value,
                 "time": time.monotonic_ns(), **extra}
        self.events.append(event)
        return event

    def complete(self, invoke: dict[str, Any], kind: str, value: Any = None,
                 error: str | None = None) -> dict[str, Any]:
        event = {"process": invoke["process"], "type": kind, "f": invoke["f"],
                 "key": invoke["key"], "value": value, "time": time.monotonic_ns()}
        if error is not None:
            event["error"] = error
        if "node" in invoke:
            event["node"] = invoke["node"]
        self.events.append(event)
        return event

    def nemesis(self, f: str, value: Any) -> None:
        """A fault event (process "nemesis": the checker skips it, people read it)."""
        now = time.monotonic_ns()
        for kind in ("invoke", "info"):
            self.events.append({"process": "nemesis", "type": kind, "f": f, "value": value,
                                "time": now})


def _error_name(exc: BaseException) -> str:
    return type(exc).__name__.lower()


async def _recorded(history: History, process: int, f: str, key: str, value: Any,
                    call: Awaitable[Any], *, is_read: bool,
                    extra: dict[str, Any] | None = None) -> str:
    """Run one client call (a coroutine not yet started) and record it; return the completion
    type."""
    invoke = history.invoke(process, f, key, value, **(extra or {}))
    try:
        result = await call
    except errors.Rejected as exc:
        history.complete(invoke, "fail", error="rejected: " + str(exc)[:80])
        return "fail"
    except errors.Timeout:
        kind = "fail" if is_read else "info"
        history.complete(invoke, kind, error="timeout")
        return kind
    except errors.EngineError as exc:
        kind = "fail" if is_read else "info"
        history.complete(invoke, kind, error=_error_name(exc))
        return kind
    if f == "cas" and result is False:
        history.complete(invoke, "fail", error="cas-mismatch")
        return "fail"
    if f == "read":
        history.complete(invoke, "ok", value=None if result is None else result.decode())
    else:
        history.complete(invoke, "ok", value=value)
    return "ok"


@dataclass
class WorkloadConfig:
    register_groups: int = 2          # keys worked at the same time
    clients_per_group: int = 3        # concurrent clients per register key
    ops_per_key: int = 200            # Jepsen etcd --ops-per-key (the checker's sweet spot)
    set_clients: int = 2
    op_interval_s: float = 0.02       # mean pause between two ops of one client
    timeout_s: float = 1.0            # client request timeout (then "info")
    attempt_timeout_s: float = 0.25
    # Register reads: "linearizable" (ReadIndex) or "lease" (the leader answers from its
    # lease, Raft thesis §6.4.1; pair with the clock nemeses). Final reads are always
    # linearizable.
    read_mode: str = "linearizable"


@dataclass
class _KeyState:
    key: str
    invoked: int = 0
    known: list[str] = field(default_factory=list)  # values seen or written (cas candidates)


class Workload:
    """Register and set clients running until stop() (see the module docstring)."""

    def __init__(self, addresses: list[str], cluster_key: bytes, config: WorkloadConfig,
                 rng: random.Random, history: History | None = None) -> None:
        self.addresses = addresses
        self.cluster_key = cluster_key
        self.config = config
        self.rng = rng
        self.history = history or History()
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._keys: dict[int, _KeyState] = {}
        self._generation = itertools.count()
        self._elements = itertools.count()
        self.set_attempted: dict[str, str] = {}   # element -> "ok" | "fail" | "info"

    def _client(self, addresses: list[str] | None = None) -> Client:
        return Client(addresses or self.addresses, cluster_key=self.cluster_key,
                      timeout=self.config.timeout_s,
                      attempt_timeout=self.config.attempt_timeout_s,
                      client_id=self.rng.randrange(MIN_CLIENT_ID, 1 << 63))

    def start(self) -> None:
        for group in range(self.config.register_groups):
            self._keys[group] = _KeyState(f"r{group}-{next(self._generation)}")
            for _ in range(self.config.clients_per_group):
                self._tasks.append(asyncio.create_task(self._register_client(group)))
        for _ in range(self.config.set_clients):
            self._tasks.append(asyncio.create_task(self._set_client()))

    async def stop(self) -> None:
        self._stop.set()
        await asyncio.gather(*self._tasks)

    async def _pause(self) -> None:
        await asyncio.sleep(self.rng.expovariate(1.0 / self.config.op_interval_s))

    def _key_for(self, group: int) -> _KeyState:
        state = self._keys[group]
        if state.invoked >= self.config.ops_per_key:
            state = _KeyState(f"r{group}-{next(self._generation)}")
            self._keys[group] = state
        state.invoked += 1
        return state

    async def _register_client(self, group: int) -> None:
        rng, history = self.rng, self.history
        process, count = history.new_process(), 0
        # Half the reads go through a client that knows one node only, so followers serve
        # ReadIndex reads too (Raft §6.4) while faults happen: the stale-read bug class.
        pinned = [self.rng.choice(self.addresses)]
        async with self._client() as client, self._client(pinned) as reader:
            while not self._stop.is_set():
                state = self._key_for(group)
                key, kb = state.key, state.key.encode()
                choice = rng.random()
                if choice < 0.5:
                    via = reader if choice < 0.25 else client
                    outcome = await _recorded(history, process, "read", key, None,
                                              via.get(kb, mode=self.config.read_mode),
                                              is_read=True)
                    last = _last_completion(history, process)
                    if outcome == "ok" and last["value"] is not None:
                        state.known.append(last["value"])
                elif choice < 0.75 or not state.known:
                    count += 1
                    value = f"{process}.{count}"
                    state.known.append(value)
                    outcome = await _recorded(
                        history, process, "write", key, value,
                        client.put(kb, value.encode()), is_read=False)
                else:
                    count += 1
                    new = f"{process}.{count}"
                    expected = rng.choice(state.known[-4:])
                    state.known.append(new)
                    outcome = await _recorded(
                        history, process, "cas", key, [expected, new],
                        client.cas(kb, expected.encode(), new.encode()),
                        is_read=False)
                if outcome == "info":
                    process, count = history.new_process(), 0  # Jepsen: retire the process
                await self._pause()

    async def _set_client(self) -> None:
        history = self.history
        process = history.new_process()
        async with self._client() as client:
            while not self._stop.is_set():
                element = f"e{next(self._elements)}"
                if self.rng.random() < 0.05:
                    element = f"e{next(self._elements)}"  # skip one: a never-attempted probe
                key = SET_PREFIX + element
                outcome = await _recorded(
                    history, process, "add", key, element,
                    client.cas(key.encode(), None, element.encode()),
                    is_read=False)
                self.set_attempted[element] = outcome
                if outcome == "info":
                    process = history.new_process()
                await self._pause()

    @property
    def highest_element(self) -> int:
        return next(self._elements)  # consumes one id: only call after stop()


# ---------------------------------------------------------------------------- final reads


async def final_reads(history: History, addresses: dict[int, str], cluster_key: bytes,
                      keys: list[str], *, timeout_s: float = 5.0, lanes: int = 16,
                      give_up_after: int = 32) -> dict[int, dict[str, Any]]:
    """Read every key through every node (a client that knows only that node: it may follow
    a NOT_LEADER hint), `lanes` reads in flight per node, each lane its own process. Reads are
    recorded in the history with "node". Returns per node {key: value or None}; a key that
    could not be read is absent from that node's dict. After `give_up_after` unanswered reads
    in a row a node is given up on (its remaining keys stay unread), so a dead node costs
    seconds, not keys x timeout."""
    results: dict[int, dict[str, Any]] = {}

    async def lane(client: Client, node_id: int, todo: list[str], seen: dict[str, Any],
                   misses: list[int]) -> None:
        process = history.new_process()
        for key in todo:
            if misses[0] >= give_up_after:
                return
            outcome = await _recorded(history, process, "read", key, None,
                                      client.get(key.encode()), is_read=True,
                                      extra={"node": node_id})
            if outcome == "ok":
                seen[key] = _last_completion(history, process)["value"]
                misses[0] = 0
            else:
                misses[0] += 1

    for node_id, address in addresses.items():
        seen: dict[str, Any] = {}
        misses = [0]
        async with Client([address], cluster_key=cluster_key, timeout=timeout_s,
                          attempt_timeout=0.25) as client:
            await asyncio.gather(*(lane(client, node_id, keys[i::lanes], seen, misses)
                                   for i in range(lanes)))
        results[node_id] = seen
    return results


def _last_completion(history: History, process: int) -> dict[str, Any]:
    for event in reversed(history.events):
        if event["process"] == process and event["type"] != "invoke":
            return event
    raise LookupError(process)


@dataclass
class SetCheck:
    """Grow-only set verdict (Jepsen's set-full, reduced to what the final reads show)."""

    valid: bool
    acknowledged: int
    lost: list[str]                 # acknowledged ("ok") add not present on some node
    unexpected: list[str]           # present but never attempted (a probe id)
    applied_despite_fail: list[str]  # present although its add was a definite "fail"
    wrong_value: list[str]
    unreadable: list[str]           # node:element reads that got no answer

    def summary(self) -> str:
        state = "valid" if self.valid else "INVALID"
        return (f"set {state}: {self.acknowledged} acknowledged adds; lost {len(self.lost)}, "
                f"unexpected {len(self.unexpected)}, applied-despite-fail "
                f"{len(self.applied_despite_fail)}, wrong value {len(self.wrong_value)}, "
                f"unreadable {len(self.unreadable)}")


def check_set(attempted: dict[str, str], probes: list[str],
              reads: dict[int, dict[str, Any]]) -> SetCheck:
    lost: list[str] = []
    unexpected: list[str] = []
    despite_fail: list[str] = []
    wrong: list[str] = []
    unreadable: list[str] = []
    for node_id, seen in reads.items():
        for element, outcome in attempted.items():
            key = SET_PREFIX + element
            if key not in seen:
                unreadable.append(f"n{node_id}:{element}")
                continue
            value = seen[key]
            if value is None:
                if outcome == "ok":
                    lost.append(f"n{node_id}:{element}")
                continue
            if value != element:
                wrong.append(f"n{node_id}:{element}={value!r}")
            if outcome == "fail":
                despite_fail.append(f"n{node_id}:{element}")
        for element in probes:
            if seen.get(SET_PREFIX + element) is not None:
                unexpected.append(f"n{node_id}:{element}")
    acknowledged = sum(1 for outcome in attempted.values() if outcome == "ok")
    valid = not (lost or unexpected or despite_fail or wrong or unreadable)
    return SetCheck(valid, acknowledged, lost, unexpected, despite_fail, wrong, unreadable)


def availability(history: list[dict[str, Any]], start_ns: int, end_ns: int) -> tuple[int, int]:
    """(definite answers, operations) for client ops invoked in [start_ns, end_ns).

    A definite answer is "ok" or a cas that did not match (the system answered); a timeout,
    a rejection or an "info" is not. Final reads (with "node") are not counted.
    """
    pending: dict[Any, dict[str, Any]] = {}
    answered = total = 0
    for event in history:
        if event["process"] == "nemesis" or "node" in event:
            continue
        if event["type"] == "invoke":
            pending[event["process"]] = event
            continue
        invoke = pending.pop(event["process"], None)
        if invoke is None or not start_ns <= invoke["time"] < end_ns:
            continue
        total += 1
        if event["type"] == "ok" or event.get("error") == "cas-mismatch":
            answered += 1
    return answered, total
