"""Run one node of the KV service until SIGTERM/SIGINT (`python -m engine serve`)."""

from __future__ import annotations

import asyncio
import errno
import logging
import signal

from engine.aio.node import Node
from engine.config import NodeConfig
from engine.errors import ConfigError, StorageError
from engine.types import StateMachine

logger = logging.getLogger("engine.server")

# How often serve looks whether the node died of a fatal error: a supervisor learns of it
# (the process exits) within this bound.
FATAL_POLL_S = 0.1


async def serve(config: NodeConfig, *, campaign: bool = False,
                state_machine: StateMachine | None = None) -> None:
    """Start a node of `state_machine` (default: a KV store), run until SIGTERM or SIGINT,
    then stop cleanly.

    A fatal error (a failed WAL write or fsync: nothing that depends on it may be
    acknowledged, DESIGN.md §5) stops the node; serve then raises it (StorageError) so the
    process exits non-zero and a supervisor restarts it, instead of idling with a closed
    port. SIGKILL needs no handling: everything acknowledged was fsynced (with a data_dir),
    and the next start replays the WAL.
    """
    node = Node(config, state_machine)
    await _start(node, config)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    logger.info(
        "node %d serving %s on %s (listening on %s, data_dir=%s)", config.node_id,
        config.protocol, config.members[config.node_id],
        config.listen or config.members[config.node_id], config.data_dir,
    )
    if campaign:
        node.campaign()
    try:
        while not stop.is_set() and node.fatal_error is None:
            try:
                await asyncio.wait_for(stop.wait(), FATAL_POLL_S)
            except TimeoutError:
                pass
    finally:
        logger.info("node %d stopping", config.node_id)
        await node.stop()
    fatal = node.fatal_error
    if isinstance(fatal, StorageError):
        raise StorageError(f"node {config.node_id} stopped: {fatal}") from None
    if fatal is not None:
        raise fatal


async def _start(node: Node, config: NodeConfig) -> None:
    """node.start(), with the errors an operator can fix named in one line."""
    bind = config.listen or config.members[config.node_id]
    try:
        await node.start()
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            raise ConfigError(f"address {bind} is already in use") from None
        if exc.errno == errno.EADDRNOTAVAIL:
            raise ConfigError(f"address {bind} is not an address of this host (to bind "
                              "another one, use --listen)") from None
        raise
