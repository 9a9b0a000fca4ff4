#!/usr/bin/env python
"""UDP transport measurements on loopback: which endpoint API carries the hot path.

Run:  python bench/bench_transport.py                 # everything, ~1 minute
      python bench/bench_transport.py --only raw      # bare protocol vs asyncio-dgram
      python bench/bench_transport.py --only transport --seconds 2

Method. A client and an echo server run in two OS processes (one core each on a 2-core box),
each on a fresh event loop of the kind under test (uvloop or stock asyncio), talking over
127.0.0.1 with SO_RCVBUF/SO_SNDBUF raised to 4 MiB. The client keeps a fixed window of
datagrams in flight: every reply releases the next request, so the rate is what the
endpoint API can sustain, not what the kernel drops. A watchdog refills the window if it
stalls (a lost datagram) and the losses are reported; on loopback they are 0.

  rtt         100-byte request, 100-byte echo, 32 in flight -> round trips/s and the
              per-request latency (send -> matching reply) p50/p99
  throughput  32 KiB request, 8-byte ack, 32 in flight -> MB/s one way
  transport   engine.aio.udp.UdpTransport <-> UdpTransport echo with `--batch` messages of
              `--message-bytes` each per request (authenticated frames, replay window), vs a
              bare DatagramProtocol echo of datagrams of the same encoded size and the same
              window -> messages/s; the ratio is the transport's own cost. The transport
              may pack several requests (or echoes) of one loop turn into one datagram: that
              batching is part of what it is for. "transport-flush" calls flush() after each
              request and echo, so it sends exactly the bare echo's datagrams: the ratio of
              the two is the per-datagram cost of framing, authentication and the replay
              window; "transport" is the transport as the engine uses it

Implementations: "protocol" is a bare asyncio.DatagramProtocol whose datagram_received
replies inline; "asyncio-dgram" is the declared dependency's stream API (an asyncio.Queue
and an awaited send per datagram), used the way its README shows.

Each cell is the median of --repeats runs of --seconds each after a warm-up run.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing as mp
import os
import platform
import socket
import statistics
import sys
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from typing import Any

if __package__ in (None, ""):  # run as a script from the repository root or bench/
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from engine.aio.loop import new_event_loop, uvloop_available  # noqa: E402

SOCKET_BUFFER_BYTES = 4 * 1024 * 1024
HOST = "127.0.0.1"
WATCHDOG_S = 0.25
STALL_S = 10.0  # a run that has not ended this long after its deadline is an error
CHECK_EVERY = 256  # receives between deadline checks


def make_socket() -> socket.socket:
    """A non-blocking UDP socket on 127.0.0.1:0 with 4 MiB buffers (best effort)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    for option in (socket.SO_RCVBUF, socket.SO_SNDBUF):
        try:
            sock.setsockopt(socket.SOL_SOCKET, option, SOCKET_BUFFER_BYTES)
        except OSError:
            pass
    sock.bind((HOST, 0))
    sock.setblocking(False)
    return sock


# --------------------------------------------------------------------------- server side


class EchoProtocol(asyncio.DatagramProtocol):
    """Replies inline from datagram_received: `reply` if given, else the datagram itself."""

    def __init__(self, reply: bytes | None) -> None:
        self.reply = reply
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        assert self.transport is not None
        self.transport.sendto(data if self.reply is None else self.reply, addr)


async def serve_protocol(sock: socket.socket, reply: bytes | None, stop: asyncio.Event) -> None:
    loop = asyncio.get_running_loop()
    transport, _ = await loop.create_datagram_endpoint(lambda: EchoProtocol(reply), sock=sock)
    await stop.wait()
    transport.close()


async def serve_dgram(sock: socket.socket, reply: bytes | None, stop: asyncio.Event) -> None:
    import asyncio_dgram

    stream: Any = await asyncio_dgram.from_socket(sock)

    async def echo() -> None:
        while True:
            data, addr = await stream.recv()
            await stream.send(data if reply is None else reply, addr)

    task = asyncio.ensure_future(echo())
    await stop.wait()
    task.cancel()
    stream.close()


def server_main(impl: str, loop_kind: str, reply_size: int, conn: Connection) -> None:
    """Child process: bind, report the port, echo until the parent writes to `conn`."""
    loop = new_event_loop(loop_kind)
    asyncio.set_event_loop(loop)
    reply = None if reply_size < 0 else b"a" * reply_size

    async def main() -> None:
        stop = asyncio.Event()
        loop.add_reader(conn.fileno(), stop.set)
        if impl.startswith("transport"):
            await serve_transport_bound(conn, stop, flush_each=impl == "transport-flush")
        else:
            sock = make_socket()
            conn.send(sock.getsockname()[1])
            serve = serve_protocol if impl == "protocol" else serve_dgram
            await serve(sock, reply, stop)
        loop.remove_reader(conn.fileno())

    try:
        loop.run_until_complete(main())
    finally:
        loop.close()


