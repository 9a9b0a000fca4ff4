"""One request, one answer: the UDP exchange behind `python -m engine status`.

Not a hot path, so it uses asyncio-dgram's stream API for readability (DESIGN.md §4: the hot
send/receive path of engine/aio/udp.py is a bare DatagramProtocol because asyncio-dgram
measured slower there: docs/performance.md, "Transport"; here one datagram each way is all
there is).
"""

from __future__ import annotations

import asyncio
import random

import asyncio_dgram

from engine import errors
from engine._core import codec
from engine.aio.udp import new_boot_epoch
from engine.config import Limits
from engine.messages import Message
from engine.types import MIN_CLIENT_ID, parse_address


async def exchange(address: str, request: Message, cluster_key: bytes, *,
                   cluster_id: int = 0, timeout: float = 1.0, attempts: int = 3,
                   max_reply_bytes: int | None = None,
                   encrypt_payloads: bool = False) -> Message:
    """Send `request` (its src is replaced by a random client id) to the node at `address`
    and return the first authenticated answer with the same seq; engine.Timeout if none.
    The request opts into answers of up to `max_reply_bytes` (default: one datagram;
    Message.commit, see engine.messages), e.g. a STATUS answer many times its size."""
    limits = Limits()
    client_id = random.randrange(MIN_CLIENT_ID, 1 << 63)
    frame_codec = codec.FrameCodec(cluster_key, cluster_id, limits.max_datagram_bytes,
                                   local_id=client_id, encrypt=encrypt_payloads)
    request.src = client_id
    request.commit = limits.max_datagram_bytes if max_reply_bytes is None else max_reply_bytes
    stream = await asyncio_dgram.connect(parse_address(address))
    try:
        # Strictly increasing in this process: (client id, epoch, counter) never repeats,
        # so neither does an AES-GCM nonce under the derived key (engine/_core/codec_py).
        for _ in range(attempts):
            epoch = new_boot_epoch()  # a fresh epoch per attempt: see Client._renew_epoch
            try:
                await stream.send(frame_codec.encode(client_id, epoch, 1, [request]))
            except (OSError, asyncio_dgram.TransportClosed):
                await asyncio.sleep(timeout / 10)  # nobody listens yet: try again shortly
                continue
            loop = asyncio.get_running_loop()
            deadline = loop.time() + timeout
            while (remaining := deadline - loop.time()) > 0:
                try:
                    data, _ = await asyncio.wait_for(stream.recv(), remaining)
                except TimeoutError:
                    break
                except (OSError, asyncio_dgram.TransportClosed):
                    break  # e.g. ICMP port unreachable: nobody listens there
                try:
                    frame = frame_codec.decode(data)
                except errors.DecodeError:
                    continue
                for message in frame.messages:
                    if message.dst == client_id and message.seq == request.seq:
                        return message
    finally:
        stream.close()
    raise errors.Timeout(f"no answer from {address} after {attempts} attempts")
