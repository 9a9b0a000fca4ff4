"""Support for the hostile-network tests and bench/bench_hostile.py (no tests here).

An `Attacker` is a raw UDP socket aimed at one live node. It sends hostile datagrams in bursts
and, after each burst, waits until the node's transport has read every one of them
(`stats()["datagrams_received"]`, less the honest datagrams delivered meanwhile). That flow
control is what makes the accounting exact: without
it a tight sendto loop in the node's own process outruns the receive loop, the kernel drops
the excess silently (the transport never sees it) and "0 accepted" would be vacuous for those.

Generators build the four kinds of hostile traffic (anchors-testing.md
"Hostile UDP"): random datagrams, bit-flipped valid frames, replayed genuine frames and
oversized datagrams. Valid frames are built with the cluster key as a client or a peer would
(engine._core.codec.FrameCodec), in shapes that WOULD change state if a corrupted copy were
ever accepted: appends at a high term, votes, client writes, admin fault-injection requests.
"""

from __future__ import annotations

import asyncio
import random
import socket
import struct
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

from engine._core import codec
from engine.messages import AdminOp, ClientOp, EntryKind, Message, MessageType

Address = tuple[str, int]

WIRE_VERSION = codec.WIRE_VERSION   # plausible headers reach the tag check
FRAME_KINDS = (1, 2)             # messages, fragment (codec_py docstring)
MAX_UDP_PAYLOAD = 65_507         # largest IPv4 UDP payload; sendto refuses more
HEADER = struct.Struct("<BBQQQQQ")  # version, kind, cluster id, sender, epoch, counter, receiver

# Flow control: datagrams (and bytes) in flight before waiting for the node to count them.
# The node's socket asks for 4 MiB of receive buffer (udp.SOCKET_BUFFER_BYTES, which Linux
# doubles for bookkeeping); a burst stays well inside it so the kernel never drops one.
BURST_DATAGRAMS = 256
BURST_BYTES = 1 << 20
DRAIN_TIMEOUT_S = 20.0


# ---------------------------------------------------------------------- the socket


def kernel_drops(port: int) -> int | None:
    """The kernel's drop count of the UDP socket bound to `port` (/proc/net/udp, last
    column), or None where that file does not exist."""
    try:
        with open("/proc/net/udp") as table:
            lines = table.read().splitlines()[1:]
    except OSError:
        return None
    for line in lines:
        fields = line.split()
        if int(fields[1].rsplit(":", 1)[1], 16) == port:
            return int(fields[-1])
    return None


def receive_queue_bytes(port: int) -> int | None:
    """Bytes waiting in the receive queue of the UDP socket bound to `port` (/proc/net/udp,
    rx_queue), or None where that file does not exist: 0 once the node has read everything."""
    try:
        with open("/proc/net/udp") as table:
            lines = table.read().splitlines()[1:]
    except OSError:
        return None
    for line in lines:
        fields = line.split()
        if int(fields[1].rsplit(":", 1)[1], 16) == port:
            return int(fields[4].split(":")[1], 16)
    return None


