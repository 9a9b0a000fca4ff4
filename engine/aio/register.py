"""A write-once register over UDP: the asyncio driver of single-decree Paxos (engine.paxos.synod).

    register = WriteOnceRegister(1, {1: "127.0.0.1:7101", 2: ..., 3: ...}, cluster_key,
                                 data_dir="data/r1", register_id=7)
    await register.start()
    chosen = await register.propose(b"mine", timeout=5.0)   # maybe another proposer's value
    value = await register.read()                            # None while nothing is chosen
    await register.stop()

Every member is an acceptor, a proposer and a learner of one value (Paxos Made Simple §2).
The synod core decides; this module only moves its inputs and outputs:

- Network. One engine.aio.udp.UdpTransport per member, bound to members[node_id], speaking
  authenticated frames whose cluster id is the register id (so a datagram for another register
  is refused by the codec, never stepped into this one). Frames from non-members are refused.
- Time. The core is ticked every `tick_ms`; its retries and randomized backoff (duelling
  proposers, §2.5) are counted in ticks.
- Durability (Paxos Made Simple §2.3: an acceptor remembers what it promised and accepted
  across failures). With a data_dir, the acceptor state of each Ready (promised ballot,
  accepted ballot and value, and the chosen value once learned) is written to
  `register-<id>.paxos` - a temporary file, fsync, rename, fsync of the directory - in a worker
  thread, BEFORE any message of that Ready is sent and before any outcome is reported. Readies
  are handled strictly one after another, so nothing the core derived from unsynced state
  leaves the process early. data_dir=None keeps the state in memory (a restart forgets it:
  tests and demos only).
- Outcomes. `propose` and `read` wait for the core's report: Ready.committed_entries carries
  the chosen value, Ready.read_states = [ReadState(0)] says a phase-1 quorum had accepted
  nothing (nothing chosen yet). No answer within `timeout` raises engine.Timeout: the outcome
  is unknown (the value may still be chosen later). When no caller is left waiting, the core
  abandons its ballot (a proposer may stop at any time, §2.2) so an idle register sends nothing.

Only this module, not the sans-IO synod, does I/O: DESIGN.md §2 layering.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import struct
import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from engine import errors
from engine.aio.udp import UdpTransport, as_address
from engine.aio.wal import make_directory_durably
from engine.config import Limits
from engine.messages import Entry
from engine.paxos.synod import Synod, SynodConfig
from engine.types import HardState, Ready

_MAGIC = b"EPXR"
_VERSION = 1
# magic, version, promised, accepted ballot, chosen ballot, has chosen, value lengths.
_HEADER = struct.Struct("<4sHQQQBII")
_CRC = struct.Struct("<I")
_ACCEPTED_SLOT, _CHOSEN_SLOT = 1, 2


@dataclass(frozen=True, slots=True)
class AcceptorState:
    """What one member must never forget (Paxos Made Simple §2.3)."""

    promised: int = 0
    accepted_ballot: int = 0
    accepted_value: bytes = b""
    chosen_ballot: int = 0
    chosen_value: bytes | None = None

    def updated(self, ready: Ready) -> AcceptorState:
        """The state after persisting `ready` (the synod's Ready layout, see synod.py)."""
        promised = self.promised if ready.hard_state is None else ready.hard_state.term
        accepted_ballot, accepted_value = self.accepted_ballot, self.accepted_value
        chosen_ballot, chosen_value = self.chosen_ballot, self.chosen_value
        for entry in ready.entries:
            if entry.index == _ACCEPTED_SLOT:
                accepted_ballot, accepted_value = entry.term, bytes(entry.data)
            elif entry.index == _CHOSEN_SLOT:
                chosen_ballot, chosen_value = entry.term, bytes(entry.data)
        return AcceptorState(promised, accepted_ballot, accepted_value, chosen_ballot,
                             chosen_value)

    def synod_inputs(self) -> tuple[HardState, list[Any]]:
        """(hard_state, entries) to rebuild a Synod from this state."""
        entries: list[Any] = []
        if self.accepted_ballot:
            entries.append(Entry(self.accepted_ballot, _ACCEPTED_SLOT, self.accepted_value))
        if self.chosen_value is not None:
            entries.append(Entry(self.chosen_ballot, _CHOSEN_SLOT, self.chosen_value))
        commit = _CHOSEN_SLOT if self.chosen_value is not None else 0
        return HardState(self.promised, 0, commit), entries

    def encode(self) -> bytes:
        chosen = self.chosen_value if self.chosen_value is not None else b""
        body = _HEADER.pack(
            _MAGIC, _VERSION, self.promised, self.accepted_ballot, self.chosen_ballot,
            int(self.chosen_value is not None), len(self.accepted_value), len(chosen),
        ) + self.accepted_value + chosen
        return body + _CRC.pack(zlib.crc32(body))

    @classmethod
    def decode(cls, data: bytes, where: str) -> AcceptorState:
        """Parse a state file; anything malformed is a StorageError naming the file."""
        if len(data) < _HEADER.size + _CRC.size:
            raise errors.StorageError(f"{where}: truncated register state ({len(data)} bytes)")
        body, (crc,) = data[:-_CRC.size], _CRC.unpack(data[-_CRC.size:])
        if zlib.crc32(body) != crc:
            raise errors.StorageError(f"{where}: register state checksum mismatch")
        magic, version, promised, accepted_ballot, chosen_ballot, has_chosen, accepted_len, \
            chosen_len = _HEADER.unpack_from(body, 0)
        if magic != _MAGIC or version != _VERSION:
            raise errors.StorageError(f"{where}: not a version {_VERSION} register state file")
        if len(body) != _HEADER.size + accepted_len + chosen_len or has_chosen not in (0, 1):
            raise errors.StorageError(f"{where}: register state lengths are inconsistent")
        if accepted_ballot > promised:
            raise errors.StorageError(f"{where}: accepted ballot above the promised one")
        accepted = body[_HEADER.size:_HEADER.size + accepted_len]
        chosen = body[_HEADER.size + accepted_len:] if has_chosen else None
        return cls(promised, accepted_ballot, accepted, chosen_ballot, chosen)


class RegisterFile:
    """The fsynced state file of one register replica: replaced atomically on every save."""

    def __init__(self, directory: str, register_id: int) -> None:
        self.directory = directory
        self.path = os.path.join(directory, f"register-{register_id}.paxos")
        self.saves = 0

    def load(self) -> AcceptorState:
        make_directory_durably(self.directory)   # the directory's entry survives a crash
        try:
            with open(self.path, "rb") as file:
                data = file.read()
        except FileNotFoundError:
            return AcceptorState()
        return AcceptorState.decode(data, self.path)

    def save(self, state: AcceptorState) -> None:
        """Write, fsync, rename over the old file, fsync the directory: after a crash the
        file holds either the old or the new state, never a mix."""
        temporary = self.path + ".tmp"
        with open(temporary, "wb") as file:
            file.write(state.encode())
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, self.path)
        fd = os.open(self.directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        self.saves += 1


class WriteOnceRegister:
    """One member of a single-decree Paxos register over UDP (see the module docstring).

    members: every member's id -> "host:port" (ids in [1, 65535]: they are packed in ballots).
    register_id: names the state file and is the frames' cluster id.
    seed: the backoff RNG's seed (None: random); tick_ms, retry_ticks, backoff_*: timing.
    """

    def __init__(
        self, node_id: int, members: Mapping[int, str | tuple[str, int]], cluster_key: bytes,
        data_dir: str | os.PathLike[str] | None = None, *, register_id: int = 0,
        tick_ms: int = 10, retry_ticks: int = 10, backoff_base_ticks: int = 2,
        backoff_cap_ticks: int = 64, seed: int | None = None, limits: Limits | None = None,
        check_invariants: bool = False,
    ) -> None:
        if tick_ms <= 0:
            raise errors.ConfigError(f"tick_ms must be positive, got {tick_ms}")
        self.node_id = node_id
        self.members = {int(k): as_address(v) for k, v in members.items()}
        self.cluster_key = cluster_key
        self.register_id = register_id
        self.tick_s = tick_ms / 1000
        self.limits = limits
        self.config = SynodConfig(
            node_id, tuple(sorted(self.members)),
            seed=secrets.randbits(32) if seed is None else seed, retry_ticks=retry_ticks,
            backoff_base_ticks=backoff_base_ticks, backoff_cap_ticks=backoff_cap_ticks,
            check_invariants=check_invariants,
        )
        self._file = None if data_dir is None else RegisterFile(os.fspath(data_dir), register_id)
        self._state = AcceptorState()
        self._synod: Synod | None = None
        self._transport: UdpTransport | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._tick_handle: asyncio.TimerHandle | None = None
        self._pump_task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self._running = False
        self._proposers: list[asyncio.Future[bytes]] = []
        self._readers: list[asyncio.Future[bytes | None]] = []
        self._fatal: BaseException | None = None

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """Load the acceptor state, bind the socket, start ticking."""
        if self._running or self._synod is not None:
            raise errors.EngineError("register already started")
        loop = asyncio.get_running_loop()
        self._loop = loop
        if self._file is not None:
            self._state = await loop.run_in_executor(None, self._file.load)
        hard_state, entries = self._state.synod_inputs()
        self._synod = Synod(self.config, hard_state, entries)
        peers = {i: a for i, a in self.members.items() if i != self.node_id}
        self._transport = UdpTransport(
            self.node_id, self.members[self.node_id], peers, self.cluster_key,
            cluster_id=self.register_id, limits=self.limits, on_messages=self._on_messages,
            accept_unknown_senders=False,
        )
        await self._transport.start()
        self._running = True
        self._tick_handle = loop.call_later(self.tick_s, self._on_tick)
        self._pump_task = loop.create_task(self._pump(), name=f"register-{self.node_id}")

    async def stop(self) -> None:
        """Stop ticking, let an in-flight save finish, close the socket; waiters get Stopped."""
        if not self._running:
            return
        self._running = False
        if self._tick_handle is not None:
            self._tick_handle.cancel()
        self._wake.set()
        if self._pump_task is not None:
            await self._pump_task  # returns after the save in progress, if any
        if self._transport is not None:
            await self._transport.aclose()
        self._fail_waiters(errors.Stopped("register stopped"))

    async def __aenter__(self) -> WriteOnceRegister:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # ------------------------------------------------------------------ public surface

    async def propose(self, value: bytes, timeout: float = 10.0) -> bytes:
        """Get `value` chosen; returns THE chosen value, which may be another proposer's.

        Raises engine.Timeout if nothing is decided within `timeout` seconds (the outcome is
        unknown: `value` may still be chosen), engine.StoppedOutcomeUnknown (a Stopped and a
        Timeout) if stopped meanwhile."""
        synod = self._require_running()
        if not isinstance(value, (bytes, bytearray, memoryview)):
            raise TypeError(f"value must be bytes, got {type(value).__name__}")
        future: asyncio.Future[bytes] = self._loop_or_raise().create_future()
        self._proposers.append(future)
        synod.propose(bytes(value))
        self._wake.set()
        return await self._wait(future, self._proposers, timeout, "propose")

    async def read(self, timeout: float = 10.0) -> bytes | None:
        """The chosen value, or None if none was chosen when a phase-1 quorum answered
        (linearizable: see engine.paxos.synod). Raises engine.Timeout without a quorum."""
        synod = self._require_running()
        if synod.chosen is not None:
            return synod.chosen  # chosen values never change (§2.2 P2)
        future: asyncio.Future[bytes | None] = self._loop_or_raise().create_future()
        self._readers.append(future)
        synod.learn()
        self._wake.set()
        return await self._wait(future, self._readers, timeout, "read")

    @property
    def chosen(self) -> bytes | None:
        """The chosen value if this member has learned it (no network round)."""
        return None if self._synod is None else self._synod.chosen

    @property
    def address(self) -> tuple[str, int]:
        if self._transport is None:
            raise errors.EngineError("register not started")
        return self._transport.address

    def status(self) -> dict[str, Any]:
        synod = self._synod
        return {
            "node_id": self.node_id,
            "register_id": self.register_id,
            "running": self._running,
            "durable": self._file is not None,
            "promised": self._state.promised,
            "accepted_ballot": self._state.accepted_ballot,
            "chosen": None if synod is None else synod.chosen,
            "proposer_state": None if synod is None else synod.state,
            "counters": {} if synod is None else dict(synod.counters),
            "saves": 0 if self._file is None else self._file.saves,
            "transport": {} if self._transport is None else self._transport.stats(),
        }

    # ------------------------------------------------------------------ internals

    def _require_running(self) -> Synod:
        if self._fatal is not None:
            raise errors.StorageError(f"register stopped after a storage failure: {self._fatal}")
        if not self._running or self._synod is None:
            raise errors.Stopped("register is not running")
        return self._synod

    def _loop_or_raise(self) -> asyncio.AbstractEventLoop:
        if self._loop is None:
            raise errors.Stopped("register is not running")
        return self._loop

    async def _wait(self, future: asyncio.Future[Any], waiters: list[Any], timeout: float,
                    what: str) -> Any:
        try:
            return await asyncio.wait_for(asyncio.shield(future), timeout)
        except TimeoutError as exc:
            if isinstance(exc, errors.EngineError):
                raise   # the future's own error (engine.Timeout is a TimeoutError too)
            raise errors.Timeout(
                f"register {self.register_id}: {what} not decided in {timeout}s "
                "(outcome unknown)") from None
        finally:
            if future in waiters:
                waiters.remove(future)
            if not future.done():
                future.cancel()
            if not self._proposers and not self._readers and self._synod is not None \
                    and self._synod.chosen is None:
                self._synod.abandon()  # nobody waits: stop sending ballots (§2.2)

    def _on_messages(self, messages: list[Any], source: Any) -> None:
        synod = self._synod
        if synod is None or not self._running:
            return
        for message in messages:
            synod.step(message)
        self._wake.set()

    def _on_tick(self) -> None:
        if not self._running or self._synod is None or self._loop is None:
            return
        self._synod.tick()
        if self._synod.has_ready():
            self._wake.set()
        self._tick_handle = self._loop.call_later(self.tick_s, self._on_tick)

    async def _pump(self) -> None:
        """Handle Readies one at a time: persist, then send, then report (module docstring)."""
        synod, transport, loop = self._synod, self._transport, self._loop
        assert synod is not None and transport is not None and loop is not None
        while self._running:
            await self._wake.wait()
            self._wake.clear()
            while self._running and synod.has_ready():
                ready = synod.ready()
                if ready.hard_state is not None or ready.entries:
                    state = self._state.updated(ready)
                    if self._file is not None:
                        try:
                            await loop.run_in_executor(None, self._file.save, state)
                        except OSError as exc:
                            # An unknown on-disk state: answering anything now could break a
                            # promise (fsyncgate). Stop serving.
                            self._fatal = exc
                            self._running = False
                            self._fail_waiters(errors.StorageError(
                                f"register {self.register_id}: save failed: {exc}"))
                            return
                    self._state = state
                transport.send(ready.messages)
                transport.send(ready.messages_after_persist)
                self._report(ready)
                synod.advance(ready)

    def _report(self, ready: Ready) -> None:
        if ready.committed_entries:
            value = bytes(ready.committed_entries[-1].data)
            for future in self._proposers + self._readers:
                if not future.done():
                    future.set_result(value)
            self._proposers.clear()
            self._readers.clear()
        elif ready.read_states:
            for reader in self._readers:
                if not reader.done():
                    reader.set_result(None)
            self._readers.clear()

    def _fail_waiters(self, error: errors.EngineError) -> None:
        # A proposal went out when propose() was called: stopped now, its value may still be
        # chosen (StoppedOutcomeUnknown, engine.errors.unfinished); a read changes nothing.
        proposed = (errors.unfinished(error, may_apply=True)
                    if isinstance(error, errors.Stopped) else error)
        for futures, failure in ((self._proposers, proposed), (self._readers, error)):
            for future in futures:
                if not future.done():
                    future.set_exception(failure)
        self._proposers.clear()
        self._readers.clear()


__all__ = ["WriteOnceRegister", "AcceptorState", "RegisterFile"]
