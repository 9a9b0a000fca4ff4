"""Run one node of the KV service until SIGTERM/SIGINT (`python -m engine serve`)."""

from __future__ import annotations

import asyncio
import logging
import signal

from engine.aio.node import Node
from engine.types import NodeConfig

logger = logging.getLogger("engine.server")


async def serve(config: NodeConfig, *, campaign: bool = False) -> None:
    """Start a KV node, run until SIGTERM or SIGINT, then stop cleanly.

    SIGKILL needs no handling: everything acknowledged was fsynced (with a data_dir), and the
    next start replays the WAL.
    """
    from engine.kv import KVStore

    node = Node(config, KVStore(config.limits))
    await node.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    logger.info(
        "node %d serving %s on %s (data_dir=%s)", config.node_id, config.protocol,
        config.members[config.node_id], config.data_dir,
    )
    if campaign:
        node.campaign()
    try:
        await stop.wait()
    finally:
        logger.info("node %d stopping", config.node_id)
        await node.stop()