async def serve_transport_bound(conn: Connection, stop: asyncio.Event, flush_each: bool) -> None:
    """UdpTransport echo: each batch received is answered by a batch of the same shape
    (src and dst swapped, built once per shape: the cost measured is the transport's).
    flush_each writes each echo at once: one datagram per request, like the bare echo."""
    from engine.aio.udp import UdpTransport

    transport: UdpTransport
    replies: dict[tuple[int, int], list[Any]] = {}

    def on_messages(messages: list[Any], source: tuple[str, int]) -> None:
        first = messages[0]
        reply = replies.get((first.src, len(messages)))
        if reply is None:
            reply = replies[(first.src, len(messages))] = [
                swapped(m) for m in messages]
        transport.send_to_address(source, reply)
        if flush_each:
            transport.flush()

    transport = UdpTransport(
        node_id=1, bind_address=(HOST, 0), peers={}, cluster_key=BENCH_KEY,
        on_messages=on_messages,
    )
    await transport.start()
    conn.send(transport.address[1])
    await stop.wait()
    transport.close()


def swapped(message: Any) -> Any:
    from engine.messages import Message

    return Message(message.type, src=message.dst, dst=message.src, term=message.term,
                   index=message.index, context=message.context)


BENCH_KEY = b"bench-transport-cluster-key-32by"
# The echo client is not a member of the echo node's cluster: a client id (engine.types).
BENCH_CLIENT_ID = (1 << 32) + 2


# --------------------------------------------------------------------------- client side


@dataclass
class Window:
    """Client bookkeeping shared by every client flavour: a fixed window of requests."""

    window: int
    seconds: float
    sent_at: deque[float] = field(default_factory=deque)
    latencies: list[float] = field(default_factory=list)
    received: int = 0
    lost: int = 0
    started: float = 0.0
    finished: float = 0.0
    deadline: float = 0.0

    def begin(self) -> None:
        self.started = time.perf_counter()
        self.deadline = self.started + self.seconds

    def on_reply(self, count: int = 1) -> bool:
        """Record `count` replies; True when the run is over."""
        now = time.perf_counter()
        for _ in range(min(count, len(self.sent_at))):
            self.latencies.append(now - self.sent_at.popleft())
        before = self.received
        self.received += count
        if self.received // CHECK_EVERY != before // CHECK_EVERY and now >= self.deadline:
            self.finished = now
            return True
        return False

    def stalled(self, seen: int) -> bool:
        """Watchdog check: no reply since the last check -> count the window as lost."""
        if self.received != seen or self.finished:
            return False
        self.lost += len(self.sent_at)
        self.sent_at.clear()
        return True


class WindowClientProtocol(asyncio.DatagramProtocol):
    def __init__(self, state: Window, payload: bytes, server: tuple[str, int]) -> None:
        self.state = state
        self.payload = payload
        self.server = server
        self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def send_one(self) -> None:
        assert self.transport is not None
        self.state.sent_at.append(time.perf_counter())
        self.transport.sendto(self.payload, self.server)

    def fill(self) -> None:
        for _ in range(self.state.window - len(self.state.sent_at)):
            self.send_one()

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        if self.done.done():
            return
        if self.state.on_reply():
            self.done.set_result(None)
        else:
            self.send_one()


async def watchdog(state: Window, refill: Callable[[], Any]) -> None:
    seen = -1
    while True:
        await asyncio.sleep(WATCHDOG_S)
        if state.stalled(seen):
            result = refill()
            if asyncio.iscoroutine(result):
                await result
        seen = state.received


async def run_protocol_client(state: Window, payload: bytes, server: tuple[str, int]) -> None:
    loop = asyncio.get_running_loop()
    transport, protocol = await loop.create_datagram_endpoint(
        lambda: WindowClientProtocol(state, payload, server), sock=make_socket())
    state.begin()
    protocol.fill()
    guard = asyncio.ensure_future(watchdog(state, protocol.fill))
    await asyncio.wait_for(protocol.done, state.seconds + STALL_S)
    guard.cancel()
    transport.close()


async def run_dgram_client(state: Window, payload: bytes, server: tuple[str, int]) -> None:
    import asyncio_dgram

    stream: Any = await asyncio_dgram.from_socket(make_socket())

    async def send_one() -> None:
        state.sent_at.append(time.perf_counter())
        await stream.send(payload, server)

    async def fill() -> None:
        for _ in range(state.window - len(state.sent_at)):
            await send_one()

    async def exchange() -> None:
        while True:
            await stream.recv()
            if state.on_reply():
                break
            await send_one()

    state.begin()
    await fill()
    guard = asyncio.ensure_future(watchdog(state, fill))
    await asyncio.wait_for(exchange(), state.seconds + STALL_S)
    guard.cancel()
    stream.close()