class Attacker:
    """A raw UDP socket sending hostile datagrams to one node's transport (see the module
    docstring). It also wraps the transport's on_messages callback and records every delivery
    whose source is this socket: `accepted` must stay empty. One attacker per node at a time.
    """

    def __init__(self, transport: Any, host: str = "127.0.0.1") -> None:
        self.transport = transport
        self.target: Address = transport.address
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
        self.sock.bind((host, 0))
        self.address: Address = self.sock.getsockname()
        self.sent = 0
        self.bytes_sent = 0
        self.accepted: list[tuple[list[Any], Address]] = []
        self.honest_deliveries = 0
        self._kernel_drops_at_start = kernel_drops(self.target[1])
        self._received_at_start = transport.stats()["datagrams_received"]
        self._on_messages = transport.on_messages
        transport.on_messages = self._record

    def _record(self, messages: list[Any], address: Address) -> None:
        if tuple(address) == self.address:
            self.accepted.append((messages, address))
        else:
            self.honest_deliveries += 1
        self._on_messages(messages, address)

    def close(self) -> None:
        self.transport.on_messages = self._on_messages
        self.sock.close()

    async def send_all(self, datagrams: Iterable[bytes]) -> None:
        """Send every datagram; waits after each burst until the node has read it."""
        sendto = self.sock.sendto
        target = self.target
        in_burst = 0
        burst_bytes = 0
        for datagram in datagrams:
            sendto(datagram, target)
            self.sent += 1
            self.bytes_sent += len(datagram)
            in_burst += 1
            burst_bytes += len(datagram)
            if in_burst >= BURST_DATAGRAMS or burst_bytes >= BURST_BYTES:
                await self.drain()
                in_burst = burst_bytes = 0
        await self.drain()

    def handled(self) -> int:
        """Hostile datagrams the node has read so far, whatever it did with them: everything
        it received since this attacker started, less the honest datagrams it delivered
        (exact while honest traffic is neither dropped nor fragmented: the tests assert the
        first, and their honest messages are far below a datagram)."""
        received = self.transport.stats()["datagrams_received"] - self._received_at_start
        return received - self.honest_deliveries

    async def drain(self) -> None:
        """Let the node's loop run until it has read everything sent."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + DRAIN_TIMEOUT_S
        while self.handled() < self.sent:
            if loop.time() > deadline:
                raise AssertionError(
                    f"node {self.transport.node_id} read {self.handled()} of {self.sent} "
                    f"hostile datagrams; the kernel dropped {self.kernel_dropped()}"
                )
            await asyncio.sleep(0)

    def kernel_dropped(self) -> int:
        """Datagrams the kernel dropped on the target's socket since this attacker started
        (0 where /proc/net/udp is missing); the flow control keeps it at 0."""
        now = kernel_drops(self.target[1])
        if now is None or self._kernel_drops_at_start is None:
            return 0
        return now - self._kernel_drops_at_start


class Sniffer:
    """Records the genuine datagrams each node writes (wrapping UdpTransport._sendto on the
    instance), keyed by destination address, for replaying them verbatim later."""

    def __init__(self, transports: Iterable[Any], per_destination: int = 2_000) -> None:
        self.per_destination = per_destination
        self.captured: dict[Address, list[bytes]] = {}
        self._transports = list(transports)
        for transport in self._transports:
            transport._sendto = self._wrap(transport._sendto)

    def _wrap(self, sendto: Any) -> Any:
        def recording(data: bytes, address: Address) -> None:
            frames = self.captured.setdefault((str(address[0]), int(address[1])), [])
            if len(frames) < self.per_destination:
                frames.append(bytes(data))
            sendto(data, address)

        return recording

    def stop(self) -> None:
        for transport in self._transports:
            del transport._sendto  # the class method again


# ---------------------------------------------------------------------- generators


def genuine_pool(frame_codec: Any, rng: random.Random, members: Sequence[int]) -> list[bytes]:
    """Valid frames (about 60 B to 16 KB) as a client or a peer would send them. Every one
    would change state or do work if accepted: that is what a surviving bit flip would hit."""
    leader = members[0]
    shapes: list[tuple[int, list[Any]]] = [
        (leader, [Message(MessageType.APPEND, src=leader, term=1 << 40, log_term=1, index=1,
                          commit=10, entries=[_entry(1 << 40, i) for i in range(2, 6)])]),
        (leader, [Message(MessageType.HEARTBEAT, src=leader, term=1 << 40, commit=1 << 30)]),
        (members[1], [Message(MessageType.VOTE, src=members[1], term=1 << 41, log_term=1 << 41,
                              index=1 << 41)]),
        (members[1], [Message(MessageType.TIMEOUT_NOW, src=members[1], term=1 << 41)]),
        (7, [Message(MessageType.CLIENT_REQUEST, src=7, seq=1, status=ClientOp.WRITE,
                     context=b"\x01\x01\x00\x00\x00\x00\x01k\x01\x00\x00\x00v")]),
        (7, [Message(MessageType.ADMIN, src=7, seq=2, status=AdminOp.SET_FAULTS,
                     context=b'{"loss": 1.0}')]),
        (leader, [Message(MessageType.APPEND, src=leader, term=1 << 40, log_term=1, index=1,
                          entries=[_entry(1 << 40, 2, rng.randbytes(16_000))])]),
        (leader, [Message(MessageType.HEARTBEAT, src=leader, term=1 << 40, commit=k)
                  for k in range(1, 65)]),
        # Many consensus groups in one frame: every varint length of the group id.
        (leader, [Message(MessageType.HEARTBEAT, src=leader, term=1 << 40, commit=k,
                          group=(1 << (k % 64)) - 1) for k in range(1, 65)]),
        (leader, [Message(MessageType.APPEND, src=leader, term=1 << 40, log_term=1, index=1,
                          group=(1 << 64) - 1, entries=[_entry(1 << 40, 2)])]),
    ]
    frames = [
        frame_codec.encode(sender, 1 << 62, counter, messages)
        for counter, (sender, messages) in enumerate(shapes, start=1)
    ]
    frames.append(frame_codec.encode_fragment(leader, 1 << 62, 100, 5, 0, 2, rng.randbytes(900)))
    frames.append(frame_codec.encode_fragment(leader, 1 << 62, 101, 5, 1, 2, b"tail"))
    return frames


def _entry(term: int, index: int, data: bytes = b"\x01\x01\x00") -> Any:
    from engine.messages import Entry

    return Entry(term, index, data, EntryKind.NORMAL)


def plausible_headers(cluster_id: int, members: Sequence[int]) -> list[bytes]:
    """Headers that pass every cheap check (version, kind, cluster id, receiver 0 = any), so a
    datagram that starts with one reaches the tag comparison: the expensive path an attacker
    would pick."""
    return [
        HEADER.pack(WIRE_VERSION, kind, cluster_id, sender, 1 << 62, counter, 0)
        for kind in FRAME_KINDS for sender in (*members, 7) for counter in (1, 1 << 40)
    ]


def random_datagrams(
    rng: random.Random, count: int, headers: Sequence[bytes], max_size: int = 1_400,
) -> Iterator[bytes]:
    """Random bytes of random length (0 included); every other one behind a plausible
    header, so half reach the tag check instead of failing on the version byte."""
    randbytes = rng.randbytes
    randrange = rng.randrange
    for number in range(count):
        body = randbytes(randrange(max_size))
        yield headers[number % len(headers)] + body if number % 2 else body


def flipped_frames(rng: random.Random, pool: Sequence[bytes], count: int) -> Iterator[bytes]:
    """A valid frame with 1 to 3 distinct bits flipped; none can pass the tag."""
    for _ in range(count):
        frame = pool[rng.randrange(len(pool))]
        damaged = bytearray(frame)
        for bit in rng.sample(range(len(frame) * 8), rng.randrange(1, 4)):
            damaged[bit >> 3] ^= 1 << (bit & 7)
        yield bytes(damaged)


def oversized_datagrams(
    rng: random.Random, count: int, headers: Sequence[bytes], max_datagram_bytes: int,
) -> Iterator[bytes]:
    """Datagrams above the node's max_datagram_bytes, up to the largest UDP payload; half
    behind a plausible header (a fragment one is refused by size, a messages one reaches the
    tag over ~64 KB: the most expensive refusal)."""
    for number in range(count):
        size = MAX_UDP_PAYLOAD if number % 4 == 0 else rng.randrange(
            max_datagram_bytes + 1, MAX_UDP_PAYLOAD + 1)
        if number % 2:
            header = headers[number % len(headers)]
            yield header + rng.randbytes(size - len(header))
        else:
            yield rng.randbytes(size)


def retired_version_frames(pool: Sequence[bytes], count: int) -> Iterator[bytes]:
    """Genuine frames stamped with the retired wire version 3 (a node of an older release):
    the version is checked before the tag, so each is one counted old_version drop."""
    for number in range(count):
        yield b"\x03" + pool[number % len(pool)][1:]


def replays(frames: Sequence[bytes], count: int) -> Iterator[bytes]:
    """`count` verbatim copies of already-delivered genuine frames, cycling through them."""
    for number in range(count):
        yield frames[number % len(frames)]


def client_frames(
    frame_codec: Any, client_id: int, epoch: int, first_seq: int,
    requests: Sequence[tuple[int, bytes]],
) -> list[bytes]:
    """One frame per (ClientOp, context) request, as engine.Client would send them."""
    return [
        frame_codec.encode(client_id, epoch, seq, [Message(
            MessageType.CLIENT_REQUEST, src=client_id, seq=seq, status=op, context=context,
            commit=1 << 16)])  # opts into replies up to 64 KiB, as engine.Client does
        for seq, (op, context) in enumerate(requests, start=first_seq)
    ]


def node_state(node: Any) -> dict[str, Any]:
    """Everything a hostile datagram must not change: Raft state, log, applied state."""
    core = node.core
    status = core.status()
    return {
        "role": core.role,
        "term": core.term,
        "leader_id": core.leader_id,
        "commit_index": core.commit_index,
        "last_index": status.get("last_index"),
        "applied_index": node.status()["applied_index"],
        "kv": node.state_machine.snapshot(),
    }


def new_codec(cluster_key: bytes, cluster_id: int = 0, local_id: int = 0) -> Any:
    return codec.FrameCodec(cluster_key, cluster_id, local_id=local_id)


# The drop reasons of a datagram the codec refuses (engine.aio.udp.DROP_REASONS): a hostile
# datagram lands in one of them depending on which header check fires first.
DECODE_REASONS = ("decode_error", "old_version", "wrong_receiver", "wrong_mode")


def decode_drops(deltas: dict[str, int]) -> dict[str, int]:
    """`deltas` with the codec's refusal reasons summed under "decode_error"."""
    merged = {k: v for k, v in deltas.items() if k not in DECODE_REASONS}
    total = sum(deltas.get(reason, 0) for reason in DECODE_REASONS)
    if total:
        merged["decode_error"] = total
    return merged
