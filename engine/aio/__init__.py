"""The asyncio runtime: the only package that touches sockets, files and clocks."""

from engine.aio.client import Client
from engine.aio.local_cluster import LocalCluster
from engine.aio.node import Node
from engine.aio.register import WriteOnceRegister

__all__ = ["Client", "LocalCluster", "Node", "WriteOnceRegister"]
