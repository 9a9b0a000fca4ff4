"""A cluster of real `python -m engine serve` processes on one machine, for fault injection.

    cluster = ProcessCluster(Path("/tmp/run"), n=3, protocol="raft")
    cluster.start_all()
    leader = await cluster.leader_id()
    cluster.kill(leader)                       # kill -9
    cluster.pause(2); cluster.resume(2)        # SIGSTOP / SIGCONT
    await cluster.set_faults(1, drop_to=[2])   # through the transport's fault filter
    cluster.start(leader)                      # restart (same data dir: WAL replay)
    cluster.stop_all()

Every node runs with `--allow-fault-injection`, its own data directory (a durable WAL) and a log
file `n<ID>.log` in the cluster directory; each start appends a marker line to that log so the
incarnations can be told apart. Faults on the network go through the ADMIN message that switches
the node's UDP fault filter (engine.aio.udp.UdpTransport.set_fault_filter): authenticated with
the cluster key like all traffic, and obeyed only because the nodes run with fault injection
allowed.

Network namespaces (`netns=True`, Linux, root): each node runs in its own namespace
(`ip netns exec`) with a veth pair into a bridge in the caller's namespace, and `link_down(ids)`
sets the host side of those nodes' veth down: a partition made by the kernel, not by our own
transport, so it also cuts traffic the fault filter would never see (the filter works on
messages the node chose to send). `netns_available()` tells whether this machine allows it.

Storage faults: `append_torn_tail(node_id)` (node stopped) appends a damaged copy of the WAL's
last record, as a crash in the middle of writing a save that was never acknowledged leaves it;
see the docstring for why the fault is not "flip a bit in the last real record".
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engine import errors
from engine.aio.client import Client
from engine.aio.local_cluster import free_udp_ports
from engine.messages import AdminOp

# The test hook engine.aio.udp reads: the node's wall clock stepped by this many seconds.
CLOCK_OFFSET_ENV = "ENGINE_TEST_CLOCK_OFFSET_S"
_WAL_FRAME = struct.Struct("<IIB")  # length, crc, type: engine.aio.wal's record frame


@dataclass(frozen=True)
class TornTail:
    """A damaged copy of a WAL record appended by ProcessCluster.append_torn_tail."""

    segment: str    # file name of the segment
    offset: int     # where the copy starts
    data: bytes     # what was written there
    kind: str       # "torn" (a prefix) or "bit-flip"


def torn_prefix_length(record: bytes, rng: random.Random) -> int:
    """A prefix length for a torn copy of `record`: at least its length field (non-zero) and
    ending before the record's last non-zero byte, so the zeros that follow it on disk cannot
    complete it into the whole record."""
    last_nonzero = len(record.rstrip(b"\0")) - 1
    return rng.randrange(4, last_nonzero) if last_nonzero > 4 else 4


def _reads_as_record(data: bytes) -> bool:
    """True if `data` starts with one whole record whose checksum verifies (engine.aio.wal's
    frame: crc32 over the length field, the type byte and the body)."""
    if len(data) < _WAL_FRAME.size:
        return False
    length, crc, _ = _WAL_FRAME.unpack_from(data)
    end = _WAL_FRAME.size + length
    return end <= len(data) and zlib.crc32(data[_WAL_FRAME.size:end], zlib.crc32(
        data[:4] + data[8:9])) == crc


def _bytes_at(path: Path, tail: TornTail) -> bytes:
    """The bytes of `path` where `tail` was written, as long as the record its length field
    claims (b"" if the file is gone or ends before the offset)."""
    if not path.exists():
        return b""
    length = max(len(tail.data), _WAL_FRAME.size + _WAL_FRAME.unpack_from(
        tail.data.ljust(_WAL_FRAME.size, b"\0"))[0])
    with open(path, "rb") as stream:
        stream.seek(tail.offset)
        return stream.read(length)


def _recovered_key(state: Any) -> tuple[Any, ...]:
    return (state.hard_state, state.first_index, state.snapshot_index, state.snapshot_term,
            [(e.index, e.term, e.kind, bytes(e.data)) for e in state.entries])


def netns_available() -> bool:
    """True if this process may create network namespaces (Linux, root, `ip` present)."""
    if sys.platform != "linux" or os.geteuid() != 0 or shutil.which("ip") is None:
        return False
    name = f"engprobe{os.getpid()}"
    created = subprocess.run(["ip", "netns", "add", name], capture_output=True).returncode == 0
    if created:
        subprocess.run(["ip", "netns", "del", name], capture_output=True)
    return created


def _ip(*args: str) -> None:
    result = subprocess.run(["ip", *args], capture_output=True, text=True)
    if result.returncode != 0:
        raise errors.ConfigError(f"ip {' '.join(args)} failed: {result.stderr.strip()}")


class _Netns:
    """One bridge in our namespace and one namespace + veth pair per node (see module doc)."""

    def __init__(self, node_ids: list[int], rng: random.Random) -> None:
        tag = f"{os.getpid() % 10000}{rng.randrange(100, 1000)}"
        self.bridge = f"ebr{tag}"
        self.subnet = f"10.{rng.randrange(64, 250)}.{rng.randrange(1, 250)}"
        self.names = {i: f"eng{tag}n{i}" for i in node_ids}
        self.host_links = {i: f"ev{tag}h{i}" for i in node_ids}
        self.addresses = {i: f"{self.subnet}.{i}" for i in node_ids}
        self.created: list[str] = []

    def create(self) -> None:
        _ip("link", "add", self.bridge, "type", "bridge")
        self.created.append(self.bridge)
        _ip("addr", "add", f"{self.subnet}.254/24", "dev", self.bridge)
        _ip("link", "set", self.bridge, "up")
        for node_id, ns in self.names.items():
            host, peer = self.host_links[node_id], f"ev{ns[3:]}p"
            _ip("netns", "add", ns)
            self.created.append(ns)
            _ip("link", "add", host, "type", "veth", "peer", "name", peer)
            _ip("link", "set", peer, "netns", ns)
            _ip("link", "set", host, "master", self.bridge)
            _ip("link", "set", host, "up")
            _ip("-n", ns, "addr", "add", f"{self.addresses[node_id]}/24", "dev", peer)
            _ip("-n", ns, "link", "set", peer, "up")
            _ip("-n", ns, "link", "set", "lo", "up")

    def set_link(self, node_id: int, up: bool) -> None:
        _ip("link", "set", self.host_links[node_id], "up" if up else "down")

    def destroy(self) -> None:
        for name in reversed(self.created):
            if name == self.bridge:
                subprocess.run(["ip", "link", "del", name], capture_output=True)
            else:  # deleting the namespace deletes its veth end, and with it the pair
                subprocess.run(["ip", "netns", "del", name], capture_output=True)
        self.created.clear()


class ProcessCluster:
    """n `serve` processes with WALs under `directory` (see the module docstring)."""

    def __init__(self, directory: Path, n: int = 3, protocol: str = "raft", *,
                 netns: bool = False, seed: int = 0, python: str = sys.executable,
                 extra_env: dict[str, str] | None = None) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.n = n
        self.protocol = protocol
        self.python = python
        self.env = {**os.environ, **(extra_env or {})}
        self.key = os.urandom(32)
        self.key_file = self.directory / "cluster.key"
        self.key_file.write_text(self.key.hex())
        node_ids = list(range(1, n + 1))
        self._netns: _Netns | None = None
        if netns:
            self._netns = _Netns(node_ids, random.Random(seed))
            self._netns.create()
            hosts = self._netns.addresses
            ports = dict.fromkeys(node_ids, 7000)
        else:
            hosts = dict.fromkeys(node_ids, "127.0.0.1")
            ports = dict(zip(node_ids, free_udp_ports(n), strict=True))
        self.members = {i: f"{hosts[i]}:{ports[i]}" for i in node_ids}
        self.members_arg = ",".join(f"{i}={a}" for i, a in self.members.items())
        self.processes: dict[int, subprocess.Popen[bytes]] = {}
        self.paused: set[int] = set()
        self.starts: dict[int, int] = dict.fromkeys(node_ids, 0)
        self.exit_codes: list[tuple[int, int]] = []  # (node, code) of processes that ended
        self.impostor: tuple[str, subprocess.Popen[bytes]] | None = None   # start_impostor
        self.impostor_starts = 0

    # ------------------------------------------------------------------ processes

    @property
    def node_ids(self) -> list[int]:
        return list(self.members)

    def log_path(self, node_id: int) -> Path:
        return self.directory / f"n{node_id}.log"

    def data_dir(self, node_id: int) -> Path:
        return self.directory / f"n{node_id}"

    def start(self, node_id: int, *, clock_offset_s: float = 0.0) -> None:
        """Start (or restart) a node on its data directory; its log is appended to.
        clock_offset_s steps the wall clock the node reads (engine.aio.udp.wall_clock_ns)."""
        if node_id in self.processes:
            raise errors.ConfigError(f"node {node_id} is already running")
        self.starts[node_id] += 1
        command = self._serve_command(node_id, self.members_arg, self.data_dir(node_id))
        if self._netns is not None:
            command = ["ip", "netns", "exec", self._netns.names[node_id], *command]
        env = {**self.env, CLOCK_OFFSET_ENV: str(clock_offset_s)} if clock_offset_s else None
        self.processes[node_id] = self._spawn(
            command, self.log_path(node_id),
            f"start {self.starts[node_id]} of node {node_id}", env)

    def _serve_command(self, node_id: int, members_arg: str, data_dir: Path) -> list[str]:
        return [
            self.python, "-m", "engine", "-v", "serve", "--node-id", str(node_id),
            "--members", members_arg, "--cluster-key-file", str(self.key_file),
            "--data-dir", str(data_dir), "--protocol", self.protocol,
            "--allow-fault-injection",
        ]

    def _spawn(self, command: list[str], log_path: Path, what: str,
               env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        with open(log_path, "ab") as log:
            log.write(f"=== harness: {what} at {time.time():.3f} ===\n".encode())
            log.flush()
            # The child keeps its own descriptor of the log; ours closes with the block.
            return subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                    env=env or self.env)

    def start_impostor(self, node_id: int, members: dict[int, str]) -> str:
        """Start a node that is NOT one of the cluster's: id `node_id` (a member's id reused),
        the cluster's key, a fresh data directory and the wrong member list `members` (its
        own entry is its address; the others may be real members' addresses). It stays out
        of node_ids, running() and the checks; stop it with stop_impostor(). Returns its
        address."""
        if self.impostor is not None:
            raise errors.ConfigError("an impostor is already running")
        self.impostor_starts += 1
        data_dir = self.directory / f"impostor{self.impostor_starts}"
        members_arg = ",".join(f"{i}={a}" for i, a in members.items())
        command = self._serve_command(node_id, members_arg, data_dir)
        process = self._spawn(command, self.directory / "impostor.log",
                              f"impostor {self.impostor_starts} as node {node_id}, members "
                              f"{members_arg}")
        self.impostor = (members[node_id], process)
        return members[node_id]

    def stop_impostor(self) -> None:
        """kill -9 the impostor (its data directory stays, for the record)."""
        if self.impostor is not None:
            _, process = self.impostor
            process.send_signal(signal.SIGKILL)
            process.wait()
            self.impostor = None

    def start_all(self) -> None:
        for node_id in self.node_ids:
            if node_id not in self.processes:
                self.start(node_id)

    def running(self) -> list[int]:
        return [i for i in self.node_ids if i in self.processes]

    def kill(self, node_id: int) -> None:
        """kill -9: no shutdown code runs; what was fsynced survives, nothing else matters
        (a process's unsynced writes are in the page cache and survive it too)."""
        process = self.processes.pop(node_id)
        process.send_signal(signal.SIGKILL)
        process.wait()
        self.paused.discard(node_id)

    def pause(self, node_id: int) -> None:
        self.processes[node_id].send_signal(signal.SIGSTOP)
        self.paused.add(node_id)

    def resume(self, node_id: int) -> None:
        if node_id in self.paused and node_id in self.processes:
            self.processes[node_id].send_signal(signal.SIGCONT)
        self.paused.discard(node_id)

    def crashed(self) -> list[tuple[int, int]]:
        """Nodes whose process ended on its own (not killed by us): (node, exit code)."""
        ended = []
        for node_id, process in list(self.processes.items()):
            code = process.poll()
            if code is not None:
                ended.append((node_id, code))
                del self.processes[node_id]
                self.exit_codes.append((node_id, code))
        return ended

    def stop_all(self) -> None:
        """SIGTERM (a clean stop), SIGKILL after 5 s; then remove any network namespaces."""
        self.stop_impostor()
        for node_id in list(self.processes):
            self.resume(node_id)
        for process in self.processes.values():
            if process.poll() is None:
                process.terminate()
        for node_id, process in list(self.processes.items()):
            try:
                code = process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                process.kill()
                code = process.wait()
            self.exit_codes.append((node_id, code))
            del self.processes[node_id]
        if self._netns is not None:
            self._netns.destroy()

    # ------------------------------------------------------------------ clients and status

    def client(self, addresses: list[str] | None = None, **options: Any) -> Client:
        return Client(addresses or list(self.members.values()), cluster_key=self.key, **options)

    async def statuses(self, wait: float = 0.3) -> dict[int, dict[str, Any]]:
        """Status of every running, unpaused node that answers within `wait` seconds."""
        async with self.client(attempt_timeout=wait / 4) as client:
            ids = [i for i in self.running() if i not in self.paused]
            answers = await asyncio.gather(
                *(client.status(self.members[i]) for i in ids), return_exceptions=True)
        return {i: a for i, a in zip(ids, answers, strict=True) if isinstance(a, dict)}

    async def wait_serving(self, node_ids: list[int], timeout: float = 30.0) -> list[int]:
        """Wait until each of `node_ids` that is running answers STATUS (a restarted Python
        process takes seconds to serve on a loaded 2-core machine); returns those that never
        did within `timeout`."""
        deadline = time.monotonic() + timeout
        waiting = [i for i in node_ids if i in self.processes]
        while waiting and time.monotonic() < deadline:
            answered = await self.statuses(wait=0.5)
            waiting = [i for i in waiting if i not in answered and i in self.processes]
            if waiting:
                await asyncio.sleep(0.1)
        return waiting

    async def find_leader(self) -> int | None:
        """The node that says it leads in the highest term (a deposed leader in a minority
        may still say so in an older term), or None."""
        best: tuple[int, int] | None = None
        for node_id, status in (await self.statuses()).items():
            if status.get("role") == "leader":
                term = int(status.get("term", status.get("ballot", 0)) or 0)
                if best is None or term > best[0]:
                    best = (term, node_id)
        return None if best is None else best[1]

    async def leader_id(self, timeout: float = 10.0) -> int:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            leader = await self.find_leader()
            if leader is not None:
                return leader
            await asyncio.sleep(0.05)
        raise errors.Timeout(f"no leader within {timeout} s")

    # ------------------------------------------------------------------ network faults

    async def _admin(self, node_id: int, op: int, spec: dict[str, Any] | None,
                     attempts: int = 5) -> bool:
        """Send an ADMIN op; retried because a lossy filter may drop the answer. False if the
        node never answered (dead or paused); raises Rejected if it refused."""
        async with self.client(attempt_timeout=0.2) as client:
            for _ in range(attempts):
                try:
                    await client.admin(self.members[node_id], op, spec)
                    return True
                except errors.Timeout:
                    continue
        return False

    async def set_faults(self, node_id: int, *, drop_to: list[int] | None = None,
                         drop_from: list[int] | None = None, loss: float = 0.0,
                         duplicate: float = 0.0, delay_ms: float = 0.0, jitter_ms: float = 0.0,
                         seed: int = 0) -> bool:
        spec = {"drop_to": sorted(drop_to or []), "drop_from": sorted(drop_from or []),
                "loss": loss, "duplicate": duplicate, "delay_ms": delay_ms,
                "jitter_ms": jitter_ms, "seed": seed}
        return await self._admin(node_id, AdminOp.SET_FAULTS, spec)

    async def set_tick_scale(self, node_id: int, scale: float) -> bool:
        """Clock-rate skew: the node's tick interval times `scale` (> 1 its logical clock runs
        slow, < 1 fast); its network fault filter is left as it is. clear_faults resets it."""
        return await self._admin(node_id, AdminOp.SET_FAULTS, {"tick_scale": scale})

    async def clear_faults(self, node_id: int) -> bool:
        return await self._admin(node_id, AdminOp.CLEAR_FAULTS, None)

    async def partition(self, groups: list[list[int]]) -> None:
        """Nodes hear only nodes of their own group (a node in no group is unaffected)."""
        for group in groups:
            others = [i for g in groups if g is not group for i in g]
            for node_id in group:
                if node_id in self.processes:
                    await self.set_faults(node_id, drop_to=others, drop_from=others)

    def link_down(self, node_ids: list[int], down: bool = True) -> None:
        """netns only: cut (or restore) each node's link to the bridge."""
        if self._netns is None:
            raise errors.ConfigError("link_down needs ProcessCluster(netns=True)")
        for node_id in node_ids:
            self._netns.set_link(node_id, not down)

    @property
    def uses_netns(self) -> bool:
        return self._netns is not None

    # ------------------------------------------------------------------ storage faults

    def append_torn_tail(self, node_id: int, rng: random.Random) -> TornTail | None:
        """Append a damaged copy of the last record of the node's last WAL segment; return
        what was appended (None if the segment has no clean tail to append to). The node must
        not be running.

        What this simulates: a crash while the WAL was writing a save that nobody has seen
        acknowledged — either torn (a prefix of the record reached the disk) or with a flipped
        bit (the checksum fails). The WAL must cut it at start and lose nothing else.

        Why a copy and not the last real record: every record a killed process wrote has
        reached the page cache, which survives kill -9, and from outside we cannot tell
        whether its fsync returned and its acknowledgements (append acks, votes) went out.
        Damaging it could erase a vote or an acknowledged entry, a fault Raft and Paxos do
        not claim to survive. For the same reason "loss of unsynced writes" cannot be
        produced with kill -9 at all (it needs a machine crash or a lazyfs-like filesystem).

        The torn prefix always stops before the record's last non-zero byte: the tail is
        written over preallocated zeros, so a prefix that lacks only zero bytes would be
        completed by them into a valid copy, not a torn record.
        """
        if node_id in self.processes:
            raise errors.ConfigError(f"node {node_id} is running")
        segments = sorted(self.data_dir(node_id).glob("wal-*.log"))
        if not segments:
            return None
        path = segments[-1]
        data = path.read_bytes()
        offset, last = 0, None
        while offset + _WAL_FRAME.size <= len(data):
            length = _WAL_FRAME.unpack_from(data, offset)[0]
            if length == 0:
                break   # the preallocated zeros after the last record
            end = offset + _WAL_FRAME.size + length
            if end > len(data):
                break
            last = (offset, end)
            offset = end
        if last is None or data[offset:].strip(b"\0"):
            return None  # not a clean tail: leave it to the WAL's own checks
        record = bytearray(data[last[0]:last[1]])
        torn = rng.random() < 0.5
        if torn:
            tail = bytes(record[:torn_prefix_length(bytes(record), rng)])
        else:
            # Flipped bit anywhere but the length field (a shorter length would make the record
            # end before end of file: corruption by design, not a torn tail; wal.py docstring).
            position = rng.randrange(4, len(record))
            record[position] ^= 1 << rng.randrange(8)
            tail = bytes(record)
        with open(path, "r+b") as stream:
            stream.seek(offset)   # right after the last record, over preallocated zeros
            stream.write(tail)
            stream.flush()
            os.fsync(stream.fileno())
        return TornTail(path.name, offset, tail, "torn" if torn else "bit-flip")

    def check_torn_tail(self, node_id: int, tail: TornTail,
                        before: Any) -> str | None:
        """Open a COPY of the node's WAL (engine.aio.wal) after append_torn_tail and say what
        is wrong, or None: the WAL must recover exactly what it recovered before the damage
        (`before`, from recovered_state) and no longer hold the damaged bytes in the segment
        (cut, zeroed or moved aside: the mechanism is the WAL's). A tail the WAL reads as a
        valid record is a duplicate of the last save, harmless if the recovered state is
        unchanged (a save replaces the stored suffix from its first index, Raft §5.3)."""
        state, on_disk = self.recovered_state(
            node_id, keep_open=lambda copy: _bytes_at(copy / tail.segment, tail))
        if _recovered_key(state) != _recovered_key(before):
            return (f"{tail.kind} tail of {len(tail.data)} bytes at {tail.segment}:"
                    f"{tail.offset}: the WAL recovered a different state (last index "
                    f"{before.last_index} -> {state.last_index}, hard state "
                    f"{before.hard_state} -> {state.hard_state})")
        damage = tail.data.rstrip(b"\0")
        if not on_disk.startswith(damage) or _reads_as_record(on_disk):
            return None   # cut, zeroed or moved aside; or a valid duplicate, replayed above
        return (
            f"{tail.kind} tail of {len(tail.data)} bytes at {tail.segment}:{tail.offset} "
            "is still in the segment after the WAL opened it")

    def recovered_state(self, node_id: int,
                        keep_open: Callable[[Path], bytes] | None = None) -> Any:
        """Open a COPY of the node's WAL and return what it recovers (with keep_open: also
        keep_open(copy directory) evaluated after the open, as a pair)."""
        from engine.aio.wal import WriteAheadLog

        with tempfile.TemporaryDirectory() as scratch:
            copy = Path(scratch) / "wal"
            shutil.copytree(self.data_dir(node_id), copy)
            # Not preallocated: the copy is read once, its segment needs no reserved space.
            wal = WriteAheadLog(str(copy), preallocate=False)
            try:
                state = wal.open()
            finally:
                with contextlib.suppress(Exception):
                    wal.close()
            return state if keep_open is None else (state, keep_open(copy))

    # ------------------------------------------------------------------ logs

    def log_text(self, node_id: int) -> str:
        path = self.log_path(node_id)
        return path.read_text(errors="replace") if path.exists() else ""
