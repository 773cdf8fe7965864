"""The asyncio DHT node: `DHTNode` configured by a `NodeConfig`, with services as plugins."""

from node.config import Clock, LoopClock, NodeConfig, SystemClock
from node.engine import Engine, Limits, NodeStats
from node.errors import (
    DataDirInUse,
    LookupFailed,
    NodeNotRunning,
    ProtocolError,
    PutFailed,
    StorageError,
    StoreFull,
)
from node.lookup import LookupResult
from node.server import DHTNode, GetResult, Service
from node.storage import MemoryBackend, RecordBackend, RecordStore, SqliteBackend

__all__ = [
    "Clock",
    "DHTNode",
    "DataDirInUse",
    "Engine",
    "GetResult",
    "Limits",
    "LookupFailed",
    "LookupResult",
    "LoopClock",
    "MemoryBackend",
    "NodeConfig",
    "NodeNotRunning",
    "NodeStats",
    "ProtocolError",
    "PutFailed",
    "RecordBackend",
    "RecordStore",
    "Service",
    "SqliteBackend",
    "StorageError",
    "StoreFull",
    "SystemClock",
]