async def run_transport_client(
    state: Window, messages: list[Any], server: tuple[str, int], flush_each: bool,
) -> None:
    """`state.window` batches of `messages` in flight between two UdpTransports."""
    from engine.aio.udp import UdpTransport

    loop = asyncio.get_running_loop()
    done: asyncio.Future[None] = loop.create_future()
    client = UdpTransport(node_id=BENCH_CLIENT_ID, bind_address=(HOST, 0), peers={},
                          cluster_key=BENCH_KEY)

    def send_one() -> None:
        state.sent_at.append(time.perf_counter())
        client.send_to_address(server, messages)
        if flush_each:
            client.flush()

    def fill() -> None:
        for _ in range(state.window - len(state.sent_at)):
            send_one()

    def on_messages(batch: list[Any], source: tuple[str, int]) -> None:
        # The server's transport may coalesce several echoed batches into one datagram.
        if done.done():
            return
        replies = len(batch) // len(messages)
        if state.on_reply(replies):
            done.set_result(None)
        else:
            for _ in range(replies):
                send_one()

    client.on_messages = on_messages
    await client.start()
    state.begin()
    fill()
    guard = asyncio.ensure_future(watchdog(state, fill))
    await asyncio.wait_for(done, state.seconds + STALL_S)
    guard.cancel()
    client.close()


# --------------------------------------------------------------------------- orchestration


@dataclass
class Cell:
    test: str
    impl: str
    loop: str
    rate: float            # requests (or messages) per second, median of repeats
    rates: list[float]
    bytes_per_s: float
    p50_us: float
    p99_us: float
    lost: int


def percentile(values: list[float], fraction: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


@dataclass
class Server:
    impl: str
    process: Any
    pipe: Connection
    address: tuple[str, int]


def start_server(impl: str, loop_kind: str, reply_size: int) -> Server:
    context = mp.get_context("spawn")
    parent, child = context.Pipe()
    process = context.Process(
        target=server_main, args=(impl, loop_kind, reply_size, child), daemon=True)
    process.start()
    if not parent.poll(30):
        process.kill()
        raise RuntimeError(f"{impl} server did not start")
    return Server(impl, process, parent, (HOST, parent.recv()))


def stop_server(server: Server) -> None:
    server.pipe.send(b"stop")
    server.process.join(10)
    if server.process.is_alive():
        server.process.kill()


def run_client(impl: str, loop_kind: str, state: Window, request: bytes,
               address: tuple[str, int], messages: list[Any] | None) -> None:
    loop = new_event_loop(loop_kind)
    try:
        if impl == "protocol":
            loop.run_until_complete(run_protocol_client(state, request, address))
        elif impl == "asyncio-dgram":
            loop.run_until_complete(run_dgram_client(state, request, address))
        else:
            assert messages is not None
            loop.run_until_complete(run_transport_client(
                state, messages, address, flush_each=impl == "transport-flush"))
    finally:
        loop.close()


def measure(
    test: str, impls: list[str], loop_kind: str, *, request: bytes, reply_size: int,
    window: int, seconds: float, repeats: int, unit_per_reply: int = 1,
    messages: list[Any] | None = None,
) -> list[Cell]:
    """One server process per implementation; then a warm-up and `repeats` client runs of
    each, interleaved (A B A B ...) so a load change on the shared machine hits all alike."""
    servers = [start_server(impl, loop_kind, reply_size) for impl in impls]
    runs: dict[str, list[Window]] = {impl: [] for impl in impls}
    try:
        for attempt in range(repeats + 1):
            for server in servers:
                state = Window(window=window, seconds=seconds if attempt else min(seconds, 0.5))
                run_client(server.impl, loop_kind, state, request, server.address, messages)
                if attempt:
                    runs[server.impl].append(state)
    finally:
        for server in servers:
            stop_server(server)
    return [summarize(test, impl, loop_kind, runs[impl], len(request), unit_per_reply)
            for impl in impls]


def summarize(test: str, impl: str, loop_kind: str, runs: list[Window], request_bytes: int,
              unit_per_reply: int) -> Cell:
    rates = [r.received * unit_per_reply / (r.finished - r.started) for r in runs]
    middle = runs[rates.index(statistics.median_low(rates))]
    latencies = [x * 1e6 for x in middle.latencies]
    median_rate = statistics.median(rates)
    return Cell(
        test=test, impl=impl, loop=loop_kind, rate=median_rate, rates=rates,
        bytes_per_s=median_rate / unit_per_reply * request_bytes,
        p50_us=percentile(latencies, 0.50), p99_us=percentile(latencies, 0.99),
        lost=sum(r.lost for r in runs),
    )


def conditions(args: argparse.Namespace) -> str:
    from importlib.metadata import version

    cpu = platform.processor() or "?"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if "model name" in line)
    except (OSError, StopIteration):
        pass
    loops = f"uvloop {version('uvloop')}" if uvloop_available() else "uvloop missing"
    return (
        f"python {platform.python_version()} | {loops} | asyncio-dgram "
        f"{version('asyncio-dgram')} | {os.cpu_count()} x {cpu} | {platform.system()} "
        f"{platform.release()}\nloopback 127.0.0.1, client and server in separate processes, "
        f"SO_RCVBUF/SO_SNDBUF {SOCKET_BUFFER_BYTES >> 20} MiB, window {args.window} in flight, "
        f"median of {args.repeats} x {args.seconds:g} s after a warm-up"
    )


