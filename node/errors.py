"""The node's errors; they are defined with the rest of the hierarchy in `records.errors`."""

from __future__ import annotations

from records.errors import (
    DataDirInUse,
    LookupFailed,
    NodeNotRunning,
    ProtocolError,
    PutFailed,
    StorageError,
    StoreFull,
)

__all__ = [
    "DataDirInUse",
    "LookupFailed",
    "NodeNotRunning",
    "ProtocolError",
    "PutFailed",
    "StorageError",
    "StoreFull",
]
