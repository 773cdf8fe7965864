"""The asyncio DHT node: `DHTNode` configured by a `NodeConfig`."""

from node.config import Clock, LoopClock, NodeConfig, SystemClock
from node.errors import DataDirInUse, NodeNotRunning, PutFailed, StorageError, StoreFull
from node.server import DHTNode
from node.storage import MemoryBackend, RecordBackend, RecordStore, SqliteBackend

__all__ = [
    "Clock",
    "DHTNode",
    "DataDirInUse",
    "LoopClock",
    "MemoryBackend",
    "NodeConfig",
    "NodeNotRunning",
    "PutFailed",
    "RecordBackend",
    "RecordStore",
    "SqliteBackend",
    "StorageError",
    "StoreFull",
    "SystemClock",
]