def print_table(title: str, cells: list[Cell], unit: str, show_bytes: bool) -> None:
    print(f"\n{title}")
    header = f"{'loop':<8} {'implementation':<22} {unit:>14} {'spread':>14}"
    header += f" {'MB/s':>8}" if show_bytes else f" {'p50 us':>8} {'p99 us':>8}"
    header += f" {'lost':>5} {'vs first':>9}"
    print(header)
    print("-" * len(header))
    baseline: dict[str, float] = {}
    for cell in cells:
        base = baseline.setdefault(cell.loop, cell.rate)
        spread = f"{min(cell.rates):,.0f}-{max(cell.rates):,.0f}"
        line = f"{cell.loop:<8} {cell.impl:<22} {cell.rate:>14,.0f} {spread:>14}"
        if show_bytes:
            line += f" {cell.bytes_per_s / 1e6:>8.1f}"
        else:
            line += f" {cell.p50_us:>8.1f} {cell.p99_us:>8.1f}"
        line += f" {cell.lost:>5} {cell.rate / base:>8.2f}x"
        print(line)


def transport_messages(batch: int, message_bytes: int) -> list[Any]:
    from engine.messages import Message, MessageType

    return [
        Message(MessageType.HEARTBEAT_RESPONSE, src=BENCH_CLIENT_ID, dst=1, term=7, index=i,
                context=b"m" * message_bytes)
        for i in range(batch)
    ]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", choices=["raw", "transport"], default=None)
    parser.add_argument("--seconds", type=float, default=1.0)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--window", type=int, default=32)
    parser.add_argument("--batch", default="1,32",
                        help="messages per transport request, comma-separated")
    parser.add_argument("--message-bytes", type=int, default=100)
    parser.add_argument("--loops", default="uvloop,asyncio")
    args = parser.parse_args(argv)
    loops = [k for k in args.loops.split(",") if k != "uvloop" or uvloop_available()]
    common = dict(window=args.window, seconds=args.seconds, repeats=args.repeats)
    print(conditions(args))
    print(f"load average before: {os.getloadavg()[0]:.2f}")

    if args.only in (None, "raw"):
        raw = ["protocol", "asyncio-dgram"]
        rtt = [cell for kind in loops for cell in measure(
            "rtt", raw, kind, request=b"r" * 100, reply_size=-1, **common)]
        print_table("UDP round trips, 100-byte datagrams", rtt, "round trips/s", False)
        put = [cell for kind in loops for cell in measure(
            "throughput", raw, kind, request=b"t" * 32768, reply_size=8, **common)]
        print_table("UDP throughput, 32 KiB datagrams one way (8-byte acks)", put,
                    "datagrams/s", True)

    if args.only in (None, "transport"):
        from engine._core import IMPLEMENTATION, codec

        for batch in (int(b) for b in args.batch.split(",")):
            messages = transport_messages(batch, args.message_bytes)
            size = codec.FRAME_OVERHEAD + sum(codec.encoded_size(m) for m in messages)
            cells = [cell for kind in loops for cell in measure(
                "batched", ["protocol", "transport-flush", "transport"], kind, request=b"b" * size,
                reply_size=-1, unit_per_reply=batch, messages=messages, **common)]
            print_table(
                f"Messages/s echoed: {batch} x {args.message_bytes}-byte-context message(s) per "
                f"request ({size} bytes), codec {IMPLEMENTATION}",
                cells, "messages/s", False)
    print(f"\nload average after: {os.getloadavg()[0]:.2f} (other work on the machine skews "
          "absolute figures; compare ratios within one table)")


if __name__ == "__main__":
    main()
