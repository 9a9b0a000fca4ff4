"""The base of engine.Node's components (membership, serving, reads, snapshots): they own
their state and reach the node's driver, loop and transport through `node`, never through
shared attributes."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

from engine.config import NodeConfig

if TYPE_CHECKING:
    from engine.aio.node import Node


class NodeComponent:
    def __init__(self, node: Node) -> None:
        self.node = node
        self.config: NodeConfig = node.config

    # The node's state a component reads (the driver's, the loop, the transport).
    @property
    def _core(self) -> Any:
        return self.node._driver.core

    @property
    def _loop(self) -> asyncio.AbstractEventLoop | None:
        return self.node._loop

    @property
    def _transport(self) -> Any:
        return self.node._transport

    @property
    def _running(self) -> bool:
        return self.node._driver.running
